//! The pre-training loop on real Parquet shards: the stream, a falling loss, exact resume,
//! checkpoints, and one-line errors on bad input.

mod pretrain_common;

use std::collections::BTreeMap;

use bertline::model::export::MODEL_FILE;
use bertline::pretrain::{
    list_checkpoints, read_checked_shard, train, InstanceStream, ShardExpect, METRICS_FILE,
    STATE_FILE,
};
use bertline::progress::NoProgress;
use dfdx::tensor::Cpu;
use pretrain_common::*;

fn expect() -> ShardExpect {
    ShardExpect {
        seq_len: SEQ_LEN,
        vocab_size: VOCAB,
    }
}

#[test]
fn stream_draws_every_row_once_per_epoch_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let shards = write_shards(dir.path(), "train", 3, 10, 1);
    let mut stream = InstanceStream::new(shards.clone(), 7, 99, expect()).unwrap();
    // One epoch = 30 rows: each (shard, row) exactly once; the row's first token is [CLS].
    let mut seen = BTreeMap::new();
    for _ in 0..30 {
        let b = stream.next_batch(1).unwrap();
        *seen.entry(b.input_ids.clone()).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 30, "30 distinct rows in one epoch");
    assert!(seen.values().all(|&n| n == 1));

    // Save mid-epoch, draw on; a stream resumed from the state draws the same rows.
    let _ = stream.next_batch(5).unwrap();
    let state = stream.state();
    let json = serde_json::to_string(&state).unwrap();
    let after: Vec<_> = (0..20).map(|_| stream.next_batch(2).unwrap()).collect();
    let mut resumed =
        InstanceStream::resume(shards, 7, serde_json::from_str(&json).unwrap(), expect()).unwrap();
    let again: Vec<_> = (0..20).map(|_| resumed.next_batch(2).unwrap()).collect();
    assert_eq!(after, again);
}

#[test]
fn loss_falls_on_a_learnable_task() {
    let dir = tempfile::tempdir().unwrap();
    let train_shards = write_shards(dir.path(), "train", 2, 200, 2);
    let eval_shards = write_shards(dir.path(), "eval", 1, 16, 3);
    let mut job = job(&dir.path().join("work"), train_shards, &eval_shards, 300);
    job.config.learning_rate = 1e-2;
    job.config.num_warmup_steps = 20;
    job.config.save_checkpoints_steps = 0;
    job.config.eval_every_steps = 0;
    let summary = train(&job, &Cpu::default(), &NoProgress).unwrap();
    assert!(summary.finished);
    assert_eq!(summary.step, 300);
    let losses: Vec<f64> = train_losses(&summary.metrics)
        .iter()
        .map(|&(_, bits)| f64::from_bits(bits))
        .collect();
    assert_eq!(losses.len(), 300);
    let first: f64 = losses[..5].iter().sum::<f64>() / 5.0;
    let last: f64 = losses[290..].iter().sum::<f64>() / 10.0;
    // Initial loss ~ ln(40) + ln(2) = 4.38; counting is learnable well below that.
    assert!(first > 4.0, "first losses {first}");
    assert!(last < first - 0.7, "loss did not fall: {first} -> {last}");
    let eval = summary.eval.expect("final evaluation");
    assert!(eval.loss < first, "eval loss {}", eval.loss);
    // The end of training writes a checkpoint with the HF model and the state.
    let last_ckpt = list_checkpoints(&job.work_dir).unwrap().pop().unwrap();
    assert!(last_ckpt.join(MODEL_FILE).exists() && last_ckpt.join(STATE_FILE).exists());
}

