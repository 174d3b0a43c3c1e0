//! Masked-LM instances: the second half of Google's `create_pretraining_data.py`.
//!
//! [`create_training_instance`] turns a [`SentencePair`] into `[CLS] A [SEP] B [SEP]` with
//! segment ids, and [`create_masked_lm_predictions`] picks ~15% of its tokens to predict:
//! 80% become `[MASK]`, 10% stay, 10% become a random token. [`create_training_instances`]
//! masks a whole shard in parallel blocks, each with its own seeded generator, so the result
//! is the same whatever the thread count. The stage does the same draws on a shard in
//! columns ([`create_instance_columns`]: the instances built into flat id buffers, no
//! vector per instance), reading the pairs shard one record batch at a time and writing
//! each batch's instances as an instance shard, so a thread holds one batch, not the shard.
//!
//! With `[[pretrain.phases]]`, each `seq{L}-` pairs shard is masked with that length's
//! `max_predictions_per_seq` ([`crate::config::PipelineConfig::instance_shapes`]) and
//! written under the same prefix, so every phase finds its own shards by name.
//!
//! Reference: <https://github.com/google-research/bert/blob/eedf5716ce1268e56f0a50264a88cafad334ac61/create_pretraining_data.py#L342>

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::Rng;
use rayon::prelude::*;
use serde_json::json;

use crate::config::{InstanceShape, MaskConfig, PipelineConfig};
use crate::error::{Error, Result};
use crate::manifest::ArtifactRecord;
use crate::pairs::{pairs_kind, seeded_rng};
use crate::progress::Progress;
use crate::shard::{
    clear_for, length_key, write_instance_columns, IdLists, InstanceColumns, PairBatches,
    PairColumns, SentencePair, ShardId, ShardInfo, Split, TrainingInstance,
};
use crate::stage::{Begin, Outcome, Stage, StageCtx};
use crate::stats::InstanceStats;
use crate::tokenize::{load_stage_vocab_tokens, WordPiece};
use crate::workers::Recycler;

/// Rows masked with one generator; blocks are masked in parallel.
pub const MASK_BLOCK_ROWS: usize = 1024;

/// Most rows per instance shard, so a reader holds little at a time: one record batch of a
/// pairs shard ([`crate::shard::BATCH_ROWS`]) is masked and written as one instance shard.
pub const INSTANCE_SHARD_ROWS: usize = crate::shard::BATCH_ROWS;

/// Blocks of [`MASK_BLOCK_ROWS`] in an instance shard.
const BLOCKS_PER_PART: usize = INSTANCE_SHARD_ROWS / MASK_BLOCK_ROWS;

/// Pairs a `mask` thread masks between two hand-backs of its freed memory to the OS
/// ([`crate::allocator::release_every`]): two full pairs shards at the default
/// `shard_rows`. Before the large buffers were recycled, freed shard buffers the allocator
/// kept for reuse added 40-50 MB to the stage's peak on a long run; a release costs 10-15
/// ms (the next shard faults the pages in again): after every full shard the peak of a
/// dupe-50 run fell by about 45 MB, and the bench-data run (which it then reached once per
/// thread) took 0.210 s against 0.195 s; after every two the peak fell by about 25 MB, and
/// that run never reaches it. With recycled buffers a release after every shard made no
/// measurable difference (docs/benchmarks.md, "Peak memory").
const RELEASE_EVERY_PAIRS: usize = 2 * 32_768;

/// What masking needs to know about the vocabulary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskVocab {
    /// Random replacements are drawn from `0..vocab_size` (as Google draws from all words).
    pub vocab_size: usize,
    /// `[CLS]` id, never masked.
    pub cls: u32,
    /// `[SEP]` id, never masked.
    pub sep: u32,
    /// `[MASK]` id.
    pub mask: u32,
    /// `is_continuation[id]`: the token starts with `##` (whole-word masking joins it to the
    /// piece before).
    pub is_continuation: Vec<bool>,
}

