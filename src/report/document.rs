//! The report as a [`Document`]: sections of tables, paragraphs and charts built from
//! [`ReportData`]. [`super::render`] prints one document as Markdown and as HTML, so both
//! files always show the same rows. Anything a stage did not produce is [`MISSING`].

use super::data::{
    flatten_scalars, ArmResult, PretrainCurves, ReportData, RowValue, ShardGroup, StageEntry,
    TaskResult,
};
use super::format::{
    as_percent, fmt_bytes, fmt_duration, fmt_opt, fmt_rate, fmt_rows, fmt_time, short, MISSING,
    NOT_APPLICABLE, NOT_RUN,
};
use super::plots::{pretrain_charts, render_finetune_chart, render_line_chart};
use super::reference::{
    canonical_task, task_display_name, DATA_REFERENCE_SOURCE, PUBLISHED, STANDARD_TASKS,
};
use crate::error::Result;
use crate::manifest::ArtifactRecord;
use crate::pretrain::PretrainLogRow;

/// Rows of an artifact table shown before HTML folds it.
const OPEN_ARTIFACT_ROWS: usize = 12;

/// A report: a title, a line under it, and its sections.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub title: String,
    pub subtitle: String,
    pub sections: Vec<Section>,
}

/// One `##` section.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    pub title: String,
    pub blocks: Vec<Block>,
}

/// The pieces a section is made of.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    /// Plain text.
    Paragraph(String),
    /// A bulleted list.
    List(Vec<String>),
    /// Warnings, shown highlighted.
    Warnings(Vec<String>),
    Table(Table),
    /// A titled group that HTML folds (open when `open`).
    Details {
        summary: String,
        open: bool,
        blocks: Vec<Block>,
    },
    /// Plots: HTML inlines their SVG, Markdown names them.
    Charts(Vec<Chart>),
    /// Blocks HTML sets side by side (Markdown: one after another).
    Row(Vec<Block>),
}

/// One plot of a [`Block::Charts`].
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    pub title: String,
    /// The chart has points to draw.
    pub has_data: bool,
    /// The drawn SVG (only when HTML is rendered and there is data).
    pub svg: Option<String>,
}

/// A table of plain-text cells.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    fn new(headers: &[&str]) -> Self {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
}

/// The held-out text's MLM perplexity: the log's held-out row, else the stage's metric.
fn heldout_perplexity(curves: &PretrainCurves) -> Option<f64> {
    curves
        .last_heldout(|r| r.mlm_perplexity)
        .or_else(|| curves.final_metric("heldout_perplexity"))
}

/// The headline numbers: final pre-training loss and accuracies, held-out perplexity and
/// each task's pre-trained mean. Missing values print as [`MISSING`].
pub fn headline(data: &ReportData) -> Vec<(String, String)> {
    let mut out = Vec::new();
    // The log's last training row, else the stage's final metrics.
    let last = |value: RowValue, key: &str| {
        let curves = data.pretrain.as_ref()?;
        curves
            .last_train(value)
            .or_else(|| curves.final_metric(key))
    };
    out.push((
        "pre-training loss".into(),
        fmt_opt(last(|r| r.loss, "train.loss"), 4),
    ));
    out.push((
        "MLM accuracy".into(),
        fmt_opt(last(|r| r.mlm_accuracy, "train.mlm_accuracy"), 4),
    ));
    out.push((
        "NSP accuracy".into(),
        fmt_opt(last(|r| r.nsp_accuracy, "train.nsp_accuracy"), 4),
    ));
    out.push((
        "held-out perplexity".into(),
        fmt_opt(data.pretrain.as_ref().and_then(heldout_perplexity), 2),
    ));
    if let Some(tasks) = &data.finetune {
        let comparisons: Vec<_> = tasks.iter().filter_map(super::claim::compare).collect();
        if !comparisons.is_empty() {
            out.push((
                "paper's claim".into(),
                super::claim::verdict_line(&comparisons),
            ));
        }
    }
    match &data.finetune {
        None => out.push(("fine-tuning".into(), MISSING.into())),
        Some(tasks) => {
            for t in tasks {
                let mean = t.pretrained.as_ref().and_then(|a| a.mean).map(as_percent);
                let metric = t.metric.clone().unwrap_or_else(|| "score".into());
                out.push((
                    format!(
                        "{} dev {metric} (pre-trained, mean)",
                        task_display_name(&t.task)
                    ),
                    fmt_opt(mean, 1),
                ));
            }
        }
    }
    out
}
/// Builds the sections. `charts` draws the SVG plots (HTML); Markdown skips them.
pub fn build_document(data: &ReportData, charts: bool) -> Result<Document> {
    let ran = data.stages.iter().filter(|s| s.record.is_some()).count();
    let shape = data
        .model_shape()
        .map(|(l, h, a)| format!("model L={l}, H={h}, A={a}"))
        .unwrap_or_else(|| format!("model shape {MISSING}"));
    let subtitle = format!(
        "Run {} · {shape} · {ran} of {} stages recorded · stage wall time {}",
        data.run_dir.display(),
        data.stages.len(),
        fmt_duration(data.total_wall_s()),
    );
    Ok(Document {
        title: data.title.clone(),
        subtitle,
        sections: vec![
            summary_section(data),
            lineage_section(data),
            data_section(data),
            pretrain_section(data, charts)?,
            finetune_section(data, charts)?,
            super::claim::claim_section(data.finetune.as_deref()),
            machine_section(data),
            history_section(data),
        ],
    })
}

