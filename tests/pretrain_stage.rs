//! The `pretrain` stage through the manifest: a real vocab stage on Alice in Wonderland,
//! pairs and mask records standing in for their stages (synthetic instances, real Arrow shards),
//! then `pretrain::run` on the `tiny` profile: outputs recorded, fresh on the second run.

use std::path::{Path, PathBuf};

use bertline::mask::instances_kind;
use bertline::pretrain;
use bertline::progress::NoProgress;
use bertline::shard::{write_instances, ShardId, Split, TrainingInstance};
use bertline::stage::{Begin, Outcome, Stage, StageCtx, StageOptions};
use rand::{Rng, SeedableRng};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The repo's pipeline.toml with absolute data paths and the run directory in `dir`.
fn write_pipeline(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("pipeline.toml"))
        .unwrap()
        .replace("\"datasets/", &format!("\"{}/datasets/", repo().display()))
        .replace(
            "dir = \"runs/tiny\"",
            &format!("dir = \"{}\"", dir.join("run").display()),
        );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `[CLS] w.. [SEP] w.. [SEP]` rows of length <= 64 over ids 5..1024, 1-10 predictions.
fn instances(n: usize, rng: &mut rand_chacha::ChaCha8Rng) -> Vec<TrainingInstance> {
    (0..n)
        .map(|_| {
            let (a, b) = (rng.gen_range(5..30), rng.gen_range(5..30));
            let w = rng.gen_range(5..1024u32);
            let mut tokens = vec![2];
            tokens.extend(std::iter::repeat_n(w, a));
            tokens.push(3);
            tokens.extend(std::iter::repeat_n(w, b));
            tokens.push(3);
            let mut segment_ids = vec![0u8; a + 2];
            segment_ids.resize(tokens.len(), 1);
            let k = rng.gen_range(1..=10);
            let positions: Vec<u32> = (1..=k as u32).collect();
            let labels = positions.iter().map(|&p| tokens[p as usize]).collect();
            for &p in &positions {
                tokens[p as usize] = 4;
            }
            TrainingInstance {
                tokens,
                segment_ids,
                masked_lm_positions: positions,
                masked_lm_labels: labels,
                is_random_next: false,
            }
        })
        .collect()
}

