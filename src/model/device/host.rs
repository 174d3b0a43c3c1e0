//! Plain-loop CPU references of the CUDA kernels in `src/model/device/cuda/*.cu`, one function
//! per kernel, on host slices, with the kernels' argument layout. Each is tested here against
//! the CPU kernels (or by hand), and on a GPU against its CUDA kernel (`tests/cuda_kernels.rs`,
//! ignored without one). The AdamW update and the gradient norm have theirs in
//! [`crate::optim`] ([`crate::optim::adamw_fused`], [`crate::optim::ParamGrads::global_norm`]);
//! the dropout mask in [`super::philox`].

use super::Dropout;

/// `Φ(x)` with the exact `erf` (the CUDA kernels call `erff`).
fn normal_cdf(x: f32) -> f32 {
    0.5 * (1.0 + erf_f64(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `erf` in f64, rounded: a reference within an ulp of CUDA's `erff`.
fn erf_f64(x: f32) -> f32 {
    // Abramowitz-Stegun 7.1.26 is not precise enough; integrate the series in f64 instead.
    let x = x as f64;
    if x.abs() > 6.0 {
        return x.signum() as f32;
    }
    // erf(x) = 2/sqrt(pi) * sum_n (-1)^n x^(2n+1) / (n! (2n+1)) for |x| <= 3; continued
    // fraction of erfc beyond.
    if x.abs() <= 3.0 {
        let mut term = x;
        let mut sum = x;
        let x2 = x * x;
        for n in 1..200 {
            term *= -x2 / n as f64;
            let add = term / (2 * n + 1) as f64;
            sum += add;
            if add.abs() < 1e-17 * sum.abs() {
                break;
            }
        }
        (sum * std::f64::consts::FRAC_2_SQRT_PI) as f32
    } else {
        // erfc(x) = exp(-x²)/sqrt(pi) · 1/(x + 1/2/(x + 1/(x + 3/2/(x + ...))))
        let a = x.abs();
        let mut f = a;
        for k in (1..60).rev() {
            f = a + (k as f64 / 2.0) / f;
        }
        let erfc = (-a * a).exp() / std::f64::consts::PI.sqrt() / f;
        (x.signum() * (1.0 - erfc)) as f32
    }
}

/// `φ(x)`.
fn normal_pdf(x: f32) -> f32 {
    (-0.5 * x * x).exp() * 0.398_942_3
}

/// `bias_gelu_fwd`: `pre = x + bias` per row, `y = pre Φ(pre)`; returns `(pre, y)`.
pub fn bias_gelu(cols: usize, x: &[f32], bias: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let pre: Vec<f32> = x
        .iter()
        .enumerate()
        .map(|(i, v)| v + bias[i % cols])
        .collect();
    let y = pre.iter().map(|&p| p * normal_cdf(p)).collect();
    (pre, y)
}

/// `bias_gelu_bwd`: `gy · GELU'(pre)`.
pub fn bias_gelu_backward(pre: &[f32], gy: &[f32]) -> Vec<f32> {
    pre.iter()
        .zip(gy)
        .map(|(&p, g)| g * (normal_cdf(p) + p * normal_pdf(p)))
        .collect()
}

/// `column_sums`: the sum over rows of each column of a `[rows, cols]` matrix.
pub fn column_sums(cols: usize, x: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0f32; cols];
    for row in x.chunks(cols) {
        out.iter_mut().zip(row).for_each(|(o, v)| *o += v);
    }
    out
}

/// The saved values of a LayerNorm forward pass.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerNormForward {
    /// The normalised input, `[rows, cols]`.
    pub xhat: Vec<f32>,
    /// `1 / sqrt(var + eps)` per row.
    pub rstd: Vec<f32>,
    /// The output.
    pub y: Vec<f32>,
}

/// `residual_layer_norm_fwd`: `LayerNorm(x ⊙ mask + residual)` per row of `cols`.
pub fn residual_layer_norm(
    cols: usize,
    x: &[f32],
    residual: Option<&[f32]>,
    (gamma, beta): (&[f32], &[f32]),
    eps: f32,
    dropout: Option<Dropout>,
) -> LayerNormForward {
    let mask = dropout.map(|d| d.mask(x.len()));
    let z: Vec<f32> = (0..x.len())
        .map(|i| {
            let v = x[i] * mask.as_ref().map_or(1.0, |m| m[i]);
            v + residual.map_or(0.0, |r| r[i])
        })
        .collect();
    let n = cols as f32;
    let (mut xhat, mut rstd, mut y) = (Vec::new(), Vec::new(), Vec::new());
    for row in z.chunks(cols) {
        let mean = row.iter().sum::<f32>() / n;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
        let r = 1.0 / (var + eps).sqrt();
        rstd.push(r);
        for (c, v) in row.iter().enumerate() {
            let h = (v - mean) * r;
            xhat.push(h);
            y.push(h * gamma[c] + beta[c]);
        }
    }
    LayerNormForward { xhat, rstd, y }
}

/// Gradients of [`residual_layer_norm`]: `(gx, gresidual, ggamma, gbeta)`
/// (`residual_layer_norm_bwd` and `layer_norm_param_grads`).
pub fn residual_layer_norm_backward(
    cols: usize,
    gy: &[f32],
    saved: &LayerNormForward,
    gamma: &[f32],
    dropout: Option<Dropout>,
) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
    let mask = dropout.map(|d| d.mask(gy.len()));
    let n = cols as f32;
    let mut gr = vec![0.0f32; gy.len()];
    for (row, r) in saved.rstd.iter().enumerate() {
        let at = row * cols..(row + 1) * cols;
        let (g, h) = (&gy[at.clone()], &saved.xhat[at.clone()]);
        let a = (0..cols).map(|c| g[c] * gamma[c]).sum::<f32>() / n;
        let b = (0..cols).map(|c| g[c] * gamma[c] * h[c]).sum::<f32>() / n;
        for c in 0..cols {
            gr[at.start + c] = r * (g[c] * gamma[c] - a - h[c] * b);
        }
    }
    let gx = gr
        .iter()
        .enumerate()
        .map(|(i, dz)| dz * mask.as_ref().map_or(1.0, |m| m[i]))
        .collect();
    let weighted: Vec<f32> = gy.iter().zip(&saved.xhat).map(|(g, h)| g * h).collect();
    (gx, gr, column_sums(cols, &weighted), column_sums(cols, gy))
}