impl MaskVocab {
    /// Builds it from the tokens in id order (`tokens[id]`), finding `[CLS]`, `[SEP]` and
    /// `[MASK]` by name.
    pub fn from_tokens<S: AsRef<str>>(tokens: &[S]) -> Result<Self> {
        let find = |name: &str| {
            tokens
                .iter()
                .position(|t| t.as_ref() == name)
                .map(|id| id as u32)
                .ok_or_else(|| {
                    Error::Config(format!(
                        "the vocabulary has no {name} token: rebuild it with the vocab stage"
                    ))
                })
        };
        Ok(MaskVocab {
            vocab_size: tokens.len(),
            cls: find("[CLS]")?,
            sep: find("[SEP]")?,
            mask: find("[MASK]")?,
            is_continuation: tokens
                .iter()
                .map(|t| t.as_ref().starts_with("##"))
                .collect(),
        })
    }

    /// The vocabulary of a trained [`WordPiece`].
    pub fn from_wordpiece(wordpiece: &WordPiece) -> Self {
        let special = wordpiece.special();
        MaskVocab {
            vocab_size: wordpiece.vocab_size(),
            cls: special.cls,
            sep: special.sep,
            mask: special.mask,
            is_continuation: wordpiece.continuation_flags().to_vec(),
        }
    }

    fn is_continuation(&self, id: u32) -> bool {
        self.is_continuation
            .get(id as usize)
            .copied()
            .unwrap_or(false)
    }
}

/// Candidate positions, grouped: one group per token, or per whole word. Reused from
/// instance to instance by one masking thread.
#[derive(Default)]
struct CandidateIndexes {
    indexes: Vec<usize>,
    groups: Vec<Range<usize>>,
    /// The chosen `(position, original id)`s.
    masked_lms: Vec<(u32, u32)>,
    /// One bit per position: the chosen ones, read back in ascending order.
    chosen: Vec<u64>,
    /// Original ids by position (only chosen positions are meaningful).
    originals: Vec<u32>,
}

/// Groups the positions that may be masked for whole-word masking: every token but
/// `[CLS]`/`[SEP]`, a `##` piece joining the group before it (without whole-word masking
/// every group is one token: [`mask_single_tokens`]).
fn whole_word_groups(tokens: &[u32], vocab: &MaskVocab, candidates: &mut CandidateIndexes) {
    candidates.indexes.clear();
    candidates.groups.clear();
    for (i, &token) in tokens.iter().enumerate() {
        if token == vocab.cls || token == vocab.sep {
            continue;
        }
        // Whole Word Masking means that if we mask all of the wordpieces corresponding to an
        // original word. When a word has been split into WordPieces, the first token does
        // not have any marker and any subsequence tokens are prefixed with ##. So whenever
        // we see the ## token, we append it to the previous set of word indexes.
        candidates.indexes.push(i);
        let end = candidates.indexes.len();
        match candidates.groups.last_mut() {
            // The last group always ends at the end of `indexes`, so it can grow.
            Some(group) if vocab.is_continuation(token) => group.end = end,
            _ => candidates.groups.push(end - 1..end),
        }
    }
}

/// Creates the predictions for the masked LM objective.
///
/// Returns the tokens with masked positions replaced, the positions (ascending) and their
/// original ids.
pub fn create_masked_lm_predictions(
    tokens: &[u32],
    masked_lm_prob: f64,
    max_predictions_per_seq: usize,
    do_whole_word_mask: bool,
    vocab: &MaskVocab,
    rng: &mut impl Rng,
) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let mut output_tokens = tokens.to_vec();
    let mut candidates = CandidateIndexes::default();
    mask_in_place(
        &mut output_tokens,
        masked_lm_prob,
        max_predictions_per_seq,
        do_whole_word_mask,
        vocab,
        rng,
        &mut candidates,
    );
    let (positions, labels) = candidates.masked_lms.iter().copied().unzip();
    (output_tokens, positions, labels)
}

