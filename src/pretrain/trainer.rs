//! One optimizer step: [`Trainer`] holds the model, AdamW and the position in training;
//! [`StepStats`] is what a step or an evaluation measured.

use std::time::Instant;

use dfdx::tensor::NoneTape;
use dfdx::tensor_ops::Backward;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::config::{BertConfig, PretrainConfig};
use crate::error::{Error, Result};
use crate::model::{init, BertDevice, BertForPreTraining, MaskedLmBatch, Mode, TrainTape};
use crate::optim::{clip_grad_norm, AdamW, AdamWConfig, ParamGrads};

/// What one optimizer step (or an evaluation) measured.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepStats {
    /// `mlm_loss + nsp_loss`.
    pub loss: f64,
    pub mlm_loss: f64,
    pub nsp_loss: f64,
    /// Weighted correct masked predictions.
    pub mlm_correct: f64,
    /// Weighted masked predictions.
    pub mlm_count: f64,
    pub nsp_correct: f64,
    pub nsp_count: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Real (unpadded) tokens.
    pub tokens: u64,
}

impl StepStats {
    /// Masked-LM accuracy.
    pub fn mlm_accuracy(&self) -> f64 {
        self.mlm_correct / self.mlm_count.max(1e-9)
    }
    /// Next-sentence accuracy.
    pub fn nsp_accuracy(&self) -> f64 {
        self.nsp_correct / self.nsp_count.max(1e-9)
    }
}

/// Mean of several [`StepStats`] (losses and norm averaged, counts summed).
#[derive(Debug, Clone, Default)]
pub struct StatsWindow {
    sum: StepStats,
    steps: usize,
}

impl StatsWindow {
    pub fn add(&mut self, s: &StepStats) {
        let t = &mut self.sum;
        t.loss += s.loss;
        t.mlm_loss += s.mlm_loss;
        t.nsp_loss += s.nsp_loss;
        t.grad_norm += s.grad_norm;
        t.mlm_correct += s.mlm_correct;
        t.mlm_count += s.mlm_count;
        t.nsp_correct += s.nsp_correct;
        t.nsp_count += s.nsp_count;
        t.tokens += s.tokens;
        self.steps += 1;
    }

    /// The window's means; counts stay summed.
    pub fn mean(&self) -> StepStats {
        let n = self.steps.max(1) as f64;
        StepStats {
            loss: self.sum.loss / n,
            mlm_loss: self.sum.mlm_loss / n,
            nsp_loss: self.sum.nsp_loss / n,
            grad_norm: self.sum.grad_norm / n,
            ..self.sum
        }
    }

    pub fn is_empty(&self) -> bool {
        self.steps == 0
    }
}

/// The model, its optimizer and the position in training.
#[derive(Debug)]
pub struct Trainer<D: BertDevice> {
    pub model: BertForPreTraining<D>,
    pub optimizer: AdamW,
    pub model_config: BertConfig,
    pub config: PretrainConfig,
    /// Optimizer steps taken.
    pub step: usize,
    /// Lowest evaluation loss so far.
    pub best_eval_loss: Option<f64>,
    /// Seeds the initial weights and every dropout mask.
    pub seed: u64,
    /// Gradient buffers, reused every step.
    pub(super) grads: ParamGrads,
    pub(super) scratch: Vec<f32>,
}

