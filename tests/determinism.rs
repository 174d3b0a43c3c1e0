//! Deterministic from corpus to scores on the CPU: the vocabulary is byte-identical across
//! processes and thread counts, safetensors headers are canonical, and the `tiny` profile
//! run twice in two run directories records the same hash for every artifact.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bertline::config::parse_config;
use bertline::progress::NoProgress;
use bertline::stage::{StageCtx, StageOptions};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shipped corpus's lines (the default profile's `datasets/pretrain/*.txt`).
fn shipped_corpus() -> Vec<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("datasets/pretrain"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect()
}

/// Runs in a child process (see below): trains the default profile's vocabulary on a rayon
/// pool of `BERTLINE_VOCAB_THREADS` threads and prints the hashes of both files.
#[test]
#[ignore = "helper: run by vocab_is_byte_identical_across_processes_and_thread_counts"]
fn train_vocab_child() {
    let Ok(threads) = std::env::var("BERTLINE_VOCAB_THREADS") else {
        return;
    };
    let cfg = parse_config(include_str!("../pipeline.toml"), "default").unwrap();
    let texts = shipped_corpus();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads.parse().unwrap())
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    pool.install(|| {
        let lines = texts
            .iter()
            .flat_map(|t| t.lines())
            .filter(|l| !l.trim().is_empty());
        let wp =
            bertline::tokenize::train_wordpiece(&cfg.vocab, lines, Path::new("corpus")).unwrap();
        wp.write_vocab_txt(&dir.path().join("vocab.txt")).unwrap();
        wp.write_tokenizer_json(&dir.path().join("tokenizer.json"))
            .unwrap();
    });
    for f in ["vocab.txt", "tokenizer.json"] {
        let (hash, _) = bertline::durable::hash_file(&dir.path().join(f)).unwrap();
        println!("HASH {f} {hash}");
    }
}

#[test]
fn vocab_is_byte_identical_across_processes_and_thread_counts() {
    let runs: Vec<(usize, Vec<String>)> = [1usize, 2, 2, 1]
        .iter()
        .map(|&threads| {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "train_vocab_child",
                    "--ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("BERTLINE_VOCAB_THREADS", threads.to_string())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let hashes: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.find("HASH ").map(|i| l[i..].to_string()))
                .collect();
            assert_eq!(hashes.len(), 2, "{hashes:?}");
            (threads, hashes)
        })
        .collect();
    for (threads, hashes) in &runs[1..] {
        assert_eq!(
            hashes, &runs[0].1,
            "a run on {threads} threads wrote other bytes than the first (1 thread)"
        );
    }
}

#[test]
fn safetensors_headers_are_canonical() {
    use bertline::model::export::{read_safetensors, write_safetensors, TensorMap};
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = TensorMap::new();
    tensors.insert("b.weight".into(), (vec![2], vec![1.0, 2.0]));
    tensors.insert("a.bias".into(), (vec![1], vec![3.0]));
    let metadata: std::collections::HashMap<String, String> = (0..24)
        .map(|i| (format!("key{i}"), format!("value{i}")))
        .collect();
    // HashMaps iterate in another order in every process and for every instance: many
    // instances give many orders, and every file must come out the same.
    let mut files = Vec::new();
    for i in 0..8 {
        let path = dir.path().join(format!("{i}.safetensors"));
        let shuffled: std::collections::HashMap<String, String> =
            metadata.clone().into_iter().collect();
        write_safetensors(&path, &tensors, shuffled).unwrap();
        files.push(std::fs::read(&path).unwrap());
    }
    assert!(files.iter().all(|f| f == &files[0]));
    let len = u64::from_le_bytes(files[0][..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&files[0][8..8 + len]).unwrap();
    let keys: Vec<usize> = (0..24)
        .map(|i| header.find(&format!("\"key{i}\"")).unwrap())
        .collect();
    let mut names: Vec<String> = (0..24).map(|i| format!("key{i}")).collect();
    names.sort();
    let positions: Vec<usize> = names
        .iter()
        .map(|n| header.find(&format!("\"{n}\"")).unwrap())
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{header}");
    assert_eq!(keys.len(), 24);
    // And it reads back.
    let (read, meta) = read_safetensors(&dir.path().join("0.safetensors")).unwrap();
    assert_eq!(read, tensors);
    assert_eq!(meta, metadata);
}

/// The tiny profile in `dir`, data linked in.
fn project(dir: &Path) -> PathBuf {
    let link = dir.join("datasets");
    std::os::unix::fs::symlink(repo().join("datasets"), &link).unwrap();
    let path = dir.join("pipeline.toml");
    std::fs::copy(repo().join("pipeline.toml"), &path).unwrap();
    path
}

/// Every recorded artifact after the whole tiny pipeline: id -> (hash, path).
fn tiny_artifacts(dir: &Path) -> BTreeMap<String, (String, PathBuf)> {
    let ctx = StageCtx::open(StageOptions {
        config: project(dir),
        profile: "tiny".into(),
        force: false,
        verify: false,
    })
    .unwrap();
    bertline::tokenize::run_vocab(&ctx, &NoProgress).unwrap();
    bertline::pairs::run(&ctx, &NoProgress).unwrap();
    bertline::mask::run(&ctx, &NoProgress).unwrap();
    bertline::pretrain::run(&ctx, &NoProgress).unwrap();
    bertline::finetune::run(&ctx, &NoProgress).unwrap();
    ctx.manifest
        .stages()
        .unwrap()
        .iter()
        .flat_map(|r| r.artifacts.iter())
        .map(|a| (a.id.clone(), (a.blake3.clone(), ctx.path_of(a))))
        .collect()
}

/// Keys holding wall-clock measurements (seconds, throughputs) in JSON outputs.
const WALL_CLOCK_KEYS: &[&str] = &[
    "seconds",
    "elapsed_s",
    "train_seconds",
    "examples_per_s",
    "eval_examples_per_s",
    "tokens_per_s",
];

fn without_wall_clock(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            map.retain(|k, _| !WALL_CLOCK_KEYS.contains(&k.as_str()));
            map.values_mut().for_each(without_wall_clock);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(without_wall_clock),
        _ => {}
    }
}

