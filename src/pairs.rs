//! Next-sentence pairs: the first half of Google's `create_pretraining_data.py`.
//!
//! A corpus file holds one sentence per line and a blank line between documents.
//! [`create_instances_from_document`] cuts a document into `A`/`B` segment pairs (half of
//! them with `B` taken from another document), and [`truncate_pair_random_ends`] fits each pair into
//! `max_seq_length`. Masking is left to [`crate::mask`].
//!
//! [`create_training_pairs`] is the streaming driver: it reads, tokenizes and pairs each
//! input file on its own, and a file over [`corpus::BLOCK_BYTES`] (1 MiB) block by block,
//! cut at blank lines (one block per thread, at most as many at once as `run.data_memory_mb`
//! holds, [`crate::workers::map_bounded`]; the "other document" comes from the same block),
//! so peak memory is one block per block in flight, whatever the size of the corpus or of
//! any file in it. Google pools every document of every file instead; here only the blocks
//! with a single document (a book without blank lines) are pooled, in groups of about a
//! block, and paired after the rest, each on its own with its random next sentences drawn
//! from the others of its group (a lone one draws from the nearest paired block). Every
//! random stream is a [`ChaCha8Rng`] seeded from `(random_seed, stage, block, dupe)` by
//! [`seeded_rng`], so the output is bit-identical whatever the thread count.
//!
//! With `[[pretrain.phases]]` the stage pairs every file once per phase sequence length
//! ([`create_training_pairs_at_lengths`]), as Google runs `create_pretraining_data.py` once
//! per `max_seq_length`; the shards' names start with `seq{length}-` ([`ShardId`]).
//! Every length uses the same seeds, so the held-out documents are the same at every length.
//!
//! Reference: <https://github.com/google-research/bert/blob/eedf5716ce1268e56f0a50264a88cafad334ac61/create_pretraining_data.py>

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::json;

mod ascii_wordpiece;
pub use ascii_wordpiece::AsciiWordPiece;

use crate::config::PairsConfig;
use crate::corpus;
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::shard::{length_key, write_pair_columns, PairColumns, SentencePair, ShardId, Split};
use crate::stage::{corpus_files, derive_seed, Begin, Outcome, Stage, StageCtx};
use crate::tokenize::load_stage_vocab;
use crate::workers::Recycler;

/// One document: its sentences ("segments" in Google's code) as token ids, none empty.
pub type Document = Vec<Vec<u32>>;

/// Tokenizes a batch of lines into token ids, without special tokens.
pub type TokenizeFn<'a> = dyn Fn(&[&str]) -> Result<Vec<Vec<u32>>> + Sync + 'a;

/// Receives each finished shard of pairs; called from several threads.
pub type PairSinkFn<'a> = dyn Fn(PairShard<'_>) -> Result<()> + Sync + 'a;

/// A ChaCha8 generator seeded from the master seed, a stage label and indices (file, dupe,
/// shard...). Streams for different labels or indices are independent, and none depends on
/// which thread runs it.
pub fn seeded_rng(random_seed: u64, stage: &str, indices: &[u64]) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(derive_seed(random_seed, stage, indices))
}

/// One output shard handed to the sink: at most `shard_rows` pairs of one split of one file.
#[derive(Debug, Clone, Copy)]
pub struct PairShard<'a> {
    /// Which shard: split, length (when the run pairs at several, see
    /// [`create_training_pairs_at_lengths`]), input file and shard of that file.
    pub id: ShardId,
    /// The pairs this shard's rows are taken from.
    pub pairs: &'a PairColumns,
    /// The shard's rows of `pairs`, in shuffled order.
    pub rows: &'a [usize],
    /// The input files its documents came from (one, or the files of a pooled group).
    pub files: &'a [&'a Path],
}

impl PairShard<'_> {
    /// The shard's pairs, in order.
    pub fn to_pairs(&self) -> Vec<SentencePair> {
        self.pairs.gather(self.rows).to_pairs()
    }
}

/// Counts for one input file, or (summed) for the whole corpus.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PairsSummary {
    /// Input files read.
    pub files: usize,
    /// Bytes of input text.
    pub input_bytes: u64,
    /// Documents with at least one non-empty sentence.
    pub documents: usize,
    /// Of those, documents held out for the eval split.
    pub eval_documents: usize,
    /// WordPiece tokens in all documents.
    pub tokens: u64,
    /// Pairs written to the train split (all dupe passes).
    pub train_pairs: usize,
    /// Pairs written to the eval split.
    pub eval_pairs: usize,
}

impl PairsSummary {
    fn add(&mut self, other: &PairsSummary) {
        self.files += other.files;
        self.input_bytes += other.input_bytes;
        self.documents += other.documents;
        self.eval_documents += other.eval_documents;
        self.tokens += other.tokens;
        self.train_pairs += other.train_pairs;
        self.eval_pairs += other.eval_pairs;
    }
}

/// The pairs made from one input file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilePairs {
    /// Shuffled train pairs of every dupe pass.
    pub train: PairColumns,
    /// Shuffled pairs of the held-out documents (one pass).
    pub eval: PairColumns,
    /// This file's counts.
    pub summary: PairsSummary,
}

/// Reads a corpus file with [`crate::corpus::read_corpus`]'s checks (empty, binary, not
/// UTF-8, a huge line) plus the one pairing needs: at least 2 documents.
pub fn read_corpus_file(path: &Path) -> Result<String> {
    let text = corpus::read_corpus(path)?;
    check_document_count(path, corpus::documents(&text).len())?;
    Ok(text)
}

