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

/// Runs vocab, pairs and mask.
fn run_data_stages(ctx: &StageCtx) {
    bertline::tokenize::run_vocab(ctx, &NoProgress).unwrap();
    bertline::pairs::run(ctx, &NoProgress).unwrap();
    bertline::mask::run(ctx, &NoProgress).unwrap();
}

/// A stage records each upstream stage as one input, the digest of its artifacts: a forced
/// upstream rerun that writes the same files leaves the stage fresh, one that writes other
/// files makes it stale, naming the upstream stage.
#[test]
fn downstream_freshness_follows_the_upstream_outputs_not_their_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let config = project(tmp.path(), |t| t);
    {
        let ctx = open_plain(&config, false);
        run_data_stages(&ctx);
        let mask = ctx.manifest.stage("mask").unwrap().unwrap();
        let pairs = ctx.manifest.stage("pairs").unwrap().unwrap();
        assert!(pairs.artifacts.len() > 1);
        let vocab = ctx.manifest.stage("vocab").unwrap().unwrap();
        assert_eq!(
            mask.inputs,
            [
                bertline::stage::upstream_input(&vocab),
                bertline::stage::upstream_input(&pairs)
            ]
        );
    }
    let forced = open_plain(&config, true);
    assert!(!bertline::pairs::run(&forced, &NoProgress)
        .unwrap()
        .skipped());
    drop(forced);
    let ctx = open_plain(&config, false);
    assert_eq!(ctx.freshness(Stage::Mask).unwrap(), Freshness::Fresh);
    drop(ctx);
    project(tmp.path(), |t| {
        t.replace(
            "dupe_factor = 1\nmax_seq_length = 64",
            "dupe_factor = 2\nmax_seq_length = 64",
        )
    });
    let ctx = open_plain(&config, false);
    bertline::pairs::run(&ctx, &NoProgress).unwrap();
    match ctx.freshness(Stage::Mask).unwrap() {
        Freshness::Stale(why) => assert_eq!(why, "inputs changed (stage:pairs)"),
        other => panic!("expected stale, got {other}"),
    }
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
    let record = ctx.manifest.stage("pairs").unwrap().unwrap();
    assert!(!record.artifacts.is_empty());
    for a in &record.artifacts {
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

fn open_plain(config: &Path, force: bool) -> StageCtx {
    StageCtx::open(StageOptions {
        config: config.to_path_buf(),
        profile: "tiny".into(),
        force,
        verify: false,
    })
    .unwrap()
}

/// A stage record with one (synthetic) artifact, for manifest-level tests.
fn record(stage: &str, finished_at: f64) -> bertline::manifest::StageRecord {
    use bertline::manifest::{ArtifactRecord, StageRecord};
    StageRecord {
        stage: stage.into(),
        profile: "tiny".into(),
        fingerprint: format!("fp-{finished_at}"),
        config_hash: "c".into(),
        config: serde_json::json!({}),
        inputs: vec![],
        artifacts: vec![ArtifactRecord {
            id: format!("{stage}/a.txt"),
            stage: stage.into(),
            kind: "text".into(),
            path: format!("{stage}/a.txt"),
            blake3: "h".into(),
            bytes: 1,
            mtime_ns: None,
            rows: 0,
            schema_version: 1,
            config_hash: "c".into(),
            inputs: vec![],
            code_version: "test".into(),
            started_at: 0.0,
            finished_at,
            shard: None,
        }],
        artifact_count: 1,
        metrics: serde_json::json!({}),
        code_version: "test".into(),
        schema_version: 1,
        started_at: 0.0,
        finished_at,
    }
}

/// [`record`] of the `mask` stage with `n` artifacts, their ids in descending order (so that
/// an order by id would not be the recorded order).
fn many(n: usize, finished_at: f64) -> bertline::manifest::StageRecord {
    let mut r = record("mask", finished_at);
    let one = r.artifacts.pop().unwrap();
    r.artifacts = (0..n)
        .map(|i| bertline::manifest::ArtifactRecord {
            id: format!("mask/shard-{:06}.arrow", n - i),
            path: format!("mask/shard-{:06}.arrow", n - i),
            rows: i as u64,
            ..one.clone()
        })
        .collect();
    r.artifact_count = n;
    r
}

/// The artifact lists of `stage` in the run (`manifest.artifacts/<stage>-<generation>.jsonl`)
/// and their lines.
fn artifact_lists(run: &Path, stage: &str) -> Vec<usize> {
    let Ok(entries) = std::fs::read_dir(run.join(bertline::manifest::ARTIFACT_LISTS)) else {
        return Vec::new();
    };
    let mut lines: Vec<(String, usize)> = entries
        .map(|e| e.unwrap())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{stage}-"))
        })
        .map(|e| {
            let text = std::fs::read_to_string(e.path()).unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                text.lines().count(),
            )
        })
        .collect();
    lines.sort();
    lines.into_iter().map(|(_, n)| n).collect()
}

