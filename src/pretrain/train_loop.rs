//! The loop: a [`PretrainJob`]'s phases one after the other, with evaluation,
//! checkpoints and logging, resuming from the newest checkpoint.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::{
    list_checkpoints, load_checkpoint, save_checkpoint, tokens_seen, InstanceStream, LogSplit,
    MetricsLog, PretrainLogRow, ShardExpect, StatsWindow, StepStats, Trainer, METRICS_FILE,
    STATE_FILE,
};
use crate::config::{BertConfig, PhasePlan, PretrainConfig};
use crate::error::{Error, IoContext, Result};
use crate::model::{BertDevice, MaskedLmBatch};
use crate::optim::{lr_at, total_train_steps};
use crate::progress::Progress;

/// One phase of a [`PretrainJob`]: its plan (length, batch size, steps) and its data.
#[derive(Debug, Clone)]
pub struct JobPhase {
    /// Sequence length, batch size, steps and first step of the phase.
    pub plan: PhasePlan,
    /// Training shards of the phase's sequence length (the mask stage's train split).
    pub train_shards: Vec<PathBuf>,
    /// Evaluation batches at the phase's length (the mask stage's eval split), fixed.
    pub eval_batches: Vec<MaskedLmBatch>,
}

/// Everything [`train`] needs, resolved from the stage context (or built by a test).
#[derive(Debug, Clone)]
pub struct PretrainJob {
    pub model_config: BertConfig,
    pub config: PretrainConfig,
    /// The phases in order; their steps add up to `config`'s total (one phase without
    /// `[[pretrain.phases]]`).
    pub phases: Vec<JobPhase>,
    /// Held-out MLM batches (WikiText-2), for the final perplexity; may be empty.
    pub heldout_batches: Vec<MaskedLmBatch>,
    /// Checkpoints and the metrics file live here (survives a killed run).
    pub work_dir: PathBuf,
    /// Copied into every checkpoint (vocab.txt, tokenizer.json).
    pub vocab_files: Vec<PathBuf>,
    /// Seeds the weights, dropout and the data order.
    pub seed: u64,
    /// Stop once this step is reached and checkpointed, as if interrupted (tests, `--stop-at`).
    pub stop_at: Option<usize>,
}

/// What [`train`] ended with.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// Steps taken in total.
    pub step: usize,
    /// The step this process started from (0, or the checkpoint it resumed).
    pub resumed_from: usize,
    /// True when the run reached `num_train_steps`.
    pub finished: bool,
    /// The last checkpoint written.
    pub checkpoint: Option<PathBuf>,
    /// Final evaluation on the eval split.
    pub eval: Option<StepStats>,
    /// Final held-out MLM statistics (perplexity = exp(mlm_loss)).
    pub heldout: Option<StepStats>,
    /// Mean training stats over the last log window.
    pub last_train: Option<StepStats>,
    /// Training tokens per second in this process.
    pub tokens_per_s: f64,
    /// The metrics file.
    pub metrics: PathBuf,
    /// Each phase's last logged training and evaluation numbers.
    pub phases: Vec<PhaseSummary>,
}

/// How one phase ended, from the metrics file (so it covers steps of earlier processes of a
/// resumed run).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PhaseSummary {
    /// 1-based phase number.
    pub phase: usize,
    /// The phase's sequence length.
    pub seq_len: usize,
    /// Optimizer steps of the phase.
    pub steps: usize,
    /// The step count the phase ends at.
    pub end_step: usize,
    /// Training loss of the phase's last log row.
    pub train_loss: Option<f64>,
    /// Masked-LM accuracy of that row.
    pub train_mlm_accuracy: Option<f64>,
    /// Loss of the phase's last evaluation (at its end).
    pub eval_loss: Option<f64>,
    /// Masked-LM accuracy of that evaluation.
    pub eval_mlm_accuracy: Option<f64>,
    /// Seconds of training steps of this phase in this process (data and update, no
    /// evaluation or checkpoints).
    pub seconds: f64,
}

/// Per-phase summaries from the metrics file at `path`: each phase's last train and eval
/// rows (rows without a `phase` field count as phase 1).
pub fn phase_summaries(path: &Path, phases: &[PhasePlan]) -> Result<Vec<PhaseSummary>> {
    let text = std::fs::read_to_string(path).at(path)?;
    let mut out: Vec<PhaseSummary> = phases
        .iter()
        .map(|p| PhaseSummary {
            phase: p.phase,
            seq_len: p.max_seq_length,
            steps: p.num_train_steps,
            end_step: p.end_step(),
            ..Default::default()
        })
        .collect();
    for row in text.lines().filter_map(PretrainLogRow::parse) {
        let Some(summary) = out.iter_mut().find(|s| s.phase == row.phase) else {
            continue;
        };
        match row.split {
            LogSplit::Train => {
                summary.train_loss = row.loss;
                summary.train_mlm_accuracy = row.mlm_accuracy;
            }
            LogSplit::Eval => {
                summary.eval_loss = row.loss;
                summary.eval_mlm_accuracy = row.mlm_accuracy;
            }
            LogSplit::Heldout => {}
        }
    }
    Ok(out)
}

