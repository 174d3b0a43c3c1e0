//! The `finetune` stage end to end on a temporary run: vocab stage, then WNLI fine-tuned
//! from scratch over two seeds, with its artifacts, GLUE submission and freshness; and a
//! task whose data is missing failing before any training.

use std::path::{Path, PathBuf};

use bertline::finetune;
use bertline::progress::NoProgress;
use bertline::stage::{StageCtx, StageOptions};
use bertline::tokenize::run_vocab;

fn repo(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(rel)
        .display()
        .to_string()
}

fn write_config(dir: &Path, tasks: &str) -> PathBuf {
    let text = format!(
        r#"
[run]
dir = "run"
random_seed = 12345
[corpus]
input = ["{corpus}"]
[vocab]
vocab_size = 1024
[pairs]
max_seq_length = 64
short_seq_prob = 0.1
dupe_factor = 1
[mask]
masked_lm_prob = 0.15
max_predictions_per_seq = 10
[model]
max_position_embeddings = 64
vocab_size = 1024
hidden_size = 32
num_hidden_layers = 1
num_attention_heads = 2
intermediate_size = 64
[pretrain]
train_batch_size = 8
learning_rate = 1e-3
num_train_steps = 10
num_warmup_steps = 1
[finetune]
tasks = {tasks}
glue_dir = "{glue}"
init = "scratch"
seeds = [1, 2]
learning_rate = 1e-3
num_train_epochs = 1.0
max_seq_length = 64
max_train_examples = 200
"#,
        corpus = repo("datasets/pretrain/gutenberg_pg11.txt"),
        glue = repo("datasets/glue"),
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn open(config: &Path) -> StageCtx {
    StageCtx::open(StageOptions {
        config: config.to_path_buf(),
        profile: "default".into(),
        force: false,
        verify: false,
    })
    .unwrap()
}

#[test]
fn wnli_from_scratch_writes_scores_predictions_and_submission() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), r#"["wnli"]"#);
    let ctx = open(&config);
    run_vocab(&ctx, &NoProgress).unwrap();
    let outcome = finetune::run(&ctx, &NoProgress).unwrap();
    assert!(!outcome.skipped());
    let record = outcome.record().clone();
    let wnli = &record.metrics["tasks"]["wnli"];
    assert_eq!(wnli["metric"], "accuracy");
    assert_eq!(wnli["train_examples"], 200);
    assert_eq!(wnli["train_rows"], 635);
    let scores = wnli["scratch"]["scores"].as_array().unwrap();
    assert_eq!(scores.len(), 2);
    for s in scores {
        // 71 dev rows: every accuracy is a multiple of 1/71.
        let correct = s.as_f64().unwrap() * 71.0;
        assert!((correct - correct.round()).abs() < 1e-9, "{s}");
    }
    assert!(wnli.get("pretrained").is_none());

    let ids: Vec<&str> = record.artifacts.iter().map(|a| a.id.as_str()).collect();
    for id in [
        "finetune/wnli/scratch-seed1.json",
        "finetune/wnli/scratch-seed2.json",
        "finetune/submission/scratch/WNLI.tsv",
        "finetune/train-log.jsonl",
        "finetune/results.json",
    ] {
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
    }
    let stage_dir = ctx.run_dir().join("finetune");
    let submission =
        std::fs::read_to_string(stage_dir.join("submission/scratch/WNLI.tsv")).unwrap();
    assert_eq!(submission.lines().count(), 1 + 146);
    assert!(submission.starts_with("index\tprediction\n0\t"));
    let seed1: serde_json::Value =
        serde_json::from_slice(&std::fs::read(stage_dir.join("wnli/scratch-seed1.json")).unwrap())
            .unwrap();
    assert_eq!(seed1["dev"][0]["predictions"].as_array().unwrap().len(), 71);
    assert_eq!(seed1["run"]["dev"][0]["metrics"]["accuracy"], scores[0]);
    // int(200 / 32 * 1.0) = 6 steps per seed, one log line each.
    assert_eq!(seed1["run"]["train"]["steps"], 6);
    let log = std::fs::read_to_string(stage_dir.join("train-log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 12);

    // results.json is the stage's FinetuneSummary, and the report reads that type back.
    let summary: bertline::finetune::FinetuneSummary =
        serde_json::from_value(record.metrics.clone()).unwrap();
    assert_eq!(serde_json::to_value(&summary).unwrap(), record.metrics);
    let tasks = bertline::report::parse_finetune(&record.metrics);
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].metric.as_deref(), Some("accuracy"));
    let scratch = tasks[0].scratch.as_ref().unwrap();
    assert_eq!(
        serde_json::json!(scratch.scores),
        wnli["scratch"]["scores"].clone()
    );
    assert_eq!(scratch.learning_rate, Some(1e-3));
    assert!(tasks[0].pretrained.is_none());

    // Unchanged config and inputs: the stage is fresh and skipped.
    assert!(finetune::run(&ctx, &NoProgress).unwrap().skipped());
}

#[test]
fn missing_task_data_fails_before_training() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), r#"["wnli", "mnli"]"#);
    let ctx = open(&config);
    let err = finetune::run(&ctx, &NoProgress).unwrap_err().to_string();
    assert!(
        err.contains("MNLI/train.tsv") && err.contains("not found"),
        "{err}"
    );
}