fn summary_section(data: &ReportData) -> Section {
    let mut blocks = Vec::new();
    if !data.warnings.is_empty() {
        blocks.push(Block::Warnings(data.warnings.clone()));
    }
    let stale: Vec<String> = data
        .stages
        .iter()
        .filter(|s| !s.stale_inputs.is_empty())
        .map(|s| {
            format!(
                "{} is stale: {} of its inputs changed upstream since it ran (rerun it)",
                s.name,
                s.stale_inputs.len()
            )
        })
        .collect();
    if !stale.is_empty() {
        blocks.push(Block::Warnings(stale));
    }
    let mut table = Table::new(&["Headline", "Value"]);
    for (k, v) in headline(data) {
        table.row(vec![k, v]);
    }
    blocks.push(Block::Table(table));
    Section {
        title: "Summary".into(),
        blocks,
    }
}

fn lineage_section(data: &ReportData) -> Section {
    let mut stages = Table::new(&[
        "Stage",
        "Status",
        "Finished (UTC)",
        "Wall time",
        "Artifacts",
        "Rows",
        "Bytes",
        "Throughput",
        "Fingerprint",
        "Config hash",
    ]);
    for s in &data.stages {
        stages.row(stage_row(s));
    }
    let mut blocks = vec![
        Block::Paragraph(
            "Every stage of the run as the manifest records it: the artifacts it wrote, \
             their blake3 content hashes (first 12 hex digits), rows and bytes, and the \
             configuration that produced them."
                .into(),
        ),
        Block::Table(stages),
    ];
    for s in &data.stages {
        let Some(record) = &s.record else { continue };
        let mut artifacts = Table::new(&["Artifact", "Kind", "blake3", "Rows", "Bytes"]);
        for row in artifact_rows(&s.shards, &record.artifacts) {
            artifacts.row(row);
        }
        let mut config = Table::new(&["Config key", "Value"]);
        for (k, v) in flatten_scalars(&record.config) {
            config.row(vec![k, v]);
        }
        let config = if config.rows.is_empty() {
            Block::Paragraph("Config: none recorded.".into())
        } else {
            Block::Table(config)
        };
        let artifacts_rows = artifacts.rows.len();
        let mut inner = vec![Block::Row(vec![Block::Table(artifacts), config])];
        let raw: Vec<String> = record
            .inputs
            .iter()
            .filter(|i| i.id.starts_with("file:"))
            .map(|i| format!("{} ({})", i.id, short(&i.blake3)))
            .collect();
        // One input per upstream stage (`stage:<name>`), or per artifact in records of
        // earlier versions.
        let stages: Vec<&str> = record
            .inputs
            .iter()
            .filter_map(|i| i.id.strip_prefix(crate::stage::UPSTREAM_PREFIX))
            .collect();
        let artifacts = record.inputs.len() - raw.len() - stages.len();
        let upstream = match (stages.is_empty(), artifacts) {
            (false, _) => format!("the outputs of {}", stages.join(", ")),
            (true, 0) => "nothing upstream".to_string(),
            (true, n) => format!("{n} upstream artifact(s)"),
        };
        inner.push(Block::Paragraph(format!(
            "Inputs: {upstream}{}{}",
            if raw.is_empty() { "" } else { "; raw files: " },
            raw.join(", ")
        )));
        blocks.push(Block::Details {
            summary: format!(
                "{}: {} artifact(s), profile {}, code {}",
                s.name, record.artifact_count, record.profile, record.code_version
            ),
            open: artifacts_rows <= OPEN_ARTIFACT_ROWS,
            blocks: inner,
        });
    }
    Section {
        title: "Lineage".into(),
        blocks,
    }
}

