//! pipeline.toml: the one configuration file, with named profiles.
//!
//! The top-level tables are the `default` profile. `[profiles.NAME.<table>]` overlays
//! change only the keys they name. Every table denies unknown keys, and an error names the
//! key and its line. The main type is [`PipelineConfig`]; its tables keep the names of
//! BERT's flags (`max_seq_length`, `masked_lm_prob`) and HF's `BertConfig` (`hidden_size`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The whole configuration of one profile, after overlays are applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Where the run lives and the master seed.
    pub run: RunConfig,
    /// Raw pre-training text and held-out evaluation text.
    pub corpus: CorpusConfig,
    /// WordPiece vocabulary training.
    pub vocab: VocabConfig,
    /// Next-sentence pair sampling.
    pub pairs: PairsConfig,
    /// Masked-LM instance creation.
    pub mask: MaskConfig,
    /// Model sizes, HF `BertConfig` names.
    pub model: BertConfig,
    /// Pre-training loop.
    pub pretrain: PretrainConfig,
    /// Fine-tuning tasks and recipe.
    #[serde(default)]
    pub finetune: FinetuneConfig,
    /// Benchmark report.
    #[serde(default)]
    pub report: ReportConfig,
}

/// `[run]`: the run directory and the master seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Run directory holding the manifest and every artifact (relative to pipeline.toml).
    pub dir: PathBuf,
    /// Master seed; every stage derives its own seeds from it (`random_seed` in BERT).
    #[serde(default = "default_seed")]
    pub random_seed: u64,
    /// Worker threads for rayon and the model (0 = all cores).
    #[serde(default)]
    pub threads: usize,
    /// Megabytes of working memory the data stages (`pairs`, `mask`) hold at once: they
    /// work on fewer blocks or shards at a time than there are threads when more would not
    /// fit ([`crate::workers::items_in_flight`]). Not part of any fingerprint: outputs are
    /// the same whatever it is.
    #[serde(default = "default_data_memory_mb")]
    pub data_memory_mb: usize,
}

fn default_seed() -> u64 {
    12345
}

fn default_data_memory_mb() -> usize {
    256
}

/// `[corpus]`: the raw text, BERT format (one sentence per line, blank line between documents).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorpusConfig {
    /// Glob patterns of pre-training text files (relative to pipeline.toml).
    pub input: Vec<String>,
    /// Held-out text for MLM perplexity (WikiText-2), optional.
    #[serde(default)]
    pub heldout: Option<String>,
}

/// `[vocab]`: WordPiece training with the `tokenizers` crate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VocabConfig {
    /// Target vocabulary size, special tokens included. Must equal `model.vocab_size`.
    pub vocab_size: usize,
    /// Lowercase and strip accents (uncased BERT).
    #[serde(default = "yes")]
    pub lowercase: bool,
    /// Minimum pair frequency for a merge.
    #[serde(default = "default_min_frequency")]
    pub min_frequency: u64,
    /// Most distinct initial characters kept.
    #[serde(default = "default_limit_alphabet")]
    pub limit_alphabet: usize,
    /// Most distinct words the word count holds; past it the rarest are dropped
    /// ([`crate::vocab::WordCounter`]), so the stage's memory does not grow with the corpus.
    #[serde(default = "default_max_words")]
    pub max_words: usize,
}

fn yes() -> bool {
    true
}
fn default_min_frequency() -> u64 {
    2
}
fn default_limit_alphabet() -> usize {
    1000
}
fn default_max_words() -> usize {
    MAX_WORDS
}

/// The default `vocab.max_words`: 500,000 distinct words. The stage's peak grows by about
/// 250-280 bytes a word it trains on; on 899 MB of source code with 558,324 distinct words
/// it peaked at 218 MB with every word and at 189-192 MB at this limit (406,199 words
/// trained on), and a limit of a sixteenth of a corpus's distinct words tokenized held-out
/// text as well as all of them (docs/benchmarks.md, "The vocab stage's word limit").
pub const MAX_WORDS: usize = 500_000;

/// `[pairs]`: `create_instances_from_document` of Google's create_pretraining_data.py.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairsConfig {
    /// Maximum total length of `[CLS] A [SEP] B [SEP]`.
    pub max_seq_length: usize,
    /// Probability of a shorter target length (BERT: 0.1).
    pub short_seq_prob: f64,
    /// Passes over the corpus, each with other pairs and, later, other masks (BERT: 10).
    pub dupe_factor: usize,
    /// Documents held out from every input file for evaluation (fraction, 0..1).
    #[serde(default = "default_eval_fraction")]
    pub eval_fraction: f64,
    /// Pairs per output shard.
    #[serde(default = "default_shard_rows")]
    pub shard_rows: usize,
}

fn default_eval_fraction() -> f64 {
    0.02
}
fn default_shard_rows() -> usize {
    32768
}

/// `[mask]`: `create_masked_lm_predictions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskConfig {
    /// Fraction of tokens masked (BERT: 0.15).
    pub masked_lm_prob: f64,
    /// Most masked positions per sequence (BERT: 20 at length 128, 80 at 512).
    pub max_predictions_per_seq: usize,
    /// Mask all WordPiece pieces of a word together.
    #[serde(default)]
    pub do_whole_word_mask: bool,
}

/// `[model]`: HF `BertConfig`, same key names, so `config.json` is written straight from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    #[serde(default = "default_ln_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: usize,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_dropout() -> f64 {
    0.1
}
fn default_max_pos() -> usize {
    512
}
fn default_type_vocab() -> usize {
    2
}
fn default_init_range() -> f64 {
    0.02
}
fn default_ln_eps() -> f64 {
    1e-12
}

impl Default for BertConfig {
    /// bert-base-uncased.
    fn default() -> Self {
        BertConfig {
            vocab_size: 30522,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: default_act(),
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            initializer_range: 0.02,
            layer_norm_eps: 1e-12,
            pad_token_id: 0,
        }
    }
}

