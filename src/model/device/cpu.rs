//! The fused CPU kernels: [`BertDevice`] for dfdx's [`Cpu`], rayon-parallel loops that make
//! one pass over memory and record their own backward pass on the tape. Deterministic: fixed
//! work split, partial sums added in order, so a resumed run reproduces an uninterrupted one
//! bit for bit.

use dfdx::shapes::{HasShape, Shape};
use dfdx::tensor::{Cache, Cpu, PutTape, SplitTape, Tape, Tensor, TensorFromVec};
use rayon::prelude::*;

use super::{BertDevice, Dropout};
use crate::model::{Matrix, Vector};

/// Rows per rayon task: enough work to amortise the task, fixed so sums are deterministic.
const ROW_BLOCK: usize = 64;

/// A tensor's values on the host (a memcpy for the contiguous tensors these kernels take).
///
/// Also switches off dfdx's allocation cache on the tensor's device: the kernels hand dfdx
/// buffers it did not allocate, and its cache keeps every dropped buffer for reuse, so with
/// the cache on, each training step would add its kernels' outputs to it for good.
fn host<S: Shape, T>(t: &Tensor<S, f32, Cpu, T>) -> Vec<f32> {
    t.device().disable_cache();
    let mut out = vec![0.0; t.shape().num_elements()];
    t.copy_into(&mut out);
    out
}

/// Allocates the gradient of each tensor (zeros where absent) and returns a mutable slice to
/// each. All are allocated before any slice is taken, so no buffer moves while borrowed; the
/// tensors have distinct ids, so the slices do not alias.
macro_rules! grad_slices {
    ($grads:expr; $($t:expr),+ $(,)?) => {{
        $( $grads.try_alloc_for(&$t)?; )+
        ( $( {
            let buf = $grads.get_or_alloc_mut(&$t)?;
            let (ptr, len) = (buf.as_mut_ptr(), buf.len());
            // SAFETY: distinct gradient buffers, none reallocated while these slices live.
            unsafe { std::slice::from_raw_parts_mut(ptr, len) }
        }, )+ )
    }};
}

/// `acc += x`, in parallel.
fn add_assign(acc: &mut [f32], x: &[f32]) {
    acc.par_chunks_mut(1 << 14)
        .zip(x.par_chunks(1 << 14))
        .for_each(|(a, x)| a.iter_mut().zip(x).for_each(|(a, x)| *a += x));
}

/// Per-column sums of `[rows, cols]` values `f(row, col)`, added in a fixed order.
fn column_sums(rows: usize, cols: usize, f: impl Fn(usize, usize) -> f32 + Sync) -> Vec<f32> {
    let partials: Vec<Vec<f32>> = (0..rows.div_ceil(ROW_BLOCK))
        .into_par_iter()
        .map(|block| {
            let mut acc = vec![0.0f32; cols];
            for r in block * ROW_BLOCK..((block + 1) * ROW_BLOCK).min(rows) {
                for (c, a) in acc.iter_mut().enumerate() {
                    *a += f(r, c);
                }
            }
            acc
        })
        .collect();
    let mut total = vec![0.0f32; cols];
    for p in partials {
        total.iter_mut().zip(p).for_each(|(t, p)| *t += p);
    }
    total
}

/// A raw pointer handed to rayon tasks that write disjoint parts of one buffer.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: every task writes a region no other task touches (see the call sites).
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The pointer `offset` elements in (a method, so closures capture the whole wrapper).
    unsafe fn at(self, offset: usize) -> *mut f32 {
        self.0.add(offset)
    }
}

/// `dst (m×n) = [dst +] scale · lhs (m×k) · rhs (k×n)` on strided row-major views, one
/// thread (the callers parallelise over heads). Strides are `(row, column)` in elements.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_strided(
    dims: (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: *const f32,
    lhs_strides: (usize, usize),
    rhs: *const f32,
    rhs_strides: (usize, usize),
    scale: f32,
) {
    gemm_with(
        gemm::Parallelism::None,
        dims,
        (dst, dst_rs, accumulate),
        (lhs, lhs_strides),
        (rhs, rhs_strides),
        scale,
    )
}

/// `dst (m×n) += lhs (m×k) · rhs (k×n)` on strided row-major views, on every rayon thread;
/// `dst` is contiguous (row stride `n`).
unsafe fn gemm_accumulate(
    dims: (usize, usize, usize),
    dst: *mut f32,
    lhs: *const f32,
    lhs_strides: (usize, usize),
    rhs: *const f32,
    rhs_strides: (usize, usize),
) {
    gemm_with(
        gemm::Parallelism::Rayon(rayon::current_num_threads()),
        dims,
        (dst, dims.1, true),
        (lhs, lhs_strides),
        (rhs, rhs_strides),
        1.0,
    )
}