#[test]
fn many_artifacts_come_back_whole_in_order_and_a_new_commit_drops_the_old_ones() {
    use bertline::manifest::Manifest;
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let m = Manifest::open(&run).unwrap();
    let (first, second) = (many(55, 1.0), many(5, 2.0));
    m.commit(&first).unwrap();
    m.commit(&record("vocab", 1.5)).unwrap();
    assert_eq!(m.stage("mask").unwrap().unwrap(), first);
    m.commit(&second).unwrap();
    assert_eq!(m.stage("mask").unwrap().unwrap(), second);
    assert_eq!(m.stage("vocab").unwrap().unwrap(), record("vocab", 1.5));
    let stages = m.stages().unwrap();
    assert_eq!(stages, vec![second.clone(), record("vocab", 1.5)]);
    // History keeps every run, with the count of its artifacts, not the artifacts.
    let history = m.history().unwrap();
    let counts: Vec<(&str, usize, f64)> = history
        .iter()
        .map(|r| (r.stage.as_str(), r.artifact_count, r.finished_at))
        .collect();
    assert_eq!(
        counts,
        [("mask", 55, 1.0), ("vocab", 1, 1.5), ("mask", 5, 2.0)]
    );
    assert_eq!(history[2], bertline::manifest::HistoryRecord::from(&second));
    drop(m);
    // Only the current list is left of the mask stage.
    assert_eq!(artifact_lists(&run, "mask"), [5]);
    assert_eq!(artifact_lists(&run, "vocab"), [1]);
    let m = Manifest::open(&run).unwrap();
    m.remove_stage("mask").unwrap();
    assert_eq!(m.stage("mask").unwrap(), None);
    drop(m);
    assert_eq!(artifact_lists(&run, "mask"), Vec::<usize>::new());
    assert_eq!(artifact_lists(&run, "vocab"), [1]);
}

/// Runs in a child process (see below): commits 600 artifacts with
/// `BERTLINE_CRASH_AT=record` set, so it aborts after writing them, before the record.
#[test]
#[ignore = "helper: run by a_commit_killed_before_its_record_leaves_the_old_one_whole"]
fn commit_killed_before_its_record_child() {
    if let Ok(dir) = std::env::var("BERTLINE_COMMIT_CHILD") {
        let m = bertline::manifest::Manifest::open(Path::new(&dir)).unwrap();
        m.commit(&many(600, 5.0)).unwrap();
    }
}

#[test]
fn a_commit_killed_before_its_record_leaves_the_old_one_whole() {
    use bertline::manifest::Manifest;
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    let first = many(300, 1.0);
    Manifest::open(&run).unwrap().commit(&first).unwrap();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "commit_killed_before_its_record_child",
            "--ignored",
            "--test-threads=1",
        ])
        .env("BERTLINE_COMMIT_CHILD", &run)
        .env("BERTLINE_CRASH_AT", "record")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child was not killed");
    // The killed commit's list is on disk beside the first record's...
    assert_eq!(artifact_lists(&run, "mask"), [300, 600]);
    // ...and the record is the first one, whole.
    let m = Manifest::open(&run).unwrap();
    assert_eq!(m.stage("mask").unwrap().unwrap(), first);
    assert_eq!(m.history().unwrap().len(), 1);
    // The next commit removes it with the first record's.
    let third = many(10, 3.0);
    m.commit(&third).unwrap();
    assert_eq!(m.stage("mask").unwrap().unwrap(), third);
    drop(m);
    assert_eq!(artifact_lists(&run, "mask"), [10]);
}

