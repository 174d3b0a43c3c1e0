//! SQuAD v1.1 (BERT §4.2): windows over the paragraphs, start/end training, span selection
//! and the official EM / F1 ([`crate::squad`] holds the data side).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use dfdx::tensor::NoneTape;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::train::predict_by_length;
use super::{
    fine_tune, HostBatch, Init, SeedRun, SplitScores, SquadRecipe, TrainLog, TrainStats,
    TrainingRecipe,
};
use crate::config::BertConfig;
use crate::error::Result;
use crate::model::export::load_question_answering;
use crate::model::{init, BertDevice, BertForQuestionAnswering, Mode, TrainTape};
use crate::progress::Progress;
use crate::squad::{self, FeatureSizes, SpanLogits, SquadFeature};
use crate::tokenize::OffsetTokenizer;

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
    tokenizer: &dyn OffsetTokenizer,
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

/// Fine-tunes a span extractor on SQuAD features ([`fine_tune`] with the mean of the start
/// and end cross-entropy).
pub fn train_question_answering<D: BertDevice>(
    model: &mut BertForQuestionAnswering<D>,
    features: &[SquadFeature],
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
            let batch: Vec<&SquadFeature> = rows.iter().map(|&i| &features[i]).collect();
            let starts: Vec<usize> = batch.iter().map(|f| f.start_position).collect();
            let ends: Vec<usize> = batch.iter().map(|f| f.end_position).collect();
            let inputs = squad_batch(&batch).inputs(device);
            let output = model.forward::<TrainTape<D>>(&inputs, mode);
            Ok(model.loss(output, &starts, &ends))
        },
    )
}

/// Start and end logits of every feature, in order; dropout off.
pub fn predict_question_answering<D: BertDevice>(
    model: &BertForQuestionAnswering<D>,
    features: &[SquadFeature],
    device: &D,
) -> Vec<SpanLogits> {
    predict_by_length(
        features,
        |f| f.input_ids.len(),
        |rows| {
            let batch = squad_batch(rows);
            let result = model.forward::<NoneTape>(&batch.inputs(device), &mut Mode::Eval);
            let starts = result.start_logits.as_vec();
            let ends = result.end_logits.as_vec();
            (0..rows.len())
                .map(|r| {
                    let row = r * batch.seq_len..(r + 1) * batch.seq_len;
                    SpanLogits {
                        start_logits: starts[row.clone()].to_vec(),
                        end_logits: ends[row].to_vec(),
                    }
                })
                .collect()
        },
    )
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
    let log = TrainLog {
        task: "squad",
        arm: init_from.arm(),
        seed,
        writer: None,
    };
    let train = train_question_answering(
        &mut model,
        &data.train_features,
        &recipe.training,
        seed,
        device,
        progress,
        log,
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
