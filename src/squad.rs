//! SQuAD v1.1: loading, the train/eval split by article, feature windows, answer span
//! selection and the official evaluation (exact match and token F1).
//!
//! The steps and names follow Google's `run_squad.py`:
//! [`read_squad_examples`] (whitespace doc tokens with a char-to-word map) →
//! [`convert_examples_to_features`] (WordPiece, sliding windows of `doc_stride`,
//! `_improve_answer_span`, `_check_is_max_context`) → [`write_predictions`] (n-best start
//! and end logits, `max_answer_length`, best `start + end` score) → [`evaluate`] (the
//! official `evaluate-v1.1.py`: `normalize_answer`, `exact_match_score`, `f1_score`,
//! `metric_max_over_ground_truths`).
//!
//! One deliberate simplification: `run_squad.py` maps a predicted WordPiece span back to
//! the original text with `get_final_text`, a character alignment between the
//! de-tokenized span and the original words. We keep the byte offsets the tokenizer
//! reports for every WordPiece token and cut the answer straight out of the context
//! (`context[start of first piece .. end of last piece]`), which is what that alignment
//! computes when it succeeds (punctuation glued to a word is dropped, original case and
//! spacing kept) and never falls back to whole words.
//!
//! The shipped dev file was rebuilt from the SQuAD explorer pages: its `answer_start` is
//! the first occurrence of the answer text (see `datasets/README.md`), so training on its
//! first half learns from the first occurrence, which is almost always the right one.
//! Evaluation only uses answer texts, exactly as the official script does.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::tokenize::OffsetTokenizer;

// ---------------------------------------------------------------------------------------
// The JSON file.

/// A SQuAD JSON file: `{"data": [article...], "version": "1.1"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SquadDataset {
    pub data: Vec<Article>,
    #[serde(default)]
    pub version: Option<String>,
}

/// One Wikipedia article.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Article {
    pub title: String,
    pub paragraphs: Vec<Paragraph>,
}

/// A context paragraph and the questions asked about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Paragraph {
    pub context: String,
    pub qas: Vec<QuestionAnswers>,
}

/// One question with its crowd-sourced answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuestionAnswers {
    pub id: String,
    pub question: String,
    pub answers: Vec<AnswerSpan>,
}

/// One answer: its text and the character (not byte) offset where it starts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnswerSpan {
    pub text: String,
    pub answer_start: usize,
}

impl SquadDataset {
    /// Number of questions over all articles.
    pub fn num_questions(&self) -> usize {
        self.data
            .iter()
            .flat_map(|a| &a.paragraphs)
            .map(|p| p.qas.len())
            .sum()
    }

    /// Splits by article: the first `len / 2` articles train, the rest evaluate (the
    /// default when no SQuAD train file is given; questions about one article never end up
    /// on both sides).
    pub fn split_by_article(self) -> (SquadDataset, SquadDataset) {
        let mut train = self.data;
        let eval = train.split_off(train.len() / 2);
        (
            SquadDataset {
                data: train,
                version: self.version.clone(),
            },
            SquadDataset {
                data: eval,
                version: self.version,
            },
        )
    }

    /// Keeps the questions of the first articles up to `max_questions` in total (0 = all);
    /// the article reaching the cap is cut at paragraph granularity.
    pub fn truncate_questions(&mut self, max_questions: usize) {
        if max_questions == 0 {
            return;
        }
        let mut left = max_questions;
        self.data.retain_mut(|article| {
            article.paragraphs.retain_mut(|p| {
                if left == 0 {
                    return false;
                }
                p.qas.truncate(left);
                left -= p.qas.len();
                true
            });
            !article.paragraphs.is_empty()
        });
    }
}

/// Reads a SQuAD v1.1 JSON file.
pub fn load_squad(path: &Path) -> Result<SquadDataset> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::data(
                path,
                "SQuAD file not found: set finetune.squad.dev_file / train_file to a SQuAD \
                 v1.1 JSON file, or remove `squad` from finetune.tasks",
            ))
        }
        Err(e) => return Err(Error::io(path, e)),
    };
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::data(path, format!("not a SQuAD v1.1 JSON file: {e}")))
}

