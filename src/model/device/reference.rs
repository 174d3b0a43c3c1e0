//! The kernels as compositions of dfdx ops: the defaults of
//! [`BertDevice`](super::BertDevice) and the reference the CPU kernels are tested against.

use dfdx::shapes::{Axes2, Axes4, Axis, HasShape, Shape};
use dfdx::tensor::{NoneTape, Tape, WithEmptyTape};
use dfdx::tensor_ops::{BroadcastTo, Device, MaxTo, PermuteTo, ReshapeTo, SelectTo, TryMatMul};

use super::Dropout;
use crate::model::{Matrix, Vector};

/// `x Wᵀ + b` for `x: [rows, in]`, `weight: [out, in]`.
pub fn linear<D: Device<f32>, T: Tape<f32, D>>(
    x: Matrix<D, T>,
    weight: &Matrix<D>,
    bias: &Vector<D>,
) -> Matrix<D, T> {
    let weight_t = weight.retaped::<T>().permute::<_, Axes2<1, 0>>();
    add_bias(x.matmul(weight_t), bias)
}

/// `x + bias` on every row (`torch.nn.Linear`'s bias).
pub fn add_bias<D: Device<f32>, T: Tape<f32, D>>(
    x: Matrix<D, T>,
    bias: &Vector<D>,
) -> Matrix<D, T> {
    let shape = *x.shape();
    x + bias.retaped::<T>().broadcast_like::<_, Axis<0>>(&shape)
}

/// `(x − mean) / sqrt(var + eps) · weight + bias` along each row.
pub fn layer_norm<D: Device<f32>, T: Tape<f32, D>>(
    x: Matrix<D, T>,
    weight: &Vector<D>,
    bias: &Vector<D>,
    eps: f64,
) -> Matrix<D, T> {
    let shape = *x.shape();
    let x = x.normalize::<Axis<1>>(eps);
    let gamma = weight.retaped::<T>().broadcast_like::<_, Axis<0>>(&shape);
    let beta = bias.retaped::<T>().broadcast_like::<_, Axis<0>>(&shape);
    x * gamma + beta
}

/// `LayerNorm(dropout(x) + residual)` (dropout, residual add, LayerNorm).
pub fn residual_layer_norm<D: Device<f32>, T: Tape<f32, D>>(
    x: Matrix<D, T>,
    residual: Matrix<D, T>,
    dropout: Option<Dropout>,
    weight: &Vector<D>,
    bias: &Vector<D>,
    eps: f64,
) -> Matrix<D, T> {
    let x = match dropout {
        Some(d) => self::dropout(x, d),
        None => x,
    };
    layer_norm(x + residual, weight, bias, eps)
}

/// Exact GELU, `0.5 x (1 + erf(x / sqrt 2))`.
pub fn gelu<D: Device<f32>, T: Tape<f32, D>>(x: Matrix<D, T>) -> Matrix<D, T> {
    crate::model::gelu(x)
}

/// Inverted dropout, `x ⊙ mask`, with the whole mask computed on the host and uploaded.
pub fn dropout<D: Device<f32>, T: Tape<f32, D>>(x: Matrix<D, T>, dropout: Dropout) -> Matrix<D, T> {
    let shape = *x.shape();
    let mask = x
        .device()
        .tensor_from_vec(dropout.mask(shape.num_elements()), shape);
    x * mask
}

/// Multi-head scaled dot-product attention on `[batch * seq, hidden]` projections:
/// `softmax(Q Kᵀ / sqrt(d) + bias) V` per head, heads concatenated. `attention_bias` is
/// `(batch, seq)`, added to every query's scores for that key; `dropout` describes a mask
/// over the `(batch, heads, seq, seq)` probabilities, row-major.
pub fn attention<D: Device<f32>, T: Tape<f32, D>>(
    q: Matrix<D, T>,
    k: Matrix<D, T>,
    v: Matrix<D, T>,
    attention_bias: &Matrix<D>,
    heads: usize,
    dropout: Option<Dropout>,
) -> Matrix<D, T> {
    let (b, s) = *attention_bias.shape();
    let hidden = q.shape().1;
    let head_size = hidden / heads;
    let split_heads = (b, s, heads, head_size);
    // [b*s, hidden] -> [b, heads, s, head] (keys: [b, heads, head, s]).
    let q = q
        .reshape_like(&split_heads)
        .permute::<_, Axes4<0, 2, 1, 3>>();
    let k = k
        .reshape_like(&split_heads)
        .permute::<_, Axes4<0, 2, 3, 1>>();
    let v = v
        .reshape_like(&split_heads)
        .permute::<_, Axes4<0, 2, 1, 3>>();
    let scores = q.matmul(k) * (1.0 / (head_size as f32).sqrt());
    let mask = attention_bias
        .clone()
        .broadcast_like::<_, Axes2<1, 2>>(&(b, heads, s, s));
    let mut probs = (scores + mask).softmax::<Axis<3>>();
    if let Some(d) = dropout {
        let keep = probs
            .device()
            .tensor_from_vec(d.mask(b * heads * s * s), (b, heads, s, s));
        probs = probs * keep;
    }
    probs
        .matmul(v)
        .permute::<_, Axes4<0, 2, 1, 3>>()
        .reshape_like(&(b * s, hidden))
}

/// Self-attention from the layer input: Q, K, V projections, then [`attention`].
pub fn self_attention<D: Device<f32>, T: Tape<f32, D>>(
    x: Matrix<D, T>,
    [wq, wk, wv]: [&Matrix<D>; 3],
    [bq, bk, bv]: [&Vector<D>; 3],
    attention_bias: &Matrix<D>,
    heads: usize,
    dropout: Option<Dropout>,
) -> Matrix<D, T> {
    let q = linear(x.with_empty_tape(), wq, bq);
    let k = linear(x.with_empty_tape(), wk, bk);
    let v = linear(x, wv, bv);
    attention(q, k, v, attention_bias, heads, dropout)
}

/// `log_softmax(logits)[i, labels[i]]` per row, and whether each label is the row's max.
pub fn label_log_probs<D: Device<f32>, T: Tape<f32, D>>(
    logits: Matrix<D, T>,
    labels: &[usize],
) -> (Vector<D, T>, Vec<bool>) {
    let device = logits.device().clone();
    let labels = device.tensor_from_vec(labels.to_vec(), (labels.len(),));
    let plain = logits.retaped::<NoneTape>();
    let best = plain.clone().max::<(usize,), Axis<1>>().as_vec();
    let at_label = plain.select(labels.clone()).as_vec();
    let is_max = at_label.iter().zip(&best).map(|(l, b)| l >= b).collect();
    (logits.log_softmax::<Axis<1>>().select(labels), is_max)
}
