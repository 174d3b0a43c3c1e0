//! Shards in, batches out: the checks every shard passes, the seeded shuffle stream of
//! training instances ([`InstanceStream`]) with its resumable state, and the fixed
//! evaluation batches.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::MaskedLmBatch;
use crate::shard::{read_instances, InstanceShard};

/// What every shard the trainer reads must agree with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardExpect {
    /// `max_seq_length` of the rows.
    pub seq_len: usize,
    /// Token ids must be below it (`model.vocab_size`).
    pub vocab_size: usize,
}

/// Reads an instance shard and checks it against `expect`: one-line errors naming the file
/// when it was built for another sequence length or another vocabulary.
pub fn read_checked_shard(path: &Path, expect: ShardExpect) -> Result<InstanceShard> {
    let shard = read_instances(path)?;
    if shard.batch == 0 {
        return Err(Error::shard(path, "no rows: rerun `just stage mask`"));
    }
    if shard.seq_len != expect.seq_len {
        return Err(Error::shard(
            path,
            format!(
                "rows have {} tokens but pretrain expects max_seq_length = {}: the shard was \
                 built for another sequence length; rerun `just stage mask`",
                shard.seq_len, expect.seq_len
            ),
        ));
    }
    let max_id = shard
        .input_ids
        .iter()
        .chain(&shard.masked_lm_ids)
        .max()
        .copied()
        .unwrap_or(0);
    if max_id as usize >= expect.vocab_size {
        return Err(Error::shard(
            path,
            format!(
                "token id {max_id} is outside model.vocab_size = {}: the shard was built with \
                 another vocabulary; rerun `just stage mask`",
                expect.vocab_size
            ),
        ));
    }
    if shard
        .masked_lm_positions
        .iter()
        .any(|&p| p as usize >= shard.seq_len)
    {
        return Err(Error::shard(
            path,
            "a masked position lies outside its row: rerun `just stage mask`",
        ));
    }
    Ok(shard)
}

/// Where an [`InstanceStream`] stands: enough to continue exactly after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamState {
    /// Passes over the shards started so far, minus one.
    pub epoch: u64,
    /// This epoch's shard order.
    pub order: Vec<u32>,
    /// Next entry of `order` to open.
    pub next_in_order: usize,
    /// The shard being read into the buffer and its next row.
    pub cursor: Option<(u32, u32)>,
    /// `(shard, row)` waiting in the shuffle buffer.
    pub buffer: Vec<(u32, u32)>,
    /// Seed of the stream's ChaCha8 rng.
    pub rng_seed: u64,
    /// Words the rng has produced (u128, decimal).
    pub rng_word_pos: String,
    /// Instances handed out.
    pub instances_drawn: u64,
}

/// Instances from many shards in a seeded random order: each epoch visits the shards in a
/// shuffled order and passes their rows through a shuffle buffer of `capacity` rows
/// (tf.data's `shuffle`). Only the shards with rows in the buffer stay in memory.
#[derive(Debug)]
pub struct InstanceStream {
    shards: Vec<PathBuf>,
    expect: ShardExpect,
    capacity: usize,
    rng: ChaCha8Rng,
    state: StreamState,
    loaded: BTreeMap<u32, Arc<InstanceShard>>,
}

