//! Next-sentence pairs: exact behaviour of Google's algorithm on small fixed documents,
//! determinism of the streaming driver on real text, and every bad-input error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use bertline::config::{PairsConfig, VocabConfig};
use bertline::pairs::{
    create_instances_from_document, create_pairs_from_file, create_training_pairs,
    read_corpus_file, seeded_rng, truncate_pair_random_ends, AsciiWordPiece, Document,
    PairsSummary,
};
use bertline::progress::NoProgress;
use bertline::shard::Split;
use bertline::tokenize::{train_wordpiece, WordPiece};
use bertline::{Error, SentencePair};

fn repo_file(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Ten documents of `segments` sentences, each sentence `len` ids unique in the corpus
/// (document d, sentence s, token t -> d*10_000 + s*100 + t + 1).
fn numbered_documents(num_documents: u32, segments: u32, len: u32) -> Vec<Document> {
    (0..num_documents)
        .map(|d| {
            (0..segments)
                .map(|s| (0..len).map(|t| d * 10_000 + s * 100 + t + 1).collect())
                .collect()
        })
        .collect()
}

fn config(max_seq_length: usize, dupe_factor: usize) -> PairsConfig {
    PairsConfig {
        max_seq_length,
        short_seq_prob: 0.1,
        dupe_factor,
        eval_fraction: 0.02,
        shard_rows: 1000,
    }
}

#[test]
fn truncate_seq_pair_trims_the_longer_side_first() {
    let mut rng = seeded_rng(3, "test", &[]);
    // 8 + 2 > 6: A alone loses 4 tokens.
    let (mut a, mut b) = ((1..=8).collect::<Vec<u32>>(), vec![20, 21]);
    truncate_pair_random_ends(&mut a, &mut b, 6, &mut rng);
    assert_eq!((a.len(), b.len()), (4, 2));
    assert_eq!(b, vec![20, 21]);
    // 5 + 5 > 6: ties trim B, so B 4, A 4, B 3, A 3.
    let (mut a, mut b) = (
        (1..=5).collect::<Vec<u32>>(),
        (11..=15).collect::<Vec<u32>>(),
    );
    truncate_pair_random_ends(&mut a, &mut b, 6, &mut rng);
    assert_eq!((a.len(), b.len()), (3, 3));
    for side in [&a, &b] {
        assert!(
            side.windows(2).all(|w| w[1] == w[0] + 1),
            "{side:?} not contiguous"
        );
    }
    // Already short enough: untouched.
    let (mut a, mut b) = (vec![1, 2], vec![3]);
    truncate_pair_random_ends(&mut a, &mut b, 6, &mut rng);
    assert_eq!((a, b), (vec![1, 2], vec![3]));
}

#[test]
fn truncate_seq_pair_cuts_both_ends() {
    // Over many draws, both the front and the back of A get cut.
    let (mut front, mut back) = (false, false);
    for seed in 0..50 {
        let (mut a, mut b) = ((1..=10).collect::<Vec<u32>>(), vec![99]);
        truncate_pair_random_ends(&mut a, &mut b, 6, &mut seeded_rng(seed, "test", &[]));
        front |= a[0] != 1;
        back |= *a.last().unwrap() != 10;
    }
    assert!(front && back);
}

#[test]
fn a_single_sentence_document_always_gets_a_random_next() {
    let documents: Vec<Document> = vec![vec![vec![1, 2, 3]], vec![vec![10, 11], vec![12, 13]]];
    for seed in 0..20 {
        let pairs = create_instances_from_document(
            &documents,
            0,
            128,
            0.0,
            &mut seeded_rng(seed, "test", &[]),
        );
        assert_eq!(pairs.len(), 1);
        let pair = &pairs[0];
        assert!(pair.is_random_next);
        assert_eq!(pair.tokens_a, vec![1, 2, 3]);
        // B runs from a random sentence of document 1 to its end (the target is 122 tokens).
        assert!(
            pair.tokens_b == vec![10, 11, 12, 13] || pair.tokens_b == vec![12, 13],
            "{:?}",
            pair.tokens_b
        );
    }
}

#[test]
fn every_sentence_lands_in_a_or_in_an_actual_next_exactly_once() {
    // 10 documents of 12 sentences of 5 tokens: each document (60 tokens) fits in one chunk,
    // so nothing is truncated, and random-next chunks put their unused sentences back.
    let documents = numbered_documents(10, 12, 5);
    let (mut random, mut actual) = (0, 0);
    for seed in 0..30 {
        let mut rng = seeded_rng(seed, "test", &[]);
        let pairs = create_instances_from_document(&documents, 4, 128, 0.0, &mut rng);
        let mut used: Vec<u32> = Vec::new();
        for pair in &pairs {
            used.extend(&pair.tokens_a);
            if pair.is_random_next {
                random += 1;
                assert!(
                    pair.tokens_b.iter().all(|&t| t / 10_000 != 4),
                    "B from document 4"
                );
            } else {
                actual += 1;
                used.extend(&pair.tokens_b);
                // The actual next continues A.
                assert_eq!(pair.tokens_b[0], pair.tokens_a.last().unwrap() + 96);
            }
        }
        let document: Vec<u32> = documents[4].concat();
        assert_eq!(used, document, "seed {seed}");
    }
    assert!(random > 0 && actual > 0);
}

#[test]
fn pairs_fit_max_seq_length_and_use_short_targets() {
    // Long sentences force chunking and truncation.
    let documents = numbered_documents(6, 20, 30);
    let mut lengths = Vec::new();
    for seed in 0..40 {
        let mut rng = seeded_rng(seed, "test", &[]);
        for index in 0..documents.len() {
            for pair in create_instances_from_document(&documents, index, 64, 0.3, &mut rng) {
                assert!(!pair.tokens_a.is_empty() && !pair.tokens_b.is_empty());
                let total = pair.tokens_a.len() + pair.tokens_b.len();
                assert!(total <= 61, "{total} > 64 - 3");
                lengths.push(total);
            }
        }
    }
    assert_eq!(*lengths.iter().max().unwrap(), 61);

    // With 5-token sentences a pair is about as long as its target: short_seq_prob = 0.3
    // gives targets in 2..=61 for 30% of the documents, so many more pairs are short than
    // with 0.0, where only a document's last chunk can be short.
    let documents = numbered_documents(6, 40, 5);
    let short_fraction = |short_seq_prob: f64| {
        let (mut short, mut total) = (0, 0);
        for seed in 0..40 {
            let mut rng = seeded_rng(seed, "test", &[]);
            for index in 0..documents.len() {
                for pair in
                    create_instances_from_document(&documents, index, 64, short_seq_prob, &mut rng)
                {
                    total += 1;
                    short += usize::from(pair.tokens_a.len() + pair.tokens_b.len() < 30);
                }
            }
        }
        short as f64 / total as f64
    };
    let (never, sometimes) = (short_fraction(0.0), short_fraction(0.3));
    assert!(
        sometimes > 2.0 * never && sometimes > 0.15,
        "{never} vs {sometimes}"
    );
}

#[test]
fn same_seed_same_pairs_other_seed_other_pairs() {
    let documents = numbered_documents(8, 10, 7);
    let run = |seed| {
        let mut rng = seeded_rng(seed, "test", &[]);
        (0..documents.len())
            .flat_map(|i| create_instances_from_document(&documents, i, 32, 0.1, &mut rng))
            .collect::<Vec<_>>()
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}

// ---- the streaming driver on real text -------------------------------------------------

/// The pipeline's WordPiece vocabulary (8192, uncased), trained once per test binary on
/// wiki_00. Training runs on its own rayon pool: tests that pair files on the global pool
/// wait for this lock on its workers, so training there would deadlock.
fn wordpiece() -> &'static WordPiece {
    static WORDPIECE: OnceLock<WordPiece> = OnceLock::new();
    WORDPIECE.get_or_init(|| {
        let pool = rayon::ThreadPoolBuilder::new().build().unwrap();
        pool.install(train_test_wordpiece)
    })
}

fn train_test_wordpiece() -> WordPiece {
    let wiki = repo_file("datasets/pretrain/wiki_00.txt");
    let text = std::fs::read_to_string(&wiki).unwrap();
    let cfg = VocabConfig {
        vocab_size: 8192,
        lowercase: true,
        min_frequency: 2,
        limit_alphabet: 1000,
        max_words: bertline::config::MAX_WORDS,
    };
    train_wordpiece(&cfg, text.lines().filter(|l| !l.trim().is_empty()), &wiki).unwrap()
}

fn tokenize(lines: &[&str]) -> bertline::Result<Vec<Vec<u32>>> {
    wordpiece().encode_lines(lines)
}

#[test]
fn ascii_fast_path_gives_the_hf_tokenizers_ids() {
    let wordpiece = wordpiece();
    let fast = AsciiWordPiece::new(wordpiece);
    let mut lines: Vec<String> = Vec::new();
    for file in ["wiki_00.txt", "wiki_01.txt", "gutenberg_pg11.txt"] {
        let text =
            std::fs::read_to_string(repo_file(&format!("datasets/pretrain/{file}"))).unwrap();
        lines.extend(
            text.lines()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty()),
        );
    }
    let real = lines.len();
    // Edge cases: an over-long word, tabs, control bytes, a literal special token, a word
    // with no WordPiece match, non-ASCII text, punctuation runs, empty.
    lines.extend([
        "x".repeat(101),
        "y".repeat(100),
        "tab\tseparated\r\nwords".into(),
        "bell\x07 and\x7f delete".into(),
        "a [MASK] in [CLS] text [SEP]".into(),
        "zqxjzqxj qqqqq".into(),
        "Caf\u{e9} na\u{ef}ve \u{4e2d}\u{6587}".into(),
        "\"Well...\" -- (yes)! $5,000 & 100% [sic] {a|b} ~x^y".into(),
        String::new(),
        // Non-ASCII words among ASCII ones: accents, combining marks, no-break and
        // zero-width spaces, form feed and vertical tab (removed, not spaces), CJK next to
        // ASCII, Greek final sigma.
        "na\u{ef}ve caf\u{e9}s, e\u{301}t\u{e9} \u{dc}-Bahn (M\u{fc}nchen).".into(),
        "a\u{a0}b c\u{200b}d e\x0cf g\x0bh".into(),
        "abc\u{4e2d}\u{6587}def \u{c5}ngstr\u{f6}m \u{39f}\u{394}\u{39f}\u{3a3} \u{2014}dash\u{2014}".into(),
        // Non-ASCII runs between ASCII punctuation, repeated (each distinct run is encoded
        // once), a combining mark right after punctuation, a control byte between
        // punctuation, an added token next to non-ASCII text.
        "\"M\u{fc}nchen\"-M\u{fc}nchen's (M\u{fc}nchen), 1990\u{2013}91 1990\u{2013}91.".into(),
        ",\u{301}a .\u{301} e\u{301}, a,\x07b \u{e9}[MASK]\u{e9}".into(),
    ]);
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let expected = wordpiece.encode_lines(&refs).unwrap();
    assert_eq!(fast.encode_lines(&refs).unwrap(), expected);
    // The fast path covers most real lines, and the ones it takes match line by line.
    let mut covered = 0;
    for (line, ids) in refs.iter().zip(&expected) {
        if let Some(fast_ids) = fast.encode_ascii_line(line) {
            assert_eq!(&fast_ids, ids, "{line}");
            covered += 1;
        }
    }
    assert!(covered * 10 > real * 8, "{covered} of {real} lines");
    assert!(fast.encode_ascii_line("a [MASK] here").is_none());
    assert!(fast.encode_ascii_line("caf\u{e9}").is_none());
    assert_eq!(fast.encode_ascii_line(&"x".repeat(101)), Some(vec![1]));
}

