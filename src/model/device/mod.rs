//! The devices a BERT step runs on, and the fused kernels each provides.
//!
//! dfdx 0.13 runs element-wise ops, broadcasts and reductions on one core, one op at a time:
//! on two cores they took three quarters of a BERT-mini training step. Each method of
//! [`BertDevice`] is one such hot spot: the linear layers (matrix product and bias in one op),
//! bias add, LayerNorm, GELU, dropout and the attention core (`softmax(Q Kᵀ / sqrt(d) + mask)
//! V`). One file set per backend:
//!
//! - [`reference`]: the kernels as compositions of dfdx ops. They are the trait's default
//!   bodies, serve every device, and are what the other backends are tested against.
//! - [`cpu`]: [`Cpu`](dfdx::tensor::Cpu) overrides them with rayon-parallel loops that make one
//!   pass over memory and record their own backward pass on the tape;
//!   `tests/model_kernels.rs` checks each against the reference, values and gradients.
//! - `cuda` (feature `cuda`): dfdx's CUDA device.
//!
//! The CPU kernels are deterministic (fixed work split, partial sums added in order), so a
//! resumed run still reproduces an uninterrupted one bit for bit.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod host;
pub mod philox;
pub mod reference;

use dfdx::tensor::{Tape, WithEmptyTape};
use dfdx::tensor_ops::Device;

use super::{Matrix, Vector};

pub use cpu::erf;
pub use philox::Dropout;

/// Runs `f` on one of rayon's worker threads and waits for it. The CPU kernels fork and join
/// hundreds of times per training step; started from a worker, each fork begins on the
/// calling thread while the other workers steal, instead of waking the pool from outside and
/// sleeping until it is done: 8% of a BERT-mini training step on two cores
/// (docs/benchmarks.md). Stages call it around their training loops; nested calls run inline.
pub fn on_pool_thread<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// A dfdx device with BERT's fused kernels. Inputs are contiguous `[rows, cols]` matrices
/// (every call site passes the fresh output of a matmul, an add or another kernel).
pub trait BertDevice: Device<f32> {
    /// `x Wᵀ + b` for `x: [rows, in]`, `weight: [out, in]` (`torch.nn.Linear`; also the MLM
    /// decoder, whose weight is the word embeddings).
    fn linear<T: Tape<f32, Self>>(
        x: Matrix<Self, T>,
        weight: &Matrix<Self>,
        bias: &Vector<Self>,
    ) -> Matrix<Self, T> {
        reference::linear(x, weight, bias)
    }

    /// `x + bias` on every row (`torch.nn.Linear`'s bias).
    fn add_bias<T: Tape<f32, Self>>(x: Matrix<Self, T>, bias: &Vector<Self>) -> Matrix<Self, T> {
        reference::add_bias(x, bias)
    }

    /// `(x − mean) / sqrt(var + eps) · weight + bias` along each row.
    fn layer_norm<T: Tape<f32, Self>>(
        x: Matrix<Self, T>,
        weight: &Vector<Self>,
        bias: &Vector<Self>,
        eps: f64,
    ) -> Matrix<Self, T> {
        reference::layer_norm(x, weight, bias, eps)
    }

    /// `LayerNorm(dropout(x) + residual)`: the end of every BERT sub-layer (dropout,
    /// residual add, LayerNorm) in one op; `dropout` describes the mask over `x`, `None` for
    /// none.
    fn residual_layer_norm<T: Tape<f32, Self>>(
        x: Matrix<Self, T>,
        residual: Matrix<Self, T>,
        dropout: Option<Dropout>,
        weight: &Vector<Self>,
        bias: &Vector<Self>,
        eps: f64,
    ) -> Matrix<Self, T> {
        reference::residual_layer_norm(x, residual, dropout, weight, bias, eps)
    }

    /// Exact GELU, `0.5 x (1 + erf(x / sqrt 2))`.
    fn gelu<T: Tape<f32, Self>>(x: Matrix<Self, T>) -> Matrix<Self, T> {
        reference::gelu(x)
    }

    /// Inverted dropout: `x ⊙ mask` for the mask `dropout` describes (drawn by
    /// [`super::Mode`]); element `i` of the mask is `dropout.scale_at(i)`, row-major.
    fn dropout<T: Tape<f32, Self>>(x: Matrix<Self, T>, dropout: Dropout) -> Matrix<Self, T> {
        reference::dropout(x, dropout)
    }

    /// Multi-head scaled dot-product attention on `[batch * seq, hidden]` projections:
    /// `softmax(Q Kᵀ / sqrt(d) + bias) V` per head, heads concatenated. `attention_bias` is
    /// `(batch, seq)`, added to every query's scores for that key; `dropout` describes a mask
    /// over the `(batch, heads, seq, seq)` probabilities, row-major.
    fn attention<T: Tape<f32, Self>>(
        q: Matrix<Self, T>,
        k: Matrix<Self, T>,
        v: Matrix<Self, T>,
        attention_bias: &Matrix<Self>,
        heads: usize,
        dropout: Option<Dropout>,
    ) -> Matrix<Self, T> {
        reference::attention(q, k, v, attention_bias, heads, dropout)
    }

    /// BERT's self-attention from the layer input `x`: `Q, K, V = x Wᵀ + b` for the query,
    /// key and value weights and biases (in that order), then [`attention`](Self::attention).
    fn self_attention<T: Tape<f32, Self>>(
        x: Matrix<Self, T>,
        weights: [&Matrix<Self>; 3],
        biases: [&Vector<Self>; 3],
        attention_bias: &Matrix<Self>,
        heads: usize,
        dropout: Option<Dropout>,
    ) -> Matrix<Self, T> {
        let [wq, wk, wv] = weights;
        let [bq, bk, bv] = biases;
        let q = Self::linear(x.with_empty_tape(), wq, bq);
        let k = Self::linear(x.with_empty_tape(), wk, bk);
        let v = Self::linear(x, wv, bv);
        Self::attention(q, k, v, attention_bias, heads, dropout)
    }

    /// `log_softmax(logits)[i, labels[i]]` for every row (the MLM loss terms), and for every
    /// row whether the label's logit is the row's maximum (a tie counts as right).
    fn label_log_probs<T: Tape<f32, Self>>(
        logits: Matrix<Self, T>,
        labels: &[usize],
    ) -> (Vector<Self, T>, Vec<bool>) {
        reference::label_log_probs(logits, labels)
    }
}