/// `masked_softmax_dropout_fwd`: scores `[tasks, s, s]` (task = sequence · heads + head),
/// `key_bias` `[tasks / heads, s]`; returns `(probs, probs ⊙ mask)`.
pub fn masked_softmax_dropout(
    heads: usize,
    s: usize,
    scores: &[f32],
    key_bias: &[f32],
    dropout: Option<Dropout>,
) -> (Vec<f32>, Vec<f32>) {
    let mut probs = scores.to_vec();
    for (row_index, row) in probs.chunks_mut(s).enumerate() {
        let b = row_index / s / heads;
        let kb = &key_bias[b * s..(b + 1) * s];
        row.iter_mut().zip(kb).for_each(|(x, k)| *x += k);
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        row.iter_mut().for_each(|x| *x = (*x - max).exp());
        let inv = 1.0 / row.iter().sum::<f32>();
        row.iter_mut().for_each(|x| *x *= inv);
    }
    let dropped = match dropout {
        Some(d) => probs
            .iter()
            .zip(d.mask(probs.len()))
            .map(|(p, m)| p * m)
            .collect(),
        None => probs.clone(),
    };
    (probs, dropped)
}

/// `masked_softmax_dropout_bwd`: the scores' gradient from the dropped probabilities'.
pub fn masked_softmax_dropout_backward(
    s: usize,
    probs: &[f32],
    g_dropped: &[f32],
    dropout: Option<Dropout>,
) -> Vec<f32> {
    let mask = dropout.map(|d| d.mask(probs.len()));
    let mut out = vec![0.0f32; probs.len()];
    for (row, (p, g)) in probs.chunks(s).zip(g_dropped.chunks(s)).enumerate() {
        let dp: Vec<f32> = (0..s)
            .map(|j| g[j] * mask.as_ref().map_or(1.0, |m| m[row * s + j]))
            .collect();
        let dot: f32 = dp.iter().zip(p).map(|(a, b)| a * b).sum();
        for j in 0..s {
            out[row * s + j] = p[j] * (dp[j] - dot);
        }
    }
    out
}

