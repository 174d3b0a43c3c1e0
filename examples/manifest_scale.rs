//! Memory of the manifest as a stage records more shards: builds a `mask` stage record of N
//! artifact records (synthetic: the sizes of real ones), commits it three times to one new
//! manifest and reads it back after each, printing the process's RSS at each step. Peak RSS
//! under `/usr/bin/time -f %M`:
//!
//!     cargo build --release --example manifest_scale
//!     for n in 2500 25000 100000; do /usr/bin/time -f "peak %M KB" \
//!         target/release/examples/manifest_scale $n; done
use bertline::manifest::*;
fn rss() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<f64>()
        .unwrap()
        / 1024.0
}
fn main() {
    let n: usize = std::env::args().nth(1).unwrap().parse().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let one = ArtifactRecord {
        id: String::new(),
        stage: "mask".into(),
        kind: "instances-train".into(),
        path: String::new(),
        blake3: "f".repeat(64),
        bytes: 1 << 20,
        mtime_ns: Some(1_700_000_000_000_000_000),
        rows: 4096,
        schema_version: 1,
        config_hash: "c".repeat(64),
        inputs: vec!["pairs/train/shard-00001.arrow".into()],
        code_version: "0.1.0+abcdef".into(),
        started_at: 1.0,
        finished_at: 2.0,
        shard: None,
    };
    let record = |f: f64| StageRecord {
        stage: "mask".into(),
        profile: "p".into(),
        fingerprint: "f".repeat(64),
        config_hash: "c".repeat(64),
        config: serde_json::json!({}),
        inputs: vec![],
        artifacts: (0..n)
            .map(|i| ArtifactRecord {
                id: format!("mask/train/shard-{i:08}.arrow"),
                path: format!("mask/train/shard-{i:08}.arrow"),
                ..one.clone()
            })
            .collect(),
        artifact_count: n,
        metrics: serde_json::json!({}),
        code_version: "x".into(),
        schema_version: 1,
        started_at: 0.0,
        finished_at: f,
    };
    let m = Manifest::open(dir.path()).unwrap();
    for round in 0..3 {
        let r = record(round as f64);
        let before = rss();
        m.commit(&r).unwrap();
        let after_commit = rss();
        drop(r);
        let loaded = m.stage("mask").unwrap().unwrap();
        let after_load = rss();
        assert_eq!(loaded.artifacts.len(), n);
        drop(loaded);
        println!("n={n} round {round}: before commit {before:.1} MB, after commit {after_commit:.1}, after load {after_load:.1}, after drop {:.1}", rss());
    }
}
