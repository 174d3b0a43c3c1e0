//! A fast, exact path of BERT's WordPiece tokenizer for ASCII words, the bulk of English
//! text. HF `tokenizers` spends most of the `pairs` stage on Unicode tables and offset
//! bookkeeping that ASCII does not need; [`AsciiWordPiece`] splits and looks pieces up
//! directly and hands every other word to the HF tokenizer, so the ids are the same either
//! way (`tests/data_pairs.rs` checks this on every line of the shipped text).
//!
//! For ASCII text BertNormalizer is: drop control bytes, map `\t \n \r` to spaces,
//! lowercase (uncased); BertPreTokenizer splits on whitespace and isolates each ASCII
//! punctuation byte; WordPiece is greedy longest-match-first with `##` continuations, and a
//! word over `max_input_chars_per_word` or with no match is one `[UNK]`.

use ahash::AHashMap as HashMap;

use tokenizers::models::ModelWrapper;
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;

use crate::error::{Error, Result};
use crate::tokenize::WordPiece;

/// The fast path's tables, built from a [`WordPiece`] whose pipeline is exactly
/// BertNormalizer + BertPreTokenizer + WordPiece (otherwise every line goes to HF).
pub struct AsciiWordPiece<'a> {
    wordpiece: &'a WordPiece,
    /// False when the tokenizer is not the plain BERT pipeline.
    enabled: bool,
    lowercase: bool,
    /// Pieces that start a word.
    word_starts: TextMap<u32>,
    /// `##` pieces, keyed without the prefix.
    continuations: TextMap<u32>,
    unk: u32,
    max_input_chars_per_word: usize,
    /// Added tokens (`[CLS]`, `[MASK]`...) are matched in the raw text first: a line holding
    /// one goes to HF.
    added_tokens: Vec<String>,
    /// `added_token_starts[b]`: some added token starts with byte `b`.
    added_token_starts: [bool; 256],
}

impl<'a> AsciiWordPiece<'a> {
    /// Builds the tables from the tokenizer's vocabulary and settings.
    pub fn new(wordpiece: &'a WordPiece) -> Self {
        let tokenizer = wordpiece.tokenizer();
        let normalizer = match tokenizer.get_normalizer() {
            Some(NormalizerWrapper::BertNormalizer(n)) => Some(*n),
            _ => None,
        };
        let bert_pre_tokenizer = matches!(
            tokenizer.get_pre_tokenizer(),
            Some(PreTokenizerWrapper::BertPreTokenizer(_))
        );
        let model = match tokenizer.get_model() {
            ModelWrapper::WordPiece(model) => Some(model),
            _ => None,
        };
        let mut fast = AsciiWordPiece {
            wordpiece,
            enabled: false,
            lowercase: false,
            word_starts: TextMap::default(),
            continuations: TextMap::default(),
            unk: 0,
            max_input_chars_per_word: 0,
            added_tokens: Vec::new(),
            added_token_starts: [false; 256],
        };
        let (Some(normalizer), Some(model), true) = (normalizer, model, bert_pre_tokenizer) else {
            return fast;
        };
        let vocab = tokenizer.get_vocab(false);
        let Some(&unk) = vocab.get(&model.unk_token) else {
            return fast;
        };
        // ASCII has no accents and no CJK, so only cleaning and lowercasing matter.
        if !normalizer.clean_text {
            return fast;
        }
        let prefix = model.continuing_subword_prefix.as_str();
        for (token, id) in vocab {
            match token.strip_prefix(prefix).filter(|_| !prefix.is_empty()) {
                Some(piece) => fast.continuations.insert(piece, id),
                None => fast.word_starts.insert(&token, id),
            };
        }
        fast.added_tokens = tokenizer
            .get_added_tokens_decoder()
            .values()
            .map(|t| t.content.clone())
            .collect();
        for token in &fast.added_tokens {
            match token.as_bytes().first() {
                Some(&b) => fast.added_token_starts[b as usize] = true,
                // An empty added token "occurs" everywhere: every line goes to HF.
                None => fast.added_token_starts = [true; 256],
            }
        }
        fast.enabled = true;
        fast.lowercase = normalizer.lowercase;
        fast.unk = unk;
        fast.max_input_chars_per_word = model.max_input_chars_per_word;
        fast
    }