impl InstanceStream {
    /// A stream at its start.
    pub fn new(
        shards: Vec<PathBuf>,
        capacity: usize,
        seed: u64,
        expect: ShardExpect,
    ) -> Result<Self> {
        if shards.is_empty() {
            return Err(Error::Stage(
                "no training shards: rerun `just stage mask`".into(),
            ));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let order = shuffled_order(shards.len(), &mut rng);
        let state = StreamState {
            epoch: 0,
            order,
            next_in_order: 0,
            cursor: None,
            buffer: Vec::new(),
            rng_seed: seed,
            rng_word_pos: String::new(),
            instances_drawn: 0,
        };
        Self::resume(shards, capacity, state_with_rng(state, &rng), expect)
    }

    /// A stream continuing from `state` (saved by [`InstanceStream::state`]).
    pub fn resume(
        shards: Vec<PathBuf>,
        capacity: usize,
        state: StreamState,
        expect: ShardExpect,
    ) -> Result<Self> {
        let word_pos: u128 = state
            .rng_word_pos
            .parse()
            .map_err(|_| Error::Stage("stream state has no rng position".into()))?;
        let mut rng = ChaCha8Rng::seed_from_u64(state.rng_seed);
        rng.set_word_pos(word_pos);
        let referenced = state
            .buffer
            .iter()
            .map(|r| r.0)
            .chain(state.cursor.map(|c| c.0));
        if referenced.clone().any(|s| s as usize >= shards.len()) {
            return Err(Error::Stage(
                "stream state names a shard that no longer exists".into(),
            ));
        }
        let mut stream = InstanceStream {
            shards,
            expect,
            capacity: capacity.max(1),
            rng,
            state,
            loaded: BTreeMap::new(),
        };
        for s in stream
            .state
            .buffer
            .iter()
            .map(|r| r.0)
            .chain(stream.state.cursor.map(|c| c.0))
            .collect::<Vec<_>>()
        {
            stream.shard(s)?;
        }
        Ok(stream)
    }

    /// The position to save in a checkpoint.
    pub fn state(&self) -> StreamState {
        state_with_rng(self.state.clone(), &self.rng)
    }

    /// The next `batch_size` instances as one batch.
    pub fn next_batch(&mut self, batch_size: usize) -> Result<MaskedLmBatch> {
        let mut rows = Vec::with_capacity(batch_size);
        for _ in 0..batch_size {
            let (s, row) = self.next_instance()?;
            rows.push((self.shard(s)?, row as usize));
        }
        Ok(MaskedLmBatch::from_rows(
            rows.iter().map(|(s, r)| (s.as_ref(), *r)),
        ))
    }

    /// The next `(shard, row)`.
    fn next_instance(&mut self) -> Result<(u32, u32)> {
        loop {
            while self.state.buffer.len() < self.capacity {
                match self.next_row()? {
                    Some(row) => self.state.buffer.push(row),
                    None => break,
                }
            }
            if self.state.buffer.is_empty() {
                // End of an epoch: the next visits the shards in a new order.
                self.state.epoch += 1;
                self.state.order = shuffled_order(self.shards.len(), &mut self.rng);
                self.state.next_in_order = 0;
                continue;
            }
            let i = self.rng.gen_range(0..self.state.buffer.len());
            self.state.instances_drawn += 1;
            return Ok(self.state.buffer.swap_remove(i));
        }
    }

    /// The next row of the current shard, opening the next shard of the epoch as needed;
    /// `None` at the end of the epoch.
    fn next_row(&mut self) -> Result<Option<(u32, u32)>> {
        loop {
            if let Some((s, row)) = self.state.cursor {
                if (row as usize) < self.shard(s)?.batch {
                    self.state.cursor = Some((s, row + 1));
                    return Ok(Some((s, row)));
                }
                self.state.cursor = None;
            }
            if self.state.next_in_order >= self.state.order.len() {
                return Ok(None);
            }
            let s = self.state.order[self.state.next_in_order];
            self.state.next_in_order += 1;
            self.state.cursor = Some((s, 0));
            self.release_unused();
        }
    }

    /// The shard `s`, read on first use.
    fn shard(&mut self, s: u32) -> Result<Arc<InstanceShard>> {
        if let Some(shard) = self.loaded.get(&s) {
            return Ok(shard.clone());
        }
        let shard = Arc::new(read_checked_shard(&self.shards[s as usize], self.expect)?);
        tracing::debug!(shard = %self.shards[s as usize].display(), rows = shard.batch, "opened");
        self.loaded.insert(s, shard.clone());
        Ok(shard)
    }

    /// Drops shards no buffered row or cursor refers to.
    fn release_unused(&mut self) {
        let mut used: Vec<u32> = self.state.buffer.iter().map(|r| r.0).collect();
        used.extend(self.state.cursor.map(|c| c.0));
        self.loaded.retain(|s, _| used.contains(s));
    }
}

fn shuffled_order(n: usize, rng: &mut ChaCha8Rng) -> Vec<u32> {
    use rand::seq::SliceRandom;
    let mut order: Vec<u32> = (0..n as u32).collect();
    order.shuffle(rng);
    order
}

fn state_with_rng(mut state: StreamState, rng: &ChaCha8Rng) -> StreamState {
    state.rng_word_pos = rng.get_word_pos().to_string();
    state
}

/// The first `batches` batches of `batch_size` rows from `shards` in file order (the
/// evaluation set: the same rows at every evaluation).
pub fn read_eval_batches(
    shards: &[PathBuf],
    batch_size: usize,
    batches: usize,
    expect: ShardExpect,
) -> Result<Vec<MaskedLmBatch>> {
    let mut out = Vec::new();
    let mut rows: Vec<(Arc<InstanceShard>, usize)> = Vec::new();
    for path in shards {
        let shard = Arc::new(read_checked_shard(path, expect)?);
        for r in 0..shard.batch {
            rows.push((shard.clone(), r));
            if rows.len() == batch_size {
                out.push(MaskedLmBatch::from_rows(
                    rows.iter().map(|(s, r)| (s.as_ref(), *r)),
                ));
                rows.clear();
                if out.len() == batches {
                    return Ok(out);
                }
            }
        }
    }
    if !rows.is_empty() && out.len() < batches {
        out.push(MaskedLmBatch::from_rows(
            rows.iter().map(|(s, r)| (s.as_ref(), *r)),
        ));
    }
    Ok(out)
}