// ---------------------------------------------------------------------------------------
// Examples: whitespace doc tokens.

/// A context split on whitespace as `read_squad_examples` does, with each word's byte
/// range in the text.
#[derive(Debug, Clone, PartialEq)]
pub struct SquadContext {
    pub text: String,
    /// Whitespace-separated words (`doc_tokens` in run_squad.py).
    pub doc_tokens: Vec<String>,
    /// Byte range of each doc token in `text`.
    pub word_spans: Vec<(usize, usize)>,
    /// For each character (not byte) of `text`: the index of the word it belongs to, or of
    /// the previous word for whitespace (`char_to_word_offset`; `None` before the first word).
    pub char_to_word_offset: Vec<Option<usize>>,
}

/// run_squad.py's `is_whitespace`: space, tab, CR, LF and U+202F (narrow no-break space).
fn is_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n' | '\u{202f}')
}

impl SquadContext {
    /// Splits `text` into doc tokens.
    pub fn new(text: String) -> SquadContext {
        let mut doc_tokens: Vec<String> = Vec::new();
        let mut word_spans: Vec<(usize, usize)> = Vec::new();
        let mut char_to_word_offset = Vec::with_capacity(text.len());
        let mut prev_is_whitespace = true;
        for (byte, c) in text.char_indices() {
            if is_whitespace(c) {
                prev_is_whitespace = true;
            } else {
                if prev_is_whitespace {
                    doc_tokens.push(String::new());
                    word_spans.push((byte, byte));
                }
                doc_tokens.last_mut().expect("a word was started").push(c);
                word_spans.last_mut().expect("a word was started").1 = byte + c.len_utf8();
                prev_is_whitespace = false;
            }
            char_to_word_offset.push(doc_tokens.len().checked_sub(1));
        }
        SquadContext {
            text,
            doc_tokens,
            word_spans,
            char_to_word_offset,
        }
    }

    /// The word holding byte `offset` (the last word starting at or before it).
    fn word_at_byte(&self, offset: usize) -> Option<usize> {
        self.word_spans
            .partition_point(|&(start, _)| start <= offset)
            .checked_sub(1)
    }
}

/// A question about a context (`SquadExample` in run_squad.py).
#[derive(Debug, Clone, PartialEq)]
pub struct SquadExample {
    pub qas_id: String,
    pub question_text: String,
    /// Shared by all questions of one paragraph.
    pub context: Arc<SquadContext>,
    /// Every gold answer text (evaluation takes the max over them).
    pub answers: Vec<String>,
    /// The first answer's text and doc-token span, for training; `None` when it could not
    /// be located in the doc tokens.
    pub orig_answer_text: Option<String>,
    pub start_position: usize,
    pub end_position: usize,
}

/// Reads every question of `dataset` (`read_squad_examples`). With `is_training`, a question
/// whose first answer cannot be found in the whitespace doc tokens is dropped (with a
/// warning count), as run_squad.py does; for evaluation every question is kept.
pub fn read_squad_examples(dataset: &SquadDataset, is_training: bool) -> Vec<SquadExample> {
    let mut examples = Vec::new();
    let mut unmatched = 0usize;
    for paragraph in dataset.data.iter().flat_map(|a| &a.paragraphs) {
        let context = Arc::new(SquadContext::new(paragraph.context.clone()));
        for qa in &paragraph.qas {
            let located = qa.answers.first().and_then(|a| locate_answer(&context, a));
            if is_training && located.is_none() {
                unmatched += 1;
                continue;
            }
            let (start_position, end_position) = located.unwrap_or((0, 0));
            examples.push(SquadExample {
                qas_id: qa.id.clone(),
                question_text: qa.question.clone(),
                context: Arc::clone(&context),
                answers: qa.answers.iter().map(|a| a.text.clone()).collect(),
                orig_answer_text: located.map(|_| qa.answers[0].text.clone()),
                start_position,
                end_position,
            });
        }
    }
    if unmatched > 0 {
        tracing::warn!(
            unmatched,
            "SQuAD questions dropped: answer not found in the context"
        );
    }
    examples
}