/// The rows of a stage's artifact table: its shards one row per kind (a stage of a large
/// corpus writes hundreds of thousands): how many, the first and last, a blake3 over their
/// ids and hashes, rows and bytes summed; then its other artifacts, one row each.
fn artifact_rows(shards: &[ShardGroup], others: &[ArtifactRecord]) -> Vec<Vec<String>> {
    let grouped = shards.iter().map(|g| {
        let (name, hash) = match g.count {
            1 => (g.first.0.clone(), short(&g.first.1)),
            n => (
                format!("{n} shards, {} .. {}", g.first.0, g.last),
                short(&g.blake3),
            ),
        };
        vec![
            name,
            g.kind.clone(),
            hash,
            fmt_rows(g.rows),
            fmt_bytes(g.bytes),
        ]
    });
    let others = others.iter().map(|a| {
        vec![
            a.id.clone(),
            a.kind.clone(),
            short(&a.blake3),
            fmt_rows(a.rows),
            fmt_bytes(a.bytes),
        ]
    });
    grouped.chain(others).collect()
}

fn stage_row(s: &StageEntry) -> Vec<String> {
    let Some(r) = &s.record else {
        let mut row = vec![s.name.clone(), MISSING.to_string()];
        row.extend(std::iter::repeat_n(MISSING.to_string(), 8));
        return row;
    };
    vec![
        s.name.clone(),
        s.status().to_string(),
        fmt_time(r.finished_at),
        fmt_duration(r.duration_s()),
        r.artifact_count.to_string(),
        fmt_rows(s.total_rows().unwrap_or(0)),
        fmt_bytes(s.total_bytes().unwrap_or(0)),
        s.throughput()
            .map(|(v, unit)| format!("{} {unit}", fmt_rate(v)))
            .unwrap_or_else(|| MISSING.to_string()),
        short(&r.fingerprint),
        short(&r.config_hash),
    ]
}

fn data_section(data: &ReportData) -> Section {
    let stats = &data.data_stats;
    let mut blocks = Vec::new();
    if !stats.mask_present {
        blocks.push(Block::Paragraph(format!(
            "The mask stage is {MISSING}: no instance statistics."
        )));
    }
    blocks.push(Block::Paragraph(format!(
        "Instances: {}. Reference: {DATA_REFERENCE_SOURCE}.",
        fmt_opt(stats.instances, 0)
    )));
    if let Some(d) = &stats.vocab_dropped {
        blocks.push(Block::Paragraph(format!(
            "The vocabulary was trained on {} distinct words: {} word entries counted at most \
             {} times ({} occurrences) were left out to stay within vocab.max_words.",
            d.kept, d.words, d.floor, d.occurrences
        )));
    }
    let mut table = Table::new(&["Statistic", "This run", "Google's generator"]);
    for row in &stats.compared {
        table.row(vec![
            row.label.clone(),
            fmt_opt(row.value, row.decimals),
            format!("{:.*}", row.decimals, row.reference),
        ]);
    }
    blocks.push(Block::Table(table));
    if !stats.other.is_empty() {
        let mut other = Table::new(&["Metric", "Value"]);
        for (k, v) in &stats.other {
            other.row(vec![k.clone(), v.clone()]);
        }
        blocks.push(Block::Details {
            summary: "Other vocab, pairs and mask metrics".into(),
            open: false,
            blocks: vec![Block::Table(other)],
        });
    }
    Section {
        title: "Pre-training data".into(),
        blocks,
    }
}

