//! AdamW (Loshchilov & Hutter 2019) as BERT trains with it: bias-corrected moments,
//! decoupled weight decay except on LayerNorm and bias parameters, global gradient-norm
//! clipping, and the warmup-then-linear-decay learning rate ([`lr_at`]).
//!
//! Parameters, gradients and moments share one flat layout ([`FlatLayout`]: every parameter at
//! an offset of one buffer, in [`HfParams::named_parameters`] order), and the update is one
//! fused pass over it ([`adamw_fused`], with the step's scalars in [`AdamWStep`]): the form a
//! device kernel takes. Global gradient-norm clipping is a reduction ([`ParamGrads::global_norm`])
//! whose coefficient the fused pass applies as it reads each gradient. The update follows
//! `torch.optim.AdamW` step for step, so its state (`exp_avg`, `exp_avg_sq`, `step`) saves to
//! and loads from `optim.safetensors` by HF parameter name, bit for bit.

use crate::model::BertDevice;
use std::collections::HashMap;
use std::path::Path;

use dfdx::tensor::Gradients;
use rayon::prelude::*;

use crate::config::PretrainConfig;
use crate::error::{Error, Result};
use crate::model::export::{read_safetensors, write_safetensors, TensorMap};
use crate::model::HfParams;

/// Where each parameter of a model lives in one flat buffer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlatLayout {
    /// HF parameter names, in [`HfParams::named_parameters`] order.
    pub names: Vec<String>,
    /// Parameter `i` is `offsets[i]..offsets[i + 1]`; the last entry is the total length.
    pub offsets: Vec<usize>,
    /// Whether each parameter gets weight decay ([`decays`]).
    pub decays: Vec<bool>,
}

impl FlatLayout {
    /// The layout of `model`'s parameters.
    pub fn of<D: BertDevice, M: HfParams<D>>(model: &M) -> Self {
        let params = model.named_parameters();
        let mut offsets = vec![0];
        for (_, p) in &params {
            offsets.push(offsets.last().expect("starts at 0") + p.len());
        }
        let names: Vec<String> = params.into_iter().map(|(n, _)| n).collect();
        let decays = names.iter().map(|n| decays(n)).collect();
        FlatLayout {
            names,
            offsets,
            decays,
        }
    }

    /// Total number of values.
    pub fn len(&self) -> usize {
        self.offsets.last().copied().unwrap_or(0)
    }

    /// True with no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements of parameter `i`.
    pub fn range(&self, i: usize) -> std::ops::Range<usize> {
        self.offsets[i]..self.offsets[i + 1]
    }

    /// The index of parameter `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }
}

/// Gradients on the host, one flat buffer in the model's [`FlatLayout`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParamGrads {
    /// Where each parameter's gradient is in `flat`.
    pub layout: FlatLayout,
    /// Every gradient, row-major, parameter after parameter.
    pub flat: Vec<f32>,
}

impl ParamGrads {
    /// Gradients from `(name, values)` pairs, in that order.
    pub fn from_named(named: Vec<(String, Vec<f32>)>) -> Self {
        let mut layout = FlatLayout {
            offsets: vec![0],
            ..FlatLayout::default()
        };
        let mut flat = Vec::new();
        for (name, values) in named {
            flat.extend_from_slice(&values);
            layout.offsets.push(flat.len());
            layout.decays.push(decays(&name));
            layout.names.push(name);
        }
        ParamGrads { layout, flat }
    }

    /// Copies every parameter's gradient out of `grads` (zeros where the tape never reached).
    pub fn from_gradients<D: BertDevice, M: HfParams<D>>(
        model: &M,
        grads: &mut Gradients<f32, D>,
    ) -> Self {
        let layout = FlatLayout::of(model);
        let mut flat = vec![0.0f32; layout.len()];
        for (i, (_, p)) in model.named_parameters().iter().enumerate() {
            p.grad_into(grads, &mut flat[layout.range(i)]);
        }
        ParamGrads { layout, flat }
    }