/// Masks `tokens` in place; the chosen `(position, original id)`s are left in
/// `candidates.masked_lms`, ascending by position.
fn mask_in_place(
    tokens: &mut [u32],
    masked_lm_prob: f64,
    max_predictions_per_seq: usize,
    do_whole_word_mask: bool,
    vocab: &MaskVocab,
    rng: &mut impl Rng,
    candidates: &mut CandidateIndexes,
) {
    // Python's round() rounds half to even.
    let num_to_predict = max_predictions_per_seq
        .min(((tokens.len() as f64 * masked_lm_prob).round_ties_even() as usize).max(1));
    if !do_whole_word_mask {
        mask_single_tokens(tokens, num_to_predict, vocab, rng, candidates);
        return;
    }
    whole_word_groups(tokens, vocab, candidates);
    let CandidateIndexes {
        indexes,
        groups,
        masked_lms,
        ..
    } = candidates;
    masked_lms.clear();

    // Google shuffles every group, then takes them in order until enough are masked. The
    // shuffle is drawn lazily here (Fisher-Yates from the front: step `k` swaps a uniformly
    // chosen later group into place `k`), so the groups taken are the prefix of a uniformly
    // random permutation, as Google's, without shuffling the ~85% never looked at. Groups
    // never overlap, so Google's check that a group's positions are not yet covered never
    // fires and is left out.
    for k in 0..groups.len() {
        if masked_lms.len() >= num_to_predict {
            break;
        }
        let chosen = rng.gen_range(k..groups.len());
        groups.swap(k, chosen);
        let index_set = &indexes[groups[k].clone()];
        // If adding a whole-word mask would exceed the maximum number of predictions, then
        // just skip this candidate.
        if masked_lms.len() + index_set.len() > num_to_predict {
            continue;
        }
        for &index in index_set {
            let original = tokens[index];
            tokens[index] = masked_token(original, vocab, rng);
            masked_lms.push((index as u32, original));
        }
    }
    assert!(masked_lms.len() <= num_to_predict);
    masked_lms.sort_unstable_by_key(|&(index, _)| index);
}

/// [`mask_in_place`] without whole-word masking, where every group is one token: the same
/// draws on the candidate positions themselves, with no group list.
fn mask_single_tokens(
    tokens: &mut [u32],
    num_to_predict: usize,
    vocab: &MaskVocab,
    rng: &mut impl Rng,
    candidates: &mut CandidateIndexes,
) {
    let CandidateIndexes {
        indexes,
        masked_lms,
        chosen,
        originals,
        ..
    } = candidates;
    indexes.clear();
    masked_lms.clear();
    indexes.extend((0..tokens.len()).filter(|&i| tokens[i] != vocab.cls && tokens[i] != vocab.sep));
    // The chosen positions are marked in a bitset and read back in order: no sort.
    chosen.clear();
    chosen.resize(tokens.len().div_ceil(64), 0);
    if originals.len() < tokens.len() {
        originals.resize(tokens.len(), 0);
    }
    // Every step masks one position: `num_to_predict` steps (or every candidate).
    for k in 0..indexes.len().min(num_to_predict) {
        let chosen_k = rng.gen_range(k..indexes.len());
        indexes.swap(k, chosen_k);
        let index = indexes[k];
        originals[index] = tokens[index];
        tokens[index] = masked_token(tokens[index], vocab, rng);
        chosen[index / 64] |= 1 << (index % 64);
    }
    for (word, &bits) in chosen.iter().enumerate() {
        let mut bits = bits;
        while bits != 0 {
            let index = word * 64 + bits.trailing_zeros() as usize;
            masked_lms.push((index as u32, originals[index]));
            bits &= bits - 1;
        }
    }
}

/// What a chosen position shows the model instead of `original`.
fn masked_token(original: u32, vocab: &MaskVocab, rng: &mut impl Rng) -> u32 {
    // 80% of the time, replace with [MASK]
    if rng.gen::<f64>() < 0.8 {
        vocab.mask
    // 10% of the time, keep original
    } else if rng.gen::<f64>() < 0.5 {
        original
    // 10% of the time, replace with random word
    } else {
        rng.gen_range(0..vocab.vocab_size as u32)
    }
}

/// Builds `[CLS] A [SEP] B [SEP]` with segment ids 0 for `[CLS] A [SEP]` and 1 for
/// `B [SEP]`, then masks it (the stage's own code, [`push_training_instance`], on one pair).
pub fn create_training_instance(
    pair: &SentencePair,
    cfg: &MaskConfig,
    vocab: &MaskVocab,
    rng: &mut impl Rng,
) -> TrainingInstance {
    let mut out = InstanceColumns::default();
    push_training_instance(
        &pair.tokens_a,
        &pair.tokens_b,
        pair.is_random_next,
        cfg,
        vocab,
        rng,
        &mut CandidateIndexes::default(),
        &mut out,
    );
    out.instance(0)
}

