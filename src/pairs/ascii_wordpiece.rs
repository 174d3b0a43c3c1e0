//! A fast, exact path of BERT's WordPiece tokenizer for pure-ASCII lines, the bulk of
//! English text. HF `tokenizers` spends most of the `pairs` stage on Unicode tables and
//! offset bookkeeping that ASCII lines do not need; [`AsciiWordPiece`] splits and looks
//! pieces up directly and hands every other line to the HF tokenizer, so the ids are the
//! same either way (`tests/data_pairs.rs` checks this on every line of the shipped text).
//!
//! For an ASCII line BertNormalizer is: drop control bytes, map `\t \n \r` to spaces,
//! lowercase (uncased); BertPreTokenizer splits on whitespace and isolates each ASCII
//! punctuation byte; WordPiece is greedy longest-match-first with `##` continuations, and a
//! word over `max_input_chars_per_word` or with no match is one `[UNK]`.

use std::collections::HashMap;

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
    word_starts: HashMap<Box<str>, u32>,
    /// `##` pieces, keyed without the prefix.
    continuations: HashMap<Box<str>, u32>,
    unk: u32,
    max_input_chars_per_word: usize,
    /// Added tokens (`[CLS]`, `[MASK]`...) are matched in the raw text first: a line holding
    /// one goes to HF.
    added_tokens: Vec<String>,
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
            word_starts: HashMap::new(),
            continuations: HashMap::new(),
            unk: 0,
            max_input_chars_per_word: 0,
            added_tokens: Vec::new(),
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
                Some(piece) => fast.continuations.insert(piece.into(), id),
                None => fast.word_starts.insert(token.into(), id),
            };
        }
        fast.added_tokens = tokenizer
            .get_added_tokens_decoder()
            .values()
            .map(|t| t.content.clone())
            .collect();
        fast.enabled = true;
        fast.lowercase = normalizer.lowercase;
        fast.unk = unk;
        fast.max_input_chars_per_word = model.max_input_chars_per_word;
        fast
    }

    /// Encodes lines to ids without special tokens: ASCII lines here, the rest in one HF
    /// batch.
    pub fn encode_lines(&self, lines: &[&str]) -> Result<Vec<Vec<u32>>> {
        let mut ids = Vec::with_capacity(lines.len());
        let mut word = String::new();
        let mut fallback: Vec<usize> = Vec::new();
        for (index, line) in lines.iter().enumerate() {
            let mut out = Vec::new();
            if !self.encode_ascii(line, &mut word, &mut out) {
                fallback.push(index);
            }
            ids.push(out);
        }
        if !fallback.is_empty() {
            let rest: Vec<&str> = fallback.iter().map(|&i| lines[i]).collect();
            let encoded = self
                .wordpiece
                .tokenizer()
                .encode_batch_fast(rest, false)
                .map_err(|e| Error::Model(format!("tokenization failed: {e}")))?;
            for (index, encoding) in fallback.into_iter().zip(encoded) {
                ids[index] = encoding.get_ids().to_vec();
            }
        }
        Ok(ids)
    }

    /// The ids of one line by the fast path, or `None` when the line needs HF (not ASCII,
    /// control bytes, an added token, or a tokenizer other than plain BERT).
    pub fn encode_ascii_line(&self, line: &str) -> Option<Vec<u32>> {
        let mut out = Vec::new();
        self.encode_ascii(line, &mut String::new(), &mut out)
            .then_some(out)
    }

    /// Encodes one line into `out`; false (and `out` unusable) when it needs HF.
    fn encode_ascii(&self, line: &str, word: &mut String, out: &mut Vec<u32>) -> bool {
        let plain = |b: &u8| {
            b.is_ascii() && (*b >= 0x20 || matches!(b, b'\t' | b'\n' | b'\r')) && *b != 0x7f
        };
        if !self.enabled
            || !line.as_bytes().iter().all(plain)
            || self.added_tokens.iter().any(|t| line.contains(t.as_str()))
        {
            return false;
        }
        word.clear();
        for &byte in line.as_bytes() {
            if byte.is_ascii_whitespace() {
                self.push_word(word, out);
            } else if byte.is_ascii_punctuation() {
                self.push_word(word, out);
                word.push(byte as char);
                self.push_word(word, out);
            } else if self.lowercase {
                word.push(byte.to_ascii_lowercase() as char);
            } else {
                word.push(byte as char);
            }
        }
        self.push_word(word, out);
        true
    }

    /// WordPiece on one word (greedy longest match first), then clears it.
    fn push_word(&self, word: &mut String, out: &mut Vec<u32>) {
        if word.is_empty() {
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
        word.clear();
    }
}
