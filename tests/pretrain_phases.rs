//! The seq-short-then-long schedule end to end (BERT §A.2): vocab -> pairs -> mask ->
//! pretrain on Alice in Wonderland with two `[[pretrain.phases]]` (32 then 64 tokens), through
//! the library calls the stage binaries make. Checks the per-length shards and their shapes,
//! both phases in the metrics and the manifest, and which edits make which stages stale.

mod stages_common;

use std::path::{Path, PathBuf};

use bertline::pretrain::{self, METRICS_FILE, STATE_FILE};
use bertline::shard::read_instances;
use bertline::shard::Split;
use bertline::stage::{Freshness, Stage, StageCtx};
use stages_common::{run_stages, STAGES};

/// A two-phase profile on the `tiny` sizes: 16 steps at 32 tokens (5 predictions, scaled
/// from 10 at 64), then 4 steps at 64 tokens (10 predictions) with batch 4.
const PROFILE: &str = r#"
[profiles.twophase.run]
dir = "runs/twophase"
[profiles.twophase.corpus]
input = ["datasets/pretrain/gutenberg_pg11.txt"]
[profiles.twophase.vocab]
vocab_size = 1024
[profiles.twophase.pairs]
dupe_factor = 1
max_seq_length = 64
eval_fraction = 0.25
[profiles.twophase.mask]
max_predictions_per_seq = 10
[profiles.twophase.model]
vocab_size = 1024
hidden_size = 32
num_hidden_layers = 1
num_attention_heads = 2
intermediate_size = 64
max_position_embeddings = 64
[profiles.twophase.pretrain]
train_batch_size = 8
num_train_steps = 20
num_warmup_steps = 2
log_every_steps = 5
eval_every_steps = 10
eval_batches = 2
save_checkpoints_steps = 10
[[profiles.twophase.pretrain.phases]]
max_seq_length = 32
num_train_steps = 16
[[profiles.twophase.pretrain.phases]]
max_seq_length = 64
num_train_steps = 4
train_batch_size = 4
"#;

/// The repo's pipeline.toml plus [`PROFILE`] (after `edit`) in `dir`, the data linked in.
fn project(dir: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(repo.join("pipeline.toml")).unwrap();
    let link = dir.join("datasets");
    if !link.exists() {
        std::os::unix::fs::symlink(repo.join("datasets"), &link).unwrap();
    }
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, edit(text + PROFILE)).unwrap();
    path
}

fn open(config: &Path) -> StageCtx {
    stages_common::open(config, "twophase", false)
}

fn run_through_pretrain(ctx: &StageCtx) -> Vec<bool> {
    run_stages(ctx, &STAGES[..4])
}

fn fresh(ctx: &StageCtx) -> Vec<(Stage, bool)> {
    ctx.status()
        .unwrap()
        .into_iter()
        .take(4)
        .map(|(s, f)| (s, f.is_fresh()))
        .collect()
}