/// One `[[pretrain.phases]]` entry: BERT §A.2 trains 90% of the steps at sequence length
/// 128, then 10% at 512, continuing the same weights, optimizer state and learning-rate
/// schedule. The pairs and mask stages write instances for every phase's length.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainPhase {
    /// Sequence length of this phase's instances (`[CLS] A [SEP] B [SEP]`, padded).
    pub max_seq_length: usize,
    /// Optimizer steps in this phase.
    pub num_train_steps: usize,
    /// Most masked positions per sequence. Default: `mask.max_predictions_per_seq` scaled
    /// from `pairs.max_seq_length` to this length, rounded up ([`scaled_max_predictions`]:
    /// Google's 20 at 128 gives 80 at 512).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_predictions_per_seq: Option<usize>,
    /// Sequences per optimizer step in this phase. Default: `pretrain.train_batch_size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_batch_size: Option<usize>,
}

/// A pre-training phase as the stages run it, every default filled in
/// ([`PipelineConfig::pretrain_phases`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhasePlan {
    /// 1-based phase number, as in metrics rows and checkpoints.
    pub phase: usize,
    /// Sequence length of the phase's instances.
    pub max_seq_length: usize,
    /// Masked positions per sequence at most (the width of the shards' prediction columns).
    pub max_predictions_per_seq: usize,
    /// Sequences per optimizer step.
    pub train_batch_size: usize,
    /// Optimizer steps in the phase.
    pub num_train_steps: usize,
    /// Steps taken before the phase starts.
    pub first_step: usize,
}

impl PhasePlan {
    /// The step count at which the phase ends (exclusive).
    pub fn end_step(&self) -> usize {
        self.first_step + self.num_train_steps
    }
}

/// The shape of the instances one sequence length gets from the data stages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct InstanceShape {
    /// Tokens per row.
    pub max_seq_length: usize,
    /// Prediction slots per row.
    pub max_predictions_per_seq: usize,
}

/// `max_predictions_per_seq` scaled from `reference_length` to `max_seq_length`, rounded up:
/// the same fraction of the sequence may be predicted at every length (20 at 128 is 80 at
/// 512, Google's pair of values; 10 at 64 is 20 at 128).
pub fn scaled_max_predictions(
    max_predictions_per_seq: usize,
    reference_length: usize,
    max_seq_length: usize,
) -> usize {
    (max_predictions_per_seq * max_seq_length).div_ceil(reference_length.max(1))
}

impl PipelineConfig {
    /// True when `[[pretrain.phases]]` is given (several sequence lengths).
    pub fn has_phases(&self) -> bool {
        !self.pretrain.phases.is_empty()
    }

    /// The pre-training phases with defaults filled in. Without `[[pretrain.phases]]` it is
    /// one phase at `pairs.max_seq_length`, `mask.max_predictions_per_seq`,
    /// `pretrain.train_batch_size` and `pretrain.num_train_steps`.
    pub fn pretrain_phases(&self) -> Vec<PhasePlan> {
        if !self.has_phases() {
            return vec![PhasePlan {
                phase: 1,
                max_seq_length: self.pairs.max_seq_length,
                max_predictions_per_seq: self.mask.max_predictions_per_seq,
                train_batch_size: self.pretrain.train_batch_size,
                num_train_steps: self.pretrain.num_train_steps,
                first_step: 0,
            }];
        }
        let mut first_step = 0;
        self.pretrain
            .phases
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let plan = PhasePlan {
                    phase: i + 1,
                    max_seq_length: p.max_seq_length,
                    max_predictions_per_seq: p.max_predictions_per_seq.unwrap_or_else(|| {
                        scaled_max_predictions(
                            self.mask.max_predictions_per_seq,
                            self.pairs.max_seq_length,
                            p.max_seq_length,
                        )
                    }),
                    train_batch_size: p.train_batch_size.unwrap_or(self.pretrain.train_batch_size),
                    num_train_steps: p.num_train_steps,
                    first_step,
                };
                first_step += p.num_train_steps;
                plan
            })
            .collect()
    }

    /// The distinct instance shapes the pairs and mask stages write, by ascending length:
    /// one per phase sequence length (Google runs create_pretraining_data.py once per length).
    pub fn instance_shapes(&self) -> Vec<InstanceShape> {
        let mut shapes: Vec<InstanceShape> = self
            .pretrain_phases()
            .iter()
            .map(|p| InstanceShape {
                max_seq_length: p.max_seq_length,
                max_predictions_per_seq: p.max_predictions_per_seq,
            })
            .collect();
        shapes.sort();
        shapes.dedup();
        shapes
    }
}