/// Masks one shard of pairs. Blocks of [`MASK_BLOCK_ROWS`] rows run in parallel, each with a
/// generator seeded from `(random_seed, "mask", shard_index, block)`: the stage's own
/// [`create_instance_columns`], as records.
pub fn create_training_instances(
    pairs: &[SentencePair],
    cfg: &MaskConfig,
    vocab: &MaskVocab,
    random_seed: u64,
    shard_index: usize,
) -> Vec<TrainingInstance> {
    let columns = create_instance_columns(
        &PairColumns::from_pairs(pairs),
        cfg,
        vocab,
        random_seed,
        shard_index,
    );
    (0..columns.len()).map(|i| columns.instance(i)).collect()
}

/// Appends the masked `[CLS] A [SEP] B [SEP]` of one pair to `out` (B starts at
/// `len(A) + 2`).
#[allow(clippy::too_many_arguments)]
fn push_training_instance(
    tokens_a: &[u32],
    tokens_b: &[u32],
    is_random_next: bool,
    cfg: &MaskConfig,
    vocab: &MaskVocab,
    rng: &mut impl Rng,
    candidates: &mut CandidateIndexes,
    out: &mut InstanceColumns,
) {
    let ids = &mut out.input_ids.values;
    let start = ids.len();
    ids.push(vocab.cls);
    ids.extend_from_slice(tokens_a);
    ids.push(vocab.sep);
    ids.extend_from_slice(tokens_b);
    ids.push(vocab.sep);
    mask_in_place(
        &mut ids[start..],
        cfg.masked_lm_prob,
        cfg.max_predictions_per_seq,
        cfg.do_whole_word_mask,
        vocab,
        rng,
        candidates,
    );
    out.input_ids.end_row();
    out.segment_b_start.push(tokens_a.len() as u32 + 2);
    let masked = &candidates.masked_lms;
    out.masked_lm_positions
        .values
        .extend(masked.iter().map(|&(position, _)| position));
    out.masked_lm_positions.end_row();
    out.masked_lm_ids
        .values
        .extend(masked.iter().map(|&(_, original)| original));
    out.masked_lm_ids.end_row();
    out.next_sentence_label.push(is_random_next);
}

/// Masks one shard of pairs in columns (what the stage writes): blocks of
/// [`MASK_BLOCK_ROWS`] rows in parallel, each with a generator seeded from
/// `(random_seed, "mask", shard_index, block)`, so the result does not depend on the thread
/// count.
pub fn create_instance_columns(
    pairs: &PairColumns,
    cfg: &MaskConfig,
    vocab: &MaskVocab,
    random_seed: u64,
    shard_index: usize,
) -> InstanceColumns {
    let blocks = 0..pairs.len().div_ceil(MASK_BLOCK_ROWS);
    concat_blocks(&create_instance_blocks(
        pairs,
        cfg,
        vocab,
        random_seed,
        shard_index,
        (0, blocks),
        &Recycler::default(),
    ))
}

/// The instances of blocks `blocks` of `pairs` (blocks of [`MASK_BLOCK_ROWS`] rows), in
/// order, masked in parallel, each into a buffer taken from `buffers`. `pairs` is the part
/// of shard `shard_index` from its block `first_block` on: a block's random stream is
/// seeded with its number in the shard.
fn create_instance_blocks(
    pairs: &PairColumns,
    cfg: &MaskConfig,
    vocab: &MaskVocab,
    random_seed: u64,
    shard_index: usize,
    (first_block, blocks): (usize, std::ops::Range<usize>),
    buffers: &Recycler<InstanceColumns>,
) -> Vec<InstanceColumns> {
    let n = pairs.len();
    blocks
        .into_par_iter()
        .map(|block| {
            let seed_indices = [shard_index as u64, (first_block + block) as u64];
            let mut rng = seeded_rng(random_seed, "mask", &seed_indices);
            let mut candidates = CandidateIndexes::default();
            let rows = block * MASK_BLOCK_ROWS..((block + 1) * MASK_BLOCK_ROWS).min(n);
            let (first, last) = (
                pairs.tokens_a.offsets[rows.start] + pairs.tokens_b.offsets[rows.start],
                pairs.tokens_a.offsets[rows.end] + pairs.tokens_b.offsets[rows.end],
            );
            let predictions = rows.len() * cfg.max_predictions_per_seq;
            let mut out: InstanceColumns = buffers.take();
            out.input_ids
                .clear_for(rows.len(), last - first + 3 * rows.len());
            out.masked_lm_positions.clear_for(rows.len(), predictions);
            out.masked_lm_ids.clear_for(rows.len(), predictions);
            clear_for(&mut out.segment_b_start, rows.len());
            clear_for(&mut out.next_sentence_label, rows.len());
            for i in rows {
                let (a, b, random) = pairs.pair(i);
                push_training_instance(
                    a,
                    b,
                    random,
                    cfg,
                    vocab,
                    &mut rng,
                    &mut candidates,
                    &mut out,
                );
            }
            out
        })
        .collect()
}