fn check_document_count(path: &Path, documents: usize) -> Result<()> {
    if documents < 2 {
        return Err(Error::data(
            path,
            format!("only {documents} document(s): next-sentence sampling needs at least 2; separate documents with a blank line"),
        ));
    }
    Ok(())
}

/// Tokenizes every line of every document in one batch; sentences with no tokens are
/// dropped, then documents with no sentences (as Google's reader does).
pub fn tokenize_documents(
    documents: &[Vec<&str>],
    tokenize: &TokenizeFn<'_>,
) -> Result<Vec<Document>> {
    let lines: Vec<&str> = documents.iter().flatten().copied().collect();
    let mut ids = tokenize(&lines)?.into_iter();
    let mut tokenized = Vec::with_capacity(documents.len());
    for document in documents {
        let segments: Document = ids
            .by_ref()
            .take(document.len())
            .filter(|s| !s.is_empty())
            .collect();
        if !segments.is_empty() {
            tokenized.push(segments);
        }
    }
    Ok(tokenized)
}

/// Truncates a pair of sequences to a maximum sequence length.
///
/// The longer one loses a token each step, from the front or the back at random, "to add
/// more randomness and avoid biases".
pub fn truncate_pair_random_ends(
    tokens_a: &mut Vec<u32>,
    tokens_b: &mut Vec<u32>,
    max_num_tokens: usize,
    rng: &mut impl Rng,
) {
    let (a, b) = truncation_window(tokens_a.len(), tokens_b.len(), max_num_tokens, rng);
    tokens_a.truncate(a.end);
    tokens_a.drain(..a.start);
    tokens_b.truncate(b.end);
    tokens_b.drain(..b.start);
}

/// What [`truncate_pair_random_ends`] keeps of sequences of `len_a` and `len_b` tokens:
/// Google's loop on index ranges, so dropping the front is O(1).
fn truncation_window(
    len_a: usize,
    len_b: usize,
    max_num_tokens: usize,
    rng: &mut impl Rng,
) -> (Range<usize>, Range<usize>) {
    let (mut a, mut b) = (0..len_a, 0..len_b);
    while a.len() + b.len() > max_num_tokens {
        let trunc = if a.len() > b.len() { &mut a } else { &mut b };
        assert!(trunc.start < trunc.end);
        if rng.gen::<f64>() < 0.5 {
            trunc.start += 1;
        } else {
            trunc.end -= 1;
        }
    }
    (a, b)
}

/// Creates `SentencePair`s for a single document.
///
/// Segments are gathered into a chunk until it reaches the target length; a random prefix
/// of the chunk becomes `A`; `B` is the rest of the chunk, or (half of the time, and always
/// when the chunk is one segment) a span of a random other document.
pub fn create_instances_from_document(
    all_documents: &[Document],
    document_index: usize,
    max_seq_length: usize,
    short_seq_prob: f64,
    rng: &mut impl Rng,
) -> Vec<SentencePair> {
    let mut pairs = PairColumns::default();
    push_instances_from_document(
        all_documents,
        document_index,
        max_seq_length,
        short_seq_prob,
        rng,
        &mut pairs,
    );
    pairs.to_pairs()
}

/// [`create_instances_from_document`] appending to columns (the stage's path: no vector per
/// pair).
fn push_instances_from_document<D: std::borrow::Borrow<Document>>(
    all_documents: &[D],
    document_index: usize,
    max_seq_length: usize,
    short_seq_prob: f64,
    rng: &mut impl Rng,
    out: &mut PairColumns,
) {
    let document: &Document = all_documents[document_index].borrow();

    // Account for [CLS], [SEP], [SEP]
    let max_num_tokens = max_seq_length - 3;

    // We *usually* want to fill up the entire sequence since we are padding to
    // `max_seq_length` anyways, so short sequences are generally wasted computation.
    // However, we *sometimes* (i.e., short_seq_prob == 0.1 == 10% of the time) want to use
    // shorter sequences to minimize the mismatch between pre-training and fine-tuning.
    let mut target_seq_length = max_num_tokens;
    if rng.gen::<f64>() < short_seq_prob {
        target_seq_length = rng.gen_range(2..=max_num_tokens);
    }

    let mut current_chunk: Vec<&[u32]> = Vec::new();
    let mut current_length = 0;
    let mut i = 0;
    while i < document.len() {
        let segment = &document[i];
        current_chunk.push(segment);
        current_length += segment.len();
        if i == document.len() - 1 || current_length >= target_seq_length {
            // `a_end` is how many segments from `current_chunk` go into the `A` sentence.
            let mut a_end = 1;
            if current_chunk.len() >= 2 {
                a_end = rng.gen_range(1..=current_chunk.len() - 1);
            }
            // A and B are built in place at the end of the columns, then trimmed.
            let tokens_a = &mut out.tokens_a.values;
            let start_a = tokens_a.len();
            current_chunk[..a_end]
                .iter()
                .for_each(|s| tokens_a.extend_from_slice(s));
            let len_a = tokens_a.len() - start_a;

            let tokens_b = &mut out.tokens_b.values;
            let start_b = tokens_b.len();
            let is_random_next = current_chunk.len() == 1 || rng.gen::<f64>() < 0.5;
            if is_random_next {
                let target_b_length = target_seq_length.saturating_sub(len_a);
                let random_document: &Document = all_documents
                    [pick_random_document(all_documents.len(), document_index, rng)]
                .borrow();
                let random_start = rng.gen_range(0..random_document.len());
                for segment in &random_document[random_start..] {
                    tokens_b.extend_from_slice(segment);
                    if tokens_b.len() - start_b >= target_b_length {
                        break;
                    }
                }
                // We didn't actually use these segments so we "put them back" so they
                // don't go to waste.
                let num_unused_segments = current_chunk.len() - a_end;
                i -= num_unused_segments;
            } else {
                current_chunk[a_end..]
                    .iter()
                    .for_each(|s| tokens_b.extend_from_slice(s));
            }
            let len_b = tokens_b.len() - start_b;
            let (a, b) = truncation_window(len_a, len_b, max_num_tokens, rng);
            assert!(!a.is_empty());
            assert!(!b.is_empty());
            out.keep_last(a, b, is_random_next);
            current_chunk.clear();
            current_length = 0;
        }
        i += 1;
    }
}