/// A JSON or JSONL file's values with the wall-clock keys removed.
fn timeless(path: &Path) -> Option<Vec<serde_json::Value>> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut values: Vec<serde_json::Value> = match serde_json::from_str(&text) {
        Ok(v) => vec![v],
        Err(_) => text
            .lines()
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()
            .ok()?,
    };
    values.iter_mut().for_each(without_wall_clock);
    Some(values)
}

#[test]
fn tiny_profile_twice_records_the_same_hashes() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = tiny_artifacts(a.path());
    let second = tiny_artifacts(b.path());
    assert_eq!(
        first.keys().collect::<Vec<_>>(),
        second.keys().collect::<Vec<_>>()
    );
    let mut timed = Vec::new();
    let mut differ = Vec::new();
    for (id, (hash, path)) in &first {
        let (other_hash, other_path) = &second[id];
        if hash == other_hash {
            continue;
        }
        // Files that record timings next to results: equal once the timings are removed.
        match (timeless(path), timeless(other_path)) {
            (Some(x), Some(y)) if x == y => timed.push(id.as_str()),
            _ => differ.push(id.as_str()),
        }
    }
    eprintln!(
        "{} artifacts: {} byte-identical, {} equal but for wall-clock fields ({timed:?})",
        first.len(),
        first.len() - timed.len() - differ.len(),
        timed.len()
    );
    assert!(
        differ.is_empty(),
        "{} of {} artifacts differ: {differ:?}",
        differ.len(),
        first.len()
    );
    // Only JSON results and logs may carry timings: vocabulary, shards, weights and
    // optimizer state are byte-identical.
    assert!(
        timed
            .iter()
            .all(|id| id.ends_with(".json") || id.ends_with(".jsonl")),
        "{timed:?}"
    );
    assert!(first.len() >= 10, "{first:?}");
}

/// Tokens per word and [UNK] share of `wp` on `lines`.
fn tokenization_stats(wp: &bertline::tokenize::WordPiece, lines: &[&str]) -> (f64, f64) {
    let words: usize = bertline::vocab::count_words(lines, true)
        .unwrap()
        .iter()
        .map(|(_, n)| *n as usize)
        .sum();
    let ids = wp.encode_lines(lines).unwrap();
    let tokens: usize = ids.iter().map(Vec::len).sum();
    let unk = ids.iter().flatten().filter(|&&id| id == 1).count();
    (tokens as f64 / words as f64, unk as f64 / tokens as f64)
}

/// The library's trainer against HF's `WordPieceTrainer` on the shipped corpus at the
/// default profile's settings: the same tokens per word within 1% and no more [UNK]s.
#[test]
fn vocab_tokenizes_the_shipped_corpus_like_hfs_trainer() {
    let cfg = parse_config(include_str!("../pipeline.toml"), "default").unwrap();
    let texts = shipped_corpus();
    let lines: Vec<&str> = texts
        .iter()
        .flat_map(|t| t.lines())
        .filter(|l| !l.trim().is_empty())
        .collect();
    let ours =
        bertline::tokenize::train_wordpiece(&cfg.vocab, lines.iter().copied(), Path::new("corpus"))
            .unwrap();
    let hf = bertline::tokenize::train_wordpiece_hf(
        &cfg.vocab,
        lines.iter().copied(),
        Path::new("corpus"),
    )
    .unwrap();
    let (ours_tpw, ours_unk) = tokenization_stats(&ours, &lines);
    let (hf_tpw, hf_unk) = tokenization_stats(&hf, &lines);
    let shared = (0..ours.vocab_size() as u32)
        .filter(|&id| hf.id(ours.token(id)).is_some())
        .count();
    eprintln!(
        "tokens/word: ours {ours_tpw:.4}, HF {hf_tpw:.4}; [UNK] share: ours {ours_unk:.6}, HF {hf_unk:.6}; {shared} of {} tokens in both",
        ours.vocab_size()
    );
    assert!(
        (ours_tpw / hf_tpw - 1.0).abs() < 0.01,
        "tokens/word ours {ours_tpw} vs HF {hf_tpw}"
    );
    assert!(
        ours_unk <= hf_unk + 1e-6,
        "[UNK] ours {ours_unk} vs HF {hf_unk}"
    );
}
