//! Fine-tuning (BERT §4): a linear head on the pooled `[CLS]` output for the GLUE tasks
//! (§4.1) and start/end scores for SQuAD (§4.2), trained with AdamW, 10% linear warmup then
//! linear decay, per task and seed, from this run's pre-trained checkpoint, an HF-format
//! BERT directory, or random weights (`compare_scratch` runs both).
//!
//! The steps follow Google's `run_classifier.py`: [`convert_examples_to_features`]
//! (`[CLS] A [SEP] B [SEP]`, [`truncate_seq_pair`]) → [`train_sequence_classifier`] →
//! [`predict_sequence_classifier`] → the official metrics of [`crate::metrics`]. SQuAD uses
//! [`crate::squad`] for features, span selection and the official EM / F1.
//!
//! [`run_finetune`] is the `finetune` stage: every task × initialisation × seed, dev
//! metrics with mean / median / std over seeds, per-seed dev predictions (JSON), GLUE test
//! predictions in submission format, and a summary in the manifest record.
//!
//! Batches are padded to their longest row, not to `max_seq_length`: with the attention mask
//! the logits are the same, and short GLUE sentences train several times faster.

use crate::model::BertDevice;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use dfdx::tensor::{AutoDevice, NoneTape};
use dfdx::tensor_ops::Backward;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::{BertConfig, FinetuneConfig};
use crate::error::{Error, IoContext, Result};
use crate::metrics::{MetricsWriter, SeedSummary, Targets};
use crate::model::export::{
    load_question_answering, load_sequence_classification, read_config_json, with_dropout,
    CONFIG_FILE, MODEL_FILE,
};
use crate::model::{
    init, BertForQuestionAnswering, BertForSequenceClassification, BertInputs, Mode, TrainTape,
};
use crate::optim::{clip_grad_norm, schedule, AdamW, AdamWConfig, ParamGrads};
use crate::progress::Progress;
use crate::squad::{self, FeatureSizes, SpanLogits, SquadFeature, Wordpiece};
use crate::stage::{Begin, Outcome, Stage, StageCtx};
use crate::tasks::{
    resolve_task, write_glue_submission, Example, Label, Prediction, TaskKind, TaskSpec,
};

/// AdamW as Google's `run_classifier.py` builds it (`optimization.create_optimizer`):
/// β = (0.9, 0.999), ε = 1e-6, weight decay 0.01; gradients clipped to norm 1.0.
const ADAMW: AdamWConfig = AdamWConfig {
    beta1: 0.9,
    beta2: 0.999,
    eps: 1e-6,
    weight_decay: 0.01,
};
const MAX_GRAD_NORM: f64 = 1.0;
/// Rows per inference batch.
const EVAL_BATCH_SIZE: usize = 64;

// ---------------------------------------------------------------------------------------
// The recipe.

/// How a model is trained, for every task kind: `[finetune]`'s learning rates, batch size,
/// epochs, warmup and seeds with the task's `[finetune.overrides.TASK]` table applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingRecipe {
    /// The peak learning rate of a run (one value of `learning_rates` at a time).
    pub learning_rate: f64,
    /// The sweep: every value is tried per arm, the best mean dev score is reported.
    pub learning_rates: Vec<f64>,
    pub train_batch_size: usize,
    pub num_train_epochs: f64,
    pub warmup_proportion: f64,
    pub seeds: Vec<u64>,
}

impl TrainingRecipe {
    /// The `[finetune]` values with the task's overrides applied.
    pub fn for_task(cfg: &FinetuneConfig, task: &str) -> TrainingRecipe {
        let o = cfg.overrides.get(task).cloned().unwrap_or_default();
        let learning_rate = o.learning_rate.unwrap_or(cfg.learning_rate);
        let mut learning_rates = o
            .learning_rates
            .unwrap_or_else(|| cfg.learning_rates.clone());
        if learning_rates.is_empty() {
            learning_rates.push(learning_rate);
        }
        TrainingRecipe {
            learning_rate: learning_rates[0],
            learning_rates,
            train_batch_size: o.train_batch_size.unwrap_or(cfg.train_batch_size).max(1),
            num_train_epochs: o.num_train_epochs.unwrap_or(cfg.num_train_epochs),
            warmup_proportion: o.warmup_proportion.unwrap_or(cfg.warmup_proportion),
            seeds: o.seeds.unwrap_or_else(|| cfg.seeds.clone()),
        }
    }

    /// `int(len(train_examples) / train_batch_size * num_train_epochs)`, at least 1.
    pub fn num_train_steps(&self, num_examples: usize) -> usize {
        let steps = num_examples as f64 / self.train_batch_size as f64 * self.num_train_epochs;
        (steps as usize).max(1)
    }

    /// `int(num_train_steps * warmup_proportion)`.
    pub fn num_warmup_steps(&self, num_train_steps: usize) -> usize {
        (num_train_steps as f64 * self.warmup_proportion) as usize
    }
}

/// The recipe of a sentence (pair) classification or regression task (GLUE and
/// `[finetune.custom.NAME]`): training, plus `[finetune]`'s sequence length and caps with
/// the task's overrides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    #[serde(flatten)]
    pub training: TrainingRecipe,
    pub max_seq_length: usize,
    pub max_train_examples: usize,
    pub max_eval_examples: usize,
}

impl Recipe {
    /// The `[finetune]` values with the task's overrides applied.
    pub fn for_task(cfg: &FinetuneConfig, task: &str) -> Recipe {
        let o = cfg.overrides.get(task).cloned().unwrap_or_default();
        Recipe {
            training: TrainingRecipe::for_task(cfg, task),
            max_seq_length: o.max_seq_length.unwrap_or(cfg.max_seq_length),
            max_train_examples: o.max_train_examples.unwrap_or(cfg.max_train_examples),
            max_eval_examples: o.max_eval_examples.unwrap_or(cfg.max_eval_examples),
        }
    }
}

/// SQuAD's recipe as it runs: training from `[finetune]` (and `[finetune.overrides.squad]`),
/// windows, answer search and question caps from `[finetune.squad]` (BERT §4.2: 384 tokens,
/// stride 128), not `[finetune]`'s sequence length and example caps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SquadRecipe {
    #[serde(flatten)]
    pub training: TrainingRecipe,
    pub max_seq_length: usize,
    pub doc_stride: usize,
    pub max_query_length: usize,
    pub max_answer_length: usize,
    pub n_best_size: usize,
    /// Training questions at most (0 = all); each yields one or more windows (features).
    pub max_train_questions: usize,
    /// Evaluated questions at most (0 = all).
    pub max_eval_questions: usize,
}

