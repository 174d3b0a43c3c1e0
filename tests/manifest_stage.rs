//! The manifest and the freshness rules: skip when fresh, stale downstream after a config
//! change, `--force`, one process per manifest, nothing recorded for a stage that dies.

use std::path::{Path, PathBuf};

use bertline::progress::NoProgress;
use bertline::stage::{Begin, Freshness, Stage, StageCtx, StageOptions};

/// A throwaway project: the shipped pipeline.toml's tiny profile, pointed at a temp run dir
/// and the repo's real Alice text.
fn project(dir: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(repo.join("pipeline.toml")).unwrap();
    let text = text
        .replace(
            "dir = \"runs/tiny\"",
            &format!("dir = {:?}", dir.join("run")),
        )
        .replace(
            "input = [\"datasets/pretrain/gutenberg_pg11.txt\"]",
            &format!(
                "input = [{:?}]",
                repo.join("datasets/pretrain/gutenberg_pg11.txt")
            ),
        );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, edit(text)).unwrap();
    path
}

fn open(config: &Path, force: bool) -> StageCtx {
    StageCtx::open(StageOptions {
        config: config.to_path_buf(),
        profile: "tiny".into(),
        force,
        verify: true,
    })
    .unwrap()
}

#[test]
fn vocab_skips_when_fresh_and_reruns_with_force() {
    let tmp = tempfile::tempdir().unwrap();
    let config = project(tmp.path(), |t| t);
    let ctx = open(&config, false);
    assert!(matches!(
        ctx.freshness(Stage::Vocab).unwrap(),
        Freshness::Missing(_)
    ));
    let first = bertline::tokenize::run_vocab(&ctx, &NoProgress).unwrap();
    assert!(!first.skipped());
    let rec = first.record();
    assert_eq!(rec.artifacts.len(), 2);
    let vocab = rec.artifacts.iter().find(|a| a.kind == "vocab").unwrap();
    assert_eq!(vocab.rows, 1024);
    let text = std::fs::read_to_string(ctx.path_of(vocab)).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(&lines[..5], &["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]);
    assert_eq!(ctx.freshness(Stage::Vocab).unwrap(), Freshness::Fresh);
    // Second run: skipped, same record.
    let second = bertline::tokenize::run_vocab(&ctx, &NoProgress).unwrap();
    assert!(second.skipped());
    assert_eq!(second.record(), rec);
    drop(ctx);
    // --force reruns.
    let ctx = open(&config, true);
    let third = bertline::tokenize::run_vocab(&ctx, &NoProgress).unwrap();
    assert!(!third.skipped());
    assert!(third.record().finished_at > rec.finished_at);
}

#[test]
fn config_change_makes_stage_stale_with_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let config = project(tmp.path(), |t| t);
    {
        let ctx = open(&config, false);
        bertline::tokenize::run_vocab(&ctx, &NoProgress).unwrap();
    }
    // Change a vocab key: vocab becomes stale, naming the key; pairs (never run) is missing.
    project(tmp.path(), |t| {
        t.replace("limit_alphabet = 1000", "limit_alphabet = 900")
    });
    let ctx = open(&config, false);
    match ctx.freshness(Stage::Vocab).unwrap() {
        Freshness::Stale(why) => assert!(why.contains("vocab.limit_alphabet"), "{why}"),
        other => panic!("expected stale, got {other}"),
    }
    match ctx.freshness(Stage::Pairs).unwrap() {
        Freshness::Missing(why) => assert!(why.contains("upstream `vocab`"), "{why}"),
        other => panic!("expected missing, got {other}"),
    }
    // A downstream stage refuses to start on a stale upstream.
    let err = ctx.begin(Stage::Pairs).unwrap_err().to_string();
    assert!(err.contains("just stage vocab"), "{err}");
}

#[test]
fn tampered_artifact_is_stale_with_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let config = project(tmp.path(), |t| t);
    let ctx = open(&config, false);
    let out = bertline::tokenize::run_vocab(&ctx, &NoProgress).unwrap();
    let vocab = out.record().artifacts_of("vocab").next().unwrap().clone();
    let path = ctx.path_of(&vocab);
    let mut text = std::fs::read(&path).unwrap();
    let n = text.len();
    text[n - 2] ^= 1;
    std::fs::write(&path, text).unwrap();
    match ctx.freshness(Stage::Vocab).unwrap() {
        Freshness::Stale(why) => assert!(why.contains("vocab.txt"), "{why}"),
        other => panic!("expected stale, got {other}"),
    }
}

/// Runs in a child process (see below): holds the manifest open for a few seconds.
#[test]
#[ignore = "helper: run by second_process_gets_in_use_error in a child process"]
fn hold_manifest_child() {
    if let Ok(dir) = std::env::var("BERTLINE_HOLD_MANIFEST") {
        let _m = bertline::manifest::Manifest::open(Path::new(&dir)).unwrap();
        println!("holding");
        std::thread::sleep(std::time::Duration::from_secs(4));
    }
}

