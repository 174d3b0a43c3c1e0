//! The official GLUE metrics (accuracy, binary F1, Matthews correlation, Pearson and
//! Spearman correlation), the mean / median / std summary over fine-tuning seeds, and
//! [`MetricsWriter`], the JSONL log that training loops append their numbers to.
//!
//! Every metric returns an `f64` in the scale the GLUE paper reports divided by 100
//! (accuracy 0.9, not 90) and is defined on degenerate input instead of returning NaN,
//! so the numbers always serialise as JSON numbers:
//! - empty input: every metric is 0.0;
//! - binary F1 with no true positives (including "no positive labels and no positive
//!   predictions") is 0.0, as scikit-learn's `f1_score(zero_division=0)`;
//! - Matthews correlation with a zero denominator (only one class predicted, or only one
//!   class in the labels) is 0.0, as scikit-learn's `matthews_corrcoef`;
//! - Pearson (and so Spearman) with a constant input is 0.0: a constant predictor carries
//!   no linear information. SciPy returns NaN there; we choose 0.0 so that a collapsed model
//!   scores as "no correlation" in reports and JSON instead of poisoning averages.
//!
//! Slices of different lengths are a programming error and panic.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};

/// One of the metrics GLUE reports. The names are the keys used in pipeline.toml and in
/// the JSON artifacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Fraction of exact label matches.
    Accuracy,
    /// F1 of the positive class (label index 1).
    F1,
    /// Matthews correlation coefficient (CoLA).
    Mcc,
    /// Pearson correlation (STS-B).
    Pearson,
    /// Spearman rank correlation with tie-averaged ranks (STS-B).
    Spearman,
}

impl Metric {
    /// Every metric, in the order of this enum.
    pub const ALL: [Metric; 5] = [
        Metric::Accuracy,
        Metric::F1,
        Metric::Mcc,
        Metric::Pearson,
        Metric::Spearman,
    ];

    /// The key of this metric in pipeline.toml and JSON (`accuracy`, `f1`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy",
            Metric::F1 => "f1",
            Metric::Mcc => "mcc",
            Metric::Pearson => "pearson",
            Metric::Spearman => "spearman",
        }
    }

    /// Parses a metric key; `None` for an unknown name.
    pub fn parse(name: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Whether the metric needs class predictions (accuracy, F1, MCC) rather than scores.
    pub fn is_classification(self) -> bool {
        matches!(self, Metric::Accuracy | Metric::F1 | Metric::Mcc)
    }

    /// Evaluates this metric on predictions against gold targets of the same kind.
    /// Correlations accept class ids too (as numbers); accuracy, F1 and MCC reject scores.
    pub fn evaluate(self, predicted: &Targets, gold: &Targets) -> Result<f64> {
        match (self, predicted, gold) {
            (Metric::Accuracy, Targets::Classes(p), Targets::Classes(g)) => Ok(accuracy(p, g)),
            (Metric::F1, Targets::Classes(p), Targets::Classes(g)) => Ok(f1_binary(p, g)),
            (Metric::Mcc, Targets::Classes(p), Targets::Classes(g)) => Ok(matthews_corrcoef(p, g)),
            (Metric::Pearson, p, g) => Ok(pearson(&p.as_scores(), &g.as_scores())),
            (Metric::Spearman, p, g) => Ok(spearman(&p.as_scores(), &g.as_scores())),
            (m, _, _) => Err(Error::Model(format!(
                "metric `{}` needs class predictions but the task is a regression: \
                 use pearson or spearman",
                m.name()
            ))),
        }
    }
}

impl std::fmt::Display for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Predictions or gold labels of a whole evaluation set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Targets {
    /// Class ids (indices into the task's label list).
    Classes(Vec<usize>),
    /// Real-valued scores (regression, e.g. STS-B similarity 0..5).
    Scores(Vec<f64>),
}

impl Targets {
    /// Number of rows.
    pub fn len(&self) -> usize {
        match self {
            Targets::Classes(c) => c.len(),
            Targets::Scores(s) => s.len(),
        }
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values as numbers (class ids become `0.0, 1.0, ...`).
    pub fn as_scores(&self) -> Vec<f64> {
        match self {
            Targets::Classes(c) => c.iter().map(|&x| x as f64).collect(),
            Targets::Scores(s) => s.clone(),
        }
    }
}

fn check_lengths(a: usize, b: usize) {
    assert_eq!(
        a, b,
        "metric inputs differ in length: {a} predictions vs {b} labels"
    );
}

/// Fraction of positions where `predicted == gold`; 0.0 for empty input.
pub fn accuracy(predicted: &[usize], gold: &[usize]) -> f64 {
    check_lengths(predicted.len(), gold.len());
    if gold.is_empty() {
        return 0.0;
    }
    let correct = predicted.iter().zip(gold).filter(|(p, g)| p == g).count();
    correct as f64 / gold.len() as f64
}

/// Counts of a binary confusion matrix with class 1 as positive (other ids are negative).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Confusion {
    pub true_positive: u64,
    pub false_positive: u64,
    pub true_negative: u64,
    pub false_negative: u64,
}

impl Confusion {
    /// Tallies predictions against gold labels.
    pub fn tally(predicted: &[usize], gold: &[usize]) -> Confusion {
        check_lengths(predicted.len(), gold.len());
        let mut c = Confusion::default();
        for (&p, &g) in predicted.iter().zip(gold) {
            match (p == 1, g == 1) {
                (true, true) => c.true_positive += 1,
                (true, false) => c.false_positive += 1,
                (false, false) => c.true_negative += 1,
                (false, true) => c.false_negative += 1,
            }
        }
        c
    }
}

