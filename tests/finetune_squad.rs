//! SQuAD through the fine-tuning code on real articles: gold-position logits recover the
//! gold answers through features, span selection and the official evaluation, and a tiny
//! model trains and predicts spans of the context.

use std::collections::HashMap;
use std::path::Path;

use bertline::config::{BertConfig, SquadConfig, VocabConfig};
use bertline::finetune::{
    load_squad_data, run_squad_seed, squad_predictions, Init, SquadRecipe, TrainingRecipe,
};
use bertline::progress::NoProgress;
use bertline::squad::{evaluate, load_squad, SpanLogits};
use bertline::tokenize::{train_wordpiece, WordPiece};
use dfdx::tensor::Cpu;

fn squad_config(max_train: usize, max_eval: usize) -> SquadConfig {
    SquadConfig {
        train_file: None,
        dev_file: Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/squad/dev-v1.1.json"),
        max_seq_length: 128,
        doc_stride: 64,
        max_query_length: 32,
        max_answer_length: 30,
        n_best_size: 20,
        max_train_examples: max_train,
        max_eval_examples: max_eval,
    }
}

/// Batch 16, one epoch, lr 1e-3, seed 1.
fn training() -> TrainingRecipe {
    TrainingRecipe {
        learning_rate: 1e-3,
        learning_rates: vec![1e-3],
        train_batch_size: 16,
        num_train_epochs: 1.0,
        warmup_proportion: 0.1,
        seeds: vec![1],
    }
}

/// A 4,000-token WordPiece vocabulary trained on the contexts and questions of the file.
fn tokenizer(cfg: &SquadConfig) -> WordPiece {
    let dataset = load_squad(&cfg.dev_file).unwrap();
    let mut lines = Vec::new();
    for p in dataset.data.iter().flat_map(|a| &a.paragraphs) {
        lines.push(p.context.clone());
        lines.extend(p.qas.iter().map(|q| q.question.clone()));
    }
    let vocab = VocabConfig {
        vocab_size: 4000,
        lowercase: true,
        min_frequency: 2,
        limit_alphabet: 300,
        max_words: bertline::config::MAX_WORDS,
    };
    train_wordpiece(&vocab, lines.iter().map(String::as_str), &cfg.dev_file).unwrap()
}

#[test]
fn gold_position_logits_recover_the_gold_answers() {
    let cfg = squad_config(10, 300);
    let wp = tokenizer(&cfg);
    let recipe = SquadRecipe::new(training(), &cfg);
    let data = load_squad_data(&cfg, &recipe, Path::to_path_buf, &wp).unwrap();
    assert_eq!(data.eval_examples.len(), 300);
    // 128-token windows over longer paragraphs: more windows than questions.
    assert!(data.eval_features.len() > data.eval_examples.len());
    let logits: Vec<SpanLogits> = data
        .eval_features
        .iter()
        .map(|f| {
            let mut start_logits = vec![0.0; f.input_ids.len()];
            let mut end_logits = vec![0.0; f.input_ids.len()];
            start_logits[f.start_position] = 10.0;
            end_logits[f.end_position] = 10.0;
            SpanLogits {
                start_logits,
                end_logits,
            }
        })
        .collect();
    let predictions = squad_predictions(&data, &logits, &recipe);
    assert_eq!(predictions.len(), 300);
    let map: HashMap<String, String> = predictions.into_iter().collect();
    let scores = evaluate(&data.eval_dataset, &map);
    eprintln!("oracle spans: {scores:?}");
    assert_eq!((scores.total, scores.answered), (300, 300));
    // The first answer's span, cut from the context by WordPiece offsets: exact up to
    // normalisation (100% on these 300; an answer starting or ending inside a WordPiece
    // token would miss).
    assert!(scores.exact_match >= 99.0, "{scores:?}");
    assert!(scores.f1 >= 99.0, "{scores:?}");
}

#[test]
fn tiny_model_trains_on_squad_and_answers_with_context_spans() {
    let cfg = squad_config(200, 50);
    let wp = tokenizer(&cfg);
    let recipe = SquadRecipe::new(training(), &cfg);
    let data = load_squad_data(&cfg, &recipe, Path::to_path_buf, &wp).unwrap();
    let config = BertConfig {
        vocab_size: 4000,
        hidden_size: 32,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        intermediate_size: 64,
        max_position_embeddings: 128,
        ..BertConfig::default()
    };
    let device = Cpu::seed_from_u64(1);
    let (run, predictions) = run_squad_seed(
        &data,
        &recipe,
        &Init::Scratch,
        &config,
        1,
        &device,
        &NoProgress,
    )
    .unwrap();
    assert_eq!(predictions.len(), 50);
    assert_eq!(run.train.steps, data.train_features.len() / 16);
    let contexts: HashMap<&str, &str> = data
        .eval_examples
        .iter()
        .map(|e| (e.qas_id.as_str(), e.context.text.as_str()))
        .collect();
    for (id, text) in &predictions {
        assert!(
            !text.is_empty() && contexts[id.as_str()].contains(text.as_str()),
            "{id}: {text}"
        );
    }
    let metrics = &run.dev[0].metrics;
    let (em, f1) = (metrics["exact_match"], metrics["f1"]);
    assert!(
        (0.0..=1.0).contains(&em) && em <= f1 && f1 <= 1.0,
        "{metrics:?}"
    );
}