fn every(step: usize, n: usize) -> bool {
    n > 0 && step.is_multiple_of(n)
}

/// The index of the phase that takes optimizer step `step` (0-based; the last phase for
/// steps past the end).
pub fn phase_index_at(phases: &[JobPhase], step: usize) -> usize {
    phases
        .iter()
        .position(|p| step < p.plan.end_step())
        .unwrap_or(phases.len().saturating_sub(1))
}

/// The phases must cover the schedule: consecutive, and adding up to the total steps.
fn check_phases(job: &PretrainJob) -> Result<()> {
    if job.phases.is_empty() {
        return Err(Error::Stage(
            "a pretrain job needs at least one phase".into(),
        ));
    }
    let mut next = 0;
    for p in &job.phases {
        if p.plan.first_step != next || p.plan.num_train_steps == 0 {
            return Err(Error::Stage(format!(
                "phase {} starts at step {} with {} steps; phases must follow one another",
                p.plan.phase, p.plan.first_step, p.plan.num_train_steps
            )));
        }
        next = p.plan.end_step();
    }
    let total = total_train_steps(&job.config);
    if next != total {
        return Err(Error::Stage(format!(
            "the phases cover {next} steps but pretrain.num_train_steps = {total}: make them equal"
        )));
    }
    Ok(())
}

/// What every shard of phase `index` must agree with.
fn phase_expect(job: &PretrainJob, index: usize) -> ShardExpect {
    ShardExpect {
        seq_len: job.phases[index].plan.max_seq_length,
        vocab_size: job.model_config.vocab_size,
    }
}

/// The training stream of phase `index` at its start. Phase 1's seed is the one a run
/// without phases uses; later phases derive theirs from the phase index.
fn open_phase_stream(job: &PretrainJob, index: usize) -> Result<InstanceStream> {
    let parts: &[u64] = if index == 0 { &[] } else { &[index as u64] };
    let data_seed = crate::stage::derive_seed(job.seed, "pretrain-data", parts);
    InstanceStream::new(
        job.phases[index].train_shards.clone(),
        job.config.shuffle_buffer,
        data_seed,
        phase_expect(job, index),
    )
}

