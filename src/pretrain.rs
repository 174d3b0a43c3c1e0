//! The pre-training loop: masked LM + next sentence prediction on the `mask` stage's shards
//! (BERT §3.1 and §A.2; Google's `run_pretraining.py`; the loop shape of nanoGPT's
//! `train.py`).
//!
//! [`train`] reads top to bottom: learning rate -> evaluation and checkpoint -> forward and
//! backward over the micro-batches, clip, update -> log -> stop. Instances stream through a
//! seeded shuffle buffer ([`InstanceStream`]), a few shards in memory at a time.
//! Checkpoints are directories written atomically into the stage's work directory; a killed
//! run resumes from the latest one and continues bit for bit as if never stopped (the
//! stream's buffer and rng position are saved; dropout masks are a function of the step).
//!
//! Phases (BERT §A.2: 90% of the steps at length 128, then 10% at 512): [`train`] runs the
//! job's phases one after the other with the same model, the same AdamW moments and one
//! learning-rate schedule over the total steps. Each phase streams only the shards of its
//! length, from a stream seeded for that phase; a phase's end is always evaluated and
//! checkpointed, and checkpoints record the phase their stream belongs to, so a resume
//! continues exactly within a phase or across a phase boundary.

use crate::model::BertDevice;
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use dfdx::tensor::NoneTape;
use dfdx::tensor_ops::Backward;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::config::{BertConfig, PhasePlan, PretrainConfig};
use crate::durable;
use crate::error::{Error, IoContext, Result};
use crate::manifest::StageRecord;
use crate::model::export::{self, CONFIG_FILE, MODEL_FILE};
use crate::model::{init, BertForPreTraining, MaskedLmBatch, Mode, TrainTape};
use crate::optim::{clip_grad_norm, lr_at, total_train_steps, AdamW, AdamWConfig, ParamGrads};
use crate::progress::Progress;
use crate::shard::{read_instances, InstanceShard};
use crate::stage::{Begin, Outcome, Stage, StageCtx};

/// Metrics of the run, one JSON object per line.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// Where a checkpoint keeps the step, the data position and the config.
pub const STATE_FILE: &str = "state.json";
/// AdamW moments of a checkpoint.
pub const OPTIM_FILE: &str = "optim.safetensors";
/// Prefix of checkpoint directory names (`checkpoint-0000500`).
pub const CHECKPOINT_PREFIX: &str = "checkpoint-";

// ---------------------------------------------------------------------------------------
// data

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

// ---------------------------------------------------------------------------------------
// one step

/// What one optimizer step (or an evaluation) measured.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepStats {
    /// `mlm_loss + nsp_loss`.
    pub loss: f64,
    pub mlm_loss: f64,
    pub nsp_loss: f64,
    /// Weighted correct masked predictions.
    pub mlm_correct: f64,
    /// Weighted masked predictions.
    pub mlm_count: f64,
    pub nsp_correct: f64,
    pub nsp_count: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Real (unpadded) tokens.
    pub tokens: u64,
}

impl StepStats {
    /// Masked-LM accuracy.
    pub fn mlm_accuracy(&self) -> f64 {
        self.mlm_correct / self.mlm_count.max(1e-9)
    }
    /// Next-sentence accuracy.
    pub fn nsp_accuracy(&self) -> f64 {
        self.nsp_correct / self.nsp_count.max(1e-9)
    }
}

/// Mean of several [`StepStats`] (losses and norm averaged, counts summed).
#[derive(Debug, Clone, Default)]
pub struct StatsWindow {
    sum: StepStats,
    steps: usize,
}

impl StatsWindow {
    pub fn add(&mut self, s: &StepStats) {
        let t = &mut self.sum;
        t.loss += s.loss;
        t.mlm_loss += s.mlm_loss;
        t.nsp_loss += s.nsp_loss;
        t.grad_norm += s.grad_norm;
        t.mlm_correct += s.mlm_correct;
        t.mlm_count += s.mlm_count;
        t.nsp_correct += s.nsp_correct;
        t.nsp_count += s.nsp_count;
        t.tokens += s.tokens;
        self.steps += 1;
    }

