//! Shard records in columns: the data stages build and read whole shards as a few flat
//! buffers ([`IdLists`]: every row's ids back to back, with offsets) instead of a vector per
//! row, which is what Arrow stores on disk. [`PairColumns`] is a pairs shard,
//! [`InstanceColumns`] an instance shard before padding; both convert to and from the
//! row types ([`SentencePair`], [`TrainingInstance`]) that tests and callers use.

use std::ops::Range;
use std::path::Path;

use polars::prelude::*;
use polars_arrow::array::{Array, ListArray, PrimitiveArray};
use polars_arrow::offset::OffsetsBuffer;

use super::{schema_error, SentencePair, TrainingInstance};
use crate::error::{Error, Result};

/// The Arrow array of a polars list column.
type LargeListArray = ListArray<i64>;

/// Lists of ids in one buffer: row `i` is `values[offsets[i]..offsets[i + 1]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdLists {
    /// Every row's ids, in row order.
    pub values: Vec<u32>,
    /// Row boundaries in `values`: one more than there are rows, starting at 0.
    pub offsets: Vec<usize>,
}

impl Default for IdLists {
    fn default() -> Self {
        IdLists::with_capacity(0, 0)
    }
}

impl IdLists {
    /// No rows yet, room for `rows` rows of `values` ids in all.
    pub fn with_capacity(rows: usize, values: usize) -> Self {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        IdLists {
            values: Vec::with_capacity(values),
            offsets,
        }
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// No rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Row `i`.
    pub fn row(&self, i: usize) -> &[u32] {
        &self.values[self.offsets[i]..self.offsets[i + 1]]
    }

    /// Every row, in order.
    pub fn rows(&self) -> impl Iterator<Item = &[u32]> + Clone + '_ {
        self.offsets.windows(2).map(|w| &self.values[w[0]..w[1]])
    }

    /// Appends a row.
    pub fn push(&mut self, row: &[u32]) {
        self.values.extend_from_slice(row);
        self.end_row();
    }

    /// Ends the row being built: the ids pushed onto `values` since the last row end.
    pub fn end_row(&mut self) {
        self.offsets.push(self.values.len());
    }

    /// Appends every row of `other`.
    pub fn append(&mut self, other: &IdLists) {
        let base = self.values.len();
        self.values.extend_from_slice(&other.values);
        self.offsets
            .extend(other.offsets[1..].iter().map(|&o| base + o));
    }

