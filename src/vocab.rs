//! The WordPiece trainer of the `vocab` stage: the algorithm of HF's `WordPieceTrainer`
//! (BPE-style merges with `##` continuation pieces, then the merged pieces as a WordPiece
//! vocabulary), written so the result depends on the text alone: the same `vocab.txt`,
//! byte for byte, on every run and at every thread count.
//!
//! HF's trainer (tokenizers 0.22) keys its word and pair tables by `AHashMap`s seeded from
//! the OS random generator and numbers the `##` pieces in the order it iterates them; merge
//! ties break by those numbers, so every run picks other merges among equal counts and
//! writes the tokens in another order. Here words are counted exactly (parallel partial
//! counts, summed) and then sorted; alphabet cuts break count ties by character, and merge
//! ties by the pair's ids, which now follow from that sorted order. A corpus with more
//! distinct words than `vocab.max_words` has its rarest words left out, in a way that
//! depends on the text alone too ([`WordCounter`]).
//!
//! Steps, as in HF: (1) the special tokens; (2) the alphabet: every character of the
//! normalized words, the `limit_alphabet` most frequent kept, in code-point order; (3) each
//! word as characters, non-initial ones as `##c` pieces; (4) repeatedly merge the most
//! frequent adjacent pair (`a` + `##b` -> `ab`, `##a` + `##b` -> `##ab`) until the
//! vocabulary has `vocab_size` tokens or the best pair occurs fewer than `min_frequency`
//! times. The main function is [`train`].

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use rayon::prelude::*;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::{
    NormalizedString, Normalizer, OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer,
};

use crate::error::{Error, Result};

/// The continuation prefix of WordPiece pieces inside a word.
pub const CONTINUATION: &str = "##";

/// What [`train`] needs to know.
#[derive(Debug, Clone)]
pub struct TrainerConfig {
    /// Target size, special tokens included.
    pub vocab_size: usize,
    /// Smallest pair count a merge may have.
    pub min_frequency: u64,
    /// Most distinct initial characters kept.
    pub limit_alphabet: usize,
    /// Uncased: lowercase and strip accents (BertNormalizer).
    pub lowercase: bool,
    /// Tokens placed first, in this order (`[PAD] [UNK] [CLS] [SEP] [MASK]`).
    pub special_tokens: Vec<String>,
}

/// The words of `lines` after BERT's normalizer and pre-tokenizer, with their counts,
/// sorted by word. Counted in parallel; the result does not depend on the thread count.
pub fn count_words(lines: &[&str], lowercase: bool) -> Result<Vec<(String, u64)>> {
    let mut words: Vec<(String, u64)> = count_words_unsorted(lines, lowercase)?
        .into_iter()
        .collect();
    words.sort_unstable();
    Ok(words)
}

/// [`count_words`] over text that comes in pieces (a corpus read block by block): add each
/// piece's lines, then take the sorted counts ([`WordCounter::finish`]).
///
/// Only the distinct words are held, and at most `max_words` of them: the distinct words
/// of a corpus keep growing with it (about 236,000 in the 73 MB of the shared pre-training
/// text, growing as its size to the power 0.6; millions in a Wikipedia), and each costs
/// memory here and in [`train`]. When a piece takes the table past `max_words`, the rarest
/// words are dropped as word2vec's `ReduceVocab` and fastText's `Dictionary::threshold`
/// drop them: every word counted at most `floor` times goes, `floor` rising by one until
/// the table holds at most three quarters of `max_words`. The floor never falls again, and
/// [`WordCounter::finish`] applies it to the words counted since, so the result is the
/// words counted more than `floor` times (their counts low by at most what they had when
/// dropped). Pieces are added in corpus order and counted exactly, so what is dropped
/// depends on the text and `max_words` alone, not on the thread count. A table that never
/// reaches `max_words` is the exact count.
#[derive(Debug)]
pub struct WordCounter {
    counts: HashMap<String, u64>,
    max_words: usize,
    dropped: Dropped,
}

/// What a [`WordCounter`] dropped to stay within its `max_words`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Words counted at most this many times are not in the table (0: nothing dropped).
    pub floor: u64,
    /// Word entries removed (a word dropped twice counts twice).
    pub words: u64,
    /// Occurrences those entries held.
    pub occurrences: u64,
    /// The characters of those occurrences, with their counts: [`train_with_dropped`] counts
    /// them into the alphabet, so that a character found only in rare words keeps its token.
    pub chars: BTreeMap<char, u64>,
}