/// `[pretrain]`: the MLM + NSP training loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainConfig {
    /// Sequences per optimizer step (before accumulation split).
    pub train_batch_size: usize,
    /// Micro-batches accumulated per optimizer step.
    #[serde(default = "one")]
    pub gradient_accumulation_steps: usize,
    /// Peak learning rate (BERT: 1e-4).
    pub learning_rate: f64,
    /// Total optimizer steps; with `phases`, the sum of theirs.
    pub num_train_steps: usize,
    /// Linear warmup steps.
    pub num_warmup_steps: usize,
    /// AdamW decoupled weight decay, not applied to LayerNorm and bias (BERT: 0.01).
    #[serde(default = "default_weight_decay")]
    pub weight_decay: f64,
    #[serde(default = "default_beta1")]
    pub adam_beta1: f64,
    #[serde(default = "default_beta2")]
    pub adam_beta2: f64,
    #[serde(default = "default_adam_eps")]
    pub adam_epsilon: f64,
    /// Global gradient-norm clip (BERT: 1.0).
    #[serde(default = "default_clip")]
    pub max_grad_norm: f64,
    /// Log metrics every N steps.
    #[serde(default = "default_log_every")]
    pub log_every_steps: usize,
    /// Evaluate on the held-out shard every N steps (0 = only at the end).
    #[serde(default)]
    pub eval_every_steps: usize,
    /// Held-out batches per evaluation.
    #[serde(default = "default_eval_batches")]
    pub eval_batches: usize,
    /// Checkpoint every N steps (0 = only at the end).
    #[serde(default)]
    pub save_checkpoints_steps: usize,
    /// Checkpoints kept on disk.
    #[serde(default = "default_keep")]
    pub keep_checkpoints: usize,
    /// Instances held in the streaming shuffle buffer.
    #[serde(default = "default_shuffle_buffer")]
    pub shuffle_buffer: usize,
    /// Optional seq-128-then-512 schedule (`[[pretrain.phases]]`); empty means one phase
    /// at `pairs.max_seq_length`.
    #[serde(default)]
    pub phases: Vec<PretrainPhase>,
    /// Arithmetic of the training step: `"f32"` (the default) or `"bf16"` (mixed precision,
    /// GPU only: see [`Precision`]).
    #[serde(default)]
    pub precision: Precision,
}

/// `pretrain.precision` and `finetune.precision`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// f32 everywhere.
    #[default]
    F32,
    /// bf16 matrix products with f32 accumulation, f32 master weights, gradients, optimizer
    /// state and LayerNorm/softmax statistics. Needs a CUDA build (docs/gpu.md); a CPU build
    /// rejects it when the config is loaded.
    Bf16,
}

impl Precision {
    /// The value as written in pipeline.toml.
    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl PretrainConfig {
    /// Optimizer steps of each phase, in order (one entry without `phases`).
    pub fn phase_steps(&self) -> Vec<usize> {
        if self.phases.is_empty() {
            vec![self.num_train_steps]
        } else {
            self.phases.iter().map(|p| p.num_train_steps).collect()
        }
    }
}

fn one() -> usize {
    1
}
fn default_weight_decay() -> f64 {
    0.01
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_adam_eps() -> f64 {
    1e-6
}
fn default_clip() -> f64 {
    1.0
}
fn default_log_every() -> usize {
    10
}
fn default_eval_batches() -> usize {
    20
}
fn default_keep() -> usize {
    2
}
fn default_shuffle_buffer() -> usize {
    10000
}

/// `[finetune]`: the GLUE / SQuAD recipe of the paper, per-task overrides and custom tasks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneConfig {
    /// Task names to run: GLUE presets (`cola`, `sst2`, `mrpc`, `stsb`, `qqp`, `mnli`, `qnli`,
    /// `rte`, `wnli`), `squad`, or a name under `[finetune.tasks]`.
    #[serde(default)]
    pub tasks: Vec<String>,
    /// Where the GLUE data lives (folders `CoLA/`, `SST-2/`, ...).
    #[serde(default = "default_glue_dir")]
    pub glue_dir: PathBuf,
    /// SQuAD v1.1 files.
    #[serde(default)]
    pub squad: SquadConfig,
    /// `pretrained` (this run's checkpoint), `scratch`, or a path to an HF-format BERT directory.
    #[serde(default = "default_init")]
    pub init: String,
    /// Also fine-tune the same model from random weights, for the paper's comparison.
    #[serde(default)]
    pub compare_scratch: bool,
    /// Seeds per task (mean, median and std are reported over them).
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    #[serde(default = "default_ft_lr")]
    pub learning_rate: f64,
    /// Learning-rate sweep (BERT §4.1 picks the best of {5e-5, 4e-5, 3e-5, 2e-5} on dev):
    /// every value is tried for every arm and seed, and each arm reports the value with the
    /// best mean dev score. Empty: `learning_rate` alone.
    #[serde(default)]
    pub learning_rates: Vec<f64>,
    #[serde(default = "default_ft_batch")]
    pub train_batch_size: usize,
    #[serde(default = "default_ft_epochs")]
    pub num_train_epochs: f64,
    #[serde(default = "default_warmup_prop")]
    pub warmup_proportion: f64,
    #[serde(default = "default_ft_seq")]
    pub max_seq_length: usize,
    /// Dropout while fine-tuning, replacing the checkpoint's `hidden_dropout_prob` and
    /// `attention_probs_dropout_prob` (HF `from_pretrained(dir, hidden_dropout_prob=0.1)`):
    /// for a checkpoint pre-trained without dropout. Unset: the checkpoint's values.
    #[serde(default)]
    pub dropout: Option<f64>,
    /// Subsample training sets to at most this many rows (0 = all); reported when used.
    #[serde(default)]
    pub max_train_examples: usize,
    /// Subsample dev sets to at most this many rows (0 = all).
    #[serde(default)]
    pub max_eval_examples: usize,
    /// Per-task overrides of the recipe (keys as above).
    #[serde(default)]
    pub overrides: BTreeMap<String, TaskOverride>,
    /// Arithmetic of the fine-tuning step, as `pretrain.precision`.
    #[serde(default)]
    pub precision: Precision,
    /// Tasks defined in pipeline.toml alone.
    #[serde(default)]
    pub custom: BTreeMap<String, CustomTask>,
}

fn default_glue_dir() -> PathBuf {
    PathBuf::from("datasets/glue")
}
fn default_init() -> String {
    "pretrained".into()
}
fn default_seeds() -> Vec<u64> {
    vec![1]
}
fn default_ft_lr() -> f64 {
    5e-5
}
fn default_ft_batch() -> usize {
    32
}
fn default_ft_epochs() -> f64 {
    3.0
}
fn default_warmup_prop() -> f64 {
    0.1
}
fn default_ft_seq() -> usize {
    128
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        toml::from_str("").expect("all finetune keys have defaults")
    }
}

