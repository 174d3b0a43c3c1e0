//! The pre-training loop on real Arrow shards: the stream, a falling loss, exact resume,
//! checkpoints, and one-line errors on bad input; two phases (seq 16 then 24) with one
//! optimizer and schedule, resumed exactly across and after the phase boundary.

mod pretrain_common;

use std::collections::BTreeMap;

use bertline::model::export::MODEL_FILE;
use bertline::pretrain::{
    list_checkpoints, read_checked_shard, train, InstanceStream, ShardExpect, TrainSummary,
    METRICS_FILE, STATE_FILE,
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
        err.contains("train-00000.arrow") && err.contains("max_seq_length = 32"),
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
        err.contains("train-00000.arrow") && err.contains("vocab_size = 20"),
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

/// Final model bytes of a job's newest checkpoint.
fn final_model(job: &bertline::pretrain::PretrainJob) -> Vec<u8> {
    let dir = list_checkpoints(&job.work_dir).unwrap().pop().unwrap();
    std::fs::read(dir.join(MODEL_FILE)).unwrap()
}

/// Trains `job` to `stop_at`, then resumes it to the end; returns the resumed summary.
fn train_killed_at(job: &mut bertline::pretrain::PretrainJob, stop_at: usize) -> TrainSummary {
    job.stop_at = Some(stop_at);
    let first = train(job, &Cpu::default(), &NoProgress).unwrap();
    assert!(!first.finished);
    assert_eq!(first.step, stop_at);
    job.stop_at = None;
    let resumed = train(job, &Cpu::default(), &NoProgress).unwrap();
    assert_eq!(resumed.resumed_from, stop_at);
    assert!(resumed.finished);
    resumed
}

#[test]
fn two_phases_resume_bit_for_bit_across_and_inside_the_second_phase() {
    let dir = tempfile::tempdir().unwrap();
    // 6 steps at length 16 (batch 8), then 4 at length 24 (batch 4).
    let straight = two_phase_job(
        &dir.path().join("data"),
        &dir.path().join("straight"),
        (6, 4),
    );
    let a = train(&straight, &Cpu::default(), &NoProgress).unwrap();
    assert!(a.finished);
    assert_eq!(a.step, 10);
    let rows_a = metrics_rows_without_timing(&a.metrics);

    // Every train row names its phase and length; phase 1 ends with a logged, evaluated step 6.
    let phase_of = |step: u64| if step <= 6 { (1, 16) } else { (2, 24) };
    let train_rows: Vec<&serde_json::Value> =
        rows_a.iter().filter(|r| r["split"] == "train").collect();
    assert_eq!(train_rows.len(), 10);
    for r in &train_rows {
        let (phase, seq_len) = phase_of(r["step"].as_u64().unwrap());
        assert_eq!(
            (r["phase"].as_u64(), r["seq_len"].as_u64()),
            (Some(phase), Some(seq_len))
        );
    }
    let evals: Vec<(u64, u64)> = rows_a
        .iter()
        .filter(|r| r["split"] == "eval")
        .map(|r| (r["step"].as_u64().unwrap(), r["phase"].as_u64().unwrap()))
        .collect();
    // eval_every_steps = 4, plus the end of each phase, each on its own phase's eval split.
    assert_eq!(evals, vec![(4, 1), (6, 1), (8, 2), (10, 2)]);

    // Tokens seen count each phase's batch x length: 6 x 8 x 16, then 4 x 4 x 24.
    assert_eq!(train_rows[9]["tokens_seen"], 6 * 8 * 16 + 4 * 4 * 24);

    // One learning-rate schedule over all 10 steps: warmup 2, then linear decay to 0 at 10.
    let lr = |step: u64| {
        train_rows[step as usize - 1]["learning_rate"]
            .as_f64()
            .unwrap()
    };
    let peak = straight.config.learning_rate;
    for step in 3..=10u64 {
        let expected = peak * (10 - (step - 1)) as f64 / 8.0;
        assert!((lr(step) - expected).abs() < 1e-12, "lr of step {step}");
    }

    // The optimizer moments carry over: the final AdamW state counts all 10 steps.
    let last = list_checkpoints(&straight.work_dir).unwrap().pop().unwrap();
    let (trainer, state) = bertline::pretrain::load_checkpoint(
        &last,
        &straight.model_config,
        &straight.config,
        &Cpu::default(),
    )
    .unwrap();
    assert_eq!(
        (trainer.optimizer.step, state.step, state.phase),
        (10, 10, 2)
    );
    assert_eq!(a.phases.len(), 2);
    assert_eq!((a.phases[0].seq_len, a.phases[0].end_step), (16, 6));
    assert_eq!((a.phases[1].seq_len, a.phases[1].end_step), (24, 10));
    assert!(a
        .phases
        .iter()
        .all(|p| p.train_loss.is_some() && p.eval_loss.is_some()));

    // Killed in phase 1 (resume crosses into phase 2), at the boundary, inside phase 2.
    for stop_at in [3, 6, 8] {
        let work = dir.path().join(format!("killed-{stop_at}"));
        let mut job = two_phase_job(&dir.path().join("data"), &work, (6, 4));
        let b = train_killed_at(&mut job, stop_at);
        assert_eq!(
            metrics_rows_without_timing(&b.metrics),
            rows_a,
            "metrics differ when killed at step {stop_at}"
        );
        assert!(
            final_model(&job) == final_model(&straight),
            "weights differ (killed at {stop_at})"
        );
    }
}

#[test]
fn a_phase_fed_shards_of_another_length_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut job = two_phase_job(&dir.path().join("data"), &dir.path().join("work"), (2, 2));
    // Phase 2 (length 24) given the length-16 shards of phase 1.
    job.phases[1].train_shards = job.phases[0].train_shards.clone();
    let err = train(&job, &Cpu::default(), &NoProgress)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("seq16-train-") && err.contains("max_seq_length = 24"),
        "{err}"
    );
    assert!(!err.contains('\n'));

    // Phases that do not add up to num_train_steps are refused before training.
    let mut job = two_phase_job(&dir.path().join("data"), &dir.path().join("work2"), (2, 2));
    job.phases[1].plan.num_train_steps = 3;
    let err = train(&job, &Cpu::default(), &NoProgress)
        .unwrap_err()
        .to_string();
    assert!(err.contains("num_train_steps = 4"), "{err}");
    assert!(list_checkpoints(&job.work_dir).unwrap().is_empty());
}