/// Picks the document `B` comes from: "we try to make sure that the random document is not
/// the same as the document we're processing" (10 tries, as Google).
fn pick_random_document(num_documents: usize, document_index: usize, rng: &mut impl Rng) -> usize {
    let mut random_document_index = document_index;
    for _ in 0..10 {
        random_document_index = rng.gen_range(0..num_documents);
        if random_document_index != document_index {
            break;
        }
    }
    random_document_index
}

/// How many of a file's `num_documents` (already shuffled) are held out for eval: the
/// rounded fraction, or none when either split would have fewer than the 2 documents
/// next-sentence sampling needs.
pub fn eval_document_count(num_documents: usize, eval_fraction: f64) -> usize {
    let held_out = (num_documents as f64 * eval_fraction).round() as usize;
    if held_out < 2 || num_documents.saturating_sub(held_out) < 2 {
        0
    } else {
        held_out
    }
}

/// Pairs of one tokenized file: documents shuffled, a held-out eval split, `dupe_factor`
/// passes over the train documents, then the train pairs shuffled.
pub fn create_pairs_from_documents(
    documents: Vec<Document>,
    file_index: usize,
    cfg: &PairsConfig,
    random_seed: u64,
) -> FilePairs {
    let (train, eval, summary) = pair_documents(
        documents,
        &[],
        file_index,
        cfg,
        random_seed,
        &Recycler::default(),
    );
    FilePairs {
        train: train.pairs.gather(&train.order),
        eval: eval.pairs.gather(&eval.order),
        summary,
    }
}

/// Pairs in the order they were made, and the order they are written in: shuffling an
/// order instead of the pairs saves a copy of every token (the stage writes `order`'s rows
/// straight into its shards).
struct ShuffledPairs {
    pairs: PairColumns,
    order: Vec<usize>,
}

/// [`create_pairs_from_documents`] with the shuffles as orders: train, eval, counts. The
/// train pairs are built in a buffer taken from `buffers`. Random next sentences of train
/// pairs come from the other train documents and from `sources` (documents of another
/// block, for a unit with too few of its own), which are never paired themselves.
fn pair_documents(
    mut documents: Vec<Document>,
    sources: &[&Document],
    file_index: usize,
    cfg: &PairsConfig,
    random_seed: u64,
    buffers: &Recycler<PairColumns>,
) -> (ShuffledPairs, ShuffledPairs, PairsSummary) {
    let file = file_index as u64;
    documents.shuffle(&mut seeded_rng(random_seed, "pairs/documents", &[file]));
    let num_eval = eval_document_count(documents.len(), cfg.eval_fraction);
    let (eval_documents, train_documents) = documents.split_at(num_eval);
    let tokens =
        |documents: &[Document]| -> usize { documents.iter().flatten().map(Vec::len).sum() };

    // Every pass emits about its documents' tokens and a quarter more (random B spans
    // replace segments that are put back), A and B nearly evenly (on Wikipedia at 128: A
    // 0.61, B 0.66 of the documents' tokens): room for three quarters each, so the columns
    // rarely regrow (a regrowth copies and page-faults a column of megabytes).
    let room = tokens(train_documents) * cfg.dupe_factor * 3 / 4;
    // The documents `push_instances_from_document` draws from, when there are sources: the
    // train documents first (the ones paired), then the sources, borrowed.
    let with_sources: Vec<&Document> = match sources.is_empty() {
        true => Vec::new(),
        false => train_documents
            .iter()
            .chain(sources.iter().copied())
            .collect(),
    };
    let mut train = buffers.take();
    train.tokens_a.clear_for(0, room);
    train.tokens_b.clear_for(0, room);
    train.is_random_next.clear();
    for dupe in 0..cfg.dupe_factor {
        let mut rng = seeded_rng(random_seed, "pairs", &[file, dupe as u64]);
        for document_index in 0..train_documents.len() {
            let (max_seq_length, short_seq_prob) = (cfg.max_seq_length, cfg.short_seq_prob);
            if sources.is_empty() {
                push_instances_from_document(
                    train_documents,
                    document_index,
                    max_seq_length,
                    short_seq_prob,
                    &mut rng,
                    &mut train,
                );
            } else {
                push_instances_from_document(
                    &with_sources,
                    document_index,
                    max_seq_length,
                    short_seq_prob,
                    &mut rng,
                    &mut train,
                );
            }
        }
    }
    let train_order = shuffled_order(
        train.len(),
        &mut seeded_rng(random_seed, "pairs/shuffle", &[file]),
    );

    // Half of this to A, half to B: three quarters of the documents' tokens each, as above.
    let mut eval = PairColumns::with_capacity(tokens(eval_documents) * 3 / 2);
    let mut rng = seeded_rng(random_seed, "pairs/eval", &[file]);
    for document_index in 0..eval_documents.len() {
        push_instances_from_document(
            eval_documents,
            document_index,
            cfg.max_seq_length,
            cfg.short_seq_prob,
            &mut rng,
            &mut eval,
        );
    }
    let eval_order = shuffled_order(eval.len(), &mut rng);

    let summary = PairsSummary {
        files: 1,
        input_bytes: 0,
        documents: documents.len(),
        eval_documents: num_eval,
        tokens: documents.iter().flatten().map(|s| s.len() as u64).sum(),
        train_pairs: train.len(),
        eval_pairs: eval.len(),
    };
    (
        ShuffledPairs {
            pairs: train,
            order: train_order,
        },
        ShuffledPairs {
            pairs: eval,
            order: eval_order,
        },
        summary,
    )
}