/// `gemm::gemm` on row-major views: `dst` is (pointer, row stride, accumulate), `lhs` and
/// `rhs` are (pointer, (row stride, column stride)), in elements.
unsafe fn gemm_with(
    parallelism: gemm::Parallelism,
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs, accumulate): (*mut f32, usize, bool),
    (lhs, (lhs_rs, lhs_cs)): (*const f32, (usize, usize)),
    (rhs, (rhs_rs, rhs_cs)): (*const f32, (usize, usize)),
    scale: f32,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        accumulate,
        lhs,
        lhs_cs as isize,
        lhs_rs as isize,
        rhs,
        rhs_cs as isize,
        rhs_rs as isize,
        1.0,
        scale,
        false,
        false,
        false,
        parallelism,
    )
}

/// Elements per rayon task of [`elementwise`].
const ELEMENTWISE_CHUNK: usize = 1 << 14;

/// An element-wise op on a matrix: `y_i = f(i, x_i)`, and in the backward pass
/// `dx_i += dy_i · df(i, x_i)`.
fn elementwise<T: Tape<f32, Cpu>>(
    x: Matrix<Cpu, T>,
    f: impl Fn(usize, f32) -> f32 + Sync,
    df: impl Fn(usize, f32) -> f32 + Send + Sync + 'static,
) -> Matrix<Cpu, T> {
    let (x, mut tape) = x.split_tape();
    let shape = *x.shape();
    let xs = host(&x);
    let mut y = vec![0.0f32; xs.len()];
    // Fixed chunks with a plain loop inside, so `f` and `df` inline into it and vectorise
    // where they can (per-element rayon items called them through a pointer: GELU's `erf`
    // was 12% of a BERT-Tiny fine-tuning step).
    y.par_chunks_mut(ELEMENTWISE_CHUNK)
        .zip(xs.par_chunks(ELEMENTWISE_CHUNK))
        .enumerate()
        .for_each(|(c, (ys, xs))| {
            let base = c * ELEMENTWISE_CHUNK;
            for (j, (y, &x)) in ys.iter_mut().zip(xs).enumerate() {
                *y = f(base + j, x);
            }
        });
    let out = x.device().tensor_from_vec(y, shape);
    if T::OWNS_TAPE {
        let (xg, og) = (x.ghost(), out.ghost());
        tape.add_backward_op(move |grads| {
            let (gx, go) = grad_slices!(grads; xg, og);
            gx.par_chunks_mut(ELEMENTWISE_CHUNK)
                .zip(go.par_chunks(ELEMENTWISE_CHUNK))
                .zip(xs.par_chunks(ELEMENTWISE_CHUNK))
                .enumerate()
                .for_each(|(c, ((gxs, gos), xs))| {
                    let base = c * ELEMENTWISE_CHUNK;
                    for (j, ((gx, go), &x)) in gxs.iter_mut().zip(gos).zip(xs).enumerate() {
                        *gx += go * df(base + j, x);
                    }
                });
            Ok(())
        });
    }
    out.put_tape(tape)
}

/// Attention probabilities after dropout: `p ⊙ mask` written into `scratch`, or `p` itself
/// without dropout. `p` is elements `start..` of the mask `dropout` describes.
fn dropped_probs<'a>(
    p: &'a [f32],
    dropout: Option<Dropout>,
    start: usize,
    scratch: &'a mut [f32],
) -> &'a [f32] {
    match dropout {
        Some(d) => {
            d.fill(start as u64, scratch);
            scratch.iter_mut().zip(p).for_each(|(o, p)| *o *= p);
            scratch
        }
        None => p,
    }
}

