//! Training and inference: the fine-tuning loop (AdamW, warmup then linear decay, clipping)
//! and batched predictions.

use std::time::Instant;

use dfdx::tensor::NoneTape;
use dfdx::tensor_ops::Backward;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::features::{classification_batch, label_value};
use super::{InputFeatures, TrainingRecipe};
use crate::error::{Error, Result};
use crate::metrics::{MetricsWriter, Targets};
use crate::model::{BertDevice, BertForSequenceClassification, HfParams, Mode, Scalar, TrainTape};
use crate::optim::{clip_grad_norm, schedule, AdamW, AdamWConfig, ParamGrads};
use crate::progress::Progress;
use crate::tasks::{Prediction, TaskKind};

/// AdamW as Google's `run_classifier.py` builds it (`optimization.create_optimizer`):
/// β = (0.9, 0.999), ε = 1e-6, weight decay 0.01; gradients clipped to norm 1.0.
pub(super) const ADAMW: AdamWConfig = AdamWConfig {
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-6,
    weight_decay: 0.01,
};
pub(super) const MAX_GRAD_NORM: f64 = 1.0;
/// Rows per inference batch.
const EVAL_BATCH_SIZE: usize = 64;

/// What one training run did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainStats {
    /// Optimizer steps taken.
    pub steps: usize,
    pub warmup_steps: usize,
    /// Training examples seen (with repeats over epochs).
    pub examples: usize,
    pub seconds: f64,
    pub examples_per_s: f64,
    /// Mean training loss of each (possibly partial) epoch.
    pub epoch_losses: Vec<f64>,
}

/// Batches of row indices over `num_train_steps` steps: each epoch a fresh shuffle, the last
/// batch of an epoch possibly short (as a TF input pipeline without `drop_remainder`).
fn training_batches(
    n: usize,
    recipe: &TrainingRecipe,
    rng: &mut ChaCha8Rng,
) -> Vec<(usize, Vec<usize>)> {
    let total = recipe.num_train_steps(n);
    let mut batches = Vec::with_capacity(total);
    let mut epoch = 0;
    while batches.len() < total {
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(rng);
        for chunk in order.chunks(recipe.train_batch_size) {
            if batches.len() == total {
                break;
            }
            batches.push((epoch, chunk.to_vec()));
        }
        epoch += 1;
    }
    batches
}

/// One optimizer step on a batch: forward, loss, backward, clip, AdamW. Returns the loss.
fn optimizer_step<D: BertDevice, M: HfParams<D>>(
    model: &mut M,
    optimizer: &mut AdamW,
    loss: Scalar<D, TrainTape<D>>,
    lr: f64,
) -> Result<f64> {
    let value = loss.as_vec()[0] as f64;
    if !value.is_finite() {
        return Err(Error::Model(format!(
            "fine-tuning loss is {value}: lower finetune.learning_rate"
        )));
    }
    let mut grads = loss.backward();
    let mut host = ParamGrads::from_gradients(model, &mut grads);
    clip_grad_norm(&mut host, MAX_GRAD_NORM);
    optimizer.update(model, &host, lr);
    Ok(value)
}

/// A per-step record of the training log (`train-log.jsonl`).
#[derive(Debug, Clone, Serialize)]
struct StepRecord<'a> {
    task: &'a str,
    arm: &'a str,
    seed: u64,
    /// The run's peak learning rate (tells the runs of a sweep apart).
    peak_lr: f64,
    epoch: usize,
    step: usize,
    lr: f64,
    loss: f64,
}

/// Where and under which name a training loop logs.
pub struct TrainLog<'a> {
    pub task: &'a str,
    pub arm: &'a str,
    pub seed: u64,
    /// Optional JSONL log, one record per step.
    pub writer: Option<&'a mut MetricsWriter>,
}

/// The fine-tuning loop of every task kind: `recipe.num_train_steps(num_rows)` steps over
/// seeded shuffles of the rows, each step's loss from `loss(model, rows, mode)`, 10% (the
/// recipe's) linear warmup then linear decay, clipping, AdamW. `seed` drives the shuffling
/// and the dropout masks. Reports each step to `progress` (labelled `task arm seed k`),
/// each epoch's mean loss as its message, and each step to `log`'s writer when it has one.
pub fn fine_tune<D: BertDevice, M: HfParams<D>>(
    model: &mut M,
    num_rows: usize,
    recipe: &TrainingRecipe,
    seed: u64,
    progress: &dyn Progress,
    mut log: TrainLog<'_>,
    loss: impl Fn(&M, &[usize], &mut Mode) -> Result<Scalar<D, TrainTape<D>>>,
) -> Result<TrainStats> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let batches = training_batches(num_rows, recipe, &mut rng);
    let total = batches.len();
    let warmup = recipe.num_warmup_steps(total);
    let mut optimizer = AdamW::new(ADAMW);
    let mut mode = Mode::train(seed ^ 0x5eed_d20f);
    let mut stats = TrainStats {
        steps: total,
        warmup_steps: warmup,
        ..TrainStats::default()
    };
    let started = Instant::now();
    progress.start(
        &format!("{} {} seed {}", log.task, log.arm, log.seed),
        total as u64,
    );
    let (mut epoch_sum, mut epoch_rows) = (0.0, 0usize);
    for (step, (epoch, rows)) in batches.iter().enumerate() {
        let step_loss = loss(model, rows, &mut mode)?;
        let lr = schedule(step, recipe.learning_rate, warmup, total);
        let value = optimizer_step(model, &mut optimizer, step_loss, lr)?;
        epoch_sum += value;
        epoch_rows += 1;
        stats.examples += rows.len();
        if let Some(w) = log.writer.as_deref_mut() {
            w.write(&StepRecord {
                task: log.task,
                arm: log.arm,
                seed: log.seed,
                peak_lr: recipe.learning_rate,
                epoch: *epoch,
                step: step + 1,
                lr,
                loss: value,
            })?;
        }
        progress.advance(1);
        let epoch_ends = batches.get(step + 1).is_none_or(|(e, _)| e != epoch);
        if epoch_ends {
            let mean = epoch_sum / epoch_rows as f64;
            stats.epoch_losses.push(mean);
            progress.message(&format!("epoch {} loss {mean:.4}", epoch + 1));
            tracing::debug!(
                task = log.task,
                arm = log.arm,
                seed = log.seed,
                epoch,
                loss = mean,
                "epoch done"
            );
            (epoch_sum, epoch_rows) = (0.0, 0);
        }
    }
    progress.finish();
    stats.seconds = started.elapsed().as_secs_f64();
    stats.examples_per_s = stats.examples as f64 / stats.seconds.max(1e-9);
    Ok(stats)
}