/// Blocks of instances joined into one, in order. Sized once: growing it block by block
/// copied and page-faulted it over and over.
fn concat_blocks(blocks: &[InstanceColumns]) -> InstanceColumns {
    let sum = |f: fn(&InstanceColumns) -> usize| blocks.iter().map(f).sum::<usize>();
    let n = sum(InstanceColumns::len);
    let mut columns = InstanceColumns {
        input_ids: IdLists::with_capacity(n, sum(|b| b.input_ids.values.len())),
        segment_b_start: Vec::with_capacity(n),
        masked_lm_positions: IdLists::with_capacity(n, sum(|b| b.masked_lm_positions.values.len())),
        masked_lm_ids: IdLists::with_capacity(n, sum(|b| b.masked_lm_ids.values.len())),
        next_sentence_label: Vec::with_capacity(n),
    };
    for block in blocks {
        columns.append(block);
    }
    columns
}

// An instance shard's part is a whole number of masking blocks.
const _: () = assert!(INSTANCE_SHARD_ROWS.is_multiple_of(MASK_BLOCK_ROWS));

/// Artifact kind of the `mask` stage's shards of `split`.
pub fn instances_kind(split: Split) -> &'static str {
    match split {
        Split::Train => "instances-train",
        Split::Eval => "instances-eval",
    }
}

/// The shape a pairs shard's instances get: the one shape of a run without phases, else the
/// shape of the length the shard was cut for.
pub fn shape_of_pairs_shard(cfg: &PipelineConfig, id: &ShardId) -> Result<InstanceShape> {
    if !cfg.has_phases() {
        return Ok(InstanceShape {
            max_seq_length: cfg.pairs.max_seq_length,
            max_predictions_per_seq: cfg.mask.max_predictions_per_seq,
        });
    }
    cfg.instance_shapes()
        .into_iter()
        .find(|s| Some(s.max_seq_length) == id.seq_len)
        .ok_or_else(|| {
            Error::Stage(format!(
                "pairs shard {} is not for any [[pretrain.phases]] max_seq_length; rerun `just stage pairs`",
                id.file_name()
            ))
        })
}

/// The shard identity `artifact` was recorded with; records written before shards had one
/// are refused with the stage to rerun.
pub fn recorded_shard_id(artifact: &ArtifactRecord) -> Result<ShardId> {
    artifact.shard.ok_or_else(|| {
        Error::Stage(format!(
            "{} was recorded without its shard identity (an older bertline); rerun `just stage {}`",
            artifact.id, artifact.stage
        ))
    })
}

/// The `mask` stage: pairs shards -> `<run>/mask/{train,eval}-FFFFF-SSSS-PP.arrow`: each
/// pairs shard becomes parts of at most [`INSTANCE_SHARD_ROWS`] instances, padded to
/// `max_seq_length`. Shard `i` of the pairs record is masked with seeds from
/// `(random_seed, "mask", i, block)`. With `[[pretrain.phases]]` the names keep the pairs
/// shards' `seq{L}-` prefix and each length has its own `max_predictions_per_seq`.
/// Working memory of one shard in flight, in bytes, at sequences of `max_seq_length`: a
/// batch of pairs, its masked instances and their encoding, about 28 bytes per row and
/// position (measured: 10-14 MB a thread at 128, docs/benchmarks.md).
pub fn shard_memory(max_seq_length: usize) -> usize {
    INSTANCE_SHARD_ROWS * max_seq_length * 28
}

/// What masking a pairs shard needs besides the shard: the settings, the vocabulary, the
/// seed, and the buffers pairs and masked blocks are read and built into, recycled from
/// one batch and shard to the next.
struct ShardMasker<'a> {
    mask: &'a MaskConfig,
    vocab: &'a MaskVocab,
    random_seed: u64,
    pair_buffers: Recycler<PairColumns>,
    block_buffers: Recycler<InstanceColumns>,
}

