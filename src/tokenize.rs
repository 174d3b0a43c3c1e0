//! The WordPiece vocabulary: training it (the `vocab` stage, with the deterministic trainer
//! of [`crate::vocab`]) and the [`WordPiece`] wrapper every later stage encodes text with.
//!
//! The tokenizer is BERT's: BertNormalizer (clean text, CJK spacing, lowercase + strip
//! accents when uncased), BertPreTokenizer, WordPiece with `##` continuations, and the
//! `[CLS] A [SEP] B [SEP]` post-processor. `[PAD] [UNK] [CLS] [SEP] [MASK]` are ids 0-4.
//! `vocab.txt` and `tokenizer.json` load unchanged in HF tokenizers and transformers.

use std::path::{Path, PathBuf};

use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::wordpiece::{WordPiece as WordPieceModel, WordPieceTrainer};
use tokenizers::models::TrainerWrapper;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{AddedToken, Tokenizer};

use crate::config::VocabConfig;
use crate::durable;
use crate::error::{Error, IoContext, Result};

/// BERT's special tokens, in id order.
pub const SPECIAL_TOKENS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

/// Ids of the special tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialIds {
    pub pad: u32,
    pub unk: u32,
    pub cls: u32,
    pub sep: u32,
    pub mask: u32,
}

/// The fixed ids bertline's vocabularies use.
pub const SPECIAL: SpecialIds = SpecialIds {
    pad: 0,
    unk: 1,
    cls: 2,
    sep: 3,
    mask: 4,
};

/// A trained WordPiece tokenizer plus the id tables the data stages need.
#[derive(Clone)]
pub struct WordPiece {
    tokenizer: Tokenizer,
    tokens: Vec<String>,
    continuation: Vec<bool>,
}

impl std::fmt::Debug for WordPiece {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WordPiece")
            .field("vocab_size", &self.tokens.len())
            .finish()
    }
}

impl WordPiece {
    /// Wraps a tokenizer, checking the special tokens sit at ids 0-4 and ids are dense.
    pub fn new(tokenizer: Tokenizer, source: &Path) -> Result<WordPiece> {
        let vocab = tokenizer.get_vocab(true);
        let n = vocab.len();
        let mut tokens = vec![String::new(); n];
        for (tok, id) in vocab {
            let slot = tokens.get_mut(id as usize).ok_or_else(|| {
                Error::data(source, format!("token id {id} is outside 0..{n}: not a dense vocabulary; rerun `just stage vocab`"))
            })?;
            *slot = tok;
        }
        for (id, special) in SPECIAL_TOKENS.iter().enumerate() {
            if tokens.get(id).map(String::as_str) != Some(*special) {
                return Err(Error::data(
                    source,
                    format!("expected {special} at id {id}; this is not a bertline/BERT vocabulary: rerun `just stage vocab`"),
                ));
            }
        }
        let continuation = tokens.iter().map(|t| t.starts_with("##")).collect();
        Ok(WordPiece {
            tokenizer,
            tokens,
            continuation,
        })
    }