/// `label_log_probs_fwd`: per row, `(log_softmax[label], log-sum-exp, label is the max)`.
pub fn label_log_probs(
    cols: usize,
    logits: &[f32],
    labels: &[u32],
) -> (Vec<f32>, Vec<f32>, Vec<bool>) {
    let (mut lp, mut lse, mut is_max) = (Vec::new(), Vec::new(), Vec::new());
    for (row, &label) in logits.chunks(cols).zip(labels) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let l = max + row.iter().map(|x| (x - max).exp()).sum::<f32>().ln();
        let at = row[label as usize];
        lp.push(at - l);
        lse.push(l);
        is_max.push(at >= max);
    }
    (lp, lse, is_max)
}

/// `label_log_probs_bwd`: `gout[r] · (δ(j, label) − softmax[r, j])`.
pub fn label_log_probs_backward(
    cols: usize,
    logits: &[f32],
    lse: &[f32],
    labels: &[u32],
    gout: &[f32],
) -> Vec<f32> {
    logits
        .iter()
        .enumerate()
        .map(|(i, x)| {
            let (r, j) = (i / cols, i % cols);
            let mut v = -gout[r] * (x - lse[r]).exp();
            if j == labels[r] as usize {
                v += gout[r];
            }
            v
        })
        .collect()
}

/// `gather_rows`: `out[r] = x[index[r]]`.
pub fn gather_rows(cols: usize, x: &[f32], index: &[u32]) -> Vec<f32> {
    index
        .iter()
        .flat_map(|&i| {
            x[i as usize * cols..(i as usize + 1) * cols]
                .iter()
                .copied()
        })
        .collect()
}