/// Inverted dropout on the CPU: each task computes its chunk's part of the mask into a
/// chunk-sized scratch buffer and applies it; the backward pass computes it again.
fn cpu_dropout<T: Tape<f32, Cpu>>(x: Matrix<Cpu, T>, dropout: Dropout) -> Matrix<Cpu, T> {
    let (x, mut tape) = x.split_tape();
    let shape = *x.shape();
    let mut y = host(&x);
    y.par_chunks_mut(ELEMENTWISE_CHUNK)
        .enumerate()
        .for_each_init(
            || vec![0.0f32; ELEMENTWISE_CHUNK],
            |scale, (c, ys)| {
                let scale = &mut scale[..ys.len()];
                dropout.fill((c * ELEMENTWISE_CHUNK) as u64, scale);
                ys.iter_mut().zip(scale.iter()).for_each(|(y, s)| *y *= s);
            },
        );
    let out = x.device().tensor_from_vec(y, shape);
    if T::OWNS_TAPE {
        let (xg, og) = (x.ghost(), out.ghost());
        tape.add_backward_op(move |grads| {
            let (gx, go) = grad_slices!(grads; xg, og);
            gx.par_chunks_mut(ELEMENTWISE_CHUNK)
                .zip(go.par_chunks(ELEMENTWISE_CHUNK))
                .enumerate()
                .for_each_init(
                    || vec![0.0f32; ELEMENTWISE_CHUNK],
                    |scale, (c, (gxs, gos))| {
                        let scale = &mut scale[..gxs.len()];
                        dropout.fill((c * ELEMENTWISE_CHUNK) as u64, scale);
                        for ((gx, go), s) in gxs.iter_mut().zip(gos).zip(scale.iter()) {
                            *gx += go * s;
                        }
                    },
                );
            Ok(())
        });
    }
    out.put_tape(tape)
}

/// `Φ(x) = 0.5 (1 + erf(x / sqrt 2))`.
#[inline(always)]
fn normal_cdf(x: f32) -> f32 {
    0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `erf(x)` for `f32`, within 5e-7 of the exact value (a few ulp near ±1): the rational
/// approximation of XLA's and Eigen's `erf` (odd degree-13 numerator, even degree-8
/// denominator, `x` clamped to ±4 where `erf` is ±1 in `f32`). Branch-free, so loops over it
/// vectorise; `libm::erff` branches per value and was 4% of a BERT-mini training step.
#[allow(clippy::excessive_precision)] // the published coefficients, digit for digit
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    const ALPHA: [f32; 7] = [
        -1.609_603_3e-2,
        -2.954_599_8e-3,
        -7.349_906_3e-4,
        -5.692_506_4e-5,
        -2.101_024e-6,
        2.770_681_4e-8,
        -2.726_142_3e-10,
    ];
    const BETA: [f32; 5] = [
        -1.426_474e-2,
        -7.373_329e-3,
        -1.682_827e-3,
        -2.133_740_6e-4,
        -1.456_607_2e-5,
    ];
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = ALPHA[6];
    for a in ALPHA[..6].iter().rev() {
        p = p * x2 + a;
    }
    let mut q = BETA[4];
    for b in BETA[..4].iter().rev() {
        q = q * x2 + b;
    }
    x * p / q
}

/// `φ(x) = exp(−x²/2) / sqrt(2π)`.
#[inline(always)]
fn normal_pdf(x: f32) -> f32 {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    (-0.5 * x * x).exp() * INV_SQRT_2PI
}

