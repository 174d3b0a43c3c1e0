//! The report rendered from a recorded run: a BERT-Tiny-sized pipeline whose stage records
//! (tests/fixtures/report/stages.json) and pre-training log (pretrain-metrics.jsonl) are
//! committed into a fresh manifest, then read back the way the report stage reads them.

use std::path::{Path, PathBuf};

use bertline::manifest::{Manifest, StageRecord};
use bertline::pretrain::{fill_tokens_seen, PretrainLogRow};
use bertline::report::{
    pretrain_charts, render_html, render_markdown, write_report, PretrainCurves, ReportData,
    MISSING, PIPELINE_STAGES,
};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/report")
}

fn fixture_records() -> Vec<StageRecord> {
    let text = std::fs::read_to_string(fixture_dir().join("stages.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Writes the pre-training log into the run directory and fixes its recorded hash and size.
fn place_metrics_log(run: &Path, record: &mut StageRecord, log: &[u8]) {
    let artifact = record
        .artifacts
        .iter_mut()
        .find(|a| a.kind == "metrics")
        .unwrap();
    let path = run.join(&artifact.path);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, log).unwrap();
    artifact.blake3 = blake3::hash(log).to_hex().to_string();
    artifact.bytes = log.len() as u64;
}

/// A manifest holding the fixture's records of `stages`, committed in pipeline order.
fn recorded_run(run: &Path, stages: &[&str]) -> Manifest {
    let manifest = Manifest::open(run).unwrap();
    let log = std::fs::read(fixture_dir().join("pretrain-metrics.jsonl")).unwrap();
    for mut record in fixture_records() {
        if !stages.contains(&record.stage.as_str()) {
            continue;
        }
        if record.stage == "pretrain" {
            place_metrics_log(run, &mut record, &log);
        }
        manifest.commit(&record).unwrap();
    }
    manifest
}

fn full_report() -> (tempfile::TempDir, ReportData) {
    let dir = tempfile::tempdir().unwrap();
    let manifest = recorded_run(dir.path(), &PIPELINE_STAGES);
    let data = ReportData::from_manifest(&manifest).unwrap();
    (dir, data)
}

/// The Markdown table row whose first cell is `first`.
fn md_row<'a>(markdown: &'a str, first: &str) -> &'a str {
    let prefix = format!("| {first} |");
    markdown
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no row `{first}` in:\n{markdown}"))
}

/// The fixture log is in the pretrain stage's own format: every line reads as a
/// `PretrainLogRow` and writes back to the same object (no key the writer does not know).
#[test]
fn fixture_log_is_written_in_the_pretrain_log_row_format() {
    let text = std::fs::read_to_string(fixture_dir().join("pretrain-metrics.jsonl")).unwrap();
    for line in text.lines() {
        let row = PretrainLogRow::parse(line).unwrap_or_else(|| panic!("not a row: {line}"));
        let original: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(serde_json::to_value(&row).unwrap(), original, "{line}");
    }
}

/// The committed GPU checkpoint's log (written before the log row was one type: `lr`, no
/// `tokens_seen`) draws every chart, tokens seen from its profile's batch size.
#[test]
fn committed_wiki_gpu_log_draws_every_chart() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(repo.join("checkpoints/wiki-gpu/metrics.jsonl")).unwrap();
    let (mut curves, bad) = PretrainCurves::parse(&text);
    assert_eq!(bad, 0);
    assert_eq!((curves.train.len(), curves.eval.len()), (45, 3));
    let loaded = bertline::config::load_config(&repo.join("pipeline.toml"), "wiki-gpu").unwrap();
    fill_tokens_seen(&mut curves.train, &loaded.config.pretrain);
    let last = curves.train.last().unwrap();
    assert!(
        last.learning_rate.is_some(),
        "`lr` is read as learning_rate"
    );
    assert_eq!(last.tokens_seen, Some(last.step as u64 * 256 * 128));
    for chart in pretrain_charts(&curves) {
        assert!(!chart.is_empty(), "chart `{}` has no data", chart.title);
    }
    // The eval shards' MLM accuracy at step 3,750 (checkpoints/wiki-gpu/README.md: 21.8%).
    assert_eq!(
        curves
            .eval_series(|r| Some(r.step as f64), |r| r.mlm_accuracy)
            .last(),
        Some(&(3750.0, 0.21793148973289012))
    );
}

