//! Fine-tuning building blocks on fixed inputs: pair truncation, `[CLS] A [SEP] B [SEP]`
//! features, padding, the recipe's step counts, subsampling and the seed summary.

use std::collections::BTreeMap;

use bertline::config::FinetuneConfig;
use bertline::finetune::{
    majority_class_accuracy, pick_learning_rate, seed_artifact_name, subsample, summarize_arm,
    truncate_pair_tails, ArmSummary, HostBatch, Recipe, SeedRun, SplitScores, SquadRecipe,
    TrainStats, TrainingRecipe,
};

#[test]
fn truncate_seq_pair_pops_the_longer_side() {
    let (mut a, mut b) = (vec![1, 2, 3, 4, 5], vec![6, 7]);
    truncate_pair_tails(&mut a, &mut b, 5);
    assert_eq!((a, b), (vec![1, 2, 3], vec![6, 7]));
    let (mut a, mut b) = (vec![1, 2, 3], vec![4, 5, 6, 7]);
    truncate_pair_tails(&mut a, &mut b, 4);
    // b (4) > a (3): pop b; then equal lengths 3/3: pop b; then a (3) > b (2): pop a.
    assert_eq!((a, b), (vec![1, 2], vec![4, 5]));
    let (mut a, mut b) = (vec![1], vec![2]);
    truncate_pair_tails(&mut a, &mut b, 10);
    assert_eq!((a, b), (vec![1], vec![2]));
}

#[test]
fn batches_pad_to_the_longest_row() {
    let rows: Vec<(Vec<u32>, Vec<u32>)> = vec![
        (vec![2, 10, 3], vec![0, 0, 0]),
        (vec![2, 11, 3, 12, 3], vec![0, 0, 0, 1, 1]),
    ];
    let batch = HostBatch::pad(rows.iter().map(|(i, s)| (i.as_slice(), s.as_slice())));
    assert_eq!((batch.batch, batch.seq_len), (2, 5));
    assert_eq!(batch.input_ids, [2, 10, 3, 0, 0, 2, 11, 3, 12, 3]);
    assert_eq!(batch.token_type_ids, [0, 0, 0, 0, 0, 0, 0, 0, 1, 1]);
    assert_eq!(batch.attention_mask, [1, 1, 1, 0, 0, 1, 1, 1, 1, 1]);
}

#[test]
fn recipe_applies_overrides_and_counts_steps() {
    let cfg: FinetuneConfig = toml::from_str(
        r#"
        learning_rate = 1e-4
        seeds = [1, 2]
        [overrides.cola]
        learning_rate = 3e-5
        num_train_epochs = 2.5
        seeds = [7]
        "#,
    )
    .unwrap();
    let sst2 = TrainingRecipe::for_task(&cfg, "sst2");
    assert_eq!((sst2.learning_rate, sst2.seeds.clone()), (1e-4, vec![1, 2]));
    let cola = TrainingRecipe::for_task(&cfg, "cola");
    assert_eq!(
        (
            cola.learning_rate,
            cola.num_train_epochs,
            cola.seeds.clone()
        ),
        (3e-5, 2.5, vec![7])
    );
    assert_eq!(cola.train_batch_size, 32);
    // int(8551 / 32 * 2.5) = int(668.05) = 668 steps, int(66.8) = 66 warmup.
    assert_eq!(cola.num_train_steps(8551), 668);
    assert_eq!(cola.num_warmup_steps(668), 66);
    assert_eq!(cola.num_train_steps(3), 1);
}