    /// Adds every parameter's gradient in `grads` to these (gradient accumulation),
    /// reusing the buffers: the first call sizes them, later steps allocate nothing.
    pub fn add_gradients<D: BertDevice, M: HfParams<D>>(
        &mut self,
        model: &M,
        grads: &mut Gradients<f32, D>,
        scratch: &mut Vec<f32>,
    ) {
        let params = model.named_parameters();
        if self.layout.names.len() != params.len() {
            self.layout = FlatLayout::of(model);
            self.flat = vec![0.0; self.layout.len()];
        }
        for (i, (name, p)) in params.iter().enumerate() {
            debug_assert_eq!(&self.layout.names[i], name);
            scratch.resize(p.len(), 0.0);
            p.grad_into(grads, scratch);
            self.flat[self.layout.range(i)]
                .par_iter_mut()
                .zip(scratch.par_iter())
                .for_each(|(a, g)| *a += g);
        }
    }

    /// Sets every gradient to zero, keeping the buffers.
    pub fn zero(&mut self) {
        self.flat.fill(0.0);
    }

    /// Adds `other` elementwise. An empty `self` takes `other`.
    pub fn accumulate(&mut self, other: ParamGrads) {
        if self.layout.names.is_empty() {
            *self = other;
            return;
        }
        assert_eq!(
            self.layout, other.layout,
            "accumulating gradients of another model"
        );
        self.flat
            .par_iter_mut()
            .zip(other.flat.par_iter())
            .for_each(|(a, b)| *a += b);
    }

    /// Multiplies every gradient by `factor`.
    pub fn scale(&mut self, factor: f32) {
        self.flat.par_iter_mut().for_each(|x| *x *= factor);
    }

    /// `sqrt(Σ g²)` over all parameters, accumulated in f64: one sum per parameter, in order,
    /// then their sum (the order is part of bit-exact resume).
    pub fn global_norm(&self) -> f64 {
        (0..self.layout.names.len())
            .map(|i| {
                self.flat[self.layout.range(i)]
                    .iter()
                    .map(|&x| (x as f64) * (x as f64))
                    .sum::<f64>()
            })
            .sum::<f64>()
            .sqrt()
    }

    /// The gradient of the parameter `name`.
    pub fn get(&self, name: &str) -> Option<&[f32]> {
        let i = self.layout.position(name)?;
        Some(&self.flat[self.layout.range(i)])
    }

    /// `(name, gradient)` for every parameter, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[f32])> {
        (0..self.layout.names.len()).map(|i| {
            (
                self.layout.names[i].as_str(),
                &self.flat[self.layout.range(i)],
            )
        })
    }
}

/// Scales all gradients so their global norm is at most `max_norm` (as
/// `torch.nn.utils.clip_grad_norm_`, which scales by `max_norm / (norm + 1e-6)`), and returns
/// the norm before clipping. `max_norm <= 0` disables clipping.
pub fn clip_grad_norm(grads: &mut ParamGrads, max_norm: f64) -> f64 {
    let norm = grads.global_norm();
    if let Some(coef) = clip_coefficient(norm, max_norm) {
        grads.scale(coef);
    }
    norm
}

/// The factor [`clip_grad_norm`] scales gradients of global norm `norm` by: `None` when they
/// are left as they are.
pub fn clip_coefficient(norm: f64, max_norm: f64) -> Option<f32> {
    let coef = max_norm / (norm + 1e-6);
    (max_norm > 0.0 && coef < 1.0).then_some(coef as f32)
}

/// Total optimizer steps of the run: the phases' sum when phases are given.
pub fn total_train_steps(cfg: &PretrainConfig) -> usize {
    if cfg.phases.is_empty() {
        cfg.num_train_steps
    } else {
        cfg.phases.iter().map(|p| p.num_train_steps).sum()
    }
}