/// LayerNorm on the CPU, optionally of `dropout(x) + residual` (one pass: no separate
/// dropout, sum or their gradients; each task computes its rows' part of the mask), with its
/// backward pass on the merged tape.
fn cpu_layer_norm<T: Tape<f32, Cpu>>(
    x: Matrix<Cpu, T>,
    residual: Option<Matrix<Cpu, T>>,
    dropout: Option<Dropout>,
    weight: &Vector<Cpu>,
    bias: &Vector<Cpu>,
    eps: f64,
) -> Matrix<Cpu, T> {
    let (x, tape) = x.split_tape();
    let (residual, mut tape) = match residual {
        Some(r) => {
            let (r, rt) = r.split_tape();
            (Some(r), tape.merge(rt))
        }
        None => (None, tape),
    };
    let (rows, cols) = *x.shape();
    let (gamma, beta) = (host(weight), host(bias));
    // `xhat` holds dropout(x) + residual until it is normalised in place.
    let mut xhat = host(&x);
    let rs = residual.as_ref().map(host);
    let mut rstd = vec![0.0f32; rows];
    let mut y = vec![0.0f32; rows * cols];
    let n = cols as f32;
    let block = cols * ROW_BLOCK;
    xhat.par_chunks_mut(block)
        .zip(y.par_chunks_mut(block))
        .zip(rstd.par_chunks_mut(ROW_BLOCK))
        .enumerate()
        .for_each_init(Vec::new, |scale: &mut Vec<f32>, (bi, ((xb, yb), rb))| {
            let at = bi * block..bi * block + xb.len();
            if let Some(d) = dropout {
                scale.resize(xb.len(), 0.0);
                d.fill(at.start as u64, scale);
                xb.iter_mut().zip(scale.iter()).for_each(|(v, k)| *v *= k);
            }
            if let Some(rs) = &rs {
                xb.iter_mut().zip(&rs[at]).for_each(|(v, r)| *v += r);
            }
            for ((xr, yr), r) in xb.chunks_mut(cols).zip(yb.chunks_mut(cols)).zip(rb) {
                let mean = xr.iter().sum::<f32>() / n;
                let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
                *r = 1.0 / (var + eps as f32).sqrt();
                for (i, (xv, yv)) in xr.iter_mut().zip(yr.iter_mut()).enumerate() {
                    *xv = (*xv - mean) * *r;
                    *yv = *xv * gamma[i] + beta[i];
                }
            }
        });
    let out = x.device().tensor_from_vec(y, (rows, cols));
    if T::OWNS_TAPE {
        let (xg, wg, bg, og) = (x.ghost(), weight.ghost(), bias.ghost(), out.ghost());
        let rg = residual.as_ref().map(|r| r.ghost());
        tape.add_backward_op(move |grads| {
            // The residual's gradient first: its buffer stays put while the others are added.
            let gr = match &rg {
                Some(rg) => Some(SharedMut(grad_slices!(grads; *rg).0.as_mut_ptr())),
                None => None,
            };
            let (gx, gw, gb, go) = grad_slices!(grads; xg, wg, bg, og);
            gx.par_chunks_mut(block)
                .zip(go.par_chunks(block))
                .zip(xhat.par_chunks(block))
                .zip(rstd.par_chunks(ROW_BLOCK))
                .enumerate()
                .for_each_init(
                    Vec::new,
                    |scale: &mut Vec<f32>, (bi, (((gxb, gob), xb), rb))| {
                        let base = bi * block;
                        if let Some(d) = dropout {
                            scale.resize(gxb.len(), 0.0);
                            d.fill(base as u64, scale);
                        }
                        let rows = gxb.chunks_mut(cols).zip(gob.chunks(cols));
                        for (ri, ((gxr, gor), (xr, r))) in
                            rows.zip(xb.chunks(cols).zip(rb)).enumerate()
                        {
                            let (mut a, mut c) = (0.0f32, 0.0f32);
                            for i in 0..cols {
                                let d = gor[i] * gamma[i];
                                a += d;
                                c += d * xr[i];
                            }
                            let (a, c) = (a / n, c / n);
                            let row = base + ri * cols;
                            for i in 0..cols {
                                // d loss / d (dropout(x) + residual)
                                let dz = r * (gor[i] * gamma[i] - a - xr[i] * c);
                                if let Some(gr) = &gr {
                                    // SAFETY: each task writes only its own rows of gr.
                                    unsafe { *gr.at(row + i) += dz };
                                }
                                gxr[i] += match dropout {
                                    Some(_) => dz * scale[row - base + i],
                                    None => dz,
                                };
                            }
                        }
                    },
                );
            let dw = column_sums(rows, cols, |r, c| go[r * cols + c] * xhat[r * cols + c]);
            let db = column_sums(rows, cols, |r, c| go[r * cols + c]);
            gw.iter_mut().zip(dw).for_each(|(g, s)| *g += s);
            gb.iter_mut().zip(db).for_each(|(g, s)| *g += s);
            Ok(())
        });
    }
    out.put_tape(tape)
}

/// Sizes and layout of one multi-head attention: `b` sequences of `s` tokens, `heads` heads
/// of `d` columns. Q, K and V are `[b * s, *]` row-major matrices with row stride `ld`
/// (`hidden` when they are separate tensors, `3 hidden` when they are the column ranges of
/// one fused projection); the context and its gradient have row stride `hidden`.
#[derive(Debug, Clone, Copy)]
struct AttentionShape {
    b: usize,
    s: usize,
    heads: usize,
    d: usize,
    hidden: usize,
    ld: usize,
}

impl AttentionShape {
    fn new(b: usize, s: usize, heads: usize, hidden: usize, ld: usize) -> Self {
        AttentionShape {
            b,
            s,
            heads,
            d: hidden / heads,
            hidden,
            ld,
        }
    }

    /// Offsets of task `task`'s (sequence, head) block in Q/K/V and in the context.
    fn blocks(&self, task: usize) -> (usize, usize) {
        let (bi, hi) = (task / self.heads, task % self.heads);
        (
            bi * self.s * self.ld + hi * self.d,
            bi * self.s * self.hidden + hi * self.d,
        )
    }

