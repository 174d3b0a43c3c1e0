//! The paper's claim as a verdict: does pre-training beat training from random weights?
//!
//! For every task both arms ran, [`compare`] pairs the two arms seed by seed (each arm at the
//! learning rate its own sweep chose, as BERT §4.1 picks the fine-tuning lr on dev) and
//! reports the mean difference with the standard deviation of the per-seed differences.
//! [`verdict`] applies the claim's test: pre-trained ahead by at least [`CLAIM_MARGIN`]
//! points on SST-2 *and* on at least one of MRPC, STS-B or CoLA, over at least
//! [`CLAIM_MIN_SEEDS`] seeds. WNLI never counts: its dev set is built so that a model that
//! learns the training set's surface cues scores below the majority class, and every
//! BERT-size model sits at chance on it.

use super::data::TaskResult;
use super::document::{Block, Section, Table};
use super::format::{as_percent, NOT_APPLICABLE};
use super::reference::{canonical_task, task_display_name};

/// Points (percent, or 100 x MCC / Spearman) by which pre-trained must lead.
pub const CLAIM_MARGIN: f64 = 3.0;
/// Fewest seeds per arm for a verdict.
pub const CLAIM_MIN_SEEDS: usize = 3;
/// The task that must show the effect.
const REQUIRED: &str = "sst2";
/// At least one of these must show it too.
const ONE_OF: [&str; 3] = ["mrpc", "stsb", "cola"];

/// One task's pre-trained vs scratch comparison, in points.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskComparison {
    /// Canonical task key (`sst2`).
    pub task: String,
    pub metric: String,
    /// Seeds paired (both arms have a score for them).
    pub seeds: usize,
    pub pretrained_mean: f64,
    pub scratch_mean: f64,
    pub pretrained_lr: Option<f64>,
    pub scratch_lr: Option<f64>,
    /// Per-seed `pre-trained - scratch`.
    pub differences: Vec<f64>,
}

impl TaskComparison {
    /// Mean of the paired differences (= difference of the means).
    pub fn difference(&self) -> f64 {
        self.differences.iter().sum::<f64>() / self.differences.len() as f64
    }

    /// Sample standard deviation of the paired differences (`None` for one seed).
    pub fn difference_std(&self) -> Option<f64> {
        let n = self.differences.len();
        if n < 2 {
            return None;
        }
        let m = self.difference();
        let var = self
            .differences
            .iter()
            .map(|d| (d - m).powi(2))
            .sum::<f64>()
            / (n - 1) as f64;
        Some(var.sqrt())
    }

    /// Pre-trained ahead by at least [`CLAIM_MARGIN`] over enough seeds.
    pub fn shows_claim(&self) -> bool {
        self.seeds >= CLAIM_MIN_SEEDS && self.difference() >= CLAIM_MARGIN
    }
}

/// Pairs the arms of `task` seed by seed; `None` unless both arms have scores.
pub fn compare(task: &TaskResult) -> Option<TaskComparison> {
    let pre = task.pretrained.as_ref()?;
    let scratch = task.scratch.as_ref()?;
    let n = pre.scores.len().min(scratch.scores.len());
    if n == 0 {
        return None;
    }
    let pre_scores: Vec<f64> = pre.scores[..n].iter().map(|&s| as_percent(s)).collect();
    let scratch_scores: Vec<f64> = scratch.scores[..n].iter().map(|&s| as_percent(s)).collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    Some(TaskComparison {
        task: canonical_task(&task.task),
        metric: task.metric.clone().unwrap_or_else(|| "score".into()),
        seeds: n,
        pretrained_mean: mean(&pre_scores),
        scratch_mean: mean(&scratch_scores),
        pretrained_lr: pre.learning_rate,
        scratch_lr: scratch.learning_rate,
        differences: pre_scores
            .iter()
            .zip(&scratch_scores)
            .map(|(p, s)| p - s)
            .collect(),
    })
}

/// The claim's outcome on a run.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// SST-2 and one of MRPC / STS-B / CoLA ahead by the margin.
    Held,
    /// Measured, and not shown; the reason names the numbers.
    NotHeld(String),
    /// The run cannot decide (a task or the scratch arm is missing, too few seeds).
    NotMeasured(String),
}

