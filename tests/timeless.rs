//! scripts/timeless.py, the comparison of `just chaos`: files that differ only in wall-clock
//! fields digest the same, a different result does not. Needs python3 (skipped without it).

mod script_common;
use script_common::run_script;

/// `timeless.py DIR STAGE` on `files` (path under DIR, content): its "digest  path" lines.
fn digests(files: &[(&str, &str)], stage: &str) -> Option<Vec<String>> {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let out = run_script(
        "timeless.py",
        [dir.path().as_os_str(), std::ffi::OsStr::new(stage)],
    )?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect(),
    )
}

#[test]
fn json_results_compare_without_their_timings() {
    let result = |seconds: f64, f1: f64| {
        format!(
            r#"{{"task":"mrpc","train_seconds":{seconds},"dev":{{"f1":{f1},"examples_per_s":{}}}}}"#,
            1000.0 / seconds
        )
    };
    let log = |elapsed: f64, loss: f64| {
        format!("{{\"step\":5,\"loss\":{loss},\"elapsed_s\":{elapsed}}}\n{{\"step\":10,\"loss\":7.1,\"tokens_per_s\":{}}}\n", 1.0 / elapsed)
    };
    let run = |seconds: f64, f1: f64, loss: f64| {
        digests(
            &[
                ("finetune/mrpc/pretrained-seed1.json", &result(seconds, f1)),
                ("finetune/train-log.jsonl", &log(seconds, loss)),
                ("finetune/submission/MRPC.tsv", "index\tprediction\n0\t1\n"),
            ],
            "finetune",
        )
    };
    let Some(first) = run(0.53, 75.0, 7.6) else {
        return;
    };
    assert_eq!(first.len(), 3);
    assert!(first[0].ends_with("  finetune/mrpc/pretrained-seed1.json"));
    assert_eq!(run(0.61, 75.0, 7.6).unwrap(), first);
    let score = run(0.53, 75.5, 7.6).unwrap();
    assert_ne!(score[0], first[0]);
    assert_eq!(score[1..], first[1..]);
    let loss = run(0.53, 75.0, 7.7).unwrap();
    assert_ne!(loss[2], first[2]);
    assert_eq!(loss[..2], first[..2]);
}

#[test]
fn reports_compare_without_durations_time_stamps_and_run_history() {
    // `wall`: a stage's wall time as the report writes it, in ms under a second, else in s
    // (a rerun that resumed from a checkpoint can take the other unit).
    let report = |when: &str,
                  ms: u32,
                  wall: &str,
                  rate: &str,
                  resumed: u32,
                  loss: &str,
                  history: usize| {
        let mut md = format!(
            "# bertline default run\n\nRun ./runs/tiny · 5 of 5 stages recorded · stage wall time {ms} ms\n\n\
             ## Lineage\n\n| Stage | Status | Finished (UTC) | Wall time | Throughput | Fingerprint |\n\
             | pretrain | ok | {when} | {wall} | {rate} tokens/s | 6b867cd4c1a4 |\n\n\
             | pretrain/metrics.jsonl | metrics | {:012x} | – | 1.9 KiB |\n\
             | pretrain/model.safetensors | model | 0123456789ab | – | 734.9 KiB |\n\n\
             | resumed_from | {resumed} |\n| train.loss | {loss} |\n| paper's claim | SST-2 |\n\n\
             ## Machine and wall times\n\n| vocab | {ms} ms |\n\n## Run history\n\n",
            ms * 7919
        );
        for _ in 0..history {
            md.push_str(&format!("| {when} | pretrain | {ms} ms |\n"));
        }
        digests(&[("report/report.md", &md)], "report").map(|d| d[0].clone())
    };
    let Some(first) = report("2026-11-30 10:06:42", 238, "1.3 s", "44.5k", 0, "7.4402", 5) else {
        return;
    };
    assert_eq!(
        report(
            "2026-11-30 11:02:17",
            292,
            "840 ms",
            "37.6",
            20,
            "7.4402",
            125
        ),
        Some(first.clone())
    );
    assert_ne!(
        report("2026-11-30 10:06:42", 238, "1.3 s", "44.5k", 0, "7.4403", 5),
        Some(first)
    );
}