impl SquadRecipe {
    /// The recipe of `[finetune]` and its `[finetune.squad]` table.
    pub fn for_finetune(cfg: &FinetuneConfig) -> SquadRecipe {
        SquadRecipe::new(TrainingRecipe::for_task(cfg, "squad"), &cfg.squad)
    }

    /// `training` with the sizes and caps of `squad`.
    pub fn new(training: TrainingRecipe, squad: &crate::config::SquadConfig) -> SquadRecipe {
        SquadRecipe {
            training,
            max_seq_length: squad.max_seq_length,
            doc_stride: squad.doc_stride,
            max_query_length: squad.max_query_length,
            max_answer_length: squad.max_answer_length,
            n_best_size: squad.n_best_size,
            max_train_questions: squad.max_train_examples,
            max_eval_questions: squad.max_eval_examples,
        }
    }

    /// The window sizes of the features.
    pub fn sizes(&self) -> FeatureSizes {
        FeatureSizes {
            max_seq_length: self.max_seq_length,
            doc_stride: self.doc_stride,
            max_query_length: self.max_query_length,
        }
    }
}

/// Where the encoder weights of a run come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Init {
    /// An HF-format directory (`config.json` + `model.safetensors`): this run's pre-training
    /// checkpoint or a downloaded BERT.
    Pretrained {
        dir: PathBuf,
        /// `finetune.dropout`: replaces the checkpoint's dropout probabilities.
        dropout: Option<f64>,
    },
    /// Random weights (HF's `_init_weights`), same architecture.
    Scratch,
}

impl Init {
    /// The result key: `pretrained` or `scratch`.
    pub fn arm(&self) -> &'static str {
        match self {
            Init::Pretrained { .. } => "pretrained",
            Init::Scratch => "scratch",
        }
    }
}

// ---------------------------------------------------------------------------------------
// Features.

/// `[CLS] A [SEP] B [SEP]` of one example (`InputFeatures` in run_classifier.py), unpadded.
#[derive(Debug, Clone, PartialEq)]
pub struct InputFeatures {
    pub input_ids: Vec<u32>,
    /// 0 for `[CLS] A [SEP]`, 1 for `B [SEP]`.
    pub segment_ids: Vec<u32>,
    pub label: Option<Label>,
}

/// `_truncate_seq_pair`: drops one token at a time from the end of the longer sequence
/// until the pair fits in `max_length` (a short text keeps all of its tokens).
pub fn truncate_seq_pair(tokens_a: &mut Vec<u32>, tokens_b: &mut Vec<u32>, max_length: usize) {
    while tokens_a.len() + tokens_b.len() > max_length {
        if tokens_a.len() > tokens_b.len() {
            tokens_a.pop();
        } else {
            tokens_b.pop();
        }
    }
}

fn token_ids(tokenizer: &dyn Wordpiece, text: &str) -> Result<Vec<u32>> {
    Ok(tokenizer
        .tokenize_with_offsets(text)?
        .into_iter()
        .map(|(id, _)| id)
        .collect())
}

/// `convert_single_example` for every example: WordPiece ids, truncation to
/// `max_seq_length` (3 places for `[CLS] [SEP] [SEP]`, 2 for a single text).
pub fn convert_examples_to_features(
    examples: &[Example],
    tokenizer: &dyn Wordpiece,
    max_seq_length: usize,
) -> Result<Vec<InputFeatures>> {
    let cls = tokenizer.special_id("[CLS]")?;
    let sep = tokenizer.special_id("[SEP]")?;
    examples
        .iter()
        .map(|example| {
            let mut tokens_a = token_ids(tokenizer, &example.text_a)?;
            let mut tokens_b = match &example.text_b {
                Some(b) => Some(token_ids(tokenizer, b)?),
                None => None,
            };
            match &mut tokens_b {
                // Account for [CLS], [SEP], [SEP] with "- 3".
                Some(b) => truncate_seq_pair(&mut tokens_a, b, max_seq_length.saturating_sub(3)),
                // Account for [CLS] and [SEP] with "- 2".
                None => tokens_a.truncate(max_seq_length.saturating_sub(2)),
            }
            let mut input_ids = Vec::with_capacity(max_seq_length);
            input_ids.push(cls);
            input_ids.extend_from_slice(&tokens_a);
            input_ids.push(sep);
            let mut segment_ids = vec![0; input_ids.len()];
            if let Some(b) = tokens_b {
                input_ids.extend_from_slice(&b);
                input_ids.push(sep);
                segment_ids.resize(input_ids.len(), 1);
            }
            Ok(InputFeatures {
                input_ids,
                segment_ids,
                label: example.label,
            })
        })
        .collect()
}

/// A batch on the host, padded with `[PAD]` (id 0) to its longest row.
#[derive(Debug, Clone, PartialEq)]
pub struct HostBatch {
    pub batch: usize,
    pub seq_len: usize,
    pub input_ids: Vec<u32>,
    pub token_type_ids: Vec<u32>,
    pub attention_mask: Vec<u32>,
}

impl HostBatch {
    /// Pads `rows` of `(input_ids, segment_ids)` to the longest one.
    pub fn pad<'a>(rows: impl IntoIterator<Item = (&'a [u32], &'a [u32])> + Clone) -> HostBatch {
        let seq_len = rows
            .clone()
            .into_iter()
            .map(|(ids, _)| ids.len())
            .max()
            .unwrap_or(1);
        let mut batch = HostBatch {
            batch: 0,
            seq_len,
            input_ids: Vec::new(),
            token_type_ids: Vec::new(),
            attention_mask: Vec::new(),
        };
        for (ids, segments) in rows {
            batch.batch += 1;
            let pad = seq_len - ids.len();
            batch.input_ids.extend_from_slice(ids);
            batch.input_ids.extend(std::iter::repeat_n(0, pad));
            batch.token_type_ids.extend_from_slice(segments);
            batch.token_type_ids.extend(std::iter::repeat_n(0, pad));
            batch
                .attention_mask
                .extend(std::iter::repeat_n(1, ids.len()));
            batch.attention_mask.extend(std::iter::repeat_n(0, pad));
        }
        batch
    }

    /// The device tensors.
    pub fn inputs<D: BertDevice>(&self, device: &D) -> BertInputs<D> {
        BertInputs::new(
            device,
            self.batch,
            self.seq_len,
            &self.input_ids,
            &self.token_type_ids,
            &self.attention_mask,
        )
    }
}