/// F1 of the positive class 1: `2 tp / (2 tp + fp + fn)`; 0.0 when there is no true
/// positive (scikit-learn's `zero_division=0`).
pub fn f1_binary(predicted: &[usize], gold: &[usize]) -> f64 {
    let c = Confusion::tally(predicted, gold);
    if c.true_positive == 0 {
        return 0.0;
    }
    let tp = c.true_positive as f64;
    2.0 * tp / (2.0 * tp + c.false_positive as f64 + c.false_negative as f64)
}

/// Matthews correlation coefficient over any number of classes (scikit-learn's
/// multiclass formula, which equals the binary `(tp tn - fp fn) / sqrt(...)` for two
/// classes); 0.0 when the denominator is zero (a single predicted or gold class).
pub fn matthews_corrcoef(predicted: &[usize], gold: &[usize]) -> f64 {
    check_lengths(predicted.len(), gold.len());
    let n = gold.len() as f64;
    if gold.is_empty() {
        return 0.0;
    }
    let mut predicted_count: HashMap<usize, f64> = HashMap::new();
    let mut gold_count: HashMap<usize, f64> = HashMap::new();
    let mut correct = 0.0;
    for (&p, &g) in predicted.iter().zip(gold) {
        *predicted_count.entry(p).or_default() += 1.0;
        *gold_count.entry(g).or_default() += 1.0;
        if p == g {
            correct += 1.0;
        }
    }
    // sklearn: cov_ytyp = c*s - t.p ; cov_ypyp = s^2 - p.p ; cov_ytyt = s^2 - t.t
    let dot: f64 = predicted_count
        .iter()
        .map(|(class, &p)| p * gold_count.get(class).copied().unwrap_or(0.0))
        .sum();
    let pp: f64 = predicted_count.values().map(|p| p * p).sum();
    let tt: f64 = gold_count.values().map(|t| t * t).sum();
    let cov_true_pred = correct * n - dot;
    let cov_pred_pred = n * n - pp;
    let cov_true_true = n * n - tt;
    let denominator = (cov_pred_pred * cov_true_true).sqrt();
    if denominator == 0.0 {
        return 0.0;
    }
    cov_true_pred / denominator
}

/// Pearson correlation; 0.0 for empty input or when either side is constant.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    check_lengths(x.len(), y.len());
    if x.is_empty() {
        return 0.0;
    }
    let n = x.len() as f64;
    let mean_x = x.iter().sum::<f64>() / n;
    let mean_y = y.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (&a, &b) in x.iter().zip(y) {
        let (dx, dy) = (a - mean_x, b - mean_y);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx == 0.0 || syy == 0.0 {
        return 0.0;
    }
    // Rounding can push |r| a hair above 1 for perfectly correlated inputs.
    (sxy / (sxx.sqrt() * syy.sqrt())).clamp(-1.0, 1.0)
}

/// Ranks starting at 1, ties getting the average of the ranks they span
/// (SciPy's `rankdata(method="average")`).
pub fn average_ranks(values: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && values[order[end]] == values[order[start]] {
            end += 1;
        }
        // Positions start..end hold equal values: ranks start+1 ..= end, averaged.
        let rank = (start + 1 + end) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = rank;
        }
        start = end;
    }
    ranks
}

/// Spearman rank correlation: Pearson of the tie-averaged ranks; 0.0 when either side is
/// constant.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    check_lengths(x.len(), y.len());
    pearson(&average_ranks(x), &average_ranks(y))
}

/// Mean, median and standard deviation of one metric over fine-tuning seeds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SeedSummary {
    /// Number of seeds.
    pub n: usize,
    pub mean: f64,
    /// Middle value; the mean of the two middle values for an even count.
    pub median: f64,
    /// Sample standard deviation (n - 1 in the denominator); 0.0 for a single seed.
    pub std: f64,
    pub min: f64,
    pub max: f64,
}

impl SeedSummary {
    /// Summarises per-seed values; all fields are 0.0 for an empty slice.
    pub fn of(values: &[f64]) -> SeedSummary {
        let n = values.len();
        if n == 0 {
            return SeedSummary {
                n,
                mean: 0.0,
                median: 0.0,
                std: 0.0,
                min: 0.0,
                max: 0.0,
            };
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        let std = if n > 1 {
            let ss: f64 = values.iter().map(|v| (v - mean).powi(2)).sum();
            (ss / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        SeedSummary {
            n,
            mean,
            median,
            std,
            min: sorted[0],
            max: sorted[n - 1],
        }
    }
}

/// Appends one JSON object per line to a metrics log (`metrics.jsonl`), flushing after each
/// record so a crashed run keeps everything written so far.
pub struct MetricsWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl MetricsWriter {
    /// Creates (truncates) the log at `path`, creating its directory.
    pub fn create(path: impl AsRef<Path>) -> Result<MetricsWriter> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).at(dir)?;
        }
        let file = File::create(&path).at(&path)?;
        Ok(MetricsWriter {
            out: BufWriter::new(file),
            path,
        })
    }

    /// Opens the log at `path` for appending (resuming a run), creating it if needed.
    pub fn append(path: impl AsRef<Path>) -> Result<MetricsWriter> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).at(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .at(&path)?;
        Ok(MetricsWriter {
            out: BufWriter::new(file),
            path,
        })
    }

    /// Writes one record as a JSON line.
    pub fn write<T: Serialize>(&mut self, record: &T) -> Result<()> {
        let line = serde_json::to_string(record)
            .map_err(|e| Error::data(&self.path, format!("cannot serialise record: {e}")))?;
        writeln!(self.out, "{line}").at(&self.path)?;
        self.out.flush().at(&self.path)
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}