/// Pre-trains BERT as configured by `job` on `device`, phase after phase, resuming from the
/// newest checkpoint in `job.work_dir` if there is one.
pub fn train<D: BertDevice>(
    job: &PretrainJob,
    device: &D,
    progress: &dyn Progress,
) -> Result<TrainSummary> {
    let cfg = &job.config;
    check_phases(job)?;
    std::fs::create_dir_all(&job.work_dir).at(&job.work_dir)?;
    // init from scratch or resume from the newest checkpoint; `data` is (phase index, stream)
    let (mut trainer, mut data) = match list_checkpoints(&job.work_dir)?.pop() {
        Some(dir) => {
            let (trainer, state) = load_checkpoint(&dir, &job.model_config, cfg, device)?;
            let index = state
                .phase
                .checked_sub(1)
                .filter(|&i| i < job.phases.len())
                .ok_or_else(|| {
                    Error::checkpoint(
                        dir.join(STATE_FILE),
                        format!(
                            "names phase {} but the run has {}; delete it (or `just clean`) to start over",
                            state.phase,
                            job.phases.len()
                        ),
                    )
                })?;
            let stream = InstanceStream::resume(
                job.phases[index].train_shards.clone(),
                cfg.shuffle_buffer,
                state.data,
                phase_expect(job, index),
            )?;
            tracing::info!(step = trainer.step, phase = index + 1, dir = %dir.display(), "resuming");
            (trainer, (index, stream))
        }
        None => (
            Trainer::new(&job.model_config, cfg, job.seed, device),
            (0, open_phase_stream(job, 0)?),
        ),
    };
    let resumed_from = trainer.step;
    let mut metrics = MetricsLog::open(&job.work_dir.join(METRICS_FILE), resumed_from)?;
    let total = total_train_steps(cfg);
    let mut summary = TrainSummary {
        step: resumed_from,
        resumed_from,
        finished: false,
        checkpoint: None,
        eval: None,
        heldout: None,
        last_train: None,
        tokens_per_s: 0.0,
        metrics: metrics.path().to_path_buf(),
        phases: Vec::new(),
    };
    progress.start("pretrain", total as u64);
    progress.advance(resumed_from as u64);
    let started = Instant::now();
    let mut window = StatsWindow::default();
    let mut window_started = Instant::now();
    let mut tokens_this_run = 0u64;
    let mut phase_seconds = vec![0.0; job.phases.len()];
    let plans: Vec<PhasePlan> = job.phases.iter().map(|p| p.plan).collect();
    loop {
        let step = trainer.step;
        let fresh_here = step != resumed_from || step == 0;
        let last = step >= total;
        // the phase that took the last step, and whether this step ends it
        let done = &job.phases[phase_index_at(&job.phases, step.saturating_sub(1))];
        let phase_ended = step > 0 && step == done.plan.end_step();

        // determine the learning rate of this step (one schedule over every phase)
        let lr = lr_at(step, cfg);

        // evaluate on the held-out split and write checkpoints (always at a phase's end)
        if fresh_here
            && step > 0
            && (every(step, cfg.eval_every_steps) || last || phase_ended)
            && !done.eval_batches.is_empty()
        {
            let eval = trainer.evaluate(&done.eval_batches);
            metrics.write(&PretrainLogRow::eval(
                LogSplit::Eval,
                step,
                &done.plan,
                &eval,
            ))?;
            if trainer.best_eval_loss.is_none_or(|b| eval.loss < b) {
                trainer.best_eval_loss = Some(eval.loss);
            }
            summary.eval = Some(eval);
        }
        if fresh_here
            && step > 0
            && (every(step, cfg.save_checkpoints_steps)
                || last
                || phase_ended
                || job.stop_at == Some(step))
        {
            summary.checkpoint = Some(save_checkpoint(
                &job.work_dir,
                &trainer,
                data.0 + 1,
                &data.1,
                &job.vocab_files,
            )?);
        }

        // termination conditions
        if last || job.stop_at == Some(step) {
            summary.finished = last;
            break;
        }

        // the phase of this step: its first step opens its stream
        let current = phase_index_at(&job.phases, step);
        if current != data.0 {
            data = (current, open_phase_stream(job, current)?);
            let plan = &job.phases[current].plan;
            tracing::info!(
                phase = plan.phase,
                seq_len = plan.max_seq_length,
                step,
                "phase starts"
            );
        }
        let plan = &job.phases[current].plan;

        // forward, backward (accumulated over micro-batches), clip, update
        let step_started = Instant::now();
        let batch = data.1.next_batch(plan.train_batch_size)?;
        let stats = trainer.train_step(&batch, lr)?;
        phase_seconds[current] += step_started.elapsed().as_secs_f64();

        // timing and logging (a phase's last steps are logged before the next begins)
        window.add(&stats);
        tokens_this_run += stats.tokens;
        progress.advance(1);
        let ends_phase = trainer.step == plan.end_step() && trainer.step < total;
        if every(trainer.step, cfg.log_every_steps.max(1)) || ends_phase {
            let mean = window.mean();
            let seconds = window_started.elapsed().as_secs_f64();
            let tokens_per_s = mean.tokens as f64 / seconds.max(1e-9);
            metrics.write(&PretrainLogRow::train(
                trainer.step,
                plan,
                &mean,
                lr,
                tokens_seen(&plans, trainer.step),
                tokens_per_s,
                started.elapsed().as_secs_f64(),
            ))?;
            let phase_note = if job.phases.len() > 1 {
                format!("phase {} seq {} ", plan.phase, plan.max_seq_length)
            } else {
                String::new()
            };
            progress.message(&format!(
                "{phase_note}loss {:.3} mlm {:.3} nsp {:.3} acc {:.3} lr {:.2e} {:.0} tok/s",
                mean.loss,
                mean.mlm_loss,
                mean.nsp_loss,
                mean.mlm_accuracy(),
                lr,
                tokens_per_s
            ));
            summary.last_train = Some(mean);
            window = StatsWindow::default();
            window_started = Instant::now();
        }
    }
    progress.finish();
    let last_phase = &job.phases[job.phases.len() - 1].plan;
    if summary.finished && !job.heldout_batches.is_empty() {
        let heldout = trainer.evaluate(&job.heldout_batches);
        metrics.write(&PretrainLogRow::eval(
            LogSplit::Heldout,
            trainer.step,
            last_phase,
            &heldout,
        ))?;
        summary.heldout = Some(heldout);
    }
    summary.step = trainer.step;
    summary.tokens_per_s = tokens_this_run as f64 / started.elapsed().as_secs_f64().max(1e-9);
    summary.phases = phase_summaries(metrics.path(), &plans)?;
    for (s, seconds) in summary.phases.iter_mut().zip(phase_seconds) {
        s.seconds = seconds;
    }
    Ok(summary)
}
