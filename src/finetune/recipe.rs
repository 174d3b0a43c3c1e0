//! What a task trains with: [`TrainingRecipe`] for every kind, [`Recipe`] for sentence
//! (pair) classification and regression, [`SquadRecipe`] for SQuAD; and where the weights
//! come from ([`Init`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::FinetuneConfig;
use crate::squad::FeatureSizes;

/// How a model is trained, for every task kind: `[finetune]`'s learning rates, batch size,
/// epochs, warmup and seeds with the task's `[finetune.overrides.TASK]` table applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingRecipe {
    /// The peak learning rate of a run (one value of `learning_rates` at a time).
    pub learning_rate: f64,
    /// The sweep: every value is tried per arm, the best mean dev score is reported.
    pub learning_rates: Vec<f64>,
    pub train_batch_size: usize,
    pub num_train_epochs: f64,
    pub warmup_proportion: f64,
    pub seeds: Vec<u64>,
}

impl TrainingRecipe {
    /// The `[finetune]` values with the task's overrides applied.
    pub fn for_task(cfg: &FinetuneConfig, task: &str) -> TrainingRecipe {
        let o = cfg.overrides.get(task).cloned().unwrap_or_default();
        let learning_rate = o.learning_rate.unwrap_or(cfg.learning_rate);
        let mut learning_rates = o
            .learning_rates
            .unwrap_or_else(|| cfg.learning_rates.clone());
        if learning_rates.is_empty() {
            learning_rates.push(learning_rate);
        }
        TrainingRecipe {
            learning_rate: learning_rates[0],
            learning_rates,
            train_batch_size: o.train_batch_size.unwrap_or(cfg.train_batch_size).max(1),
            num_train_epochs: o.num_train_epochs.unwrap_or(cfg.num_train_epochs),
            warmup_proportion: o.warmup_proportion.unwrap_or(cfg.warmup_proportion),
            seeds: o.seeds.unwrap_or_else(|| cfg.seeds.clone()),
        }
    }

    /// `int(len(train_examples) / train_batch_size * num_train_epochs)`, at least 1.
    pub fn num_train_steps(&self, num_examples: usize) -> usize {
        let steps = num_examples as f64 / self.train_batch_size as f64 * self.num_train_epochs;
        (steps as usize).max(1)
    }

    /// `int(num_train_steps * warmup_proportion)`.
    pub fn num_warmup_steps(&self, num_train_steps: usize) -> usize {
        (num_train_steps as f64 * self.warmup_proportion) as usize
    }
}

/// The recipe of a sentence (pair) classification or regression task (GLUE and
/// `[finetune.custom.NAME]`): training, plus `[finetune]`'s sequence length and caps with
/// the task's overrides.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    #[serde(flatten)]
    pub training: TrainingRecipe,
    pub max_seq_length: usize,
    pub max_train_examples: usize,
    pub max_eval_examples: usize,
}

impl Recipe {
    /// The `[finetune]` values with the task's overrides applied.
    pub fn for_task(cfg: &FinetuneConfig, task: &str) -> Recipe {
        let o = cfg.overrides.get(task).cloned().unwrap_or_default();
        Recipe {
            training: TrainingRecipe::for_task(cfg, task),
            max_seq_length: o.max_seq_length.unwrap_or(cfg.max_seq_length),
            max_train_examples: o.max_train_examples.unwrap_or(cfg.max_train_examples),
            max_eval_examples: o.max_eval_examples.unwrap_or(cfg.max_eval_examples),
        }
    }
}

/// SQuAD's recipe as it runs: training from `[finetune]` (and `[finetune.overrides.squad]`),
/// windows, answer search and question caps from `[finetune.squad]` (BERT §4.2: 384 tokens,
/// stride 128), not `[finetune]`'s sequence length and example caps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SquadRecipe {
    #[serde(flatten)]
    pub training: TrainingRecipe,
    pub max_seq_length: usize,
    pub doc_stride: usize,
    pub max_query_length: usize,
    pub max_answer_length: usize,
    pub n_best_size: usize,
    /// Training questions at most (0 = all); each yields one or more windows (features).
    pub max_train_questions: usize,
    /// Evaluated questions at most (0 = all).
    pub max_eval_questions: usize,
}

impl SquadRecipe {
    /// The recipe of `[finetune]` and its `[finetune.squad]` table.
    pub fn for_finetune(cfg: &FinetuneConfig) -> SquadRecipe {
        SquadRecipe::new(TrainingRecipe::for_task(cfg, "squad"), &cfg.squad)
    }

    /// `training` with the sizes and caps of `squad`.
    pub fn new(training: TrainingRecipe, squad: &crate::config::SquadConfig) -> SquadRecipe {
        SquadRecipe {
            training,
            max_seq_length: squad.max_seq_length,
            doc_stride: squad.doc_stride,
            max_query_length: squad.max_query_length,
            max_answer_length: squad.max_answer_length,
            n_best_size: squad.n_best_size,
            max_train_questions: squad.max_train_examples,
            max_eval_questions: squad.max_eval_examples,
        }
    }

    /// The window sizes of the features.
    pub fn sizes(&self) -> FeatureSizes {
        FeatureSizes {
            max_seq_length: self.max_seq_length,
            doc_stride: self.doc_stride,
            max_query_length: self.max_query_length,
        }
    }
}

/// Where the encoder weights of a run come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Init {
    /// An HF-format directory (`config.json` + `model.safetensors`): this run's pre-training
    /// checkpoint or a downloaded BERT.
    Pretrained {
        dir: PathBuf,
        /// `finetune.dropout`: replaces the checkpoint's dropout probabilities.
        dropout: Option<f64>,
    },
    /// Random weights (HF's `_init_weights`), same architecture.
    Scratch,
}

impl Init {
    /// The result key: `pretrained` or `scratch`.
    pub fn arm(&self) -> &'static str {
        match self {
            Init::Pretrained { .. } => "pretrained",
            Init::Scratch => "scratch",
        }
    }
}