    /// The rows `rows` (id slices, in that order: rows of one [`IdLists`] in a shuffled
    /// order, or every row of several) as a list column, `u16` when every id in them is
    /// below 65,536 (every id of a vocabulary that size, every position in a sequence up to
    /// that length), else `u32`: half the bytes for the usual vocabularies;
    /// [`IdLists::read`] widens either.
    pub(super) fn column<'a>(name: &str, rows: impl Iterator<Item = &'a [u32]> + Clone) -> Column {
        let (count, total) = rows
            .clone()
            .fold((0, 0), |(n, t), row| (n + 1, t + row.len()));
        let mut offsets: Vec<i64> = Vec::with_capacity(count + 1);
        offsets.push(0);
        // One pass over the rows: narrowed ids, offsets, and every id's bits OR-ed to see if
        // they fit. Each row is OR-ed and narrowed as a whole slice (both loops vectorize;
        // a `push` per id did not, and this was a tenth of each data stage's time).
        let mut narrow: Vec<u16> = Vec::with_capacity(total);
        let mut bits = 0;
        for row in rows.clone() {
            bits |= row.iter().fold(0, |acc, &id| acc | id);
            narrow.extend(row.iter().map(|&id| id as u16));
            offsets.push(narrow.len() as i64);
        }
        let values: Box<dyn Array> = if bits <= u32::from(u16::MAX) {
            PrimitiveArray::from_vec(narrow).boxed()
        } else {
            drop(narrow);
            let mut wide: Vec<u32> = Vec::with_capacity(total);
            for row in rows {
                wide.extend_from_slice(row);
            }
            PrimitiveArray::from_vec(wide).boxed()
        };
        let dtype = LargeListArray::default_datatype(values.dtype().clone());
        let offsets = OffsetsBuffer::try_from(offsets).expect("offsets ascend from 0");
        let list = LargeListArray::try_new(dtype, offsets, values, None)
            .expect("offsets end at the number of values");
        ListChunked::with_chunk(name.into(), list)
            .into_series()
            .into_column()
    }

    /// No rows, and room for `rows` rows of `values` ids in all: a recycled buffer is kept
    /// when it is large enough, else replaced by a new one (growing it instead would copy its
    /// old contents, the allocator knowing nothing of `clear`).
    pub fn clear_for(&mut self, rows: usize, values: usize) {
        clear_for(&mut self.values, values);
        clear_for(&mut self.offsets, rows + 1);
        self.offsets.push(0);
    }

    /// The list column `col` of ids (`u16` or `u32`), widened to `u32`; nulls are refused.
    pub(super) fn read(path: &Path, df: &DataFrame, col: &str) -> Result<IdLists> {
        let mut lists = IdLists::default();
        IdLists::read_into(path, df, col, &mut lists)?;
        Ok(lists)
    }

    /// [`IdLists::read`] into `lists`' buffers (cleared first): a reader of shard after shard
    /// reuses memory it has already touched.
    pub(super) fn read_into(
        path: &Path,
        df: &DataFrame,
        col: &str,
        lists: &mut IdLists,
    ) -> Result<()> {
        let nulls = || {
            Error::shard(
                path,
                format!("column `{col}` has nulls; rerun the stage with --force"),
            )
        };
        let ca = df
            .column(col)
            .and_then(|c| c.list().cloned())
            .map_err(|e| schema_error(path, col, e))?;
        if ca.null_count() > 0 {
            return Err(nulls());
        }
        let total = ca
            .downcast_iter()
            .map(|arr| {
                let offsets = arr.offsets().as_slice();
                (offsets[offsets.len() - 1] - offsets[0]) as usize
            })
            .sum();
        lists.clear_for(ca.len(), total);
        for arr in ca.downcast_iter() {
            let values = Series::from_arrow(col.into(), arr.values().clone())
                .map_err(|e| schema_error(path, col, e))?;
            if values.null_count() > 0 {
                return Err(nulls());
            }
            let offsets = arr.offsets().as_slice();
            let (first, last) = (offsets[0] as usize, offsets[offsets.len() - 1] as usize);
            let base = lists.values.len() as i64 - offsets[0];
            match values.dtype() {
                DataType::UInt16 => {
                    let values = values.u16().map_err(|e| schema_error(path, col, e))?;
                    let values = values.rechunk();
                    let values = values
                        .cont_slice()
                        .map_err(|e| schema_error(path, col, e))?;
                    lists
                        .values
                        .extend(values[first..last].iter().map(|&v| u32::from(v)));
                }
                DataType::UInt32 => {
                    let values = values.u32().map_err(|e| schema_error(path, col, e))?;
                    let values = values.rechunk();
                    let values = values
                        .cont_slice()
                        .map_err(|e| schema_error(path, col, e))?;
                    lists.values.extend_from_slice(&values[first..last]);
                }
                other => {
                    return Err(Error::shard(
                        path,
                        format!(
                            "column `{col}` holds {other}, not ids; rerun the stage with --force"
                        ),
                    ))
                }
            }
            lists
                .offsets
                .extend(offsets[1..].iter().map(|&o| (o + base) as usize));
        }
        Ok(())
    }
}

/// Empties `buffer` with room for `len` items: kept when it has that room, else replaced by
/// a new buffer with an eighth more (a recycled buffer grown in place would be copied whole
/// and page-faulted anew; the slack lets the next, slightly larger, shard fit).
pub fn clear_for<T>(buffer: &mut Vec<T>, len: usize) {
    buffer.clear();
    if buffer.capacity() < len {
        *buffer = Vec::with_capacity(len + len / 8);
    }
}

/// The pairs of a shard in columns: what [`super::write_pairs`] writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PairColumns {
    /// Segment A of each pair.
    pub tokens_a: IdLists,
    /// Segment B of each pair.
    pub tokens_b: IdLists,
    /// B is a random span from another document.
    pub is_random_next: Vec<bool>,
}

impl PairColumns {
    /// No pairs yet, room for `tokens` ids of A and B together.
    pub fn with_capacity(tokens: usize) -> Self {
        PairColumns {
            tokens_a: IdLists::with_capacity(0, tokens / 2),
            tokens_b: IdLists::with_capacity(0, tokens / 2),
            is_random_next: Vec::new(),
        }
    }

    /// Ends a pair whose A and B ids were pushed onto the ends of `tokens_a.values` and
    /// `tokens_b.values`, keeping the windows `a` and `b` of them.
    pub fn keep_last(&mut self, a: Range<usize>, b: Range<usize>, is_random_next: bool) {
        for (lists, keep) in [(&mut self.tokens_a, a), (&mut self.tokens_b, b)] {
            let start = lists.offsets[lists.len()];
            lists.values.truncate(start + keep.end);
            lists.values.drain(start..start + keep.start);
            lists.end_row();
        }
        self.is_random_next.push(is_random_next);
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.is_random_next.len()
    }

    /// No pairs.
    pub fn is_empty(&self) -> bool {
        self.is_random_next.is_empty()
    }