/// Asserts the Markdown row whose first cell is `first` reads `| first | rest |`.
fn assert_row(markdown: &str, first: &str, rest: &str) {
    assert_eq!(md_row(markdown, first), format!("| {first} | {rest} |"));
}

#[test]
fn html_is_self_contained_and_names_every_artifact() {
    let (_dir, data) = full_report();
    let html = render_html(&data).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    for remote in [
        "src=\"http",
        "href=\"http",
        "src='http",
        "href='http",
        "url(http",
    ] {
        assert!(!html.contains(remote), "external reference `{remote}`");
    }
    assert!(!html.contains("<script"));
    assert!(!html.contains("<link"));
    assert!(!html.contains("<img"));
    // Seven pre-training charts and the fine-tuning chart, all drawn.
    assert_eq!(html.matches("<svg").count(), 8);
    assert!(!html.contains("<?xml"));
    let ids: Vec<String> = fixture_records()
        .iter()
        .flat_map(|r| r.artifacts.iter().map(|a| a.id.clone()))
        .collect();
    assert_eq!(ids.len(), 30);
    for id in &ids {
        assert!(html.contains(id.as_str()), "artifact {id} not named");
    }
    // One input per stage described, the digest of its artifacts.
    let stages: Vec<String> = data.inputs().into_iter().map(|i| i.id).collect();
    assert_eq!(
        stages,
        [
            "stage:vocab",
            "stage:pairs",
            "stage:mask",
            "stage:pretrain",
            "stage:finetune"
        ]
    );
    assert!(data.warnings.is_empty(), "{:?}", data.warnings);
    assert!(
        !html.contains("missing</td>"),
        "a complete run has nothing missing"
    );
}

#[test]
fn markdown_lineage_and_data_tables_have_the_recorded_values() {
    let (_dir, data) = full_report();
    let md = render_markdown(&data);
    assert!(md.contains("model L=2, H=128, A=2"));
    assert!(md.contains("5 of 5 stages recorded"));
    let mask = md_row(&md, "mask");
    assert!(mask.starts_with("| mask | ok | 2026-11-27 "), "{mask}");
    assert!(mask.contains("| 2m 09s | 4 | 87751 |"), "{mask}");
    assert!(mask.contains("| 667 instances/s |"), "{mask}");
    let vocab = md_row(&md, "vocab");
    // vocab has no `_per_s` metric: rows written per second of wall time.
    assert!(vocab.contains("| 196 rows/s |"), "{vocab}");
    assert_row(&md, "non-pad tokens per instance", "109.8 | 111.0");
    assert_row(&md, "random-next fraction", "0.560 | 0.560");
    assert_row(&md, "masked positions replaced by [MASK]", "0.800 | 0.800");
    assert!(md.contains("| pretrain/metrics.jsonl | metrics |"));
    assert!(md.contains("| learning_rate | 0.0001 |"));
    assert!(md.contains("| model.hidden_size | 128 |"));
}

#[test]
fn markdown_glue_table_sets_seeds_beside_published_scores() {
    let (_dir, data) = full_report();
    let md = render_markdown(&data);
    assert_eq!(
        md_row(&md, "SST-2"),
        "| SST-2 | accuracy | 3 | 81.8 ± 0.5 | 81.8 | 78.5 ± 0.5 | 78.6 | accuracy 81.8 \
         | 83.2 (acc.) | 85.9 (acc.) | 93.5 (acc.) | 92.7 (acc.) |"
    );
    assert_eq!(
        md_row(&md, "MRPC"),
        "| MRPC | f1 | 3 | 80.8 ± 0.6 | 81.1 | 81.2 ± 0.0 | 81.2 | accuracy 69.6, f1 80.8 \
         | 81.1/71.1 (F1/acc.) | 81.1/71.8 (F1/acc.) | 88.9 (F1) | 86.7 (acc.) |"
    );
    let squad = md_row(&md, "SQuAD v1.1");
    assert!(
        squad.starts_with(
            "| SQuAD v1.1 | f1 | 1 | 12.4 | 12.4 | 4.1 | 4.1 | exact_match 8.2, f1 12.4 |"
        ),
        "{squad}"
    );
    assert!(
        squad.ends_with("| – | – | – | 80.8/88.5 (EM/F1) |"),
        "{squad}"
    );
    // Standard tasks this run skipped are "not run", not zeros.
    let mnli = md_row(&md, "MNLI-m");
    assert!(mnli.starts_with("| MNLI-m | not run | not run |"), "{mnli}");
    assert!(mnli.contains("| 84.6/83.4 (m/mm acc.) |"), "{mnli}");
    assert!(md.contains("BERT-Tiny (test): google-research/bert README"));
    assert!(md.contains("BERT-Base (test): Devlin et al. 2018, Table 1 (GLUE test server)"));
    // Headline numbers come from the log's last rows.
    assert_row(&md, "pre-training loss", "3.9730");
    assert_row(&md, "held-out perplexity", "33.43");
}

