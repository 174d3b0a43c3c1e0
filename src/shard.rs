//! Shards: the files stages hand each other, and the records they hold.
//!
//! Shards are Arrow IPC files (`.arrow`, Feather v2: what HF `datasets` caches are made
//! of), so polars (`pl.read_ipc`), pyarrow (`pyarrow.ipc.open_file`) and pandas open them
//! directly. Arrow's list columns are written as their buffers, which is why the data
//! stages spend their time on the data and not on the file format (Parquet's nested
//! encoding, compression and decoding took about half of the `mask` stage's CPU).
//!
//! `pairs` writes sentence pairs; `mask` writes masked-LM instances unpadded, with the
//! shape rows are padded to in the schema metadata. Both are built and written in columns
//! ([`PairColumns`], [`InstanceColumns`]: every row's ids in one buffer, as Arrow stores
//! them); [`SentencePair`] and [`TrainingInstance`] are the same records one row at a
//! time. [`read_instances`] gives back the fixed-length rows of Google's TFRecords
//! (`input_ids`, `token_type_ids`, `attention_mask`, `masked_lm_positions`,
//! `masked_lm_ids`, `masked_lm_weights`, `next_sentence_label`), deriving the segment ids,
//! attention mask and weights from the lengths. Ids are stored as `u16` when they fit. Every write is atomic (temp file, rename)
//! and made durable with the rest of its stage's outputs before the stage records them.
//! Reading checks the schema and names the file on any failure. Files are written in record
//! batches of [`BATCH_ROWS`] rows, and a pairs shard can be read batch by batch
//! ([`PairBatches`]): the `mask` stage holds one batch of a shard, not the shard.
//!
//! A shard's identity is a [`ShardId`] (split, sequence length, input block, shard, part):
//! it names the file, is stored in the shard's manifest record, and is what later stages
//! read back. No code parses a shard's file name.

use std::fmt;

use serde::{Deserialize, Serialize};

mod columns;
pub use columns::{clear_for, IdLists, InstanceColumns, PairColumns};

/// Which split a shard belongs to: documents held out of each file form `Eval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Pre-training pairs.
    Train,
    /// Pairs from held-out documents, for evaluating the masked LM.
    Eval,
}

impl Split {
    /// `train` or `eval`: the name used in shard file names.
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Eval => "eval",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which rows a shard holds: `pairs` writes shard `shard` of input file `file`'s `split`,
/// cut for `seq_len`; `mask` writes that shard's instances in parts. The file name is made
/// from it ([`ShardId::file_name`]) and it is stored in the manifest record, where later
/// stages read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ShardId {
    pub split: Split,
    /// The sequence length the rows were cut for, in a run that cuts several
    /// (`[[pretrain.phases]]`; names start `seq{L}-`); `None` in a run with one length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq_len: Option<usize>,
    /// Index of the input block ([`crate::corpus::CorpusBlock`]; the first of a pooled group).
    /// Block `i` is input file `i` when no file is over [`crate::corpus::BLOCK_BYTES`].
    pub file: usize,
    /// Index of the shard among the file's shards of this split.
    pub shard: usize,
    /// The part of a pairs shard's instances a mask shard holds; `None` for a pairs shard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<usize>,
}

impl ShardId {
    /// The file name: `[seq{L}-]{split}-FFFFF-SSSS[-PP].arrow`.
    pub fn file_name(&self) -> String {
        let prefix = self
            .seq_len
            .map(|l| format!("{}-", length_key(l)))
            .unwrap_or_default();
        let part = self.part.map(|p| format!("-{p:02}")).unwrap_or_default();
        format!(
            "{prefix}{}-{:05}-{:04}{part}.arrow",
            self.split, self.file, self.shard
        )
    }

    /// Part `part` of this shard's instances.
    pub fn with_part(self, part: usize) -> ShardId {
        ShardId {
            part: Some(part),
            ..self
        }
    }
}

/// How a sequence length is named in shard file names and per-length metrics: `seq128`.
pub fn length_key(seq_len: usize) -> String {
    format!("seq{seq_len}")
}

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

/// Rows of masked-LM instances, flattened row-major: the columns of the mask stage's shards
/// (Google's TFRecord features). One type serves a whole shard and a training batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MaskedLmBatch {
    /// Number of rows.
    pub batch: usize,
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