    /// Appends a pair.
    pub fn push(&mut self, tokens_a: &[u32], tokens_b: &[u32], is_random_next: bool) {
        self.tokens_a.push(tokens_a);
        self.tokens_b.push(tokens_b);
        self.is_random_next.push(is_random_next);
    }

    /// Pair `i` as `(A, B, is_random_next)`.
    pub fn pair(&self, i: usize) -> (&[u32], &[u32], bool) {
        (
            self.tokens_a.row(i),
            self.tokens_b.row(i),
            self.is_random_next[i],
        )
    }

    /// The pairs at `rows`, in that order (a shuffle, or one shard's rows).
    pub fn gather(&self, rows: &[usize]) -> PairColumns {
        let values = |lists: &IdLists| rows.iter().map(|&i| lists.row(i).len()).sum();
        let mut out = PairColumns {
            tokens_a: IdLists::with_capacity(rows.len(), values(&self.tokens_a)),
            tokens_b: IdLists::with_capacity(rows.len(), values(&self.tokens_b)),
            is_random_next: Vec::with_capacity(rows.len()),
        };
        for &i in rows {
            let (a, b, random) = self.pair(i);
            out.push(a, b, random);
        }
        out
    }

    /// The pairs as records.
    pub fn to_pairs(&self) -> Vec<SentencePair> {
        (0..self.len())
            .map(|i| {
                let (a, b, random) = self.pair(i);
                SentencePair {
                    tokens_a: a.to_vec(),
                    tokens_b: b.to_vec(),
                    is_random_next: random,
                }
            })
            .collect()
    }

    /// Records as columns.
    pub fn from_pairs(pairs: &[SentencePair]) -> Self {
        let mut columns = PairColumns::default();
        for p in pairs {
            columns.push(&p.tokens_a, &p.tokens_b, p.is_random_next);
        }
        columns
    }
}

/// Masked-LM instances in columns, unpadded: what [`super::write_instance_columns`] writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceColumns {
    /// `[CLS] A [SEP] B [SEP]` with masked positions replaced.
    pub input_ids: IdLists,
    /// Index of B's first token (token type 0 before it, 1 from it).
    pub segment_b_start: Vec<u32>,
    /// Positions of the predictions, ascending.
    pub masked_lm_positions: IdLists,
    /// Original ids at those positions.
    pub masked_lm_ids: IdLists,
    /// B is random.
    pub next_sentence_label: Vec<bool>,
}

impl InstanceColumns {
    /// Number of instances.
    pub fn len(&self) -> usize {
        self.next_sentence_label.len()
    }

    /// No instances.
    pub fn is_empty(&self) -> bool {
        self.next_sentence_label.is_empty()
    }

    /// Appends every instance of `other`.
    pub fn append(&mut self, other: &InstanceColumns) {
        self.input_ids.append(&other.input_ids);
        self.segment_b_start
            .extend_from_slice(&other.segment_b_start);
        self.masked_lm_positions.append(&other.masked_lm_positions);
        self.masked_lm_ids.append(&other.masked_lm_ids);
        self.next_sentence_label
            .extend_from_slice(&other.next_sentence_label);
    }

    /// Instance `i` as a record.
    pub fn instance(&self, i: usize) -> TrainingInstance {
        let tokens = self.input_ids.row(i).to_vec();
        let b = self.segment_b_start[i] as usize;
        let segment_ids = (0..tokens.len()).map(|t| u8::from(t >= b)).collect();
        TrainingInstance {
            tokens,
            segment_ids,
            masked_lm_positions: self.masked_lm_positions.row(i).to_vec(),
            masked_lm_labels: self.masked_lm_ids.row(i).to_vec(),
            is_random_next: self.next_sentence_label[i],
        }
    }

    /// Records as columns. The error names the first instance whose segment ids are not
    /// zeros then ones over its tokens.
    pub fn from_instances(instances: &[TrainingInstance]) -> std::result::Result<Self, String> {
        let mut columns = InstanceColumns::default();
        for (i, inst) in instances.iter().enumerate() {
            let b = inst.segment_ids.iter().take_while(|&&s| s == 0).count();
            if inst.segment_ids.len() != inst.tokens.len()
                || inst.segment_ids[b..].iter().any(|&s| s != 1)
            {
                return Err(format!(
                    "instance {i} has {} segment ids for {} tokens, or ids other than 0s then 1s",
                    inst.segment_ids.len(),
                    inst.tokens.len()
                ));
            }
            columns.input_ids.push(&inst.tokens);
            columns.segment_b_start.push(b as u32);
            columns.masked_lm_positions.push(&inst.masked_lm_positions);
            columns.masked_lm_ids.push(&inst.masked_lm_labels);
            columns.next_sentence_label.push(inst.is_random_next);
        }
        Ok(columns)
    }
}
