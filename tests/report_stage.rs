//! The `report` stage through the stage framework: it records report.md and report.html
//! with every artifact they describe as inputs, skips while nothing changed, and makes a
//! new report when an upstream stage is rerun.

use std::path::Path;

use bertline::manifest::{Manifest, StageRecord};
use bertline::report::{self, REPORT_KIND};
use bertline::stage::{StageCtx, StageOptions};

const PIPELINE_TOML: &str = r#"
[run]
dir = "run"
[corpus]
input = ["corpus.txt"]
[vocab]
vocab_size = 8192
[pairs]
max_seq_length = 128
short_seq_prob = 0.1
dupe_factor = 5
[mask]
masked_lm_prob = 0.15
max_predictions_per_seq = 20
[model]
vocab_size = 8192
hidden_size = 128
num_hidden_layers = 2
num_attention_heads = 2
intermediate_size = 512
[pretrain]
train_batch_size = 32
learning_rate = 1e-3
num_train_steps = 2000
num_warmup_steps = 200
[report]
title = "BERT-Tiny on the fixture run"
"#;

fn fixture_records() -> Vec<StageRecord> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/report");
    serde_json::from_str(&std::fs::read_to_string(dir.join("stages.json")).unwrap()).unwrap()
}

/// Commits `record`, writing `log` as its metrics artifact when it has one.
fn commit(manifest: &Manifest, mut record: StageRecord, log: &[u8]) {
    if let Some(a) = record.artifacts.iter_mut().find(|a| a.kind == "metrics") {
        let path = manifest.run_dir().join(&a.path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, log).unwrap();
        a.blake3 = blake3::hash(log).to_hex().to_string();
        a.bytes = log.len() as u64;
    }
    manifest.commit(&record).unwrap();
}

fn open(config: &Path, force: bool) -> StageCtx {
    StageCtx::open(StageOptions {
        config: config.to_path_buf(),
        profile: "default".into(),
        force,
        verify: false,
    })
    .unwrap()
}

/// A run whose manifest holds the fixture's records, and the stage context over it. Each
/// test keeps this one context: sled releases its lock a moment after a drop, so reopening
/// at once in the same process can find the manifest still "in use".
fn setup() -> (tempfile::TempDir, StageCtx) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pipeline.toml");
    std::fs::write(&config, PIPELINE_TOML).unwrap();
    let ctx = open(&config, false);
    let log = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/report/pretrain-metrics.jsonl"),
    )
    .unwrap();
    for record in fixture_records() {
        commit(&ctx.manifest, record, &log);
    }
    (dir, ctx)
}

#[test]
fn report_stage_records_its_files_with_the_artifacts_it_describes() {
    let (dir, ctx) = setup();
    let run = report::run(&ctx).unwrap();
    assert!(!run.outcome.skipped());
    assert_eq!(run.files.html, dir.path().join("run/report/report.html"));
    let html = std::fs::read_to_string(&run.files.html).unwrap();
    assert!(html.contains("<h1>BERT-Tiny on the fixture run</h1>"));
    assert!(std::fs::read_to_string(&run.files.markdown)
        .unwrap()
        .starts_with("# BERT-Tiny on the fixture run\n"));

    let record = ctx.manifest.stage("report").unwrap().unwrap();
    let ids: Vec<&str> = record.artifacts.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, ["report/report.md", "report/report.html"]);
    assert!(record.artifacts.iter().all(|a| a.kind == REPORT_KIND));
    // Its inputs: every stage it describes, as the digest of all of that stage's artifacts.
    let described: Vec<bertline::manifest::InputRef> = fixture_records()
        .iter()
        .map(|r| ctx.manifest.stage(&r.stage).unwrap().unwrap())
        .map(|r| bertline::stage::upstream_input(&r))
        .collect();
    assert_eq!(described.len(), 5);
    assert_eq!(record.inputs, described);
    let ids: Vec<String> = described.iter().map(|i| i.id.clone()).collect();
    assert_eq!(record.artifacts[1].inputs, ids);
    assert_eq!(record.metrics["artifacts_described"], 30);
    assert_eq!(
        record.metrics["stages_missing"].as_array().unwrap().len(),
        0
    );
    assert_eq!(record.metrics["headline"]["pre-training loss"], "3.9730");
    // The report describes the other stages, never itself.
    assert!(!run.data.stages.iter().any(|s| s.name == "report"));
}

#[test]
fn report_stage_skips_until_an_upstream_artifact_changes() {
    let (_dir, mut ctx) = setup();
    assert!(!report::run(&ctx).unwrap().outcome.skipped());
    assert!(report::run(&ctx).unwrap().outcome.skipped());
    let first = ctx.manifest.stage("report").unwrap().unwrap();
    let mut pretrain = fixture_records()
        .into_iter()
        .find(|r| r.stage == "pretrain")
        .unwrap();
    pretrain.finished_at += 3600.0;
    commit(
        &ctx.manifest,
        pretrain,
        b"{\"step\": 3000, \"loss\": 3.125, \"mlm_accuracy\": 0.33}\n",
    );
    let run = report::run(&ctx).unwrap();
    assert!(!run.outcome.skipped());
    let second = run.outcome.record();
    assert_ne!(first.fingerprint, second.fingerprint);
    let md = std::fs::read_to_string(&run.files.markdown).unwrap();
    assert!(md.contains("| pre-training loss | 3.1250 |"), "{md}");
    // The manifest's history tells the two reports apart: same config, the fingerprints
    // (over config and inputs) of the two runs.
    let reports: Vec<_> = ctx
        .manifest
        .history()
        .unwrap()
        .into_iter()
        .filter(|r| r.stage == "report")
        .collect();
    assert_eq!(reports.len(), 2);
    assert_eq!(reports[0].config_hash, reports[1].config_hash);
    assert_eq!(
        [&reports[0].fingerprint, &reports[1].fingerprint],
        [&first.fingerprint, &second.fingerprint]
    );
    assert_eq!(reports[1].input_count, second.inputs.len());
    assert!(report::run(&ctx).unwrap().outcome.skipped());
    // --force reruns even when nothing changed.
    ctx.options.force = true;
    assert!(!report::run(&ctx).unwrap().outcome.skipped());
}