impl MaskedLmBatch {
    /// No rows yet, room for `rows` of this shape.
    fn with_shape(rows: usize, seq_len: usize, max_predictions: usize) -> Self {
        MaskedLmBatch {
            batch: 0,
            seq_len,
            max_predictions,
            input_ids: Vec::with_capacity(rows * seq_len),
            token_type_ids: Vec::with_capacity(rows * seq_len),
            attention_mask: Vec::with_capacity(rows * seq_len),
            masked_lm_positions: Vec::with_capacity(rows * max_predictions),
            masked_lm_ids: Vec::with_capacity(rows * max_predictions),
            masked_lm_weights: Vec::with_capacity(rows * max_predictions),
            next_sentence_label: Vec::with_capacity(rows),
        }
    }

    /// Appends one row, padded: `[PAD]` (0) with attention 0 up to `seq_len`, predictions
    /// with position, id and weight 0 up to `max_predictions`. The caller has checked that
    /// the row fits.
    fn push_padded_row(
        &mut self,
        tokens: &[u32],
        token_types: impl Iterator<Item = u32>,
        positions: &[u32],
        ids: &[u32],
        is_random_next: bool,
    ) {
        let (len, npred) = (tokens.len(), positions.len());
        let pad = self.seq_len - len;
        self.input_ids.extend(tokens);
        self.input_ids.extend(std::iter::repeat_n(0, pad));
        self.token_type_ids.extend(token_types);
        self.token_type_ids.extend(std::iter::repeat_n(0, pad));
        self.attention_mask.extend(std::iter::repeat_n(1, len));
        self.attention_mask.extend(std::iter::repeat_n(0, pad));
        let pad = self.max_predictions - npred;
        self.masked_lm_positions.extend(positions);
        self.masked_lm_positions.extend(std::iter::repeat_n(0, pad));
        self.masked_lm_ids.extend(ids);
        self.masked_lm_ids.extend(std::iter::repeat_n(0, pad));
        self.masked_lm_weights
            .extend(std::iter::repeat_n(1.0, npred));
        self.masked_lm_weights.extend(std::iter::repeat_n(0.0, pad));
        self.next_sentence_label.push(is_random_next as u32);
        self.batch += 1;
    }
}

use std::fs::File;
use std::io::Write;
use std::path::Path;

use polars::prelude::*;

use crate::durable;
use crate::error::{Error, IoContext, Result};

/// What a shard write reports back for the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    /// Rows written.
    pub rows: u64,
    /// File size in bytes.
    pub bytes: u64,
    /// blake3 of the file, hex.
    pub blake3: String,
}

/// A whole instance shard as read from disk.
pub type InstanceShard = MaskedLmBatch;

/// Columns of a pairs shard.
pub const PAIR_COLUMNS: [&str; 3] = ["tokens_a", "tokens_b", "is_random_next"];

/// Columns of an instance shard as written ([`write_instances`]).
pub const INSTANCE_COLUMNS: [&str; 5] = [
    "input_ids",
    "segment_b_start",
    "masked_lm_positions",
    "masked_lm_ids",
    "next_sentence_label",
];

/// Writes `pairs` to a shard at `path` ([`write_pair_columns`]).
pub fn write_pairs(path: &Path, pairs: &[SentencePair]) -> Result<ShardInfo> {
    let rows: Vec<usize> = (0..pairs.len()).collect();
    write_pair_columns(path, &PairColumns::from_pairs(pairs), &rows)
}

/// Writes pairs `rows` of `pairs` (in that order) to a shard at `path`, atomically:
/// `tokens_a` and `tokens_b` as lists of ids (`u16` when every id fits), `is_random_next`
/// as booleans. Not fsynced: a stage's shards are flushed together before the stage records
/// them ([`write_frame`]).
pub fn write_pair_columns(path: &Path, pairs: &PairColumns, rows: &[usize]) -> Result<ShardInfo> {
    let n = rows.len();
    let random: BooleanChunked = rows
        .iter()
        .map(|&i| pairs.is_random_next[i])
        .collect_ca("is_random_next".into());
    let df = DataFrame::new(
        n,
        vec![
            IdLists::column("tokens_a", rows.iter().map(|&i| pairs.tokens_a.row(i))),
            IdLists::column("tokens_b", rows.iter().map(|&i| pairs.tokens_b.row(i))),
            random.into_series().into_column(),
        ],
    )
    .map_err(|e| Error::shard(path, format!("cannot build pairs frame: {e}")))?;
    write_frame(path, df, &[(FORMAT_KEY, PAIRS_FORMAT.to_string())])
}