fn classification_batch(features: &[&InputFeatures]) -> HostBatch {
    HostBatch::pad(
        features
            .iter()
            .map(|f| (f.input_ids.as_slice(), f.segment_ids.as_slice())),
    )
}

/// The loss target of a label: the class id as a float, or the score.
fn label_value(label: Option<Label>) -> Result<f32> {
    match label {
        Some(Label::Class(c)) => Ok(c as f32),
        Some(Label::Score(s)) => Ok(s as f32),
        None => Err(Error::Model("a training example has no label".into())),
    }
}

// ---------------------------------------------------------------------------------------
// Training and inference.

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
fn optimizer_step<D: BertDevice, M: crate::model::HfParams<D>>(
    model: &mut M,
    optimizer: &mut AdamW,
    loss: crate::model::Scalar<D, TrainTape<D>>,
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

/// Fine-tunes a classifier (or regressor) on `features` with `recipe`: `seed` drives the
/// shuffling and the dropout masks. Reports each step to `progress`, each epoch's mean loss
/// as its message.
pub fn train_sequence_classifier<D: BertDevice>(
    model: &mut BertForSequenceClassification<D>,
    features: &[InputFeatures],
    recipe: &TrainingRecipe,
    seed: u64,
    device: &D,
    progress: &dyn Progress,
    mut log: TrainLog<'_>,
) -> Result<TrainStats> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let batches = training_batches(features.len(), recipe, &mut rng);
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
        let batch_features: Vec<&InputFeatures> = rows.iter().map(|&i| &features[i]).collect();
        let labels = batch_features
            .iter()
            .map(|f| label_value(f.label))
            .collect::<Result<Vec<f32>>>()?;
        let inputs = classification_batch(&batch_features).inputs(device);
        let lr = schedule(step, recipe.learning_rate, warmup, total);
        let logits = model.forward::<TrainTape<D>>(&inputs, &mut mode);
        let loss = model.loss(logits, &labels);
        let value = optimizer_step(model, &mut optimizer, loss, lr)?;
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

/// Indices sorted by length, so inference batches carry little padding.
fn by_length(lengths: impl Iterator<Item = usize>) -> Vec<usize> {
    let mut order: Vec<(usize, usize)> = lengths.enumerate().collect();
    order.sort_by_key(|&(i, len)| (len, i));
    order.into_iter().map(|(i, _)| i).collect()
}

/// Logits of every example (`[num_labels]` each), in the order of `features`; dropout off.
pub fn predict_sequence_classifier<D: BertDevice>(
    model: &BertForSequenceClassification<D>,
    features: &[InputFeatures],
    device: &D,
) -> Vec<Vec<f32>> {
    let order = by_length(features.iter().map(|f| f.input_ids.len()));
    let mut logits = vec![Vec::new(); features.len()];
    for chunk in order.chunks(EVAL_BATCH_SIZE) {
        let rows: Vec<&InputFeatures> = chunk.iter().map(|&i| &features[i]).collect();
        let inputs = classification_batch(&rows).inputs(device);
        let out = model.forward::<NoneTape>(&inputs, &mut Mode::Eval).as_vec();
        for (row, &i) in out.chunks(model.num_labels).zip(chunk) {
            logits[i] = row.to_vec();
        }
    }
    logits
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

// ---------------------------------------------------------------------------------------
// Results.

/// Metrics of one dev split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitScores {
    pub split: String,
    pub examples: usize,
    /// Metric name → value (fractions: accuracy 0.9, SQuAD F1 0.85).
    pub metrics: BTreeMap<String, f64>,
}

/// One task × initialisation × seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedRun {
    pub task: String,
    pub arm: String,
    pub seed: u64,
    /// The peak learning rate of this run.
    #[serde(default)]
    pub learning_rate: f64,
    pub train_examples: usize,
    pub train: TrainStats,
    pub dev: Vec<SplitScores>,
    pub eval_examples_per_s: f64,
}

impl SeedRun {
    /// Every metric, the first dev split's by plain name and later splits' as
    /// `split/metric` (MNLI's `dev_mismatched/accuracy`).
    pub fn flat_metrics(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (i, split) in self.dev.iter().enumerate() {
            for (name, value) in &split.metrics {
                let key = if i == 0 {
                    name.clone()
                } else {
                    format!("{}/{name}", split.split)
                };
                out.insert(key, *value);
            }
        }
        out
    }
}

/// The summary of one arm over its seeds, in the shape the report reads:
/// `{"scores": [headline per seed], "mean", "median", "std", "all": {metric: mean},
/// "summary": {metric: SeedSummary}}`.
pub fn summarize_arm(runs: &[&SeedRun], headline: &str) -> Value {
    let mut per_metric: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for run in runs {
        for (k, v) in run.flat_metrics() {
            per_metric.entry(k).or_default().push(v);
        }
    }
    let summaries: BTreeMap<String, SeedSummary> = per_metric
        .iter()
        .map(|(k, v)| (k.clone(), SeedSummary::of(v)))
        .collect();
    let scores = per_metric.get(headline).cloned().unwrap_or_default();
    let headline_summary = SeedSummary::of(&scores);
    let all: BTreeMap<&String, f64> = summaries.iter().map(|(k, s)| (k, s.mean)).collect();
    json!({
        "seeds": runs.iter().map(|r| r.seed).collect::<Vec<_>>(),
        "scores": scores,
        "mean": headline_summary.mean,
        "median": headline_summary.median,
        "std": headline_summary.std,
        "all": all,
        "summary": summaries,
    })
}

/// The majority-class accuracy of `gold` (the floor a classifier must beat).
pub fn majority_class_accuracy(gold: &[usize]) -> f64 {
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    for &g in gold {
        *counts.entry(g).or_default() += 1;
    }
    let best = counts.values().copied().max().unwrap_or(0);
    best as f64 / gold.len().max(1) as f64
}