/// Learning rate of optimizer step `step` (0-based: the number of steps already taken).
///
/// 1) linear warmup from 0 over `num_warmup_steps`;
/// 2) then linear decay to 0 at the last step (HF `get_linear_schedule_with_warmup`, BERT's
///    `polynomial_decay` with power 1 after warmup).
pub fn lr_at(step: usize, cfg: &PretrainConfig) -> f64 {
    schedule(
        step,
        cfg.learning_rate,
        cfg.num_warmup_steps,
        total_train_steps(cfg),
    )
}

/// [`lr_at`] with explicit values (fine-tuning uses the same schedule).
pub fn schedule(step: usize, peak: f64, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return peak * step as f64 / warmup as f64;
    }
    let remaining = total.saturating_sub(step) as f64;
    peak * remaining / (total.saturating_sub(warmup).max(1)) as f64
}

/// Whether `name` gets weight decay: not biases, not LayerNorm weights (HF's `no_decay`).
pub fn decays(name: &str) -> bool {
    !(name.ends_with("bias") || name.contains("LayerNorm"))
}

/// AdamW hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay (BERT: 0.01).
    pub weight_decay: f64,
}

impl AdamWConfig {
    /// The `[pretrain]` table's `adam_*` and `weight_decay` keys.
    pub fn from_pretrain(cfg: &PretrainConfig) -> Self {
        AdamWConfig {
            beta1: cfg.adam_beta1,
            beta2: cfg.adam_beta2,
            eps: cfg.adam_epsilon,
            weight_decay: cfg.weight_decay,
        }
    }
}

/// The scalars of one fused AdamW step: everything [`adamw_fused`] (and the device kernel)
/// needs besides the buffers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStep {
    /// `lr / (1 − β1ᵗ)`.
    pub step_size: f32,
    /// `1 − β1`, computed in f64 (`1.0 − 0.9f32` is not `0.1f32`).
    pub one_minus_beta1: f32,
    /// β2.
    pub beta2: f32,
    /// `1 − β2`, computed in f64.
    pub one_minus_beta2: f32,
    /// `sqrt(1 − β2ᵗ)`.
    pub bias_correction2_sqrt: f32,
    /// ε.
    pub eps: f32,
    /// `1 − lr·wd`: decayed parameters are multiplied by it first.
    pub decay: f32,
    /// The gradient-clipping factor, applied to each gradient as it is read (`None`: none).
    pub grad_scale: Option<f32>,
}

impl AdamWStep {
    /// The scalars of step `t` (1-based) at learning rate `lr`.
    pub fn new(config: &AdamWConfig, t: u64, lr: f64, grad_scale: Option<f32>) -> Self {
        let t = t as i32;
        AdamWStep {
            step_size: (lr / (1.0 - config.beta1.powi(t))) as f32,
            one_minus_beta1: (1.0 - config.beta1) as f32,
            beta2: config.beta2 as f32,
            one_minus_beta2: (1.0 - config.beta2) as f32,
            bias_correction2_sqrt: (1.0 - config.beta2.powi(t)).sqrt() as f32,
            eps: config.eps as f32,
            decay: (1.0 - lr * config.weight_decay) as f32,
            grad_scale,
        }
    }

    /// One element: parameter `p`, gradient `g`, moments `m`, `v`:
    ///
    /// ```text
    /// g ← g·clip;  p ← p·(1 − lr·wd)          (decayed parameters only)
    /// m ← m + (1 − β1)(g − m);  v ← β2 v + (1 − β2) g²
    /// p ← p − lr/(1 − β1ᵗ) · m / (sqrt(v)/sqrt(1 − β2ᵗ) + ε)
    /// ```
    #[inline(always)]
    pub fn apply(&self, decays: bool, p: &mut f32, g: f32, m: &mut f32, v: &mut f32) {
        let g = match self.grad_scale {
            Some(c) => g * c,
            None => g,
        };
        if decays {
            *p *= self.decay;
        }
        *m += self.one_minus_beta1 * (g - *m);
        *v = self.beta2 * *v + self.one_minus_beta2 * g * g;
        let denom = v.sqrt() / self.bias_correction2_sqrt + self.eps;
        *p -= self.step_size * *m / denom;
    }
}

