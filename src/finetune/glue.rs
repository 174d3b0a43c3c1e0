//! One sentence (pair) classification or regression task (GLUE, or a custom TSV/CSV): its
//! data, one seed's training and its dev and test predictions.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{
    convert_examples_to_features, predict_sequence_classifier, prediction_targets,
    predictions_from_logits, subsample, train_sequence_classifier, Init, InputFeatures, Recipe,
    SeedRun, SplitScores, TrainLog,
};
use crate::config::BertConfig;
use crate::error::Result;
use crate::metrics::MetricsWriter;
use crate::model::export::load_sequence_classification;
use crate::model::{init, BertDevice, BertForSequenceClassification};
use crate::progress::Progress;
use crate::tasks::{Example, Prediction, TaskSpec};
use crate::tokenize::OffsetTokenizer;

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
    tokenizer: &dyn OffsetTokenizer,
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