fn pretrain_section(data: &ReportData, charts: bool) -> Result<Section> {
    let Some(curves) = &data.pretrain else {
        return Ok(Section {
            title: "Pre-training".into(),
            blocks: vec![Block::Paragraph(format!(
                "The pretrain stage is {MISSING}: no curves and no held-out perplexity."
            ))],
        });
    };
    let mut blocks = vec![Block::Paragraph(format!(
        "Log: {} ({} training rows, {} evaluation rows).",
        curves.source.as_deref().unwrap_or(MISSING),
        curves.train.len(),
        curves.eval.len() + curves.heldout.len()
    ))];
    let mut finals = Table::new(&["Final value", "Value"]);
    let train = |value: RowValue| curves.last_train(value);
    let eval = |value: RowValue| curves.last_eval(value);
    for (label, value, decimals) in [
        ("step", train(|r| Some(r.step as f64)), 0),
        ("tokens seen", train(|r| r.tokens_seen.map(|t| t as f64)), 0),
        ("loss", train(|r| r.loss), 4),
        ("MLM loss", train(|r| r.mlm_loss), 4),
        ("NSP loss", train(|r| r.nsp_loss), 4),
        ("MLM accuracy", train(|r| r.mlm_accuracy), 4),
        ("NSP accuracy", train(|r| r.nsp_accuracy), 4),
        ("held-out loss", eval(|r| r.loss), 4),
        ("held-out MLM accuracy", eval(|r| r.mlm_accuracy), 4),
        ("held-out NSP accuracy", eval(|r| r.nsp_accuracy), 4),
        (
            "held-out text MLM perplexity",
            heldout_perplexity(curves),
            2,
        ),
        ("tokens per second", train(|r| r.tokens_per_s), 0),
    ] {
        finals.row(vec![label.into(), fmt_opt(value, decimals)]);
    }
    blocks.push(Block::Table(finals));
    let mut rendered = Vec::new();
    for chart in pretrain_charts(curves) {
        let svg = if charts && !chart.is_empty() {
            Some(render_line_chart(&chart)?)
        } else {
            None
        };
        rendered.push(Chart {
            title: chart.title.clone(),
            has_data: !chart.is_empty(),
            svg,
        });
    }
    blocks.push(Block::Charts(rendered));
    blocks.push(Block::Details {
        summary: "Logged values (about ten evenly spaced training rows)".into(),
        open: false,
        blocks: vec![Block::Table(curve_samples(&curves.train))],
    });
    if !curves.final_metrics.is_empty() {
        let mut t = Table::new(&["Stage metric", "Value"]);
        for (k, v) in &curves.final_metrics {
            t.row(vec![k.clone(), v.clone()]);
        }
        blocks.push(Block::Details {
            summary: "Final metrics recorded by the pretrain stage".into(),
            open: false,
            blocks: vec![Block::Table(t)],
        });
    }
    Ok(Section {
        title: "Pre-training".into(),
        blocks,
    })
}

/// About ten evenly spaced rows of the training log, always including the last.
fn curve_samples(rows: &[PretrainLogRow]) -> Table {
    // (heading, value, decimals); `None` prints in scientific notation.
    let cols: [(&str, RowValue, Option<usize>); 7] = [
        ("step", |r| Some(r.step as f64), Some(0)),
        ("tokens seen", |r| r.tokens_seen.map(|t| t as f64), Some(0)),
        ("loss", |r| r.loss, Some(4)),
        ("MLM acc.", |r| r.mlm_accuracy, Some(4)),
        ("NSP acc.", |r| r.nsp_accuracy, Some(4)),
        ("learning rate", |r| r.learning_rate, None),
        ("grad norm", |r| r.grad_norm, Some(3)),
    ];
    let mut t = Table::new(&cols.map(|c| c.0));
    let stride = rows.len().div_ceil(10).max(1);
    let mut picked: Vec<usize> = (0..rows.len()).step_by(stride).collect();
    if rows.len() > 1 && picked.last() != Some(&(rows.len() - 1)) {
        picked.push(rows.len() - 1);
    }
    for i in picked {
        t.row(
            cols.iter()
                .map(|(_, value, decimals)| {
                    let v = value(&rows[i]);
                    match decimals {
                        Some(d) => fmt_opt(v, *d),
                        None => v.map_or_else(|| MISSING.into(), |v| format!("{v:.2e}")),
                    }
                })
                .collect(),
        );
    }
    t
}