fn snapshot_files(run: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(run.join("manifest.sled"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("snap."))
        .collect();
    names.sort();
    names
}

#[test]
fn half_written_snapshot_of_a_killed_open_is_cleared() {
    use bertline::manifest::Manifest;
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    Manifest::open(&run)
        .unwrap()
        .commit(&record("vocab", 1.0))
        .unwrap();
    // The second open writes a snapshot (the log moved past the first one's).
    drop(Manifest::open(&run).unwrap());
    let snaps = snapshot_files(&run);
    let done = snaps.last().expect("sled wrote a snapshot").clone();
    assert!(!done.ends_with(".generating"), "{snaps:?}");
    // What an open killed between sled's create and its rename leaves: the snapshot being
    // generated, half written, under `snap.<lsn>.generating` (sorts after `snap.<lsn>`).
    let full = std::fs::read(run.join("manifest.sled").join(&done)).unwrap();
    let leftover = run.join("manifest.sled").join(format!("{done}.generating"));
    std::fs::write(&leftover, &full[..full.len() / 2]).unwrap();
    // sled alone no longer opens the database: the failure every command hit.
    let err = sled::Config::new()
        .path(run.join("manifest.sled"))
        .mode(sled::Mode::LowSpace)
        .open()
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(err.contains("corrupt"), "{err}");
    // The manifest clears it and opens with the record intact.
    let m = Manifest::open(&run).unwrap();
    assert!(!leftover.exists());
    assert_eq!(m.stage("vocab").unwrap().unwrap(), record("vocab", 1.0));
    drop(m);
    // An empty leftover (killed right after the create) too.
    std::fs::write(&leftover, b"").unwrap();
    let m = Manifest::open(&run).unwrap();
    assert_eq!(m.stage("vocab").unwrap().unwrap(), record("vocab", 1.0));
}

/// Runs in a child process (see below): opens the manifest with `BERTLINE_CRASH_AT=open:US`
/// set, so it aborts that many microseconds into the open, then commits a record.
#[test]
#[ignore = "helper: run by killed_opens_never_stop_the_next_command in a child process"]
fn open_and_commit_child() {
    if let Ok(dir) = std::env::var("BERTLINE_OPEN_CHILD") {
        let m = bertline::manifest::Manifest::open(Path::new(&dir)).unwrap();
        let n = m.history().unwrap().len();
        m.commit(&record("vocab", 10.0 + n as f64)).unwrap();
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

#[test]
fn killed_opens_never_stop_the_next_command() {
    use bertline::manifest::Manifest;
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    Manifest::open(&run)
        .unwrap()
        .commit(&record("vocab", 1.0))
        .unwrap();
    let (mut killed, mut leftovers) = (0, 0);
    // Kill points spread over the first 20 ms of the open, where sled writes its snapshot.
    for i in 0..24u64 {
        let delay_us = i * 850;
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "open_and_commit_child",
                "--ignored",
                "--test-threads=1",
            ])
            .env("BERTLINE_OPEN_CHILD", &run)
            .env("BERTLINE_CRASH_AT", format!("open:{delay_us}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        killed += usize::from(!status.success());
        leftovers += snapshot_files(&run)
            .iter()
            .filter(|n| n.ends_with(".generating"))
            .count();
        // The next command opens, whatever the kill left, and every record it reads is whole.
        let m = Manifest::open(&run)
            .unwrap_or_else(|e| panic!("open after a kill at {delay_us} us: {e}"));
        let latest = m.stage("vocab").unwrap().unwrap();
        assert_eq!(latest.artifacts.len(), 1);
        assert!(m.history().unwrap().iter().all(|r| r.stage == "vocab"));
        assert!(snapshot_files(&run)
            .iter()
            .all(|n| !n.ends_with(".generating")));
        // Move the log on, so the next child's open has a snapshot to write.
        m.commit(&record("vocab", 100.0 + i as f64)).unwrap();
    }
    eprintln!("{killed} of 24 children killed mid-open, {leftovers} left a .generating file");
    assert!(killed >= 20, "only {killed} of 24 children were killed");
}

#[test]
fn leftovers_of_dead_processes_are_removed_on_the_next_run() {
    let tmp = tempfile::tempdir().unwrap();
    let config = project(tmp.path(), |t| t);
    let run = tmp.path().join("run");
    let dead = [
        ".staging/trash-vocab-999999/vocab.txt",
        ".staging/pairs-999999/train/.shard-00000.arrow.999999.tmp",
        ".work/pretrain-0123456789abcdef/.tmp-checkpoint-0000010-999999/state.json",
        ".work/pretrain-0123456789abcdef/.metrics.jsonl.999999.tmp",
        "manifest.artifacts/.mask-0000000000000007.jsonl.999999.tmp",
    ];
    let kept = [
        ".work/pretrain-0123456789abcdef/checkpoint-0000010/state.json",
        ".work/pretrain-0123456789abcdef/metrics.jsonl",
    ];
    for f in dead.iter().chain(&kept) {
        let path = run.join(f);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "x").unwrap();
    }
    drop(open_plain(&config, false));
    for f in dead {
        // What must go: the staging directory, or the work directory's entry.
        let depth = if f.starts_with(".work") { 3 } else { 2 };
        let top: PathBuf = Path::new(f).iter().take(depth).collect();
        assert!(!run.join(&top).exists(), "{} left", top.display());
    }
    for f in kept {
        assert!(run.join(f).exists(), "{f} removed");
    }
}

#[test]
fn same_size_change_makes_stage_stale_without_verify() {
    let tmp = tempfile::tempdir().unwrap();
    let config = project(tmp.path(), |t| t);
    let ctx = open_plain(&config, false);
    let out = bertline::tokenize::run_vocab(&ctx, &NoProgress).unwrap();
    let vocab = out.record().artifacts_of("vocab").next().unwrap().clone();
    let path = ctx.path_of(&vocab);
    let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
    // Swap two tokens: same bytes, same size, and the old mtime put back.
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.swap(100, 101);
    let swapped = lines.join("\n") + "\n";
    assert_eq!(swapped.len(), text.len());
    std::fs::write(&path, swapped).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(modified)
        .unwrap();
    match ctx.freshness(Stage::Vocab).unwrap() {
        Freshness::Stale(why) => assert!(why.contains("vocab.txt changed on disk"), "{why}"),
        other => panic!("expected stale, got {other}"),
    }
    // A plain run repairs it.
    let again = bertline::tokenize::run_vocab(&ctx, &NoProgress).unwrap();
    assert!(!again.skipped());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    assert_eq!(ctx.freshness(Stage::Vocab).unwrap(), Freshness::Fresh);
    // Touching a file without changing it keeps the stage fresh (the hash decides).
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(std::time::SystemTime::now())
        .unwrap();
    assert_eq!(ctx.freshness(Stage::Vocab).unwrap(), Freshness::Fresh);
}

/// Runs in a child process (see below): a forced vocab run with `BERTLINE_CRASH_AT` set.
#[test]
#[ignore = "helper: run by a_kill_while_publishing_leaves_the_stage_stale in a child process"]
fn forced_vocab_child() {
    if let Ok(config) = std::env::var("BERTLINE_VOCAB_CHILD") {
        let ctx = open_plain(Path::new(&config), true);
        bertline::tokenize::run_vocab(&ctx, &NoProgress).unwrap();
    }
}

#[test]
fn a_kill_while_publishing_leaves_the_stage_stale() {
    let tmp = tempfile::tempdir().unwrap();
    let config = project(tmp.path(), |t| t);
    let mut before = {
        let ctx = open_plain(&config, false);
        bertline::tokenize::run_vocab(&ctx, &NoProgress)
            .unwrap()
            .record()
            .clone()
    };
    for point in ["publish", "commit"] {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "forced_vocab_child",
                "--ignored",
                "--test-threads=1",
            ])
            .env("BERTLINE_VOCAB_CHILD", &config)
            .env("BERTLINE_CRASH_AT", point)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(!status.success(), "the child was not stopped at {point}");
        let ctx = open_plain(&config, false);
        // The old record is still the latest, but the stage no longer claims to be fresh.
        assert_eq!(ctx.manifest.stage("vocab").unwrap().unwrap(), before);
        match ctx.freshness(Stage::Vocab).unwrap() {
            Freshness::Stale(why) => assert!(why.contains("killed while moving"), "{why}"),
            other => panic!("after a kill at {point}: expected stale, got {other}"),
        }
        assert!(matches!(
            ctx.freshness(Stage::Pairs).unwrap(),
            Freshness::Missing(_)
        ));
        // The next plain run reruns it and the record matches the files again.
        let rerun = bertline::tokenize::run_vocab(&ctx, &NoProgress).unwrap();
        assert!(!rerun.skipped(), "after a kill at {point}");
        for a in &rerun.record().artifacts {
            let (hash, bytes) = bertline::durable::hash_file(&ctx.path_of(a)).unwrap();
            assert_eq!((hash, bytes), (a.blake3.clone(), a.bytes));
        }
        assert_eq!(ctx.freshness(Stage::Vocab).unwrap(), Freshness::Fresh);
        before = rerun.record().clone();
    }
}