/// Elements per parallel task of [`adamw_fused`].
const ADAMW_CHUNK: usize = 1 << 14;

/// One AdamW step over flat buffers in `layout` (parameters, gradients, first and second
/// moments, each `layout.len()` long): one parallel pass, each element updated by
/// [`AdamWStep::apply`] with its parameter's weight-decay flag.
pub fn adamw_fused(
    layout: &FlatLayout,
    step: &AdamWStep,
    params: &mut [f32],
    grads: &[f32],
    exp_avg: &mut [f32],
    exp_avg_sq: &mut [f32],
) {
    let n = layout.len();
    assert!(
        params.len() == n && grads.len() == n && exp_avg.len() == n && exp_avg_sq.len() == n,
        "adamw_fused: buffers of {n} values"
    );
    params
        .par_chunks_mut(ADAMW_CHUNK)
        .zip(grads.par_chunks(ADAMW_CHUNK))
        .zip(exp_avg.par_chunks_mut(ADAMW_CHUNK))
        .zip(exp_avg_sq.par_chunks_mut(ADAMW_CHUNK))
        .enumerate()
        .for_each(|(c, (((ps, gs), ms), vs))| {
            let start = c * ADAMW_CHUNK;
            let end = start + ps.len();
            // The parameters this chunk overlaps, each with its own decay flag.
            let first = layout.offsets.partition_point(|&o| o <= start) - 1;
            let mut i = first;
            let mut at = start;
            while at < end {
                let seg_end = layout.offsets[i + 1].min(end);
                let decays = layout.decays[i];
                let r = at - start..seg_end - start;
                for (((p, g), m), v) in ps[r.clone()]
                    .iter_mut()
                    .zip(&gs[r.clone()])
                    .zip(&mut ms[r.clone()])
                    .zip(&mut vs[r])
                {
                    step.apply(decays, p, *g, m, v);
                }
                at = seg_end;
                i += 1;
            }
        });
}

/// AdamW with its state: the moments in the model's [`FlatLayout`].
#[derive(Debug, Clone)]
pub struct AdamW {
    pub config: AdamWConfig,
    /// Steps taken (bias correction uses `step` after incrementing).
    pub step: u64,
    /// The layout of the moments (empty before the first step).
    layout: FlatLayout,
    exp_avg: Vec<f32>,
    exp_avg_sq: Vec<f32>,
    /// Host copy of every parameter during the update (reused).
    params: Vec<f32>,
}

impl AdamW {
    /// Fresh state (moments are created on the first step).
    pub fn new(config: AdamWConfig) -> Self {
        AdamW {
            config,
            step: 0,
            layout: FlatLayout::default(),
            exp_avg: Vec::new(),
            exp_avg_sq: Vec::new(),
            params: Vec::new(),
        }
    }

    /// One update of every parameter of `model` with `grads` at learning rate `lr`
    /// ([`AdamWStep::apply`] on every element).
    pub fn update<D: BertDevice, M: HfParams<D>>(
        &mut self,
        model: &mut M,
        grads: &ParamGrads,
        lr: f64,
    ) {
        self.update_clipped(model, grads, lr, None)
    }

    /// Global-norm clipping and the update in one pass: as [`clip_grad_norm`] then
    /// [`AdamW::update`], bit for bit, without writing the scaled gradients. Returns the norm
    /// before clipping.
    pub fn clip_and_update<D: BertDevice, M: HfParams<D>>(
        &mut self,
        model: &mut M,
        grads: &ParamGrads,
        max_norm: f64,
        lr: f64,
    ) -> f64 {
        let norm = grads.global_norm();
        self.update_clipped(model, grads, lr, clip_coefficient(norm, max_norm));
        norm
    }