/// A seeded subset of at most `max` rows, kept in file order (`max == 0`: all rows).
pub fn subsample<T: Clone>(rows: &[T], max: usize, seed: u64) -> Vec<T> {
    if max == 0 || rows.len() <= max {
        return rows.to_vec();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut picked = rand::seq::index::sample(&mut rng, rows.len(), max).into_vec();
    picked.sort_unstable();
    picked.into_iter().map(|i| rows[i].clone()).collect()
}

// ---------------------------------------------------------------------------------------
// One GLUE-style task.

/// The loaded data of one classification task, shared by its arms and seeds.
pub struct TaskData {
    pub spec: TaskSpec,
    pub recipe: Recipe,
    /// Rows in the training file before subsampling.
    pub train_rows: usize,
    pub train: Vec<InputFeatures>,
    /// `(split name, file, examples, features)` of every dev split.
    pub dev: Vec<(String, PathBuf, Vec<Example>, Vec<InputFeatures>)>,
    /// Test splits with their examples (for submissions).
    pub test: Vec<(usize, Vec<Example>, Vec<InputFeatures>)>,
}

/// Reads and encodes a task's train, dev and test files. A missing train or dev file is an
/// error; a missing test file is skipped with a warning naming it.
pub fn load_task_data(
    spec: TaskSpec,
    recipe: Recipe,
    tokenizer: &dyn Wordpiece,
    subsample_seed: u64,
) -> Result<TaskData> {
    spec.check_files()?;
    let train_examples = spec.load_train()?;
    let train_rows = train_examples.len();
    let train_examples = subsample(&train_examples, recipe.max_train_examples, subsample_seed);
    if train_examples.len() < train_rows {
        tracing::info!(task = %spec.name, used = train_examples.len(), of = train_rows, "training set subsampled (finetune.max_train_examples)");
    }
    let train = convert_examples_to_features(&train_examples, tokenizer, recipe.max_seq_length)?;
    let mut dev = Vec::new();
    for split in &spec.dev {
        let examples = spec.load(&split.table)?;
        let examples = subsample(&examples, recipe.max_eval_examples, subsample_seed ^ 1);
        let features = convert_examples_to_features(&examples, tokenizer, recipe.max_seq_length)?;
        dev.push((
            split.name.clone(),
            split.table.path.clone(),
            examples,
            features,
        ));
    }
    let mut test = Vec::new();
    for (i, split) in spec.test.iter().enumerate() {
        if !split.table.path.is_file() {
            tracing::warn!(task = %spec.name, file = %split.table.path.display(), "test file missing: no GLUE submission for it");
            continue;
        }
        let examples = spec.load(&split.table)?;
        let features = convert_examples_to_features(&examples, tokenizer, recipe.max_seq_length)?;
        test.push((i, examples, features));
    }
    Ok(TaskData {
        spec,
        recipe,
        train_rows,
        train,
        dev,
        test,
    })
}

/// A fresh classifier for `init`: loaded from the directory (encoder weights, a new head
/// from `seed`) or random from `seed`.
pub fn new_classifier<D: BertDevice>(
    init_from: &Init,
    config: &BertConfig,
    num_labels: usize,
    device: &D,
    seed: u64,
) -> Result<BertForSequenceClassification<D>> {
    match init_from {
        Init::Pretrained { dir, dropout } => {
            Ok(load_sequence_classification(dir, num_labels, device, seed, *dropout)?.0)
        }
        Init::Scratch => {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            Ok(BertForSequenceClassification::new(
                config,
                num_labels,
                &mut init(config, device, &mut rng),
            ))
        }
    }
}

/// The outputs of one seed: its scores, dev predictions and test predictions.
pub struct SeedOutput {
    pub run: SeedRun,
    /// Per dev split: predictions in example order.
    pub dev_predictions: Vec<Vec<Prediction>>,
    /// Per loaded test split (same order as [`TaskData::test`]).
    pub test_predictions: Vec<Vec<Prediction>>,
}

/// Trains one seed of one arm on a task and evaluates it on every dev and test split.
pub fn run_seed<D: BertDevice>(
    data: &TaskData,
    init_from: &Init,
    config: &BertConfig,
    seed: u64,
    device: &D,
    progress: &dyn Progress,
    writer: Option<&mut MetricsWriter>,
) -> Result<SeedOutput> {
    let num_labels = data.spec.kind.num_labels();
    let mut model = new_classifier(init_from, config, num_labels, device, seed)?;
    let log = TrainLog {
        task: &data.spec.name,
        arm: init_from.arm(),
        seed,
        writer,
    };
    let train = train_sequence_classifier(
        &mut model,
        &data.train,
        &data.recipe.training,
        seed,
        device,
        progress,
        log,
    )?;
    let started = Instant::now();
    let mut evaluated = 0;
    let mut dev = Vec::new();
    let mut dev_predictions = Vec::new();
    for (name, path, examples, features) in &data.dev {
        let logits = predict_sequence_classifier(&model, features, device);
        let predictions = predictions_from_logits(&data.spec.kind, &logits);
        let gold = data.spec.gold(examples, path)?;
        let predicted = prediction_targets(&predictions);
        let mut metrics = BTreeMap::new();
        for m in &data.spec.metrics {
            metrics.insert(m.name().to_string(), m.evaluate(&predicted, &gold)?);
        }
        evaluated += features.len();
        dev.push(SplitScores {
            split: name.clone(),
            examples: examples.len(),
            metrics,
        });
        dev_predictions.push(predictions);
    }
    let eval_seconds = started.elapsed().as_secs_f64();
    let test_predictions = data
        .test
        .iter()
        .map(|(_, _, features)| {
            let logits = predict_sequence_classifier(&model, features, device);
            predictions_from_logits(&data.spec.kind, &logits)
        })
        .collect();
    Ok(SeedOutput {
        run: SeedRun {
            task: data.spec.name.clone(),
            arm: init_from.arm().to_string(),
            seed,
            learning_rate: data.recipe.training.learning_rate,
            train_examples: data.train.len(),
            train,
            dev,
            eval_examples_per_s: evaluated as f64 / eval_seconds.max(1e-9),
        },
        dev_predictions,
        test_predictions,
    })
}

// ---------------------------------------------------------------------------------------
// SQuAD.

/// The loaded SQuAD data: training features and the evaluation set.
pub struct SquadData {
    /// Training questions (before they are cut into windows).
    pub train_questions: usize,
    pub train_features: Vec<SquadFeature>,
    pub eval_dataset: squad::SquadDataset,
    pub eval_examples: Vec<squad::SquadExample>,
    pub eval_features: Vec<SquadFeature>,
    pub sizes: FeatureSizes,
}

/// Reads SQuAD: `files`' train file when given, else the first half of the dev articles
/// (and the second half evaluates); caps both and cuts windows as `recipe` says.
pub fn load_squad_data(
    files: &crate::config::SquadConfig,
    recipe: &SquadRecipe,
    resolve: impl Fn(&Path) -> PathBuf,
    tokenizer: &dyn Wordpiece,
) -> Result<SquadData> {
    let dev = squad::load_squad(&resolve(&files.dev_file))?;
    let (mut train, mut eval) = match &files.train_file {
        Some(path) => (squad::load_squad(&resolve(path))?, dev),
        None => dev.split_by_article(),
    };
    train.truncate_questions(recipe.max_train_questions);
    eval.truncate_questions(recipe.max_eval_questions);
    let sizes = recipe.sizes();
    let train_examples = squad::read_squad_examples(&train, true);
    let train_features = squad::convert_examples_to_features(&train_examples, tokenizer, sizes)?;
    let eval_examples = squad::read_squad_examples(&eval, false);
    let eval_features = squad::convert_examples_to_features(&eval_examples, tokenizer, sizes)?;
    Ok(SquadData {
        train_questions: train_examples.len(),
        train_features,
        eval_dataset: eval,
        eval_examples,
        eval_features,
        sizes,
    })
}

fn squad_batch(features: &[&SquadFeature]) -> HostBatch {
    HostBatch::pad(
        features
            .iter()
            .map(|f| (f.input_ids.as_slice(), f.segment_ids.as_slice())),
    )
}

/// Fine-tunes a span extractor on SQuAD features (loss: mean of start and end
/// cross-entropy).
pub fn train_question_answering<D: BertDevice>(
    model: &mut BertForQuestionAnswering<D>,
    features: &[SquadFeature],
    recipe: &TrainingRecipe,
    seed: u64,
    device: &D,
    progress: &dyn Progress,
    label: &str,
) -> Result<TrainStats> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let batches = training_batches(features.len(), recipe, &mut rng);
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
    progress.start(label, total as u64);
    let (mut epoch_sum, mut epoch_rows) = (0.0, 0usize);
    for (step, (epoch, rows)) in batches.iter().enumerate() {
        let batch: Vec<&SquadFeature> = rows.iter().map(|&i| &features[i]).collect();
        let starts: Vec<usize> = batch.iter().map(|f| f.start_position).collect();
        let ends: Vec<usize> = batch.iter().map(|f| f.end_position).collect();
        let inputs = squad_batch(&batch).inputs(device);
        let lr = schedule(step, recipe.learning_rate, warmup, total);
        let output = model.forward::<TrainTape<D>>(&inputs, &mut mode);
        let loss = model.loss(output, &starts, &ends);
        epoch_sum += optimizer_step(model, &mut optimizer, loss, lr)?;
        epoch_rows += 1;
        stats.examples += rows.len();
        progress.advance(1);
        if batches.get(step + 1).is_none_or(|(e, _)| e != epoch) {
            let mean = epoch_sum / epoch_rows as f64;
            stats.epoch_losses.push(mean);
            progress.message(&format!("epoch {} loss {mean:.4}", epoch + 1));
            (epoch_sum, epoch_rows) = (0.0, 0);
        }
    }
    progress.finish();
    stats.seconds = started.elapsed().as_secs_f64();
    stats.examples_per_s = stats.examples as f64 / stats.seconds.max(1e-9);
    Ok(stats)
}

