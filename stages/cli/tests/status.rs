//! The `bertline` binary takes the common flags before or after its subcommand
//! (`just status` passes them after), and `status` lists every stage of a new run as missing.

use std::path::Path;
use std::process::Command;

fn new_project(dir: &Path) -> std::path::PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::os::unix::fs::symlink(repo.join("datasets"), dir.join("datasets")).unwrap();
    let config = dir.join("pipeline.toml");
    std::fs::copy(repo.join("pipeline.toml"), &config).unwrap();
    config
}

fn status(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bertline"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn status_takes_the_flags_after_or_before_the_subcommand() {
    let tmp = tempfile::tempdir().unwrap();
    let config = new_project(tmp.path());
    let config = config.to_str().unwrap();
    for args in [
        vec!["status", "--config", config, "--profile", "tiny"],
        vec!["--config", config, "--profile", "tiny", "status"],
    ] {
        let (ok, stdout, stderr) = status(&args);
        assert!(ok, "{args:?}: {stderr}");
        assert!(stdout.contains("(profile tiny)"), "{stdout}");
        for stage in ["vocab", "pairs", "mask", "pretrain", "finetune", "report"] {
            let line = stdout
                .lines()
                .find(|l| l.starts_with(stage))
                .unwrap_or_else(|| panic!("no {stage} line in {stdout}"));
            assert!(line.contains("missing"), "{line}");
        }
    }
}

#[test]
fn status_with_a_missing_config_is_a_one_line_error() {
    let (ok, _, stderr) = status(&["status", "--config", "/nonexistent/pipeline.toml"]);
    assert!(!ok);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("/nonexistent/pipeline.toml"), "{stderr}");
}

#[test]
fn status_into_a_closed_pipe_ends_quietly() {
    // `bertline status | head -1`: the reader is gone before the first line is written.
    use std::os::unix::process::ExitStatusExt;
    let tmp = tempfile::tempdir().unwrap();
    let config = new_project(tmp.path());
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_bertline"))
        .args(["status", "--config", config.to_str().unwrap()])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}", out.status);
}

/// The output of `bertline status --config CONFIG --profile tiny` run in `cwd`.
fn status_in(cwd: &Path, config: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_bertline"))
        .args([
            "status",
            "--config",
            config.to_str().unwrap(),
            "--profile",
            "tiny",
        ])
        .current_dir(cwd)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.into_owned()
}

/// vocab run by the absolute path of pipeline.toml (as a script would call it), then
/// `status` by a relative path, by the absolute one and through a symlink to the project
/// directory: fresh every time, whether `corpus.input` is relative or absolute.
#[test]
fn same_config_by_relative_and_absolute_path_gives_the_same_fingerprints() {
    for absolute_input in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let config = new_project(tmp.path());
        if absolute_input {
            let input = tmp.path().join("datasets/pretrain/gutenberg_pg11.txt");
            let text = std::fs::read_to_string(&config).unwrap().replace(
                "input = [\"datasets/pretrain/gutenberg_pg11.txt\"]",
                &format!("input = [{:?}]", input.to_str().unwrap()),
            );
            assert!(text.contains(input.to_str().unwrap()));
            std::fs::write(&config, text).unwrap();
        }
        let ctx = bertline::stage::StageCtx::open(bertline::stage::StageOptions {
            config: config.clone(),
            profile: "tiny".into(),
            force: false,
            verify: false,
        })
        .unwrap();
        bertline::tokenize::run_vocab(&ctx, &bertline::progress::NoProgress).unwrap();
        drop(ctx);
        let link = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(tmp.path(), link.path().join("project")).unwrap();
        for (cwd, config) in [
            (tmp.path(), Path::new("pipeline.toml")),
            (tmp.path(), Path::new("./pipeline.toml")),
            (link.path(), &link.path().join("project/pipeline.toml")),
            (link.path(), Path::new("project/pipeline.toml")),
            (Path::new("/"), &config),
        ] {
            let stdout = status_in(cwd, config);
            let vocab = stdout.lines().find(|l| l.starts_with("vocab")).unwrap();
            assert!(
                vocab.contains("fresh"),
                "input absolute: {absolute_input}, --config {config:?} from {cwd:?}: {vocab}"
            );
            // The run directory is shown as the config names it, so reports written by a
            // relative --config in two copies of a project are the same.
            if config.is_relative() && cwd == tmp.path() {
                let first = stdout.lines().next().unwrap();
                assert!(first.starts_with("run ./runs/tiny"), "{first}");
            }
        }
    }
}

#[test]
fn an_os_error_is_printed_once() {
    // The run directory would have to be created inside a file.
    let tmp = tempfile::tempdir().unwrap();
    let config = new_project(tmp.path());
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("dir = \"runs/tiny\"", "dir = \"pipeline.toml/run\"");
    std::fs::write(&config, text).unwrap();
    let (ok, _, stderr) = status(&[
        "status",
        "--config",
        config.to_str().unwrap(),
        "--profile",
        "tiny",
    ]);
    assert!(!ok);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("pipeline.toml/run"), "{stderr}");
    assert_eq!(stderr.matches("os error 20").count(), 1, "{stderr}");
}

#[test]
fn status_and_clean_work_after_a_killed_open() {
    let tmp = tempfile::tempdir().unwrap();
    let config = new_project(tmp.path());
    let config = config.to_str().unwrap();
    let args = ["status", "--config", config, "--profile", "tiny"];
    assert!(status(&args).0);
    assert!(status(&args).0); // the second open writes a snapshot
    let db = tmp.path().join("runs/tiny/manifest.sled");
    let snap = std::fs::read_dir(&db)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("snap."))
        .max()
        .expect("a snapshot");
    // What sled leaves when the open is killed while it writes the next snapshot.
    std::fs::write(db.join(format!("{snap}.generating")), [0u8; 7]).unwrap();
    let (ok, stdout, stderr) = status(&args);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("missing"), "{stdout}");
    std::fs::write(db.join(format!("{snap}.generating")), [0u8; 7]).unwrap();
    let (ok, stdout, stderr) = status(&["clean", "--yes", "--config", config, "--profile", "tiny"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("deleted"), "{stdout}");
    assert!(!tmp.path().join("runs/tiny").exists());
}