impl Default for WordCounter {
    /// A counter with no limit: the exact count.
    fn default() -> Self {
        Self::new(usize::MAX)
    }
}

impl WordCounter {
    /// A counter holding at most `max_words` distinct words (at least 1).
    pub fn new(max_words: usize) -> Self {
        Self {
            counts: HashMap::new(),
            max_words: max_words.max(1),
            dropped: Dropped::default(),
        }
    }

    /// Counts the words of `lines` into the total, dropping the rarest words when the
    /// table grows past `max_words`.
    pub fn add(&mut self, lines: &[&str], lowercase: bool) -> Result<()> {
        let piece = count_words_unsorted(lines, lowercase)?;
        self.counts = if self.counts.len() < piece.len() {
            merge_counts(piece, std::mem::take(&mut self.counts))
        } else {
            merge_counts(std::mem::take(&mut self.counts), piece)
        };
        if self.counts.len() > self.max_words {
            // The lowest floor, above the last, that leaves at most `target` words: the
            // (target + 1)-th largest count (every word counted more than it is among the
            // `target` largest), found in one pass instead of one pass per floor.
            let target = self.max_words - self.max_words / 4;
            let mut counts: Vec<u64> = self.counts.values().copied().collect();
            let (_, &mut at_target, _) =
                counts.select_nth_unstable_by_key(target, |&n| std::cmp::Reverse(n));
            self.dropped.floor = at_target.max(self.dropped.floor + 1);
            self.drop_at_or_below_floor();
        }
        Ok(())
    }

    /// Distinct words held now.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// No word counted yet.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// The words with their counts, sorted by word, as [`count_words`] returns them (words
    /// counted at most the floor's times left out), and what was dropped.
    pub fn finish(mut self) -> (Vec<(String, u64)>, Dropped) {
        self.drop_at_or_below_floor();
        let mut words: Vec<(String, u64)> = self.counts.into_iter().collect();
        words.sort_unstable();
        (words, self.dropped)
    }

    fn drop_at_or_below_floor(&mut self) {
        let (floor, dropped) = (self.dropped.floor, &mut self.dropped);
        self.counts.retain(|word, &mut n| {
            let keep = n > floor;
            if !keep {
                dropped.words += 1;
                dropped.occurrences += n;
                for c in word.chars() {
                    *dropped.chars.entry(c).or_default() += n;
                }
            }
            keep
        });
    }
}

fn count_words_unsorted(lines: &[&str], lowercase: bool) -> Result<HashMap<String, u64>> {
    let normalizer = BertNormalizer::new(true, true, Some(lowercase), lowercase);
    let counts = lines
        .par_chunks(4096)
        .map(|chunk| {
            let mut counts: HashMap<String, u64> = HashMap::new();
            for line in chunk {
                let mut normalized = NormalizedString::from(*line);
                normalizer
                    .normalize(&mut normalized)
                    .map_err(|e| Error::Model(format!("normalizing text failed: {e}")))?;
                let mut words = PreTokenizedString::from(normalized);
                BertPreTokenizer
                    .pre_tokenize(&mut words)
                    .map_err(|e| Error::Model(format!("pre-tokenizing text failed: {e}")))?;
                for (word, _, _) in words.get_splits(OffsetReferential::Original, OffsetType::Byte)
                {
                    *counts.entry(word.to_string()).or_default() += 1;
                }
            }
            Ok(counts)
        })
        .try_reduce(HashMap::new, |mut a, b| {
            if a.len() < b.len() {
                return Ok(merge_counts(b, a));
            }
            a = merge_counts(a, b);
            Ok(a)
        })?;
    Ok(counts)
}

fn merge_counts(
    mut into: HashMap<String, u64>,
    from: HashMap<String, u64>,
) -> HashMap<String, u64> {
    for (w, c) in from {
        *into.entry(w).or_default() += c;
    }
    into
}

type Pair = (u32, u32);

/// The growing vocabulary: tokens by id, ids by token.
struct Vocab {
    tokens: Vec<String>,
    ids: HashMap<String, u32>,
}

impl Vocab {
    fn id_or_insert(&mut self, token: String) -> u32 {
        if let Some(&id) = self.ids.get(&token) {
            return id;
        }
        let id = self.tokens.len() as u32;
        self.ids.insert(token.clone(), id);
        self.tokens.push(token);
        id
    }
}