/// Applies the claim's test to the comparisons of a run.
pub fn verdict(comparisons: &[TaskComparison]) -> Verdict {
    let find = |t: &str| comparisons.iter().find(|c| c.task == t);
    let Some(sst2) = find(REQUIRED) else {
        return Verdict::NotMeasured(
            "SST-2 was not fine-tuned with both arms (compare_scratch = true)".into(),
        );
    };
    let others: Vec<&TaskComparison> = ONE_OF.iter().filter_map(|t| find(t)).collect();
    if others.is_empty() {
        return Verdict::NotMeasured("none of MRPC, STS-B, CoLA ran with both arms".into());
    }
    if let Some(c) = std::iter::once(sst2)
        .chain(others.iter().copied())
        .find(|c| c.seeds < CLAIM_MIN_SEEDS)
    {
        return Verdict::NotMeasured(format!(
            "{} has {} paired seed(s); the verdict needs at least {CLAIM_MIN_SEEDS}",
            task_display_name(&c.task),
            c.seeds
        ));
    }
    let second = others.iter().find(|c| c.shows_claim());
    if sst2.shows_claim() && second.is_some() {
        Verdict::Held
    } else {
        let best = others
            .iter()
            .max_by(|a, b| a.difference().total_cmp(&b.difference()))
            .expect("others is not empty");
        Verdict::NotHeld(format!(
            "SST-2 {:+.1}, best of MRPC/STS-B/CoLA {} {:+.1}; both need at least +{CLAIM_MARGIN:.0}",
            sst2.difference(),
            task_display_name(&best.task),
            best.difference()
        ))
    }
}

/// One line: the verdict with its numbers.
pub fn verdict_line(comparisons: &[TaskComparison]) -> String {
    let seeds = comparisons.iter().map(|c| c.seeds).min().unwrap_or(0);
    let leads: Vec<String> = comparisons
        .iter()
        .filter(|c| c.task != "wnli")
        .map(|c| format!("{} {:+.1}", task_display_name(&c.task), c.difference()))
        .collect();
    match verdict(comparisons) {
        Verdict::Held => format!(
            "HELD: pre-trained beats scratch by at least {CLAIM_MARGIN:.0} points on SST-2 and on \
             at least one of MRPC, STS-B, CoLA ({}; mean over {seeds} seeds, each arm at its best \
             learning rate).",
            leads.join(", ")
        ),
        Verdict::NotHeld(why) => format!(
            "NOT HELD: {why} ({}; mean over {seeds} seeds, each arm at its best learning rate).",
            leads.join(", ")
        ),
        Verdict::NotMeasured(why) => format!("NOT MEASURED: {why}."),
    }
}

/// The claim section of the report: the verdict and one row per task.
pub fn claim_section(tasks: Option<&[TaskResult]>) -> Section {
    let comparisons: Vec<TaskComparison> = tasks
        .unwrap_or_default()
        .iter()
        .filter_map(compare)
        .collect();
    let mut blocks = vec![Block::Paragraph(verdict_line(&comparisons))];
    let mut table = Table {
        headers: [
            "Task",
            "Metric",
            "Seeds",
            "Pre-trained (lr)",
            "Scratch (lr)",
            "Difference ± paired std",
            "Per-seed differences",
            "Counts",
        ]
        .iter()
        .map(|h| h.to_string())
        .collect(),
        rows: Vec::new(),
    };
    let lr = |v: Option<f64>| v.map(|v| format!(" ({v:e})")).unwrap_or_default();
    for c in &comparisons {
        let counts = if c.task == "wnli" {
            "no: chance-level task"
        } else if c.shows_claim() {
            "yes, ahead"
        } else {
            "yes"
        };
        table.rows.push(vec![
            task_display_name(&c.task),
            c.metric.clone(),
            c.seeds.to_string(),
            format!("{:.1}{}", c.pretrained_mean, lr(c.pretrained_lr)),
            format!("{:.1}{}", c.scratch_mean, lr(c.scratch_lr)),
            format!(
                "{:+.1} ± {}",
                c.difference(),
                c.difference_std()
                    .map_or_else(|| NOT_APPLICABLE.to_string(), |s| format!("{s:.1}"))
            ),
            c.differences
                .iter()
                .map(|d| format!("{d:+.1}"))
                .collect::<Vec<_>>()
                .join(", "),
            counts.into(),
        ]);
    }
    if !table.rows.is_empty() {
        blocks.push(Block::Table(table));
    }
    blocks.push(Block::Paragraph(format!(
        "The test: pre-trained ahead by at least {CLAIM_MARGIN:.0} points on SST-2 and on at \
         least one of MRPC (F1), STS-B (Spearman) or CoLA (MCC), mean over at least \
         {CLAIM_MIN_SEEDS} seeds, each arm at the learning rate its own sweep chose. Differences \
         are paired by seed. WNLI does not count: every BERT-size model scores at chance on its \
         dev set."
    )));
    Section {
        title: "The paper's claim: pre-trained vs scratch".into(),
        blocks,
    }
}