/// Reads a pairs shard written by [`write_pairs`].
pub fn read_pairs(path: &Path) -> Result<Vec<SentencePair>> {
    Ok(read_pair_columns(path)?.to_pairs())
}

/// Reads a pairs shard into columns.
pub fn read_pair_columns(path: &Path) -> Result<PairColumns> {
    let mut pairs = PairColumns::default();
    read_pair_columns_into(path, &mut pairs)?;
    Ok(pairs)
}

/// [`read_pair_columns`] into `pairs`' buffers (cleared first), so that a reader of shard
/// after shard reuses memory it has already touched.
pub fn read_pair_columns_into(path: &Path, pairs: &mut PairColumns) -> Result<()> {
    let (df, _) = read_frame(path, &PAIR_COLUMNS)?;
    pair_columns_from_frame(path, &df, pairs)
}

/// A pairs shard read one record batch at a time (at most [`BATCH_ROWS`] rows each, as
/// [`write_pair_columns`] writes them; a shard written in one batch is read in one), so a
/// reader holds one batch of the shard, not all of it.
pub struct PairBatches {
    path: std::path::PathBuf,
    reader: polars_arrow::io::ipc::read::FileReader<File>,
    /// Rows of the batches read so far.
    rows_read: usize,
}

impl PairBatches {
    /// Opens the shard at `path` and checks its schema; the error names the file.
    pub fn open(path: &Path) -> Result<Self> {
        use polars_arrow::io::ipc::read::{read_file_metadata, FileReader};
        let mut file = File::open(path).at(path)?;
        let metadata = read_file_metadata(&mut file).map_err(|e| unreadable(path, e))?;
        for col in PAIR_COLUMNS {
            if !metadata.schema.contains(col) {
                return Err(missing_column(path, col));
            }
        }
        let mut reader = FileReader::new(file, metadata, None, None);
        READ_SCRATCH.with_borrow_mut(|scratch| reader.set_scratches(std::mem::take(scratch)));
        Ok(PairBatches {
            path: path.to_path_buf(),
            reader,
            rows_read: 0,
        })
    }

    /// Reads the next batch into `pairs` (cleared first) and returns the shard row its first
    /// row is, or `None` after the last batch.
    pub fn next_into(&mut self, pairs: &mut PairColumns) -> Result<Option<usize>> {
        let Some(batch) = self.reader.next() else {
            return Ok(None);
        };
        let df = DataFrame::from(batch.map_err(|e| unreadable(&self.path, e))?);
        pair_columns_from_frame(&self.path, &df, pairs)?;
        let first = self.rows_read;
        self.rows_read += pairs.len();
        Ok(Some(first))
    }
}

impl Drop for PairBatches {
    fn drop(&mut self) {
        let scratches = self.reader.take_scratches();
        READ_SCRATCH.with_borrow_mut(|scratch| *scratch = scratches);
    }
}

thread_local! {
    /// This thread's Arrow IPC reading buffers ([`PairBatches`]), about one batch's size.
    static READ_SCRATCH: std::cell::RefCell<(Vec<u8>, Vec<u8>)> = std::cell::RefCell::default();
}

/// A frame of a pairs shard (all of it, or one batch) into `pairs` (cleared first).
fn pair_columns_from_frame(path: &Path, df: &DataFrame, pairs: &mut PairColumns) -> Result<()> {
    IdLists::read_into(path, df, "tokens_a", &mut pairs.tokens_a)?;
    IdLists::read_into(path, df, "tokens_b", &mut pairs.tokens_b)?;
    let random = df
        .column("is_random_next")
        .and_then(|c| c.bool().cloned())
        .map_err(|e| schema_error(path, "is_random_next", e))?;
    if random.null_count() > 0 {
        return Err(Error::shard(
            path,
            "column `is_random_next` has nulls; rerun the `pairs` stage",
        ));
    }
    columns::clear_for(&mut pairs.is_random_next, random.len());
    pairs
        .is_random_next
        .extend(random.iter().map(|v| v.unwrap_or(false)));
    Ok(())
}