type Shards = BTreeMap<(Split, usize, usize), Vec<SentencePair>>;

fn run_driver(files: &[PathBuf], cfg: &PairsConfig, threads: usize) -> (PairsSummary, Shards) {
    let shards = Mutex::new(Shards::new());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let summary = pool
        .install(|| {
            create_training_pairs(
                files,
                cfg,
                12345,
                threads,
                &tokenize,
                &|shard| {
                    let key = (shard.id.split, shard.id.file, shard.id.shard);
                    let old = shards.lock().unwrap().insert(key, shard.to_pairs());
                    assert!(
                        old.is_none(),
                        "shard {} written twice",
                        shard.id.file_name()
                    );
                    Ok(())
                },
                &NoProgress,
            )
        })
        .unwrap();
    (summary, shards.into_inner().unwrap())
}

#[test]
fn driver_is_deterministic_across_thread_counts_and_seeds() {
    let files = vec![
        repo_file("datasets/pretrain/wiki_01.txt"),
        repo_file("datasets/pretrain/gutenberg_pg11.txt"),
    ];
    let cfg = PairsConfig {
        shard_rows: 2000,
        ..config(128, 2)
    };
    let (summary_1, shards_1) = run_driver(&files, &cfg, 1);
    let (summary_2, shards_2) = run_driver(&files, &cfg, 2);
    assert_eq!(summary_1, summary_2);
    assert_eq!(shards_1, shards_2);

    // Shard layout: full shards of 2000, then the rest, per file and split.
    assert_eq!(summary_1.files, 2);
    let rows = |split| {
        shards_1
            .iter()
            .filter(move |(k, _)| k.0 == split)
            .map(|(_, v)| v.len())
    };
    assert_eq!(rows(Split::Train).sum::<usize>(), summary_1.train_pairs);
    assert_eq!(rows(Split::Eval).sum::<usize>(), summary_1.eval_pairs);
    for ((split, file, shard), pairs) in &shards_1 {
        let next = (*split, *file, shard + 1);
        if shards_1.contains_key(&next) {
            assert_eq!(pairs.len(), 2000);
        }
        assert!(pairs
            .iter()
            .all(|p| p.tokens_a.len() + p.tokens_b.len() <= 125));
    }
    // wiki_01 has hundreds of documents: 2% of them are held out.
    assert!(summary_1.eval_documents >= 4, "{summary_1:?}");
    assert!(summary_1.eval_pairs > 0);
    // Alice has 12 chapters: 2% rounds to 0 held out.
    let alice = create_pairs_from_file(&files[1], 1, &cfg, 12345, &tokenize).unwrap();
    assert_eq!(alice.summary.eval_documents, 0);
    assert!(alice.eval.is_empty());

    // Another seed gives other pairs.
    let other = create_pairs_from_file(&files[1], 1, &cfg, 54321, &tokenize).unwrap();
    assert_ne!(other.train, alice.train);
    assert_eq!(
        shards_1[&(Split::Train, 1, 0)],
        alice.train.to_pairs()[..2000.min(alice.train.len())]
    );
}