/// A shard records what it was made from, not every input of its stage (which would grow
/// as shards x inputs): a pairs shard its input file, a mask shard its pairs shard.
#[test]
fn shards_record_their_own_sources() {
    let tmp = tempfile::tempdir().unwrap();
    let config = project(tmp.path(), |t| t);
    let ctx = open(&config, false);
    run_data_stages(&ctx);
    let pairs = ctx.manifest.stage("pairs").unwrap().unwrap();
    let mask = ctx.manifest.stage("mask").unwrap().unwrap();
    let corpus: Vec<&String> = pairs
        .inputs
        .iter()
        .map(|i| &i.id)
        .filter(|id| id.starts_with("file:"))
        .collect();
    assert_eq!(corpus.len(), 1, "{corpus:?}");
    assert!(!pairs.artifacts.is_empty());
    for a in &pairs.artifacts {
        assert_eq!(a.inputs, vec![corpus[0].clone()], "{}", a.id);
    }
    let pairs_ids: Vec<&String> = pairs.artifacts.iter().map(|a| &a.id).collect();
    let mut used = Vec::new();
    for a in &mask.artifacts {
        assert_eq!(a.inputs.len(), 1, "{}: {:?}", a.id, a.inputs);
        assert!(
            pairs_ids.contains(&&a.inputs[0]),
            "{}: {:?}",
            a.id,
            a.inputs
        );
        used.push(a.inputs[0].clone());
    }
    used.dedup();
    assert_eq!(used.len(), pairs_ids.len(), "every pairs shard is masked");
}

