//! Shared fixtures for the pre-training tests: Arrow shards of synthetic instances with a
//! learnable structure (repeated words), a tiny model and a job.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use bertline::config::{PhasePlan, PretrainConfig, PretrainPhase};
use bertline::pretrain::{JobPhase, PretrainJob};
use bertline::shard::{write_instances, TrainingInstance};
use bertline::BertConfig;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub const SEQ_LEN: usize = 16;
/// The second phase's sequence length in the two-phase jobs.
pub const LONG_SEQ_LEN: usize = 24;
pub const MAX_PREDICTIONS: usize = 3;
pub const VOCAB: usize = 40;
const CLS: u32 = 2;
const SEP: u32 = 3;
const MASK: u32 = 4;

pub fn tiny_config() -> BertConfig {
    BertConfig {
        vocab_size: VOCAB,
        hidden_size: 16,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        intermediate_size: 32,
        max_position_embeddings: SEQ_LEN,
        ..BertConfig::default()
    }
}

pub fn pretrain_config(steps: usize) -> PretrainConfig {
    toml::from_str(&format!(
        "train_batch_size = 8\ngradient_accumulation_steps = 2\nlearning_rate = 5e-3\n\
         num_train_steps = {steps}\nnum_warmup_steps = 2\nlog_every_steps = 1\n\
         eval_every_steps = 4\neval_batches = 2\nsave_checkpoints_steps = 4\n\
         keep_checkpoints = 2\nshuffle_buffer = 20"
    ))
    .unwrap()
}

/// `[CLS] A [SEP] B [SEP]`: A repeats one random word; B repeats the same word (label 0) or
/// another (label 1); one to three positions masked as BERT does. Both tasks are learnable
/// by attention in a few hundred steps.
fn repeat_instance(seq_len: usize, rng: &mut ChaCha8Rng) -> TrainingInstance {
    let words = (VOCAB - 5) as u32;
    let len_a = rng.gen_range(3..7);
    let len_b = rng.gen_range(3..=(seq_len - 3 - len_a).min(seq_len * 3 / 8));
    let word_a = 5 + rng.gen_range(0..words);
    let random_next = rng.gen_bool(0.5);
    let word_b = if random_next {
        5 + (word_a - 5 + rng.gen_range(1..words)) % words
    } else {
        word_a
    };
    let mut tokens = vec![CLS];
    tokens.extend(std::iter::repeat_n(word_a, len_a));
    tokens.push(SEP);
    tokens.extend(std::iter::repeat_n(word_b, len_b));
    tokens.push(SEP);
    let mut segment_ids = vec![0u8; len_a + 2];
    segment_ids.resize(tokens.len(), 1);
    let mut positions: Vec<u32> = (1..tokens.len() as u32 - 1)
        .filter(|&p| tokens[p as usize] != SEP)
        .collect();
    use rand::seq::SliceRandom;
    positions.shuffle(rng);
    positions.truncate(rng.gen_range(1..=MAX_PREDICTIONS));
    positions.sort_unstable();
    let labels: Vec<u32> = positions.iter().map(|&p| tokens[p as usize]).collect();
    for &p in &positions {
        tokens[p as usize] = MASK;
    }
    TrainingInstance {
        tokens,
        segment_ids,
        masked_lm_positions: positions,
        masked_lm_labels: labels,
        is_random_next: random_next,
    }
}

/// Writes `shards` Arrow shards of `rows` instances under `dir`.
pub fn write_shards(dir: &Path, name: &str, shards: usize, rows: usize, seed: u64) -> Vec<PathBuf> {
    write_shards_at(dir, name, shards, rows, seed, SEQ_LEN)
}

/// [`write_shards`] with rows of `seq_len` tokens.
pub fn write_shards_at(
    dir: &Path,
    name: &str,
    shards: usize,
    rows: usize,
    seed: u64,
    seq_len: usize,
) -> Vec<PathBuf> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..shards)
        .map(|i| {
            let path = dir.join(format!("{name}-{i:05}.arrow"));
            let instances: Vec<TrainingInstance> = (0..rows)
                .map(|_| repeat_instance(seq_len, &mut rng))
                .collect();
            write_instances(&path, &instances, seq_len, MAX_PREDICTIONS).unwrap();
            path
        })
        .collect()
}