    /// `(probabilities [b, heads, s, s], context [b * s, hidden])`. `qkv` are Q, K and V, each
    /// starting at its first element with row stride `ld`; `bias` is `(b, s)`; `dropout` a
    /// mask over the probabilities (row-major `[b, heads, s, s]`). One task per (sequence, head): scores,
    /// softmax, dropout, probabilities × values.
    fn forward(
        &self,
        [qs, ks, vs]: [&[f32]; 3],
        bias: &[f32],
        dropout: Option<Dropout>,
    ) -> (Vec<f32>, Vec<f32>) {
        let AttentionShape {
            b,
            s,
            heads,
            d,
            hidden,
            ld,
        } = *self;
        let scale = 1.0 / (d as f32).sqrt();
        let mut probs = vec![0.0f32; b * heads * s * s];
        let mut context = vec![0.0f32; b * s * hidden];
        let ctx = SharedMut(context.as_mut_ptr());
        probs.par_chunks_mut(s * s).enumerate().for_each_init(
            || vec![0.0f32; s * s],
            |dropped, (task, p)| {
                let (block, out_block) = self.blocks(task);
                // SAFETY: in-bounds views of q, k, v; each task writes only its own
                // (sequence, head) block of `context`.
                unsafe {
                    gemm_strided(
                        (s, s, d),
                        p.as_mut_ptr(),
                        s,
                        false,
                        qs.as_ptr().add(block),
                        (ld, 1),
                        ks.as_ptr().add(block),
                        (1, ld),
                        scale,
                    );
                }
                let bi = task / heads;
                let key_bias = &bias[bi * s..(bi + 1) * s];
                for row in p.chunks_mut(s) {
                    let mut max = f32::NEG_INFINITY;
                    for (x, kb) in row.iter_mut().zip(key_bias) {
                        *x += kb;
                        max = max.max(*x);
                    }
                    let mut sum = 0.0f32;
                    for x in row.iter_mut() {
                        *x = (*x - max).exp();
                        sum += *x;
                    }
                    let inv = 1.0 / sum;
                    row.iter_mut().for_each(|x| *x *= inv);
                }
                let used = dropped_probs(p, dropout, task * s * s, dropped);
                unsafe {
                    gemm_strided(
                        (s, d, s),
                        ctx.at(out_block),
                        hidden,
                        false,
                        used.as_ptr(),
                        (s, 1),
                        vs.as_ptr().add(block),
                        (ld, 1),
                        1.0,
                    );
                }
            },
        );
        (probs, context)
    }

    /// Adds the gradients of Q, K and V to `targets` (layout as `qkv`, row stride `ld`),
    /// given the forward pass's inputs and probabilities and the context's gradient `go`.
    ///
    /// # Safety
    /// Each target must point at a buffer with Q's layout (row stride `ld`, `b * s` rows),
    /// and no other thread may access those elements meanwhile.
    unsafe fn backward(
        &self,
        [qs, ks, vs]: [&[f32]; 3],
        probs: &[f32],
        dropout: Option<Dropout>,
        go: &[f32],
        [gq, gk, gv]: [SharedMut; 3],
    ) {
        let AttentionShape {
            b,
            s,
            heads,
            d,
            hidden,
            ld,
        } = *self;
        let scale = 1.0 / (d as f32).sqrt();
        (0..b * heads).into_par_iter().for_each_init(
            || {
                let n = s * s;
                (vec![0.0f32; n], vec![0.0f32; n], vec![0.0f32; n])
            },
            |(dropped, dp, mask), task| {
                let (block, out_block) = self.blocks(task);
                let p = &probs[task * s * s..(task + 1) * s * s];
                // This block's part of the mask, computed again (the forward pass kept none).
                let used: &[f32] = match dropout {
                    Some(d) => {
                        d.fill((task * s * s) as u64, mask);
                        for (o, (p, k)) in dropped.iter_mut().zip(p.iter().zip(mask.iter())) {
                            *o = p * k;
                        }
                        dropped
                    }
                    None => p,
                };
                // SAFETY: each task reads shared inputs and writes only its own
                // (sequence, head) blocks of gq, gk, gv.
                unsafe {
                    // dV += P_droppedᵀ dO
                    gemm_strided(
                        (s, d, s),
                        gv.at(block),
                        ld,
                        true,
                        used.as_ptr(),
                        (1, s),
                        go.as_ptr().add(out_block),
                        (hidden, 1),
                        1.0,
                    );
                    // dP_dropped = dO Vᵀ
                    gemm_strided(
                        (s, s, d),
                        dp.as_mut_ptr(),
                        s,
                        false,
                        go.as_ptr().add(out_block),
                        (hidden, 1),
                        vs.as_ptr().add(block),
                        (1, ld),
                        1.0,
                    );
                }
                if dropout.is_some() {
                    dp.iter_mut().zip(mask.iter()).for_each(|(g, k)| *g *= k);
                }
                // Softmax backward: dS = P ⊙ (dP − rowsum(dP ⊙ P)).
                for (g, p) in dp.chunks_mut(s).zip(p.chunks(s)) {
                    let dot: f32 = g.iter().zip(p).map(|(g, p)| g * p).sum();
                    g.iter_mut().zip(p).for_each(|(g, p)| *g = p * (*g - dot));
                }
                unsafe {
                    // dQ += scale · dS K
                    gemm_strided(
                        (s, d, s),
                        gq.at(block),
                        ld,
                        true,
                        dp.as_ptr(),
                        (s, 1),
                        ks.as_ptr().add(block),
                        (ld, 1),
                        scale,
                    );
                    // dK += scale · dSᵀ Q
                    gemm_strided(
                        (s, d, s),
                        gk.at(block),
                        ld,
                        true,
                        dp.as_ptr(),
                        (1, s),
                        qs.as_ptr().add(block),
                        (ld, 1),
                        scale,
                    );
                }
            },
        );
    }
}