/// A uniformly random order of `n` rows: the draws of shuffling a vector of `n` pairs.
fn shuffled_order(n: usize, rng: &mut impl Rng) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    order
}

/// Reads, checks and tokenizes one corpus file: its documents and its size in bytes.
pub fn tokenize_corpus_file(
    path: &Path,
    tokenize: &TokenizeFn<'_>,
) -> Result<(Vec<Document>, u64)> {
    let (documents, input_bytes) = tokenize_corpus_text(path, tokenize)?;
    check_document_count(path, documents.len())?;
    Ok((documents, input_bytes))
}

/// [`tokenize_corpus_file`] without the document count check (the driver pools files with
/// fewer than two documents).
fn tokenize_corpus_text(path: &Path, tokenize: &TokenizeFn<'_>) -> Result<(Vec<Document>, u64)> {
    let text = corpus::read_corpus(path)?;
    let documents = tokenize_documents(&corpus::documents(&text), tokenize)?;
    Ok((documents, text.len() as u64))
}

/// Reads, checks, tokenizes and pairs one corpus file.
pub fn create_pairs_from_file(
    path: &Path,
    file_index: usize,
    cfg: &PairsConfig,
    random_seed: u64,
    tokenize: &TokenizeFn<'_>,
) -> Result<FilePairs> {
    let (documents, input_bytes) = tokenize_corpus_file(path, tokenize)?;
    let mut pairs = create_pairs_from_documents(documents, file_index, cfg, random_seed);
    pairs.summary.input_bytes = input_bytes;
    log_paired(path, &pairs.summary);
    Ok(pairs)
}

fn log_paired(path: &Path, summary: &PairsSummary) {
    tracing::debug!(
        file = %path.display(),
        documents = summary.documents,
        train_pairs = summary.train_pairs,
        eval_pairs = summary.eval_pairs,
        "paired"
    );
}

/// Hands a file's pairs to the sink in shards of at most `shard_rows`, in shuffled order.
fn emit_shards(
    max_seq_length: Option<usize>,
    split: Split,
    file_index: usize,
    pairs: &ShuffledPairs,
    files: &[&Path],
    shard_rows: usize,
    sink: &PairSinkFn<'_>,
) -> Result<()> {
    for (shard_index, rows) in pairs.order.chunks(shard_rows.max(1)).enumerate() {
        let id = ShardId {
            split,
            seq_len: max_seq_length,
            file: file_index,
            shard: shard_index,
            part: None,
        };
        sink(PairShard {
            id,
            pairs: &pairs.pairs,
            rows,
            files,
        })?;
    }
    Ok(())
}

/// Bytes of text a `pairs` thread pairs between two hand-backs of its freed memory to the OS
/// ([`crate::allocator::release_free_memory`]): four blocks. On 150 MB of text as one file
/// (blocks of 4 MiB then, a release every 16 MiB) the stage's peak RSS was 166 MB twice with
/// it, 191 and 200 MB without (rising after 4 s); with blocks of 1 MiB, on 500 MB as 505
/// files, a release every 4 MiB instead of 16 kept the stage at 85-86 MB instead of 94-98
/// (in 14.0-14.4 s against 13.3-14.0 s). The bench-data run (3.4 MB a thread) never
/// reaches it.
const RELEASE_EVERY_BYTES: usize = 4 * corpus::BLOCK_BYTES as usize;

/// Working memory of one block in flight, in bytes: about 17 bytes per byte of text at
/// `dupe_factor` 5 and one sequence length (measured: 15-18 MB more a thread on blocks of
/// 1 MiB, docs/benchmarks.md), most of it the block's pairs, which grow with
/// `dupe_factor`, the rest the tokenized documents, held again for every further length.
pub fn block_memory(dupe_factor: usize, lengths: usize) -> usize {
    corpus::BLOCK_BYTES as usize * (3 * dupe_factor + 2 * lengths)
}

/// The `pairs` stage's driver, like Google's `create_training_instances` without masking.
///
/// Blocks of the files ([`corpus::corpus_blocks`]) are processed in parallel and
/// independently, `in_flight` at a time (the stage takes it from its memory budget,
/// [`block_memory`]): each is read, tokenized with `tokenize`, paired, and its shards
/// handed to `sink` before the next block is taken, so memory holds one block per block in
/// flight. Shards are named by (split, block, shard), so the output does not depend on the
/// thread count nor on `in_flight`. `progress` counts input bytes.
pub fn create_training_pairs(
    input_files: &[PathBuf],
    cfg: &PairsConfig,
    random_seed: u64,
    in_flight: usize,
    tokenize: &TokenizeFn<'_>,
    sink: &PairSinkFn<'_>,
    progress: &dyn Progress,
) -> Result<PairsSummary> {
    let by_length = pair_files(
        input_files,
        cfg,
        &[None],
        random_seed,
        in_flight,
        tokenize,
        sink,
        progress,
    )?;
    Ok(by_length
        .into_iter()
        .next()
        .map(|(_, s)| s)
        .unwrap_or_default())
}

