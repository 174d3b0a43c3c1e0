//! What fine-tuning scored: one run ([`SeedRun`]) and an arm over its seeds.

use std::collections::BTreeMap;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

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

/// The summary of one arm over its seeds, in the shape the report reads:
/// `{"scores": [headline per seed], "mean", "median", "std", "all": {metric: mean},
/// "summary": {metric: SeedSummary}}`.
pub fn summarize_arm(runs: &[&SeedRun], headline: &str) -> Value {
    let mut per_metric: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for run in runs {
        for (k, v) in run.flat_metrics() {
            per_metric.entry(k).or_default().push(v);
        }
    }
    let summaries: BTreeMap<String, SeedSummary> = per_metric
        .iter()
        .map(|(k, v)| (k.clone(), SeedSummary::of(v)))
        .collect();
    let scores = per_metric.get(headline).cloned().unwrap_or_default();
    let headline_summary = SeedSummary::of(&scores);
    let all: BTreeMap<&String, f64> = summaries.iter().map(|(k, s)| (k, s.mean)).collect();
    json!({
        "seeds": runs.iter().map(|r| r.seed).collect::<Vec<_>>(),
        "scores": scores,
        "mean": headline_summary.mean,
        "median": headline_summary.median,
        "std": headline_summary.std,
        "all": all,
        "summary": summaries,
    })
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