    /// The window's means; counts stay summed.
    pub fn mean(&self) -> StepStats {
        let n = self.steps.max(1) as f64;
        StepStats {
            loss: self.sum.loss / n,
            mlm_loss: self.sum.mlm_loss / n,
            nsp_loss: self.sum.nsp_loss / n,
            grad_norm: self.sum.grad_norm / n,
            ..self.sum
        }
    }

    pub fn is_empty(&self) -> bool {
        self.steps == 0
    }
}

/// The model, its optimizer and the position in training.
#[derive(Debug)]
pub struct Trainer<D: BertDevice> {
    pub model: BertForPreTraining<D>,
    pub optimizer: AdamW,
    pub model_config: BertConfig,
    pub config: PretrainConfig,
    /// Optimizer steps taken.
    pub step: usize,
    /// Lowest evaluation loss so far.
    pub best_eval_loss: Option<f64>,
    /// Seeds the initial weights and every dropout mask.
    pub seed: u64,
    /// Gradient buffers, reused every step.
    grads: ParamGrads,
    scratch: Vec<f32>,
}

impl<D: BertDevice> Trainer<D> {
    /// A fresh model initialised from `seed` (HF `_init_weights`), step 0.
    pub fn new(model_config: &BertConfig, config: &PretrainConfig, seed: u64, device: &D) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let model =
            BertForPreTraining::new(model_config, &mut init(model_config, device, &mut rng));
        Trainer {
            model,
            optimizer: AdamW::new(AdamWConfig::from_pretrain(config)),
            model_config: model_config.clone(),
            config: config.clone(),
            step: 0,
            best_eval_loss: None,
            seed,
            grads: ParamGrads::default(),
            scratch: Vec::new(),
        }
    }

    /// One optimizer step on `batch` at learning rate `lr`: forward and backward over
    /// `gradient_accumulation_steps` micro-batches (each loss scaled by 1/accumulation),
    /// clip the global gradient norm, AdamW update.
    pub fn train_step(&mut self, batch: &MaskedLmBatch, lr: f64) -> Result<StepStats> {
        let accumulation = self.config.gradient_accumulation_steps.max(1);
        let micro = batch.batch.div_ceil(accumulation);
        let device = self
            .model
            .bert
            .embeddings
            .word_embeddings
            .weight
            .device()
            .clone();
        self.grads.zero();
        let mut stats = StepStats::default();
        let mut seconds = [0.0f64; 4]; // forward, backward, gradient copy, update
        for (i, start) in (0..batch.batch).step_by(micro.max(1)).enumerate() {
            let t = Instant::now();
            let part = batch.slice(start..(start + micro).min(batch.batch));
            let mut mode = Mode::train(dropout_seed(self.seed, self.step, i));
            let inputs = part.inputs(&device);
            let out = self
                .model
                .loss_on::<TrainTape<D>>(&inputs, &part, &mut mode);
            let loss = out.loss * (1.0 / accumulation as f32);
            seconds[0] += t.elapsed().as_secs_f64();
            let t = Instant::now();
            let mut g = loss.backward();
            seconds[1] += t.elapsed().as_secs_f64();
            let t = Instant::now();
            self.grads
                .add_gradients(&self.model, &mut g, &mut self.scratch);
            drop(g);
            seconds[2] += t.elapsed().as_secs_f64();
            let total = out.mlm_loss as f64 + out.nsp_loss as f64;
            if !total.is_finite() {
                return Err(Error::Model(format!(
                    "non-finite loss at step {}: lower pretrain.learning_rate or check the data",
                    self.step
                )));
            }
            let k = 1.0 / accumulation as f64;
            stats.loss += total * k;
            stats.mlm_loss += out.mlm_loss as f64 * k;
            stats.nsp_loss += out.nsp_loss as f64 * k;
            stats.mlm_correct += out.mlm_correct;
            stats.mlm_count += out.mlm_count;
            stats.nsp_correct += out.nsp_correct as f64;
            stats.nsp_count += out.nsp_count as f64;
            stats.tokens += part.num_tokens() as u64;
        }
        let t = Instant::now();
        stats.grad_norm = clip_grad_norm(&mut self.grads, self.config.max_grad_norm);
        self.optimizer.update(&mut self.model, &self.grads, lr);
        seconds[3] = t.elapsed().as_secs_f64();
        tracing::debug!(
            step = self.step,
            forward = seconds[0],
            backward = seconds[1],
            gradient_copy = seconds[2],
            update = seconds[3],
            "step seconds"
        );
        self.step += 1;
        Ok(stats)
    }

    /// Mean loss and accuracies over `batches`, dropout off, no tape.
    pub fn evaluate(&self, batches: &[MaskedLmBatch]) -> StepStats {
        estimate_loss(&self.model, batches)
    }
}

