//! AdamW (Loshchilov & Hutter 2019) as BERT trains with it: bias-corrected moments,
//! decoupled weight decay except on LayerNorm and bias parameters, global gradient-norm
//! clipping, and the warmup-then-linear-decay learning rate ([`lr_at`]).
//!
//! Gradients are copied to the host per parameter ([`ParamGrads`]); the update follows
//! `torch.optim.AdamW` step for step, so its state (`exp_avg`, `exp_avg_sq`, `step`) saves to
//! and loads from `optim.safetensors` by HF parameter name, bit for bit.

use crate::model::BertDevice;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use dfdx::tensor::Gradients;
use rayon::prelude::*;

use crate::config::PretrainConfig;
use crate::error::{Error, Result};
use crate::model::export::{read_safetensors, write_safetensors, TensorMap};
use crate::model::HfParams;

/// Gradients on the host, one per parameter, in [`HfParams::named_parameters`] order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParamGrads {
    /// HF parameter names.
    pub names: Vec<String>,
    /// Row-major gradient of each parameter.
    pub values: Vec<Vec<f32>>,
}

impl ParamGrads {
    /// Copies every parameter's gradient out of `grads` (zeros where the tape never reached).
    pub fn from_gradients<D: BertDevice, M: HfParams<D>>(
        model: &M,
        grads: &mut Gradients<f32, D>,
    ) -> Self {
        let (names, values) = model
            .named_parameters()
            .into_iter()
            .map(|(name, p)| {
                let g = p.grad(grads);
                (name, g)
            })
            .unzip();
        ParamGrads { names, values }
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
        if self.names.len() != params.len() {
            self.names = params.iter().map(|(n, _)| n.clone()).collect();
            self.values = params.iter().map(|(_, p)| vec![0.0; p.len()]).collect();
        }
        for ((name, p), acc) in params.iter().zip(&mut self.values) {
            debug_assert!(self.names.contains(name));
            scratch.resize(p.len(), 0.0);
            p.grad_into(grads, scratch);
            acc.par_iter_mut()
                .zip(scratch.par_iter())
                .for_each(|(a, g)| *a += g);
        }
    }

    /// Sets every gradient to zero, keeping the buffers.
    pub fn zero(&mut self) {
        for g in &mut self.values {
            g.fill(0.0);
        }
    }

    /// Adds `other` elementwise. An empty `self` takes `other`.
    pub fn accumulate(&mut self, other: ParamGrads) {
        if self.names.is_empty() {
            *self = other;
            return;
        }
        assert_eq!(
            self.names, other.names,
            "accumulating gradients of another model"
        );
        for (acc, g) in self.values.iter_mut().zip(other.values) {
            acc.par_iter_mut()
                .zip(g.par_iter())
                .for_each(|(a, b)| *a += b);
        }
    }

    /// Multiplies every gradient by `factor`.
    pub fn scale(&mut self, factor: f32) {
        for g in &mut self.values {
            g.par_iter_mut().for_each(|x| *x *= factor);
        }
    }

    /// `sqrt(Σ g²)` over all parameters, accumulated in f64.
    pub fn global_norm(&self) -> f64 {
        self.values
            .iter()
            .map(|g| g.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
            .sum::<f64>()
            .sqrt()
    }

    /// The gradient of the parameter `name`.
    pub fn get(&self, name: &str) -> Option<&[f32]> {
        let i = self.names.iter().position(|n| n == name)?;
        Some(&self.values[i])
    }
}

/// Scales all gradients so their global norm is at most `max_norm` (as
/// `torch.nn.utils.clip_grad_norm_`, which scales by `max_norm / (norm + 1e-6)`), and returns
/// the norm before clipping. `max_norm <= 0` disables clipping.
pub fn clip_grad_norm(grads: &mut ParamGrads, max_norm: f64) -> f64 {
    let norm = grads.global_norm();
    if max_norm > 0.0 {
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            grads.scale(coef as f32);
        }
    }
    norm
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

/// First and second moments of one parameter.
#[derive(Debug, Clone, PartialEq)]
struct Moments {
    exp_avg: Vec<f32>,
    exp_avg_sq: Vec<f32>,
}

/// AdamW with its state by parameter name.
#[derive(Debug, Clone)]
pub struct AdamW {
    pub config: AdamWConfig,
    /// Steps taken (bias correction uses `step` after incrementing).
    pub step: u64,
    moments: BTreeMap<String, Moments>,
    /// Host copy of one parameter during the update (reused).
    scratch: Vec<f32>,
}

impl AdamW {
    /// Fresh state (moments are created on the first step).
    pub fn new(config: AdamWConfig) -> Self {
        AdamW {
            config,
            step: 0,
            moments: BTreeMap::new(),
            scratch: Vec::new(),
        }
    }