/// Per-task recipe overrides.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskOverride {
    pub learning_rate: Option<f64>,
    pub learning_rates: Option<Vec<f64>>,
    pub warmup_proportion: Option<f64>,
    pub train_batch_size: Option<usize>,
    pub num_train_epochs: Option<f64>,
    pub max_seq_length: Option<usize>,
    pub max_train_examples: Option<usize>,
    pub max_eval_examples: Option<usize>,
    pub seeds: Option<Vec<u64>>,
}

/// A classification or regression task defined only in pipeline.toml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomTask {
    /// Training file (TSV or CSV).
    pub train: PathBuf,
    /// Dev file used for the reported metrics.
    pub dev: PathBuf,
    /// Optional test file (predictions are written for it).
    #[serde(default)]
    pub test: Option<PathBuf>,
    /// Field delimiter: "\t" or ",".
    #[serde(default = "default_delimiter")]
    pub delimiter: String,
    /// Honour double quotes around fields (CSV style). GLUE files need `false`.
    #[serde(default)]
    pub quoting: bool,
    /// The first row holds column names.
    #[serde(default = "yes")]
    pub header: bool,
    /// Column (name when `header`, else 0-based index as a string) of the first text.
    pub text_a: String,
    /// Column of the second text, for pair tasks.
    #[serde(default)]
    pub text_b: Option<String>,
    /// Column of the label.
    pub label: String,
    /// Label values for classification; empty means regression.
    #[serde(default)]
    pub labels: Vec<String>,
    /// `accuracy`, `f1`, `mcc`, `pearson`, `spearman`; the first is the headline.
    #[serde(default = "default_metrics")]
    pub metrics: Vec<String>,
}

fn default_delimiter() -> String {
    "\t".into()
}
fn default_metrics() -> Vec<String> {
    vec!["accuracy".into()]
}

/// SQuAD v1.1 settings (paper: doc stride 128, max query 64, max answer 30).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SquadConfig {
    /// Official train file; when absent, half the dev articles train and half evaluate.
    #[serde(default)]
    pub train_file: Option<PathBuf>,
    #[serde(default = "default_squad_dev")]
    pub dev_file: PathBuf,
    #[serde(default = "default_squad_seq")]
    pub max_seq_length: usize,
    #[serde(default = "default_doc_stride")]
    pub doc_stride: usize,
    #[serde(default = "default_max_query")]
    pub max_query_length: usize,
    #[serde(default = "default_max_answer")]
    pub max_answer_length: usize,
    #[serde(default = "default_n_best")]
    pub n_best_size: usize,
    /// Cap on training questions (0 = all).
    #[serde(default)]
    pub max_train_examples: usize,
    /// Cap on evaluated questions (0 = all).
    #[serde(default)]
    pub max_eval_examples: usize,
}

fn default_squad_dev() -> PathBuf {
    PathBuf::from("datasets/squad/dev-v1.1.json")
}
fn default_squad_seq() -> usize {
    384
}
fn default_doc_stride() -> usize {
    128
}
fn default_max_query() -> usize {
    64
}
fn default_max_answer() -> usize {
    30
}
fn default_n_best() -> usize {
    20
}

impl Default for SquadConfig {
    fn default() -> Self {
        toml::from_str("").expect("all squad keys have defaults")
    }
}

/// `[report]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportConfig {
    /// Title printed at the top of the report.
    #[serde(default)]
    pub title: Option<String>,
}

/// A loaded configuration: the profile's values plus where it came from.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The profile's settings.
    pub config: PipelineConfig,
    /// Profile name (`default` for the top-level tables).
    pub profile: String,
    /// Directory of pipeline.toml, as `--config` named it; relative paths resolve against it.
    pub root: PathBuf,
    /// `root` made absolute, and with symlinks resolved: what [`crate::stage::input_id`]
    /// takes paths relative to, however `--config` was spelled.
    pub(crate) absolute_roots: [PathBuf; 2],
    /// The file it was read from.
    pub path: PathBuf,
    /// `corpus.input` as last expanded, with the files it matched
    /// ([`crate::stage::corpus_files`]): a stage asks several times, and expanding the globs
    /// and checking every file against the tasks' evaluation files is not free on a large
    /// corpus.
    pub(crate) corpus_files: std::sync::OnceLock<(Vec<String>, Vec<PathBuf>)>,
}

impl LoadedConfig {
    /// Resolves a path from the config against the directory of pipeline.toml.
    pub fn resolve(&self, p: impl AsRef<Path>) -> PathBuf {
        let p = p.as_ref();
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.root.join(p)
        }
    }

    /// The run directory.
    pub fn run_dir(&self) -> PathBuf {
        self.resolve(&self.config.run.dir)
    }
}

/// Reads `path` and returns the named profile (`default` = the top-level tables).
pub fn load_config(path: &Path, profile: &str) -> Result<LoadedConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::Config(format!(
            "{}: {e} (pass --config PATH or run from the repository root)",
            path.display()
        ))
    })?;
    let config = parse_config(&text, profile)
        .map_err(|msg| Error::Config(format!("{}: {msg}", path.display())))?;
    let root = path
        .parent()
        .map(|p| {
            if p.as_os_str().is_empty() {
                Path::new(".")
            } else {
                p
            }
        })
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let absolute = std::path::absolute(&root).unwrap_or_else(|_| root.clone());
    let canonical = std::fs::canonicalize(&root).unwrap_or_else(|_| absolute.clone());
    Ok(LoadedConfig {
        config,
        profile: profile.to_string(),
        root,
        absolute_roots: [absolute, canonical],
        path: path.to_path_buf(),
        corpus_files: Default::default(),
    })
}

