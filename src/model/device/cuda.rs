//! The CUDA device (feature `cuda`).
//!
//! Two parts:
//!
//! - `impl BertDevice for Cuda`: today every kernel is the dfdx composition of
//!   [`super::reference`] (correct, GPU vs CPU within 4e-6, but host-bound: dropout masks are
//!   computed on the host and uploaded).
//! - [`CudaKernels`]: bertline's own fused kernels, CUDA C in `src/model/device/cuda/*.cu`,
//!   compiled by NVRTC when first loaded (`--fmad=false`, so every operation rounds as on the
//!   CPU) and launched on cudarc buffers: Philox dropout (the CPU's bits), bias + GELU,
//!   dropout + residual + LayerNorm, masked softmax + dropout, the MLM loss over gathered
//!   rows, fused AdamW, the gradient-norm reduction, bf16 casts. Each has a CPU reference in
//!   [`super::host`] (or [`crate::optim`], [`super::philox`]) and an ignored GPU test in
//!   `tests/cuda_kernels.rs`.
//!
//! Routing the `BertDevice` methods through [`CudaKernels`] needs dfdx's `CudaDevice` handle,
//! its cuBLAS handle and the `CudaSlice` behind a tensor, all crate-private in dfdx 0.13; that
//! step (a vendored dfdx with those three accessors) is listed in docs/gpu.md as owed.

use std::sync::Arc;

use cudarc::driver::{
    CudaDevice, CudaFunction, CudaSlice, DeviceRepr, DeviceSlice, LaunchAsync, LaunchConfig,
};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};

use super::Dropout;
use crate::optim::{AdamWStep, FlatLayout};

impl super::BertDevice for dfdx::tensor::Cuda {}

/// The shared header: Philox, the dropout description, block reductions.
pub const PHILOX_CUH: &str = include_str!("cuda/philox.cuh");

/// Every kernel module: (name, CUDA source, kernel names).
pub const MODULES: [(&str, &str, &[&str]); 7] = [
    (
        "bertline_dropout",
        include_str!("cuda/dropout.cu"),
        &["dropout_mask", "dropout_fwd", "dropout_bwd"],
    ),
    (
        "bertline_bias_gelu",
        include_str!("cuda/bias_gelu.cu"),
        &["bias_gelu_fwd", "bias_gelu_bwd", "column_sums"],
    ),
    (
        "bertline_layer_norm",
        include_str!("cuda/layer_norm.cu"),
        &[
            "residual_layer_norm_fwd",
            "residual_layer_norm_bwd",
            "layer_norm_param_grads",
        ],
    ),
    (
        "bertline_attention",
        include_str!("cuda/attention.cu"),
        &["masked_softmax_dropout_fwd", "masked_softmax_dropout_bwd"],
    ),
    (
        "bertline_mlm_loss",
        include_str!("cuda/mlm_loss.cu"),
        &[
            "gather_rows",
            "scatter_add_rows",
            "label_log_probs_fwd",
            "label_log_probs_bwd",
        ],
    ),
    (
        "bertline_adamw",
        include_str!("cuda/adamw.cu"),
        &["adamw_fused", "sum_squares_partial", "finish_norm"],
    ),
    (
        "bertline_bf16",
        include_str!("cuda/bf16.cu"),
        &["f32_to_bf16", "bf16_to_f32"],
    ),
];

/// A module's source as NVRTC compiles it: the header in place of its `#include` (NVRTC is
/// given no include path), without its `#pragma once`.
pub fn module_source(source: &str) -> String {
    source.replace(
        "#include \"philox.cuh\"",
        &PHILOX_CUH.replace("#pragma once\n", ""),
    )
}

/// What can go wrong loading or launching the kernels.
#[derive(Debug, thiserror::Error)]
pub enum CudaKernelError {
    /// NVRTC rejected a module (the log names the line).
    #[error("compiling {module}: {log}")]
    Compile { module: String, log: String },
    /// The driver refused a load, an allocation or a launch.
    #[error("CUDA driver: {0:?}")]
    Driver(cudarc::driver::DriverError),
}

impl From<cudarc::driver::DriverError> for CudaKernelError {
    fn from(e: cudarc::driver::DriverError) -> Self {
        CudaKernelError::Driver(e)
    }
}

type Result<T> = std::result::Result<T, CudaKernelError>;

/// [`Dropout`] as the kernels take it (`struct DropoutParams` in `cuda/philox.cuh`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DropoutParams {
    pub seed_lo: u32,
    pub seed_hi: u32,
    pub step: u32,
    pub site: u32,
    /// Words below it are dropped; 0 with `keep_scale` 1: no dropout.
    pub threshold: u32,
    pub keep_scale: f32,
}