/// Trains a WordPiece vocabulary on counted words ([`count_words`]); returns the tokens in
/// id order. It may be shorter than `vocab_size` when the text runs out of merges.
pub fn train(cfg: &TrainerConfig, words: &[(String, u64)]) -> Vec<String> {
    train_with_dropped(cfg, words, &BTreeMap::new())
}

/// [`train`] on the words a [`WordCounter`] kept, given the characters of the words it
/// dropped ([`Dropped::chars`]): they count towards the alphabet as if their words had been
/// kept, so a character found only in rare words stays a token (without them, `@`, which
/// the shipped Wikipedia text has only in rare words, was left out at a limit of 30,000
/// words, and 2.2% of WikiText-2's tokens became [UNK]). With nothing dropped this is
/// [`train`].
pub fn train_with_dropped(
    cfg: &TrainerConfig,
    words: &[(String, u64)],
    dropped_chars: &BTreeMap<char, u64>,
) -> Vec<String> {
    let mut vocab = Vocab {
        tokens: Vec::with_capacity(cfg.vocab_size),
        ids: HashMap::with_capacity(cfg.vocab_size),
    };
    for s in &cfg.special_tokens {
        vocab.id_or_insert(s.clone());
    }

    // The alphabet: the most frequent characters, ties cut at the higher code points.
    let mut chars: HashMap<char, u64> = HashMap::new();
    for (word, count) in words {
        for c in word.chars() {
            *chars.entry(c).or_default() += count;
        }
    }
    for (&c, &count) in dropped_chars {
        *chars.entry(c).or_default() += count;
    }
    let mut alphabet: Vec<(char, u64)> = chars.into_iter().collect();
    alphabet.sort_unstable_by_key(|&(c, n)| (Reverse(n), c));
    alphabet.truncate(cfg.limit_alphabet);
    alphabet.sort_unstable_by_key(|&(c, _)| c);
    let alphabet: HashMap<char, ()> = alphabet.iter().map(|&(c, _)| (c, ())).collect();
    let mut sorted: Vec<char> = alphabet.keys().copied().collect();
    sorted.sort_unstable();
    for c in sorted {
        vocab.id_or_insert(c.to_string());
    }

    // Every word as pieces (characters outside the alphabet dropped, as HF does).
    let mut symbols: Vec<Vec<u32>> = words
        .iter()
        .map(|(word, _)| {
            word.chars()
                .enumerate()
                .filter(|(_, c)| alphabet.contains_key(c))
                .map(|(i, c)| {
                    let piece = if i == 0 {
                        c.to_string()
                    } else {
                        format!("{CONTINUATION}{c}")
                    };
                    vocab.id_or_insert(piece)
                })
                .collect()
        })
        .collect();
    let counts: Vec<i64> = words.iter().map(|(_, n)| *n as i64).collect();

    // Pair counts, where each pair occurs, and a max-heap of (count, smallest pair first).
    // A pair's words are a list, in the order they were added, a word again only after
    // others (sorted and deduplicated when the pair is merged): as a `BTreeSet` each, the
    // stage took 6-13% more memory for the same vocabulary (on 558,324 distinct words of
    // source code: 197-204 MB against 189-192 at the default limit, 250 against 218 with
    // every word).
    let mut pair_counts: HashMap<Pair, i64> = HashMap::new();
    let mut where_: HashMap<Pair, Vec<u32>> = HashMap::new();
    for (w, syms) in symbols.iter().enumerate() {
        for p in syms.windows(2) {
            let pair = (p[0], p[1]);
            *pair_counts.entry(pair).or_default() += counts[w];
            push_word(where_.entry(pair).or_default(), w as u32);
        }
    }
    let mut heap: BinaryHeap<(i64, Reverse<Pair>)> = pair_counts
        .iter()
        .filter(|(_, &n)| n > 0)
        .map(|(&p, &n)| (n, Reverse(p)))
        .collect();

    let mut changed: HashMap<Pair, i64> = HashMap::new();
    while vocab.tokens.len() < cfg.vocab_size {
        let Some((count, Reverse(pair))) = heap.pop() else {
            break;
        };
        let current = pair_counts.get(&pair).copied().unwrap_or(0);
        if current != count {
            // A stale entry: the pair's count moved since it was pushed.
            if current > 0 {
                heap.push((current, Reverse(pair)));
            }
            continue;
        }
        if count < 1 || (count as u64) < cfg.min_frequency {
            break;
        }
        let (a, b) = (
            &vocab.tokens[pair.0 as usize],
            &vocab.tokens[pair.1 as usize],
        );
        let merged = format!("{a}{}", b.strip_prefix(CONTINUATION).unwrap_or(b));
        let new_id = vocab.id_or_insert(merged);

        changed.clear();
        let mut positions = where_.remove(&pair).unwrap_or_default();
        positions.sort_unstable();
        positions.dedup();
        for &w in &positions {
            let syms = &mut symbols[w as usize];
            let n = counts[w as usize];
            for p in syms.windows(2) {
                *changed.entry((p[0], p[1])).or_default() -= n;
            }
            merge_pair(syms, pair, new_id);
            for p in syms.windows(2) {
                let q = (p[0], p[1]);
                *changed.entry(q).or_default() += n;
                if q.0 == new_id || q.1 == new_id {
                    push_word(where_.entry(q).or_default(), w);
                }
            }
        }
        let mut moved: Vec<(Pair, i64)> = changed
            .iter()
            .filter(|(_, &d)| d != 0)
            .map(|(&p, &d)| (p, d))
            .collect();
        moved.sort_unstable();
        for (p, d) in moved {
            let n = pair_counts.entry(p).or_default();
            *n += d;
            if *n > 0 {
                heap.push((*n, Reverse(p)));
            }
        }
    }
    vocab.tokens
}