impl ShardMasker<'_> {
    /// Masks the pairs shard at `path` (shard `index` of the stage, `id`, rows of `shape`)
    /// and writes its instances into `dir` as parts of [`INSTANCE_SHARD_ROWS`]; returns the
    /// parts written and their statistics. The shard is read one record batch at a time
    /// and each part is written as soon as it is masked, so a thread holds one part of
    /// pairs and its instances, whatever the size of the shard. Parts, blocks and their
    /// random streams are numbered from the shard's first row: the instances do not
    /// depend on how the shard is cut into batches.
    fn mask_shard(
        &self,
        path: &Path,
        index: usize,
        id: ShardId,
        shape: InstanceShape,
        dir: &Path,
        progress: &dyn Progress,
    ) -> Result<(Vec<(ShardId, ShardInfo)>, InstanceStats)> {
        let cfg = MaskConfig {
            max_predictions_per_seq: shape.max_predictions_per_seq,
            ..self.mask.clone()
        };
        let mut batches = PairBatches::open(path)?;
        let mut pairs: PairColumns = self.pair_buffers.take();
        let (mut parts, mut stats, mut masked) = (Vec::new(), InstanceStats::default(), 0);
        while let Some(first_row) = batches.next_into(&mut pairs)? {
            if first_row % INSTANCE_SHARD_ROWS != 0 {
                return Err(Error::shard(
                    path,
                    format!("a record batch starts at row {first_row}, not at a multiple of {INSTANCE_SHARD_ROWS}; rerun the `pairs` stage with --force"),
                ));
            }
            let first_block = first_row / MASK_BLOCK_ROWS;
            let block_count = pairs.len().div_ceil(MASK_BLOCK_ROWS);
            for start in (0..block_count).step_by(BLOCKS_PER_PART) {
                let blocks = start..(start + BLOCKS_PER_PART).min(block_count);
                let part = (first_block + start) / BLOCKS_PER_PART;
                let group = create_instance_blocks(
                    &pairs,
                    &cfg,
                    self.vocab,
                    self.random_seed,
                    index,
                    (first_block, blocks),
                    &self.block_buffers,
                );
                if let (0, 0, Some(first)) = (index, part, group.first()) {
                    for i in 0..first.len().min(3) {
                        tracing::debug!("instance:\n{}", first.instance(i));
                    }
                }
                let part_id = id.with_part(part);
                let info = write_instance_columns(
                    &dir.join(part_id.file_name()),
                    &group,
                    shape.max_seq_length,
                    shape.max_predictions_per_seq,
                )?;
                parts.push((part_id, info));
                for block in group {
                    stats.add_columns(&block, self.vocab.mask);
                    self.block_buffers.give_back(block);
                }
            }
            masked += pairs.len();
            progress.advance(pairs.len() as u64);
        }
        self.pair_buffers.give_back(pairs);
        crate::allocator::release_every(masked, RELEASE_EVERY_PAIRS);
        Ok((parts, stats))
    }
}

/// What the `mask` stage keeps of a pairs shard's record while it masks them all: a large
/// corpus has hundreds of thousands, whose full records it does not hold.
struct PairsShard {
    path: PathBuf,
    /// The artifact id, recorded as the source of its instance shards.
    artifact: String,
    id: ShardId,
    rows: u64,
    shape: InstanceShape,
}

/// Pairs shards masked between two recordings of their instance shards: what masking
/// returns (hashes, counts) is held for this many at most.
const RECORD_WINDOW: usize = 256;