#[test]
fn subsample_is_seeded_and_keeps_file_order() {
    let rows: Vec<u32> = (0..100).collect();
    let a = subsample(&rows, 10, 5);
    assert_eq!(a.len(), 10);
    assert!(a.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(a, subsample(&rows, 10, 5));
    assert_ne!(a, subsample(&rows, 10, 6));
    assert_eq!(subsample(&rows, 0, 5), rows);
    assert_eq!(subsample(&rows, 500, 5), rows);
    assert_eq!(majority_class_accuracy(&[1, 0, 1, 1]), 0.75);
}

fn seed_run(seed: u64, f1: f64, accuracy: f64) -> SeedRun {
    SeedRun {
        task: "mrpc".into(),
        arm: "scratch".into(),
        seed,
        learning_rate: 3e-5,
        train_examples: 10,
        train: TrainStats::default(),
        dev: vec![SplitScores {
            split: "dev".into(),
            examples: 4,
            metrics: BTreeMap::from([("f1".into(), f1), ("accuracy".into(), accuracy)]),
        }],
        eval_examples_per_s: 1.0,
    }
}

#[test]
fn arm_summary_has_the_report_shape() {
    let runs = [
        seed_run(1, 0.8, 0.7),
        seed_run(2, 0.6, 0.5),
        seed_run(3, 0.7, 0.9),
    ];
    let refs: Vec<&SeedRun> = runs.iter().collect();
    let s = serde_json::to_value(summarize_arm(&refs, "f1")).unwrap();
    assert_eq!(s["scores"], serde_json::json!([0.8, 0.6, 0.7]));
    assert!((s["mean"].as_f64().unwrap() - 0.7).abs() < 1e-12);
    assert_eq!(s["median"].as_f64().unwrap(), 0.7);
    assert!((s["std"].as_f64().unwrap() - 0.1).abs() < 1e-12);
    assert!((s["all"]["accuracy"].as_f64().unwrap() - 0.7).abs() < 1e-12);
    assert_eq!(s["summary"]["accuracy"]["max"].as_f64().unwrap(), 0.9);
    assert_eq!(s["seeds"], serde_json::json!([1, 2, 3]));
}

/// A BERT WordPiece tokenizer over a fixed vocabulary (ids in list order): an HF directory
/// holding only `vocab.txt`, read as `finetune` reads one.
fn tokenizer(vocab: &[&str]) -> tokenizers::Tokenizer {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("vocab.txt"), vocab.join("\n")).unwrap();
    bertline::finetune::tokenizer_for_hf_dir(dir.path()).unwrap()
}

#[test]
fn features_are_cls_a_sep_b_sep_with_truncation() {
    use bertline::finetune::convert_examples_to_features;
    use bertline::tasks::{Example, Label};
    // ids: [PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3, [MASK] 4, the 5, cat 6, sat 7, ##s 8, dog 9, . 10
    let t = tokenizer(&[
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "##s", "dog", ".",
    ]);
    let example = |a: &str, b: Option<&str>| Example {
        id: "0".into(),
        line: 1,
        text_a: a.into(),
        text_b: b.map(String::from),
        label: Some(Label::Class(1)),
    };
    let rows = [
        example("The cats sat.", None),
        example("The cat sat.", Some("Dog!")),
        example("the cat sat the cat sat", Some("dog dog")),
    ];
    let f = convert_examples_to_features(&rows, &t, 8).unwrap();
    // "cats" -> cat ##s; "!" is unknown.
    assert_eq!(f[0].input_ids, [2, 5, 6, 8, 7, 10, 3]);
    assert_eq!(f[0].segment_ids, [0; 7]);
    assert_eq!(f[0].label, Some(Label::Class(1)));
    // 4 + 2 tokens ("!" is [UNK]) in 8 - 3 = 5 places: A, the longer, loses its ".".
    assert_eq!(f[1].input_ids, [2, 5, 6, 7, 3, 9, 1, 3]);
    assert_eq!(f[1].segment_ids, [0, 0, 0, 0, 0, 1, 1, 1]);
    // 6 + 2 tokens, 5 allowed: A keeps 3, B keeps 2.
    assert_eq!(f[2].input_ids, [2, 5, 6, 7, 3, 9, 9, 3]);
    assert_eq!(f[2].input_ids.len(), 8);
}