/// [`create_training_pairs`] once per sequence length in `max_seq_lengths` (pretraining
/// phases), each file read and tokenized once. Shards carry their length
/// ([`ShardId::seq_len`]); every length uses the same seeds, so the held-out
/// documents are the same at every length. Returns each length's counts.
#[allow(clippy::too_many_arguments)]
pub fn create_training_pairs_at_lengths(
    input_files: &[PathBuf],
    cfg: &PairsConfig,
    max_seq_lengths: &[usize],
    random_seed: u64,
    in_flight: usize,
    tokenize: &TokenizeFn<'_>,
    sink: &PairSinkFn<'_>,
    progress: &dyn Progress,
) -> Result<Vec<(usize, PairsSummary)>> {
    let lengths: Vec<Option<usize>> = max_seq_lengths.iter().map(|&l| Some(l)).collect();
    let by_length = pair_files(
        input_files,
        cfg,
        &lengths,
        random_seed,
        in_flight,
        tokenize,
        sink,
        progress,
    )?;
    Ok(by_length
        .into_iter()
        .map(|(length, summary)| (length.unwrap_or(cfg.max_seq_length), summary))
        .collect())
}

/// Pairs every file at every length (`None`: `cfg.max_seq_length`, unnamed shards).
///
/// Files are read in blocks ([`corpus::corpus_blocks`]: a file over
/// [`corpus::BLOCK_BYTES`] is cut at blank lines into blocks of about that size), and each
/// block with two or more documents is paired on its own, numbered in input order (the
/// number names its shards and seeds its random streams; with no file over a block, block
/// `i` is file `i`). Blocks with fewer documents (a book with no blank lines in it, say)
/// cannot draw a random next sentence from themselves, so they are pooled, in input order,
/// into groups of at least a block's size and two documents ([`pool_one_document_blocks`]),
/// and after the others each block of a group is paired on its own, drawing its random next
/// sentences from the rest of its group ([`PoolUnits`]).
#[allow(clippy::too_many_arguments)]
fn pair_files(
    input_files: &[PathBuf],
    cfg: &PairsConfig,
    lengths: &[Option<usize>],
    random_seed: u64,
    in_flight: usize,
    tokenize: &TokenizeFn<'_>,
    sink: &PairSinkFn<'_>,
    progress: &dyn Progress,
) -> Result<Vec<(Option<usize>, PairsSummary)>> {
    for &length in lengths {
        let (key, value) = match length {
            Some(l) => ("pretrain.phases max_seq_length", l),
            None => ("pairs.max_seq_length", cfg.max_seq_length),
        };
        if value < 5 {
            return Err(Error::Config(format!(
                "{key} = {value} leaves no room for [CLS] A [SEP] B [SEP]: use at least 8"
            )));
        }
    }
    let blocks = corpus::corpus_blocks(input_files)?;
    progress.start("pairs", blocks.iter().map(|b| b.len()).sum());
    // Each block's train pairs are built in a recycled buffer.
    let buffers = Recycler::default();
    // One block per thread at a time, `in_flight` at most (crate::workers explains why not
    // `par_iter`).
    let per_block = crate::workers::map_bounded(&blocks, in_flight, |index, block| {
        let (documents, input_bytes) = tokenize_block(block, tokenize)?;
        let outcome = if documents.len() < 2 {
            BlockOutcome::Pooled(PooledBlock {
                index,
                documents: documents.len(),
                input_bytes,
            })
        } else {
            let unit = PairingUnit {
                path: &block.path,
                paths: vec![&block.path],
                index,
                documents,
                sources: Vec::new(),
                files: usize::from(block.block_index == 0),
                input_bytes,
            };
            BlockOutcome::Paired(pair_unit(unit, cfg, lengths, random_seed, sink, &buffers)?)
        };
        crate::allocator::release_every(block.len() as usize, RELEASE_EVERY_BYTES);
        progress.advance(block.len());
        Ok(outcome)
    })?;
    let mut summaries = Vec::new();
    let (mut pooled, mut paired) = (Vec::new(), Vec::new());
    for (index, outcome) in per_block.into_iter().enumerate() {
        match outcome {
            BlockOutcome::Paired(s) => {
                summaries.push(s);
                paired.push(index);
            }
            BlockOutcome::Pooled(p) => pooled.push(p),
        }
    }
    let groups = pool_one_document_blocks(&blocks, pooled, &paired, corpus::BLOCK_BYTES)?;
    summaries.extend(crate::workers::map_bounded(
        &groups,
        in_flight,
        |_, group| {
            let units = PoolUnits::read(&blocks, group, tokenize)?;
            let mut total = vec![PairsSummary::default(); lengths.len()];
            for member in 0..units.members.len() {
                let unit = units.unit(member);
                let summaries = pair_unit(unit, cfg, lengths, random_seed, sink, &buffers)?;
                for (total, summary) in total.iter_mut().zip(&summaries) {
                    total.add(summary);
                }
                // As the blocks before them hand back theirs (RELEASE_EVERY_BYTES): a group's
                // members come at the end. On 500 MB in 505 files (seven one-document blocks
                // in three groups), three interleaved runs each: 67-81 MB, two of the peaks in
                // the last second (the groups); with this release 73-78 MB, one of them.
                crate::allocator::release_free_memory();
            }
            Ok(total)
        },
    )?);
    progress.finish();
    Ok(lengths
        .iter()
        .enumerate()
        .map(|(i, &length)| {
            let mut summary = PairsSummary::default();
            for unit in &summaries {
                summary.add(&unit[i]);
            }
            (length, summary)
        })
        .collect())
}

