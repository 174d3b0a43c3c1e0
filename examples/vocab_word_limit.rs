//! What `vocab.max_words` costs the vocabulary: trains the default profile's WordPiece
//! vocabulary on a corpus once with every distinct word and once per limit given, counting
//! the words block by block as the `vocab` stage does, and prints per limit the words kept,
//! the floor (words counted at most that often were left out), the share of the corpus's
//! word occurrences left out, the tokens shared with the exact vocabulary, and tokens per
//! word and [UNK] share on held-out text (its `<unk>` markers removed). Peak memory per
//! limit: the stage itself under `/usr/bin/time` (docs/benchmarks.md, "The vocab stage's
//! word limit").
//!
//!     cargo run --release --example vocab_word_limit -- HELD_OUT.txt 30000,60000,120000 \
//!         ../shared/datasets/pretrain/{wikipedia_en,gutenberg,nltk}/*.txt
use std::path::{Path, PathBuf};
use std::time::Instant;

use bertline::config::parse_config;
use bertline::progress::NoProgress;
use bertline::tokenize::{count_corpus_words, train_wordpiece_on_counts, WordPiece};

/// Tokens per word and [UNK] share of `wp` on `lines`.
fn tokenization(wp: &WordPiece, lines: &[&str]) -> (f64, f64) {
    let words: u64 = bertline::vocab::count_words(lines, true)
        .unwrap()
        .iter()
        .map(|(_, n)| n)
        .sum();
    let ids = wp.encode_lines(lines).unwrap();
    let tokens: usize = ids.iter().map(Vec::len).sum();
    let unk = ids.iter().flatten().filter(|&&id| id == 1).count();
    (tokens as f64 / words as f64, unk as f64 / tokens as f64)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: vocab_word_limit HELD_OUT.txt LIMIT[,LIMIT...] CORPUS_FILE...");
        std::process::exit(2);
    }
    // WikiText marks the words it left out `<unk>`: markup, not text, and its `<` and `>`
    // are not in a vocabulary trained on text without them.
    let held_out = std::fs::read_to_string(&args[0])
        .expect("held-out text")
        .replace("<unk>", "");
    let held_out: Vec<&str> = held_out.lines().filter(|l| !l.trim().is_empty()).collect();
    let limits: Vec<usize> = args[1]
        .split(',')
        .map(|l| l.parse().expect("limits are numbers of words"))
        .collect();
    let files: Vec<PathBuf> = args[2..].iter().map(PathBuf::from).collect();
    let blocks = bertline::corpus::corpus_blocks(&files).expect("corpus files");
    let cfg = parse_config(include_str!("../pipeline.toml"), "default").unwrap();

    println!(
        "{:>10} {:>9} {:>6} {:>9} {:>7} {:>8} {:>9} {:>7}",
        "max_words", "kept", "floor", "left out", "shared", "tok/word", "[UNK]", "s"
    );
    let mut exact: Option<WordPiece> = None;
    for limit in std::iter::once(usize::MAX).chain(limits) {
        let mut vocab_cfg = cfg.vocab.clone();
        vocab_cfg.max_words = limit;
        let started = Instant::now();
        let counted = count_corpus_words(&blocks, &vocab_cfg, &NoProgress).unwrap();
        let occurrences: u64 = counted.words.iter().map(|(_, n)| n).sum();
        let total = occurrences + counted.dropped.occurrences;
        let chars = &counted.dropped.chars;
        let wp = train_wordpiece_on_counts(&vocab_cfg, &counted.words, chars, Path::new("corpus"))
            .unwrap();
        let seconds = started.elapsed().as_secs_f64();
        let (per_word, unk) = tokenization(&wp, &held_out);
        let reference = exact.as_ref().unwrap_or(&wp);
        let shared = (0..wp.vocab_size() as u32)
            .filter(|&id| reference.id(wp.token(id)).is_some())
            .count();
        let name = if limit == usize::MAX {
            "all".to_string()
        } else {
            limit.to_string()
        };
        println!(
            "{name:>10} {:>9} {:>6} {:>8.2}% {:>7} {per_word:>8.4} {:>8.4}% {seconds:>7.1}",
            counted.words.len(),
            counted.dropped.floor,
            100.0 * counted.dropped.occurrences as f64 / total as f64,
            shared,
            100.0 * unk,
        );
        exact.get_or_insert(wp);
    }
}