/// The dropout seed of micro-batch `micro` of step `step`: masks depend on nothing else,
/// so a resumed run draws the same ones.
pub fn dropout_seed(seed: u64, step: usize, micro: usize) -> u64 {
    crate::stage::derive_seed(seed, "pretrain-dropout", &[step as u64, micro as u64])
}

/// Loss and accuracies of `model` over `batches` in evaluation mode. The MLM loss is the
/// weighted mean over all masked positions of all batches (so `exp` of it is a perplexity).
pub fn estimate_loss<D: BertDevice>(
    model: &BertForPreTraining<D>,
    batches: &[MaskedLmBatch],
) -> StepStats {
    let mut stats = StepStats::default();
    let mut mlm_sum = 0.0;
    let mut nsp_sum = 0.0;
    for batch in batches {
        let out = model.loss::<NoneTape>(batch, &mut Mode::Eval);
        mlm_sum += out.mlm_loss as f64 * out.mlm_count;
        nsp_sum += out.nsp_loss as f64 * out.nsp_count as f64;
        stats.mlm_correct += out.mlm_correct;
        stats.mlm_count += out.mlm_count;
        stats.nsp_correct += out.nsp_correct as f64;
        stats.nsp_count += out.nsp_count as f64;
        stats.tokens += batch.num_tokens() as u64;
    }
    stats.mlm_loss = mlm_sum / stats.mlm_count.max(1e-9);
    stats.nsp_loss = nsp_sum / stats.nsp_count.max(1e-9);
    stats.loss = stats.mlm_loss + stats.nsp_loss;
    stats
}

// ---------------------------------------------------------------------------------------
// checkpoints

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