    /// Loads `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<WordPiece> {
        let tokenizer = Tokenizer::from_file(path).map_err(|e| {
            Error::data(
                path,
                format!("not a tokenizer.json ({e}); rerun `just stage vocab`"),
            )
        })?;
        WordPiece::new(tokenizer, path)
    }

    /// Number of tokens, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The special token ids (always [`SPECIAL`]).
    pub fn special(&self) -> SpecialIds {
        SPECIAL
    }

    /// The token string of `id`.
    pub fn token(&self, id: u32) -> &str {
        &self.tokens[id as usize]
    }

    /// The id of `token`, if it is in the vocabulary.
    pub fn id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// True when `id` is a `##` continuation piece.
    pub fn is_continuation(&self, id: u32) -> bool {
        self.continuation[id as usize]
    }

    /// The `##` flags of every id, indexable by id.
    pub fn continuation_flags(&self) -> &[bool] {
        &self.continuation
    }

    /// The underlying HF tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Encodes lines to ids without special tokens (parallel over lines).
    pub fn encode_lines(&self, lines: &[&str]) -> Result<Vec<Vec<u32>>> {
        let enc = self
            .tokenizer
            .encode_batch(lines.to_vec(), false)
            .map_err(|e| Error::Model(format!("tokenization failed: {e}")))?;
        Ok(enc.into_iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// Encodes one text to ids without special tokens.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| Error::Model(format!("tokenization failed: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Writes `vocab.txt` (one token per line, in id order) atomically.
    pub fn write_vocab_txt(&self, path: &Path) -> Result<()> {
        let mut text = self.tokens.join("\n");
        text.push('\n');
        durable::write_bytes(path, text.as_bytes())
    }

    /// Writes `tokenizer.json` atomically.
    pub fn write_tokenizer_json(&self, path: &Path) -> Result<()> {
        let json = self
            .tokenizer
            .to_string(true)
            .map_err(|e| Error::data(path, format!("cannot serialise tokenizer: {e}")))?;
        durable::write_bytes(path, json.as_bytes())
    }
}

/// A BERT tokenizer around a WordPiece model.
fn bert_tokenizer(model: WordPieceModel, lowercase: bool) -> Tokenizer {
    let mut tokenizer = Tokenizer::new(model);
    tokenizer
        .with_normalizer(Some(BertNormalizer::new(
            true,
            true,
            Some(lowercase),
            lowercase,
        )))
        .with_pre_tokenizer(Some(BertPreTokenizer))
        .with_post_processor(Some(BertProcessing::new(
            ("[SEP]".into(), SPECIAL.sep),
            ("[CLS]".into(), SPECIAL.cls),
        )))
        .with_decoder(Some(WordPieceDecoder::default()));
    tokenizer
}

/// Trains a WordPiece vocabulary of exactly `cfg.vocab_size` tokens on `lines` with
/// [`crate::vocab::train`]: the same lines give the same vocabulary, byte for byte, at any
/// thread count. When the text yields fewer pieces, the vocabulary is filled up with
/// `[unusedN]` tokens as in Google's released vocabularies (and a warning says so).
pub fn train_wordpiece<'a, I>(cfg: &VocabConfig, lines: I, source: &Path) -> Result<WordPiece>
where
    I: Iterator<Item = &'a str> + Send,
{
    let lines: Vec<&str> = lines.collect();
    let words = crate::vocab::count_words(&lines, cfg.lowercase)?;
    train_wordpiece_on_counts(cfg, &words, &Default::default(), source)
}

/// [`train_wordpiece`] on words already counted ([`crate::vocab::count_words`] or
/// [`crate::vocab::WordCounter`]), as the `vocab` stage streams a corpus, with the
/// characters of any words the counter dropped ([`crate::vocab::Dropped::chars`]).
pub fn train_wordpiece_on_counts(
    cfg: &VocabConfig,
    words: &[(String, u64)],
    dropped_chars: &std::collections::BTreeMap<char, u64>,
    source: &Path,
) -> Result<WordPiece> {
    let trainer = crate::vocab::TrainerConfig {
        vocab_size: cfg.vocab_size,
        min_frequency: cfg.min_frequency,
        limit_alphabet: cfg.limit_alphabet,
        lowercase: cfg.lowercase,
        special_tokens: SPECIAL_TOKENS.iter().map(|t| t.to_string()).collect(),
    };
    let tokens = crate::vocab::train_with_dropped(&trainer, words, dropped_chars);
    let vocab: ahash::AHashMap<String, u32> = tokens
        .iter()
        .enumerate()
        .map(|(id, t)| (t.clone(), id as u32))
        .collect();
    let model = WordPieceModel::builder()
        .vocab(vocab)
        .unk_token(SPECIAL_TOKENS[SPECIAL.unk as usize].into())
        .continuing_subword_prefix(crate::vocab::CONTINUATION.into())
        .build()
        .map_err(|e| Error::Model(format!("cannot build the WordPiece model: {e}")))?;
    let tokenizer = bert_tokenizer(model, cfg.lowercase);
    finish_vocabulary(tokenizer, cfg, source)
}

/// HF's `WordPieceTrainer` on the same settings: the reference [`train_wordpiece`] is
/// compared against (its token order, and so every id, changes from run to run).
pub fn train_wordpiece_hf<'a, I>(cfg: &VocabConfig, lines: I, source: &Path) -> Result<WordPiece>
where
    I: Iterator<Item = &'a str> + Send,
{
    let mut tokenizer = bert_tokenizer(WordPieceModel::default(), cfg.lowercase);
    let specials = SPECIAL_TOKENS
        .iter()
        .map(|t| AddedToken::from(*t, true))
        .collect::<Vec<_>>();
    let trainer = WordPieceTrainer::builder()
        .vocab_size(cfg.vocab_size)
        .min_frequency(cfg.min_frequency)
        .limit_alphabet(cfg.limit_alphabet)
        .special_tokens(specials)
        .continuing_subword_prefix("##".into())
        .show_progress(false)
        .build();
    let mut trainer = TrainerWrapper::WordPieceTrainer(trainer);
    tokenizer
        .train(&mut trainer, lines)
        .map_err(|e| Error::data(source, format!("WordPiece training failed: {e}")))?;
    finish_vocabulary(tokenizer, cfg, source)
}

/// The special tokens as added tokens (as HF's training leaves them), then `[unusedN]` up
/// to `vocab_size`.
fn finish_vocabulary(
    mut tokenizer: Tokenizer,
    cfg: &VocabConfig,
    source: &Path,
) -> Result<WordPiece> {
    let specials = SPECIAL_TOKENS
        .iter()
        .map(|t| AddedToken::from(*t, true))
        .collect::<Vec<_>>();
    tokenizer.add_special_tokens(&specials);
    let got = tokenizer.get_vocab_size(true);
    if got > cfg.vocab_size {
        return Err(Error::Model(format!(
            "trained vocabulary has {got} tokens, more than vocab.vocab_size = {}",
            cfg.vocab_size
        )));
    }
    if got < cfg.vocab_size {
        tracing::warn!(
            trained = got,
            wanted = cfg.vocab_size,
            "the corpus yields fewer WordPiece tokens than vocab_size; filling with [unusedN]"
        );
        let fill: Vec<AddedToken> = (0..cfg.vocab_size - got)
            .map(|i| AddedToken::from(format!("[unused{i}]"), true))
            .collect();
        tokenizer.add_special_tokens(&fill);
    }
    WordPiece::new(tokenizer, source)
}

/// Checks that a vocabulary file agrees with the configured model size; the error tells the
/// user which of the two to change.
pub fn check_vocab_size(wp: &WordPiece, expected: usize, source: &Path) -> Result<()> {
    check_token_count(wp.vocab_size(), expected, source)
}

/// [`check_vocab_size`] on a count of tokens.
fn check_token_count(tokens: usize, expected: usize, source: &Path) -> Result<()> {
    if tokens != expected {
        return Err(Error::data(
            source,
            format!(
                "vocabulary has {tokens} tokens but model.vocab_size = {expected}; set model.vocab_size and vocab.vocab_size to {tokens} or rerun `just stage vocab`"
            ),
        ));
    }
    Ok(())
}

/// The `vocab` stage: trains the WordPiece vocabulary on `corpus.input` and writes
/// `vocab.txt` and `tokenizer.json`.
pub fn run_vocab(
    ctx: &crate::stage::StageCtx,
    progress: &dyn crate::progress::Progress,
) -> Result<crate::stage::Outcome> {
    use crate::stage::{corpus_files, Begin, Outcome, Stage};
    let cfg = ctx.config();
    let files = corpus_files(&ctx.loaded)?;
    // Validate every file before anything is written; the text is read block by block
    // (crate::corpus::BLOCK_BYTES) and only the word counts are kept, so memory does not
    // grow with the corpus.
    let blocks = crate::corpus::corpus_blocks(&files)?;
    progress.start("checking corpus", blocks.iter().map(|b| b.len()).sum());
    for block in &blocks {
        block.read()?;
        progress.advance(block.len());
    }
    progress.finish();
    let mut run = match ctx.begin(Stage::Vocab)? {
        Begin::Skip(record) => return Ok(Outcome::Skipped(record)),
        Begin::Run(run) => run,
    };
    let started = std::time::Instant::now();
    let counted = count_corpus_words(&blocks, &cfg.vocab, progress)?;
    let (words, dropped) = (counted.words, counted.dropped);
    if dropped.words > 0 {
        tracing::warn!(
            max_words = cfg.vocab.max_words,
            kept = words.len(),
            floor = dropped.floor,
            dropped_words = dropped.words,
            dropped_occurrences = dropped.occurrences,
            "the corpus has more distinct words than vocab.max_words: words counted at most \
             `floor` times were left out of the WordPiece training (raise vocab.max_words to \
             keep more, at about 280 bytes a word)"
        );
    }
    progress.start("training WordPiece", 0);
    let wp = train_wordpiece_on_counts(&cfg.vocab, &words, &dropped.chars, &files[0])?;
    progress.finish();
    check_vocab_size(&wp, cfg.model.vocab_size, &ctx.loaded.path)?;
    wp.write_vocab_txt(&run.dir().join("vocab.txt"))?;
    wp.write_tokenizer_json(&run.dir().join("tokenizer.json"))?;
    let n = wp.vocab_size() as u64;
    run.add("vocab.txt", "vocab", n)?;
    run.add("tokenizer.json", "tokenizer", n)?;
    let secs = started.elapsed().as_secs_f64();
    let metrics = serde_json::json!({
        "vocab_size": n,
        "input_files": files.len(),
        "input_bytes": counted.bytes,
        "input_lines": counted.lines,
        "distinct_words": words.len(),
        "dropped_word_floor": dropped.floor,
        "dropped_words": dropped.words,
        "dropped_occurrences": dropped.occurrences,
        "continuation_tokens": wp.continuation_flags().iter().filter(|c| **c).count(),
        "seconds": secs,
        "input_mb_per_s": counted.bytes as f64 / 1e6 / secs.max(1e-9),
    });
    Ok(Outcome::Ran(run.finish(ctx, metrics)?))
}

/// The words of a corpus as the `vocab` stage counts them, with what it read.
pub struct CountedWords {
    /// Words with their counts, sorted by word ([`crate::vocab::WordCounter::finish`]).
    pub words: Vec<(String, u64)>,
    /// What was dropped to stay within `vocab.max_words`.
    pub dropped: crate::vocab::Dropped,
    /// Bytes of text read.
    pub bytes: usize,
    /// Non-blank lines read.
    pub lines: usize,
}

/// Counts the words of `blocks` in order, one block of text in memory at a time, holding
/// at most `cfg.max_words` distinct words ([`crate::vocab::WordCounter`]); `progress`
/// counts bytes.
pub fn count_corpus_words(
    blocks: &[crate::corpus::CorpusBlock],
    cfg: &VocabConfig,
    progress: &dyn crate::progress::Progress,
) -> Result<CountedWords> {
    let mut words = crate::vocab::WordCounter::new(cfg.max_words);
    let (mut bytes, mut line_count) = (0, 0);
    progress.start("counting words", blocks.iter().map(|b| b.len()).sum());
    for block in blocks {
        let text = block.read()?;
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        words.add(&lines, cfg.lowercase)?;
        bytes += text.len();
        line_count += lines.len();
        progress.advance(block.len());
    }
    progress.finish();
    let (words, dropped) = words.finish();
    Ok(CountedWords {
        words,
        dropped,
        bytes,
        lines: line_count,
    })
}

/// The vocabulary a finished `vocab` stage recorded.
pub fn load_stage_vocab(ctx: &crate::stage::StageCtx) -> Result<(WordPiece, PathBuf)> {
    let path = stage_vocab_file(ctx, "tokenizer", "tokenizer.json")?;
    let wp = WordPiece::from_file(&path)?;
    check_vocab_size(&wp, ctx.config().model.vocab_size, &path)?;
    Ok((wp, path))
}

/// The tokens of the `vocab.txt` a finished `vocab` stage recorded, in id order: what a
/// stage that only needs ids and token names reads (the mask stage), without parsing
/// `tokenizer.json`. Its size is checked against `model.vocab_size` as
/// [`load_stage_vocab`] checks it.
pub fn load_stage_vocab_tokens(ctx: &crate::stage::StageCtx) -> Result<(Vec<String>, PathBuf)> {
    let path = stage_vocab_file(ctx, "vocab", "vocab.txt")?;
    let text = std::fs::read_to_string(&path).at(&path)?;
    let tokens: Vec<String> = text.lines().map(str::to_string).collect();
    check_token_count(tokens.len(), ctx.config().model.vocab_size, &path)?;
    Ok((tokens, path))
}

/// The path of the artifact of `kind` (`file`) the fresh `vocab` stage recorded.
fn stage_vocab_file(ctx: &crate::stage::StageCtx, kind: &str, file: &str) -> Result<PathBuf> {
    let record = ctx.upstream(crate::stage::Stage::Vocab)?;
    let art = record.artifacts_of(kind).next().ok_or_else(|| {
        Error::Stage(format!(
            "the vocab stage recorded no {file}; rerun `just stage vocab --force`"
        ))
    })?;
    Ok(ctx.path_of(art))
}

/// What fine-tuning needs of a tokenizer (classification features and SQuAD windows):
/// WordPiece ids with the byte offsets of their text, and the special tokens' ids.
pub trait OffsetTokenizer {
    /// WordPiece tokens of `text` (BERT basic tokenization, then WordPiece), without special
    /// tokens: `(id, byte range in text)` per token.
    fn tokenize_with_offsets(&self, text: &str) -> Result<Vec<(u32, (usize, usize))>>;
    /// The id of a special token (`[CLS]`, `[SEP]`, `[PAD]`).
    fn special_id(&self, token: &str) -> Result<u32>;
}

impl OffsetTokenizer for tokenizers::Tokenizer {
    fn tokenize_with_offsets(&self, text: &str) -> Result<Vec<(u32, (usize, usize))>> {
        let encoding = self
            .encode(text, false)
            .map_err(|e| Error::Model(format!("tokenizing a SQuAD text failed: {e}")))?;
        Ok(encoding
            .get_ids()
            .iter()
            .copied()
            .zip(encoding.get_offsets().iter().copied())
            .collect())
    }

    fn special_id(&self, token: &str) -> Result<u32> {
        self.token_to_id(token).ok_or_else(|| {
            Error::Model(format!(
                "the tokenizer has no `{token}` token: rebuild the vocabulary with BERT's \
                 special tokens"
            ))
        })
    }
}

impl OffsetTokenizer for WordPiece {
    fn tokenize_with_offsets(&self, text: &str) -> Result<Vec<(u32, (usize, usize))>> {
        self.tokenizer().tokenize_with_offsets(text)
    }

    fn special_id(&self, token: &str) -> Result<u32> {
        self.tokenizer().special_id(token)
    }
}