/// Start and end logits of every feature, in order; dropout off.
pub fn predict_question_answering<D: BertDevice>(
    model: &BertForQuestionAnswering<D>,
    features: &[SquadFeature],
    device: &D,
) -> Vec<SpanLogits> {
    let order = by_length(features.iter().map(|f| f.input_ids.len()));
    let mut out = vec![
        SpanLogits {
            start_logits: Vec::new(),
            end_logits: Vec::new()
        };
        features.len()
    ];
    for chunk in order.chunks(EVAL_BATCH_SIZE) {
        let rows: Vec<&SquadFeature> = chunk.iter().map(|&i| &features[i]).collect();
        let batch = squad_batch(&rows);
        let result = model.forward::<NoneTape>(&batch.inputs(device), &mut Mode::Eval);
        let starts = result.start_logits.as_vec();
        let ends = result.end_logits.as_vec();
        for (r, &i) in chunk.iter().enumerate() {
            let row = r * batch.seq_len..(r + 1) * batch.seq_len;
            out[i] = SpanLogits {
                start_logits: starts[row.clone()].to_vec(),
                end_logits: ends[row].to_vec(),
            };
        }
    }
    out
}

/// The best answer text of every evaluation question (`qas_id → text`).
pub fn squad_predictions(
    data: &SquadData,
    logits: &[SpanLogits],
    recipe: &SquadRecipe,
) -> BTreeMap<String, String> {
    let mut by_example: Vec<Vec<usize>> = vec![Vec::new(); data.eval_examples.len()];
    for (i, f) in data.eval_features.iter().enumerate() {
        by_example[f.example_index].push(i);
    }
    data.eval_examples
        .iter()
        .zip(&by_example)
        .map(|(example, indices)| {
            let features: Vec<&SquadFeature> =
                indices.iter().map(|&i| &data.eval_features[i]).collect();
            let span_logits: Vec<&SpanLogits> = indices.iter().map(|&i| &logits[i]).collect();
            let nbest = squad::write_predictions(
                example,
                &features,
                &span_logits,
                recipe.n_best_size,
                recipe.max_answer_length,
            );
            (example.qas_id.clone(), nbest[0].text.clone())
        })
        .collect()
}

/// Trains and evaluates one SQuAD seed; metrics are fractions (`exact_match`, `f1`).
pub fn run_squad_seed<D: BertDevice>(
    data: &SquadData,
    recipe: &SquadRecipe,
    init_from: &Init,
    config: &BertConfig,
    seed: u64,
    device: &D,
    progress: &dyn Progress,
) -> Result<(SeedRun, BTreeMap<String, String>)> {
    let mut model = match init_from {
        Init::Pretrained { dir, dropout } => {
            load_question_answering(dir, device, seed, *dropout)?.0
        }
        Init::Scratch => {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            BertForQuestionAnswering::new(config, &mut init(config, device, &mut rng))
        }
    };
    let label = format!("squad {} seed {seed}", init_from.arm());
    let train = train_question_answering(
        &mut model,
        &data.train_features,
        &recipe.training,
        seed,
        device,
        progress,
        &label,
    )?;
    let started = Instant::now();
    let logits = predict_question_answering(&model, &data.eval_features, device);
    let predictions = squad_predictions(data, &logits, recipe);
    let eval_seconds = started.elapsed().as_secs_f64();
    let as_map: std::collections::HashMap<String, String> =
        predictions.clone().into_iter().collect();
    let scores = squad::evaluate(&data.eval_dataset, &as_map);
    let metrics = BTreeMap::from([
        ("exact_match".to_string(), scores.exact_match / 100.0),
        ("f1".to_string(), scores.f1 / 100.0),
    ]);
    let run = SeedRun {
        task: "squad".into(),
        arm: init_from.arm().into(),
        seed,
        learning_rate: recipe.training.learning_rate,
        train_examples: data.train_features.len(),
        train,
        dev: vec![SplitScores {
            split: "dev".into(),
            examples: scores.total,
            metrics,
        }],
        eval_examples_per_s: data.eval_features.len() as f64 / eval_seconds.max(1e-9),
    };
    Ok((run, predictions))
}