/// The doc-token span of an answer, or `None` when its offset is out of range or the
/// words there do not contain the answer text ("Could not find answer" in run_squad.py).
fn locate_answer(context: &SquadContext, answer: &AnswerSpan) -> Option<(usize, usize)> {
    let length = answer.text.chars().count();
    if length == 0 {
        return None;
    }
    let start = (*context.char_to_word_offset.get(answer.answer_start)?)?;
    let end = (*context
        .char_to_word_offset
        .get(answer.answer_start + length - 1)?)?;
    let actual_text = context.doc_tokens[start..=end].join(" ");
    let cleaned_answer_text = answer.text.split_whitespace().collect::<Vec<_>>().join(" ");
    actual_text
        .contains(&cleaned_answer_text)
        .then_some((start, end))
}

// ---------------------------------------------------------------------------------------
// Features: WordPiece windows.

/// The WordPiece tokens of one context (`all_doc_tokens` with its maps).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizedContext {
    pub ids: Vec<u32>,
    /// Byte range of each token in the context.
    pub offsets: Vec<(usize, usize)>,
    /// Word (doc token) of each WordPiece token.
    pub tok_to_orig_index: Vec<usize>,
    /// First WordPiece token of each word (the token count so far for a word that yields
    /// no token).
    pub orig_to_tok_index: Vec<usize>,
}

/// Tokenizes a whole context once and maps every piece to its whitespace word.
pub fn tokenize_context(
    context: &SquadContext,
    tokenizer: &dyn OffsetTokenizer,
) -> Result<TokenizedContext> {
    let pieces = tokenizer.tokenize_with_offsets(&context.text)?;
    let mut tok_to_orig_index = Vec::with_capacity(pieces.len());
    for &(_, (start, _)) in &pieces {
        // A piece never crosses whitespace, so its first byte names its word.
        tok_to_orig_index.push(context.word_at_byte(start).unwrap_or(0));
    }
    let mut orig_to_tok_index = Vec::with_capacity(context.doc_tokens.len());
    let mut next = 0;
    for word in 0..context.doc_tokens.len() {
        while next < tok_to_orig_index.len() && tok_to_orig_index[next] < word {
            next += 1;
        }
        orig_to_tok_index.push(next);
    }
    Ok(TokenizedContext {
        ids: pieces.iter().map(|&(id, _)| id).collect(),
        offsets: pieces.iter().map(|&(_, o)| o).collect(),
        tok_to_orig_index,
        orig_to_tok_index,
    })
}

/// Window sizes of the features (paper: 384 / 128 / 64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureSizes {
    pub max_seq_length: usize,
    pub doc_stride: usize,
    pub max_query_length: usize,
}

/// One window over a context (`InputFeatures` in run_squad.py), unpadded.
#[derive(Debug, Clone, PartialEq)]
pub struct SquadFeature {
    /// Index of the example in the slice given to [`convert_examples_to_features`].
    pub example_index: usize,
    /// Which window of the example this is.
    pub doc_span_index: usize,
    /// `[CLS] query [SEP] doc window [SEP]`.
    pub input_ids: Vec<u32>,
    /// 0 for `[CLS] query [SEP]`, 1 for the window and its `[SEP]`.
    pub segment_ids: Vec<u32>,
    /// Position of the first window token in `input_ids` (`len(query) + 2`).
    pub doc_offset: usize,
    /// Index of the first window token in the context's WordPiece tokens.
    pub doc_start: usize,
    /// For each window token: whether this window gives it the most context.
    pub token_is_max_context: Vec<bool>,
    /// Answer start and end in `input_ids`; 0 (`[CLS]`) when the answer is not inside the
    /// window or the example has no located answer.
    pub start_position: usize,
    pub end_position: usize,
    /// The context's tokens, shared by all windows of its questions.
    pub context_tokens: Arc<TokenizedContext>,
}