// SAFETY: a #[repr(C)] struct of 4-byte scalars, the layout of the CUDA struct.
unsafe impl DeviceRepr for DropoutParams {}

impl DropoutParams {
    /// The kernels' form of `dropout` (`None`: keep everything, scale 1).
    pub fn new(dropout: Option<Dropout>) -> Self {
        match dropout {
            Some(d) => DropoutParams {
                seed_lo: d.seed as u32,
                seed_hi: (d.seed >> 32) as u32,
                step: d.step,
                site: d.site,
                threshold: u32::try_from(d.threshold()).expect("dropout probability below 1"),
                keep_scale: d.keep_scale(),
            },
            None => DropoutParams {
                seed_lo: 0,
                seed_hi: 0,
                step: 0,
                site: 0,
                threshold: 0,
                keep_scale: 1.0,
            },
        }
    }
}

/// [`AdamWStep`] as the kernel takes it (`struct AdamWStepParams` in `cuda/adamw.cu`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStepParams {
    pub step_size: f32,
    pub one_minus_beta1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    pub bias_correction2_sqrt: f32,
    pub eps: f32,
    pub decay: f32,
    pub grad_scale: f32,
    pub has_grad_scale: u32,
}

// SAFETY: a #[repr(C)] struct of 4-byte scalars, the layout of the CUDA struct.
unsafe impl DeviceRepr for AdamWStepParams {}

impl From<&AdamWStep> for AdamWStepParams {
    fn from(s: &AdamWStep) -> Self {
        AdamWStepParams {
            step_size: s.step_size,
            one_minus_beta1: s.one_minus_beta1,
            beta2: s.beta2,
            one_minus_beta2: s.one_minus_beta2,
            bias_correction2_sqrt: s.bias_correction2_sqrt,
            eps: s.eps,
            decay: s.decay,
            grad_scale: s.grad_scale.unwrap_or(1.0),
            has_grad_scale: s.grad_scale.is_some() as u32,
        }
    }
}

/// Threads per block of every kernel (a multiple of 32, as the block reductions need).
const THREADS: u32 = 256;
/// Blocks of a grid-stride element-wise kernel: enough to fill an H200 (132 SMs) a few times.
const MAX_BLOCKS: u64 = 132 * 16;

