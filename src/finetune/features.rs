//! Examples to ids: `[CLS] A [SEP] B [SEP]` features (`run_classifier.py`'s
//! `convert_single_example`) and batches padded to their longest row.

use crate::error::{Error, Result};
use crate::model::{BertDevice, BertInputs};
use crate::tasks::{Example, Label};
use crate::tokenize::OffsetTokenizer;

/// `[CLS] A [SEP] B [SEP]` of one example (`InputFeatures` in run_classifier.py), unpadded.
#[derive(Debug, Clone, PartialEq)]
pub struct InputFeatures {
    pub input_ids: Vec<u32>,
    /// 0 for `[CLS] A [SEP]`, 1 for `B [SEP]`.
    pub segment_ids: Vec<u32>,
    pub label: Option<Label>,
}

/// `_truncate_seq_pair`: drops one token at a time from the end of the longer sequence
/// until the pair fits in `max_length` (a short text keeps all of its tokens).
pub fn truncate_pair_tails(tokens_a: &mut Vec<u32>, tokens_b: &mut Vec<u32>, max_length: usize) {
    while tokens_a.len() + tokens_b.len() > max_length {
        if tokens_a.len() > tokens_b.len() {
            tokens_a.pop();
        } else {
            tokens_b.pop();
        }
    }
}

fn token_ids(tokenizer: &dyn OffsetTokenizer, text: &str) -> Result<Vec<u32>> {
    Ok(tokenizer
        .tokenize_with_offsets(text)?
        .into_iter()
        .map(|(id, _)| id)
        .collect())
}

/// `convert_single_example` for every example: WordPiece ids, truncation to
/// `max_seq_length` (3 places for `[CLS] [SEP] [SEP]`, 2 for a single text).
pub fn convert_examples_to_features(
    examples: &[Example],
    tokenizer: &dyn OffsetTokenizer,
    max_seq_length: usize,
) -> Result<Vec<InputFeatures>> {
    let cls = tokenizer.special_id("[CLS]")?;
    let sep = tokenizer.special_id("[SEP]")?;
    examples
        .iter()
        .map(|example| {
            let mut tokens_a = token_ids(tokenizer, &example.text_a)?;
            let mut tokens_b = match &example.text_b {
                Some(b) => Some(token_ids(tokenizer, b)?),
                None => None,
            };
            match &mut tokens_b {
                // Account for [CLS], [SEP], [SEP] with "- 3".
                Some(b) => truncate_pair_tails(&mut tokens_a, b, max_seq_length.saturating_sub(3)),
                // Account for [CLS] and [SEP] with "- 2".
                None => tokens_a.truncate(max_seq_length.saturating_sub(2)),
            }
            let mut input_ids = Vec::with_capacity(max_seq_length);
            input_ids.push(cls);
            input_ids.extend_from_slice(&tokens_a);
            input_ids.push(sep);
            let mut segment_ids = vec![0; input_ids.len()];
            if let Some(b) = tokens_b {
                input_ids.extend_from_slice(&b);
                input_ids.push(sep);
                segment_ids.resize(input_ids.len(), 1);
            }
            Ok(InputFeatures {
                input_ids,
                segment_ids,
                label: example.label,
            })
        })
        .collect()
}

/// A batch on the host, padded with `[PAD]` (id 0) to its longest row.
#[derive(Debug, Clone, PartialEq)]
pub struct HostBatch {
    pub batch: usize,
    pub seq_len: usize,
    pub input_ids: Vec<u32>,
    pub token_type_ids: Vec<u32>,
    pub attention_mask: Vec<u32>,
}

impl HostBatch {
    /// Pads `rows` of `(input_ids, segment_ids)` to the longest one.
    pub fn pad<'a>(rows: impl IntoIterator<Item = (&'a [u32], &'a [u32])> + Clone) -> HostBatch {
        let seq_len = rows
            .clone()
            .into_iter()
            .map(|(ids, _)| ids.len())
            .max()
            .unwrap_or(1);
        let mut batch = HostBatch {
            batch: 0,
            seq_len,
            input_ids: Vec::new(),
            token_type_ids: Vec::new(),
            attention_mask: Vec::new(),
        };
        for (ids, segments) in rows {
            batch.batch += 1;
            let pad = seq_len - ids.len();
            batch.input_ids.extend_from_slice(ids);
            batch.input_ids.extend(std::iter::repeat_n(0, pad));
            batch.token_type_ids.extend_from_slice(segments);
            batch.token_type_ids.extend(std::iter::repeat_n(0, pad));
            batch
                .attention_mask
                .extend(std::iter::repeat_n(1, ids.len()));
            batch.attention_mask.extend(std::iter::repeat_n(0, pad));
        }
        batch
    }

    /// The device tensors.
    pub fn inputs<D: BertDevice>(&self, device: &D) -> BertInputs<D> {
        BertInputs::new(
            device,
            self.batch,
            self.seq_len,
            &self.input_ids,
            &self.token_type_ids,
            &self.attention_mask,
        )
    }
}

pub(super) fn classification_batch(features: &[&InputFeatures]) -> HostBatch {
    HostBatch::pad(
        features
            .iter()
            .map(|f| (f.input_ids.as_slice(), f.segment_ids.as_slice())),
    )
}

/// The loss target of a label: the class id as a float, or the score.
pub(super) fn label_value(label: Option<Label>) -> Result<f32> {
    match label {
        Some(Label::Class(c)) => Ok(c as f32),
        Some(Label::Score(s)) => Ok(s as f32),
        None => Err(Error::Model("a training example has no label".into())),
    }
}