    /// Encodes lines to ids without special tokens. Whitespace-separated chunks of plain
    /// ASCII are encoded here; the other chunks (and whole lines holding an added token) go
    /// to HF in one call ([`Self::encode_pieces`]); with a tokenizer other than plain BERT,
    /// every line goes to HF as it is. Chunks can be encoded apart because nothing in BERT's
    /// normalizer, pre-tokenizer or WordPiece crosses a space, tab or line break.
    pub fn encode_lines(&self, lines: &[&str]) -> Result<Vec<Vec<u32>>> {
        if !self.enabled {
            let encoded = self
                .wordpiece
                .tokenizer()
                .encode_batch_fast(lines.to_vec(), false)
                .map_err(|e| Error::Model(format!("tokenization failed: {e}")))?;
            return Ok(encoded.iter().map(|e| e.get_ids().to_vec()).collect());
        }
        let mut ids = Vec::with_capacity(lines.len());
        let mut word = String::new();
        let mut splits = SplitCache::default();
        // Text HF encodes, each piece once, and where its ids go.
        let mut slow = SlowPieces::default();
        for (index, line) in lines.iter().enumerate() {
            // About one id per 4 bytes of English text.
            let mut out = Vec::with_capacity(line.len() / 4 + 4);
            if self.holds_added_token(line) {
                slow.place(line, index, 0);
            } else {
                for chunk in line.split([' ', '\t', '\n', '\r']) {
                    if chunk.bytes().all(|b| b.is_ascii_graphic()) {
                        self.encode_ascii_chunk(chunk, &mut word, &mut out, &mut splits);
                    } else {
                        // Only the runs between ASCII punctuation that are not plain ASCII
                        // go to HF: BERT isolates every punctuation character, and
                        // normalization never reaches across one.
                        let mut start = 0;
                        for (i, b) in chunk.bytes().enumerate() {
                            if b.is_ascii_punctuation() {
                                self.encode_run(
                                    &chunk[start..i],
                                    index,
                                    &mut word,
                                    &mut out,
                                    &mut splits,
                                    &mut slow,
                                );
                                self.encode_ascii_chunk(
                                    &chunk[i..=i],
                                    &mut word,
                                    &mut out,
                                    &mut splits,
                                );
                                start = i + 1;
                            }
                        }
                        self.encode_run(
                            &chunk[start..],
                            index,
                            &mut word,
                            &mut out,
                            &mut splits,
                            &mut slow,
                        );
                    }
                }
            }
            ids.push(out);
        }
        if slow.pieces.is_empty() {
            return Ok(ids);
        }
        let encoded = self.encode_pieces(&slow.pieces)?;
        // From the back, so earlier positions in the same line stay valid.
        for &(line, position, piece) in slow.places.iter().rev() {
            ids[line].splice(position..position, encoded[piece].iter().copied());
        }
        Ok(ids)
    }

