//! `metrics.jsonl`: the log the loop appends to as it trains.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use super::StepStats;
use crate::config::PhasePlan;
use crate::durable;
use crate::error::{IoContext, Result};

/// The JSONL metrics file, appended to as training goes.
#[derive(Debug)]
pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    /// Opens `path` for appending, first dropping rows after `step` (left by a run that was
    /// killed after its last checkpoint), so a resumed run continues the file cleanly.
    pub fn open(path: &Path, step: usize) -> Result<Self> {
        let mut kept = Vec::new();
        if let Ok(file) = std::fs::File::open(path) {
            for line in std::io::BufReader::new(file).lines() {
                let line = line.at(path)?;
                let row: serde_json::Value = match serde_json::from_str(&line) {
                    Ok(v) => v,
                    Err(_) => continue,
                };
                if row["step"].as_u64().is_some_and(|s| s as usize <= step) {
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
    pub fn write(&mut self, row: &serde_json::Value) -> Result<()> {
        writeln!(self.file, "{row}").at(&self.path)?;
        self.file.flush().at(&self.path)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

pub(super) fn train_row(
    step: usize,
    plan: &PhasePlan,
    s: &StepStats,
    lr: f64,
    tokens_per_s: f64,
    elapsed_s: f64,
) -> serde_json::Value {
    serde_json::json!({
        "split": "train", "step": step, "phase": plan.phase, "seq_len": plan.max_seq_length,
        "loss": s.loss, "mlm_loss": s.mlm_loss,
        "nsp_loss": s.nsp_loss, "mlm_accuracy": s.mlm_accuracy(), "nsp_accuracy": s.nsp_accuracy(),
        "lr": lr, "grad_norm": s.grad_norm, "tokens_per_s": tokens_per_s, "elapsed_s": elapsed_s,
    })
}

pub(super) fn eval_row(
    split: &str,
    step: usize,
    plan: &PhasePlan,
    s: &StepStats,
) -> serde_json::Value {
    let mut row = serde_json::json!({
        "split": split, "step": step, "phase": plan.phase, "seq_len": plan.max_seq_length,
        "loss": s.loss, "mlm_loss": s.mlm_loss,
        "nsp_loss": s.nsp_loss, "mlm_accuracy": s.mlm_accuracy(), "nsp_accuracy": s.nsp_accuracy(),
        "mlm_perplexity": s.mlm_loss.exp(), "masked_tokens": s.mlm_count,
    });
    if split == HELDOUT {
        mlm_only(&mut row, s);
    }
    row
}

/// The held-out text (WikiText-2) is single sentences, not pairs: its NSP labels mean
/// nothing, so its rows carry the MLM loss alone.
pub(super) const HELDOUT: &str = "heldout";

pub(super) fn mlm_only(row: &mut serde_json::Value, s: &StepStats) {
    if let Some(obj) = row.as_object_mut() {
        obj.remove("nsp_loss");
        obj.remove("nsp_accuracy");
        obj.insert("loss".into(), serde_json::json!(s.mlm_loss));
    }
}