impl<D: BertDevice> Trainer<D> {
    /// A fresh model initialised from `seed` (HF `_init_weights`), step 0.
    pub fn new(model_config: &BertConfig, config: &PretrainConfig, seed: u64, device: &D) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let model =
            BertForPreTraining::new(model_config, &mut init(model_config, device, &mut rng));
        Trainer {
            model,
            optimizer: AdamW::new(AdamWConfig::from_pretrain(config)),
            model_config: model_config.clone(),
            config: config.clone(),
            step: 0,
            best_eval_loss: None,
            seed,
            grads: ParamGrads::default(),
            scratch: Vec::new(),
        }
    }

    /// One optimizer step on `batch` at learning rate `lr`: forward and backward over
    /// `gradient_accumulation_steps` micro-batches (each loss scaled by 1/accumulation),
    /// clip the global gradient norm, AdamW update.
    pub fn train_step(&mut self, batch: &MaskedLmBatch, lr: f64) -> Result<StepStats> {
        let accumulation = self.config.gradient_accumulation_steps.max(1);
        let micro = batch.batch.div_ceil(accumulation);
        let device = self
            .model
            .bert
            .embeddings
            .word_embeddings
            .weight
            .device()
            .clone();
        self.grads.zero();
        let mut stats = StepStats::default();
        let mut seconds = [0.0f64; 4]; // forward, backward, gradient copy, update
        for (i, start) in (0..batch.batch).step_by(micro.max(1)).enumerate() {
            let t = Instant::now();
            let part = batch.slice(start..(start + micro).min(batch.batch));
            let mut mode = Mode::train(dropout_seed(self.seed, self.step, i));
            let inputs = part.inputs(&device);
            let out = self
                .model
                .loss_on::<TrainTape<D>>(&inputs, &part, &mut mode);
            let loss = out.loss * (1.0 / accumulation as f32);
            seconds[0] += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let mut g = loss.backward();
            seconds[1] += t.elapsed().as_secs_f64();
            let t = Instant::now();
            self.grads
                .add_gradients(&self.model, &mut g, &mut self.scratch);
            drop(g);
            seconds[2] += t.elapsed().as_secs_f64();
            let total = out.mlm_loss as f64 + out.nsp_loss as f64;
            if !total.is_finite() {
                return Err(Error::Model(format!(
                    "non-finite loss at step {}: lower pretrain.learning_rate or check the data",
                    self.step
                )));
            }
            let k = 1.0 / accumulation as f64;
            stats.loss += total * k;
            stats.mlm_loss += out.mlm_loss as f64 * k;
            stats.nsp_loss += out.nsp_loss as f64 * k;
            stats.mlm_correct += out.mlm_correct;
            stats.mlm_count += out.mlm_count;
            stats.nsp_correct += out.nsp_correct as f64;
            stats.nsp_count += out.nsp_count as f64;
            stats.tokens += part.num_tokens() as u64;
        }
        let t = Instant::now();
        stats.grad_norm = clip_grad_norm(&mut self.grads, self.config.max_grad_norm);
        self.optimizer.update(&mut self.model, &self.grads, lr);
        seconds[3] = t.elapsed().as_secs_f64();
        tracing::debug!(
            step = self.step,
            forward = seconds[0],
            backward = seconds[1],
            gradient_copy = seconds[2],
            update = seconds[3],
            "step seconds"
        );
        self.step += 1;
        Ok(stats)
    }

    /// Mean loss and accuracies over `batches`, dropout off, no tape.
    pub fn evaluate(&self, batches: &[MaskedLmBatch]) -> StepStats {
        estimate_loss(&self.model, batches)
    }
}

/// The dropout seed of micro-batch `micro` of step `step`: masks depend on nothing else,
/// so a resumed run draws the same ones.
pub fn dropout_seed(seed: u64, step: usize, micro: usize) -> u64 {
    crate::stage::derive_seed(seed, "pretrain-dropout", &[step as u64, micro as u64])
}

/// Loss and accuracies of `model` over `batches` in evaluation mode. The MLM loss is the
/// weighted mean over all masked positions of all batches (so `exp` of it is a perplexity).
pub fn estimate_loss<D: BertDevice>(
    model: &BertForPreTraining<D>,
    batches: &[MaskedLmBatch],
) -> StepStats {
    let mut stats = StepStats::default();
    let mut mlm_sum = 0.0;
    let mut nsp_sum = 0.0;
    for batch in batches {
        let out = model.loss::<NoneTape>(batch, &mut Mode::Eval);
        mlm_sum += out.mlm_loss as f64 * out.mlm_count;
        nsp_sum += out.nsp_loss as f64 * out.nsp_count as f64;
        stats.mlm_correct += out.mlm_correct;
        stats.mlm_count += out.mlm_count;
        stats.nsp_correct += out.nsp_correct as f64;
        stats.nsp_count += out.nsp_count as f64;
        stats.tokens += batch.num_tokens() as u64;
    }
    stats.mlm_loss = mlm_sum / stats.mlm_count.max(1e-9);
    stats.nsp_loss = nsp_sum / stats.nsp_count.max(1e-9);
    stats.loss = stats.mlm_loss + stats.nsp_loss;
    stats
}