#[test]
fn dupe_passes_draw_different_pairs() {
    let file = repo_file("datasets/pretrain/gutenberg_pg11.txt");
    let one = create_pairs_from_file(&file, 0, &config(128, 1), 7, &tokenize).unwrap();
    let two = create_pairs_from_file(&file, 0, &config(128, 2), 7, &tokenize).unwrap();
    // The first pass is the same, the second adds different pairs (then all are shuffled).
    let n = one.train.len();
    assert!(two.train.len() > n + n / 2 && two.train.len() < 2 * n + n / 2);
    let mut sorted_one = one.train.to_pairs();
    let mut sorted_two = two.train.to_pairs();
    let key = |p: &SentencePair| (p.tokens_a.clone(), p.tokens_b.clone(), p.is_random_next);
    sorted_one.sort_by_key(key);
    sorted_two.sort_by_key(key);
    assert!(sorted_one
        .iter()
        .all(|p| sorted_two.binary_search_by_key(&key(p), key).is_ok()));
    assert_ne!(sorted_two.len(), sorted_one.len());
}

// ---- bad inputs ------------------------------------------------------------------------

fn bad_file(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

fn data_error(path: &Path) -> String {
    let err = read_corpus_file(path).unwrap_err();
    assert!(matches!(err, Error::Data { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
    msg
}

/// The error the streaming driver stops with on `files` (one dupe pass, shards dropped).
fn driver_error(files: &[PathBuf]) -> Error {
    create_training_pairs(
        files,
        &config(128, 1),
        1,
        2,
        &tokenize,
        &|_| Ok(()),
        &NoProgress,
    )
    .unwrap_err()
}

#[test]
fn empty_file_is_rejected() {
    let (_dir, path) = bad_file("empty.txt", b"");
    assert!(data_error(&path).contains("empty corpus file"));
    let (_dir, path) = bad_file("blank.txt", b"\n \n\t\n");
    assert!(data_error(&path).contains("empty corpus file"));
}

#[test]
fn binary_file_is_rejected() {
    let (_dir, path) = bad_file("model.bin", b"One sentence.\n\x00\x01\x02\n\nAnother.\n");
    assert!(data_error(&path).contains("binary file (NUL byte at offset 14)"));
}

#[test]
fn non_utf8_file_names_the_offset() {
    let (_dir, path) = bad_file("latin1.txt", b"Caf\xe9 au lait.\n\nAnother one.\n");
    let msg = data_error(&path);
    assert!(
        msg.contains("not UTF-8 (invalid byte at offset 3)"),
        "{msg}"
    );
}

#[test]
fn huge_line_is_rejected() {
    let mut text = b"A sentence.\n\n".to_vec();
    text.extend(std::iter::repeat_n(b'x', (1 << 20) + 1));
    text.extend(b"\n\nLast one.\n");
    let (_dir, path) = bad_file("one_line.txt", &text);
    let msg = data_error(&path);
    assert!(msg.contains("line 3 ") && msg.contains("split it"), "{msg}");
}

#[test]
fn single_document_is_rejected() {
    let (_dir, path) = bad_file("one_doc.txt", b"First sentence.\nSecond sentence.\n");
    let msg = data_error(&path);
    assert!(
        msg.contains("only 1 document") && msg.contains("blank line"),
        "{msg}"
    );
}

#[test]
fn one_sentence_documents_among_others_are_fine() {
    let (_dir, path) = bad_file(
        "short.txt",
        b"Only one.\n\nFirst here.\nSecond here.\n\nAlone.\n",
    );
    assert!(read_corpus_file(&path).is_ok());
}

#[test]
fn missing_file_and_driver_errors_name_the_file() {
    let missing = repo_file("datasets/pretrain/no_such_file.txt");
    let err = read_corpus_file(&missing).unwrap_err();
    assert!(err.to_string().contains("no_such_file.txt"), "{err}");

    // A bad file among good ones stops the driver with that file's error.
    let (_dir, bad) = bad_file("latin1.txt", b"Caf\xe9.\n\nAnother.\n");
    let files = vec![
        repo_file("datasets/pretrain/gutenberg_pg11.txt"),
        bad.clone(),
    ];
    let err = driver_error(&files);
    assert!(
        err.to_string().contains(&bad.display().to_string()),
        "{err}"
    );
}

// ---- one-document files are pooled -----------------------------------------------------

/// The first `n` documents of a shipped Wikipedia file, each written to its own file (a
/// book with no blank lines looks the same to the pairs stage).
fn one_document_files(n: usize) -> (tempfile::TempDir, Vec<PathBuf>) {
    let text = std::fs::read_to_string(repo_file("datasets/pretrain/wiki_01.txt")).unwrap();
    let documents = bertline::corpus::documents(&text);
    let dir = tempfile::tempdir().unwrap();
    let paths = (0..n)
        .map(|i| {
            let path = dir.path().join(format!("book_{i}.txt"));
            std::fs::write(&path, documents[i].join("\n") + "\n").unwrap();
            path
        })
        .collect();
    (dir, paths)
}

/// One-document files are pooled: each is paired as a unit of its own (no unit holds the
/// pairs of two books), its random next sentences drawn from the other books of its group.
#[test]
fn one_document_files_are_pooled_and_draw_from_each_other() {
    let (_dir, books) = one_document_files(2);
    for book in &books {
        assert!(
            read_corpus_file(book).is_err(),
            "{} alone is refused",
            book.display()
        );
    }
    let alice = repo_file("datasets/pretrain/gutenberg_pg11.txt");
    let files = vec![books[0].clone(), alice.clone(), books[1].clone()];
    let cfg = config(128, 2);
    let (summary, shards) = run_driver(&files, &cfg, 1);
    assert_eq!(
        run_driver(&files, &cfg, 2),
        (summary.clone(), shards.clone())
    );
    assert_eq!(summary.files, 3);

    // Alice is paired on its own, exactly as before; each book under its own index.
    let alone = create_pairs_from_file(&alice, 1, &cfg, 12345, &tokenize).unwrap();
    assert_eq!(shards[&(Split::Train, 1, 0)], alone.train.to_pairs());
    let pooled = [
        &shards[&(Split::Train, 0, 0)],
        &shards[&(Split::Train, 2, 0)],
    ];
    assert_eq!(shards.len(), 3, "{:?}", shards.keys());
    assert_eq!(
        summary.train_pairs,
        alone.train.len() + pooled[0].len() + pooled[1].len(),
        "{summary:?}"
    );
    assert_eq!(summary.documents, alone.summary.documents + 2);

    // A and an actual next B come from the book itself, a random B from the other book.
    let book_tokens: Vec<Vec<u32>> = books
        .iter()
        .map(|b| {
            let text = std::fs::read_to_string(b).unwrap();
            tokenize(&text.lines().collect::<Vec<_>>())
                .unwrap()
                .concat()
        })
        .collect();
    let from = |tokens: &[u32]| {
        book_tokens
            .iter()
            .position(|book| book.windows(tokens.len()).any(|w| w == tokens))
            .expect("pair tokens come from a pooled book")
    };
    let mut checked = 0;
    for (book, pairs) in pooled.iter().enumerate() {
        let random = pairs.iter().filter(|p| p.is_random_next).count();
        assert!(
            random > 0 && random < pairs.len(),
            "{random} of {}",
            pairs.len()
        );
        for pair in pairs.iter() {
            let (a, b) = (&pair.tokens_a, &pair.tokens_b);
            // Truncation may cut either end, so look up a middle piece of each side.
            let piece = |t: &[u32]| t[t.len() / 4..t.len() / 4 + 8].to_vec();
            if a.len() >= 16 && b.len() >= 16 {
                assert_eq!(from(&piece(a)), book);
                let other = if pair.is_random_next { 1 - book } else { book };
                assert_eq!(from(&piece(b)), other);
                checked += 1;
            }
        }
    }
    assert!(checked > 0);
}

/// A one-document file with no other to pool with is paired with random next sentences
/// from the nearest other file (Google draws them from the whole corpus), which is paired
/// exactly as it would be alone; a corpus of one document is refused, naming its file.
#[test]
fn a_lone_one_document_file_draws_random_next_sentences_from_another_file() {
    let (_dir, books) = one_document_files(1);
    let alice = repo_file("datasets/pretrain/gutenberg_pg11.txt");
    let files = vec![alice.clone(), books[0].clone()];
    let cfg = config(128, 2);
    let (summary, shards) = run_driver(&files, &cfg, 1);
    assert_eq!(
        run_driver(&files, &cfg, 2),
        (summary.clone(), shards.clone())
    );
    let alone = create_pairs_from_file(&alice, 0, &cfg, 12345, &tokenize).unwrap();
    assert_eq!(shards[&(Split::Train, 0, 0)], alone.train.to_pairs());
    assert_eq!(summary.documents, alone.summary.documents + 1);
    let book = &shards[&(Split::Train, 1, 0)];
    assert_eq!(summary.train_pairs, alone.train.len() + book.len());

    // A and, for an actual next sentence, B are the book's; a random B is Alice's.
    let text = |path: &PathBuf| {
        let text = std::fs::read_to_string(path).unwrap();
        tokenize(&text.lines().collect::<Vec<_>>())
            .unwrap()
            .concat()
    };
    let (book_tokens, alice_tokens) = (text(&books[0]), text(&alice));
    let within = |tokens: &[u32], source: &[u32]| {
        let piece = &tokens[..tokens.len().min(6)];
        source.windows(piece.len()).any(|w| w == piece)
    };
    let random = book.iter().filter(|p| p.is_random_next).count();
    assert!(
        random > 0 && random < book.len(),
        "{random} of {}",
        book.len()
    );
    for pair in book {
        assert!(within(&pair.tokens_a, &book_tokens));
        let source = if pair.is_random_next {
            &alice_tokens
        } else {
            &book_tokens
        };
        assert!(within(&pair.tokens_b, source), "{pair:?}");
    }

    // Alone, the same file is refused with its name.
    let err = driver_error(&books);
    let msg = err.to_string();
    assert!(matches!(err, Error::Data { .. }), "{err:?}");
    assert!(msg.contains(&books[0].display().to_string()), "{msg}");
    assert!(
        msg.contains("only 1 document(s) in the corpus: next-sentence"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "{msg}");
}

/// A file over one block (`corpus::BLOCK_BYTES`) is paired block by block: its shards are
/// numbered by block, later files' blocks come after it, every document is paired once, and
/// the output does not depend on the thread count. The big file is the shipped Wikipedia
/// text written out several times (real text; its size is what matters here).
#[test]
fn a_file_over_one_block_is_paired_block_by_block() {
    use bertline::corpus::{corpus_blocks, documents, read_corpus, BLOCK_BYTES};
    let tmp = tempfile::tempdir().unwrap();
    let wiki = std::fs::read_to_string(repo_file("datasets/pretrain/wiki_00.txt")).unwrap();
    let copies = (BLOCK_BYTES as usize * 5 / 4) / wiki.len() + 1;
    let big = tmp.path().join("big.txt");
    std::fs::write(&big, format!("{}\n\n", wiki.trim_end()).repeat(copies)).unwrap();
    let small = repo_file("datasets/pretrain/wiki_01.txt");
    let files = vec![big.clone(), small.clone()];
    let blocks = corpus_blocks(&files).unwrap();
    assert_eq!(blocks.len(), 3, "{blocks:?}");
    assert_eq!((blocks[1].file_index, blocks[1].block_index), (0, 1));
    assert_eq!((blocks[2].file_index, blocks[2].block_index), (1, 0));

    let cfg = PairsConfig {
        shard_rows: 1 << 20,
        ..config(128, 1)
    };
    let (summary_1, shards_1) = run_driver(&files, &cfg, 1);
    let (summary_2, shards_2) = run_driver(&files, &cfg, 2);
    assert_eq!((&summary_1, &shards_1), (&summary_2, &shards_2));
    assert_eq!(summary_1.files, 2);
    let whole_documents = documents(&read_corpus(&big).unwrap()).len()
        + documents(&read_corpus(&small).unwrap()).len();
    assert_eq!(summary_1.documents, whole_documents);
    // Train shards named by block: 0 and 1 for the big file, 2 for the small one.
    let train_blocks: std::collections::BTreeSet<usize> = shards_1
        .keys()
        .filter(|k| k.0 == Split::Train)
        .map(|k| k.1)
        .collect();
    assert_eq!(train_blocks, [0, 1, 2].into_iter().collect());
}