/// Reads and tokenizes one block: its documents and its size in bytes of text.
fn tokenize_block(
    block: &corpus::CorpusBlock,
    tokenize: &TokenizeFn<'_>,
) -> Result<(Vec<Document>, u64)> {
    let text = block.read()?;
    let documents = tokenize_documents(&corpus::documents(&text), tokenize)?;
    Ok((documents, text.len() as u64))
}

/// What became of a block: paired (its counts per length), or left for the pool.
enum BlockOutcome {
    Paired(Vec<PairsSummary>),
    Pooled(PooledBlock),
}

/// Documents pairing draws from together: one block, or a group of pooled blocks.
struct PairingUnit<'a> {
    /// The (first) file, for logs.
    path: &'a Path,
    /// Every file it holds documents of, in input order.
    paths: Vec<&'a Path>,
    /// Index in shard names and random seeds: the (first) block's index.
    index: usize,
    documents: Vec<Document>,
    /// Documents of other blocks its random next sentences may also come from, never paired
    /// by this unit: the other members of its pool group, or the source block of a lone
    /// one-document block ([`PoolGroup::sources`]). Borrowed from the group ([`PoolUnits`]).
    sources: Vec<&'a Document>,
    /// Input files it starts (a file's first block counts it).
    files: usize,
    input_bytes: u64,
}

/// A block with fewer than two documents, waiting for the pool: only its counts are kept,
/// its text is read again when its group is paired.
struct PooledBlock {
    index: usize,
    documents: usize,
    input_bytes: u64,
}

/// A group of pooled blocks (block indices, in input order) whose documents its members
/// draw random next sentences from, and the block they may also come from, if any.
#[derive(Debug, PartialEq, Eq)]
struct PoolGroup {
    members: Vec<usize>,
    /// When the whole pool holds a single document, a paired block (the nearest one before
    /// the pool in input order, else after it) whose documents random next sentences come
    /// from: Google draws them from the whole corpus, and one document has no other.
    sources: Option<usize>,
}

/// Groups the pooled blocks in input order: a group closes once it holds `group_bytes` of
/// text and two documents; a last group of fewer than two documents joins the one before.
/// With no pooled block there is no group. A pool of one document in all is one group drawing
/// its random next sentences from the nearest of the `paired` blocks; with no paired block
/// either (the corpus is one document) it is an error naming its file.
fn pool_one_document_blocks(
    blocks: &[corpus::CorpusBlock],
    mut pooled: Vec<PooledBlock>,
    paired: &[usize],
    group_bytes: u64,
) -> Result<Vec<PoolGroup>> {
    pooled.sort_by_key(|b| b.index);
    let Some(first) = pooled.first() else {
        return Ok(Vec::new());
    };
    let total: usize = pooled.iter().map(|b| b.documents).sum();
    if total < 2 {
        let before = paired.iter().rev().find(|&&i| i < first.index);
        let Some(&nearest) = before.or_else(|| paired.iter().find(|&&i| i > first.index)) else {
            return Err(Error::data(
                &blocks[first.index].path,
                format!(
                    "only {total} document(s) in the corpus: next-sentence sampling needs at least 2; separate documents with a blank line"
                ),
            ));
        };
        tracing::info!(
            file = %blocks[first.index].path.display(),
            from = %blocks[nearest].path.display(),
            "a one-document file with no other to pool with: its random next sentences come from another file"
        );
        return Ok(vec![PoolGroup {
            members: pooled.iter().map(|b| b.index).collect(),
            sources: Some(nearest),
        }]);
    }
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let (mut current, mut bytes, mut documents) = (Vec::new(), 0, 0);
    for block in &pooled {
        current.push(block.index);
        bytes += block.input_bytes;
        documents += block.documents;
        if bytes >= group_bytes && documents >= 2 {
            groups.push(std::mem::take(&mut current));
            (bytes, documents) = (0, 0);
        }
    }
    if !current.is_empty() {
        match groups.last_mut() {
            Some(last) if documents < 2 => last.extend(current),
            _ => groups.push(current),
        }
    }
    if pooled.len() > 1 {
        tracing::info!(
            blocks = pooled.len(),
            documents = total,
            groups = groups.len(),
            "pooled the one-document files for next-sentence sampling"
        );
    }
    Ok(groups
        .into_iter()
        .map(|members| PoolGroup {
            members,
            sources: None,
        })
        .collect())
}

/// A group of pooled blocks, read and tokenized: each block is paired as a unit of its own
/// ([`PoolUnits::unit`]), its random next sentences drawn from the other blocks of the group
/// (or, for a lone block, from the group's source block), so no unit holds the pairs of more
/// than one block: paired as one unit, a group of two books of 1 MB held the pairs of both
/// (pairs on 500 MB as 512 files rose from 55-76 MB to 113-116 MB while it paired its
/// groups; 80-84 MB at most since).
struct PoolUnits<'a> {
    blocks: &'a [corpus::CorpusBlock],
    /// Each member's block index and documents, in input order.
    members: Vec<(usize, Vec<Document>, u64)>,
    /// The documents of the group's source block (a lone one-document block), if any.
    sources: Vec<Document>,
    source_path: Option<&'a Path>,
}

impl<'a> PoolUnits<'a> {
    fn read(
        blocks: &'a [corpus::CorpusBlock],
        group: &PoolGroup,
        tokenize: &TokenizeFn<'_>,
    ) -> Result<Self> {
        let mut members = Vec::with_capacity(group.members.len());
        for &index in &group.members {
            let (documents, input_bytes) = tokenize_block(&blocks[index], tokenize)?;
            members.push((index, documents, input_bytes));
        }
        let (mut sources, mut source_path) = (Vec::new(), None);
        if let Some(index) = group.sources {
            sources = tokenize_block(&blocks[index], tokenize)?.0;
            source_path = Some(blocks[index].path.as_path());
        }
        Ok(PoolUnits {
            blocks,
            members,
            sources,
            source_path,
        })
    }