#[test]
fn training_2n_steps_equals_n_then_resume_n_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let train_shards = write_shards(dir.path(), "train", 3, 12, 4);
    let eval_shards = write_shards(dir.path(), "eval", 1, 16, 5);

    let straight = job(
        &dir.path().join("straight"),
        train_shards.clone(),
        &eval_shards,
        8,
    );
    let a = train(&straight, &Cpu::default(), &NoProgress).unwrap();

    let mut interrupted = job(&dir.path().join("resumed"), train_shards, &eval_shards, 8);
    interrupted.stop_at = Some(4);
    let first = train(&interrupted, &Cpu::default(), &NoProgress).unwrap();
    assert!(!first.finished);
    assert_eq!(first.step, 4);
    interrupted.stop_at = None;
    let b = train(&interrupted, &Cpu::default(), &NoProgress).unwrap();
    assert_eq!(b.resumed_from, 4);
    assert!(b.finished);

    let losses_a = train_losses(&a.metrics);
    let losses_b = train_losses(&b.metrics);
    assert_eq!(losses_a.len(), 8);
    assert_eq!(losses_a, losses_b, "per-step losses differ after resume");
    let model = |j: &bertline::pretrain::PretrainJob| {
        std::fs::read(
            list_checkpoints(&j.work_dir)
                .unwrap()
                .pop()
                .unwrap()
                .join(MODEL_FILE),
        )
        .unwrap()
    };
    assert!(
        model(&straight) == model(&interrupted),
        "final weights differ"
    );
    // Eval rows too (steps 4 and 8), and nothing duplicated by the resume.
    let rows = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
    let strip_timing = |text: String| -> Vec<serde_json::Value> {
        text.lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                v.as_object_mut().unwrap().remove("tokens_per_s");
                v.as_object_mut().unwrap().remove("elapsed_s");
                v
            })
            .collect()
    };
    assert_eq!(
        strip_timing(rows(&a.metrics)),
        strip_timing(rows(&b.metrics))
    );
    assert!(a.metrics.ends_with(METRICS_FILE));
    // Only keep_checkpoints = 2 remain.
    assert_eq!(list_checkpoints(&interrupted.work_dir).unwrap().len(), 2);
}

#[test]
fn shards_for_another_sequence_length_or_vocabulary_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let shard = write_shards(dir.path(), "train", 1, 4, 6).remove(0);
    let err = read_checked_shard(
        &shard,
        ShardExpect {
            seq_len: 32,
            vocab_size: VOCAB,
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("train-00000.parquet") && err.contains("max_seq_length = 32"),
        "{err}"
    );
    assert!(!err.contains('\n'));
    let err = read_checked_shard(
        &shard,
        ShardExpect {
            seq_len: SEQ_LEN,
            vocab_size: 20,
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("train-00000.parquet") && err.contains("vocab_size = 20"),
        "{err}"
    );

    // The training loop reports the same before writing anything.
    let work = dir.path().join("work");
    let mut bad = job(&work, vec![shard], &[], 4);
    bad.model_config.vocab_size = 20;
    let err = train(&bad, &Cpu::default(), &NoProgress)
        .unwrap_err()
        .to_string();
    assert!(err.contains("vocab_size = 20"), "{err}");
    assert!(list_checkpoints(&work).unwrap().is_empty());
}

#[test]
fn a_corrupt_checkpoint_is_reported_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let train_shards = write_shards(dir.path(), "train", 2, 12, 8);
    let mut j = job(&dir.path().join("work"), train_shards, &[], 8);
    j.stop_at = Some(4);
    train(&j, &Cpu::default(), &NoProgress).unwrap();
    let ckpt = list_checkpoints(&j.work_dir).unwrap().pop().unwrap();
    std::fs::write(ckpt.join(STATE_FILE), b"{ not json").unwrap();
    j.stop_at = None;
    let err = train(&j, &Cpu::default(), &NoProgress)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("state.json") && err.contains("corrupt"),
        "{err}"
    );
    assert!(!err.contains('\n'));
    assert_eq!(std::fs::read(ckpt.join(STATE_FILE)).unwrap(), b"{ not json");

    // A truncated model file is named too.
    std::fs::remove_dir_all(&j.work_dir).unwrap();
    j.stop_at = Some(4);
    train(&j, &Cpu::default(), &NoProgress).unwrap();
    let ckpt = list_checkpoints(&j.work_dir).unwrap().pop().unwrap();
    let model = ckpt.join(MODEL_FILE);
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    j.stop_at = None;
    let err = train(&j, &Cpu::default(), &NoProgress)
        .unwrap_err()
        .to_string();
    assert!(err.contains("model.safetensors"), "{err}");
}