/// `f32_to_bf16`: round to nearest even, NaN kept (quiet).
pub fn f32_to_bf16(x: f32) -> u16 {
    let u = x.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return ((u >> 16) | 0x40) as u16;
    }
    (u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// `bf16_to_f32`: exact.
pub fn bf16_to_f32(x: u16) -> f32 {
    f32::from_bits((x as u32) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::device::reference;
    use crate::model::device::Dropout;
    use crate::model::BertDevice;
    use dfdx::prelude::*;

    fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let worst = got
            .iter()
            .zip(want)
            .map(|(g, w)| (g - w).abs() / w.abs().max(1.0))
            .fold(0.0f32, f32::max);
        assert!(worst < tol, "{what}: max relative error {worst}");
    }

    fn values(n: usize, seed: u32, scale: f32) -> Vec<f32> {
        // A fixed, sign-mixing sequence from Philox itself.
        let d = Dropout::new(seed as u64, 0, 0, 0.0);
        (0..n as u64)
            .map(|i| (d.word(i) as f32 / 4294967296.0 * 2.0 - 1.0) * scale)
            .collect()
    }

    #[test]
    fn bf16_rounds_to_nearest_even_and_keeps_nan() {
        assert_eq!(f32_to_bf16(1.0), 0x3f80);
        // 1 + 2^-8 is halfway between bf16 1.0 and 1.0078125: ties to even (1.0).
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80);
        // Just above halfway rounds up; 1.0078125 + half an ulp ties to even (up, to 0x3f82).
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(f32_to_bf16(-2.5), 0xc020);
        assert_eq!(f32_to_bf16(f32::INFINITY), 0x7f80);
        assert_eq!(f32_to_bf16(f32::MAX), 0x7f80, "overflows to infinity");
        let nan = f32_to_bf16(f32::NAN);
        assert!(bf16_to_f32(nan).is_nan());
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
        for x in values(1000, 3, 100.0) {
            let back = bf16_to_f32(f32_to_bf16(x));
            assert!((back - x).abs() <= x.abs() / 256.0, "{x} -> {back}");
        }
    }

    #[test]
    fn exact_erf_matches_known_values() {
        assert!((erf_f64(0.5) - 0.520_499_9).abs() < 1e-7);
        assert!((erf_f64(1.0) - 0.842_700_8).abs() < 1e-7);
        assert!((erf_f64(-2.0) + 0.995_322_3).abs() < 1e-7);
        assert!((erf_f64(3.5) as f64 - 0.999_999_256_9).abs() < 1e-7);
        assert_eq!(erf_f64(0.0), 0.0);
    }

    #[test]
    fn bias_gelu_matches_the_cpu_gelu_kernel() {
        let dev = Cpu::default();
        let (rows, cols) = (7, 9);
        let x = values(rows * cols, 1, 4.0);
        let bias = values(cols, 2, 1.0);
        let gy = values(rows * cols, 3, 1.0);
        let (pre, y) = bias_gelu(cols, &x, &bias);
        let t: Tensor<(usize, usize), f32, Cpu> = dev.tensor_from_vec(pre.clone(), (rows, cols));
        let out = <Cpu as BertDevice>::gelu(t.leaky_trace());
        close("bias_gelu value", &y, &out.as_vec(), 1e-5);
        let w = dev.tensor_from_vec(gy.clone(), (rows, cols));
        let g = (out * w).sum::<(), _>().backward();
        close(
            "bias_gelu gradient",
            &bias_gelu_backward(&pre, &gy),
            &g.get(&t).as_vec(),
            1e-5,
        );
        assert_eq!(
            column_sums(3, &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
            [5.0, 7.0, 9.0]
        );
    }

    #[test]
    fn residual_layer_norm_matches_the_reference_with_dropout() {
        let dev = Cpu::default();
        let (rows, cols) = (9, 13);
        let n = rows * cols;
        let (x, r) = (values(n, 4, 3.0), values(n, 5, 2.0));
        let (gamma, beta, gy) = (
            values(cols, 6, 1.0),
            values(cols, 7, 1.0),
            values(n, 8, 1.0),
        );
        let d = Some(Dropout::new(9, 2, 1, 0.2));
        let saved = residual_layer_norm(cols, &x, Some(&r), (&gamma, &beta), 1e-12, d);
        let (gx, gr, gg, gb) = residual_layer_norm_backward(cols, &gy, &saved, &gamma, d);
        let m = |v: &[f32]| dev.tensor_from_vec(v.to_vec(), (rows, cols));
        let v = |v: &[f32]| dev.tensor_from_vec(v.to_vec(), (v.len(),));
        let (xt, rt, gt, bt) = (m(&x), m(&r), v(&gamma), v(&beta));
        let out =
            reference::residual_layer_norm(xt.leaky_trace(), rt.leaky_trace(), d, &gt, &bt, 1e-12);
        close("layer_norm value", &saved.y, &out.as_vec(), 2e-5);
        let g = (out * m(&gy)).sum::<(), _>().backward();
        close("layer_norm dx", &gx, &g.get(&xt).as_vec(), 2e-5);
        close("layer_norm dresidual", &gr, &g.get(&rt).as_vec(), 2e-5);
        close("layer_norm dgamma", &gg, &g.get(&gt).as_vec(), 2e-5);
        close("layer_norm dbeta", &gb, &g.get(&bt).as_vec(), 2e-5);
    }

    #[test]
    fn masked_softmax_dropout_matches_the_reference_attention() {
        // Attention with V = identity-like one-hot columns exposes the dropped probabilities:
        // context row i, column j = Σ_k P_drop[i, k] V[k, j]. Here: one head, d = s, V = I.
        let dev = Cpu::default();
        let (b, s, heads) = (2, 5, 1);
        let scale = 1.0 / (s as f32).sqrt();
        let q = values(b * s * s, 10, 2.0);
        let k = values(b * s * s, 11, 2.0);
        let mut v = vec![0.0f32; b * s * s];
        for bi in 0..b {
            for i in 0..s {
                v[(bi * s + i) * s + i] = 1.0;
            }
        }
        let key_bias: Vec<f32> = (0..b * s)
            .map(|i| if i == 9 { -10000.0 } else { 0.0 })
            .collect();
        let d = Some(Dropout::new(12, 0, 3, 0.3));
        let m = |x: &[f32], shape| dev.tensor_from_vec(x.to_vec(), shape);
        let ctx = reference::attention(
            m(&q, (b * s, s)),
            m(&k, (b * s, s)),
            m(&v, (b * s, s)),
            &m(&key_bias, (b, s)),
            heads,
            d,
        )
        .as_vec();
        // Scores Q Kᵀ · scale per sequence.
        let mut scores = vec![0.0f32; b * s * s];
        for bi in 0..b {
            for i in 0..s {
                for j in 0..s {
                    let dot: f32 = (0..s)
                        .map(|c| q[(bi * s + i) * s + c] * k[(bi * s + j) * s + c])
                        .sum();
                    scores[(bi * s + i) * s + j] = dot * scale;
                }
            }
        }
        let (probs, dropped) = masked_softmax_dropout(heads, s, &scores, &key_bias, d);
        close("softmax+dropout", &dropped, &ctx, 1e-5);
        assert!(dropped.contains(&0.0), "some probabilities dropped");
        for row in probs.chunks(s) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
        // Sequence 1's last key is padding: no query of it attends there.
        assert!(
            (0..s).all(|i| probs[(s + i) * s + s - 1] < 1e-6),
            "padded key"
        );
        assert!(probs[s * s - 1] > 1e-3, "sequence 0 has no padding");
        // Backward against the composition's softmax gradient, by finite differences of
        // Σ w ⊙ dropped along the scores.
        let w = values(b * s * s, 13, 1.0);
        let g = masked_softmax_dropout_backward(s, &probs, &w, d);
        let objective = |sc: &[f32]| -> f64 {
            let (_, dr) = masked_softmax_dropout(heads, s, sc, &key_bias, d);
            dr.iter()
                .zip(&w)
                .map(|(a, b)| (*a as f64) * (*b as f64))
                .sum()
        };
        for i in [0, 7, 13, 31, 44] {
            let mut plus = scores.clone();
            let mut minus = scores.clone();
            plus[i] += 1e-2;
            minus[i] -= 1e-2;
            let fd = (objective(&plus) - objective(&minus)) / 2e-2;
            assert!(
                (fd - g[i] as f64).abs() < 1e-3,
                "score {i}: {fd} vs {}",
                g[i]
            );
        }
    }

    #[test]
    fn label_log_probs_and_gather_match_the_cpu_kernel() {
        let dev = Cpu::default();
        let (rows, cols) = (6, 11);
        let table = values(10 * cols, 14, 5.0);
        let index = [3u32, 0, 9, 3, 5, 1];
        let logits = gather_rows(cols, &table, &index);
        assert_eq!(&logits[..cols], &table[3 * cols..4 * cols]);
        let labels = [1u32, 0, 10, 4, 4, 7];
        let (lp, lse, is_max) = label_log_probs(cols, &logits, &labels);
        let t = dev.tensor_from_vec(logits.clone(), (rows, cols));
        let usize_labels: Vec<usize> = labels.iter().map(|&l| l as usize).collect();
        let (out, want_max) = <Cpu as BertDevice>::label_log_probs(t.leaky_trace(), &usize_labels);
        close("label_log_probs", &lp, &out.as_vec(), 1e-5);
        assert_eq!(is_max, want_max);
        let gout = values(rows, 15, 1.0);
        let g = (out * dev.tensor_from_vec(gout.clone(), (rows,)))
            .sum::<(), _>()
            .backward();
        close(
            "label_log_probs gradient",
            &label_log_probs_backward(cols, &logits, &lse, &labels, &gout),
            &g.get(&t).as_vec(),
            1e-5,
        );
    }
}