    /// Member `member` as a pairing unit: a copy of its documents (they are shuffled), and
    /// every other member's (and the source block's) borrowed, to draw random next
    /// sentences from.
    fn unit(&self, member: usize) -> PairingUnit<'_> {
        let (index, ref documents, input_bytes) = self.members[member];
        let documents = documents.clone();
        let block = &self.blocks[index];
        let mut paths = vec![block.path.as_path()];
        let mut sources: Vec<&Document> = self.sources.iter().collect();
        for (other, (other_index, other_documents, _)) in self.members.iter().enumerate() {
            if other != member {
                sources.extend(other_documents.iter());
                let path = self.blocks[*other_index].path.as_path();
                if !paths.contains(&path) {
                    paths.push(path);
                }
            }
        }
        if let Some(path) = self.source_path.filter(|p| !paths.contains(p)) {
            paths.push(path);
        }
        PairingUnit {
            path: &block.path,
            paths,
            index,
            documents,
            sources,
            files: usize::from(block.block_index == 0),
            input_bytes,
        }
    }
}

/// Pairs one unit at every length and hands its shards to the sink; its counts per length.
/// The last length takes the unit's documents, the others a copy, so a run with one length
/// holds them once. The train pairs are built in buffers from `buffers`, handed back after.
fn pair_unit(
    mut unit: PairingUnit<'_>,
    cfg: &PairsConfig,
    lengths: &[Option<usize>],
    random_seed: u64,
    sink: &PairSinkFn<'_>,
    buffers: &Recycler<PairColumns>,
) -> Result<Vec<PairsSummary>> {
    let mut summaries = Vec::with_capacity(lengths.len());
    for (i, &length) in lengths.iter().enumerate() {
        let cfg = PairsConfig {
            max_seq_length: length.unwrap_or(cfg.max_seq_length),
            ..cfg.clone()
        };
        let documents = if i + 1 == lengths.len() {
            std::mem::take(&mut unit.documents)
        } else {
            unit.documents.clone()
        };
        let (train, eval, mut summary) = pair_documents(
            documents,
            &unit.sources,
            unit.index,
            &cfg,
            random_seed,
            buffers,
        );
        summary.files = unit.files;
        summary.input_bytes = unit.input_bytes;
        log_paired(unit.path, &summary);
        for (split, rows) in [(Split::Train, &train), (Split::Eval, &eval)] {
            emit_shards(
                length,
                split,
                unit.index,
                rows,
                &unit.paths,
                cfg.shard_rows,
                sink,
            )?;
        }
        buffers.give_back(train.pairs);
        summaries.push(summary);
    }
    Ok(summaries)
}

/// Artifact kind of the `pairs` stage's shards of `split`.
pub fn pairs_kind(split: Split) -> &'static str {
    match split {
        Split::Train => "pairs-train",
        Split::Eval => "pairs-eval",
    }
}

