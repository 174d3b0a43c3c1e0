//! Task text as pre-training text: a GLUE task's training file read as corpus input without
//! its labels (task-adaptive pre-training), and every dev or test file refused, by its GLUE
//! folder or by the fine-tuning tasks of the same config, with a one-line error naming it.

use std::path::{Path, PathBuf};

use bertline::corpus::{documents, read_corpus, TASK_ROWS_PER_DOCUMENT};
use bertline::progress::NoProgress;
use bertline::stage::{StageCtx, StageOptions};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

#[test]
fn sst2_train_rows_become_unlabelled_documents_of_eight() {
    let text = read_corpus(&repo("datasets/glue/SST-2/train.tsv")).unwrap();
    let docs = documents(&text);
    // 67,349 rows (header excluded), eight to a document.
    let rows: usize = docs.iter().map(Vec::len).sum();
    assert_eq!(rows, 67_349);
    assert_eq!(docs.len(), 67_349usize.div_ceil(TASK_ROWS_PER_DOCUMENT));
    assert!(docs[..docs.len() - 1]
        .iter()
        .all(|d| d.len() == TASK_ROWS_PER_DOCUMENT));
    // The first rows of the file, their text only: no header, no label column.
    assert_eq!(docs[0][0], "hide new secretions from the parental units");
    assert_eq!(docs[0][1], "contains no wit , only labored gags");
    assert!(!text.contains('\t'));
    assert!(!text.starts_with("sentence"));
}

#[test]
fn pair_task_rows_are_two_sentence_documents() {
    let text = read_corpus(&repo("datasets/glue/MRPC/train.tsv")).unwrap();
    let docs = documents(&text);
    assert_eq!(docs.len(), 3_668);
    assert!(docs.iter().all(|d| d.len() == 2));
    assert!(docs[0][0].starts_with("Amrozi accused his brother"));
    assert!(docs[0][1].starts_with("Referring to him as only"));
    // CoLA's train file has no header; its sentence is column 3.
    let cola = read_corpus(&repo("datasets/glue/CoLA/train.tsv")).unwrap();
    let first = documents(&cola)[0][0];
    assert_eq!(
        first,
        "Our friends won't buy this analysis, let alone the next one we propose."
    );
}

#[test]
fn dev_and_test_files_are_refused_by_their_glue_folder() {
    for (rel, task, split) in [
        ("datasets/glue/SST-2/dev.tsv", "sst2", "dev"),
        ("datasets/glue/SST-2/test.tsv", "sst2", "test"),
        ("datasets/glue/STS-B/dev.tsv", "stsb", "dev"),
        ("datasets/glue/CoLA/test.tsv", "cola", "test"),
    ] {
        let path = repo(rel);
        let err = read_corpus(&path).unwrap_err().to_string();
        assert!(
            err.contains(&path.display().to_string())
                && err.contains(&format!("task `{task}`'s {split} split"))
                && err.contains("remove it from corpus.input")
                && !err.contains('\n'),
            "{rel}: {err}"
        );
    }
}

fn project(dir: &Path, corpus: &[PathBuf], extra: &str) -> PathBuf {
    let inputs: Vec<String> = corpus.iter().map(|p| format!("{p:?}")).collect();
    let text = format!(
        r#"
[run]
dir = "run"
[corpus]
input = [{inputs}]
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
vocab_size = 1024
hidden_size = 32
num_hidden_layers = 1
num_attention_heads = 2
intermediate_size = 64
max_position_embeddings = 64
[pretrain]
train_batch_size = 8
learning_rate = 1e-3
num_train_steps = 10
num_warmup_steps = 1
[finetune]
glue_dir = {glue:?}
{extra}
"#,
        inputs = inputs.join(", "),
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
fn vocab_stage_trains_on_task_text_and_refuses_a_dev_file() {
    let tmp = tempfile::tempdir().unwrap();
    let alice = repo("datasets/pretrain/gutenberg_pg11.txt");
    let sst2_train = repo("datasets/glue/SST-2/train.tsv");
    // Train text is accepted, and its words make it into the vocabulary.
    let ok = project(
        tmp.path(),
        &[alice.clone(), sst2_train],
        "tasks = [\"sst2\"]",
    );
    let outcome = bertline::tokenize::run_vocab(&open(&ok), &NoProgress).unwrap();
    let vocab = std::fs::read_to_string(tmp.path().join("run/vocab/vocab.txt")).unwrap();
    assert!(
        vocab.lines().any(|t| t == "film"),
        "SST-2's most common noun"
    );
    assert!(outcome.record().metrics["input_lines"].as_u64().unwrap() > 67_349);

    // The dev file is refused before anything is written, naming the file.
    let tmp = tempfile::tempdir().unwrap();
    let dev = repo("datasets/glue/SST-2/dev.tsv");
    let bad = project(tmp.path(), &[alice, dev.clone()], "tasks = [\"sst2\"]");
    let err = bertline::tokenize::run_vocab(&open(&bad), &NoProgress)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&dev.display().to_string()) && err.contains("dev split"),
        "{err}"
    );
    assert!(!tmp.path().join("run/vocab/vocab.txt").exists());
}

#[test]
fn a_custom_tasks_dev_file_is_refused_wherever_it_lives() {
    // A user's own task whose dev file sits outside any GLUE folder, listed by mistake as
    // corpus input: recognised through [finetune.custom.NAME].
    let tmp = tempfile::tempdir().unwrap();
    let dev = tmp.path().join("reviews-dev.tsv");
    std::fs::copy(repo("datasets/glue/SST-2/dev.tsv"), &dev).unwrap();
    let train = tmp.path().join("reviews-train.tsv");
    std::fs::copy(repo("datasets/glue/SST-2/dev.tsv"), &train).unwrap();
    let extra = format!(
        r#"tasks = ["reviews"]
[finetune.custom.reviews]
train = {train:?}
dev = {dev:?}
text_a = "sentence"
label = "label"
labels = ["0", "1"]
"#
    );
    let config = project(
        tmp.path(),
        &[repo("datasets/pretrain/gutenberg_pg11.txt"), dev.clone()],
        &extra,
    );
    let err = bertline::tokenize::run_vocab(&open(&config), &NoProgress)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("reviews-dev.tsv")
            && err.contains("task `reviews`'s dev split")
            && !err.contains('\n'),
        "{err}"
    );
}

#[test]
fn the_shipped_tapt_profile_loads_and_lists_four_task_train_files() {
    let loaded =
        bertline::config::load_config(&repo("pipeline.toml"), "tapt").expect("tapt profile loads");
    let files = bertline::stage::corpus_files(&loaded).unwrap();
    let tsv: Vec<_> = files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "tsv"))
        .collect();
    assert_eq!(tsv.len(), 4, "{files:?}");
    assert!(tsv.iter().all(|f| f.ends_with("train.tsv")));
}