// ---------------------------------------------------------------------------------------
// The stage.

/// The directory of this run's pre-training checkpoint: the pretrain stage's artifact of
/// kind `model` (else any artifact named `model.safetensors`, the last one recorded), which
/// must have `config.json` beside it.
pub fn pretrained_checkpoint_dir(ctx: &StageCtx) -> Result<PathBuf> {
    let record = ctx.upstream(Stage::Pretrain)?;
    let artifact = record
        .artifacts_of("model")
        .filter(|a| a.path.ends_with(MODEL_FILE))
        .last()
        .or_else(|| {
            record
                .artifacts
                .iter()
                .rfind(|a| a.path.ends_with(MODEL_FILE))
        })
        .ok_or_else(|| {
            Error::Stage(format!(
                "the pretrain stage recorded no {MODEL_FILE}; rerun `just stage pretrain`"
            ))
        })?;
    let dir = ctx
        .path_of(artifact)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| ctx.run_dir().to_path_buf());
    if !dir.join(CONFIG_FILE).is_file() {
        return Err(Error::checkpoint(
            dir.join(CONFIG_FILE),
            "missing beside the pre-trained model.safetensors; rerun `just stage pretrain`",
        ));
    }
    Ok(dir)
}

/// A BERT WordPiece tokenizer for an HF directory: its `tokenizer.json`, else one built
/// from its `vocab.txt` (lower-cased unless `tokenizer_config.json` says
/// `"do_lower_case": false`).
pub fn tokenizer_for_hf_dir(dir: &Path) -> Result<tokenizers::Tokenizer> {
    let json = dir.join("tokenizer.json");
    if json.is_file() {
        return tokenizers::Tokenizer::from_file(&json)
            .map_err(|e| Error::data(&json, format!("not a tokenizer.json: {e}")));
    }
    let vocab = dir.join("vocab.txt");
    if !vocab.is_file() {
        return Err(Error::data(
            &vocab,
            "missing: an HF BERT directory needs tokenizer.json or vocab.txt",
        ));
    }
    let lowercase = std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v.get("do_lower_case").and_then(Value::as_bool))
        .unwrap_or(true);
    let model = tokenizers::models::wordpiece::WordPiece::from_file(&vocab.to_string_lossy())
        .unk_token("[UNK]".into())
        .build()
        .map_err(|e| Error::data(&vocab, format!("not a WordPiece vocab.txt: {e}")))?;
    let mut tokenizer = tokenizers::Tokenizer::new(model);
    tokenizer.with_normalizer(Some(tokenizers::normalizers::BertNormalizer::new(
        true, true, None, lowercase,
    )));
    tokenizer.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::bert::BertPreTokenizer));
    Ok(tokenizer)
}

/// The initialisations to run (`init`, plus `scratch` with `compare_scratch`), the model
/// config for scratch runs, and the tokenizer.
fn plan_inits(ctx: &StageCtx) -> Result<(Vec<Init>, BertConfig, tokenizers::Tokenizer)> {
    let cfg = &ctx.config().finetune;
    let (first, config, tokenizer) = match cfg.init.as_str() {
        "scratch" => {
            let (wp, _) = crate::tokenize::load_stage_vocab(ctx)?;
            (
                Init::Scratch,
                ctx.config().model.clone(),
                wp.tokenizer().clone(),
            )
        }
        "pretrained" => {
            let dir = pretrained_checkpoint_dir(ctx)?;
            let config = read_config_json(&dir.join(CONFIG_FILE))?;
            let (wp, _) = crate::tokenize::load_stage_vocab(ctx)?;
            (
                Init::Pretrained {
                    dir,
                    dropout: cfg.dropout,
                },
                config,
                wp.tokenizer().clone(),
            )
        }
        path => {
            let dir = ctx.loaded.resolve(path);
            let config = read_config_json(&dir.join(CONFIG_FILE))?;
            let tokenizer = tokenizer_for_hf_dir(&dir)?;
            (
                Init::Pretrained {
                    dir,
                    dropout: cfg.dropout,
                },
                config,
                tokenizer,
            )
        }
    };
    // The scratch arm trains with the same dropout as the pre-trained one.
    let config = with_dropout(config, cfg.dropout);
    let mut inits = vec![first];
    if cfg.compare_scratch && inits[0] != Init::Scratch {
        inits.push(Init::Scratch);
    }
    Ok((inits, config, tokenizer))
}

/// Writes `rel` under the stage directory and records it as an artifact.
fn write_artifact(
    run: &mut crate::stage::StageRun,
    rel: &str,
    kind: &str,
    rows: u64,
    value: &Value,
) -> Result<()> {
    let path = run.dir().join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).at(parent)?;
    }
    let text = serde_json::to_string_pretty(value).expect("JSON serialises");
    std::fs::write(&path, text).at(&path)?;
    run.add(rel, kind, rows)
}

/// What every task of one stage run shares.
struct StageEnv<'a> {
    ctx: &'a StageCtx,
    cfg: &'a FinetuneConfig,
    inits: &'a [Init],
    /// Architecture of scratch runs (the pre-trained checkpoint's when there is one).
    config: &'a BertConfig,
    tokenizer: &'a tokenizers::Tokenizer,
    device: &'a AutoDevice,
    progress: &'a dyn Progress,
}

/// Running totals over all tasks (the summary's throughput).
#[derive(Default)]
struct Totals {
    train_examples: usize,
    train_seconds: f64,
    log_rows: u64,
}

impl Totals {
    fn add(&mut self, train: &TrainStats) {
        self.train_examples += train.examples;
        self.train_seconds += train.seconds;
        self.log_rows += train.steps as u64;
    }
}