#[test]
fn hf_directory_init_runs_pretrained_and_scratch_arms() {
    use bertline::finetune::{new_classifier, tokenizer_for_hf_dir, Init};
    use bertline::model::export::save_pretraining;
    use bertline::model::{init, BertForPreTraining, HfParams};
    use bertline::tokenize::OffsetTokenizer;
    use dfdx::tensor::Cpu;
    use rand::SeedableRng;

    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("hf-bert");
    let config_path = write_config(dir.path(), r#"["wnli"]"#);
    let text = std::fs::read_to_string(&config_path)
        .unwrap()
        .replace(
            "init = \"scratch\"",
            &format!("init = \"{}\"\ncompare_scratch = true", hf.display()),
        )
        .replace("seeds = [1, 2]", "seeds = [3]");
    std::fs::write(&config_path, text).unwrap();
    let ctx = open(&config_path);
    run_vocab(&ctx, &NoProgress).unwrap();

    // An HF-format directory: config.json + model.safetensors + vocab.txt.
    let (wp, _) = bertline::tokenize::load_stage_vocab(&ctx).unwrap();
    std::fs::create_dir_all(&hf).unwrap();
    wp.write_vocab_txt(&hf.join("vocab.txt")).unwrap();
    let config = ctx.config().model.clone();
    let device = Cpu::seed_from_u64(9);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let pretrained = BertForPreTraining::new(&config, &mut init(&config, &device, &mut rng));
    save_pretraining(&pretrained, &config, &hf).unwrap();

    // The vocab.txt tokenizer agrees with the run's tokenizer.json.
    let from_vocab = tokenizer_for_hf_dir(&hf).unwrap();
    let sentence = "The drain is clogged with hair. It has to be cleaned.";
    assert_eq!(
        from_vocab.tokenize_with_offsets(sentence).unwrap(),
        wp.tokenize_with_offsets(sentence).unwrap()
    );
    // The classifier's encoder is the checkpoint's, its head is new.
    let classifier = new_classifier(
        &Init::Pretrained {
            dir: hf.clone(),
            dropout: None,
        },
        &config,
        2,
        &device,
        1,
    )
    .unwrap();
    let saved = pretrained.named_parameters();
    let loaded = classifier.named_parameters();
    let find = |params: &[(String, bertline::model::ParamRef<'_, Cpu>)], name: &str| {
        params.iter().find(|(n, _)| n == name).unwrap().1.to_vec()
    };
    for name in [
        "bert.embeddings.word_embeddings.weight",
        "bert.encoder.layer.0.attention.self.query.weight",
        "bert.pooler.dense.bias",
    ] {
        assert_eq!(find(&saved, name), find(&loaded, name), "{name}");
    }

    let outcome = finetune::run(&ctx, &NoProgress).unwrap();
    let metrics = &outcome.record().metrics;
    assert_eq!(
        metrics["arms"],
        serde_json::json!(["pretrained", "scratch"])
    );
    for arm in ["pretrained", "scratch"] {
        assert_eq!(
            metrics["tasks"]["wnli"][arm]["scores"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        let file = ctx
            .run_dir()
            .join(format!("finetune/submission/{arm}/WNLI.tsv"));
        assert!(file.is_file(), "{}", file.display());
    }

    // The directory brings its own vocabulary: a fresh run with no vocab stage fine-tunes too.
    let fresh_config = dir.path().join("fresh.toml");
    let text = std::fs::read_to_string(&config_path)
        .unwrap()
        .replace("dir = \"run\"", "dir = \"fresh-run\"");
    std::fs::write(&fresh_config, text).unwrap();
    let fresh = open(&fresh_config);
    assert!(bertline::stage::Stage::Finetune
        .upstream(fresh.config())
        .is_empty());
    let outcome = finetune::run(&fresh, &NoProgress).unwrap();
    assert_eq!(
        outcome.record().metrics["arms"],
        serde_json::json!(["pretrained", "scratch"])
    );
    assert!(!fresh.run_dir().join("vocab").exists());
}

/// SQuAD runs with `[finetune.squad]`'s windows and question caps, and `results.json`
/// records that recipe (not `[finetune]`'s 64 tokens and 200 examples).
#[test]
fn squad_results_record_the_recipe_squad_ran_with() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), r#"["squad"]"#);
    let text = std::fs::read_to_string(&config).unwrap()
        + &format!(
            r#"
[finetune.squad]
dev_file = "{dev}"
max_seq_length = 48
doc_stride = 24
max_query_length = 16
max_train_examples = 16
max_eval_examples = 8
[finetune.overrides.squad]
seeds = [1]
"#,
            dev = repo("datasets/squad/dev-v1.1.json")
        );
    std::fs::write(&config, text).unwrap();
    let ctx = open(&config);
    run_vocab(&ctx, &NoProgress).unwrap();
    let outcome = finetune::run(&ctx, &NoProgress).unwrap();
    let results: serde_json::Value = serde_json::from_slice(
        &std::fs::read(ctx.run_dir().join("finetune/results.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(results, outcome.record().metrics);
    let squad = &results["tasks"]["squad"];
    let recipe = &squad["recipe"];
    assert_eq!(recipe["max_seq_length"], 48);
    assert_eq!(recipe["doc_stride"], 24);
    assert_eq!(recipe["max_query_length"], 16);
    assert_eq!(
        (
            &recipe["max_train_questions"],
            &recipe["max_eval_questions"]
        ),
        (&serde_json::json!(16), &serde_json::json!(8))
    );
    assert!(recipe.get("max_train_examples").is_none(), "{recipe}");
    assert_eq!(recipe["seeds"], serde_json::json!([1]));
    assert_eq!(
        (&squad["train_questions"], &squad["eval_questions"]),
        (&serde_json::json!(16), &serde_json::json!(8))
    );
    // 48-token windows: more windows than questions.
    assert!(squad["train_examples"].as_u64().unwrap() > 16, "{squad}");
    let seed1: serde_json::Value = serde_json::from_slice(
        &std::fs::read(ctx.run_dir().join("finetune/squad/scratch-seed1.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(seed1["recipe"], *recipe);
}