/// `instances` as fixed-length rows, the mask stage's row format: `[PAD]` (0) fills each
/// row up to `max_seq_length` (attention mask 0 there), predictions are padded to
/// `max_predictions` with position, id and weight 0. The error names the first instance
/// that does not fit.
pub fn pad_instances(
    instances: &[TrainingInstance],
    max_seq_length: usize,
    max_predictions: usize,
) -> std::result::Result<InstanceShard, String> {
    let mut shard = InstanceShard::with_shape(instances.len(), max_seq_length, max_predictions);
    for (i, inst) in instances.iter().enumerate() {
        let len = inst.tokens.len();
        let npred = inst.masked_lm_positions.len();
        if len > max_seq_length || npred > max_predictions || inst.segment_ids.len() != len {
            return Err(format!(
                "instance {i} has {len} tokens / {npred} predictions, more than max_seq_length {max_seq_length} / max_predictions_per_seq {max_predictions}"
            ));
        }
        shard.push_padded_row(
            &inst.tokens,
            inst.segment_ids.iter().map(|&s| s as u32),
            &inst.masked_lm_positions,
            &inst.masked_lm_labels,
            inst.is_random_next,
        );
    }
    Ok(shard)
}

/// Writes instances to a shard at `path` ([`write_instance_columns`]).
pub fn write_instances(
    path: &Path,
    instances: &[TrainingInstance],
    max_seq_length: usize,
    max_predictions: usize,
) -> Result<ShardInfo> {
    let columns = InstanceColumns::from_instances(instances).map_err(|e| Error::shard(path, e))?;
    write_instance_columns(
        path,
        std::slice::from_ref(&columns),
        max_seq_length,
        max_predictions,
    )
}

/// Writes the instances of `blocks` (every row of each, in order: a shard part as the
/// `mask` stage masks it, in blocks, written without joining them first) atomically,
/// unpadded (the padding is derived on reading): `input_ids` (`[CLS] A [SEP] B [SEP]`,
/// masked), `segment_b_start` (index of B's first token: token type 0 before it, 1 from
/// it), `masked_lm_positions` and `masked_lm_ids` as lists, `next_sentence_label` (1: B is
/// random). Ids and positions are `u16` when every value fits. The shape every row is
/// padded to on reading, `max_seq_length` and `max_predictions_per_seq`, is in the schema
/// metadata. The error names the first instance that does not fit it. Not fsynced, like
/// [`write_pairs`].
pub fn write_instance_columns(
    path: &Path,
    blocks: &[InstanceColumns],
    max_seq_length: usize,
    max_predictions: usize,
) -> Result<ShardInfo> {
    let mut row = 0;
    for block in blocks {
        for i in 0..block.len() {
            let len = block.input_ids.row(i).len();
            let npred = block.masked_lm_positions.row(i).len();
            if len > max_seq_length
                || npred > max_predictions
                || block.masked_lm_ids.row(i).len() != npred
                || block.segment_b_start[i] as usize > len
            {
                return Err(Error::shard(
                    path,
                    format!("instance {row} has {len} tokens / {npred} predictions, more than max_seq_length {max_seq_length} / max_predictions_per_seq {max_predictions}"),
                ));
            }
            row += 1;
        }
    }
    let segment_b_start: Vec<u32> = blocks
        .iter()
        .flat_map(|b| b.segment_b_start.iter().copied())
        .collect();
    let labels: Vec<u8> = blocks
        .iter()
        .flat_map(|b| b.next_sentence_label.iter().map(|&l| u8::from(l)))
        .collect();
    let lists = |column: fn(&InstanceColumns) -> &IdLists| {
        blocks.iter().flat_map(move |b| column(b).rows())
    };
    let df = DataFrame::new(
        row,
        vec![
            IdLists::column("input_ids", lists(|b| &b.input_ids)),
            Series::new("segment_b_start".into(), segment_b_start).into_column(),
            IdLists::column("masked_lm_positions", lists(|b| &b.masked_lm_positions)),
            IdLists::column("masked_lm_ids", lists(|b| &b.masked_lm_ids)),
            Series::new("next_sentence_label".into(), labels).into_column(),
        ],
    )
    .map_err(|e| Error::shard(path, format!("cannot build instance frame: {e}")))?;
    write_frame(
        path,
        df,
        &[
            (FORMAT_KEY, INSTANCES_FORMAT.to_string()),
            (MAX_SEQ_LENGTH_KEY, max_seq_length.to_string()),
            (MAX_PREDICTIONS_KEY, max_predictions.to_string()),
        ],
    )
}