impl BertDevice for Cpu {
    fn linear<T: Tape<f32, Self>>(
        x: Matrix<Self, T>,
        weight: &Matrix<Self>,
        bias: &Vector<Self>,
    ) -> Matrix<Self, T> {
        let (x, mut tape) = x.split_tape();
        let (rows, inner) = *x.shape();
        let (outs, weight_inner) = *weight.shape();
        assert_eq!(
            inner, weight_inner,
            "linear: x is [rows, in], weight [out, in]"
        );
        let (xs, w, b) = (host(&x), host(weight), host(bias));
        // y = bias on every row, then y += x · wᵀ (wᵀ read through strides, never copied).
        let mut y = vec![0.0f32; rows * outs];
        y.par_chunks_mut(outs * ROW_BLOCK).for_each(|block| {
            block
                .chunks_mut(outs)
                .for_each(|row| row.copy_from_slice(&b));
        });
        // SAFETY: the buffers hold rows·outs, rows·inner and outs·inner elements.
        unsafe {
            gemm_accumulate(
                (rows, outs, inner),
                y.as_mut_ptr(),
                xs.as_ptr(),
                (inner, 1),
                w.as_ptr(),
                (1, inner),
            )
        };
        let out = x.device().tensor_from_vec(y, (rows, outs));
        if T::OWNS_TAPE {
            let (xg, wg, bg, og) = (x.ghost(), weight.ghost(), bias.ghost(), out.ghost());
            tape.add_backward_op(move |grads| {
                let (gx, gw, gb, go) = grad_slices!(grads; xg, wg, bg, og);
                // SAFETY: gradient buffers have their tensors' sizes (see above).
                unsafe {
                    // dx += dy · w: [rows, out] · [out, in]
                    gemm_accumulate(
                        (rows, inner, outs),
                        gx.as_mut_ptr(),
                        go.as_ptr(),
                        (outs, 1),
                        w.as_ptr(),
                        (inner, 1),
                    );
                    // dw += dyᵀ · x: [out, rows] · [rows, in]
                    gemm_accumulate(
                        (outs, inner, rows),
                        gw.as_mut_ptr(),
                        go.as_ptr(),
                        (1, outs),
                        xs.as_ptr(),
                        (inner, 1),
                    );
                }
                let sums = column_sums(rows, outs, |r, c| go[r * outs + c]);
                gb.iter_mut().zip(sums).for_each(|(g, s)| *g += s);
                Ok(())
            });
        }
        out.put_tape(tape)
    }

    fn add_bias<T: Tape<f32, Self>>(x: Matrix<Self, T>, bias: &Vector<Self>) -> Matrix<Self, T> {
        let (x, mut tape) = x.split_tape();
        let (rows, cols) = *x.shape();
        let b = host(bias);
        let mut y = host(&x);
        y.par_chunks_mut(cols * ROW_BLOCK).for_each(|block| {
            for row in block.chunks_mut(cols) {
                row.iter_mut().zip(&b).for_each(|(v, b)| *v += b);
            }
        });
        let out = x.device().tensor_from_vec(y, (rows, cols));
        if T::OWNS_TAPE {
            let (xg, bg, og) = (x.ghost(), bias.ghost(), out.ghost());
            tape.add_backward_op(move |grads| {
                let (gx, gb, go) = grad_slices!(grads; xg, bg, og);
                add_assign(gx, go);
                let sums = column_sums(rows, cols, |r, c| go[r * cols + c]);
                gb.iter_mut().zip(sums).for_each(|(g, s)| *g += s);
                Ok(())
            });
        }
        out.put_tape(tape)
    }