impl SquadFeature {
    /// Number of WordPiece tokens of the context in this window.
    pub fn doc_len(&self) -> usize {
        self.token_is_max_context.len()
    }

    /// The context token index at input position `position`, if it lies in the window.
    pub fn doc_token(&self, position: usize) -> Option<usize> {
        (position >= self.doc_offset && position < self.doc_offset + self.doc_len())
            .then(|| self.doc_start + position - self.doc_offset)
    }

    /// The word (doc token) at input position `position` (`token_to_orig_map`).
    pub fn token_to_orig(&self, position: usize) -> Option<usize> {
        self.doc_token(position)
            .map(|t| self.context_tokens.tok_to_orig_index[t])
    }

    /// Whether this window is the best one for the token at `position`.
    pub fn is_max_context(&self, position: usize) -> bool {
        self.doc_token(position)
            .is_some_and(|t| self.token_is_max_context[t - self.doc_start])
    }

    /// Input ids, segment ids and mask padded with zeros to `len`.
    pub fn padded(&self, len: usize, pad_id: u32) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
        let real = self.input_ids.len();
        let mut ids = self.input_ids.clone();
        ids.resize(len, pad_id);
        let mut segments = self.segment_ids.clone();
        segments.resize(len, 0);
        let mut mask = vec![1; real];
        mask.resize(len, 0);
        (ids, segments, mask)
    }
}

/// A window `[start, start + length)` over the context's WordPiece tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocSpan {
    pub start: usize,
    pub length: usize,
}

/// The sliding windows of run_squad.py: each as long as allowed, the next starting
/// `doc_stride` tokens later, until the last one reaches the end.
pub fn doc_spans(
    num_doc_tokens: usize,
    max_tokens_for_doc: usize,
    doc_stride: usize,
) -> Vec<DocSpan> {
    let mut spans = Vec::new();
    let mut start_offset = 0;
    while start_offset < num_doc_tokens {
        let length = (num_doc_tokens - start_offset).min(max_tokens_for_doc);
        spans.push(DocSpan {
            start: start_offset,
            length,
        });
        if start_offset + length == num_doc_tokens {
            break;
        }
        start_offset += length.min(doc_stride);
    }
    spans
}

/// `_check_is_max_context`: whether span `cur` gives token `position` the largest
/// `min(left context, right context) + 0.01 * span length` among the spans holding it.
pub fn check_is_max_context(spans: &[DocSpan], cur: usize, position: usize) -> bool {
    let mut best: Option<(f64, usize)> = None;
    for (index, span) in spans.iter().enumerate() {
        let end = span.start + span.length - 1;
        if position < span.start || position > end {
            continue;
        }
        let left = position - span.start;
        let right = end - position;
        let score = left.min(right) as f64 + 0.01 * span.length as f64;
        if best.is_none_or(|(b, _)| score > b) {
            best = Some((score, index));
        }
    }
    best.map(|(_, i)| i) == Some(cur)
}

/// `_improve_answer_span`: the smallest sub-span of `[start, end]` whose tokens equal the
/// tokenized answer (e.g. "1895" inside "(1895-1943)."), else `[start, end]` unchanged.
pub fn improve_answer_span(
    doc_ids: &[u32],
    start: usize,
    end: usize,
    answer_ids: &[u32],
) -> (usize, usize) {
    for new_start in start..=end {
        for new_end in (new_start..=end).rev() {
            if doc_ids[new_start..=new_end] == *answer_ids {
                return (new_start, new_end);
            }
        }
    }
    (start, end)
}