/// The `finetune` stage: every task of `finetune.tasks` × initialisation × seed.
///
/// Artifacts (under `<run>/finetune/`): `<task>/<arm>-seed<k>.json` (kind `predictions`:
/// the recipe, training stats, dev metrics and every dev prediction with its gold label),
/// `train-log.jsonl` (kind `metrics`: loss and lr per step of the GLUE tasks),
/// `submission/<arm>/<GLUE file>` (kind `glue-submission`: test predictions of the seed with
/// the best dev score), and `results.json` (kind `results`, the same summary as the
/// manifest record's metrics:
/// `{"tasks": {task: {"metric", "pretrained": {scores, mean, median, std, all}, "scratch"}}}`).
pub fn run_finetune(ctx: &StageCtx, progress: &dyn Progress) -> Result<Outcome> {
    crate::model::kernels::on_pool_thread(|| finetune_stage(ctx, progress))
}

/// [`run_finetune`]'s body, on a pool thread.
fn finetune_stage(ctx: &StageCtx, progress: &dyn Progress) -> Result<Outcome> {
    let cfg = ctx.config().finetune.clone();
    let (specs, with_squad) = resolve_tasks(ctx, &cfg)?;
    let mut run = match ctx.begin(Stage::Finetune)? {
        Begin::Skip(record) => return Ok(Outcome::Skipped(record)),
        Begin::Run(run) => run,
    };
    let (inits, config, tokenizer) = plan_inits(ctx)?;
    let device = AutoDevice::seed_from_u64(ctx.seed(Stage::Finetune, &[0]));
    let env = StageEnv {
        ctx,
        cfg: &cfg,
        inits: &inits,
        config: &config,
        tokenizer: &tokenizer,
        device: &device,
        progress,
    };
    let mut log = MetricsWriter::create(run.dir().join("train-log.jsonl"))?;
    let mut totals = Totals::default();
    let mut tasks_json = serde_json::Map::new();
    for spec in specs {
        let name = spec.name.clone();
        let task_json = run_glue_task(&env, &mut run, spec, &mut log, &mut totals)?;
        tasks_json.insert(name, task_json);
    }
    if with_squad {
        let task_json = run_squad_task(&env, &mut run, &mut totals)?;
        tasks_json.insert("squad".into(), task_json);
    }
    drop(log);
    run.add("train-log.jsonl", "metrics", totals.log_rows)?;
    let summary = json!({
        "tasks": tasks_json,
        "init": cfg.init,
        "arms": inits.iter().map(Init::arm).collect::<Vec<_>>(),
        "examples_per_s": totals.train_examples as f64 / totals.train_seconds.max(1e-9),
        "train_examples": totals.train_examples,
        "train_seconds": totals.train_seconds,
    });
    write_artifact(
        &mut run,
        "results.json",
        "results",
        tasks_json_len(&summary),
        &summary,
    )?;
    Ok(Outcome::Ran(run.finish(ctx, summary)?))
}

/// Resolves every task of `finetune.tasks` and checks its files before anything trains;
/// returns the GLUE-style specs and whether SQuAD runs.
fn resolve_tasks(ctx: &StageCtx, cfg: &FinetuneConfig) -> Result<(Vec<TaskSpec>, bool)> {
    if cfg.tasks.is_empty() {
        return Err(Error::Config(
            "finetune.tasks is empty: name at least one task (e.g. [\"sst2\"])".into(),
        ));
    }
    let glue_dir = ctx.loaded.resolve(&cfg.glue_dir);
    let mut specs = Vec::new();
    for name in cfg.tasks.iter().filter(|t| *t != "squad") {
        let spec = resolve_task(name, cfg, &glue_dir, &ctx.loaded.root)?;
        spec.check_files()?;
        specs.push(spec);
    }
    let with_squad = cfg.tasks.iter().any(|t| t == "squad");
    if with_squad {
        for file in std::iter::once(&cfg.squad.dev_file).chain(&cfg.squad.train_file) {
            let path = ctx.loaded.resolve(file);
            if !path.is_file() {
                squad::load_squad(&path)?;
            }
        }
    }
    Ok((specs, with_squad))
}

/// One GLUE-style task: every arm and seed, their artifacts and GLUE submissions; returns
/// the task's summary.
fn run_glue_task(
    env: &StageEnv<'_>,
    run: &mut crate::stage::StageRun,
    spec: TaskSpec,
    log: &mut MetricsWriter,
    totals: &mut Totals,
) -> Result<Value> {
    let name = spec.name.clone();
    let recipe = Recipe::for_task(env.cfg, &name);
    let headline = spec.metrics[0].name().to_string();
    let subsample_seed = env.ctx.seed(Stage::Finetune, &[task_key(&name)]);
    let mut data = load_task_data(spec, recipe.clone(), env.tokenizer, subsample_seed)?;
    let mut task_json = json!({
        "metric": headline,
        "train_examples": data.train.len(),
        "train_rows": data.train_rows,
        "recipe": recipe,
    });
    if let Some((_, path, examples, _)) = data.dev.first() {
        if let Ok(Targets::Classes(gold)) = data.spec.gold(examples, path) {
            task_json["majority_class_accuracy"] = json!(majority_class_accuracy(&gold));
        }
    }
    let sweep = recipe.training.learning_rates.clone();
    for init_from in env.inits {
        let arm = init_from.arm();
        let mut tried: Vec<(f64, Value, Option<SeedOutput>)> = Vec::new();
        for &lr in &sweep {
            data.recipe.training.learning_rate = lr;
            let mut runs = Vec::new();
            let mut best: Option<(f64, SeedOutput)> = None;
            for &seed in &recipe.training.seeds {
                let output = run_seed(
                    &data,
                    init_from,
                    env.config,
                    seed,
                    env.device,
                    env.progress,
                    Some(&mut *log),
                )?;
                totals.add(&output.run.train);
                write_seed_artifact(run, &data, sweep.len() > 1, &output)?;
                let metrics = output.run.flat_metrics();
                tracing::info!(task = %name, arm, lr, seed, ?metrics, "fine-tuned");
                let score = metrics.get(&headline).copied().unwrap_or(f64::NEG_INFINITY);
                runs.push(output.run.clone());
                if best.as_ref().is_none_or(|(b, _)| score > *b) {
                    best = Some((score, output));
                }
            }
            let refs: Vec<&SeedRun> = runs.iter().collect();
            tried.push((lr, summarize_arm(&refs, &headline), best.map(|(_, o)| o)));
        }
        let (lr, summary, best) = tried.swap_remove(pick_learning_rate(&tried));
        if let Some(best) = best {
            write_submissions(run, &data, arm, &best)?;
        }
        task_json[arm] = with_sweep(summary, lr, &tried);
    }
    Ok(task_json)
}