    fn layer_norm<T: Tape<f32, Self>>(
        x: Matrix<Self, T>,
        weight: &Vector<Self>,
        bias: &Vector<Self>,
        eps: f64,
    ) -> Matrix<Self, T> {
        cpu_layer_norm(x, None, None, weight, bias, eps)
    }

    fn residual_layer_norm<T: Tape<f32, Self>>(
        x: Matrix<Self, T>,
        residual: Matrix<Self, T>,
        dropout: Option<Dropout>,
        weight: &Vector<Self>,
        bias: &Vector<Self>,
        eps: f64,
    ) -> Matrix<Self, T> {
        cpu_layer_norm(x, Some(residual), dropout, weight, bias, eps)
    }

    fn gelu<T: Tape<f32, Self>>(x: Matrix<Self, T>) -> Matrix<Self, T> {
        elementwise(
            x,
            |_, x| x * normal_cdf(x),
            |_, x| normal_cdf(x) + x * normal_pdf(x),
        )
    }

    fn dropout<T: Tape<f32, Self>>(x: Matrix<Self, T>, dropout: Dropout) -> Matrix<Self, T> {
        cpu_dropout(x, dropout)
    }

    fn attention<T: Tape<f32, Self>>(
        q: Matrix<Self, T>,
        k: Matrix<Self, T>,
        v: Matrix<Self, T>,
        attention_bias: &Matrix<Self>,
        heads: usize,
        dropout: Option<Dropout>,
    ) -> Matrix<Self, T> {
        let (q, tq) = q.split_tape();
        let (k, tk) = k.split_tape();
        let (v, tv) = v.split_tape();
        let mut tape = tq.merge(tk).merge(tv);
        let (b, s) = *attention_bias.shape();
        let hidden = q.shape().1;
        let shape = AttentionShape::new(b, s, heads, hidden, hidden);
        let (qs, ks, vs, bias) = (host(&q), host(&k), host(&v), host(attention_bias));
        let qkv = [qs.as_slice(), ks.as_slice(), vs.as_slice()];
        let (probs, context) = shape.forward(qkv, &bias, dropout);
        let out = q.device().tensor_from_vec(context, (b * s, hidden));
        if T::OWNS_TAPE {
            let (qg, kg, vg, og) = (q.ghost(), k.ghost(), v.ghost(), out.ghost());
            tape.add_backward_op(move |grads| {
                let (gq, gk, gv, go) = grad_slices!(grads; qg, kg, vg, og);
                let qkv = [qs.as_slice(), ks.as_slice(), vs.as_slice()];
                let grads = [gq, gk, gv].map(|g| SharedMut(g.as_mut_ptr()));
                // SAFETY: gq, gk, gv have q's `[b * s, hidden]` shape, the layout of `shape`.
                unsafe { shape.backward(qkv, &probs, dropout, go, grads) };
                Ok(())
            });
        }
        out.put_tape(tape)
    }