fn finetune_section(data: &ReportData, charts: bool) -> Result<Section> {
    let mut blocks = Vec::new();
    if data.finetune.is_none() {
        blocks.push(Block::Paragraph(format!(
            "The finetune stage is {MISSING}: the published figures are listed alone."
        )));
    }
    blocks.push(Block::Paragraph(
        "This run: dev-set scores in percent, mean ± sample std and median over fine-tuning \
         seeds, from the pre-trained checkpoint and from random initialisation (scratch). \
         Published columns say whether they are dev or GLUE test-server scores; test scores \
         are not directly comparable with dev scores."
            .into(),
    ));
    blocks.push(Block::Table(glue_table(data.finetune.as_deref())));
    if let Some(sweep) = data.finetune.as_deref().and_then(sweep_table) {
        blocks.push(Block::Paragraph(
            "Learning-rate sweep: mean dev score of every learning rate tried; each arm above \
             reports the best one (BERT §4.1 chooses the fine-tuning learning rate on dev)."
                .into(),
        ));
        blocks.push(Block::Table(sweep));
    }
    blocks.push(Block::List(
        PUBLISHED
            .iter()
            .map(|p| format!("{}: {}", p.heading(), p.source))
            .collect(),
    ));
    if let Some(tasks) = data.finetune.as_deref() {
        let svg = if charts {
            render_finetune_chart(tasks)?
        } else {
            None
        };
        let has_data = tasks
            .iter()
            .any(|t| t.pretrained.is_some() || t.scratch.is_some());
        blocks.push(Block::Charts(vec![Chart {
            title: "Fine-tuning dev scores by task".into(),
            has_data,
            svg,
        }]));
    }
    Ok(Section {
        title: "Fine-tuning (GLUE dev, SQuAD v1.1 dev)".into(),
        blocks,
    })
}

/// One row per standard task (in the paper's order), then any other task that ran.
pub fn glue_table(tasks: Option<&[TaskResult]>) -> Table {
    let mut headers = vec![
        "Task",
        "Metric",
        "Seeds",
        "Pre-trained mean",
        "Pre-trained median",
        "Scratch mean",
        "Scratch median",
        "Pre-trained, all metrics",
    ];
    let published: Vec<String> = PUBLISHED.iter().map(|p| p.heading()).collect();
    headers.extend(published.iter().map(String::as_str));
    let mut table = Table::new(&headers);
    let mut names: Vec<String> = STANDARD_TASKS.iter().map(|t| t.to_string()).collect();
    for t in tasks.unwrap_or_default() {
        if !names.contains(&canonical_task(&t.task)) {
            names.push(canonical_task(&t.task));
        }
    }
    for name in names {
        let result = tasks.map(|ts| ts.iter().find(|t| canonical_task(&t.task) == name));
        let absent = match result {
            None => MISSING,
            Some(None) => NOT_RUN,
            Some(Some(_)) => "",
        };
        let result = result.flatten();
        let arm = |f: fn(&TaskResult) -> &Option<ArmResult>| result.and_then(|r| f(r).as_ref());
        let (pre, scratch) = (arm(|r| &r.pretrained), arm(|r| &r.scratch));
        let cell = |v: Option<String>| v.unwrap_or_else(|| absent_or_missing(absent));
        let mut row = vec![
            task_display_name(&name),
            cell(result.map(|r| r.metric.clone().unwrap_or_else(|| MISSING.into()))),
            cell(result.map(|_| seed_counts(pre, scratch))),
            cell(result.map(|_| fmt_mean(pre))),
            cell(result.map(|_| fmt_arm(pre, |a| a.median))),
            cell(result.map(|_| fmt_mean(scratch))),
            cell(result.map(|_| fmt_arm(scratch, |a| a.median))),
            cell(result.map(|_| fmt_all(pre))),
        ];
        for p in &PUBLISHED {
            row.push(match p.score(&name) {
                Some((score, metric)) => format!("{score} ({metric})"),
                None => NOT_APPLICABLE.into(),
            });
        }
        table.row(row);
    }
    table
}

/// Task × arm × learning rate → mean dev score, when any arm ran a sweep.
pub fn sweep_table(tasks: &[TaskResult]) -> Option<Table> {
    let mut table = Table::new(&["Task", "Arm", "Learning rate", "Mean", "Chosen"]);
    for t in tasks {
        for (arm, result) in [("pre-trained", &t.pretrained), ("scratch", &t.scratch)] {
            let Some(result) = result else { continue };
            for (lr, mean) in &result.sweep {
                table.row(vec![
                    task_display_name(&canonical_task(&t.task)),
                    arm.into(),
                    format!("{lr:e}"),
                    fmt_opt(mean.map(as_percent), 1),
                    if result.learning_rate == Some(*lr) {
                        "yes"
                    } else {
                        ""
                    }
                    .into(),
                ]);
            }
        }
    }
    (!table.rows.is_empty()).then_some(table)
}