fn elementwise(n: u64) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(THREADS as u64).clamp(1, MAX_BLOCKS) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn per_row(rows: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.max(1), 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn per_column(cols: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (cols.div_ceil(THREADS).max(1), 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A null device pointer for the kernels' optional arguments.
const NULL: u64 = 0;

/// bertline's CUDA kernels, loaded on one device.
#[derive(Debug, Clone)]
pub struct CudaKernels {
    /// The device they run on.
    pub dev: Arc<CudaDevice>,
}

impl CudaKernels {
    /// Compiles every module with NVRTC and loads it on `dev`.
    pub fn load(dev: Arc<CudaDevice>) -> Result<Self> {
        for (module, source, functions) in MODULES {
            if dev.has_func(module, functions[0]) {
                continue;
            }
            let options = CompileOptions {
                fmad: Some(false),
                ..Default::default()
            };
            let ptx = compile_ptx_with_opts(module_source(source), options).map_err(|e| {
                CudaKernelError::Compile {
                    module: module.to_string(),
                    log: format!("{e:?}"),
                }
            })?;
            dev.load_ptx(ptx, module, functions)?;
        }
        Ok(CudaKernels { dev })
    }

    fn func(&self, module: &str, name: &str) -> CudaFunction {
        self.dev
            .get_func(module, name)
            .unwrap_or_else(|| panic!("{module}::{name} is loaded by CudaKernels::load"))
    }

    /// `out[i]` = element `i` of the dropout mask.
    pub fn dropout_mask(&self, dropout: Dropout, out: &mut CudaSlice<f32>) -> Result<()> {
        let n = out.len() as u64;
        let f = self.func("bertline_dropout", "dropout_mask");
        // SAFETY: `out` holds n floats; the kernel writes out[0..n].
        unsafe { f.launch(elementwise(n), (n, out, DropoutParams::new(Some(dropout)))) }?;
        Ok(())
    }

    /// `y = x ⊙ mask`.
    pub fn dropout_forward(
        &self,
        x: &CudaSlice<f32>,
        dropout: Dropout,
        y: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let n = x.len() as u64;
        assert_eq!(y.len() as u64, n);
        let f = self.func("bertline_dropout", "dropout_fwd");
        // SAFETY: x and y hold n floats.
        unsafe { f.launch(elementwise(n), (n, x, y, DropoutParams::new(Some(dropout)))) }?;
        Ok(())
    }

    /// `gx += gy ⊙ mask`.
    pub fn dropout_backward(
        &self,
        gy: &CudaSlice<f32>,
        dropout: Dropout,
        gx: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let n = gy.len() as u64;
        assert_eq!(gx.len() as u64, n);
        let f = self.func("bertline_dropout", "dropout_bwd");
        // SAFETY: gy and gx hold n floats.
        unsafe {
            f.launch(
                elementwise(n),
                (n, gy, gx, DropoutParams::new(Some(dropout))),
            )
        }?;
        Ok(())
    }

    /// `pre = x + bias`, `y = GELU(pre)` on `[rows, cols]`.
    pub fn bias_gelu_forward(
        &self,
        (rows, cols): (u32, u32),
        x: &CudaSlice<f32>,
        bias: &CudaSlice<f32>,
        pre: &mut CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let n = rows as u64 * cols as u64;
        assert!(x.len() as u64 == n && pre.len() as u64 == n && y.len() as u64 == n);
        assert_eq!(bias.len(), cols as usize);
        let f = self.func("bertline_bias_gelu", "bias_gelu_fwd");
        // SAFETY: sizes checked above.
        unsafe { f.launch(elementwise(n), (rows, cols, x, bias, pre, y)) }?;
        Ok(())
    }

    /// `gpre = gy ⊙ GELU'(pre)`.
    pub fn bias_gelu_backward(
        &self,
        (rows, cols): (u32, u32),
        pre: &CudaSlice<f32>,
        gy: &CudaSlice<f32>,
        gpre: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let n = rows as u64 * cols as u64;
        assert!(pre.len() as u64 == n && gy.len() as u64 == n && gpre.len() as u64 == n);
        let f = self.func("bertline_bias_gelu", "bias_gelu_bwd");
        // SAFETY: sizes checked above.
        unsafe { f.launch(elementwise(n), (rows, cols, pre, gy, gpre)) }?;
        Ok(())
    }

    /// `out[c] += Σ_r x[r, c]` (bias gradients).
    pub fn column_sums(
        &self,
        (rows, cols): (u32, u32),
        x: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        assert_eq!(x.len() as u64, rows as u64 * cols as u64);
        assert_eq!(out.len(), cols as usize);
        let f = self.func("bertline_bias_gelu", "column_sums");
        // SAFETY: sizes checked above.
        unsafe { f.launch(per_column(cols), (rows, cols, x, out)) }?;
        Ok(())
    }

    /// `LayerNorm(x ⊙ mask + residual)`; writes the saved `xhat`, `rstd` and the output `y`.
    #[allow(clippy::too_many_arguments)]
    pub fn residual_layer_norm_forward(
        &self,
        (rows, cols): (u32, u32),
        x: &CudaSlice<f32>,
        residual: Option<&CudaSlice<f32>>,
        (gamma, beta): (&CudaSlice<f32>, &CudaSlice<f32>),
        eps: f32,
        dropout: Option<Dropout>,
        (xhat, rstd, y): (
            &mut CudaSlice<f32>,
            &mut CudaSlice<f32>,
            &mut CudaSlice<f32>,
        ),
    ) -> Result<()> {
        let n = rows as usize * cols as usize;
        assert!(x.len() == n && xhat.len() == n && y.len() == n && rstd.len() == rows as usize);
        assert!(residual.is_none_or(|r| r.len() == n));
        let f = self.func("bertline_layer_norm", "residual_layer_norm_fwd");
        let d = DropoutParams::new(dropout);
        // SAFETY: sizes checked above; a missing residual is a null pointer, which the kernel
        // tests.
        unsafe {
            match residual {
                Some(r) => f.launch(
                    per_row(rows),
                    (rows, cols, x, r, gamma, beta, eps, d, xhat, rstd, y),
                ),
                None => f.launch(
                    per_row(rows),
                    (rows, cols, x, NULL, gamma, beta, eps, d, xhat, rstd, y),
                ),
            }
        }?;
        Ok(())
    }

    /// Backward of [`CudaKernels::residual_layer_norm_forward`]: `gx += dz ⊙ mask`,
    /// `gresidual += dz`, `ggamma += Σ gy xhat`, `gbeta += Σ gy`.
    #[allow(clippy::too_many_arguments)]
    pub fn residual_layer_norm_backward(
        &self,
        (rows, cols): (u32, u32),
        gy: &CudaSlice<f32>,
        (xhat, rstd): (&CudaSlice<f32>, &CudaSlice<f32>),
        gamma: &CudaSlice<f32>,
        dropout: Option<Dropout>,
        (gx, gresidual): (&mut CudaSlice<f32>, Option<&mut CudaSlice<f32>>),
        (ggamma, gbeta): (&mut CudaSlice<f32>, &mut CudaSlice<f32>),
    ) -> Result<()> {
        let n = rows as usize * cols as usize;
        assert!(gy.len() == n && xhat.len() == n && gx.len() == n);
        let f = self.func("bertline_layer_norm", "residual_layer_norm_bwd");
        let d = DropoutParams::new(dropout);
        // SAFETY: sizes checked above; a missing residual gradient is a null pointer.
        unsafe {
            match gresidual {
                Some(gr) => f.launch(
                    per_row(rows),
                    (rows, cols, gy, xhat, rstd, gamma, d, gx, gr),
                ),
                None => f.launch(
                    per_row(rows),
                    (rows, cols, gy, xhat, rstd, gamma, d, gx, NULL),
                ),
            }
        }?;
        let f = self.func("bertline_layer_norm", "layer_norm_param_grads");
        // SAFETY: gy, xhat are [rows, cols]; ggamma, gbeta [cols].
        unsafe { f.launch(per_column(cols), (rows, cols, gy, xhat, ggamma, gbeta)) }?;
        Ok(())
    }

    /// In place over `scores_probs` (`[tasks, s, s]`, scaled scores): the masked softmax;
    /// `dropped` = probabilities ⊙ mask. `key_bias` is `[tasks / heads, s]`.
    #[allow(clippy::too_many_arguments)]
    pub fn masked_softmax_dropout_forward(
        &self,
        (tasks, heads, s): (u32, u32, u32),
        scores_probs: &mut CudaSlice<f32>,
        key_bias: &CudaSlice<f32>,
        dropout: Option<Dropout>,
        dropped: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let n = tasks as usize * s as usize * s as usize;
        assert!(scores_probs.len() == n && dropped.len() == n);
        assert_eq!(key_bias.len(), (tasks / heads) as usize * s as usize);
        let f = self.func("bertline_attention", "masked_softmax_dropout_fwd");
        let d = DropoutParams::new(dropout);
        // SAFETY: sizes checked above.
        unsafe {
            f.launch(
                per_row(tasks * s),
                (tasks, heads, s, scores_probs, key_bias, d, dropped),
            )
        }?;
        Ok(())
    }

    /// Over `g` (the dropped probabilities' gradient, in place): the scores' gradient.
    pub fn masked_softmax_dropout_backward(
        &self,
        (tasks, s): (u32, u32),
        probs: &CudaSlice<f32>,
        g: &mut CudaSlice<f32>,
        dropout: Option<Dropout>,
    ) -> Result<()> {
        let n = tasks as usize * s as usize * s as usize;
        assert!(probs.len() == n && g.len() == n);
        let f = self.func("bertline_attention", "masked_softmax_dropout_bwd");
        // SAFETY: sizes checked above.
        unsafe {
            f.launch(
                per_row(tasks * s),
                (tasks, s, probs, g, DropoutParams::new(dropout)),
            )
        }?;
        Ok(())
    }

    /// `out[r] = x[index[r]]` for `[*, cols]` rows.
    pub fn gather_rows(
        &self,
        cols: u32,
        x: &CudaSlice<f32>,
        index: &CudaSlice<u32>,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let n = index.len() as u32;
        assert_eq!(out.len(), n as usize * cols as usize);
        let f = self.func("bertline_mlm_loss", "gather_rows");
        // SAFETY: out is [n, cols]; the caller's indices are rows of x.
        unsafe { f.launch(elementwise(out.len() as u64), (n, cols, x, index, out)) }?;
        Ok(())
    }

    /// Per row of `logits` (`[rows, cols]`): the label's log-probability, the log-sum-exp,
    /// and whether the label is the maximum (1) or not (0).
    pub fn label_log_probs_forward(
        &self,
        cols: u32,
        logits: &CudaSlice<f32>,
        labels: &CudaSlice<u32>,
        (logprob, lse, is_max): (&mut CudaSlice<f32>, &mut CudaSlice<f32>, &mut CudaSlice<u8>),
    ) -> Result<()> {
        let rows = labels.len() as u32;
        assert_eq!(logits.len(), rows as usize * cols as usize);
        assert!(logprob.len() == rows as usize && lse.len() == rows as usize);
        let f = self.func("bertline_mlm_loss", "label_log_probs_fwd");
        // SAFETY: sizes checked above.
        unsafe {
            f.launch(
                per_row(rows),
                (rows, cols, logits, labels, logprob, lse, is_max),
            )
        }?;
        Ok(())
    }

    /// `gx += gout[r] (δ(j, label) − softmax[r, j])`.
    pub fn label_log_probs_backward(
        &self,
        cols: u32,
        (logits, lse): (&CudaSlice<f32>, &CudaSlice<f32>),
        labels: &CudaSlice<u32>,
        gout: &CudaSlice<f32>,
        gx: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let rows = labels.len() as u32;
        assert!(logits.len() == gx.len() && gout.len() == rows as usize);
        let f = self.func("bertline_mlm_loss", "label_log_probs_bwd");
        // SAFETY: sizes checked above.
        unsafe {
            f.launch(
                elementwise(gx.len() as u64),
                (rows, cols, logits, lse, labels, gout, gx),
            )
        }?;
        Ok(())
    }

    /// The layout's offsets and decay flags on the device, for [`CudaKernels::adamw`].
    pub fn upload_layout(&self, layout: &FlatLayout) -> Result<(CudaSlice<u64>, CudaSlice<u8>)> {
        let offsets: Vec<u64> = layout.offsets.iter().map(|&o| o as u64).collect();
        let decays: Vec<u8> = layout.decays.iter().map(|&d| d as u8).collect();
        Ok((
            self.dev.htod_sync_copy(&offsets)?,
            self.dev.htod_sync_copy(&decays)?,
        ))
    }

    /// One fused AdamW step over the flat buffers (see [`crate::optim::adamw_fused`]).
    #[allow(clippy::too_many_arguments)]
    pub fn adamw(
        &self,
        (offsets, decays): (&CudaSlice<u64>, &CudaSlice<u8>),
        step: &AdamWStep,
        params: &mut CudaSlice<f32>,
        grads: &CudaSlice<f32>,
        exp_avg: &mut CudaSlice<f32>,
        exp_avg_sq: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let n = params.len() as u64;
        assert!(
            grads.len() as u64 == n && exp_avg.len() as u64 == n && exp_avg_sq.len() as u64 == n
        );
        let n_params = decays.len() as u32;
        assert_eq!(offsets.len(), decays.len() + 1);
        let f = self.func("bertline_adamw", "adamw_fused");
        let s = AdamWStepParams::from(step);
        // SAFETY: sizes checked above; offsets end at n.
        unsafe {
            f.launch(
                elementwise(n),
                (
                    n, params, grads, exp_avg, exp_avg_sq, offsets, decays, n_params, s,
                ),
            )
        }?;
        Ok(())
    }

    /// `sqrt(Σ x²)` in f64, reduced on the device: one partial sum per block, then their sum
    /// in order (deterministic). Only the result crosses to the host.
    pub fn global_norm(&self, x: &CudaSlice<f32>) -> Result<f64> {
        let n = x.len() as u64;
        let cfg = elementwise(n);
        let blocks = cfg.grid_dim.0;
        let mut partials = self.dev.alloc_zeros::<f64>(blocks as usize)?;
        let mut out = self.dev.alloc_zeros::<f64>(1)?;
        let f = self.func("bertline_adamw", "sum_squares_partial");
        // SAFETY: partials has one entry per block.
        unsafe { f.launch(cfg, (n, x, &mut partials)) }?;
        let f = self.func("bertline_adamw", "finish_norm");
        let one = LaunchConfig {
            grid_dim: (1, 1, 1),
            block_dim: (1, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: `blocks` partials, one output.
        unsafe { f.launch(one, (blocks, &partials, &mut out)) }?;
        Ok(self.dev.dtoh_sync_copy(&out)?[0])
    }

    /// f32 → bf16 bits, round to nearest even.
    pub fn to_bf16(&self, x: &CudaSlice<f32>, y: &mut CudaSlice<u16>) -> Result<()> {
        let n = x.len() as u64;
        assert_eq!(y.len() as u64, n);
        let f = self.func("bertline_bf16", "f32_to_bf16");
        // SAFETY: both hold n values.
        unsafe { f.launch(elementwise(n), (n, x, y)) }?;
        Ok(())
    }

    /// bf16 bits → f32, exact.
    pub fn from_bf16(&self, x: &CudaSlice<u16>, y: &mut CudaSlice<f32>) -> Result<()> {
        let n = x.len() as u64;
        assert_eq!(y.len() as u64, n);
        let f = self.func("bertline_bf16", "bf16_to_f32");
        // SAFETY: both hold n values.
        unsafe { f.launch(elementwise(n), (n, x, y)) }?;
        Ok(())
    }
}