/// Input files are hashed once and then recognised by their stamp (size, mtime, ctime,
/// inode) across processes: a stage over a large corpus does not re-read it to find it
/// unchanged. A same-size rewrite with the old mtime put back still changes the ctime, and
/// `--verify` always hashes.
#[test]
fn input_hashes_are_cached_by_stamp_and_verify_bypasses_the_cache() {
    use bertline::manifest::InputStamp;
    let tmp = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let corpus = tmp.path().join("corpus.txt");
    std::fs::copy(repo.join("datasets/pretrain/gutenberg_pg11.txt"), &corpus).unwrap();
    let config = project(tmp.path(), |t| {
        t.replace(
            &format!("{:?}", repo.join("datasets/pretrain/gutenberg_pg11.txt")),
            &format!("{corpus:?}"),
        )
    });
    // A file changed in the last 2 s is hashed every time, never remembered (it could change
    // again within the clock's resolution): let the copy settle.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let ctx = open_plain(&config, false);
    let files = bertline::stage::corpus_files(&ctx.loaded).unwrap();
    assert_eq!(files, vec![corpus.clone()]);
    let key = corpus.to_string_lossy().into_owned();
    assert_eq!(ctx.manifest.input_stamp(&key).unwrap(), None);
    bertline::tokenize::run_vocab(&ctx, &NoProgress).unwrap();
    let stamp = ctx
        .manifest
        .input_stamp(&key)
        .unwrap()
        .expect("stamp remembered");
    let bytes = std::fs::read(&corpus).unwrap();
    assert_eq!(stamp.blake3, blake3::hash(&bytes).to_hex().to_string());
    assert_eq!(stamp.bytes, bytes.len() as u64);

    // The remembered hash is believed while the stamp matches: a wrong one planted under the
    // file's stamp makes the stage stale in a new process (the file was not re-read)...
    let planted = InputStamp {
        blake3: "0".repeat(64),
        ..stamp.clone()
    };
    ctx.manifest.remember_input_stamp(&key, &planted).unwrap();
    drop(ctx);
    let ctx = open_plain(&config, false);
    match ctx.freshness(Stage::Vocab).unwrap() {
        Freshness::Stale(why) => assert!(why.contains("corpus.txt"), "{why}"),
        other => panic!("expected stale from the planted hash, got {other}"),
    }
    drop(ctx);
    // ...and `--verify` re-hashes, finds the file unchanged, and the stage fresh.
    let ctx = open(&config, false);
    assert_eq!(ctx.freshness(Stage::Vocab).unwrap(), Freshness::Fresh);
    ctx.manifest.remember_input_stamp(&key, &stamp).unwrap();
    drop(ctx);

    // A same-size change with the mtime put back: the ctime moved, so the file is hashed.
    let modified = std::fs::metadata(&corpus).unwrap().modified().unwrap();
    let mut changed = bytes.clone();
    let at = changed.iter().position(|&b| b == b'a').unwrap();
    changed[at] = b'b';
    std::fs::write(&corpus, &changed).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&corpus)
        .unwrap()
        .set_modified(modified)
        .unwrap();
    let ctx = open_plain(&config, false);
    match ctx.freshness(Stage::Vocab).unwrap() {
        Freshness::Stale(why) => assert!(why.contains("corpus.txt"), "{why}"),
        other => panic!("expected stale after a same-size change, got {other}"),
    }
}