    /// One update of every parameter of `model` with `grads` at learning rate `lr`:
    ///
    /// ```text
    /// p ← p·(1 − lr·wd)                      (decayed parameters only)
    /// m ← m + (1 − β1)(g − m);  v ← β2 v + (1 − β2) g²
    /// p ← p − lr/(1 − β1ᵗ) · m / (sqrt(v)/sqrt(1 − β2ᵗ) + ε)
    /// ```
    pub fn update<D: BertDevice, M: HfParams<D>>(
        &mut self,
        model: &mut M,
        grads: &ParamGrads,
        lr: f64,
    ) {
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let bias_correction1 = 1.0 - c.beta1.powi(t);
        let bias_correction2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        let step_size = (lr / bias_correction1) as f32;
        // 1 − β in f64 first: `1.0 − 0.999f32` is 1.3e-5 off in relative terms.
        let (beta2, eps) = (c.beta2 as f32, c.eps as f32);
        let (one_minus_beta1, one_minus_beta2) = ((1.0 - c.beta1) as f32, (1.0 - c.beta2) as f32);
        let bc2_sqrt = bias_correction2_sqrt as f32;
        for ((name, mut param), (grad_name, grad)) in model
            .named_parameters_mut()
            .into_iter()
            .zip(grads.names.iter().zip(&grads.values))
        {
            assert_eq!(&name, grad_name, "gradients and parameters out of order");
            let values = &mut self.scratch;
            values.resize(param.as_ref().len(), 0.0);
            param.as_ref().copy_into(values);
            let moments = self.moments.entry(name.clone()).or_insert_with(|| Moments {
                exp_avg: vec![0.0; values.len()],
                exp_avg_sq: vec![0.0; values.len()],
            });
            let decay = if decays(&name) {
                (1.0 - lr * c.weight_decay) as f32
            } else {
                1.0
            };
            values
                .par_iter_mut()
                .zip(moments.exp_avg.par_iter_mut())
                .zip(moments.exp_avg_sq.par_iter_mut())
                .zip(grad.par_iter())
                .for_each(|(((p, m), v), &g)| {
                    *p *= decay;
                    *m += one_minus_beta1 * (g - *m);
                    *v = beta2 * *v + one_minus_beta2 * g * g;
                    let denom = v.sqrt() / bc2_sqrt + eps;
                    *p -= step_size * *m / denom;
                });
            param.copy_from(values);
        }
    }

    /// Writes the moments (`NAME.exp_avg`, `NAME.exp_avg_sq`) and the step (metadata) to a
    /// safetensors file, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors = TensorMap::new();
        for (name, m) in &self.moments {
            let n = m.exp_avg.len();
            tensors.insert(format!("{name}.exp_avg"), (vec![n], m.exp_avg.clone()));
            tensors.insert(
                format!("{name}.exp_avg_sq"),
                (vec![n], m.exp_avg_sq.clone()),
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
        let mut moments = BTreeMap::new();
        if step > 0 {
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
                let exp_avg = take("exp_avg")?;
                let exp_avg_sq = take("exp_avg_sq")?;
                moments.insert(
                    name,
                    Moments {
                        exp_avg,
                        exp_avg_sq,
                    },
                );
            }
        }
        Ok(AdamW {
            config,
            step,
            moments,
            scratch: Vec::new(),
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
        ParamGrads {
            names: vec!["weight".into(), "bias".into()],
            values: vec![vec![0.5, -1.0], vec![0.2]],
        }
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
        let mut g = ParamGrads {
            names: vec!["a".into(), "b".into()],
            values: vec![vec![3.0], vec![4.0]],
        };
        let norm = clip_grad_norm(&mut g, 1.0);
        assert_eq!(norm, 5.0);
        assert!((g.values[0][0] - 0.6).abs() < 1e-6 && (g.values[1][0] - 0.8).abs() < 1e-6);
        let mut small = ParamGrads {
            names: vec!["a".into()],
            values: vec![vec![0.3]],
        };
        assert!((clip_grad_norm(&mut small, 1.0) - 0.3).abs() < 1e-7);
        assert_eq!(small.values[0][0], 0.3);
    }
}
