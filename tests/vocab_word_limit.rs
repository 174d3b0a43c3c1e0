//! `vocab.max_words` on the shipped corpus: at the default the `vocab` stage counts every
//! word exactly and trains the same vocabulary as the in-memory trainer; below the corpus's
//! distinct words it holds at most that many, drops only words counted at most its floor,
//! loses no occurrence from the books (kept + dropped = all), keeps the frequent words, and
//! says what it dropped in its metrics, which the report reads back.

use std::path::{Path, PathBuf};

use bertline::config::parse_config;
use bertline::corpus::corpus_blocks;
use bertline::progress::NoProgress;
use bertline::report::{render_markdown, ReportData, VocabDropped};
use bertline::stage::StageCtx;
use bertline::tokenize::{count_corpus_words, run_vocab, train_wordpiece};
use bertline::vocab::count_words;

mod stages_common;
use stages_common::open;

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The shipped pre-training files, in name order.
fn shipped_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo("datasets/pretrain"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "{files:?}");
    files
}

/// Every word of `files` counted at once, as the in-memory trainer counts them.
fn exact_counts(files: &[PathBuf]) -> Vec<(String, u64)> {
    let texts: Vec<String> = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    let lines: Vec<&str> = texts
        .iter()
        .flat_map(|t| t.lines())
        .filter(|l| !l.trim().is_empty())
        .collect();
    count_words(&lines, true).unwrap()
}

/// A project on the shipped corpus with the default profile's settings and `max_words`.
fn project(dir: &Path, max_words: Option<usize>) -> PathBuf {
    let mut text = include_str!("../pipeline.toml")
        .replace(
            "dir = \"runs/default\"",
            &format!("dir = {:?}", dir.join("run")),
        )
        .replace(
            "input = [\"datasets/pretrain/*.txt\"]",
            &format!("input = [{:?}]", repo("datasets/pretrain/*.txt")),
        );
    if let Some(n) = max_words {
        text = text.replace("max_words = 500000 ", &format!("max_words = {n} "));
    }
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The vocab stage run on the shipped corpus with `max_words` (the default when `None`):
/// the opened run and the stage's metrics.
fn run_vocab_stage(dir: &Path, max_words: Option<usize>) -> (StageCtx, serde_json::Value) {
    let ctx = open(&project(dir, max_words), "default", false);
    let metrics = run_vocab(&ctx, &NoProgress)
        .unwrap()
        .record()
        .metrics
        .clone();
    (ctx, metrics)
}

#[test]
fn the_vocab_stage_counts_exactly_at_the_default_limit() {
    let files = shipped_files();
    let exact = exact_counts(&files);
    let tmp = tempfile::tempdir().unwrap();
    let (ctx, metrics) = run_vocab_stage(tmp.path(), None);
    assert_eq!(metrics["distinct_words"], exact.len() as u64, "{metrics}");
    assert_eq!(metrics["dropped_words"], 0, "{metrics}");
    assert_eq!(metrics["dropped_word_floor"], 0, "{metrics}");
    // The same vocabulary as training on every line at once.
    let cfg = &ctx.loaded.config;
    let texts: Vec<String> = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    let lines = texts.iter().flat_map(|t| t.lines());
    let wp = train_wordpiece(&cfg.vocab, lines, Path::new("corpus")).unwrap();
    let written = std::fs::read_to_string(tmp.path().join("run/vocab/vocab.txt")).unwrap();
    let tokens: Vec<&str> = written.lines().collect();
    assert_eq!(tokens.len(), wp.vocab_size());
    assert!((0..wp.vocab_size() as u32).all(|id| wp.token(id) == tokens[id as usize]));
}

#[test]
fn a_word_limit_below_the_corpus_keeps_the_frequent_words_and_accounts_for_the_rest() {
    let files = shipped_files();
    let exact = exact_counts(&files);
    let total: u64 = exact.iter().map(|(_, n)| n).sum();
    let limit = 2000;
    assert!(exact.len() > 10 * limit, "{} distinct words", exact.len());
    let mut cfg = parse_config(include_str!("../pipeline.toml"), "default")
        .unwrap()
        .vocab;
    cfg.max_words = limit;
    let blocks = corpus_blocks(&files).unwrap();
    let counted = count_corpus_words(&blocks, &cfg, &NoProgress).unwrap();
    let (kept, dropped) = (&counted.words, &counted.dropped);
    assert!(kept.len() <= limit - limit / 4, "{} kept", kept.len());
    assert!(dropped.floor >= 1 && dropped.words > 0, "{dropped:?}");
    // Every occurrence is either counted or accounted as dropped.
    let kept_total: u64 = kept.iter().map(|(_, n)| n).sum();
    assert_eq!(kept_total + dropped.occurrences, total);
    // A kept word was counted more than the floor, and never more than it occurs.
    let exact_of: std::collections::HashMap<&str, u64> =
        exact.iter().map(|(w, n)| (w.as_str(), *n)).collect();
    for (word, n) in kept {
        assert!(
            *n > dropped.floor && *n <= exact_of[word.as_str()],
            "{word} {n}"
        );
    }
    // The 100 most frequent words are all kept, counted within a floor of every time.
    let mut frequent = exact.clone();
    frequent.sort_by_key(|(w, n)| (std::cmp::Reverse(*n), w.clone()));
    let kept_of: std::collections::HashMap<&str, u64> =
        kept.iter().map(|(w, n)| (w.as_str(), *n)).collect();
    for (word, n) in &frequent[..100] {
        let got = kept_of.get(word.as_str()).copied();
        assert!(
            got.is_some_and(|k| k + dropped.floor >= *n),
            "{word}: {n} times, kept {got:?} (floor {})",
            dropped.floor
        );
    }

    // The stage says what it dropped, and still writes a full vocabulary.
    let tmp = tempfile::tempdir().unwrap();
    let (ctx, metrics) = run_vocab_stage(tmp.path(), Some(limit));
    assert_eq!(metrics["distinct_words"], kept.len() as u64, "{metrics}");
    assert_eq!(metrics["dropped_word_floor"], dropped.floor, "{metrics}");
    assert_eq!(
        metrics["dropped_occurrences"], dropped.occurrences,
        "{metrics}"
    );
    let written = std::fs::read_to_string(tmp.path().join("run/vocab/vocab.txt")).unwrap();
    assert_eq!(written.lines().count(), 8192);
    // The report reads what the stage wrote and says it.
    let data = ReportData::from_manifest(&ctx.manifest).unwrap();
    let shown = VocabDropped {
        kept: kept.len() as u64,
        floor: dropped.floor,
        words: dropped.words,
        occurrences: dropped.occurrences,
    };
    assert_eq!(data.data_stats.vocab_dropped, Some(shown));
    let markdown = render_markdown(&data);
    let sentence = format!(
        "The vocabulary was trained on {} distinct words: {} word entries counted at most {} \
         times ({} occurrences) were left out to stay within vocab.max_words.",
        kept.len(),
        dropped.words,
        dropped.floor,
        dropped.occurrences
    );
    assert!(markdown.contains(&sentence), "{markdown}");
}
