//! bertline: the BERT paper (Devlin et al. 2018) as a pipeline of stage binaries over this
//! one core library.
//!
//! Module map, in pipeline order:
//! - [`config`]: pipeline.toml with profiles ([`PipelineConfig`]).
//! - [`manifest`], [`stage`]: the sled manifest of artifacts and the freshness rules.
//! - [`shard`]: Arrow shards, [`SentencePair`] and [`TrainingInstance`].
//! - [`tokenize`], [`vocab`]: the WordPiece vocabulary and its deterministic trainer
//!   (`vocab` stage).
//! - [`pairs`]: next-sentence pair sampling (`pairs` stage).
//! - [`mask`]: masked-LM instances (`mask` stage); [`stats`] summarises them.
//! - [`model`], [`optim`], [`pretrain`]: BERT in dfdx, AdamW, the pre-training loop.
//! - [`metrics`], [`tasks`], [`squad`], [`finetune`]: fine-tuning and its official metrics.
//! - [`report`]: the benchmark report.
//! - [`progress`]: the progress callback the stage binaries draw as bars.
//! - [`workers`]: one item per thread for the data stages' outer loops (bounded memory).

pub mod allocator;
pub mod config;
pub mod corpus;
pub mod durable;
pub mod error;
pub mod finetune;
pub mod manifest;
pub mod mask;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod pairs;
pub mod pretrain;
pub mod progress;
pub mod report;
pub mod shard;
pub mod squad;
pub mod stage;
pub mod stats;
pub mod tasks;
pub mod tokenize;
pub mod vocab;
pub mod workers;

pub use config::{BertConfig, PipelineConfig};
pub use error::{Error, Result};
pub use shard::{SentencePair, TrainingInstance};