#[test]
fn absent_stages_print_missing_never_zero() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = recorded_run(dir.path(), &["vocab", "pairs"]);
    let data = ReportData::from_manifest(&manifest).unwrap();
    assert!(data.pretrain.is_none() && data.finetune.is_none());
    let md = render_markdown(&data);
    assert!(md.contains("2 of 5 stages recorded"));
    for stage in ["mask", "pretrain", "finetune"] {
        let row = md_row(&md, stage);
        assert!(
            row.starts_with(&format!("| {stage} | missing | missing |")),
            "{row}"
        );
        assert!(!row.contains(" 0 "), "{row}");
    }
    assert_eq!(
        md_row(&md, "random-next fraction"),
        format!("| random-next fraction | {MISSING} | 0.560 |")
    );
    assert_eq!(md_row(&md, "MLM accuracy"), "| MLM accuracy | missing |");
    assert!(md.contains("The pretrain stage is missing"));
    assert!(md.contains("The finetune stage is missing"));
    assert!(md_row(&md, "SST-2").starts_with("| SST-2 | missing | missing | missing |"));
    let html = render_html(&data).unwrap();
    assert!(html.contains("<td class=\"missing\">missing</td>"));
    assert!(!html.contains("<svg"), "no data, no plots");
    // The report only describes what exists.
    let inputs: Vec<String> = data.inputs().into_iter().map(|i| i.id).collect();
    assert_eq!(inputs, ["stage:vocab", "stage:pairs"]);
}

/// The same with what stages record now: one input per upstream stage, the digest of its
/// artifacts (`bertline::stage::upstream_input`).
#[test]
fn a_changed_upstream_stage_marks_its_consumers_stale() {
    use bertline::stage::upstream_input;
    let dir = tempfile::tempdir().unwrap();
    let manifest = recorded_run(dir.path(), &["vocab", "pairs", "mask"]);
    let current = |stage: &str| manifest.stage(stage).unwrap().unwrap();
    let mut mask = current("mask");
    mask.inputs = vec![
        upstream_input(&current("vocab")),
        upstream_input(&current("pairs")),
    ];
    mask.finished_at += 1.0;
    manifest.commit(&mask).unwrap();
    let data = ReportData::from_manifest(&manifest).unwrap();
    let entry = data.stages.iter().find(|s| s.name == "mask").unwrap();
    assert!(entry.stale_inputs.is_empty(), "{:?}", entry.stale_inputs);
    assert!(render_markdown(&data).contains("Inputs: the outputs of vocab, pairs"));

    let mut pairs = current("pairs");
    pairs.artifacts[0].blake3 = "f".repeat(64);
    pairs.finished_at += 3600.0;
    manifest.commit(&pairs).unwrap();
    let data = ReportData::from_manifest(&manifest).unwrap();
    let entry = data.stages.iter().find(|s| s.name == "mask").unwrap();
    assert_eq!(entry.status(), "stale");
    assert_eq!(entry.stale_inputs, ["stage:pairs"]);
    assert!(render_markdown(&data).contains("mask is stale: 1 of its inputs changed upstream"));
}

