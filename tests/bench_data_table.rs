//! scripts/bench_data.py, the table printer of `just bench-data`, on sample rows (Google's row
//! first, as a file may hold them): the exact expected table, and its derived numbers checked
//! by hand. Needs python3 (skipped without it); TensorFlow and pyarrow only read outputs back
//! and are not needed here.

mod script_common;
use script_common::{repo, run_script};

#[test]
fn bench_data_table_prints_the_expected_table_for_sample_rows() {
    let fixtures = repo("tests/fixtures/bench_data");
    let table = [
        "table".into(),
        fixtures.join("sample.jsonl").into_os_string(),
    ];
    let Some(output) = run_script("bench_data.py", table) else {
        return;
    };
    assert!(
        output.status.success(),
        "bench_data.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let got = String::from_utf8(output.stdout).unwrap();
    let want = std::fs::read_to_string(fixtures.join("expected.txt")).unwrap();
    assert_eq!(got, want);
    // By hand: 100,000 instances in 4 s against 95,000 in 95 s is 25,000 against 1,000 a
    // second (25x); per CPU-second 20,000 against 1,250 (16x); 150 of 950 MB is 0.16x;
    // 11,000,000 tokens over 100,000 instances is 110 each.
    assert!(got.contains("instances/s                            25000          1000     25.0x"));
    assert!(got.contains("instances/CPU-s                        20000          1250     16.0x"));
    assert!(got.contains("peak RSS MB                              150           950     0.16x"));
    assert!(got.contains("tokens per instance                   110.00        111.00"));
    assert!(got.contains("random-next fraction                  0.5500        0.5000"));
    assert!(got.ends_with("NOT met (25.0x); < 200 MB peak RSS: met (150 MB)\n"));
}

#[test]
fn bench_data_table_rejects_a_missing_file_with_an_error() {
    let missing = repo("tests/fixtures/bench_data/no-such-file.jsonl");
    let Some(output) = run_script("bench_data.py", ["table".into(), missing.into_os_string()])
    else {
        return;
    };
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no-such-file.jsonl"));
}