/// The `pairs` stage: corpus text + vocabulary -> `<run>/pairs/{train,eval}-FFFFF-SSSS.arrow`,
/// or `<run>/pairs/seq{L}-{train,eval}-FFFFF-SSSS.arrow` for every phase length `L` when
/// `[[pretrain.phases]]` is set.
pub fn run(ctx: &StageCtx, progress: &dyn Progress) -> Result<Outcome> {
    let cfg = ctx.config();
    let files = corpus_files(&ctx.loaded)?;
    let mut run = match ctx.begin(Stage::Pairs)? {
        Begin::Skip(record) => return Ok(Outcome::Skipped(record)),
        Begin::Run(run) => run,
    };
    let (wordpiece, _) = load_stage_vocab(ctx)?;
    let tokenizer = AsciiWordPiece::new(&wordpiece);
    let length_count = if cfg.has_phases() {
        cfg.instance_shapes().len()
    } else {
        1
    };
    let in_flight = crate::workers::items_in_flight(
        cfg.run.data_memory_mb,
        block_memory(cfg.pairs.dupe_factor, length_count),
    );
    let started = Instant::now();
    let written = Mutex::new(Vec::new());
    let tokenize = |lines: &[&str]| tokenizer.encode_lines(lines);
    let sink = |shard: PairShard<'_>| {
        let rel = shard.id.file_name();
        let info = write_pair_columns(&run.dir().join(&rel), shard.pairs, shard.rows)?;
        let sources: Vec<String> = shard
            .files
            .iter()
            .map(|f| crate::stage::input_id(&ctx.loaded, f))
            .collect();
        let mut written = written.lock().expect("shard list lock");
        written.push((rel, shard.id, info, sources));
        Ok(())
    };
    let (summary, by_length) = if cfg.has_phases() {
        let lengths: Vec<usize> = cfg
            .instance_shapes()
            .iter()
            .map(|s| s.max_seq_length)
            .collect();
        let by_length = create_training_pairs_at_lengths(
            &files,
            &cfg.pairs,
            &lengths,
            cfg.run.random_seed,
            in_flight,
            &tokenize,
            &sink,
            progress,
        )?;
        // Documents, bytes and tokens are the same at every length; pairs add up.
        let mut summary = by_length[0].1.clone();
        summary.train_pairs = by_length.iter().map(|(_, s)| s.train_pairs).sum();
        summary.eval_pairs = by_length.iter().map(|(_, s)| s.eval_pairs).sum();
        (summary, by_length)
    } else {
        let summary = create_training_pairs(
            &files,
            &cfg.pairs,
            cfg.run.random_seed,
            in_flight,
            &tokenize,
            &sink,
            progress,
        )?;
        (summary, Vec::new())
    };
    let mut written = written.into_inner().expect("shard list lock");
    written.sort_by(|a, b| a.0.cmp(&b.0));
    for (rel, id, info, sources) in written {
        run.add_shard(&rel, pairs_kind(id.split), &id, &info, sources)?;
    }
    let seconds = started.elapsed().as_secs_f64();
    if cfg.pairs.eval_fraction > 0.0 && summary.eval_documents == 0 {
        tracing::warn!("no input file has enough documents to hold out an eval split");
    }
    let mut metrics = serde_json::to_value(&summary).expect("summary serialises");
    metrics["seconds"] = json!(seconds);
    metrics["pairs_per_s"] = json!((summary.train_pairs + summary.eval_pairs) as f64 / seconds);
    metrics["input_mb_per_s"] = json!(summary.input_bytes as f64 / 1e6 / seconds);
    if !by_length.is_empty() {
        metrics["by_length"] = by_length
            .iter()
            .map(|(length, s)| {
                (
                    length_key(*length),
                    json!({ "train_pairs": s.train_pairs, "eval_pairs": s.eval_pairs }),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into();
    }
    Ok(Outcome::Ran(run.finish(ctx, metrics)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(a: &[u32], b: &[u32]) -> (Vec<u32>, Vec<u32>) {
        (a.to_vec(), b.to_vec())
    }

    /// One-document blocks are pooled in input order into groups of at least the group size
    /// and two documents; a last group short of two documents joins the one before. A pool
    /// of one document in all draws from the nearest paired block (before it, else after);
    /// with no paired block it is refused with its file.
    #[test]
    fn one_document_blocks_pool_in_bounded_groups() {
        let blocks: Vec<corpus::CorpusBlock> = (0..7)
            .map(|i| corpus::CorpusBlock {
                path: PathBuf::from(format!("f{i}.txt")),
                file_index: i,
                block_index: 0,
                bytes: 0..10,
            })
            .collect();
        let pooled = |spec: &[(usize, usize)]| {
            spec.iter()
                .map(|&(index, documents)| PooledBlock {
                    index,
                    documents,
                    input_bytes: 10,
                })
                .collect::<Vec<_>>()
        };
        let groups = |spec: &[(usize, usize)], paired: &[usize], bytes: u64| {
            pool_one_document_blocks(&blocks, pooled(spec), paired, bytes).unwrap()
        };
        let members = |groups: Vec<PoolGroup>| -> Vec<Vec<usize>> {
            groups
                .into_iter()
                .map(|g| {
                    assert_eq!(g.sources, None);
                    g.members
                })
                .collect()
        };
        // Out of order (threads finish in any order); 20 bytes close a group of 2 documents.
        assert_eq!(
            members(groups(
                &[(5, 1), (1, 1), (2, 1), (6, 1), (4, 1)],
                &[0, 3],
                20
            )),
            vec![vec![1, 2], vec![4, 5, 6]]
        );
        // A block with no documents does not close a group on its bytes alone.
        assert_eq!(
            members(groups(&[(0, 0), (1, 0), (2, 1), (3, 1)], &[4], 20)),
            vec![vec![0, 1, 2, 3]]
        );
        // Everything in one group when the group size is larger than the pool.
        assert_eq!(
            members(groups(&[(3, 1), (0, 1)], &[1], 1 << 20)),
            vec![vec![0, 3]]
        );
        assert!(groups(&[], &[0], 20).is_empty());
        // One document in the whole pool: the nearest paired block before it, else after.
        let lone = |spec: &[(usize, usize)], paired: &[usize]| groups(spec, paired, 20);
        assert_eq!(
            lone(&[(4, 1)], &[0, 3, 6]),
            vec![PoolGroup {
                members: vec![4],
                sources: Some(3)
            }]
        );
        assert_eq!(lone(&[(0, 1), (2, 0)], &[1, 5])[0].sources, Some(1));
        let err = pool_one_document_blocks(&blocks, pooled(&[(2, 1), (3, 0)]), &[], 20)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("f2.txt") && err.contains("only 1 document(s) in the corpus"),
            "{err}"
        );
    }

    #[test]
    fn truncate_keeps_the_shorter_side_until_equal() {
        let (mut a, mut b) = pair(&[1, 2, 3, 4, 5, 6, 7, 8], &[9, 10]);
        let mut rng = seeded_rng(1, "test", &[]);
        truncate_pair_random_ends(&mut a, &mut b, 6, &mut rng);
        assert_eq!((a.len(), b.len()), (4, 2));
        assert_eq!(b, vec![9, 10]);
        // What is left of A is a contiguous window of the original.
        assert!(a.windows(2).all(|w| w[1] == w[0] + 1), "{a:?}");
    }

    #[test]
    fn eval_count_needs_two_documents_on_each_side() {
        assert_eq!(eval_document_count(100, 0.02), 2);
        assert_eq!(eval_document_count(10, 0.02), 0);
        assert_eq!(eval_document_count(3, 0.5), 0);
        assert_eq!(eval_document_count(400, 0.0), 0);
    }

    #[test]
    fn seeds_differ_by_label_and_index() {
        let draw = |label, idx: &[u64]| seeded_rng(7, label, idx).gen::<u64>();
        assert_eq!(draw("pairs", &[0, 1]), draw("pairs", &[0, 1]));
        assert_ne!(draw("pairs", &[0, 1]), draw("pairs", &[1, 0]));
        assert_ne!(draw("pairs", &[0]), draw("mask", &[0]));
    }
}
