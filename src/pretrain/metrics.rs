//! `metrics.jsonl`: the log the loop appends to as it trains, one [`PretrainLogRow`] per
//! line. The report reads the same type back, so writer and reader cannot drift apart.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::checkpoint::first_phase;
use super::StepStats;
use crate::config::{PhasePlan, PretrainConfig};
use crate::durable;
use crate::error::{IoContext, Result};

/// What a row of `metrics.jsonl` measured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogSplit {
    /// Mean of the training steps since the previous training row.
    #[default]
    Train,
    /// The mask stage's eval shards (held-out documents of the corpus), every
    /// `pretrain.eval_every_steps` and at the end of each phase.
    Eval,
    /// The held-out text (`corpus.heldout`, WikiText-2) after the last step: MLM only.
    Heldout,
}

/// One line of `metrics.jsonl`. Every field but `step` is optional when read, so logs of
/// older runs still load: `lr` is read as `learning_rate`, a row without `split` is a
/// training row and one without `phase` belongs to phase 1. `None` fields are not written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PretrainLogRow {
    #[serde(default)]
    pub split: LogSplit,
    /// Optimizer steps taken when the row was written.
    pub step: usize,
    /// 1-based phase of that step.
    #[serde(default = "first_phase")]
    pub phase: usize,
    /// The phase's sequence length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq_len: Option<usize>,
    /// `mlm_loss + nsp_loss` (held-out text: `mlm_loss` alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlm_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nsp_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlm_accuracy: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nsp_accuracy: Option<f64>,
    /// Training rows: the step's learning rate.
    #[serde(default, alias = "lr", skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<f64>,
    /// Training rows: mean global gradient norm before clipping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_norm: Option<f64>,
    /// Training rows: real (unpadded) tokens per second over the rows' window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_s: Option<f64>,
    /// Training rows: sequence positions trained on so far, padding included (batch size x
    /// sequence length per step, the paper's count of tokens), over every phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_seen: Option<u64>,
    /// Training rows: seconds since this process started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elapsed_s: Option<f64>,
    /// Evaluation rows: `exp(mlm_loss)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mlm_perplexity: Option<f64>,
    /// Evaluation rows: masked positions evaluated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masked_tokens: Option<f64>,
}

impl PretrainLogRow {
    /// A training row: the mean `s` of the steps up to `step` of phase `plan`.
    pub fn train(
        step: usize,
        plan: &PhasePlan,
        s: &StepStats,
        learning_rate: f64,
        tokens_seen: u64,
        tokens_per_s: f64,
        elapsed_s: f64,
    ) -> Self {
        PretrainLogRow {
            learning_rate: Some(learning_rate),
            grad_norm: Some(s.grad_norm),
            tokens_per_s: Some(tokens_per_s),
            tokens_seen: Some(tokens_seen),
            elapsed_s: Some(elapsed_s),
            ..Self::measured(LogSplit::Train, step, plan, s)
        }
    }

    /// An evaluation row (`Eval` or `Heldout`). The held-out text is single sentences, not
    /// pairs: its NSP labels mean nothing, so its rows carry the MLM loss alone.
    pub fn eval(split: LogSplit, step: usize, plan: &PhasePlan, s: &StepStats) -> Self {
        let mut row = PretrainLogRow {
            mlm_perplexity: Some(s.mlm_loss.exp()),
            masked_tokens: Some(s.mlm_count),
            ..Self::measured(split, step, plan, s)
        };
        if split == LogSplit::Heldout {
            row.loss = Some(s.mlm_loss);
            row.nsp_loss = None;
            row.nsp_accuracy = None;
        }
        row
    }

    fn measured(split: LogSplit, step: usize, plan: &PhasePlan, s: &StepStats) -> Self {
        PretrainLogRow {
            split,
            step,
            phase: plan.phase,
            seq_len: Some(plan.max_seq_length),
            loss: Some(s.loss),
            mlm_loss: Some(s.mlm_loss),
            nsp_loss: Some(s.nsp_loss),
            mlm_accuracy: Some(s.mlm_accuracy()),
            nsp_accuracy: Some(s.nsp_accuracy()),
            ..PretrainLogRow::default()
        }
    }

    /// Parses one line; `None` for a line that is not such a row.
    pub fn parse(line: &str) -> Option<Self> {
        serde_json::from_str(line).ok()
    }
}

/// Sequence positions trained on after `step` steps of `phases` (each step: the phase's
/// batch size x its sequence length).
pub fn tokens_seen(phases: &[PhasePlan], step: usize) -> u64 {
    phases
        .iter()
        .map(|p| {
            let steps = step.clamp(p.first_step, p.end_step()) - p.first_step;
            (steps * p.train_batch_size * p.max_seq_length) as u64
        })
        .sum()
}

/// Fills `tokens_seen` of training rows that lack it (logs written before it was
/// recorded) from the run's `[pretrain]` table: each phase's batch size and steps, and the
/// rows' own `seq_len` where the run had no `[[pretrain.phases]]`.
pub fn fill_tokens_seen(rows: &mut [PretrainLogRow], config: &PretrainConfig) {
    for row in rows.iter_mut().filter(|r| r.split == LogSplit::Train) {
        if row.tokens_seen.is_some() {
            continue;
        }
        let batch = |b: Option<usize>| b.unwrap_or(config.train_batch_size) as u64;
        row.tokens_seen = if config.phases.is_empty() {
            row.seq_len
                .map(|l| row.step as u64 * batch(None) * l as u64)
        } else {
            let mut left = row.step;
            let mut seen = 0;
            for p in &config.phases {
                let steps = left.min(p.num_train_steps);
                seen += steps as u64 * batch(p.train_batch_size) * p.max_seq_length as u64;
                left -= steps;
            }
            Some(seen)
        };
    }
}

/// The JSONL metrics file, appended to as training goes.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    /// Opens `path` for appending, first dropping rows after `step` (left by a run that was
    /// killed after its last checkpoint) and the held-out row (written at the end of every
    /// finished run), so a resumed run continues the file cleanly.
    pub fn open(path: &Path, step: usize) -> Result<Self> {
        let mut kept = Vec::new();
        if let Ok(file) = std::fs::File::open(path) {
            for line in std::io::BufReader::new(file).lines() {
                let line = line.at(path)?;
                // The held-out row is written after the last checkpoint and again by every
                // run that finishes: a resumed (or forced) run writes it anew.
                if PretrainLogRow::parse(&line)
                    .is_some_and(|row| row.step <= step && row.split != LogSplit::Heldout)
                {
                    kept.push(line);
                }
            }
        }
        let mut text = kept.join("\n");
        if !text.is_empty() {
            text.push('\n');
        }
        durable::write_bytes(path, text.as_bytes())?;
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .at(path)?;
        Ok(MetricsLog {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Appends one row.
    pub fn write(&mut self, row: &PretrainLogRow) -> Result<()> {
        let line = serde_json::to_string(row).expect("a log row serialises");
        writeln!(self.file, "{line}").at(&self.path)?;
        self.file.flush().at(&self.path)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