/// Parses the text of pipeline.toml and applies the profile overlay. The error is one line
/// naming the key and its line number (the profile's line when the profile sets the key).
pub fn parse_config(text: &str, profile: &str) -> std::result::Result<PipelineConfig, String> {
    let mut doc: toml::Table = toml::from_str(text).map_err(|e| one_line_toml_error(&e, text))?;
    let profiles = match doc.remove("profiles") {
        None => toml::Table::new(),
        Some(toml::Value::Table(t)) => t,
        Some(_) => return Err("`profiles` must be a table of tables".into()),
    };
    // Validate the base document with spans, so unknown keys get a line number.
    let base: PipelineConfig =
        toml::from_str(&strip_profiles(text)).map_err(|e| one_line_toml_error(&e, text))?;
    if profile == "default" {
        validate(&base).map_err(|msg| locate(text, profile, msg))?;
        check_precision(&base, text, None)?;
        return Ok(base);
    }
    let Some(overlay) = profiles.get(profile) else {
        let mut names: Vec<&str> = profiles.keys().map(String::as_str).collect();
        names.insert(0, "default");
        return Err(format!(
            "no profile `{profile}`; known profiles: {}",
            names.join(", ")
        ));
    };
    let mut merged = toml::Value::Table(doc);
    merge(&mut merged, overlay.clone());
    let config: PipelineConfig = merged.clone().try_into().map_err(|e: toml::de::Error| {
        let msg = e.message().replace('\n', " ");
        // Where is the offending value? Re-read the merged tables as text to get a span,
        // then find the key's line in pipeline.toml (the profile's, else the base table's).
        let key = unknown_key(&msg).or_else(|| {
            let flat = toml::to_string(&merged).ok()?;
            let err = toml::from_str::<PipelineConfig>(&flat).err()?;
            dotted_key_at(&flat, err.span()?.start)
        });
        let line = key.as_deref().and_then(|k| {
            key_line(text, profile, k).or_else(|| find_key_line(text, k.rsplit('.').next()?))
        });
        match (key, line) {
            (Some(k), Some(l)) => format!("line {l}: in [profiles.{profile}]: {k}: {msg}"),
            (Some(k), None) => format!("in [profiles.{profile}]: {k}: {msg}"),
            _ => format!("in [profiles.{profile}]: {msg}"),
        }
    })?;
    validate(&config).map_err(|msg| locate(text, profile, msg))?;
    check_precision(&config, text, Some(profile))?;
    Ok(config)
}

/// `pretrain.precision` and `finetune.precision` against what this build can run: `bf16`
/// needs the GPU's mixed-precision step, which a CPU build does not have (and the CUDA build
/// does not have yet either: docs/gpu.md lists what is owed). The error names the key and its
/// line.
fn check_precision(
    c: &PipelineConfig,
    text: &str,
    profile: Option<&str>,
) -> std::result::Result<(), String> {
    for (table, precision) in [
        ("pretrain", c.pretrain.precision),
        ("finetune", c.finetune.precision),
    ] {
        if precision == Precision::F32 {
            continue;
        }
        let why = if cfg!(feature = "cuda") {
            "the bf16 training step is not built yet (docs/gpu.md)"
        } else {
            "this is a CPU build, and bf16 training needs the GPU (cargo build --features cuda)"
        };
        let msg = format!(
            "{table}.precision = \"{}\": {why}; set precision = \"f32\"",
            precision.as_str()
        );
        let line = profile
            .and_then(|p| find_table_key_line(text, &format!("profiles.{p}.{table}"), "precision"))
            .or_else(|| find_table_key_line(text, table, "precision"));
        return Err(match line {
            Some(l) => format!("line {l}: {msg}"),
            None => msg,
        });
    }
    Ok(())
}

/// The line (1-based) of `key = ...` in the table `[table]`, the last one if repeated.
fn find_table_key_line(text: &str, table: &str, key: &str) -> Option<usize> {
    let mut current = String::new();
    let mut found = None;
    for (i, l) in text.lines().enumerate() {
        let t = l.trim();
        if t.starts_with('[') {
            current = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            continue;
        }
        let Some((k, _)) = t.split_once('=') else {
            continue;
        };
        if current == table && k.trim() == key {
            found = Some(i + 1);
        }
    }
    found
}

/// Prefixes a validation message, which starts with the dotted key it is about
/// (`pretrain.learning_rate = ...`), with the line that sets the key.
fn locate(text: &str, profile: &str, msg: String) -> String {
    let key = msg
        .split([' ', ':'])
        .next()
        .unwrap_or_default()
        .trim_end_matches(',');
    match key_line(text, profile, key) {
        Some(line) => format!("line {line}: {msg}"),
        None => msg,
    }
}

/// The line (1-based) that sets the dotted `key` (`pretrain.phases[1].num_train_steps`,
/// `finetune.squad.doc_stride`) for `profile`: the profile's overlay first, then the base
/// tables. None when the key is not written (its default is in use).
pub fn key_line(text: &str, profile: &str, key: &str) -> Option<usize> {
    let (table, leaf) = key.rsplit_once('.')?;
    let (table, index) = match table.strip_suffix(']').and_then(|t| t.rsplit_once('[')) {
        Some((t, i)) => (t, i.parse::<usize>().ok()),
        None => (table, None),
    };
    let overlay = format!("profiles.{profile}.{table}");
    let tables: Vec<&str> = if profile == "default" {
        vec![table]
    } else {
        vec![overlay.as_str(), table]
    };
    tables
        .into_iter()
        .find_map(|t| line_in_table(text, t, index, leaf))
}

fn line_in_table(text: &str, table: &str, index: Option<usize>, leaf: &str) -> Option<usize> {
    let mut inside = false;
    let mut seen = 0usize;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(name) = t.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            inside = name.trim() == table;
            if inside {
                seen += 1;
                inside = index.is_none_or(|want| want + 1 == seen);
            }
            continue;
        }
        if let Some(name) = t.strip_prefix('[').and_then(|r| r.split(']').next()) {
            inside = name.trim() == table && index.is_none();
            continue;
        }
        if inside && t.split('=').next().map(str::trim) == Some(leaf) && t.contains('=') {
            return Some(i + 1);
        }
    }
    None
}