#[test]
fn second_process_gets_in_use_error() {
    use std::io::{BufRead, BufReader};
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "hold_manifest_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("BERTLINE_HOLD_MANIFEST", &run)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(
        lines.any(|l| l.unwrap().contains("holding")),
        "child never held the manifest"
    );
    let err = bertline::manifest::Manifest::open(&run)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("manifest.sled") && err.contains("in use"),
        "{err}"
    );
    assert!(!err.contains('\n'));
    child.wait().unwrap();
    // Once the other process is gone the manifest opens again.
    bertline::manifest::Manifest::open(&run).unwrap();
}

#[test]
fn killed_stage_records_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let config = project(tmp.path(), |t| t);
    let ctx = open(&config, false);
    let Begin::Run(mut run) = ctx.begin(Stage::Vocab).unwrap() else {
        panic!("fresh run must not skip")
    };
    std::fs::write(run.dir().join("vocab.txt"), "[PAD]\n").unwrap();
    run.add("vocab.txt", "vocab", 1).unwrap();
    // The stage "dies" here: the run is dropped without finish().
    drop(run);
    assert!(ctx.manifest.stage("vocab").unwrap().is_none());
    assert!(matches!(
        ctx.freshness(Stage::Vocab).unwrap(),
        Freshness::Missing(_)
    ));
    assert!(!ctx.run_dir().join("vocab").exists());
    // And the rerun finishes.
    assert!(!bertline::tokenize::run_vocab(&ctx, &NoProgress)
        .unwrap()
        .skipped());
}

#[test]
fn bad_corpus_leaves_records_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let config = project(tmp.path(), |t| t);
    let before = {
        let ctx = open(&config, false);
        bertline::tokenize::run_vocab(&ctx, &NoProgress)
            .unwrap()
            .record()
            .clone()
    };
    // Point the corpus at a non-UTF-8 file and force a rerun: one-line error, record kept.
    let bad = tmp.path().join("latin1.txt");
    std::fs::write(&bad, b"caf\xe9 au lait.\n\nSecond doc.\n").unwrap();
    project(tmp.path(), |t| {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        t.replace(
            &format!("{:?}", repo.join("datasets/pretrain/gutenberg_pg11.txt")),
            &format!("{bad:?}"),
        )
    });
    let ctx = open(&config, true);
    let err = bertline::tokenize::run_vocab(&ctx, &NoProgress)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("latin1.txt") && err.contains("not UTF-8") && !err.contains('\n'),
        "{err}"
    );
    assert_eq!(ctx.manifest.stage("vocab").unwrap().unwrap(), before);
    for a in &before.artifacts {
        assert_eq!(
            bertline::durable::hash_file(&ctx.path_of(a)).unwrap().0,
            a.blake3
        );
    }
}

/// A progress callback that announces the stage is under way, then stalls so the parent
/// process can kill it mid-stage.
struct StallingProgress;

impl bertline::progress::Progress for StallingProgress {
    fn start(&self, _what: &str, _total: u64) {}
    fn advance(&self, _n: u64) {
        println!("advancing");
        std::thread::sleep(std::time::Duration::from_secs(30));
    }
    fn finish(&self) {}
}

/// Runs in a child process (see below): vocab, then a pairs stage that stalls mid-way.
#[test]
#[ignore = "helper: run by kill_9_mid_stage_records_nothing in a child process"]
fn stalling_pairs_child() {
    if let Ok(config) = std::env::var("BERTLINE_STALL_CONFIG") {
        let ctx = open(Path::new(&config), false);
        bertline::tokenize::run_vocab(&ctx, &NoProgress).unwrap();
        bertline::pairs::run(&ctx, &StallingProgress).unwrap();
    }
}

#[test]
fn kill_9_mid_stage_records_nothing_and_the_rerun_finishes() {
    use std::io::{BufRead, BufReader};
    let tmp = tempfile::tempdir().unwrap();
    let config = project(tmp.path(), |t| t);
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "stalling_pairs_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("BERTLINE_STALL_CONFIG", &config)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(
        lines.any(|l| l.unwrap().contains("advancing")),
        "child never reached pairs"
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let ctx = open(&config, false);
    assert_eq!(ctx.freshness(Stage::Vocab).unwrap(), Freshness::Fresh);
    assert!(ctx.manifest.stage("pairs").unwrap().is_none());
    assert!(matches!(
        ctx.freshness(Stage::Pairs).unwrap(),
        Freshness::Missing(_)
    ));
    assert!(
        !ctx.run_dir().join("pairs").exists(),
        "no half-written pairs directory in place"
    );
    // The rerun finishes, clears the dead run's staging directory and records the shards.
    let out = bertline::pairs::run(&ctx, &NoProgress).unwrap();
    assert!(!out.skipped());
    for a in &out.record().artifacts {
        let (hash, _) = bertline::durable::hash_file(&ctx.path_of(a)).unwrap();
        assert_eq!(hash, a.blake3);
        bertline::shard::read_pairs(&ctx.path_of(a)).unwrap();
    }
    let staging: Vec<_> = std::fs::read_dir(ctx.run_dir().join(".staging"))
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        staging
            .iter()
            .all(|n| !n.to_string_lossy().starts_with("pairs-")),
        "{staging:?}"
    );
    assert_eq!(ctx.freshness(Stage::Pairs).unwrap(), Freshness::Fresh);
}