#[test]
fn learning_rate_sweep_comes_from_config_and_overrides() {
    let cfg: FinetuneConfig = toml::from_str(
        r#"
        learning_rate = 1e-4
        learning_rates = [1e-4, 3e-4]
        warmup_proportion = 0.1
        [overrides.cola]
        learning_rates = [2e-5]
        warmup_proportion = 0.2
        [overrides.mrpc]
        learning_rate = 5e-5
        learning_rates = []
        "#,
    )
    .unwrap();
    let sst2 = TrainingRecipe::for_task(&cfg, "sst2");
    assert_eq!(sst2.learning_rates, vec![1e-4, 3e-4]);
    assert_eq!((sst2.learning_rate, sst2.warmup_proportion), (1e-4, 0.1));
    let cola = TrainingRecipe::for_task(&cfg, "cola");
    assert_eq!(
        (cola.learning_rates.clone(), cola.learning_rate),
        (vec![2e-5], 2e-5)
    );
    assert_eq!(cola.warmup_proportion, 0.2);
    // An empty sweep falls back to the single learning rate.
    let mrpc = TrainingRecipe::for_task(&cfg, "mrpc");
    assert_eq!(
        (mrpc.learning_rates.clone(), mrpc.learning_rate),
        (vec![5e-5], 5e-5)
    );
}

#[test]
fn the_sweep_picks_the_best_mean_and_never_a_missing_one() {
    let tried = |means: &[Option<f64>]| -> Vec<(f64, ArmSummary, ())> {
        means
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let arm = ArmSummary {
                    mean: *m,
                    ..ArmSummary::default()
                };
                (i as f64, arm, ())
            })
            .collect()
    };
    assert_eq!(
        pick_learning_rate(&tried(&[Some(0.5), Some(0.7), Some(0.6)])),
        1
    );
    // Ties keep the first (smallest index) value.
    assert_eq!(pick_learning_rate(&tried(&[Some(0.7), Some(0.7)])), 0);
    // A run without a score (null mean) loses to any scored one.
    assert_eq!(pick_learning_rate(&tried(&[None, Some(0.1)])), 1);
    assert_eq!(pick_learning_rate(&tried(&[Some(0.1), None])), 0);
    assert_eq!(pick_learning_rate(&tried(&[Some(f64::NAN), Some(0.1)])), 1);
}

#[test]
fn sweep_runs_get_their_own_artifact_names() {
    let run = seed_run(2, 0.5, 0.5);
    assert_eq!(seed_artifact_name(&run, false), "mrpc/scratch-seed2.json");
    assert_eq!(
        seed_artifact_name(&run, true),
        "mrpc/scratch-lr3e-5-seed2.json"
    );
}

/// SQuAD runs with `[finetune.squad]`'s window and question caps, never `[finetune]`'s
/// sequence length and example caps, and its recipe says so; the training part (learning
/// rate, batch, epochs, seeds) is `[finetune]`'s with `[finetune.overrides.squad]`.
#[test]
fn squad_recipe_is_the_one_squad_runs_with() {
    let cfg: FinetuneConfig = toml::from_str(
        r#"
        learning_rate = 1e-4
        max_seq_length = 128
        max_train_examples = 1000
        max_eval_examples = 500
        [squad]
        max_seq_length = 384
        doc_stride = 128
        max_train_examples = 300
        [overrides.squad]
        num_train_epochs = 2.0
        "#,
    )
    .unwrap();
    let squad = SquadRecipe::for_finetune(&cfg);
    assert_eq!(
        (
            squad.max_seq_length,
            squad.doc_stride,
            squad.max_train_questions,
            squad.max_eval_questions
        ),
        (384, 128, 300, 0)
    );
    assert_eq!(
        (
            squad.training.learning_rate,
            squad.training.num_train_epochs
        ),
        (1e-4, 2.0)
    );
    let recorded = serde_json::to_value(&squad).unwrap();
    assert_eq!(recorded["max_seq_length"], 384);
    assert_eq!(recorded["max_train_questions"], 300);
    assert_eq!(recorded["learning_rate"], 1e-4);
    assert!(recorded.get("max_train_examples").is_none());
    let back: SquadRecipe = serde_json::from_value(recorded).unwrap();
    assert_eq!(back, squad);
    // The classification recipe keeps [finetune]'s values.
    let sst2 = Recipe::for_task(&cfg, "sst2");
    assert_eq!((sst2.max_seq_length, sst2.max_train_examples), (128, 1000));
}