/// The dotted key of the `key = value` line holding byte `offset` of `text` (a TOML
/// document with `[table]` and `[[array]]` headers).
fn dotted_key_at(text: &str, offset: usize) -> Option<String> {
    let before = &text[..offset.min(text.len())];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[line_start..]
        .find('\n')
        .map_or(text.len(), |i| line_start + i);
    let line = &text[line_start..line_end];
    let leaf = line.split('=').next()?.trim().trim_matches('"');
    if !line.contains('=') || leaf.is_empty() {
        return None;
    }
    let mut table = String::new();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for l in text[..line_start].lines() {
        let t = l.trim();
        if let Some(name) = t.strip_prefix("[[").and_then(|r| r.split("]]").next()) {
            let n = counts.entry(name.to_string()).or_default();
            table = format!("{name}[{n}]");
            *n += 1;
        } else if let Some(name) = t.strip_prefix('[').and_then(|r| r.split(']').next()) {
            table = name.to_string();
        }
    }
    Some(if table.is_empty() {
        leaf.to_string()
    } else {
        format!("{table}.{leaf}")
    })
}

/// Removes everything from the first `[profiles...]` header on, keeping line numbers of the
/// base tables unchanged.
fn strip_profiles(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_profiles = false;
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with('[') {
            let name = t.trim_start_matches('[').trim_start();
            in_profiles = name.starts_with("profiles.") || name.starts_with("profiles]");
        }
        if !in_profiles {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

fn merge(base: &mut toml::Value, overlay: toml::Value) {
    match (base, overlay) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) if slot.is_table() && v.is_table() => merge(slot, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

fn unknown_key(msg: &str) -> Option<String> {
    let rest = msg.split("unknown field `").nth(1)?;
    Some(rest.split('`').next()?.to_string())
}

fn find_key_line(text: &str, key: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    lines.iter().enumerate().rev().find_map(|(i, l)| {
        let t = l.trim_start();
        let k = t.split('=').next()?.trim();
        (t.contains('=') && k == key).then_some(i + 1)
    })
}

fn one_line_toml_error(e: &toml::de::Error, text: &str) -> String {
    let msg = e.message().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            // Name the key when the span is a value (`dupe_factor = -1`).
            match dotted_key_at(text, span.start).filter(|_| !msg.contains("unknown field")) {
                Some(key) => format!("line {line}: {key}: {msg}"),
                None => format!("line {line}: {msg}"),
            }
        }
        None => msg,
    }
}

/// Checks serde cannot express: ranges, cross-table agreement. Every message starts with
/// the dotted key it is about (the caller adds the key's line) and says what to set.
fn validate(c: &PipelineConfig) -> std::result::Result<(), String> {
    if c.corpus.input.is_empty() {
        return Err("corpus.input = []: list at least one text file or glob".into());
    }
    at_least("run.data_memory_mb", c.run.data_memory_mb, 1)?;
    validate_vocab(c)?;
    validate_data(c)?;
    validate_model(&c.model)?;
    validate_phases(c)?;
    validate_pretrain(c)?;
    validate_finetune(c)
}

fn at_least(key: &str, value: usize, min: usize) -> std::result::Result<(), String> {
    if value < min {
        return Err(format!("{key} = {value} must be at least {min}"));
    }
    Ok(())
}

fn positive(key: &str, value: f64) -> std::result::Result<(), String> {
    if !(value.is_finite() && value > 0.0) {
        return Err(format!("{key} = {value} must be a positive number"));
    }
    Ok(())
}

/// `value` within `[0, 1)`: probabilities of dropping, Adam's betas.
fn fraction_below_one(key: &str, value: f64) -> std::result::Result<(), String> {
    if !(0.0..1.0).contains(&value) {
        return Err(format!(
            "{key} = {value} must be within 0..1 (exclusive of 1)"
        ));
    }
    Ok(())
}

fn validate_vocab(c: &PipelineConfig) -> std::result::Result<(), String> {
    if c.vocab.vocab_size != c.model.vocab_size {
        return Err(format!(
            "vocab.vocab_size = {} but model.vocab_size = {}: set both to the same value",
            c.vocab.vocab_size, c.model.vocab_size
        ));
    }
    // The five special tokens and at least one piece of text.
    at_least("vocab.vocab_size", c.vocab.vocab_size, 6)?;
    at_least("vocab.limit_alphabet", c.vocab.limit_alphabet, 1)?;
    at_least("vocab.max_words", c.vocab.max_words, 1000)
}

fn validate_data(c: &PipelineConfig) -> std::result::Result<(), String> {
    let p = &c.pairs;
    if p.max_seq_length > c.model.max_position_embeddings {
        return Err(format!(
            "pairs.max_seq_length = {} exceeds model.max_position_embeddings = {}",
            p.max_seq_length, c.model.max_position_embeddings
        ));
    }
    at_least("pairs.max_seq_length", p.max_seq_length, 8)?;
    if !(0.0..=1.0).contains(&p.short_seq_prob) {
        return Err(format!(
            "pairs.short_seq_prob = {} must be within 0..1",
            p.short_seq_prob
        ));
    }
    fraction_below_one("pairs.eval_fraction", p.eval_fraction)?;
    at_least("pairs.dupe_factor", p.dupe_factor, 1)?;
    at_least("pairs.shard_rows", p.shard_rows, 1)?;
    let m = &c.mask;
    if !(m.masked_lm_prob > 0.0 && m.masked_lm_prob < 1.0) {
        return Err(format!(
            "mask.masked_lm_prob = {} must be within (0, 1)",
            m.masked_lm_prob
        ));
    }
    // Without phases the shards are `pairs.max_seq_length` long; with phases every phase's
    // cap is checked against its own length (validate_phases).
    if !c.has_phases()
        && (m.max_predictions_per_seq == 0 || m.max_predictions_per_seq > p.max_seq_length - 3)
    {
        return Err(format!(
            "mask.max_predictions_per_seq = {} must be within 1..={} (pairs.max_seq_length - 3)",
            m.max_predictions_per_seq,
            p.max_seq_length - 3
        ));
    }
    at_least("mask.max_predictions_per_seq", m.max_predictions_per_seq, 1)
}

fn validate_model(m: &BertConfig) -> std::result::Result<(), String> {
    at_least("model.hidden_size", m.hidden_size, 1)?;
    at_least("model.num_hidden_layers", m.num_hidden_layers, 1)?;
    if m.num_attention_heads == 0 || !m.hidden_size.is_multiple_of(m.num_attention_heads) {
        return Err(format!(
            "model.num_attention_heads = {} does not divide model.hidden_size = {}: pick a divisor of it",
            m.num_attention_heads, m.hidden_size
        ));
    }
    at_least("model.intermediate_size", m.intermediate_size, 1)?;
    if m.hidden_act != "gelu" {
        return Err(format!(
            "model.hidden_act = {:?}: only \"gelu\" (exact erf GELU, BERT's) is supported",
            m.hidden_act
        ));
    }
    fraction_below_one("model.hidden_dropout_prob", m.hidden_dropout_prob)?;
    fraction_below_one(
        "model.attention_probs_dropout_prob",
        m.attention_probs_dropout_prob,
    )?;
    at_least(
        "model.max_position_embeddings",
        m.max_position_embeddings,
        8,
    )?;
    at_least("model.type_vocab_size", m.type_vocab_size, 2)?;
    positive("model.initializer_range", m.initializer_range)?;
    positive("model.layer_norm_eps", m.layer_norm_eps)?;
    if m.pad_token_id >= m.vocab_size {
        return Err(format!(
            "model.pad_token_id = {} must be below model.vocab_size = {}",
            m.pad_token_id, m.vocab_size
        ));
    }
    Ok(())
}

fn validate_pretrain(c: &PipelineConfig) -> std::result::Result<(), String> {
    let p = &c.pretrain;
    at_least("pretrain.train_batch_size", p.train_batch_size, 1)?;
    at_least(
        "pretrain.gradient_accumulation_steps",
        p.gradient_accumulation_steps,
        1,
    )?;
    if !p
        .train_batch_size
        .is_multiple_of(p.gradient_accumulation_steps)
    {
        return Err(format!(
            "pretrain.gradient_accumulation_steps = {} does not divide pretrain.train_batch_size = {}",
            p.gradient_accumulation_steps, p.train_batch_size
        ));
    }
    positive("pretrain.learning_rate", p.learning_rate)?;
    if !c.has_phases() && p.num_train_steps == 0 {
        return Err("pretrain.num_train_steps = 0: train at least 1 step".into());
    }
    let total: usize = p.phase_steps().iter().sum();
    if p.num_warmup_steps > total {
        return Err(format!(
            "pretrain.num_warmup_steps = {} exceeds the {total} training steps: warm up for at most pretrain.num_train_steps",
            p.num_warmup_steps
        ));
    }
    if !(p.weight_decay.is_finite() && p.weight_decay >= 0.0) {
        return Err(format!(
            "pretrain.weight_decay = {} must be 0 or positive",
            p.weight_decay
        ));
    }
    fraction_below_one("pretrain.adam_beta1", p.adam_beta1)?;
    fraction_below_one("pretrain.adam_beta2", p.adam_beta2)?;
    positive("pretrain.adam_epsilon", p.adam_epsilon)?;
    if !(p.max_grad_norm.is_finite() && p.max_grad_norm >= 0.0) {
        return Err(format!(
            "pretrain.max_grad_norm = {} must be 0 (no clipping) or positive",
            p.max_grad_norm
        ));
    }
    at_least("pretrain.log_every_steps", p.log_every_steps, 1)?;
    at_least("pretrain.eval_batches", p.eval_batches, 1)?;
    at_least("pretrain.keep_checkpoints", p.keep_checkpoints, 1)?;
    at_least("pretrain.shuffle_buffer", p.shuffle_buffer, 1)
}

/// The recipe keys shared by `[finetune]` and `[finetune.overrides.TASK]`.
struct Recipe<'a> {
    learning_rate: Option<f64>,
    learning_rates: Option<&'a [f64]>,
    warmup_proportion: Option<f64>,
    train_batch_size: Option<usize>,
    num_train_epochs: Option<f64>,
    max_seq_length: Option<usize>,
    seeds: Option<&'a [u64]>,
}