    /// A run of a chunk with no ASCII punctuation in it: encoded here when it is plain
    /// ASCII, else left to HF at the current end of `out`.
    fn encode_run<'t>(
        &self,
        run: &'t str,
        line: usize,
        word: &mut String,
        out: &mut Vec<u32>,
        splits: &mut SplitCache,
        slow: &mut SlowPieces<'t>,
    ) {
        if run.bytes().all(|b| b.is_ascii_graphic()) {
            self.encode_ascii_chunk(run, word, out, splits);
        } else {
            slow.place(run, line, out.len());
        }
    }

    /// Encodes pieces of text with HF, in one call: the pieces are joined by spaces (nothing
    /// in BERT's pipeline crosses a space) and each token goes to the piece its byte offsets
    /// fall in. One call per batch instead of one per piece: HF's fixed cost per input
    /// (added-token matching, alignment bookkeeping) was most of the `pairs` stage's time on
    /// Wikipedia text, where about 1% of the words are not ASCII.
    fn encode_pieces(&self, pieces: &[&str]) -> Result<Vec<Vec<u32>>> {
        let mut out = Vec::with_capacity(pieces.len());
        let mut first = 0;
        while first < pieces.len() {
            // Groups of about 2 KB: HF's cost per piece of a string grows with its length.
            let (mut joined, mut ends) = (String::new(), Vec::new());
            let mut last = first;
            while last < pieces.len() && (last == first || joined.len() < JOINED_BYTES) {
                joined.push_str(pieces[last]);
                ends.push(joined.len());
                joined.push(' ');
                last += 1;
            }
            let encoding = self
                .wordpiece
                .tokenizer()
                .encode(joined.as_str(), false)
                .map_err(|e| Error::Model(format!("tokenization failed: {e}")))?;
            let base = out.len();
            out.resize(base + ends.len(), Vec::new());
            let mut piece = 0;
            for (&id, &(start, _)) in encoding.get_ids().iter().zip(encoding.get_offsets()) {
                while start >= ends[piece] {
                    piece += 1;
                }
                out[base + piece].push(id);
            }
            first = last;
        }
        Ok(out)
    }

    /// The line holds an added token (`[CLS]`, `[MASK]`...): a byte scan rules most lines
    /// out before any substring search.
    fn holds_added_token(&self, line: &str) -> bool {
        line.bytes().any(|b| self.added_token_starts[b as usize])
            && self.added_tokens.iter().any(|t| line.contains(t.as_str()))
    }

    /// The ids of one line by the fast path alone, or `None` when some of it needs HF (not
    /// ASCII, control bytes, an added token, or a tokenizer other than plain BERT).
    pub fn encode_ascii_line(&self, line: &str) -> Option<Vec<u32>> {
        let plain = |b: u8| b.is_ascii_graphic() || matches!(b, b' ' | b'\t' | b'\n' | b'\r');
        if !self.enabled || !line.bytes().all(plain) || self.holds_added_token(line) {
            return None;
        }
        let (mut word, mut out) = (String::new(), Vec::new());
        let mut splits = SplitCache::default();
        for chunk in line.split([' ', '\t', '\n', '\r']) {
            self.encode_ascii_chunk(chunk, &mut word, &mut out, &mut splits);
        }
        Some(out)
    }

    /// Encodes a chunk of printable ASCII (no whitespace): punctuation bytes are words of
    /// their own, letters are lowercased when the tokenizer is uncased.
    fn encode_ascii_chunk(
        &self,
        chunk: &str,
        word: &mut String,
        out: &mut Vec<u32>,
        splits: &mut SplitCache,
    ) {
        let bytes = chunk.as_bytes();
        let mut start = 0;
        for (i, &byte) in bytes.iter().enumerate() {
            if byte.is_ascii_punctuation() {
                self.encode_word(&bytes[start..i], word, out, splits);
                self.encode_word(&bytes[i..=i], word, out, splits);
                start = i + 1;
            }
        }
        self.encode_word(&bytes[start..], word, out, splits);
    }

    /// WordPiece on one word of printable ASCII, not yet lowercased. A word of up to 7 bytes
    /// in the vocabulary, most words of English text, is looked up straight from its bytes;
    /// the others are copied (lowercased) into `word` for [`Self::push_word`].
    fn encode_word(
        &self,
        raw: &[u8],
        word: &mut String,
        out: &mut Vec<u32>,
        splits: &mut SplitCache,
    ) {
        if raw.is_empty() {
            return;
        }
        if raw.len() <= 7 && raw.len() <= self.max_input_chars_per_word {
            let key = tiny_key(raw.iter().map(|&b| self.fold_case(b)), raw.len());
            if let Some(&id) = self.word_starts.tiny.get(&key) {
                out.push(id);
                return;
            }
        }
        word.clear();
        word.extend(raw.iter().map(|&b| self.fold_case(b) as char));
        self.push_word(word, out, splits);
    }

    /// An ASCII byte lowercased when the tokenizer is uncased.
    fn fold_case(&self, byte: u8) -> u8 {
        if self.lowercase {
            byte.to_ascii_lowercase()
        } else {
            byte
        }
    }

    /// WordPiece on one word, then clears it: a word in the vocabulary is one lookup; the
    /// others are split greedily (longest match first) once and then taken from `splits`.
    fn push_word(&self, word: &mut String, out: &mut Vec<u32>, splits: &mut SplitCache) {
        if word.is_empty() {
            return;
        }
        if let Some(&id) = self.word_starts.get(word.as_str()) {
            if word.len() <= self.max_input_chars_per_word {
                out.push(id);
                word.clear();
                return;
            }
        }
        if let Some(range) = splits.words.get(word.as_str()) {
            out.extend_from_slice(&splits.ids[range.clone()]);
            word.clear();
            return;
        }
        let first = out.len();
        if word.len() > self.max_input_chars_per_word {
            out.push(self.unk);
        } else {
            let mut start = 0;
            while start < word.len() {
                let pieces = if start == 0 {
                    &self.word_starts
                } else {
                    &self.continuations
                };
                let Some((end, id)) = (start + 1..=word.len())
                    .rev()
                    .find_map(|end| pieces.get(&word[start..end]).map(|&id| (end, id)))
                else {
                    out.truncate(first);
                    out.push(self.unk);
                    break;
                };
                out.push(id);
                start = end;
            }
        }
        let cached = splits.ids.len()..splits.ids.len() + (out.len() - first);
        splits.ids.extend_from_slice(&out[first..]);
        splits.words.insert(word.as_str(), cached);
        word.clear();
    }
}

/// Bytes of text per HF call in [`AsciiWordPiece::encode_pieces`].
const JOINED_BYTES: usize = 2048;

/// The text of one batch that HF encodes: each distinct piece once, and every place its
/// ids go, `(line, position in that line's ids, piece)`, in line order.
#[derive(Default)]
struct SlowPieces<'t> {
    pieces: Vec<&'t str>,
    index: HashMap<&'t str, usize>,
    places: Vec<(usize, usize, usize)>,
}