/// Adds word `w` to a pair's word list unless it was the last added (a word adds each of
/// its pairs once per occurrence, one after another).
fn push_word(words: &mut Vec<u32>, w: u32) {
    if words.last() != Some(&w) {
        words.push(w);
    }
}

/// Replaces every occurrence of `pair` in `syms`, left to right without overlap, by `new_id`.
fn merge_pair(syms: &mut Vec<u32>, pair: Pair, new_id: u32) {
    let mut out = Vec::with_capacity(syms.len());
    let mut i = 0;
    while i < syms.len() {
        if i + 1 < syms.len() && syms[i] == pair.0 && syms[i + 1] == pair.1 {
            out.push(new_id);
            i += 2;
        } else {
            out.push(syms[i]);
            i += 1;
        }
    }
    *syms = out;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(vocab_size: usize) -> TrainerConfig {
        TrainerConfig {
            vocab_size,
            min_frequency: 2,
            limit_alphabet: 1000,
            lowercase: true,
            special_tokens: vec!["[PAD]".into(), "[UNK]".into()],
        }
    }

    #[test]
    fn merges_the_most_frequent_pair_first_and_ties_by_id() {
        // "low" x5, "lower" x2, "newest" x6, "widest" x3 (the classic BPE example).
        let words: Vec<(String, u64)> = [("low", 5), ("lower", 2), ("newest", 6), ("widest", 3)]
            .iter()
            .map(|(w, n)| (w.to_string(), *n))
            .collect();
        let tokens = train(&cfg(100), &words);
        let alphabet = ["d", "e", "i", "l", "n", "o", "r", "s", "t", "w"];
        assert_eq!(&tokens[..2], &["[PAD]", "[UNK]"]);
        assert_eq!(&tokens[2..12], &alphabet);
        // Pieces in order of first appearance in the sorted words: low, lower, newest, widest.
        assert_eq!(
            &tokens[12..20],
            &["##o", "##w", "##e", "##r", "##s", "##t", "##i", "##d"]
        );
        // ##s ##t occurs 9 times (newest 6 + widest 3), as does ##e ##s; ##e (14) < ##s (16)
        // by id, so (##e, ##s) wins the tie; then ##es + ##t (9); then l ##o and ##o ##w
        // tie at 7 and l (5) < ##o (12) wins; then lo ##w (7).
        assert_eq!(&tokens[20..24], &["##es", "##est", "lo", "low"]);
    }

    #[test]
    fn stops_at_min_frequency_and_vocab_size() {
        let words = vec![("ab".to_string(), 1u64), ("cd".to_string(), 1)];
        // No pair reaches min_frequency 2: specials + alphabet + pieces only.
        let tokens = train(&cfg(100), &words);
        assert_eq!(tokens, ["[PAD]", "[UNK]", "a", "b", "c", "d", "##b", "##d"]);
        let words = vec![("abab".to_string(), 10u64)];
        assert_eq!(train(&cfg(6), &words).len(), 6);
    }

    #[test]
    fn limit_alphabet_drops_the_rarest_characters() {
        let words = vec![("aab".to_string(), 3u64), ("c".to_string(), 1)];
        let mut c = cfg(100);
        c.limit_alphabet = 2;
        let tokens = train(&c, &words);
        assert!(tokens.contains(&"a".to_string()) && tokens.contains(&"##b".to_string()));
        assert!(!tokens.iter().any(|t| t.contains('c')), "{tokens:?}");
    }

    /// Lines of `(word, times)`: each word on its own line, repeated.
    fn lines_of(words: &[(&str, usize)]) -> Vec<String> {
        words
            .iter()
            .flat_map(|&(w, n)| std::iter::repeat_n(w.to_string(), n))
            .collect()
    }

    fn add(counter: &mut WordCounter, words: &[(&str, usize)]) {
        let lines = lines_of(words);
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        counter.add(&lines, true).unwrap();
    }

    #[test]
    fn a_counter_within_its_limit_counts_exactly() {
        let pieces: [&[(&str, usize)]; 2] = [&[("a", 3), ("b", 1)], &[("b", 2), ("c", 1)]];
        let mut counter = WordCounter::new(3);
        for piece in pieces {
            add(&mut counter, piece);
        }
        let (words, dropped) = counter.finish();
        let expected = vec![("a".into(), 3), ("b".into(), 3), ("c".into(), 1)];
        assert_eq!(words, expected);
        assert_eq!(dropped, Dropped::default());
        let all = lines_of(&[("a", 3), ("b", 1), ("b", 2), ("c", 1)]);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        assert_eq!(count_words(&all, true).unwrap(), expected);
    }

    #[test]
    fn a_full_counter_drops_the_rarest_words_and_keeps_its_floor() {
        let mut counter = WordCounter::new(4);
        add(&mut counter, &[("a", 5), ("b", 2), ("c", 1), ("d", 1)]);
        assert_eq!(counter.len(), 4);
        // Five words > 4: the floor rises to 1 (c, d, e go: 2 left <= 3), and stays there.
        add(&mut counter, &[("e", 1), ("a", 1)]);
        assert_eq!(counter.len(), 2);
        // f is counted once after the floor rose; g twice: finish drops f as well.
        add(&mut counter, &[("f", 1), ("g", 2)]);
        let (words, dropped) = counter.finish();
        assert_eq!(
            words,
            vec![("a".into(), 6), ("b".into(), 2), ("g".into(), 2)]
        );
        let chars = "cdef".chars().map(|c| (c, 1)).collect();
        assert_eq!(
            dropped,
            Dropped {
                floor: 1,
                words: 4,
                occurrences: 4,
                chars
            }
        );
        // The floor rises until at most three quarters of the limit are left: 8 words counted
        // 1..=8 times and a limit of 7 (6 then): floor 1 leaves 7, floor 2 leaves 6.
        let mut counter = WordCounter::new(7);
        let words: Vec<(String, usize)> = (1..=8).map(|n| (format!("w{n}"), n)).collect();
        let words: Vec<(&str, usize)> = words.iter().map(|(w, n)| (w.as_str(), *n)).collect();
        add(&mut counter, &words);
        let (kept, dropped) = counter.finish();
        assert_eq!(dropped.floor, 2);
        assert_eq!(kept.len(), 6);
        assert_eq!(kept[0], ("w3".into(), 3));
    }

    #[test]
    fn the_characters_of_dropped_words_stay_in_the_alphabet() {
        let words = vec![("abab".to_string(), 10u64)];
        let dropped: BTreeMap<char, u64> = [('@', 3), ('b', 1)].into_iter().collect();
        let tokens = train_with_dropped(&cfg(8), &words, &dropped);
        // The alphabet in code-point order, @ first; then abab's pieces, then one merge.
        assert_eq!(
            tokens,
            ["[PAD]", "[UNK]", "@", "a", "b", "##b", "##a", "ab"]
        );
        assert_eq!(train(&cfg(8), &words)[2..4], ["a", "b"]);
        // A limited alphabet ranks the dropped characters by their counts too.
        let mut c = cfg(100);
        c.limit_alphabet = 2;
        let dropped: BTreeMap<char, u64> = [('@', 30)].into_iter().collect();
        let tokens = train_with_dropped(&c, &words, &dropped);
        assert_eq!(tokens[2..4], ["@", "a"]);
    }

    #[test]
    fn counts_words_as_bert_splits_them() {
        let words = count_words(&["Hello, world!", "hello again"], true).unwrap();
        assert_eq!(
            words,
            [("!", 1), (",", 1), ("again", 1), ("hello", 2), ("world", 1)]
                .iter()
                .map(|(w, n)| (w.to_string(), *n as u64))
                .collect::<Vec<_>>()
        );
    }
}