fn validate_recipe(at: &str, r: &Recipe<'_>) -> std::result::Result<(), String> {
    if let Some(lr) = r.learning_rate {
        positive(&format!("{at}.learning_rate"), lr)?;
    }
    for lr in r.learning_rates.unwrap_or_default() {
        positive(&format!("{at}.learning_rates"), *lr)?;
    }
    if let Some(w) = r.warmup_proportion {
        if !(0.0..=1.0).contains(&w) {
            return Err(format!("{at}.warmup_proportion = {w} must be within 0..1"));
        }
    }
    if let Some(b) = r.train_batch_size {
        at_least(&format!("{at}.train_batch_size"), b, 1)?;
    }
    if let Some(e) = r.num_train_epochs {
        positive(&format!("{at}.num_train_epochs"), e)?;
    }
    // Not checked against model.max_position_embeddings: the model fine-tuned may be an HF
    // directory's, and a profile that never fine-tunes need not set it.
    if let Some(len) = r.max_seq_length {
        at_least(&format!("{at}.max_seq_length"), len, 8)?;
    }
    if r.seeds.is_some_and(|s| s.is_empty()) {
        return Err(format!("{at}.seeds = []: give at least one seed, e.g. [1]"));
    }
    Ok(())
}

/// Fine-tuning metrics a custom task may name.
pub const TASK_METRICS: [&str; 5] = ["accuracy", "f1", "mcc", "pearson", "spearman"];