/// `convert_examples_to_features`: tokenizes each context once, truncates questions to
/// `max_query_length`, and cuts the context into windows of at most
/// `max_seq_length - len(query) - 3` tokens (`[CLS]`, `[SEP]`, `[SEP]`).
pub fn convert_examples_to_features(
    examples: &[SquadExample],
    tokenizer: &dyn OffsetTokenizer,
    sizes: FeatureSizes,
) -> Result<Vec<SquadFeature>> {
    let cls = tokenizer.special_id("[CLS]")?;
    let sep = tokenizer.special_id("[SEP]")?;
    let mut features = Vec::new();
    let mut cached: Option<(Arc<SquadContext>, Arc<TokenizedContext>)> = None;
    for (example_index, example) in examples.iter().enumerate() {
        // Questions of one paragraph are consecutive: tokenize each context once.
        let context_tokens = match &cached {
            Some((c, t)) if Arc::ptr_eq(c, &example.context) => Arc::clone(t),
            _ => {
                let t = Arc::new(tokenize_context(&example.context, tokenizer)?);
                cached = Some((Arc::clone(&example.context), Arc::clone(&t)));
                t
            }
        };
        let mut query_ids: Vec<u32> = tokenizer
            .tokenize_with_offsets(&example.question_text)?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        query_ids.truncate(sizes.max_query_length);
        let answer = answer_token_span(example, &context_tokens, tokenizer)?;
        // The -3 accounts for [CLS], [SEP] and [SEP].
        let max_tokens_for_doc = sizes
            .max_seq_length
            .checked_sub(query_ids.len() + 3)
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                Error::Config(format!(
                    "finetune.squad.max_seq_length = {} leaves no room for the context after \
                     a {}-token question: raise it or lower max_query_length",
                    sizes.max_seq_length,
                    query_ids.len()
                ))
            })?;
        let spans = doc_spans(
            context_tokens.ids.len(),
            max_tokens_for_doc,
            sizes.doc_stride,
        );
        for (doc_span_index, span) in spans.iter().enumerate() {
            let doc_offset = query_ids.len() + 2;
            let mut input_ids = Vec::with_capacity(doc_offset + span.length + 1);
            input_ids.push(cls);
            input_ids.extend_from_slice(&query_ids);
            input_ids.push(sep);
            input_ids.extend_from_slice(&context_tokens.ids[span.start..span.start + span.length]);
            input_ids.push(sep);
            let mut segment_ids = vec![0; doc_offset];
            segment_ids.resize(input_ids.len(), 1);
            let token_is_max_context = (span.start..span.start + span.length)
                .map(|t| check_is_max_context(&spans, doc_span_index, t))
                .collect();
            let (start_position, end_position) = match answer {
                Some((s, e)) if s >= span.start && e < span.start + span.length => {
                    (s - span.start + doc_offset, e - span.start + doc_offset)
                }
                _ => (0, 0),
            };
            features.push(SquadFeature {
                example_index,
                doc_span_index,
                input_ids,
                segment_ids,
                doc_offset,
                doc_start: span.start,
                token_is_max_context,
                start_position,
                end_position,
                context_tokens: Arc::clone(&context_tokens),
            });
        }
    }
    Ok(features)
}

/// The answer's span in the context's WordPiece tokens, refined by `improve_answer_span`.
fn answer_token_span(
    example: &SquadExample,
    tokens: &TokenizedContext,
    tokenizer: &dyn OffsetTokenizer,
) -> Result<Option<(usize, usize)>> {
    let Some(answer_text) = &example.orig_answer_text else {
        return Ok(None);
    };
    let num_words = example.context.doc_tokens.len();
    let tok_start = tokens.orig_to_tok_index[example.start_position];
    let tok_end = if example.end_position + 1 < num_words {
        tokens.orig_to_tok_index[example.end_position + 1].saturating_sub(1)
    } else {
        tokens.ids.len().saturating_sub(1)
    };
    if tokens.ids.is_empty() || tok_end < tok_start {
        return Ok(None);
    }
    let answer_ids: Vec<u32> = tokenizer
        .tokenize_with_offsets(answer_text)?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    Ok(Some(improve_answer_span(
        &tokens.ids,
        tok_start,
        tok_end,
        &answer_ids,
    )))
}