/// A run directory of a version that kept a stage's artifacts inside its record (and an
/// `artifacts` tree by id) reads the same, and its first new commit drops the old tree.
#[test]
fn records_of_the_older_layout_read_back_with_their_artifacts() {
    use bertline::manifest::Manifest;
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let old = record("vocab", 1.0);
    let mut inline = serde_json::to_value(&old).unwrap();
    inline["artifacts"] = serde_json::to_value(&old.artifacts).unwrap();
    {
        let db = sled::Config::new()
            .path(run.join("manifest.sled"))
            .mode(sled::Mode::LowSpace)
            .open()
            .unwrap();
        let json = serde_json::to_vec(&inline).unwrap();
        db.open_tree("stages")
            .unwrap()
            .insert("vocab", json.clone())
            .unwrap();
        db.open_tree("history")
            .unwrap()
            .insert("1/vocab", json)
            .unwrap();
        let artifact = serde_json::to_vec(&old.artifacts[0]).unwrap();
        db.open_tree("artifacts")
            .unwrap()
            .insert("vocab/a.txt", artifact)
            .unwrap();
        db.flush().unwrap();
    }
    let m = Manifest::open(&run).unwrap();
    assert_eq!(m.stage("vocab").unwrap().unwrap(), old);
    assert_eq!(m.history().unwrap()[0].artifact_count, 1);
    m.commit(&record("pairs", 2.0)).unwrap();
    assert_eq!(m.stage("vocab").unwrap().unwrap(), old);
    drop(m);
    let db = sled::open(run.join("manifest.sled")).unwrap();
    let names: Vec<Vec<u8>> = db.tree_names().into_iter().map(|n| n.to_vec()).collect();
    assert!(!names.contains(&b"artifacts".to_vec()), "{names:?}");
    // The old history entry is now a history record, the same as read before.
    let entry = db
        .open_tree("history")
        .unwrap()
        .get("1/vocab")
        .unwrap()
        .unwrap();
    let entry: bertline::manifest::HistoryRecord = serde_json::from_slice(&entry).unwrap();
    assert_eq!(entry, bertline::manifest::HistoryRecord::from(&old));
}