fn validate_finetune(c: &PipelineConfig) -> std::result::Result<(), String> {
    let f = &c.finetune;
    validate_recipe(
        "finetune",
        &Recipe {
            learning_rate: Some(f.learning_rate),
            learning_rates: Some(&f.learning_rates),
            warmup_proportion: Some(f.warmup_proportion),
            train_batch_size: Some(f.train_batch_size),
            num_train_epochs: Some(f.num_train_epochs),
            max_seq_length: Some(f.max_seq_length),
            seeds: Some(&f.seeds),
        },
    )?;
    if let Some(p) = f.dropout {
        fraction_below_one("finetune.dropout", p)?;
    }
    if f.init.trim().is_empty() {
        return Err(
            "finetune.init = \"\": use \"pretrained\", \"scratch\" or an HF model directory".into(),
        );
    }
    for (task, o) in &f.overrides {
        validate_recipe(
            &format!("finetune.overrides.{task}"),
            &Recipe {
                learning_rate: o.learning_rate,
                learning_rates: o.learning_rates.as_deref(),
                warmup_proportion: o.warmup_proportion,
                train_batch_size: o.train_batch_size,
                num_train_epochs: o.num_train_epochs,
                max_seq_length: o.max_seq_length,
                seeds: o.seeds.as_deref(),
            },
        )?;
    }
    for (name, t) in &f.custom {
        let at = format!("finetune.custom.{name}");
        if t.delimiter != "\t" && t.delimiter != "," {
            return Err(format!(
                "{at}.delimiter = {:?}: use \"\\t\" or \",\"",
                t.delimiter
            ));
        }
        if t.metrics.is_empty() {
            return Err(format!(
                "{at}.metrics = []: name at least one of {}",
                TASK_METRICS.join(", ")
            ));
        }
        if let Some(m) = t
            .metrics
            .iter()
            .find(|m| !TASK_METRICS.contains(&m.as_str()))
        {
            return Err(format!(
                "{at}.metrics: unknown metric `{m}`; metrics are {}",
                TASK_METRICS.join(", ")
            ));
        }
    }
    let s = &f.squad;
    at_least("finetune.squad.max_seq_length", s.max_seq_length, 8)?;
    at_least("finetune.squad.doc_stride", s.doc_stride, 1)?;
    at_least("finetune.squad.max_query_length", s.max_query_length, 1)?;
    if s.max_query_length + 3 >= s.max_seq_length {
        return Err(format!(
            "finetune.squad.max_query_length = {} leaves no room for the passage in finetune.squad.max_seq_length = {}",
            s.max_query_length, s.max_seq_length
        ));
    }
    at_least("finetune.squad.max_answer_length", s.max_answer_length, 1)?;
    at_least("finetune.squad.n_best_size", s.n_best_size, 1)
}

/// Checks `[[pretrain.phases]]`: each phase fits the model, has steps, a batch the
/// accumulation divides, room for its predictions; one shape per length; the steps add up.
fn validate_phases(c: &PipelineConfig) -> std::result::Result<(), String> {
    if !c.has_phases() {
        return Ok(());
    }
    let accumulation = c.pretrain.gradient_accumulation_steps;
    let plans = c.pretrain_phases();
    for p in &plans {
        let at = format!("pretrain.phases[{}]", p.phase - 1);
        if p.max_seq_length > c.model.max_position_embeddings {
            return Err(format!(
                "{at}.max_seq_length = {} exceeds model.max_position_embeddings = {}: lower it or raise max_position_embeddings",
                p.max_seq_length, c.model.max_position_embeddings
            ));
        }
        if p.max_seq_length < 8 {
            return Err(format!(
                "{at}.max_seq_length = {} is too short: use at least 8",
                p.max_seq_length
            ));
        }
        if p.num_train_steps == 0 {
            return Err(format!(
                "{at}.num_train_steps = 0: give the phase at least 1 step or remove it"
            ));
        }
        if p.max_predictions_per_seq == 0 || p.max_predictions_per_seq > p.max_seq_length - 3 {
            return Err(format!(
                "{at}.max_predictions_per_seq = {} must be within 1..={} (max_seq_length - 3)",
                p.max_predictions_per_seq,
                p.max_seq_length - 3
            ));
        }
        if p.train_batch_size == 0 || !p.train_batch_size.is_multiple_of(accumulation) {
            return Err(format!(
                "{at}.train_batch_size = {} must be a positive multiple of pretrain.gradient_accumulation_steps = {accumulation}",
                p.train_batch_size
            ));
        }
        if let Some(other) = plans.iter().find(|o| {
            o.max_seq_length == p.max_seq_length
                && o.max_predictions_per_seq != p.max_predictions_per_seq
        }) {
            return Err(format!(
                "{at} and pretrain.phases[{}] share max_seq_length = {} but not max_predictions_per_seq ({} vs {}): the mask stage writes one set of shards per length; make them equal",
                other.phase - 1,
                p.max_seq_length,
                p.max_predictions_per_seq,
                other.max_predictions_per_seq
            ));
        }
    }
    let sum: usize = plans.iter().map(|p| p.num_train_steps).sum();
    if c.pretrain.num_train_steps != sum {
        return Err(format!(
            "pretrain.num_train_steps = {} but the phases' num_train_steps add up to {sum}: set pretrain.num_train_steps = {sum}",
            c.pretrain.num_train_steps
        ));
    }
    Ok(())
}
