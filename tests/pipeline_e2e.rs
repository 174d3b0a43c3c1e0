//! The whole pipeline on the `tiny` profile (Alice in Wonderland, a 1-layer model, a few
//! steps), stage after stage through the same library calls the binaries make: checks the
//! manifest lineage, the freshness rules across stages, and that the report names every
//! artifact.

mod stages_common;

use std::path::{Path, PathBuf};

use bertline::stage::{Freshness, Stage, StageCtx};
use stages_common::{run_stages, STAGES};

fn project(dir: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(repo.join("pipeline.toml")).unwrap();
    // Relative paths in pipeline.toml resolve against its directory: link the data in.
    let link = dir.join("datasets");
    if !link.exists() {
        std::os::unix::fs::symlink(repo.join("datasets"), &link).unwrap();
    }
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, edit(text)).unwrap();
    path
}

fn open(config: &Path) -> StageCtx {
    stages_common::open(config, "tiny", true)
}

fn run_all(ctx: &StageCtx) -> Vec<bool> {
    run_stages(ctx, &STAGES)
}

#[test]
fn tiny_pipeline_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let config = project(tmp.path(), |t| t);
    let ctx = open(&config);
    assert_eq!(run_all(&ctx), vec![false; 5]);
    let report = bertline::report::run(&ctx).unwrap();
    // The report's shard groups, read from what pairs and mask wrote: every shard counted
    // once, with its rows, under its kind.
    for stage in ["pairs", "mask"] {
        let record = ctx.manifest.stage(stage).unwrap().unwrap();
        let entry = report.data.stages.iter().find(|s| s.name == stage).unwrap();
        let mut expected: Vec<(String, usize, u64)> = Vec::new();
        for a in record.artifacts.iter().filter(|a| a.shard.is_some()) {
            match expected.iter_mut().find(|(kind, ..)| *kind == a.kind) {
                Some(group) => (group.1, group.2) = (group.1 + 1, group.2 + a.rows),
                None => expected.push((a.kind.clone(), 1, a.rows)),
            }
        }
        let groups: Vec<(String, usize, u64)> = entry
            .shards
            .iter()
            .map(|g| (g.kind.clone(), g.count, g.rows))
            .collect();
        assert!(!groups.is_empty(), "{stage}");
        assert_eq!(groups, expected, "{stage}");
        assert_eq!(entry.total_rows(), Some(expected.iter().map(|g| g.2).sum()));
    }

    // Every stage fresh, lineage complete: each stage's inputs are raw files or the current
    // outputs of a stage upstream (its digest as it stands), each shard's inputs artifacts
    // upstream.
    for (stage, fresh) in ctx.status().unwrap() {
        assert_eq!(fresh, Freshness::Fresh, "{stage}");
    }
    let records = ctx.manifest.stages().unwrap();
    let ids: std::collections::BTreeSet<String> = records
        .iter()
        .flat_map(|r| r.artifacts.iter().map(|a| a.id.clone()))
        .collect();
    let digests: Vec<bertline::manifest::InputRef> = records
        .iter()
        .map(bertline::stage::upstream_input)
        .collect();
    for r in &records {
        for input in &r.inputs {
            assert!(
                input.id.starts_with("file:") || digests.contains(input),
                "{} reads {} which is not a current stage's output",
                r.stage,
                input.id
            );
        }
        for a in r.artifacts.iter().filter(|a| a.shard.is_some()) {
            for input in &a.inputs {
                assert!(
                    input.starts_with("file:") || ids.contains(input),
                    "{} was made from {input}, which no stage recorded",
                    a.id
                );
            }
        }
    }
    let upstream = |stage: &str| -> Vec<String> {
        let record = ctx.manifest.stage(stage).unwrap().unwrap();
        record.inputs.iter().map(|i| i.id.clone()).collect()
    };
    assert_eq!(upstream("mask"), ["stage:vocab", "stage:pairs"]);
    assert_eq!(upstream("pretrain")[..2], ["stage:vocab", "stage:mask"]);
    let pretrain = ctx.manifest.stage("pretrain").unwrap().unwrap();
    assert!(pretrain
        .artifacts
        .iter()
        .any(|a| a.path.ends_with("model.safetensors")));

    // The report names every artifact of every other stage.
    let html_path = ctx.run_dir().join("report/report.html");
    let html = std::fs::read_to_string(&html_path).unwrap();
    for r in records.iter().filter(|r| r.stage != "report") {
        for a in &r.artifacts {
            assert!(html.contains(&a.id), "report does not name {}", a.id);
        }
    }
    for needle in ["src=\"http", "href=\"http", "<script", "<link", "@import"] {
        assert!(
            !html.contains(needle),
            "report must be self-contained: found {needle}"
        );
    }
    drop(ctx);

    stages_common::assert_rerun_skips(&config, "tiny", true, &STAGES);

    // Editing masked_lm_prob makes mask and everything downstream stale, nothing upstream.
    project(tmp.path(), |t| {
        t.replace("masked_lm_prob = 0.15", "masked_lm_prob = 0.2")
    });
    let ctx = open(&config);
    let status: Vec<(Stage, bool)> = ctx
        .status()
        .unwrap()
        .into_iter()
        .map(|(s, f)| (s, f.is_fresh()))
        .collect();
    assert_eq!(
        status,
        vec![
            (Stage::Vocab, true),
            (Stage::Pairs, true),
            (Stage::Mask, false),
            (Stage::Pretrain, false),
            (Stage::Finetune, false),
            (Stage::Report, false),
        ]
    );
    match ctx.freshness(Stage::Mask).unwrap() {
        Freshness::Stale(why) => assert!(why.contains("mask.masked_lm_prob"), "{why}"),
        other => panic!("{other}"),
    }
}
