//! Shards: the Parquet files stages hand each other, and the records they hold.
//!
//! `pairs` writes [`SentencePair`]s, `mask` writes [`TrainingInstance`]s as fixed-length
//! rows (the columns of Google's TFRecords: `input_ids`, `token_type_ids`, `attention_mask`,
//! `masked_lm_positions`, `masked_lm_ids`, `masked_lm_weights`, `next_sentence_label`), so
//! polars, pandas and pyarrow open them directly. Every write is atomic: temp file, fsync,
//! rename. Reading checks the schema and names the file on any failure.
//!
//! A shard's identity is a [`ShardId`] (split, sequence length, input file, shard, part): it
//! names the file, is stored in the shard's manifest record, and is what later stages read
//! back. No code parses a shard's file name.

use std::fmt;

use serde::{Deserialize, Serialize};

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
    /// Index of the input file (the first of a pooled unit).
    pub file: usize,
    /// Index of the shard among the file's shards of this split.
    pub shard: usize,
    /// The part of a pairs shard's instances a mask shard holds; `None` for a pairs shard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<usize>,
}

impl ShardId {
    /// The file name: `[seq{L}-]{split}-FFFFF-SSSS[-PP].parquet`.
    pub fn file_name(&self) -> String {
        let prefix = self
            .seq_len
            .map(|l| format!("{}-", length_key(l)))
            .unwrap_or_default();
        let part = self.part.map(|p| format!("-{p:02}")).unwrap_or_default();
        format!(
            "{prefix}{}-{:05}-{:04}{part}.parquet",
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

use std::fs::File;
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

/// Columns of an instance shard (the fields of Google's TFRecord features).
pub const INSTANCE_COLUMNS: [&str; 7] = [
    "input_ids",
    "token_type_ids",
    "attention_mask",
    "masked_lm_positions",
    "masked_lm_ids",
    "masked_lm_weights",
    "next_sentence_label",
];

/// Writes `pairs` to a Parquet shard at `path`, atomically.
pub fn write_pairs(path: &Path, pairs: &[SentencePair]) -> Result<ShardInfo> {
    let n = pairs.len();
    let total_a: usize = pairs.iter().map(|p| p.tokens_a.len()).sum();
    let total_b: usize = pairs.iter().map(|p| p.tokens_b.len()).sum();
    let mut a = ListPrimitiveChunkedBuilder::<Int32Type>::new(
        "tokens_a".into(),
        n,
        total_a,
        DataType::Int32,
    );
    let mut b = ListPrimitiveChunkedBuilder::<Int32Type>::new(
        "tokens_b".into(),
        n,
        total_b,
        DataType::Int32,
    );
    let mut buf = Vec::new();
    for p in pairs {
        buf.clear();
        buf.extend(p.tokens_a.iter().map(|&t| t as i32));
        a.append_slice(&buf);
        buf.clear();
        buf.extend(p.tokens_b.iter().map(|&t| t as i32));
        b.append_slice(&buf);
    }
    let random: BooleanChunked = pairs
        .iter()
        .map(|p| p.is_random_next)
        .collect_ca("is_random_next".into());
    let df = DataFrame::new(
        n,
        vec![
            a.finish().into_series().into_column(),
            b.finish().into_series().into_column(),
            random.into_series().into_column(),
        ],
    )
    .map_err(|e| Error::shard(path, format!("cannot build pairs frame: {e}")))?;
    write_frame(path, df)
}

/// Reads a pairs shard written by [`write_pairs`].
pub fn read_pairs(path: &Path) -> Result<Vec<SentencePair>> {
    let df = read_frame(path, &PAIR_COLUMNS)?;
    let a = list_rows(path, &df, "tokens_a")?;
    let b = list_rows(path, &df, "tokens_b")?;
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
    Ok(a.into_iter()
        .zip(b)
        .zip(random.iter().map(|v| v.unwrap_or(false)))
        .map(|((tokens_a, tokens_b), is_random_next)| SentencePair {
            tokens_a,
            tokens_b,
            is_random_next,
        })
        .collect())
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
    let n = instances.len();
    let mut shard = InstanceShard {
        batch: n,
        seq_len: max_seq_length,
        max_predictions,
        input_ids: Vec::with_capacity(n * max_seq_length),
        token_type_ids: Vec::with_capacity(n * max_seq_length),
        attention_mask: Vec::with_capacity(n * max_seq_length),
        masked_lm_positions: Vec::with_capacity(n * max_predictions),
        masked_lm_ids: Vec::with_capacity(n * max_predictions),
        masked_lm_weights: Vec::with_capacity(n * max_predictions),
        next_sentence_label: Vec::with_capacity(n),
    };
    for (i, inst) in instances.iter().enumerate() {
        let len = inst.tokens.len();
        let npred = inst.masked_lm_positions.len();
        if len > max_seq_length || npred > max_predictions || inst.segment_ids.len() != len {
            return Err(format!(
                "instance {i} has {len} tokens / {npred} predictions, more than max_seq_length {max_seq_length} / max_predictions_per_seq {max_predictions}"
            ));
        }
        let pad = max_seq_length - len;
        shard.input_ids.extend(&inst.tokens);
        shard.input_ids.extend(std::iter::repeat_n(0, pad));
        shard
            .token_type_ids
            .extend(inst.segment_ids.iter().map(|&s| s as u32));
        shard.token_type_ids.extend(std::iter::repeat_n(0, pad));
        shard.attention_mask.extend(std::iter::repeat_n(1, len));
        shard.attention_mask.extend(std::iter::repeat_n(0, pad));
        let pad = max_predictions - npred;
        shard.masked_lm_positions.extend(&inst.masked_lm_positions);
        shard
            .masked_lm_positions
            .extend(std::iter::repeat_n(0, pad));
        shard.masked_lm_ids.extend(&inst.masked_lm_labels);
        shard.masked_lm_ids.extend(std::iter::repeat_n(0, pad));
        shard
            .masked_lm_weights
            .extend(std::iter::repeat_n(1.0, npred));
        shard
            .masked_lm_weights
            .extend(std::iter::repeat_n(0.0, pad));
        shard.next_sentence_label.push(inst.is_random_next as u32);
    }
    Ok(shard)
}

/// Writes instances as fixed-length rows ([`pad_instances`]), atomically.
pub fn write_instances(
    path: &Path,
    instances: &[TrainingInstance],
    max_seq_length: usize,
    max_predictions: usize,
) -> Result<ShardInfo> {
    let rows = pad_instances(instances, max_seq_length, max_predictions)
        .map_err(|e| Error::shard(path, e))?;
    let n = rows.batch;
    let list = |name: &str, values: &[u32], width: usize| {
        let mut column = ListPrimitiveChunkedBuilder::<Int32Type>::new(
            name.into(),
            n,
            n * width,
            DataType::Int32,
        );
        let mut row = vec![0i32; width];
        for i in 0..n {
            for (d, &s) in row.iter_mut().zip(&values[i * width..(i + 1) * width]) {
                *d = s as i32;
            }
            column.append_slice(&row);
        }
        column.finish().into_series().into_column()
    };
    let mut weights = ListPrimitiveChunkedBuilder::<Float32Type>::new(
        "masked_lm_weights".into(),
        n,
        n * max_predictions,
        DataType::Float32,
    );
    for i in 0..n {
        weights
            .append_slice(&rows.masked_lm_weights[i * max_predictions..(i + 1) * max_predictions]);
    }
    let labels: Vec<i32> = rows.next_sentence_label.iter().map(|&l| l as i32).collect();
    let df = DataFrame::new(
        n,
        vec![
            list("input_ids", &rows.input_ids, max_seq_length),
            list("token_type_ids", &rows.token_type_ids, max_seq_length),
            list("attention_mask", &rows.attention_mask, max_seq_length),
            list(
                "masked_lm_positions",
                &rows.masked_lm_positions,
                max_predictions,
            ),
            list("masked_lm_ids", &rows.masked_lm_ids, max_predictions),
            weights.finish().into_series().into_column(),
            Series::new("next_sentence_label".into(), labels).into_column(),
        ],
    )
    .map_err(|e| Error::shard(path, format!("cannot build instance frame: {e}")))?;
    write_frame(path, df)
}

/// Reads an instance shard written by [`write_instances`], checking every row has the
/// same fixed lengths.
pub fn read_instances(path: &Path) -> Result<InstanceShard> {
    let df = read_frame(path, &INSTANCE_COLUMNS)?;
    let rows = df.height();
    let input_ids = flat_list::<Int32Type>(path, &df, "input_ids")?;
    let masked_lm_positions = flat_list::<Int32Type>(path, &df, "masked_lm_positions")?;
    if rows == 0 {
        return Ok(InstanceShard::default());
    }
    let seq_len = input_ids.len() / rows;
    let max_predictions = masked_lm_positions.len() / rows;
    let to_u32 = |v: Vec<i32>| v.into_iter().map(|x| x as u32).collect::<Vec<u32>>();
    let shard = InstanceShard {
        batch: rows,
        seq_len,
        max_predictions,
        input_ids: to_u32(input_ids),
        token_type_ids: to_u32(flat_list::<Int32Type>(path, &df, "token_type_ids")?),
        attention_mask: to_u32(flat_list::<Int32Type>(path, &df, "attention_mask")?),
        masked_lm_positions: to_u32(masked_lm_positions),
        masked_lm_ids: to_u32(flat_list::<Int32Type>(path, &df, "masked_lm_ids")?),
        masked_lm_weights: flat_list::<Float32Type>(path, &df, "masked_lm_weights")?,
        next_sentence_label: {
            let c = df
                .column("next_sentence_label")
                .and_then(|c| c.i32().cloned())
                .map_err(|e| schema_error(path, "next_sentence_label", e))?;
            c.iter().map(|v| v.unwrap_or(0) as u32).collect()
        },
    };
    let seq_ok = [
        &shard.input_ids,
        &shard.token_type_ids,
        &shard.attention_mask,
    ]
    .iter()
    .all(|v| v.len() == rows * seq_len);
    let pred_ok = shard.masked_lm_ids.len() == rows * max_predictions
        && shard.masked_lm_weights.len() == rows * max_predictions;
    if !seq_ok || !pred_ok || input_ids_len_mismatch(&df, seq_len) {
        return Err(Error::shard(
            path,
            "rows of unequal length: not a shard written by the `mask` stage; rerun `just stage mask`",
        ));
    }
    Ok(shard)
}

fn input_ids_len_mismatch(df: &DataFrame, seq_len: usize) -> bool {
    match df.column("input_ids").and_then(|c| c.list().cloned()) {
        Ok(ca) => ca
            .downcast_iter()
            .any(|arr| arr.offsets().lengths().any(|l| l != seq_len)),
        Err(_) => true,
    }
}

/// Writes a frame as Parquet (snappy: the fastest codec every reader has) atomically and returns its size and hash.
pub fn write_frame(path: &Path, mut df: DataFrame) -> Result<ShardInfo> {
    let rows = df.height() as u64;
    durable::write_with(path, |w| {
        ParquetWriter::new(w)
            .with_compression(ParquetCompression::Snappy)
            .finish(&mut df)
            .map(|_| ())
            .map_err(|e| Error::shard(path, format!("cannot write Parquet: {e}")))
    })?;
    let (blake3, bytes) = durable::hash_file(path)?;
    Ok(ShardInfo {
        rows,
        bytes,
        blake3,
    })
}

/// Reads a Parquet shard and checks it has `columns`; any failure names the file.
pub fn read_frame(path: &Path, columns: &[&str]) -> Result<DataFrame> {
    let file = File::open(path).at(path)?;
    let df = ParquetReader::new(file).finish().map_err(|e| {
        Error::shard(
            path,
            format!("not a readable Parquet shard ({e}); it may be truncated: rerun the stage that wrote it with --force"),
        )
    })?;
    for c in columns {
        if df.column(c).is_err() {
            return Err(Error::shard(
                path,
                format!("missing column `{c}`; this file was not written by this bertline version: rerun the stage with --force"),
            ));
        }
    }
    Ok(df)
}

fn schema_error(path: &Path, col: &str, e: PolarsError) -> Error {
    Error::shard(
        path,
        format!("column `{col}` has the wrong type ({e}); rerun the stage with --force"),
    )
}

/// The values of a list column, concatenated row after row.
fn flat_list<T>(path: &Path, df: &DataFrame, col: &str) -> Result<Vec<T::Native>>
where
    T: PolarsNumericType,
{
    let ca = df
        .column(col)
        .and_then(|c| c.list().cloned())
        .map_err(|e| schema_error(path, col, e))?;
    let mut out = Vec::new();
    for row in list_ranges::<T>(path, &ca, col)? {
        out.extend_from_slice(&row.0[row.1.clone()]);
    }
    Ok(out)
}

type RowSlice<N> = (std::sync::Arc<Vec<N>>, std::ops::Range<usize>);

fn list_ranges<T: PolarsNumericType>(
    path: &Path,
    ca: &ListChunked,
    col: &str,
) -> Result<Vec<RowSlice<T::Native>>> {
    if ca.null_count() > 0 {
        return Err(Error::shard(
            path,
            format!("column `{col}` has nulls; rerun the stage with --force"),
        ));
    }
    let mut rows = Vec::with_capacity(ca.len());
    for arr in ca.downcast_iter() {
        let values = Series::from_arrow(col.into(), arr.values().clone())
            .map_err(|e| schema_error(path, col, e))?;
        let values = values
            .unpack::<T>()
            .map_err(|e| schema_error(path, col, e))?
            .rechunk();
        let values = std::sync::Arc::new(
            values
                .cont_slice()
                .map_err(|e| schema_error(path, col, e))?
                .to_vec(),
        );
        for w in arr.offsets().as_slice().windows(2) {
            rows.push((values.clone(), w[0] as usize..w[1] as usize));
        }
    }
    Ok(rows)
}

fn list_rows(path: &Path, df: &DataFrame, col: &str) -> Result<Vec<Vec<u32>>> {
    let ca = df
        .column(col)
        .and_then(|c| c.list().cloned())
        .map_err(|e| schema_error(path, col, e))?;
    Ok(list_ranges::<Int32Type>(path, &ca, col)?
        .into_iter()
        .map(|(v, r)| v[r].iter().map(|&x| x as u32).collect())
        .collect())
}