#[test]
fn a_replaced_upstream_artifact_marks_its_consumers_stale() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = recorded_run(dir.path(), &["vocab", "pairs", "mask"]);
    let mut pairs = fixture_records()
        .into_iter()
        .find(|r| r.stage == "pairs")
        .unwrap();
    pairs.artifacts[0].blake3 = "f".repeat(64);
    pairs.finished_at += 3600.0;
    manifest.commit(&pairs).unwrap();
    let data = ReportData::from_manifest(&manifest).unwrap();
    let mask = data.stages.iter().find(|s| s.name == "mask").unwrap();
    assert_eq!(mask.status(), "stale");
    assert_eq!(
        mask.stale_inputs,
        vec!["pairs/train/shard-00000.parquet".to_string()]
    );
    let md = render_markdown(&data);
    assert!(md.contains("mask is stale: 1 of its inputs changed upstream"));
    // Both pairs runs are in the history; only the newer one is current.
    let pairs_runs: Vec<_> = data.history.iter().filter(|h| h.stage == "pairs").collect();
    assert_eq!(pairs_runs.len(), 2);
    assert!(!pairs_runs[0].current && pairs_runs[1].current);
}

#[test]
fn a_changed_or_lost_log_is_reported_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = recorded_run(dir.path(), &PIPELINE_STAGES);
    let log = dir.path().join("pretrain/metrics.jsonl");
    let mut text = std::fs::read_to_string(&log).unwrap();
    text.push_str("{\"step\": 2020, \"loss\": 3.5}\n{truncat");
    std::fs::write(&log, text).unwrap();
    let data = ReportData::from_manifest(&manifest).unwrap();
    assert_eq!(data.warnings.len(), 2, "{:?}", data.warnings);
    assert!(data.warnings[0].contains("differs from the hash pretrain recorded"));
    assert!(data.warnings[1].contains("skipped 1 malformed line"));
    assert!(render_html(&data).unwrap().contains("class=\"warning\""));

    std::fs::remove_file(&log).unwrap();
    let data = ReportData::from_manifest(&manifest).unwrap();
    assert!(
        data.warnings[0].contains("missing on disk"),
        "{:?}",
        data.warnings
    );
    let md = render_markdown(&data);
    assert!(md.contains("- Plot: Pre-training loss: missing"));
    // The stage's final metrics still stand in for the log's last values.
    assert_row(&md, "pre-training loss", "3.9730");
}

#[test]
fn rerunning_after_a_new_pretrain_picks_up_the_new_log() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = recorded_run(dir.path(), &PIPELINE_STAGES);
    let first_data = ReportData::from_manifest(&manifest).unwrap();
    let first = write_report(&first_data, &dir.path().join("report")).unwrap();
    let before = std::fs::read_to_string(&first.markdown).unwrap();
    assert!(before.contains("| pre-training loss | 3.9730 |"));

    let mut pretrain = fixture_records()
        .into_iter()
        .find(|r| r.stage == "pretrain")
        .unwrap();
    let log = "{\"step\": 4000, \"loss\": 3.25, \"mlm_accuracy\": 0.35}\n";
    place_metrics_log(dir.path(), &mut pretrain, log.as_bytes());
    pretrain.finished_at += 7200.0;
    manifest.commit(&pretrain).unwrap();
    let data = ReportData::from_manifest(&manifest).unwrap();
    let second = write_report(&data, &dir.path().join("report")).unwrap();
    assert_eq!(first, second);
    let after = std::fs::read_to_string(&second.markdown).unwrap();
    assert!(after.contains("| pre-training loss | 3.2500 |"));
    assert!(after.contains("| MLM accuracy | 0.3500 |"));
    let new_hash = blake3::hash(log.as_bytes()).to_hex().to_string();
    let pretrain_input = |data: &ReportData| {
        let inputs = data.inputs();
        inputs
            .into_iter()
            .find(|i| i.id == "stage:pretrain")
            .unwrap()
    };
    assert_eq!(
        pretrain_input(&data),
        bertline::stage::upstream_input(&pretrain)
    );
    assert_ne!(
        pretrain_input(&data).blake3,
        pretrain_input(&first_data).blake3
    );
    let html = std::fs::read_to_string(&second.html).unwrap();
    assert!(html.contains(&new_hash[..12]));
    assert!(!dir.path().join("report").read_dir().unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .ends_with(".tmp")));
}

