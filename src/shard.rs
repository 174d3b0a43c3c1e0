//! Shards: the Parquet files stages hand each other, and the records they hold.
//!
//! `pairs` writes [`SentencePair`]s, `mask` writes [`TrainingInstance`]s as fixed-length
//! rows (the columns of Google's TFRecords: `input_ids`, `token_type_ids`, `attention_mask`,
//! `masked_lm_positions`, `masked_lm_ids`, `masked_lm_weights`, `next_sentence_label`), so
//! polars, pandas and pyarrow open them directly. Every write is atomic: temp file, fsync,
//! rename. Reading checks the schema and names the file on any failure.

use std::fmt;

/// A sentence pair for next-sentence prediction, as token ids (no special tokens yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentencePair {
    /// Segment A token ids.
    pub tokens_a: Vec<u32>,
    /// Segment B token ids.
    pub tokens_b: Vec<u32>,
    /// B is a random span from another document rather than A's continuation.
    pub is_random_next: bool,
}

/// A single training instance (sentence pair), as in Google's `TrainingInstance`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainingInstance {
    /// `[CLS] A [SEP] B [SEP]` with masked positions replaced, unpadded.
    pub tokens: Vec<u32>,
    /// 0 for `[CLS] A [SEP]`, 1 for `B [SEP]`.
    pub segment_ids: Vec<u8>,
    /// Positions of the masked-LM predictions, ascending.
    pub masked_lm_positions: Vec<u32>,
    /// Original token ids at those positions.
    pub masked_lm_labels: Vec<u32>,
    /// Next-sentence label: B is random.
    pub is_random_next: bool,
}

impl fmt::Display for TrainingInstance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "tokens: {:?}", self.tokens)?;
        writeln!(f, "segment_ids: {:?}", self.segment_ids)?;
        writeln!(f, "is_random_next: {}", self.is_random_next)?;
        writeln!(f, "masked_lm_positions: {:?}", self.masked_lm_positions)?;
        write!(f, "masked_lm_labels: {:?}", self.masked_lm_labels)
    }
}

/// The rows of one instance shard, flattened row-major: what the trainer batches from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InstanceShard {
    /// Number of rows.
    pub rows: usize,
    /// `max_seq_length` of every row.
    pub seq_len: usize,
    /// `max_predictions_per_seq` of every row.
    pub max_predictions: usize,
    /// rows x seq_len, 0 = `[PAD]`.
    pub input_ids: Vec<u32>,
    /// rows x seq_len.
    pub token_type_ids: Vec<u32>,
    /// rows x seq_len, 1 for real tokens.
    pub attention_mask: Vec<u32>,
    /// rows x max_predictions, padded with 0.
    pub masked_lm_positions: Vec<u32>,
    /// rows x max_predictions, padded with 0.
    pub masked_lm_ids: Vec<u32>,
    /// rows x max_predictions, 1.0 for real predictions, 0.0 for padding.
    pub masked_lm_weights: Vec<f32>,
    /// rows, 1 when B is random.
    pub next_sentence_label: Vec<u32>,
}