impl<'t> SlowPieces<'t> {
    fn place(&mut self, text: &'t str, line: usize, position: usize) {
        let pieces = &mut self.pieces;
        let piece = *self.index.entry(text).or_insert_with(|| {
            pieces.push(text);
            pieces.len() - 1
        });
        self.places.push((line, position, piece));
    }
}

/// The pieces of the words [`AsciiWordPiece`] had to split, for one batch of lines: a word
/// seen again costs one lookup instead of a search over its prefixes.
#[derive(Default)]
struct SplitCache {
    words: TextMap<std::ops::Range<usize>>,
    ids: Vec<u32>,
}

/// A map keyed by text. Keys of up to 15 bytes, nearly every English word and WordPiece
/// piece, are packed into one integer with their length, so a lookup hashes and compares
/// one integer instead of calling `memcmp` on a string (a sixth of the tokenizer's time on
/// Wikipedia); longer keys are stored as strings. Keys of up to 7 bytes, most words and
/// pieces, get a table of their own with 16-byte entries: half the memory of the 32-byte
/// entries of the others, so more of it stays in the CPU's cache (a lookup's time was
/// mostly cache misses).
struct TextMap<V> {
    tiny: HashMap<u64, V>,
    short: HashMap<u128, V>,
    long: HashMap<Box<str>, V>,
}

/// The key of a text of `len` (at most 7) `bytes` in [`TextMap`]'s table of short keys:
/// the bytes, then the length in the top byte.
fn tiny_key(bytes: impl Iterator<Item = u8>, len: usize) -> u64 {
    let mut key = (len as u64) << 56;
    for (i, b) in bytes.enumerate() {
        key |= u64::from(b) << (8 * i);
    }
    key
}

/// A key as [`TextMap`] stores it.
enum Packed {
    /// Up to 7 bytes, the length in the top byte.
    Tiny(u64),
    /// 8 to 15 bytes, the length in the top byte.
    Short(u128),
    /// Longer: the text itself.
    Long,
}

impl<V> Default for TextMap<V> {
    fn default() -> Self {
        TextMap {
            tiny: HashMap::new(),
            short: HashMap::new(),
            long: HashMap::new(),
        }
    }
}

impl<V> TextMap<V> {
    /// `text`'s bytes and its length in one integer, when it has at most 15 bytes.
    fn pack(text: &str) -> Packed {
        let bytes = text.as_bytes();
        // Shifted in byte by byte: a copy into a buffer read back as one integer stalls on
        // store forwarding.
        match bytes.len() {
            0..=7 => Packed::Tiny(tiny_key(bytes.iter().copied(), bytes.len())),
            8..=15 => {
                let mut packed = (bytes.len() as u128) << 120;
                for (i, &b) in bytes.iter().enumerate() {
                    packed |= u128::from(b) << (8 * i);
                }
                Packed::Short(packed)
            }
            _ => Packed::Long,
        }
    }

    fn get(&self, text: &str) -> Option<&V> {
        match Self::pack(text) {
            Packed::Tiny(key) => self.tiny.get(&key),
            Packed::Short(key) => self.short.get(&key),
            Packed::Long => self.long.get(text),
        }
    }

    fn insert(&mut self, text: &str, value: V) {
        match Self::pack(text) {
            Packed::Tiny(key) => self.tiny.insert(key, value),
            Packed::Short(key) => self.short.insert(key, value),
            Packed::Long => self.long.insert(text.into(), value),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::TextMap;

    /// Packed keys are exact: texts that differ in length only (trailing NUL bytes), in one
    /// byte, or across the 7- and 15-byte boundaries between the tables never collide.
    #[test]
    fn text_map_keys_are_exact() {
        let keys = [
            "",
            "\0",
            "\0\0",
            "a",
            "a\0",
            "ab",
            "ba",
            "abcdefg",
            "abcdefg\0",
            "abcdefgh",
            "\0\0\0\0\0\0\0",
            "\0\0\0\0\0\0\0\0",
            "abcdefghijklmn",
            "abcdefghijklmno",
            "abcdefghijklmnop",
            "abcdefghijklmnoq",
            "abcdefghijklmnopqrstuvwxyz",
        ];
        let mut map = TextMap::default();
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(map.get(k), None, "{k:?} before insert");
            map.insert(k, i);
        }
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(map.get(k), Some(&i), "{k:?}");
        }
        assert_eq!(map.get("abcdefghijklmnopqrstuvwxy"), None);
        assert_eq!(map.get("abcdef"), None);
        assert_eq!((map.tiny.len(), map.short.len(), map.long.len()), (9, 5, 3));
    }
}
