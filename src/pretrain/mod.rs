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
//!
//! The seams, one module each: [`stream`] (shards in, batches out), [`trainer`] (the model,
//! its optimizer and one step), [`checkpoint`] (`state.json` and the checkpoint directories),
//! [`metrics`] (`metrics.jsonl`), [`train_loop`] (the phases and the loop), [`bench`] (the
//! step benchmark) and [`stage`] (the `pretrain` stage on a run directory).

pub mod bench;
pub mod checkpoint;
pub mod metrics;
pub mod stage;
pub mod stream;
pub mod train_loop;
pub mod trainer;

pub use bench::*;
pub use checkpoint::*;
pub use metrics::*;
pub use stage::*;
pub use stream::*;
pub use train_loop::*;
pub use trainer::*;

/// Metrics of the run, one JSON object per line.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// Where a checkpoint keeps the step, the data position and the config.
pub const STATE_FILE: &str = "state.json";
/// AdamW moments of a checkpoint.
pub const OPTIM_FILE: &str = "optim.safetensors";
/// Prefix of checkpoint directory names (`checkpoint-0000500`).
pub const CHECKPOINT_PREFIX: &str = "checkpoint-";