/// A job training the tiny model on `train` for `steps` steps, checkpointing into `work`.
pub fn job(work: &Path, train: Vec<PathBuf>, eval: &[PathBuf], steps: usize) -> PretrainJob {
    let config = pretrain_config(steps);
    let expect = bertline::pretrain::ShardExpect {
        seq_len: SEQ_LEN,
        vocab_size: VOCAB,
    };
    let eval_batches = bertline::pretrain::read_eval_batches(
        eval,
        config.train_batch_size,
        config.eval_batches,
        expect,
    )
    .unwrap();
    let plan = PhasePlan {
        phase: 1,
        max_seq_length: SEQ_LEN,
        max_predictions_per_seq: MAX_PREDICTIONS,
        train_batch_size: config.train_batch_size,
        num_train_steps: steps,
        first_step: 0,
    };
    PretrainJob {
        model_config: tiny_config(),
        config,
        phases: vec![JobPhase {
            plan,
            train_shards: train,
            eval_batches,
        }],
        heldout_batches: Vec::new(),
        work_dir: work.to_path_buf(),
        vocab_files: Vec::new(),
        seed: 7,
        stop_at: None,
    }
}

/// The `split == "train"` rows of a metrics file, as (step, loss bits).
pub fn train_losses(path: &Path) -> Vec<(u64, u64)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["split"] == "train")
        .map(|r| {
            (
                r["step"].as_u64().unwrap(),
                r["loss"].as_f64().unwrap().to_bits(),
            )
        })
        .collect()
}

/// A two-phase job: `steps.0` steps at [`SEQ_LEN`] (batch 8), then `steps.1` at
/// [`LONG_SEQ_LEN`] (batch 4), on shards written under `dir`, checkpointing into `work`.
pub fn two_phase_job(dir: &Path, work: &Path, steps: (usize, usize)) -> PretrainJob {
    let short = write_shards_at(dir, "seq16-train", 3, 12, 4, SEQ_LEN);
    let short_eval = write_shards_at(dir, "seq16-eval", 1, 16, 5, SEQ_LEN);
    let long = write_shards_at(dir, "seq24-train", 2, 10, 6, LONG_SEQ_LEN);
    let long_eval = write_shards_at(dir, "seq24-eval", 1, 8, 7, LONG_SEQ_LEN);
    let mut config = pretrain_config(steps.0 + steps.1);
    config.phases = vec![
        PretrainPhase {
            max_seq_length: SEQ_LEN,
            num_train_steps: steps.0,
            max_predictions_per_seq: None,
            train_batch_size: None,
        },
        PretrainPhase {
            max_seq_length: LONG_SEQ_LEN,
            num_train_steps: steps.1,
            max_predictions_per_seq: None,
            train_batch_size: Some(4),
        },
    ];
    let mut job = job(work, short, &short_eval, steps.0);
    job.config = config;
    job.model_config.max_position_embeddings = LONG_SEQ_LEN;
    let expect = bertline::pretrain::ShardExpect {
        seq_len: LONG_SEQ_LEN,
        vocab_size: VOCAB,
    };
    let eval_batches =
        bertline::pretrain::read_eval_batches(&long_eval, 4, job.config.eval_batches, expect)
            .unwrap();
    job.phases.push(JobPhase {
        plan: PhasePlan {
            phase: 2,
            max_seq_length: LONG_SEQ_LEN,
            max_predictions_per_seq: MAX_PREDICTIONS,
            train_batch_size: 4,
            num_train_steps: steps.1,
            first_step: steps.0,
        },
        train_shards: long,
        eval_batches,
    });
    job
}

/// Every row of a metrics file without its timing fields (which differ between runs).
pub fn metrics_rows_without_timing(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("tokens_per_s");
            v.as_object_mut().unwrap().remove("elapsed_s");
            v
        })
        .collect()
}
