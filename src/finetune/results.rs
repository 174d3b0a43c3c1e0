//! What fine-tuning scored: one run ([`SeedRun`]) and an arm over its seeds.

use std::collections::BTreeMap;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::TrainStats;
use crate::metrics::SeedSummary;

/// Metrics of one dev split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitScores {
    pub split: String,
    pub examples: usize,
    /// Metric name → value (fractions: accuracy 0.9, SQuAD F1 0.85).
    pub metrics: BTreeMap<String, f64>,
}

/// One task × initialisation × seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedRun {
    pub task: String,
    pub arm: String,
    pub seed: u64,
    /// The peak learning rate of this run.
    #[serde(default)]
    pub learning_rate: f64,
    pub train_examples: usize,
    pub train: TrainStats,
    pub dev: Vec<SplitScores>,
    pub eval_examples_per_s: f64,
}

impl SeedRun {
    /// Every metric, the first dev split's by plain name and later splits' as
    /// `split/metric` (MNLI's `dev_mismatched/accuracy`).
    pub fn flat_metrics(&self) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (i, split) in self.dev.iter().enumerate() {
            for (name, value) in &split.metrics {
                let key = if i == 0 {
                    name.clone()
                } else {
                    format!("{}/{name}", split.split)
                };
                out.insert(key, *value);
            }
        }
        out
    }
}

/// One learning rate of an arm's sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepPoint {
    pub learning_rate: f64,
    /// Mean headline score over the seeds (`null` where it is not a number).
    pub mean: Option<f64>,
    pub std: Option<f64>,
    /// The value the arm reports.
    #[serde(default)]
    pub chosen: bool,
}

/// One arm (pre-trained or scratch) of a task over its seeds, at its chosen learning rate:
/// what `results.json` holds per arm and the report reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArmSummary {
    #[serde(default)]
    pub seeds: Vec<u64>,
    /// The headline metric of each seed.
    #[serde(default)]
    pub scores: Vec<f64>,
    pub mean: Option<f64>,
    pub median: Option<f64>,
    /// Sample standard deviation over the seeds (0 for one seed).
    pub std: Option<f64>,
    /// Every metric's mean over the seeds (MNLI's second dev split as `split/metric`).
    #[serde(default)]
    pub all: BTreeMap<String, f64>,
    /// Every metric's [`SeedSummary`].
    #[serde(default)]
    pub summary: BTreeMap<String, SeedSummary>,
    /// The peak learning rate of these scores (the sweep's choice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning_rate: Option<f64>,
    /// Every value of a sweep of more than one, by learning rate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sweep: Vec<SweepPoint>,
}

impl ArmSummary {
    /// The mean headline score, when it is a number.
    pub fn finite_mean(&self) -> Option<f64> {
        self.mean.filter(|m| m.is_finite())
    }

    /// This summary as the choice `lr` of a sweep that also tried `others`.
    pub fn with_sweep<T>(mut self, lr: f64, others: &[(f64, ArmSummary, T)]) -> ArmSummary {
        self.learning_rate = Some(lr);
        if !others.is_empty() {
            let mut rows = vec![SweepPoint {
                learning_rate: lr,
                mean: self.mean,
                std: self.std,
                chosen: true,
            }];
            rows.extend(others.iter().map(|(lr, s, _)| SweepPoint {
                learning_rate: *lr,
                mean: s.mean,
                std: s.std,
                chosen: false,
            }));
            rows.sort_by(|a, b| {
                a.learning_rate
                    .partial_cmp(&b.learning_rate)
                    .expect("finite learning rates")
            });
            self.sweep = rows;
        }
        self
    }
}

/// One task of `results.json`: its headline metric, data sizes, the recipe it ran with and
/// its arms.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSummary {
    /// The headline metric (`accuracy`, `f1`, `mcc`, `spearman`; SQuAD: `f1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// Training rows used (SQuAD: windows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_examples: Option<usize>,
    /// Rows of the training file before subsampling (classification tasks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_rows: Option<usize>,
    /// SQuAD: training questions and evaluated questions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_questions: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_questions: Option<usize>,
    /// Classification: the accuracy of always answering the dev set's commonest class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub majority_class_accuracy: Option<f64>,
    /// The recipe as the task ran (a [`super::Recipe`] or a [`super::SquadRecipe`]).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub recipe: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrained: Option<ArmSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scratch: Option<ArmSummary>,
}

impl TaskSummary {
    /// The arm `pretrained` or `scratch`.
    pub fn arm_mut(&mut self, arm: &str) -> &mut Option<ArmSummary> {
        match arm {
            "scratch" => &mut self.scratch,
            _ => &mut self.pretrained,
        }
    }
}

/// `results.json`, also the `finetune` stage's manifest metrics: every task, the arms,
/// and the training throughput. The report reads it back as this type (fields it does not
/// know make it fall back to a lenient reading of hand-written summaries).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneSummary {
    pub tasks: BTreeMap<String, TaskSummary>,
    /// `finetune.init` as configured.
    #[serde(default)]
    pub init: String,
    #[serde(default)]
    pub arms: Vec<String>,
    #[serde(default)]
    pub examples_per_s: f64,
    #[serde(default)]
    pub train_examples: usize,
    #[serde(default)]
    pub train_seconds: f64,
}

/// The summary of one arm over its seeds, headline metric `headline`.
pub fn summarize_arm(runs: &[&SeedRun], headline: &str) -> ArmSummary {
    let mut per_metric: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for run in runs {
        for (k, v) in run.flat_metrics() {
            per_metric.entry(k).or_default().push(v);
        }
    }
    let summary: BTreeMap<String, SeedSummary> = per_metric
        .iter()
        .map(|(k, v)| (k.clone(), SeedSummary::of(v)))
        .collect();
    let scores = per_metric.get(headline).cloned().unwrap_or_default();
    let headline_summary = SeedSummary::of(&scores);
    ArmSummary {
        seeds: runs.iter().map(|r| r.seed).collect(),
        scores,
        mean: Some(headline_summary.mean),
        median: Some(headline_summary.median),
        std: Some(headline_summary.std),
        all: summary.iter().map(|(k, s)| (k.clone(), s.mean)).collect(),
        summary,
        learning_rate: None,
        sweep: Vec::new(),
    }
}

/// The majority-class accuracy of `gold` (the floor a classifier must beat).
pub fn majority_class_accuracy(gold: &[usize]) -> f64 {
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    for &g in gold {
        *counts.entry(g).or_default() += 1;
    }
    let best = counts.values().copied().max().unwrap_or(0);
    best as f64 / gold.len().max(1) as f64
}

/// A seeded subset of at most `max` rows, kept in file order (`max == 0`: all rows).
pub fn subsample<T: Clone>(rows: &[T], max: usize, seed: u64) -> Vec<T> {
    if max == 0 || rows.len() <= max {
        return rows.to_vec();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut picked = rand::seq::index::sample(&mut rng, rows.len(), max).into_vec();
    picked.sort_unstable();
    picked.into_iter().map(|i| rows[i].clone()).collect()
}