/// The index of the sweep value with the best mean dev score (the first on a tie; a value
/// whose mean is missing or NaN never wins over one that has it).
pub fn pick_learning_rate<T>(tried: &[(f64, Value, T)]) -> usize {
    let mean = |v: &Value| v["mean"].as_f64().filter(|m| m.is_finite());
    let mut best = 0;
    for (i, (_, summary, _)) in tried.iter().enumerate() {
        if let Some(m) = mean(summary) {
            if mean(&tried[best].1).is_none_or(|b| m > b) {
                best = i;
            }
        }
    }
    best
}

/// An arm's summary at its chosen learning rate, plus the other values tried.
fn with_sweep<T>(mut summary: Value, lr: f64, others: &[(f64, Value, T)]) -> Value {
    summary["learning_rate"] = json!(lr);
    if !others.is_empty() {
        let mut rows = vec![
            json!({"learning_rate": lr, "mean": summary["mean"], "std": summary["std"], "chosen": true}),
        ];
        rows.extend(others.iter().map(|(lr, s, _)| {
            json!({"learning_rate": lr, "mean": s["mean"], "std": s["std"], "chosen": false})
        }));
        rows.sort_by(|a, b| {
            a["learning_rate"]
                .as_f64()
                .partial_cmp(&b["learning_rate"].as_f64())
                .expect("finite learning rates")
        });
        summary["sweep"] = json!(rows);
    }
    summary
}

/// `<task>/<arm>-seed<k>.json` (`<arm>-lr<lr>-seed<k>.json` in a sweep): the run, its
/// recipe, and every dev prediction.
fn write_seed_artifact(
    run: &mut crate::stage::StageRun,
    data: &TaskData,
    sweep: bool,
    output: &SeedOutput,
) -> Result<()> {
    let dev: Vec<Value> = data
        .dev
        .iter()
        .zip(&output.dev_predictions)
        .zip(&output.run.dev)
        .map(|(((split, _, examples, _), predictions), scores)| {
            let rows: Vec<Value> = examples
                .iter()
                .zip(predictions)
                .map(|(e, p)| json!({"id": e.id, "prediction": p, "label": e.label}))
                .collect();
            json!({"split": split, "metrics": scores.metrics, "predictions": rows})
        })
        .collect();
    let rows: usize = data.dev.iter().map(|d| d.2.len()).sum();
    let rel = seed_artifact_name(&output.run, sweep);
    write_artifact(
        run,
        &rel,
        "predictions",
        rows as u64,
        &json!({ "run": output.run, "recipe": data.recipe, "dev": dev }),
    )
}

/// `<task>/<arm>-seed<k>.json`, or `<task>/<arm>-lr<lr>-seed<k>.json` in a sweep.
pub fn seed_artifact_name(run: &SeedRun, sweep: bool) -> String {
    if sweep {
        format!(
            "{}/{}-lr{:e}-seed{}.json",
            run.task, run.arm, run.learning_rate, run.seed
        )
    } else {
        format!("{}/{}-seed{}.json", run.task, run.arm, run.seed)
    }
}

/// `submission/<arm>/<GLUE file>` for every loaded test split.
fn write_submissions(
    run: &mut crate::stage::StageRun,
    data: &TaskData,
    arm: &str,
    best: &SeedOutput,
) -> Result<()> {
    for ((split_index, examples, _), predictions) in data.test.iter().zip(&best.test_predictions) {
        let split = &data.spec.test[*split_index];
        let dir = run.dir().join("submission").join(arm);
        let path = write_glue_submission(&dir, &data.spec, split, examples, predictions)?;
        let rel = path
            .strip_prefix(run.dir())
            .expect("written under the stage directory")
            .to_string_lossy()
            .into_owned();
        run.add(&rel, "glue-submission", examples.len() as u64)?;
    }
    Ok(())
}

/// SQuAD: every arm and seed; returns the task's summary (EM and F1 as fractions).
fn run_squad_task(
    env: &StageEnv<'_>,
    run: &mut crate::stage::StageRun,
    totals: &mut Totals,
) -> Result<Value> {
    let recipe = SquadRecipe::for_finetune(env.cfg);
    let data = load_squad_data(
        &env.cfg.squad,
        &recipe,
        |p| env.ctx.loaded.resolve(p),
        env.tokenizer,
    )?;
    let mut task_json = json!({
        "metric": "f1",
        "train_examples": data.train_features.len(),
        "train_questions": data.train_questions,
        "eval_questions": data.eval_examples.len(),
        "recipe": recipe,
    });
    let sweep = recipe.training.learning_rates.clone();
    for init_from in env.inits {
        let arm = init_from.arm();
        let mut tried: Vec<(f64, Value, ())> = Vec::new();
        for &lr in &sweep {
            let mut recipe = recipe.clone();
            recipe.training.learning_rate = lr;
            let mut runs = Vec::new();
            for &seed in &recipe.training.seeds {
                let (seed_run, predictions) = run_squad_seed(
                    &data,
                    &recipe,
                    init_from,
                    env.config,
                    seed,
                    env.device,
                    env.progress,
                )?;
                totals.train_examples += seed_run.train.examples;
                totals.train_seconds += seed_run.train.seconds;
                write_artifact(
                    run,
                    &seed_artifact_name(&seed_run, sweep.len() > 1),
                    "predictions",
                    predictions.len() as u64,
                    &json!({ "run": seed_run, "recipe": recipe, "predictions": predictions }),
                )?;
                runs.push(seed_run);
            }
            let refs: Vec<&SeedRun> = runs.iter().collect();
            tried.push((lr, summarize_arm(&refs, "f1"), ()));
        }
        let (lr, summary, ()) = tried.swap_remove(pick_learning_rate(&tried));
        task_json[arm] = with_sweep(summary, lr, &tried);
    }
    Ok(task_json)
}

fn tasks_json_len(summary: &Value) -> u64 {
    summary["tasks"].as_object().map_or(0, |t| t.len() as u64)
}

/// A stable number for a task name (seed derivation).
fn task_key(name: &str) -> u64 {
    let hash = blake3::hash(name.as_bytes());
    u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"))
}