fn first_phase() -> usize {
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

// ---------------------------------------------------------------------------------------
// metrics

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

fn train_row(
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

fn eval_row(split: &str, step: usize, plan: &PhasePlan, s: &StepStats) -> serde_json::Value {
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
const HELDOUT: &str = "heldout";

fn mlm_only(row: &mut serde_json::Value, s: &StepStats) {
    if let Some(obj) = row.as_object_mut() {
        obj.remove("nsp_loss");
        obj.remove("nsp_accuracy");
        obj.insert("loss".into(), serde_json::json!(s.mlm_loss));
    }
}

// ---------------------------------------------------------------------------------------
// the loop

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
    for row in text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    {
        let phase = row["phase"].as_u64().unwrap_or(1) as usize;
        let Some(summary) = out.iter_mut().find(|s| s.phase == phase) else {
            continue;
        };
        match row["split"].as_str() {
            Some("train") => {
                summary.train_loss = row["loss"].as_f64();
                summary.train_mlm_accuracy = row["mlm_accuracy"].as_f64();
            }
            Some("eval") => {
                summary.eval_loss = row["loss"].as_f64();
                summary.eval_mlm_accuracy = row["mlm_accuracy"].as_f64();
            }
            _ => {}
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
            metrics.write(&eval_row("eval", step, &done.plan, &eval))?;
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
            metrics.write(&train_row(
                trainer.step,
                plan,
                &mean,
                lr,
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
        metrics.write(&eval_row(HELDOUT, trainer.step, last_phase, &heldout))?;
        summary.heldout = Some(heldout);
    }
    summary.step = trainer.step;
    summary.tokens_per_s = tokens_this_run as f64 / started.elapsed().as_secs_f64().max(1e-9);
    let plans: Vec<PhasePlan> = job.phases.iter().map(|p| p.plan).collect();
    summary.phases = phase_summaries(metrics.path(), &plans)?;
    for (s, seconds) in summary.phases.iter_mut().zip(phase_seconds) {
        s.seconds = seconds;
    }
    Ok(summary)
}

// ---------------------------------------------------------------------------------------
// benchmark

/// Timings of [`bench`].
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub layers: usize,
    pub hidden: usize,
    pub batch: usize,
    pub seq_len: usize,
    pub steps: usize,
    /// Median seconds per optimizer step (after one warm-up step).
    pub median_step_s: f64,
    /// `batch * seq_len / median_step_s`.
    pub tokens_per_s: f64,
    /// Peak resident memory of the process (VmHWM), MiB; 0 where unknown.
    pub peak_rss_mib: f64,
}

/// Times `steps` training steps of `model_config` on random instances (uniform ids, 15% of
/// positions predicted, half the pairs random-next). Compute only, no data loading.
pub fn bench<D: BertDevice>(
    model_config: &BertConfig,
    config: &PretrainConfig,
    batch: usize,
    seq_len: usize,
    steps: usize,
    device: &D,
) -> Result<BenchReport> {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let predictions = ((seq_len as f64 * 0.15).round() as usize).max(1);
    let mut b = MaskedLmBatch {
        batch,
        seq_len,
        max_predictions: predictions,
        ..Default::default()
    };
    for _ in 0..batch {
        b.input_ids
            .extend((0..seq_len).map(|_| rng.gen_range(5..model_config.vocab_size as u32)));
        b.token_type_ids
            .extend((0..seq_len).map(|i| (i >= seq_len / 2) as u32));
        b.attention_mask.extend(std::iter::repeat_n(1, seq_len));
        let mut positions: Vec<u32> = rand::seq::index::sample(&mut rng, seq_len - 1, predictions)
            .into_iter()
            .map(|p| p as u32 + 1)
            .collect();
        positions.sort_unstable();
        b.masked_lm_positions.extend(positions);
        b.masked_lm_ids
            .extend((0..predictions).map(|_| rng.gen_range(5..model_config.vocab_size as u32)));
        b.masked_lm_weights
            .extend(std::iter::repeat_n(1.0, predictions));
        b.next_sentence_label.push(rng.gen_range(0..2));
    }
    let mut trainer = Trainer::new(model_config, config, 0, device);
    let mut times = Vec::with_capacity(steps);
    for i in 0..=steps {
        let t = Instant::now();
        trainer.train_step(&b, 1e-4)?;
        if i > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
        tracing::debug!(step = i, seconds = t.elapsed().as_secs_f64(), "bench step");
    }
    times.sort_by(|a, b| a.partial_cmp(b).expect("finite times"));
    let median = times.get(times.len() / 2).copied().unwrap_or(0.0);
    Ok(BenchReport {
        layers: model_config.num_hidden_layers,
        hidden: model_config.hidden_size,
        batch,
        seq_len,
        steps,
        median_step_s: median,
        tokens_per_s: (batch * seq_len) as f64 / median.max(1e-12),
        peak_rss_mib: peak_rss_mib(),
    })
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`), 0 elsewhere.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

// ---------------------------------------------------------------------------------------
// the stage

/// The mask stage's shards, split into (train, eval) by artifact kind or path: a shard
/// whose kind or path mentions `eval` is evaluation data. Every sequence length is included;
/// [`phase_shards`] picks one phase's.
pub fn mask_shards(ctx: &StageCtx, record: &StageRecord) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut train = Vec::new();
    let mut eval = Vec::new();
    for a in &record.artifacts {
        if !a.path.ends_with(".parquet") {
            continue;
        }
        let path = ctx.path_of(a);
        if a.kind.contains("eval") || a.path.contains("eval") {
            eval.push(path);
        } else {
            train.push(path);
        }
    }
    train.sort();
    eval.sort();
    (train, eval)
}

/// The shards of `shards` cut for `max_seq_length` (file names starting `seq{length}-`).
pub fn phase_shards(shards: &[PathBuf], max_seq_length: usize) -> Vec<PathBuf> {
    shards
        .iter()
        .filter(|p| crate::pairs::sequence_length_of(&p.to_string_lossy()) == Some(max_seq_length))
        .cloned()
        .collect()
}

/// The `pretrain` stage: trains on the mask shards, checkpoints into the stage's work
/// directory (resuming a killed run), and records the final `model.safetensors`,
/// `config.json`, `optim.safetensors`, `state.json`, vocabulary and `metrics.jsonl`.
pub fn run(ctx: &StageCtx, progress: &dyn Progress) -> Result<Outcome> {
    run_with(ctx, progress, None)
}

/// [`run`], optionally stopping after step `stop_at` (checkpointed, not recorded).
pub fn run_with(
    ctx: &StageCtx,
    progress: &dyn Progress,
    stop_at: Option<usize>,
) -> Result<Outcome> {
    #[cfg(feature = "cuda")]
    {
        let device = dfdx::tensor::Cuda::try_build(0, ctx.seed(Stage::Pretrain, &[1]))
            .map_err(|e| Error::Model(format!("cannot open CUDA device 0: {e:?}")))?;
        dfdx::tensor::Cache::enable_cache(&device);
        run_on(ctx, progress, stop_at, &device)
    }
    #[cfg(not(feature = "cuda"))]
    crate::model::kernels::on_pool_thread(|| {
        let device = dfdx::tensor::Cpu::seed_from_u64(ctx.seed(Stage::Pretrain, &[1]));
        // Reuse freed buffers: without the cache every step page-faults its activations anew.
        dfdx::tensor::Cache::enable_cache(&device);
        run_on(ctx, progress, stop_at, &device)
    })
}

/// [`run_with`] on a given device.
pub fn run_on<D: BertDevice>(
    ctx: &StageCtx,
    progress: &dyn Progress,
    stop_at: Option<usize>,
    device: &D,
) -> Result<Outcome> {
    let cfg = ctx.config();
    let model_config = cfg.model.clone();
    // Inputs first: every check fails before anything is written.
    let (_, tokenizer_path) = crate::tokenize::load_stage_vocab(ctx)?;
    let vocab_record = ctx.upstream(Stage::Vocab)?;
    let vocab_files: Vec<PathBuf> = vocab_record
        .artifacts
        .iter()
        .map(|a| ctx.path_of(a))
        .collect();
    let mask_record = ctx.upstream(Stage::Mask)?;
    let (train_shards, eval_shards) = mask_shards(ctx, &mask_record);
    let mut phases = Vec::new();
    for plan in cfg.pretrain_phases() {
        let (train, eval) = if cfg.has_phases() {
            (
                phase_shards(&train_shards, plan.max_seq_length),
                phase_shards(&eval_shards, plan.max_seq_length),
            )
        } else {
            (train_shards.clone(), eval_shards.clone())
        };
        if cfg.has_phases() && train.is_empty() {
            return Err(Error::Stage(format!(
                "no mask shards for phase {} (max_seq_length = {}); rerun `just stage mask`",
                plan.phase, plan.max_seq_length
            )));
        }
        let expect = ShardExpect {
            seq_len: plan.max_seq_length,
            vocab_size: model_config.vocab_size,
        };
        if let Some(first) = train.first() {
            read_checked_shard(first, expect)?;
        }
        let eval_batches = read_eval_batches(
            &eval,
            plan.train_batch_size,
            cfg.pretrain.eval_batches,
            expect,
        )?;
        phases.push(JobPhase {
            plan,
            train_shards: train,
            eval_batches,
        });
    }
    let heldout_batches = match &cfg.corpus.heldout {
        Some(h) => heldout_batches(&ctx.loaded.resolve(h), &tokenizer_path, cfg)?,
        None => Vec::new(),
    };
    let mut run = match ctx.begin(Stage::Pretrain)? {
        Begin::Skip(record) => return Ok(Outcome::Skipped(record)),
        Begin::Run(run) => run,
    };
    let job = PretrainJob {
        model_config,
        config: cfg.pretrain.clone(),
        phases,
        heldout_batches,
        work_dir: run.work_dir(ctx)?,
        vocab_files,
        seed: ctx.seed(Stage::Pretrain, &[0]),
        stop_at,
    };
    let started = Instant::now();
    let summary = train(&job, device, progress)?;
    if !summary.finished {
        tracing::info!(
            step = summary.step,
            "stopped before the end; rerun to resume"
        );
        return Err(Error::Stage(format!(
            "pretrain stopped at step {} of {} (checkpointed in {}); rerun to resume",
            summary.step,
            total_train_steps(&job.config),
            job.work_dir.display()
        )));
    }
    let checkpoint = summary
        .checkpoint
        .clone()
        .unwrap_or_else(|| checkpoint_dir(&job.work_dir, summary.step));
    for entry in std::fs::read_dir(&checkpoint).at(&checkpoint)? {
        let entry = entry.at(&checkpoint)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        durable::copy_file(&entry.path(), &run.dir().join(&name))?;
        let kind = match name.as_str() {
            MODEL_FILE => "model",
            CONFIG_FILE => "model_config",
            OPTIM_FILE => "optimizer",
            STATE_FILE => "train_state",
            "vocab.txt" => "vocab",
            "tokenizer.json" => "tokenizer",
            _ => "checkpoint_file",
        };
        run.add(&name, kind, 0)?;
    }
    durable::copy_file(&summary.metrics, &run.dir().join(METRICS_FILE))?;
    run.add(METRICS_FILE, "metrics", 0)?;
    let mut metrics = summary_metrics(&summary, started.elapsed().as_secs_f64());
    if cfg.has_phases() {
        metrics["phases"] = summary
            .phases
            .iter()
            .map(|p| {
                let value = serde_json::to_value(p).expect("phase summary serialises");
                (format!("phase{}", p.phase), value)
            })
            .collect::<serde_json::Map<_, _>>()
            .into();
    }
    Ok(Outcome::Ran(run.finish(ctx, metrics)?))
}

fn summary_metrics(s: &TrainSummary, seconds: f64) -> serde_json::Value {
    let stats = |x: &Option<StepStats>| {
        x.as_ref().map(|s| {
            serde_json::json!({
                "loss": s.loss, "mlm_loss": s.mlm_loss, "nsp_loss": s.nsp_loss,
                "mlm_accuracy": s.mlm_accuracy(), "nsp_accuracy": s.nsp_accuracy(),
                "mlm_perplexity": s.mlm_loss.exp(),
            })
        })
    };
    serde_json::json!({
        "steps": s.step,
        "resumed_from": s.resumed_from,
        "train": stats(&s.last_train),
        "eval": stats(&s.eval),
        "heldout": stats(&s.heldout).map(|mut row| {
            let heldout = s.heldout.as_ref().expect("stats of a present evaluation");
            mlm_only(&mut row, heldout);
            row
        }),
        "heldout_perplexity": s.heldout.as_ref().map(|h| h.mlm_loss.exp()),
        "tokens_per_s": s.tokens_per_s,
        "seconds": seconds,
    })
}

/// Held-out MLM batches: `path` (WikiText-2) tokenized line by line, the ids cut into
/// `[CLS] ... [SEP]` rows of the last phase's length (`pairs.max_seq_length` without
/// phases: the length the finished model is trained for), `mask.masked_lm_prob` of each row
/// masked with a fixed seed and the phase's `max_predictions_per_seq`, at most
/// `pretrain.eval_batches` batches of its batch size. NSP labels are 0 and meaningless
/// here: only the MLM numbers of this split are reported.
pub fn heldout_batches(
    path: &Path,
    tokenizer: &Path,
    cfg: &crate::config::PipelineConfig,
) -> Result<Vec<MaskedLmBatch>> {
    let wp = crate::tokenize::WordPiece::from_file(tokenizer)?;
    let text = crate::corpus::read_corpus(path)?;
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let ids: Vec<u32> = wp.encode_lines(&lines)?.into_iter().flatten().collect();
    let phases = cfg.pretrain_phases();
    let last = phases.last().expect("at least one phase");
    let (seq_len, max_predictions, batch_size) = (
        last.max_seq_length,
        last.max_predictions_per_seq,
        last.train_batch_size,
    );
    let rows_wanted = cfg.pretrain.eval_batches * batch_size;
    let mut rng = ChaCha8Rng::seed_from_u64(crate::stage::derive_seed(
        cfg.run.random_seed,
        "pretrain-heldout",
        &[],
    ));
    let special = crate::tokenize::SPECIAL;
    let vocab = crate::mask::MaskVocab::from_wordpiece(&wp);
    let mut rows = Vec::new();
    for chunk in ids.chunks(seq_len - 2).take(rows_wanted) {
        let mut tokens = Vec::with_capacity(seq_len);
        tokens.push(special.cls);
        tokens.extend_from_slice(chunk);
        tokens.push(special.sep);
        // The mask stage's own algorithm (BERT §3.1: 15% of the non-special tokens; of those
        // 80% [MASK], 10% random, 10% unchanged).
        let (masked, positions, labels) = crate::mask::create_masked_lm_predictions(
            &tokens,
            cfg.mask.masked_lm_prob,
            max_predictions,
            cfg.mask.do_whole_word_mask,
            &vocab,
            &mut rng,
        );
        rows.push(crate::shard::TrainingInstance {
            segment_ids: vec![0; masked.len()],
            tokens: masked,
            masked_lm_positions: positions,
            masked_lm_labels: labels,
            is_random_next: false,
        });
    }
    let shard = heldout_shard(&rows, seq_len, max_predictions);
    let batches = (0..shard.batch)
        .collect::<Vec<_>>()
        .chunks(batch_size)
        .map(|chunk| MaskedLmBatch::from_rows(chunk.iter().map(|&r| (&shard, r))))
        .collect();
    Ok(batches)
}

/// Fixed-length rows of `instances`, as the mask stage writes them.
pub fn heldout_shard(
    instances: &[crate::shard::TrainingInstance],
    seq_len: usize,
    max_predictions: usize,
) -> InstanceShard {
    let mut shard = InstanceShard {
        batch: instances.len(),
        seq_len,
        max_predictions,
        ..Default::default()
    };
    for inst in instances {
        let n = inst.tokens.len();
        shard.input_ids.extend(
            inst.tokens
                .iter()
                .copied()
                .chain(std::iter::repeat(0))
                .take(seq_len),
        );
        shard.token_type_ids.extend(
            inst.segment_ids
                .iter()
                .map(|&s| s as u32)
                .chain(std::iter::repeat(0))
                .take(seq_len),
        );
        shard
            .attention_mask
            .extend((0..seq_len).map(|i| (i < n) as u32));
        let k = inst.masked_lm_positions.len();
        shard.masked_lm_positions.extend(
            inst.masked_lm_positions
                .iter()
                .copied()
                .chain(std::iter::repeat(0))
                .take(max_predictions),
        );
        shard.masked_lm_ids.extend(
            inst.masked_lm_labels
                .iter()
                .copied()
                .chain(std::iter::repeat(0))
                .take(max_predictions),
        );
        shard
            .masked_lm_weights
            .extend((0..max_predictions).map(|i| if i < k { 1.0 } else { 0.0 }));
        shard.next_sentence_label.push(inst.is_random_next as u32);
    }
    shard
}

/// BERT-mini (4 layers, hidden 256, 4 heads, intermediate 1024, vocab 8192), sequence 128,
/// batch 32: the configuration the PyTorch benchmark times too.
pub fn bench_mini_config() -> (BertConfig, PretrainConfig) {
    let model = BertConfig {
        vocab_size: 8192,
        hidden_size: 256,
        num_hidden_layers: 4,
        num_attention_heads: 4,
        intermediate_size: 1024,
        max_position_embeddings: 512,
        ..BertConfig::default()
    };
    let pretrain: PretrainConfig = toml::from_str(
        "train_batch_size = 32\nlearning_rate = 1e-4\nnum_train_steps = 100\nnum_warmup_steps = 10",
    )
    .expect("valid pretrain table");
    (model, pretrain)
}

/// [`bench`] of `model` with `pretrain`'s batch size and sequence length `seq_len` on the
/// default device (CUDA with the `cuda` feature, else the CPU with its buffer cache on).
pub fn bench_default_device(
    model: &BertConfig,
    pretrain: &PretrainConfig,
    seq_len: usize,
    steps: usize,
) -> Result<BenchReport> {
    #[cfg(feature = "cuda")]
    {
        let device = dfdx::tensor::Cuda::try_build(0, 0)
            .map_err(|e| Error::Model(format!("cannot open CUDA device 0: {e:?}")))?;
        dfdx::tensor::Cache::enable_cache(&device);
        bench(
            model,
            pretrain,
            pretrain.train_batch_size,
            seq_len,
            steps,
            &device,
        )
    }
    #[cfg(not(feature = "cuda"))]
    crate::model::kernels::on_pool_thread(|| {
        let device = dfdx::tensor::Cpu::default();
        dfdx::tensor::Cache::enable_cache(&device);
        bench(
            model,
            pretrain,
            pretrain.train_batch_size,
            seq_len,
            steps,
            &device,
        )
    })
}