/// Reads an instance shard written by [`write_instances`] as fixed-length rows
/// ([`pad_instances`]' layout), checking every row against the recorded shape.
pub fn read_instances(path: &Path) -> Result<InstanceShard> {
    let (df, metadata) = read_frame(path, &INSTANCE_COLUMNS)?;
    let not_ours = || {
        Error::shard(
            path,
            "not an instance shard written by the `mask` stage (no shape in its metadata); rerun `just stage mask`",
        )
    };
    if metadata.get(FORMAT_KEY).map(String::as_str) != Some(INSTANCES_FORMAT) {
        return Err(not_ours());
    }
    let shape = |key: &str| -> Result<usize> {
        metadata
            .get(key)
            .and_then(|v| v.parse().ok())
            .ok_or_else(not_ours)
    };
    let (seq_len, max_predictions) = (shape(MAX_SEQ_LENGTH_KEY)?, shape(MAX_PREDICTIONS_KEY)?);
    let tokens = IdLists::read(path, &df, "input_ids")?;
    let positions = IdLists::read(path, &df, "masked_lm_positions")?;
    let ids = IdLists::read(path, &df, "masked_lm_ids")?;
    let segment_b_start = u32_column(path, &df, "segment_b_start")?;
    let next_sentence = u32_column(path, &df, "next_sentence_label")?;
    let rows = df.height();
    let mut shard = InstanceShard::with_shape(rows, seq_len, max_predictions);
    if [tokens.len(), positions.len(), ids.len()] != [rows; 3] {
        return Err(Error::shard(path, "columns of different lengths: not a shard written by the `mask` stage; rerun `just stage mask`"));
    }
    for row in 0..rows {
        let (tokens, positions, ids) = (tokens.row(row), positions.row(row), ids.row(row));
        let (len, npred, b) = (tokens.len(), positions.len(), segment_b_start[row] as usize);
        if len > seq_len
            || npred > max_predictions
            || ids.len() != npred
            || b > len
            || positions.iter().any(|&p| p as usize >= len)
        {
            return Err(Error::shard(
                path,
                format!("row {row} does not fit its shape (max_seq_length {seq_len}, max_predictions_per_seq {max_predictions}): not a shard written by the `mask` stage; rerun `just stage mask`"),
            ));
        }
        let token_types = std::iter::repeat_n(0, b).chain(std::iter::repeat_n(1, len - b));
        shard.push_padded_row(tokens, token_types, positions, ids, next_sentence[row] != 0);
    }
    Ok(shard)
}

/// Schema metadata key naming what a shard holds ([`PAIRS_FORMAT`], [`INSTANCES_FORMAT`]).
pub const FORMAT_KEY: &str = "bertline.format";
/// [`FORMAT_KEY`] of a pairs shard.
pub const PAIRS_FORMAT: &str = "pairs/2";
/// [`FORMAT_KEY`] of an instance shard.
pub const INSTANCES_FORMAT: &str = "instances/2";
/// Schema metadata key of an instance shard's `max_seq_length`.
pub const MAX_SEQ_LENGTH_KEY: &str = "bertline.max_seq_length";
/// Schema metadata key of an instance shard's `max_predictions_per_seq`.
pub const MAX_PREDICTIONS_KEY: &str = "bertline.max_predictions_per_seq";

/// A column of unsigned integers as `u32`s; nulls are refused.
fn u32_column(path: &Path, df: &DataFrame, col: &str) -> Result<Vec<u32>> {
    let column = df
        .column(col)
        .and_then(|c| c.cast(&DataType::UInt32))
        .map_err(|e| schema_error(path, col, e))?;
    let values = column.u32().map_err(|e| schema_error(path, col, e))?;
    if values.null_count() > 0 {
        return Err(Error::shard(
            path,
            format!("column `{col}` has nulls; rerun the stage with --force"),
        ));
    }
    Ok(values.into_no_null_iter().collect())
}

/// Most rows in one record batch of a shard file: a reader can take a shard batch by batch
/// ([`PairBatches`]), so what it holds at a time does not grow with the shard. The `mask`
/// stage's parts ([`crate::mask::INSTANCE_SHARD_ROWS`]) are one batch of a pairs shard.
pub const BATCH_ROWS: usize = 4096;