// ---------------------------------------------------------------------------------------
// Predictions: the best span from start and end logits.

/// One candidate answer of the n-best list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NbestPrediction {
    pub text: String,
    pub start_logit: f32,
    pub end_logit: f32,
    /// Softmax of `start_logit + end_logit` over the n-best list.
    pub probability: f32,
}

/// `_get_best_indexes`: the indices of the `n` largest logits, best first (ties keep the
/// lower index first).
pub fn get_best_indexes(logits: &[f32], n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    order.truncate(n);
    order
}

/// Start and end logits of one feature, over its input positions (padding allowed).
#[derive(Debug, Clone, PartialEq)]
pub struct SpanLogits {
    pub start_logits: Vec<f32>,
    pub end_logits: Vec<f32>,
}

/// The n-best answers of one example from its windows' logits (`write_predictions`):
/// candidate pairs from the top `n_best_size` starts and ends of each window, kept when
/// both lie in the window's context part, the start is a max-context token, `end >= start`
/// and the span has at most `max_answer_length` tokens; ranked by `start + end` logit,
/// deduplicated by text. The list holds the single answer `"empty"` when nothing qualifies.
pub fn write_predictions(
    example: &SquadExample,
    features: &[&SquadFeature],
    logits: &[&SpanLogits],
    n_best_size: usize,
    max_answer_length: usize,
) -> Vec<NbestPrediction> {
    struct Prelim {
        feature: usize,
        start: usize,
        end: usize,
        start_logit: f32,
        end_logit: f32,
    }
    let mut prelim = Vec::new();
    for (feature_index, (feature, logits)) in features.iter().zip(logits).enumerate() {
        let len = feature.input_ids.len();
        let starts = get_best_indexes(&logits.start_logits, n_best_size);
        let ends = get_best_indexes(&logits.end_logits, n_best_size);
        for &start in &starts {
            for &end in &ends {
                if start >= len || end >= len {
                    continue;
                }
                if feature.doc_token(start).is_none() || feature.doc_token(end).is_none() {
                    continue;
                }
                if !feature.is_max_context(start) || end < start {
                    continue;
                }
                if end - start + 1 > max_answer_length {
                    continue;
                }
                prelim.push(Prelim {
                    feature: feature_index,
                    start,
                    end,
                    start_logit: logits.start_logits[start],
                    end_logit: logits.end_logits[end],
                });
            }
        }
    }
    prelim.sort_by(|a, b| (b.start_logit + b.end_logit).total_cmp(&(a.start_logit + a.end_logit)));
    let mut nbest: Vec<NbestPrediction> = Vec::new();
    for p in prelim {
        if nbest.len() >= n_best_size {
            break;
        }
        let feature = features[p.feature];
        let text = span_text(example, feature, p.start, p.end);
        if nbest.iter().any(|n| n.text == text) {
            continue;
        }
        nbest.push(NbestPrediction {
            text,
            start_logit: p.start_logit,
            end_logit: p.end_logit,
            probability: 0.0,
        });
    }
    if nbest.is_empty() {
        nbest.push(NbestPrediction {
            text: "empty".into(),
            start_logit: 0.0,
            end_logit: 0.0,
            probability: 0.0,
        });
    }
    // `_compute_softmax` over the n-best scores.
    let scores: Vec<f32> = nbest.iter().map(|n| n.start_logit + n.end_logit).collect();
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
    let total: f32 = exps.iter().sum();
    for (n, e) in nbest.iter_mut().zip(exps) {
        n.probability = e / total;
    }
    nbest
}

/// The original context text from the first byte of the piece at `start` to the last
/// byte of the piece at `end` (see the module docs on `get_final_text`).
fn span_text(example: &SquadExample, feature: &SquadFeature, start: usize, end: usize) -> String {
    let tokens = &feature.context_tokens;
    let first = feature.doc_token(start).expect("checked by the caller");
    let last = feature.doc_token(end).expect("checked by the caller");
    let from = tokens.offsets[first].0;
    let to = tokens.offsets[last].1;
    example.context.text[from..to].to_string()
}