/// A stage record whose artifact list is not the one recorded (a line lost, a record changed
/// with the count kept, the file gone) is stale, naming what is missing, never fresh on the
/// records that are there; the next run of the stage repairs it.
#[test]
fn a_record_whose_artifact_list_changed_or_went_is_stale() {
    let tmp = tempfile::tempdir().unwrap();
    let config = project(tmp.path(), |t| t);
    {
        let ctx = open(&config, false);
        bertline::tokenize::run_vocab(&ctx, &NoProgress).unwrap();
        assert_eq!(ctx.freshness(Stage::Vocab).unwrap(), Freshness::Fresh);
    }
    let lists = tmp
        .path()
        .join("run")
        .join(bertline::manifest::ARTIFACT_LISTS);
    let list = std::fs::read_dir(&lists)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let original = std::fs::read_to_string(&list).unwrap();
    assert_eq!(original.lines().count(), 2);
    let first_line = original.lines().next().unwrap();
    let blake3 = serde_json::from_str::<serde_json::Value>(first_line).unwrap()["blake3"]
        .as_str()
        .unwrap()
        .to_string();
    let edits: [(&str, Option<String>); 3] = [
        ("a line lost", Some(format!("{first_line}\n"))),
        (
            "a hash changed",
            Some(original.replace(&blake3, &"0".repeat(64))),
        ),
        ("the list gone", None),
    ];
    for (what, content) in edits {
        match &content {
            Some(text) => std::fs::write(&list, text).unwrap(),
            None => std::fs::remove_file(&list).unwrap(),
        }
        let ctx = open(&config, false);
        match ctx.freshness(Stage::Vocab).unwrap() {
            Freshness::Stale(why) => {
                // A changed hash is met (and named) before the list's own hash is checked.
                let expected = match what {
                    "a hash changed" => "artifact vocab/vocab.txt changed on disk",
                    _ => "list of 2 artifact records is missing or not the one recorded",
                };
                assert!(why.contains(expected), "{what}: {why}")
            }
            other => panic!("{what}: expected stale, got {other}"),
        }
        drop(ctx);
        std::fs::write(&list, &original).unwrap();
        assert_eq!(
            open(&config, false).freshness(Stage::Vocab).unwrap(),
            Freshness::Fresh
        );
    }
    // A rerun (not forced) writes a new list, and only it is left.
    std::fs::remove_file(&list).unwrap();
    let ctx = open(&config, false);
    assert!(!bertline::tokenize::run_vocab(&ctx, &NoProgress)
        .unwrap()
        .skipped());
    assert_eq!(ctx.freshness(Stage::Vocab).unwrap(), Freshness::Fresh);
    assert_eq!(std::fs::read_dir(&lists).unwrap().count(), 1);
}

/// A run directory of the version that kept artifact records in sled, 16 to a value under
/// `stage_artifacts/<stage>/<generation>/<chunk>`, reads the same; the stage's next commit
/// removes its chunks, and the tree once it is empty.
#[test]
fn records_of_the_chunk_layout_read_back_with_their_artifacts() {
    use bertline::manifest::Manifest;
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    let old = many(20, 1.0);
    {
        let db = sled::Config::new()
            .path(run.join("manifest.sled"))
            .mode(sled::Mode::LowSpace)
            .open()
            .unwrap();
        let mut stored = serde_json::to_value(&old).unwrap();
        stored["artifact_count"] = 20.into();
        stored["artifact_generation"] = 7.into();
        let chunks = db.open_tree("stage_artifacts").unwrap();
        for (i, chunk) in old.artifacts.chunks(16).enumerate() {
            let key = format!("mask/{:016x}/{i:08x}", 7);
            chunks
                .insert(key, serde_json::to_vec(chunk).unwrap())
                .unwrap();
        }
        db.open_tree("stages")
            .unwrap()
            .insert("mask", serde_json::to_vec(&stored).unwrap())
            .unwrap();
        db.flush().unwrap();
    }
    let m = Manifest::open(&run).unwrap();
    assert_eq!(m.stage("mask").unwrap().unwrap(), old);
    let new = many(3, 2.0);
    m.commit(&new).unwrap();
    assert_eq!(m.stage("mask").unwrap().unwrap(), new);
    drop(m);
    let db = sled::open(run.join("manifest.sled")).unwrap();
    let names: Vec<Vec<u8>> = db.tree_names().into_iter().map(|n| n.to_vec()).collect();
    assert!(!names.contains(&b"stage_artifacts".to_vec()), "{names:?}");
    drop(db);
    assert_eq!(artifact_lists(&run, "mask"), [3]);
}