/// Writes a frame as an Arrow IPC file with `metadata` in its schema, in record batches of
/// [`BATCH_ROWS`] rows (the last one shorter), atomically, and returns its size and hash.
/// The file is encoded straight into the file (through a small buffer) and hashed on the
/// way, so it is never held whole in memory nor read back; the encoder's buffers are this
/// thread's, reused from shard to shard.
pub fn write_frame(
    path: &Path,
    mut df: DataFrame,
    metadata: &[(&str, String)],
) -> Result<ShardInfo> {
    use polars_arrow::io::ipc::write::{FileWriter, WriteOptions};
    let rows = df.height() as u64;
    let metadata: std::collections::BTreeMap<PlSmallStr, PlSmallStr> = metadata
        .iter()
        .map(|(k, v)| ((*k).into(), v.as_str().into()))
        .collect();
    // What polars' `IpcWriter` does, with the encoder's scratch buffers kept (a writer of
    // its own grew the body buffer by doubling for every shard: copied and page-faulted
    // about twice its size, then copied once more into the file's bytes).
    let schema = std::sync::Arc::new(df.schema().to_arrow(CompatLevel::newest()));
    // The buffers and their 64-byte alignment padding.
    let body_bytes = df.estimated_size() + 64 * 4 * df.width();
    df.align_chunks();
    let mut hashed = None;
    durable::write_unsynced_with(path, |file| {
        let mut out = HashingWriter {
            inner: file,
            hasher: blake3::Hasher::new(),
            bytes: 0,
        };
        let mut writer = FileWriter::new(&mut out, schema, None, WriteOptions::default());
        writer.set_custom_schema_metadata(std::sync::Arc::new(metadata));
        IPC_SCRATCH.with_borrow_mut(|scratch| {
            // Room for the body up front: grown by the encoder, a thread's first shard
            // reallocated (copied and page-faulted) it at every doubling.
            columns::clear_for(&mut scratch.arrow_data, body_bytes);
            writer.set_scratches(std::mem::take(scratch))
        });
        let written = (|| {
            writer.start()?;
            for offset in (0..df.height()).step_by(BATCH_ROWS) {
                let slice = df.slice(offset as i64, BATCH_ROWS);
                for batch in slice.iter_chunks(CompatLevel::newest(), true) {
                    writer.write(&batch, None)?;
                }
            }
            writer.finish()
        })();
        IPC_SCRATCH.with_borrow_mut(|scratch| *scratch = writer.get_scratches());
        written.map_err(|e| Error::shard(path, format!("cannot write the shard: {e}")))?;
        hashed = Some((out.bytes, out.hasher.finalize()));
        Ok(())
    })?;
    let (bytes, hash) = hashed.expect("a written shard was hashed");
    Ok(ShardInfo {
        rows,
        bytes,
        blake3: hash.to_hex().to_string(),
    })
}

thread_local! {
    /// This thread's Arrow IPC encoding buffers ([`write_frame`]), about one shard's size.
    static IPC_SCRATCH: std::cell::RefCell<polars_arrow::io::ipc::write::EncodedData> =
        std::cell::RefCell::default();
}

/// A writer that hashes (BLAKE3) and counts what it passes on.
struct HashingWriter<W> {
    inner: W,
    hasher: blake3::Hasher,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Reads a shard and checks it has `columns`; returns it with its schema metadata. Any
/// failure names the file.
pub fn read_frame(
    path: &Path,
    columns: &[&str],
) -> Result<(DataFrame, std::collections::BTreeMap<String, String>)> {
    let unreadable = |e: PolarsError| unreadable(path, e);
    let file = File::open(path).at(path)?;
    let mut reader = IpcReader::new(file);
    let metadata = reader
        .custom_metadata()
        .map_err(unreadable)?
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .unwrap_or_default();
    let df = reader.finish().map_err(unreadable)?;
    for c in columns {
        if df.column(c).is_err() {
            return Err(missing_column(path, c));
        }
    }
    Ok((df, metadata))
}

/// The error of a file that is not a readable Arrow IPC shard.
fn unreadable(path: &Path, e: PolarsError) -> Error {
    Error::shard(
        path,
        format!("not a readable shard ({e}); it may be truncated: rerun the stage that wrote it with --force"),
    )
}

/// The error of a shard without column `col`.
fn missing_column(path: &Path, col: &str) -> Error {
    Error::shard(
        path,
        format!("missing column `{col}`; this file was not written by this bertline version: rerun the stage with --force"),
    )
}

fn schema_error(path: &Path, col: &str, e: PolarsError) -> Error {
    Error::shard(
        path,
        format!("column `{col}` has the wrong type ({e}); rerun the stage with --force"),
    )
}