fn absent_or_missing(absent: &str) -> String {
    if absent.is_empty() {
        MISSING.into()
    } else {
        absent.into()
    }
}

fn seed_counts(pre: Option<&ArmResult>, scratch: Option<&ArmResult>) -> String {
    match (pre, scratch) {
        (Some(p), Some(s)) if p.scores.len() != s.scores.len() => {
            format!("{} / {}", p.scores.len(), s.scores.len())
        }
        (Some(p), _) => p.scores.len().to_string(),
        (None, Some(s)) => s.scores.len().to_string(),
        (None, None) => MISSING.into(),
    }
}

fn fmt_mean(arm: Option<&ArmResult>) -> String {
    let score = match arm.and_then(|a| a.mean.map(|m| (m, a.std))) {
        None => return MISSING.into(),
        Some((m, Some(sd))) => format!("{:.1} ± {:.1}", as_percent(m), as_percent(sd)),
        Some((m, None)) => format!("{:.1}", as_percent(m)),
    };
    match arm.and_then(|a| a.learning_rate) {
        Some(lr) => format!("{score} (lr {lr:e})"),
        None => score,
    }
}

fn fmt_arm(arm: Option<&ArmResult>, f: fn(&ArmResult) -> Option<f64>) -> String {
    fmt_opt(arm.and_then(f).map(as_percent), 1)
}

fn fmt_all(arm: Option<&ArmResult>) -> String {
    match arm {
        Some(a) if !a.all.is_empty() => a
            .all
            .iter()
            .map(|(k, v)| format!("{k} {:.1}", as_percent(*v)))
            .collect::<Vec<_>>()
            .join(", "),
        _ => MISSING.into(),
    }
}

fn machine_section(data: &ReportData) -> Section {
    let m = &data.machine;
    let mut table = Table::new(&["Machine", "Value"]);
    for (k, v) in [
        ("CPU", m.cpu_model.clone().unwrap_or_else(|| MISSING.into())),
        ("physical cores", m.cores.to_string()),
        ("hardware threads", m.threads.to_string()),
        ("platform", m.platform.clone()),
        ("build profile", m.profile.clone()),
        ("build features", m.build_features.join(", ")),
        ("bertline", m.code_version.clone()),
    ] {
        table.row(vec![k.into(), v]);
    }
    let mut times = Table::new(&["Stage", "Wall time", "Started (UTC)", "Finished (UTC)"]);
    for s in &data.stages {
        times.row(match &s.record {
            Some(r) => vec![
                s.name.clone(),
                fmt_duration(r.duration_s()),
                fmt_time(r.started_at),
                fmt_time(r.finished_at),
            ],
            None => vec![
                s.name.clone(),
                MISSING.into(),
                MISSING.into(),
                MISSING.into(),
            ],
        });
    }
    times.row(vec![
        "total (stages that ran)".into(),
        fmt_duration(data.total_wall_s()),
        String::new(),
        String::new(),
    ]);
    Section {
        title: "Machine and wall times".into(),
        blocks: vec![
            Block::Paragraph(
                "The machine that made this report; stages that ran elsewhere record their \
                 own timings below."
                    .into(),
            ),
            Block::Table(table),
            Block::Table(times),
        ],
    }
}

fn history_section(data: &ReportData) -> Section {
    let mut table = Table::new(&[
        "Finished (UTC)",
        "Stage",
        "Wall time",
        "Artifacts",
        "Fingerprint",
        "In this report",
    ]);
    for h in data.history.iter().rev() {
        table.row(vec![
            fmt_time(h.finished_at),
            h.stage.clone(),
            fmt_duration(h.duration_s),
            h.artifacts.to_string(),
            short(&h.fingerprint),
            if h.current { "yes" } else { "superseded" }.into(),
        ]);
    }
    let blocks = if table.rows.is_empty() {
        vec![Block::Paragraph("No stage runs recorded.".into())]
    } else {
        vec![Block::Details {
            summary: format!("{} stage run(s) recorded, newest first", table.rows.len()),
            open: false,
            blocks: vec![Block::Table(table)],
        }]
    };
    Section {
        title: "Run history".into(),
        blocks,
    }
}