    fn update_clipped<D: BertDevice, M: HfParams<D>>(
        &mut self,
        model: &mut M,
        grads: &ParamGrads,
        lr: f64,
        grad_scale: Option<f32>,
    ) {
        if self.layout.names.is_empty() {
            self.layout = FlatLayout::of(model);
            self.exp_avg = vec![0.0; self.layout.len()];
            self.exp_avg_sq = vec![0.0; self.layout.len()];
        }
        assert_eq!(
            self.layout.names, grads.layout.names,
            "gradients and parameters out of order"
        );
        self.step += 1;
        let step = AdamWStep::new(&self.config, self.step, lr, grad_scale);
        let layout = &self.layout;
        self.params.resize(layout.len(), 0.0);
        let mut params = model.named_parameters_mut();
        for (i, (name, p)) in params.iter().enumerate() {
            assert_eq!(name, &layout.names[i], "parameters out of order");
            p.as_ref().copy_into(&mut self.params[layout.range(i)]);
        }
        adamw_fused(
            layout,
            &step,
            &mut self.params,
            &grads.flat,
            &mut self.exp_avg,
            &mut self.exp_avg_sq,
        );
        for (i, (_, p)) in params.iter_mut().enumerate() {
            p.copy_from(&self.params[layout.range(i)]);
        }
    }