pub fn run(ctx: &StageCtx, progress: &dyn Progress) -> Result<Outcome> {
    let cfg = ctx.config();
    let mut run = match ctx.begin(Stage::Mask)? {
        Begin::Skip(record) => return Ok(Outcome::Skipped(record)),
        Begin::Run(run) => run,
    };
    let (tokens, vocab_path) = load_stage_vocab_tokens(ctx)?;
    let vocab =
        MaskVocab::from_tokens(&tokens).map_err(|e| Error::data(&vocab_path, e.to_string()))?;
    let started = Instant::now();
    // What masking needs of each pairs shard, train shards first, each split in recorded
    // order (the order numbers them and seeds their random streams).
    let (mut shards, mut eval) = (Vec::new(), Vec::new());
    ctx.each_upstream_artifact(Stage::Pairs, |artifact| {
        let split = [Split::Train, Split::Eval]
            .into_iter()
            .find(|&split| artifact.kind == pairs_kind(split));
        let Some(split) = split else {
            return Ok(());
        };
        let id = recorded_shard_id(&artifact)?;
        let shard = PairsShard {
            path: ctx.path_of(&artifact),
            shape: shape_of_pairs_shard(cfg, &id)?,
            artifact: artifact.id,
            id,
            rows: artifact.rows,
        };
        match split {
            Split::Train => shards.push(shard),
            Split::Eval => eval.push(shard),
        }
        Ok(())
    })?;
    shards.append(&mut eval);
    progress.start("mask", shards.iter().map(|s| s.rows).sum());
    let longest = shards.iter().map(|s| s.shape.max_seq_length).max();
    let in_flight =
        crate::workers::items_in_flight(cfg.run.data_memory_mb, shard_memory(longest.unwrap_or(0)));
    let masker = ShardMasker {
        mask: &cfg.mask,
        vocab: &vocab,
        random_seed: cfg.run.random_seed,
        pair_buffers: Recycler::default(),
        block_buffers: Recycler::default(),
    };
    let mut totals = InstanceStats::default();
    let mut by_length: std::collections::BTreeMap<usize, InstanceStats> = Default::default();
    let mut written = 0;
    // One pairs shard per thread at a time, `in_flight` at most (crate::workers explains
    // why not `par_iter`), a window of shards at a time so that what their masking returns
    // is recorded (in order) and dropped as it goes.
    for (window, group) in shards.chunks(RECORD_WINDOW).enumerate() {
        let per_shard = crate::workers::map_bounded(group, in_flight, |i, shard| {
            let index = window * RECORD_WINDOW + i;
            let (parts, stats) = masker.mask_shard(
                &shard.path,
                index,
                shard.id,
                shard.shape,
                run.dir(),
                progress,
            )?;
            Ok((parts, stats))
        })?;
        for ((parts, stats), shard) in per_shard.into_iter().zip(group) {
            for (id, info) in parts {
                let sources = vec![shard.artifact.clone()];
                run.add_shard(
                    &id.file_name(),
                    instances_kind(id.split),
                    &id,
                    &info,
                    sources,
                )?;
                written += 1;
            }
            totals.merge(&stats);
            by_length
                .entry(shard.shape.max_seq_length)
                .or_default()
                .merge(&stats);
        }
    }
    progress.finish();
    let seconds = started.elapsed().as_secs_f64();
    let mut metrics = serde_json::to_value(&totals).expect("stats serialise");
    metrics["shards"] = json!(written);
    metrics["seconds"] = json!(seconds);
    metrics["instances_per_s"] = json!(totals.instances as f64 / seconds);
    if cfg.has_phases() {
        let mut lengths = serde_json::Map::new();
        for shape in cfg.instance_shapes() {
            let stats = by_length.remove(&shape.max_seq_length).unwrap_or_default();
            let mut value = serde_json::to_value(&stats).expect("stats serialise");
            value["max_predictions_per_seq"] = json!(shape.max_predictions_per_seq);
            lengths.insert(length_key(shape.max_seq_length), value);
        }
        metrics["by_length"] = lengths.into();
    }
    Ok(Outcome::Ran(run.finish(ctx, metrics)?))
}

/// The written instance shards of `split`, every length (the `mask` stage must be fresh).
pub fn instance_shards(ctx: &StageCtx, split: Split) -> Result<Vec<PathBuf>> {
    let kind = instances_kind(split);
    let mut paths = Vec::new();
    ctx.each_upstream_artifact(Stage::Mask, |a| {
        if a.kind == kind {
            paths.push(ctx.path_of(&a));
        }
        Ok(())
    })?;
    Ok(paths)
}

/// Stats over the `mask` stage's written shards of `split`, read one at a time.
pub fn stage_stats(ctx: &StageCtx, split: Split) -> Result<InstanceStats> {
    let mut stats = InstanceStats::default();
    for by_length in stage_stats_by_length(ctx, split)?.values() {
        stats.merge(by_length);
    }
    Ok(stats)
}