#[test]
fn pretrain_stage_records_an_hf_checkpoint_and_metrics_then_is_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = StageCtx::open(StageOptions {
        config: write_pipeline(dir.path()),
        profile: "tiny".into(),
        force: false,
        verify: false,
    })
    .unwrap();
    bertline::tokenize::run_vocab(&ctx, &NoProgress).unwrap();
    let Begin::Run(pairs) = ctx.begin(Stage::Pairs).unwrap() else {
        panic!("pairs fresh")
    };
    pairs.finish(&ctx, serde_json::json!({})).unwrap();
    let Begin::Run(mut mask) = ctx.begin(Stage::Mask).unwrap() else {
        panic!("mask fresh")
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    for (split, shard, rows) in [
        (Split::Train, 0, 40),
        (Split::Train, 1, 40),
        (Split::Eval, 0, 16),
    ] {
        let id = ShardId {
            split,
            seq_len: None,
            file: 0,
            shard,
            part: Some(0),
        };
        let name = id.file_name();
        let info =
            write_instances(&mask.dir().join(&name), &instances(rows, &mut rng), 64, 10).unwrap();
        mask.add_shard(&name, instances_kind(split), &id, &info, Vec::new())
            .unwrap();
    }
    mask.finish(&ctx, serde_json::json!({})).unwrap();

    let outcome = pretrain::run(&ctx, &NoProgress).unwrap();
    let Outcome::Ran(record) = &outcome else {
        panic!("pretrain skipped")
    };
    let kinds: Vec<&str> = record.artifacts.iter().map(|a| a.kind.as_str()).collect();
    for kind in [
        "model",
        "model_config",
        "optimizer",
        "train_state",
        "vocab",
        "tokenizer",
        "metrics",
    ] {
        assert!(kinds.contains(&kind), "no {kind} artifact in {kinds:?}");
    }
    assert_eq!(record.metrics["steps"], 20);
    let first_metrics = record.metrics.clone();
    let ppl = record.metrics["heldout_perplexity"].as_f64().unwrap();
    assert!(ppl.is_finite() && ppl > 1.0, "heldout perplexity {ppl}");
    // WikiText-2 is single sentences: no NSP figures, and its loss is the MLM loss.
    let heldout = &record.metrics["heldout"];
    assert!(heldout.get("nsp_accuracy").is_none() && heldout.get("nsp_loss").is_none());
    assert_eq!(heldout["loss"], heldout["mlm_loss"]);
    let out = ctx.run_dir().join("pretrain");
    let (model, config) =
        bertline::model::export::load_pretraining(&out, &dfdx::tensor::Cpu::default()).unwrap();
    assert_eq!(config, ctx.config().model);
    assert_eq!(model.bert.encoder.layer.len(), 1);
    let rows = std::fs::read_to_string(out.join(pretrain::METRICS_FILE)).unwrap();
    let heldout_row = rows
        .lines()
        .find(|l| l.contains("\"split\":\"heldout\""))
        .expect("a heldout row");
    assert!(!heldout_row.contains("nsp_"), "{heldout_row}");
    assert_eq!(
        rows.lines()
            .filter(|l| l.contains("\"split\":\"train\""))
            .count(),
        20 / 5
    );

    // The report reads the rows the stage wrote: every pre-training chart has data.
    let data = bertline::report::ReportData::from_manifest(&ctx.manifest).unwrap();
    assert!(data.warnings.is_empty(), "{:?}", data.warnings);
    let curves = data.pretrain.as_ref().expect("pretrain curves");
    assert_eq!(
        (curves.train.len(), curves.eval.len(), curves.heldout.len()),
        (4, 2, 1)
    );
    // 20 steps of the profile's batch x sequence length
    let cfg = ctx.config();
    assert_eq!(
        curves.train.last().unwrap().tokens_seen,
        Some((20 * cfg.pretrain.train_batch_size * cfg.pairs.max_seq_length) as u64)
    );
    for chart in bertline::report::pretrain_charts(curves) {
        assert!(!chart.is_empty(), "chart `{}` has no data", chart.title);
        assert!(
            chart.curves.iter().all(|c| !c.points.is_empty()),
            "{}",
            chart.title
        );
    }
    let md = bertline::report::render_markdown(&data);
    assert_eq!(
        md.matches(": plotted in report.html").count(),
        7,
        "a chart is missing:\n{md}"
    );
    assert!(
        bertline::report::render_html(&data)
            .unwrap()
            .matches("<svg")
            .count()
            >= 7
    );

    assert!(pretrain::run(&ctx, &NoProgress).unwrap().skipped());
    drop(ctx);

    // Forced on the finished run: it resumes from the last checkpoint (step 20) and must not
    // append a second held-out row.
    let ctx = StageCtx::open(StageOptions {
        config: dir.path().join("pipeline.toml"),
        profile: "tiny".into(),
        force: true,
        verify: false,
    })
    .unwrap();
    let Outcome::Ran(resumed) = pretrain::run(&ctx, &NoProgress).unwrap() else {
        panic!("forced pretrain skipped")
    };
    // It trained and evaluated nothing, yet records the final numbers the first run logged.
    assert_eq!(resumed.metrics["resumed_from"], 20);
    for key in ["train", "eval", "heldout", "heldout_perplexity", "steps"] {
        assert!(!first_metrics[key].is_null(), "{key}");
        assert_eq!(resumed.metrics[key], first_metrics[key], "{key}");
    }
    let rows = std::fs::read_to_string(out.join(pretrain::METRICS_FILE)).unwrap();
    let heldout_rows = rows
        .lines()
        .filter(|l| l.contains("\"split\":\"heldout\""))
        .count();
    assert_eq!(heldout_rows, 1, "{rows}");
}

#[test]
fn resumed_metrics_drop_rows_after_the_checkpoint_and_the_heldout_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(pretrain::METRICS_FILE);
    let rows = [
        r#"{"split":"train","step":10}"#,
        r#"{"split":"eval","step":10}"#,
        r#"{"split":"train","step":20}"#,
        r#"{"split":"eval","step":20}"#,
        r#"{"split":"heldout","step":20}"#,
    ];
    std::fs::write(&path, rows.join("\n") + "\n").unwrap();
    // Killed after the last checkpoint (step 20), after the held-out row.
    drop(pretrain::MetricsLog::open(&path, 20).unwrap());
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        rows[..4].join("\n") + "\n"
    );
    // Resumed from step 10.
    drop(pretrain::MetricsLog::open(&path, 10).unwrap());
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        rows[..2].join("\n") + "\n"
    );
}
