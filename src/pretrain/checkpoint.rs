//! Checkpoints: directories written atomically (`model.safetensors`, `config.json`,
//! `optim.safetensors`, `state.json`, the vocabulary) and read back to resume.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{InstanceStream, StreamState, Trainer, CHECKPOINT_PREFIX, OPTIM_FILE, STATE_FILE};
use crate::config::{BertConfig, PretrainConfig};
use crate::durable;
use crate::error::{Error, IoContext, Result};
use crate::model::export::{self, CONFIG_FILE};
use crate::model::BertDevice;
use crate::optim::{AdamW, AdamWConfig, ParamGrads};

/// `state.json` of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps taken.
    pub step: usize,
    /// The phase (1-based) whose training stream `data` is: the phase of the last step taken.
    #[serde(default = "first_phase")]
    pub phase: usize,
    /// Where the training stream stands.
    pub data: StreamState,
    /// Lowest evaluation loss so far.
    pub best_eval_loss: Option<f64>,
    /// Seed of the weights and dropout.
    pub seed: u64,
    /// `[pretrain]` of the run.
    pub config: PretrainConfig,
    /// `[model]` of the run.
    pub model: BertConfig,
}

pub(super) fn first_phase() -> usize {
    1
}

/// The checkpoint directory of `step` under `dir`.
pub fn checkpoint_dir(dir: &Path, step: usize) -> PathBuf {
    dir.join(format!("{CHECKPOINT_PREFIX}{step:07}"))
}

/// Checkpoint directories under `dir`, oldest first.
pub fn list_checkpoints(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(found);
    };
    for e in entries {
        let e = e.at(dir)?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(CHECKPOINT_PREFIX) && e.path().is_dir() {
            found.push(e.path());
        }
    }
    found.sort();
    Ok(found)
}

/// Writes a checkpoint of `trainer` and `stream` (the training stream of phase `phase`,
/// 1-based) into `dir/checkpoint-STEP` atomically (everything into a temp directory, each
/// file fsynced, then one rename), copies `extra_files` (vocab.txt, tokenizer.json) in, and
/// keeps only the newest `keep`.
pub fn save_checkpoint<D: BertDevice>(
    dir: &Path,
    trainer: &Trainer<D>,
    phase: usize,
    stream: &InstanceStream,
    extra_files: &[PathBuf],
) -> Result<PathBuf> {
    let final_dir = checkpoint_dir(dir, trainer.step);
    let tmp = dir.join(format!(
        ".tmp-{CHECKPOINT_PREFIX}{:07}-{}",
        trainer.step,
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).at(&tmp)?;
    export::save_pretraining(&trainer.model, &trainer.model_config, &tmp)?;
    trainer.optimizer.save(&tmp.join(OPTIM_FILE))?;
    let state = TrainState {
        step: trainer.step,
        phase,
        data: stream.state(),
        best_eval_loss: trainer.best_eval_loss,
        seed: trainer.seed,
        config: trainer.config.clone(),
        model: trainer.model_config.clone(),
    };
    durable::write_json(&tmp.join(STATE_FILE), &state)?;
    for f in extra_files {
        let name = f
            .file_name()
            .ok_or_else(|| Error::Stage(format!("{}: not a file", f.display())))?;
        durable::copy_file(f, &tmp.join(name))?;
    }
    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir).at(&final_dir)?;
    }
    std::fs::rename(&tmp, &final_dir).at(&final_dir)?;
    durable::sync_dir(dir);
    let all = list_checkpoints(dir)?;
    let keep = trainer.config.keep_checkpoints.max(1);
    for old in &all[..all.len().saturating_sub(keep)] {
        std::fs::remove_dir_all(old).at(old)?;
    }
    tracing::info!(step = trainer.step, phase, dir = %final_dir.display(), "checkpoint");
    Ok(final_dir)
}

/// Reads a checkpoint written by [`save_checkpoint`]; it must belong to a run with the
/// same `[model]` and `[pretrain]` settings.
pub fn load_checkpoint<D: BertDevice>(
    dir: &Path,
    model_config: &BertConfig,
    config: &PretrainConfig,
    device: &D,
) -> Result<(Trainer<D>, TrainState)> {
    let state_path = dir.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path).at(&state_path)?;
    let state: TrainState = serde_json::from_str(&text).map_err(|e| {
        Error::checkpoint(
            &state_path,
            format!("corrupt ({e}); delete this checkpoint directory to resume from an older one"),
        )
    })?;
    if state.model != *model_config || state.config != *config {
        return Err(Error::checkpoint(
            &state_path,
            "written for other [model] or [pretrain] settings; delete it (or `just clean`) to start over",
        ));
    }
    let (model, saved_config) = export::load_pretraining(dir, device)?;
    if saved_config != *model_config {
        return Err(Error::checkpoint(
            dir.join(CONFIG_FILE),
            "does not match [model] in pipeline.toml",
        ));
    }
    let optimizer = AdamW::load(
        &dir.join(OPTIM_FILE),
        AdamWConfig::from_pretrain(config),
        &model,
    )?;
    if optimizer.step as usize != state.step {
        return Err(Error::checkpoint(
            dir.join(OPTIM_FILE),
            format!(
                "optimizer at step {} but state.json at step {}",
                optimizer.step, state.step
            ),
        ));
    }
    let trainer = Trainer {
        model,
        optimizer,
        model_config: model_config.clone(),
        config: config.clone(),
        step: state.step,
        best_eval_loss: state.best_eval_loss,
        seed: state.seed,
        grads: ParamGrads::default(),
        scratch: Vec::new(),
    };
    Ok((trainer, state))
}