// ---------------------------------------------------------------------------------------
// The official evaluation (evaluate-v1.1.py).

/// `normalize_answer`: lower case, drop ASCII punctuation, drop the articles a / an / the,
/// and collapse whitespace.
pub fn normalize_answer(s: &str) -> String {
    let lower = s.to_lowercase();
    let no_punc: String = lower
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    let no_articles = remove_articles(&no_punc);
    no_articles.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The regex `\b(a|an|the)\b` replaced by a space: a whole run of word characters
/// (alphanumerics and `_`) that is exactly an article.
fn remove_articles(text: &str) -> String {
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if matches!(word.as_str(), "a" | "an" | "the") {
            out.push(' ');
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if is_word(c) {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// `exact_match_score`: the normalised strings are equal.
pub fn exact_match_score(prediction: &str, ground_truth: &str) -> bool {
    normalize_answer(prediction) == normalize_answer(ground_truth)
}

/// `f1_score`: F1 of the bags of normalised tokens; 0.0 when they share none.
pub fn f1_score(prediction: &str, ground_truth: &str) -> f64 {
    let prediction = normalize_answer(prediction);
    let ground_truth = normalize_answer(ground_truth);
    let prediction_tokens: Vec<&str> = prediction.split_whitespace().collect();
    let ground_truth_tokens: Vec<&str> = ground_truth.split_whitespace().collect();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for t in &ground_truth_tokens {
        *counts.entry(t).or_default() += 1;
    }
    let mut num_same = 0usize;
    for t in &prediction_tokens {
        if let Some(c) = counts.get_mut(t) {
            if *c > 0 {
                *c -= 1;
                num_same += 1;
            }
        }
    }
    if num_same == 0 {
        return 0.0;
    }
    let precision = num_same as f64 / prediction_tokens.len() as f64;
    let recall = num_same as f64 / ground_truth_tokens.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

/// `metric_max_over_ground_truths`: the best score against any gold answer (0.0 if none).
pub fn metric_max_over_ground_truths<S: AsRef<str>>(
    metric: impl Fn(&str, &str) -> f64,
    prediction: &str,
    ground_truths: &[S],
) -> f64 {
    ground_truths
        .iter()
        .map(|g| metric(prediction, g.as_ref()))
        .fold(0.0, f64::max)
}

/// The official SQuAD v1.1 scores, in percent.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SquadScores {
    pub exact_match: f64,
    pub f1: f64,
    /// Questions scored (unanswered ones count as 0).
    pub total: usize,
    /// Questions that had a prediction.
    pub answered: usize,
}

/// `evaluate`: exact match and F1 over every question of `dataset`, a missing prediction
/// scoring 0 (the official script prints "Unanswered question ... will receive score 0").
pub fn evaluate(dataset: &SquadDataset, predictions: &HashMap<String, String>) -> SquadScores {
    let (mut exact_match, mut f1, mut total, mut answered) = (0.0, 0.0, 0usize, 0usize);
    for qa in dataset
        .data
        .iter()
        .flat_map(|a| &a.paragraphs)
        .flat_map(|p| &p.qas)
    {
        total += 1;
        let Some(prediction) = predictions.get(&qa.id) else {
            continue;
        };
        answered += 1;
        let ground_truths: Vec<&str> = qa.answers.iter().map(|a| a.text.as_str()).collect();
        exact_match += metric_max_over_ground_truths(
            |p, g| f64::from(u8::from(exact_match_score(p, g))),
            prediction,
            &ground_truths,
        );
        f1 += metric_max_over_ground_truths(f1_score, prediction, &ground_truths);
    }
    if total == 0 {
        return SquadScores {
            exact_match: 0.0,
            f1: 0.0,
            total,
            answered,
        };
    }
    SquadScores {
        exact_match: 100.0 * exact_match / total as f64,
        f1: 100.0 * f1 / total as f64,
        total,
        answered,
    }
}