#[test]
fn two_phases_from_pairs_to_pretrain() {
    let tmp = tempfile::tempdir().unwrap();
    let config = project(tmp.path(), |t| t);
    let ctx = open(&config);
    assert_eq!(run_through_pretrain(&ctx), vec![false; 4]);

    // pairs and mask wrote train and eval shards for each length, named by it.
    for stage in ["pairs", "mask"] {
        let record = ctx.manifest.stage(stage).unwrap().unwrap();
        for prefix in ["seq32-train-", "seq32-eval-", "seq64-train-", "seq64-eval-"] {
            let n = record
                .artifacts
                .iter()
                .filter(|a| a.path.starts_with(&format!("{stage}/{prefix}")) && a.rows > 0)
                .count();
            assert!(n > 0, "{stage} has no {prefix} shard");
        }
        assert!(record
            .artifacts
            .iter()
            .all(|a| a.path.contains("/seq32-") || a.path.contains("/seq64-")));
        let by_length = &record.metrics["by_length"];
        assert!(by_length["seq32"].is_object() && by_length["seq64"].is_object());
    }
    // Each length has its own row width and prediction cap.
    let mask = ctx.manifest.stage("mask").unwrap().unwrap();
    assert_eq!(
        mask.metrics["by_length"]["seq32"]["max_predictions_per_seq"],
        5
    );
    for split in [Split::Train, Split::Eval] {
        for path in bertline::mask::instance_shards(&ctx, split).unwrap() {
            let shard = read_instances(&path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let expected = if name.starts_with("seq32-") {
                (32, 5)
            } else {
                (64, 10)
            };
            assert_eq!((shard.seq_len, shard.max_predictions), expected, "{name}");
        }
    }
    // `bertline-mask stats` reports each length apart; together they are the whole split.
    let by_length = bertline::mask::stage_stats_by_length(&ctx, Split::Train).unwrap();
    assert_eq!(by_length.keys().copied().collect::<Vec<_>>(), vec![32, 64]);
    let total = bertline::mask::stage_stats(&ctx, Split::Train).unwrap();
    assert_eq!(
        by_length.values().map(|s| s.instances).sum::<u64>(),
        total.instances
    );
    assert!(by_length[&32].avg_tokens() < by_length[&64].avg_tokens());

    // pretrain ran both phases: 16 steps at 32 tokens, then 4 at 64, one schedule.
    let record = ctx.manifest.stage("pretrain").unwrap().unwrap();
    assert_eq!(record.metrics["steps"], 20);
    let phases = &record.metrics["phases"];
    assert_eq!(
        (
            phases["phase1"]["seq_len"].as_u64(),
            phases["phase1"]["end_step"].as_u64()
        ),
        (Some(32), Some(16))
    );
    assert_eq!(
        (
            phases["phase2"]["seq_len"].as_u64(),
            phases["phase2"]["end_step"].as_u64()
        ),
        (Some(64), Some(20))
    );
    for p in ["phase1", "phase2"] {
        assert!(phases[p]["train_loss"].as_f64().unwrap().is_finite(), "{p}");
        assert!(phases[p]["eval_loss"].as_f64().unwrap().is_finite(), "{p}");
    }
    let out = ctx.run_dir().join("pretrain");
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(out.join(METRICS_FILE))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let train: Vec<(u64, u64, u64)> = rows
        .iter()
        .filter(|r| r["split"] == "train")
        .map(|r| {
            let n = |k: &str| r[k].as_u64().unwrap();
            (n("step"), n("phase"), n("seq_len"))
        })
        .collect();
    // Logged every 5 steps, and at the end of phase 1 (step 16).
    assert_eq!(
        train,
        vec![
            (5, 1, 32),
            (10, 1, 32),
            (15, 1, 32),
            (16, 1, 32),
            (20, 2, 64)
        ]
    );
    let heldout = rows.iter().find(|r| r["split"] == "heldout").unwrap();
    assert_eq!(heldout["seq_len"], 64);
    // state.json is the checkpoint's TrainState, the type the resume reads.
    let state: pretrain::TrainState =
        serde_json::from_str(&std::fs::read_to_string(out.join(STATE_FILE)).unwrap()).unwrap();
    assert_eq!((state.step, state.phase), (20, 2));
    assert_eq!(state.config, ctx.config().pretrain);
    drop(ctx);

    stages_common::assert_rerun_skips(&config, "twophase", false, &STAGES[..4]);

    // Changing only a phase's steps retrains, but keeps the pairs and mask shards.
    project(tmp.path(), |t| {
        t.replace("num_train_steps = 20\n", "num_train_steps = 22\n")
            .replace("num_train_steps = 4\n", "num_train_steps = 6\n")
    });
    let ctx = open(&config);
    assert_eq!(
        fresh(&ctx),
        vec![
            (Stage::Vocab, true),
            (Stage::Pairs, true),
            (Stage::Mask, true),
            (Stage::Pretrain, false),
        ]
    );
    drop(ctx);

    // Changing a phase's length redoes the pairs (and everything after them).
    project(tmp.path(), |t| {
        t.replace("max_seq_length = 32\n", "max_seq_length = 48\n")
    });
    let ctx = open(&config);
    assert_eq!(
        fresh(&ctx),
        vec![
            (Stage::Vocab, true),
            (Stage::Pairs, false),
            (Stage::Mask, false),
            (Stage::Pretrain, false),
        ]
    );
    match ctx.freshness(Stage::Pairs).unwrap() {
        Freshness::Stale(why) => assert!(why.contains("max_seq_lengths"), "{why}"),
        other => panic!("{other}"),
    }
}