    /// Writes the moments (`NAME.exp_avg`, `NAME.exp_avg_sq`) and the step (metadata) to a
    /// safetensors file, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors = TensorMap::new();
        for (i, name) in self.layout.names.iter().enumerate() {
            let r = self.layout.range(i);
            tensors.insert(
                format!("{name}.exp_avg"),
                (vec![r.len()], self.exp_avg[r.clone()].to_vec()),
            );
            tensors.insert(
                format!("{name}.exp_avg_sq"),
                (vec![r.len()], self.exp_avg_sq[r].to_vec()),
            );
        }
        let c = self.config;
        let metadata = HashMap::from([
            ("format".to_string(), "bertline-adamw".to_string()),
            ("step".to_string(), self.step.to_string()),
            ("beta1".to_string(), c.beta1.to_string()),
            ("beta2".to_string(), c.beta2.to_string()),
            ("eps".to_string(), c.eps.to_string()),
            ("weight_decay".to_string(), c.weight_decay.to_string()),
        ]);
        write_safetensors(path, &tensors, metadata)
    }

    /// Reads state written by [`AdamW::save`] for `model`: every parameter must have moments
    /// of its size (a fresh state, step 0, has none).
    pub fn load<D: BertDevice, M: HfParams<D>>(
        path: &Path,
        config: AdamWConfig,
        model: &M,
    ) -> Result<Self> {
        let (mut tensors, metadata) = read_safetensors(path)?;
        let step: u64 = metadata
            .get("step")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                Error::checkpoint(path, "no `step` in the metadata: not an optimizer state")
            })?;
        let (mut layout, mut exp_avg, mut exp_avg_sq) = Default::default();
        if step > 0 {
            layout = FlatLayout::of(model);
            exp_avg = Vec::with_capacity(layout.len());
            exp_avg_sq = Vec::with_capacity(layout.len());
            for (name, p) in model.named_parameters() {
                let mut take = |suffix: &str| -> Result<Vec<f32>> {
                    let key = format!("{name}.{suffix}");
                    let (_, values) = tensors
                        .remove(&key)
                        .ok_or_else(|| Error::checkpoint(path, format!("missing {key}")))?;
                    if values.len() != p.len() {
                        return Err(Error::checkpoint(
                            path,
                            format!("{key}: {} values, the model has {}", values.len(), p.len()),
                        ));
                    }
                    Ok(values)
                };
                exp_avg.extend(take("exp_avg")?);
                exp_avg_sq.extend(take("exp_avg_sq")?);
            }
        }
        Ok(AdamW {
            config,
            step,
            layout,
            exp_avg,
            exp_avg_sq,
            params: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Vector;
    use dfdx::tensor::{Cpu, TensorFromVec};

    /// A two-parameter "model": a decayed weight and an undecayed bias.
    struct Toy<D: BertDevice> {
        weight: Vector<D>,
        bias: Vector<D>,
    }
    crate::model::hf_params!(Toy { "weight" => weight, "bias" => bias });

    fn toy(dev: &Cpu) -> Toy<Cpu> {
        Toy {
            weight: dev.tensor_from_vec(vec![1.0, -2.0], (2,)),
            bias: dev.tensor_from_vec(vec![0.5], (1,)),
        }
    }

    fn toy_grads() -> ParamGrads {
        ParamGrads::from_named(vec![
            ("weight".into(), vec![0.5, -1.0]),
            ("bias".into(), vec![0.2]),
        ])
    }

    const ADAM: AdamWConfig = AdamWConfig {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-6,
        weight_decay: 0.01,
    };

    #[test]
    fn adamw_matches_hand_computed_steps() {
        let dev = Cpu::default();
        let mut model = toy(&dev);
        let mut opt = AdamW::new(ADAM);
        // Step 1, weight[0]: p = 1·(1 − 0.1·0.01) = 0.999; m = 0.05; v = 0.00025;
        // lr/(1 − 0.9) = 1; denom = sqrt(0.00025)/sqrt(0.001) + 1e-6 = 0.500001;
        // p = 0.999 − 0.05/0.500001 = 0.8990002. The bias is not decayed: 0.5 − 0.0999995.
        opt.update(&mut model, &toy_grads(), 0.1);
        let close =
            |a: &[f32], b: &[f64]| a.iter().zip(b).all(|(x, y)| (*x as f64 - y).abs() < 1e-6);
        assert!(
            close(&model.weight.as_vec(), &[0.8990002, -1.8980001]),
            "{:?}",
            model.weight.as_vec()
        );
        assert!(
            close(&model.bias.as_vec(), &[0.4000005]),
            "{:?}",
            model.bias.as_vec()
        );
        // Step 2 (same gradients; torch.optim.AdamW's formula evaluated in f64).
        opt.update(&mut model, &toy_grads(), 0.1);
        assert!(
            close(&model.weight.as_vec(), &[0.7981014, -1.7961022]),
            "{:?}",
            model.weight.as_vec()
        );
        assert!(
            close(&model.bias.as_vec(), &[0.3000010]),
            "{:?}",
            model.bias.as_vec()
        );
        assert_eq!(opt.step, 2);
    }

    #[test]
    fn adamw_state_saves_and_loads_bit_exactly() {
        let dev = Cpu::default();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("optim.safetensors");
        let mut a = toy(&dev);
        let mut opt = AdamW::new(ADAM);
        opt.update(&mut a, &toy_grads(), 0.1);
        opt.save(&path).unwrap();
        let mut loaded = AdamW::load(&path, ADAM, &a).unwrap();
        assert_eq!(loaded.step, 1);
        let mut b = toy(&dev);
        b.weight.copy_from(&a.weight.as_vec());
        b.bias.copy_from(&a.bias.as_vec());
        opt.update(&mut a, &toy_grads(), 0.05);
        loaded.update(&mut b, &toy_grads(), 0.05);
        assert_eq!(a.weight.as_vec(), b.weight.as_vec());
        assert_eq!(a.bias.as_vec(), b.bias.as_vec());

        // A state for another model is an error naming the file and the key.
        struct Other<D: BertDevice> {
            other: Vector<D>,
        }
        crate::model::hf_params!(Other { "other" => other });
        let other = Other {
            other: dev.tensor_from_vec(vec![0.0], (1,)),
        };
        let err = AdamW::load(&path, ADAM, &other).unwrap_err().to_string();
        assert!(
            err.contains("optim.safetensors") && err.contains("other.exp_avg"),
            "{err}"
        );
    }

    /// Three parameters whose boundaries fall inside the fused pass's parallel chunks.
    struct Wide<D: BertDevice> {
        a: Vector<D>,
        b: Vector<D>,
        c: Vector<D>,
    }
    crate::model::hf_params!(Wide { "dense.weight" => a, "dense.bias" => b, "LayerNorm.weight" => c });

    fn wide(dev: &Cpu, seed: u64) -> (Wide<Cpu>, ParamGrads) {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut values =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect() };
        let sizes = [ADAMW_CHUNK + 5, 3, ADAMW_CHUNK * 2 - 1];
        let model = Wide {
            a: dev.tensor_from_vec(values(sizes[0]), (sizes[0],)),
            b: dev.tensor_from_vec(values(sizes[1]), (sizes[1],)),
            c: dev.tensor_from_vec(values(sizes[2]), (sizes[2],)),
        };
        let grads = ParamGrads::from_named(vec![
            ("dense.weight".into(), values(sizes[0])),
            ("dense.bias".into(), values(sizes[1])),
            ("LayerNorm.weight".into(), values(sizes[2])),
        ]);
        (model, grads)
    }

    /// The update one parameter at a time, as `torch.optim.AdamW` writes it (the per-parameter
    /// loop this module had before the flat layout): the fused pass must match it bit for bit.
    fn per_parameter_reference(
        params: &mut [Vec<f32>],
        grads: &[Vec<f32>],
        moments: &mut [(Vec<f32>, Vec<f32>)],
        names: &[&str],
        c: AdamWConfig,
        t: i32,
        lr: f64,
    ) {
        let step_size = (lr / (1.0 - c.beta1.powi(t))) as f32;
        let bc2_sqrt = (1.0 - c.beta2.powi(t)).sqrt() as f32;
        let (beta2, eps) = (c.beta2 as f32, c.eps as f32);
        let (omb1, omb2) = ((1.0 - c.beta1) as f32, (1.0 - c.beta2) as f32);
        for (((p, g), (m, v)), name) in params.iter_mut().zip(grads).zip(moments).zip(names) {
            let decay = if decays(name) {
                (1.0 - lr * c.weight_decay) as f32
            } else {
                1.0
            };
            for (((p, g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                *p *= decay;
                *m += omb1 * (g - *m);
                *v = beta2 * *v + omb2 * g * g;
                *p -= step_size * *m / (v.sqrt() / bc2_sqrt + eps);
            }
        }
    }

    #[test]
    fn fused_update_matches_the_per_parameter_update_bit_for_bit() {
        let dev = Cpu::default();
        let (mut model, grads) = wide(&dev, 3);
        let names = ["dense.weight", "dense.bias", "LayerNorm.weight"];
        let mut params: Vec<Vec<f32>> = vec![model.a.as_vec(), model.b.as_vec(), model.c.as_vec()];
        let g: Vec<Vec<f32>> = grads.iter().map(|(_, g)| g.to_vec()).collect();
        let mut moments: Vec<(Vec<f32>, Vec<f32>)> = g
            .iter()
            .map(|g| (vec![0.0; g.len()], vec![0.0; g.len()]))
            .collect();
        let mut opt = AdamW::new(ADAM);
        for (t, lr) in [(1, 1e-2), (2, 5e-3), (3, 1e-3)] {
            opt.update(&mut model, &grads, lr);
            per_parameter_reference(&mut params, &g, &mut moments, &names, ADAM, t, lr);
        }
        assert_eq!(model.a.as_vec(), params[0]);
        assert_eq!(model.b.as_vec(), params[1]);
        assert_eq!(model.c.as_vec(), params[2]);
        // Only dense.weight decays: with zero gradients and zero moments, it alone shrinks.
        let layout = FlatLayout::of(&model);
        assert_eq!(layout.decays, vec![true, false, false]);
        assert_eq!(
            layout.offsets,
            vec![0, ADAMW_CHUNK + 5, ADAMW_CHUNK + 8, 3 * ADAMW_CHUNK + 7]
        );
        let step = AdamWStep::new(&ADAM, 1, 0.5, None);
        let n = layout.len();
        let mut p = vec![1.0f32; n];
        let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
        adamw_fused(&layout, &step, &mut p, &vec![0.0; n], &mut m, &mut v);
        let shrunk = (1.0 - 0.5 * ADAM.weight_decay) as f32;
        assert!(p[..ADAMW_CHUNK + 5].iter().all(|&x| x == shrunk));
        assert!(p[ADAMW_CHUNK + 5..].iter().all(|&x| x == 1.0));
    }

    #[test]
    fn clipping_inside_the_update_is_clip_then_update_bit_for_bit() {
        let dev = Cpu::default();
        let (mut a, grads) = wide(&dev, 4);
        let (mut b, _) = wide(&dev, 4);
        let (mut opt_a, mut opt_b) = (AdamW::new(ADAM), AdamW::new(ADAM));
        for max_norm in [1.0, 1e6, 0.0] {
            let mut clipped = grads.clone();
            let norm_a = clip_grad_norm(&mut clipped, max_norm);
            opt_a.update(&mut a, &clipped, 1e-2);
            let norm_b = opt_b.clip_and_update(&mut b, &grads, max_norm, 1e-2);
            assert_eq!(norm_a, norm_b);
            assert_eq!(a.a.as_vec(), b.a.as_vec(), "max_norm {max_norm}");
            assert_eq!(a.c.as_vec(), b.c.as_vec(), "max_norm {max_norm}");
        }
        // The gradients here have norm ~ 150: max_norm 1 really clipped.
        assert!(grads.global_norm() > 100.0);
    }

    fn cfg(warmup: usize, total: usize) -> PretrainConfig {
        let mut c: PretrainConfig = toml::from_str(
            "train_batch_size = 8\nlearning_rate = 1e-4\nnum_train_steps = 100\nnum_warmup_steps = 10",
        )
        .unwrap();
        c.num_warmup_steps = warmup;
        c.num_train_steps = total;
        c
    }

    #[test]
    fn lr_warms_up_linearly_then_decays_to_zero() {
        let c = cfg(10, 110);
        assert_eq!(lr_at(0, &c), 0.0);
        assert!((lr_at(5, &c) - 0.5e-4).abs() < 1e-12);
        assert!((lr_at(10, &c) - 1e-4).abs() < 1e-12);
        assert!((lr_at(60, &c) - 0.5e-4).abs() < 1e-12);
        assert_eq!(lr_at(110, &c), 0.0);
        assert_eq!(lr_at(200, &c), 0.0);
        let no_warmup = cfg(0, 4);
        assert_eq!(lr_at(0, &no_warmup), 1e-4);
        assert!((lr_at(1, &no_warmup) - 0.75e-4).abs() < 1e-12);
    }

    #[test]
    fn decay_skips_biases_and_layer_norms() {
        assert!(decays("bert.encoder.layer.0.attention.self.query.weight"));
        assert!(decays("bert.embeddings.word_embeddings.weight"));
        assert!(!decays("bert.encoder.layer.0.attention.self.query.bias"));
        assert!(!decays("bert.embeddings.LayerNorm.weight"));
        assert!(!decays("cls.predictions.bias"));
    }

    #[test]
    fn clipping_scales_to_max_norm_and_returns_the_old_norm() {
        let mut g = ParamGrads::from_named(vec![("a".into(), vec![3.0]), ("b".into(), vec![4.0])]);
        let norm = clip_grad_norm(&mut g, 1.0);
        assert_eq!(norm, 5.0);
        assert!((g.flat[0] - 0.6).abs() < 1e-6 && (g.flat[1] - 0.8).abs() < 1e-6);
        let mut small = ParamGrads::from_named(vec![("a".into(), vec![0.3])]);
        assert!((clip_grad_norm(&mut small, 1.0) - 0.3).abs() < 1e-7);
        assert_eq!(small.flat[0], 0.3);
        assert_eq!(clip_coefficient(0.3, 1.0), None);
        assert_eq!(clip_coefficient(5.0, 0.0), None, "max_norm 0: no clipping");
    }
}