/// [`stage_stats`] per sequence length (one entry, or one per pre-training phase length).
pub fn stage_stats_by_length(
    ctx: &StageCtx,
    split: Split,
) -> Result<std::collections::BTreeMap<usize, InstanceStats>> {
    let mut by_length = std::collections::BTreeMap::<usize, InstanceStats>::new();
    for path in instance_shards(ctx, split)? {
        let shard = crate::shard::read_instances(&path)?;
        by_length
            .entry(shard.seq_len)
            .or_default()
            .add_shard(&shard, crate::tokenize::SPECIAL.mask);
    }
    Ok(by_length)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;
    use polars::prelude::*;

    /// A pairs shard masks to the same instance shards whether it was written in record
    /// batches or in one (polars' own writer, as shards were before batches): parts,
    /// blocks and random streams count from the shard's first row.
    #[test]
    fn instances_do_not_depend_on_how_the_pairs_shard_is_cut_into_batches() {
        let tmp = tempfile::tempdir().unwrap();
        let pairs: Vec<SentencePair> = (0..2 * INSTANCE_SHARD_ROWS as u32 + 777)
            .map(|i| SentencePair {
                tokens_a: (0..3 + i % 40).map(|j| 5 + (i + j) % 90).collect(),
                tokens_b: (0..2 + i % 50).map(|j| 5 + (i * 7 + j) % 90).collect(),
                is_random_next: i % 3 == 0,
            })
            .collect();
        let batched = tmp.path().join("batched.arrow");
        crate::shard::write_pairs(&batched, &pairs).unwrap();
        let one = tmp.path().join("one.arrow");
        let mut df = IpcReader::new(std::fs::File::open(&batched).unwrap())
            .finish()
            .unwrap();
        df.rechunk_mut();
        IpcWriter::new(std::fs::File::create(&one).unwrap())
            .finish(&mut df)
            .unwrap();

        let tokens: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
            .iter()
            .map(|t| t.to_string())
            .chain((5..100).map(|i| format!("w{i}")))
            .collect();
        let vocab = MaskVocab::from_tokens(&tokens).unwrap();
        let mask = MaskConfig {
            masked_lm_prob: 0.15,
            max_predictions_per_seq: 20,
            do_whole_word_mask: false,
        };
        let masker = ShardMasker {
            mask: &mask,
            vocab: &vocab,
            random_seed: 7,
            pair_buffers: Recycler::default(),
            block_buffers: Recycler::default(),
        };
        let id = ShardId {
            split: Split::Train,
            seq_len: None,
            file: 3,
            shard: 1,
            part: None,
        };
        let shape = InstanceShape {
            max_seq_length: 128,
            max_predictions_per_seq: 20,
        };
        let mut written = Vec::new();
        for (input, dir) in [(&batched, "from-batches"), (&one, "from-one")] {
            let dir = tmp.path().join(dir);
            std::fs::create_dir(&dir).unwrap();
            let (parts, stats) = masker
                .mask_shard(input, 2, id, shape, &dir, &NoProgress)
                .unwrap();
            assert_eq!(stats.instances, pairs.len() as u64);
            let parts: Vec<_> = parts
                .into_iter()
                .map(|(part, info)| {
                    let bytes = std::fs::read(dir.join(part.file_name())).unwrap();
                    (part, info.rows, bytes)
                })
                .collect();
            written.push(parts);
        }
        let rows: Vec<u64> = written[0].iter().map(|(_, rows, _)| *rows).collect();
        assert_eq!(rows, [4096, 4096, 777]);
        assert_eq!(written[0], written[1]);

        // Batches that do not start on a part's first row are refused, naming the file.
        let mut cut = df.slice(0, 1000);
        cut.vstack_mut(&df.slice(1000, 5000)).unwrap();
        let odd = tmp.path().join("odd.arrow");
        IpcWriter::new(std::fs::File::create(&odd).unwrap())
            .finish(&mut cut)
            .unwrap();
        let dir = tmp.path().join("from-odd");
        std::fs::create_dir(&dir).unwrap();
        let err = masker
            .mask_shard(&odd, 2, id, shape, &dir, &NoProgress)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("odd.arrow") && err.contains("row 1000") && err.contains("`pairs`"),
            "{err}"
        );
    }
}