    fn self_attention<T: Tape<f32, Self>>(
        x: Matrix<Self, T>,
        weights: [&Matrix<Self>; 3],
        biases: [&Vector<Self>; 3],
        attention_bias: &Matrix<Self>,
        heads: usize,
        dropout: Option<Dropout>,
    ) -> Matrix<Self, T> {
        let (x, mut tape) = x.split_tape();
        let (rows, hidden) = *x.shape();
        let (b, s) = *attention_bias.shape();
        let ld = 3 * hidden;
        let shape = AttentionShape::new(b, s, heads, hidden, ld);
        let xs = host(&x);
        let bias = host(attention_bias);
        // [Wq; Wk; Wv] as one [3 hidden, hidden] weight and [bq, bk, bv] as one bias: Q, K and
        // V come out of one product as the column ranges of a [rows, 3 hidden] matrix.
        let w: Vec<f32> = weights.iter().flat_map(|w| host(*w)).collect();
        let bcat: Vec<f32> = biases.iter().flat_map(|b| host(*b)).collect();
        let mut qkv = vec![0.0f32; rows * ld];
        qkv.par_chunks_mut(ld * ROW_BLOCK).for_each(|block| {
            block
                .chunks_mut(ld)
                .for_each(|row| row.copy_from_slice(&bcat));
        });
        // SAFETY: qkv is [rows, 3 hidden], xs [rows, hidden], w [3 hidden, hidden].
        unsafe {
            gemm_accumulate(
                (rows, ld, hidden),
                qkv.as_mut_ptr(),
                xs.as_ptr(),
                (hidden, 1),
                w.as_ptr(),
                (1, hidden),
            )
        };
        let split = [&qkv[..], &qkv[hidden..], &qkv[2 * hidden..]];
        let (probs, context) = shape.forward(split, &bias, dropout);
        let out = x.device().tensor_from_vec(context, (rows, hidden));
        if T::OWNS_TAPE {
            let (xg, og) = (x.ghost(), out.ghost());
            let wg = weights.map(|w| w.ghost());
            let bg = biases.map(|b| b.ghost());
            tape.add_backward_op(move |grads| {
                let (gx, gwq, gwk, gwv, gbq, gbk, gbv, go) =
                    grad_slices!(grads; xg, wg[0], wg[1], wg[2], bg[0], bg[1], bg[2], og);
                let split = [&qkv[..], &qkv[hidden..], &qkv[2 * hidden..]];
                // d[Q K V], the same [rows, 3 hidden] layout as qkv.
                let mut dqkv = vec![0.0f32; rows * ld];
                let base = dqkv.as_mut_ptr();
                // SAFETY: dqkv is [rows, 3 hidden]: Q, K, V's gradients at column offsets
                // 0, hidden and 2 hidden with row stride 3 hidden, the layout of `shape`.
                unsafe {
                    let targets = [0, hidden, 2 * hidden].map(|c| SharedMut(base.add(c)));
                    shape.backward(split, &probs, dropout, go, targets);
                }
                let mut dw = vec![0.0f32; ld * hidden];
                // SAFETY: buffer sizes as in the forward pass; dw is [3 hidden, hidden].
                unsafe {
                    // dx += d[QKV] · [Wq; Wk; Wv]: [rows, 3h] · [3h, h]
                    gemm_accumulate(
                        (rows, hidden, ld),
                        gx.as_mut_ptr(),
                        dqkv.as_ptr(),
                        (ld, 1),
                        w.as_ptr(),
                        (hidden, 1),
                    );
                    // d[Wq; Wk; Wv] = d[QKV]ᵀ · x: [3h, rows] · [rows, h]
                    gemm_accumulate(
                        (ld, hidden, rows),
                        dw.as_mut_ptr(),
                        dqkv.as_ptr(),
                        (1, ld),
                        xs.as_ptr(),
                        (hidden, 1),
                    );
                }
                for (g, d) in [gwq, gwk, gwv].into_iter().zip(dw.chunks(hidden * hidden)) {
                    add_assign(g, d);
                }
                let db = column_sums(rows, ld, |r, c| dqkv[r * ld + c]);
                for (g, d) in [gbq, gbk, gbv].into_iter().zip(db.chunks(hidden)) {
                    add_assign(g, d);
                }
                Ok(())
            });
        }
        out.put_tape(tape)
    }

    fn label_log_probs<T: Tape<f32, Self>>(
        logits: Matrix<Self, T>,
        labels: &[usize],
    ) -> (Vector<Self, T>, Vec<bool>) {
        let (logits, mut tape) = logits.split_tape();
        let (rows, cols) = *logits.shape();
        assert_eq!(labels.len(), rows, "one label per row");
        let xs = host(&logits);
        // Per row: log-sum-exp, the label's log-probability, and whether it is the max.
        let per_row: Vec<(f32, f32, bool)> = xs
            .par_chunks(cols)
            .zip(labels.par_iter())
            .map(|(row, &label)| {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let sum: f32 = row.iter().map(|x| (x - max).exp()).sum();
                let lse = max + sum.ln();
                (lse, row[label] - lse, row[label] >= max)
            })
            .collect();
        let values = per_row.iter().map(|r| r.1).collect();
        let is_max = per_row.iter().map(|r| r.2).collect();
        let out = logits.device().tensor_from_vec(values, (rows,));
        if T::OWNS_TAPE {
            let (xg, og) = (logits.ghost(), out.ghost());
            let labels = labels.to_vec();
            tape.add_backward_op(move |grads| {
                let (gx, go) = grad_slices!(grads; xg, og);
                // d/dx_ij of (x_il − lse_i) = δ_jl − softmax_ij.
                gx.par_chunks_mut(cols)
                    .zip(xs.par_chunks(cols))
                    .enumerate()
                    .for_each(|(i, (gr, xr))| {
                        let (g, lse) = (go[i], per_row[i].0);
                        for (gv, x) in gr.iter_mut().zip(xr) {
                            *gv -= g * (x - lse).exp();
                        }
                        gr[labels[i]] += g;
                    });
                Ok(())
            });
        }
        (out.put_tape(tape), is_max)
    }
}