/// Writes the fixture's report to `$BERTLINE_REPORT_OUT` for a look in a browser
/// (`BERTLINE_REPORT_OUT=/tmp/r cargo test --release --test report_render -- --ignored`).
#[test]
#[ignore]
fn write_fixture_report_for_inspection() {
    let out = PathBuf::from(std::env::var("BERTLINE_REPORT_OUT").unwrap());
    let (_dir, data) = full_report();
    write_report(&data, &out).unwrap();
    let partial = tempfile::tempdir().unwrap();
    let manifest = recorded_run(partial.path(), &["vocab", "pairs"]);
    write_report(
        &ReportData::from_manifest(&manifest).unwrap(),
        &out.join("partial"),
    )
    .unwrap();
}

/// A stage's shards are one row per kind in the lineage (a large corpus makes hundreds of
/// thousands): their count, first and last, rows and bytes summed; other artifacts one row
/// each, as before.
#[test]
fn the_lineage_lists_shards_as_one_row_per_kind() {
    use bertline::shard::{ShardId, Split};
    let dir = tempfile::tempdir().unwrap();
    let manifest = recorded_run(dir.path(), &["vocab", "pairs"]);
    let mut pairs = manifest.stage("pairs").unwrap().unwrap();
    let template = pairs.artifacts[0].clone();
    let shard = |split: Split, file: usize, kind: &str| {
        let id = ShardId {
            split,
            seq_len: None,
            file,
            shard: 0,
            part: None,
        };
        let path = format!("pairs/{}", id.file_name());
        bertline::manifest::ArtifactRecord {
            id: path.clone(),
            path,
            kind: kind.into(),
            blake3: format!("{file:064x}"),
            rows: file as u64,
            bytes: 100,
            shard: Some(id),
            ..template.clone()
        }
    };
    pairs.artifacts = (0..30)
        .map(|f| shard(Split::Train, f, "pairs-train"))
        .chain((0..2).map(|f| shard(Split::Eval, f, "pairs-eval")))
        .chain([template.clone()])
        .collect();
    pairs.artifact_count = pairs.artifacts.len();
    pairs.finished_at += 1.0;
    manifest.commit(&pairs).unwrap();
    let data = ReportData::from_manifest(&manifest).unwrap();
    let md = render_markdown(&data);
    let first = pairs.artifacts[0].id.clone();
    let last = pairs.artifacts[29].id.clone();
    let train = md_row(&md, &format!("30 shards, {first} .. {last}"));
    assert!(train.contains("| pairs-train |"), "{train}");
    assert!(
        train.ends_with(&format!("| 435 | {} |", bertline::report::fmt_bytes(3000))),
        "{train}"
    );
    let eval = md_row(
        &md,
        &format!(
            "2 shards, {} .. {}",
            pairs.artifacts[30].id, pairs.artifacts[31].id
        ),
    );
    assert!(eval.contains("| pairs-eval |"), "{eval}");
    // The shards between the first and the last are not listed; the other artifact is.
    assert!(!md.contains(&pairs.artifacts[15].id));
    assert!(md_row(&md, &template.id).contains(&template.blake3[..12]));
    // The report holds the shards summed, not one record each; the totals count them.
    let entry = data.stages.iter().find(|s| s.name == "pairs").unwrap();
    assert_eq!(
        entry.record.as_ref().unwrap().artifacts,
        std::slice::from_ref(&template)
    );
    let groups: Vec<(&str, usize)> = entry
        .shards
        .iter()
        .map(|g| (g.kind.as_str(), g.count))
        .collect();
    assert_eq!(groups, [("pairs-train", 30), ("pairs-eval", 2)]);
    assert_eq!(entry.total_rows(), Some(435 + 1 + template.rows));
    assert_eq!(
        data.inputs()[1],
        bertline::stage::upstream_input(&manifest.stage("pairs").unwrap().unwrap())
    );

    // A list that is gone: the report says so, naming the stage.
    for e in std::fs::read_dir(dir.path().join(bertline::manifest::ARTIFACT_LISTS)).unwrap() {
        let path = e.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("pairs-")
        {
            std::fs::remove_file(path).unwrap();
        }
    }
    let data = ReportData::from_manifest(&manifest).unwrap();
    assert!(
        data.warnings
            .iter()
            .any(|w| w.contains("list of the pairs stage's 33 artifacts is missing")),
        "{:?}",
        data.warnings
    );
}