/// Fine-tunes a classifier (or regressor) on `features` with `recipe` ([`fine_tune`] with
/// cross-entropy, or MSE for one label).
pub fn train_sequence_classifier<D: BertDevice>(
    model: &mut BertForSequenceClassification<D>,
    features: &[InputFeatures],
    recipe: &TrainingRecipe,
    seed: u64,
    device: &D,
    progress: &dyn Progress,
    log: TrainLog<'_>,
) -> Result<TrainStats> {
    fine_tune(
        model,
        features.len(),
        recipe,
        seed,
        progress,
        log,
        |model, rows, mode| {
            let batch: Vec<&InputFeatures> = rows.iter().map(|&i| &features[i]).collect();
            let labels = batch
                .iter()
                .map(|f| label_value(f.label))
                .collect::<Result<Vec<f32>>>()?;
            let inputs = classification_batch(&batch).inputs(device);
            let logits = model.forward::<TrainTape<D>>(&inputs, mode);
            Ok(model.loss(logits, &labels))
        },
    )
}

/// Indices sorted by length, so inference batches carry little padding.
fn by_length(lengths: impl Iterator<Item = usize>) -> Vec<usize> {
    let mut order: Vec<(usize, usize)> = lengths.enumerate().collect();
    order.sort_by_key(|&(i, len)| (len, i));
    order.into_iter().map(|(i, _)| i).collect()
}

/// One output per row of `rows`, in their order, computed [`EVAL_BATCH_SIZE`] rows at a
/// time in order of `len` (so batches carry little padding): `predict` returns the outputs
/// of the rows it is given, in that order.
pub(super) fn predict_by_length<R, T>(
    rows: &[R],
    len: impl Fn(&R) -> usize,
    mut predict: impl FnMut(&[&R]) -> Vec<T>,
) -> Vec<T> {
    let mut out: Vec<Option<T>> = rows.iter().map(|_| None).collect();
    for chunk in by_length(rows.iter().map(len)).chunks(EVAL_BATCH_SIZE) {
        let batch: Vec<&R> = chunk.iter().map(|&i| &rows[i]).collect();
        for (value, &i) in predict(&batch).into_iter().zip(chunk) {
            out[i] = Some(value);
        }
    }
    out.into_iter()
        .map(|v| v.expect("every row predicted"))
        .collect()
}

/// Logits of every example (`[num_labels]` each), in the order of `features`; dropout off.
pub fn predict_sequence_classifier<D: BertDevice>(
    model: &BertForSequenceClassification<D>,
    features: &[InputFeatures],
    device: &D,
) -> Vec<Vec<f32>> {
    predict_by_length(
        features,
        |f| f.input_ids.len(),
        |rows| {
            let inputs = classification_batch(rows).inputs(device);
            let out = model.forward::<NoneTape>(&inputs, &mut Mode::Eval).as_vec();
            out.chunks(model.num_labels).map(<[f32]>::to_vec).collect()
        },
    )
}

/// Class ids (argmax, first on ties) or scores from logits.
pub fn predictions_from_logits(kind: &TaskKind, logits: &[Vec<f32>]) -> Vec<Prediction> {
    logits
        .iter()
        .map(|row| match kind {
            TaskKind::Regression => Prediction::Score(row[0] as f64),
            TaskKind::Classification { .. } => Prediction::Class(crate::model::heads::argmax(row)),
        })
        .collect()
}

/// Predictions as metric targets.
pub fn prediction_targets(predictions: &[Prediction]) -> Targets {
    if predictions
        .iter()
        .all(|p| matches!(p, Prediction::Class(_)))
    {
        Targets::Classes(
            predictions
                .iter()
                .map(|p| match p {
                    Prediction::Class(c) => *c,
                    Prediction::Score(_) => unreachable!("all classes"),
                })
                .collect(),
        )
    } else {
        Targets::Scores(
            predictions
                .iter()
                .map(|p| match p {
                    Prediction::Class(c) => *c as f64,
                    Prediction::Score(s) => *s,
                })
                .collect(),
        )
    }
}
