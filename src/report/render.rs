//! Turns [`ReportData`] into `report.md` and a self-contained `report.html`.
//!
//! Both come from one [`Document`] of sections, so they always show the same rows: Markdown
//! prints tables as pipe tables and names the plots, HTML draws the plots inline as SVG
//! and folds long tables into `<details>`. Anything a stage did not produce prints as
//! [`MISSING`].

use super::data::{ArmResult, ReportData, StageEntry, TaskResult};
use super::plots::{pretrain_charts, render_finetune_chart, render_line_chart};
use super::reference::{
    canonical_task, task_display_name, DATA_REFERENCE_SOURCE, PUBLISHED, STANDARD_TASKS,
};
use crate::error::Result;

/// What a value that no stage produced prints as.
pub const MISSING: &str = "missing";

/// What a cell prints as where the quantity does not apply (rows of a checkpoint, a score
/// a source did not publish).
pub const NOT_APPLICABLE: &str = "–";

/// What a task that the finetune stage did not run prints as.
pub const NOT_RUN: &str = "not run";

/// Characters of a blake3 hash shown in tables.
const SHORT_HASH: usize = 12;

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
    /// A `###` heading.
    Heading(String),
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

    /// The table as a Markdown pipe table.
    pub fn to_markdown(&self) -> String {
        markdown_table(self)
    }
}

/// Renders the report as Markdown.
pub fn render_markdown(data: &ReportData) -> String {
    markdown(&build_document(data, false).expect("no charts are drawn for Markdown"))
}

/// Renders the report as one HTML page with inline CSS and SVG and no external references.
pub fn render_html(data: &ReportData) -> Result<String> {
    Ok(html(&build_document(data, true)?))
}

/// The headline numbers: final pre-training loss and accuracies, held-out perplexity and
/// each task's pre-trained mean. Missing values print as [`MISSING`].
pub fn headline(data: &ReportData) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let last = |key: &str| data.pretrain.as_ref().and_then(|p| p.last(key));
    out.push(("pre-training loss".into(), fmt_opt(last("loss"), 4)));
    out.push(("MLM accuracy".into(), fmt_opt(last("mlm_accuracy"), 4)));
    out.push(("NSP accuracy".into(), fmt_opt(last("nsp_accuracy"), 4)));
    out.push((
        "held-out perplexity".into(),
        fmt_opt(last("heldout_perplexity"), 2),
    ));
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

/// A score as a percentage: values within ±1 are fractions and are scaled by 100, larger
/// values are taken to be percentages already (SQuAD's official script prints 0..100).
pub fn as_percent(v: f64) -> f64 {
    if v.abs() <= 1.0 {
        v * 100.0
    } else {
        v
    }
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
        for a in &record.artifacts {
            artifacts.row(vec![
                a.id.clone(),
                a.kind.clone(),
                short(&a.blake3),
                fmt_rows(a.rows),
                fmt_bytes(a.bytes),
            ]);
        }
        let mut config = Table::new(&["Config key", "Value"]);
        for (k, v) in super::data::flatten_scalars(&record.config) {
            config.row(vec![k, v]);
        }
        let config = if config.rows.is_empty() {
            Block::Paragraph("Config: none recorded.".into())
        } else {
            Block::Table(config)
        };
        let mut inner = vec![Block::Row(vec![Block::Table(artifacts), config])];
        let raw: Vec<String> = record
            .inputs
            .iter()
            .filter(|i| i.id.starts_with("file:"))
            .map(|i| format!("{} ({})", i.id, short(&i.blake3)))
            .collect();
        let upstream = record.inputs.len() - raw.len();
        inner.push(Block::Paragraph(format!(
            "Inputs: {upstream} upstream artifact(s){}{}",
            if raw.is_empty() { "" } else { "; raw files: " },
            raw.join(", ")
        )));
        blocks.push(Block::Details {
            summary: format!(
                "{}: {} artifact(s), profile {}, code {}",
                s.name,
                record.artifacts.len(),
                record.profile,
                record.code_version
            ),
            open: record.artifacts.len() <= OPEN_ARTIFACT_ROWS,
            blocks: inner,
        });
    }
    Section {
        title: "Lineage".into(),
        blocks,
    }
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
        r.artifacts.len().to_string(),
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
            summary: "Other pairs and mask metrics".into(),
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
        curves.eval.len()
    ))];
    let mut finals = Table::new(&["Final value", "Value"]);
    for (label, key, decimals) in [
        ("step", "step", 0),
        ("tokens seen", "tokens_seen", 0),
        ("loss", "loss", 4),
        ("MLM loss", "mlm_loss", 4),
        ("NSP loss", "nsp_loss", 4),
        ("MLM accuracy", "mlm_accuracy", 4),
        ("NSP accuracy", "nsp_accuracy", 4),
        ("held-out loss", "eval_loss", 4),
        ("held-out MLM accuracy", "eval_mlm_accuracy", 4),
        ("held-out NSP accuracy", "eval_nsp_accuracy", 4),
        ("held-out MLM perplexity", "heldout_perplexity", 2),
        ("tokens per second", "tokens_per_s", 0),
    ] {
        finals.row(vec![label.into(), fmt_opt(curves.last(key), decimals)]);
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
fn curve_samples(rows: &[super::data::MetricsRow]) -> Table {
    let fixed = |d: usize| move |v: Option<f64>| fmt_opt(v, d);
    let scientific = |v: Option<f64>| v.map_or_else(|| MISSING.into(), |v| format!("{v:.2e}"));
    let cols: [(&str, &str, &dyn Fn(Option<f64>) -> String); 7] = [
        ("step", "step", &fixed(0)),
        ("tokens seen", "tokens_seen", &fixed(0)),
        ("loss", "loss", &fixed(4)),
        ("MLM acc.", "mlm_accuracy", &fixed(4)),
        ("NSP acc.", "nsp_accuracy", &fixed(4)),
        ("learning rate", "learning_rate", &scientific),
        ("grad norm", "grad_norm", &fixed(3)),
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
                .map(|(_, key, format)| format(rows[i].get(*key).copied()))
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
    match arm.and_then(|a| a.mean.map(|m| (m, a.std))) {
        None => MISSING.into(),
        Some((m, Some(sd))) => format!("{:.1} ± {:.1}", as_percent(m), as_percent(sd)),
        Some((m, None)) => format!("{:.1}", as_percent(m)),
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

// ---------------------------------------------------------------------------------------
// Markdown

fn markdown(doc: &Document) -> String {
    let mut out = format!("# {}\n\n{}\n", doc.title, doc.subtitle);
    for section in &doc.sections {
        out.push_str(&format!("\n## {}\n", section.title));
        for block in &section.blocks {
            markdown_block(block, &mut out);
        }
    }
    out
}

fn markdown_block(block: &Block, out: &mut String) {
    match block {
        Block::Heading(h) => out.push_str(&format!("\n### {h}\n")),
        Block::Paragraph(p) => out.push_str(&format!("\n{p}\n")),
        Block::List(items) => {
            out.push('\n');
            for i in items {
                out.push_str(&format!("- {i}\n"));
            }
        }
        Block::Warnings(items) => {
            out.push('\n');
            for i in items {
                out.push_str(&format!("> **Warning:** {i}\n>\n"));
            }
        }
        Block::Table(t) => out.push_str(&markdown_table(t)),
        Block::Details {
            summary, blocks, ..
        } => {
            out.push_str(&format!("\n### {summary}\n"));
            for b in blocks {
                markdown_block(b, out);
            }
        }
        Block::Row(blocks) => {
            for b in blocks {
                markdown_block(b, out);
            }
        }
        Block::Charts(charts) => {
            out.push('\n');
            for chart in charts {
                let note = if chart.has_data {
                    "plotted in report.html"
                } else {
                    MISSING
                };
                out.push_str(&format!("- Plot: {}: {note}\n", chart.title));
            }
        }
    }
}

fn markdown_table(t: &Table) -> String {
    let cell = |s: &str| s.replace('|', "\\|").replace('\n', " ");
    let mut out = String::from("\n|");
    for h in &t.headers {
        out.push_str(&format!(" {} |", cell(h)));
    }
    out.push_str("\n|");
    for _ in &t.headers {
        out.push_str("---|");
    }
    out.push('\n');
    for row in &t.rows {
        out.push('|');
        for c in row {
            out.push_str(&format!(" {} |", cell(c)));
        }
        out.push('\n');
    }
    out
}

// ---------------------------------------------------------------------------------------
// HTML

const STYLE: &str = "
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif;
  margin: 0 auto; max-width: 1180px; padding: 24px 32px 64px; color: #1d232a; line-height: 1.45; }
h1 { font-size: 1.8rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.3rem; border-bottom: 2px solid #dde3ea; padding-bottom: 4px; margin-top: 2.2rem; }
h3 { font-size: 1.05rem; margin-top: 1.4rem; }
.subtitle { color: #56606b; margin-top: 0; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.86rem; }
th, td { border: 1px solid #d5dbe1; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f1f4f7; font-weight: 600; }
tr:nth-child(even) td { background: #fafbfc; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.missing { color: #9aa3ad; font-style: italic; }
td.code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 0.8rem; }
.warning { background: #fff4e5; border-left: 4px solid #e69f00; padding: 6px 12px; margin: 0.6rem 0; }
details { margin: 0.6rem 0; }
summary { cursor: pointer; font-weight: 600; }
.row { display: flex; flex-wrap: wrap; gap: 0 24px; align-items: flex-start; }
.charts { display: flex; flex-wrap: wrap; gap: 14px; margin: 1rem 0; }
.chart { flex: 1 1 520px; max-width: 860px; margin: 0; border: 1px solid #e3e7eb;
  border-radius: 6px; padding: 6px; background: #fff; }
.chart svg { width: 100%; height: auto; display: block; }
.chart.missing { color: #9aa3ad; font-style: italic; padding: 24px; }
.scroll { overflow-x: auto; }
";

fn html(doc: &Document) -> String {
    let mut out =
        String::from("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    out.push_str(&format!(
        "<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n",
        escape(&doc.title)
    ));
    out.push_str(&format!(
        "<h1>{}</h1>\n<p class=\"subtitle\">{}</p>\n",
        escape(&doc.title),
        escape(&doc.subtitle)
    ));
    for section in &doc.sections {
        out.push_str(&format!("<section>\n<h2>{}</h2>\n", escape(&section.title)));
        for block in &section.blocks {
            html_block(block, &mut out);
        }
        out.push_str("</section>\n");
    }
    out.push_str("</body>\n</html>\n");
    out
}

fn html_block(block: &Block, out: &mut String) {
    match block {
        Block::Heading(h) => out.push_str(&format!("<h3>{}</h3>\n", escape(h))),
        Block::Paragraph(p) => out.push_str(&format!("<p>{}</p>\n", escape(p))),
        Block::List(items) => {
            out.push_str("<ul>\n");
            for i in items {
                out.push_str(&format!("<li>{}</li>\n", escape(i)));
            }
            out.push_str("</ul>\n");
        }
        Block::Warnings(items) => {
            for i in items {
                out.push_str(&format!(
                    "<div class=\"warning\"><strong>Warning:</strong> {}</div>\n",
                    escape(i)
                ));
            }
        }
        Block::Table(t) => out.push_str(&html_table(t)),
        Block::Details {
            summary,
            open,
            blocks,
        } => {
            out.push_str(&format!(
                "<details{}>\n<summary>{}</summary>\n",
                if *open { " open" } else { "" },
                escape(summary)
            ));
            for b in blocks {
                html_block(b, out);
            }
            out.push_str("</details>\n");
        }
        Block::Row(blocks) => {
            out.push_str("<div class=\"row\">\n");
            for b in blocks {
                html_block(b, out);
            }
            out.push_str("</div>\n");
        }
        Block::Charts(charts) => {
            out.push_str("<div class=\"charts\">\n");
            for chart in charts {
                match &chart.svg {
                    Some(svg) => out.push_str(&format!(
                        "<figure class=\"chart\" aria-label=\"{}\">\n{}\n</figure>\n",
                        escape(&chart.title),
                        strip_xml_declaration(svg)
                    )),
                    None => out.push_str(&format!(
                        "<div class=\"chart missing\">{}: {MISSING}</div>\n",
                        escape(&chart.title)
                    )),
                }
            }
            out.push_str("</div>\n");
        }
    }
}

fn html_table(t: &Table) -> String {
    let mut out = String::from("<div class=\"scroll\"><table>\n<thead><tr>");
    for h in &t.headers {
        out.push_str(&format!("<th>{}</th>", escape(h)));
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for row in &t.rows {
        out.push_str("<tr>");
        for c in row {
            let class = cell_class(c);
            if class.is_empty() {
                out.push_str(&format!("<td>{}</td>", escape(c)));
            } else {
                out.push_str(&format!("<td class=\"{class}\">{}</td>", escape(c)));
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody>\n</table></div>\n");
    out
}

/// `missing` for absent values, `num` for numbers (right-aligned), `code` for hashes.
fn cell_class(cell: &str) -> &'static str {
    if cell == MISSING || cell == NOT_RUN {
        "missing"
    } else if cell.len() == SHORT_HASH && cell.chars().all(|c| c.is_ascii_hexdigit()) {
        "code"
    } else if cell
        .trim_start_matches('-')
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_digit())
        && !cell.contains(' ')
    {
        "num"
    } else {
        ""
    }
}

fn strip_xml_declaration(svg: &str) -> &str {
    match svg.find("<svg") {
        Some(i) => &svg[i..],
        None => svg,
    }
}

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Number and time formatting

/// `v` with `decimals` places, or [`MISSING`].
pub fn fmt_opt(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        Some(v) => v.to_string(),
        None => MISSING.into(),
    }
}

/// Row counts; 0 means rows do not apply (checkpoints, tokenizers) and prints as `–`.
fn fmt_rows(rows: u64) -> String {
    if rows == 0 {
        NOT_APPLICABLE.into()
    } else {
        rows.to_string()
    }
}

fn short(hash: &str) -> String {
    hash.chars().take(SHORT_HASH).collect()
}

/// `512 B`, `1.5 KiB`, `3.2 MiB`, `1.1 GiB`.
pub fn fmt_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `850 ms`, `12.3 s`, `4m 05s`, `2h 03m`.
pub fn fmt_duration(seconds: f64) -> String {
    if seconds < 1.0 {
        format!("{:.0} ms", seconds * 1000.0)
    } else if seconds < 60.0 {
        format!("{seconds:.1} s")
    } else if seconds < 3600.0 {
        let s = seconds.round() as u64;
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        let m = (seconds / 60.0).round() as u64;
        format!("{}h {:02}m", m / 60, m % 60)
    }
}

fn fmt_rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if v >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Unix seconds as `2026-11-27 22:45:33`.
pub fn fmt_time(unix: f64) -> String {
    if !unix.is_finite() || unix <= 0.0 {
        return MISSING.into();
    }
    let secs = unix.floor() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times_bytes_and_durations() {
        assert_eq!(fmt_time(0.0), MISSING);
        assert_eq!(fmt_time(1_795_819_533.7), "2026-11-27 22:45:33");
        assert_eq!(fmt_time(951_782_400.0), "2000-02-29 00:00:00");
        assert_eq!(fmt_bytes(512), "512 B");
        assert_eq!(fmt_bytes(1536), "1.5 KiB");
        assert_eq!(fmt_bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
        assert_eq!(fmt_duration(0.25), "250 ms");
        assert_eq!(fmt_duration(245.0), "4m 05s");
        assert_eq!(fmt_duration(7380.0), "2h 03m");
    }

    #[test]
    fn scores_print_as_percentages() {
        assert_eq!(as_percent(0.853), 85.3);
        assert_eq!(as_percent(88.5), 88.5);
        assert_eq!(as_percent(-0.02), -2.0);
    }

    #[test]
    fn html_escapes_and_classes() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(cell_class(MISSING), "missing");
        assert_eq!(cell_class("0123456789ab"), "code");
        assert_eq!(cell_class("-1.5"), "num");
        assert_eq!(cell_class("81.2 ± 1.0"), "");
        let md = markdown_table(&Table {
            headers: vec!["a".into(), "b".into()],
            rows: vec![vec!["x|y".into(), "1".into()]],
        });
        assert_eq!(md, "\n| a | b |\n|---|---|\n| x\\|y | 1 |\n");
    }
}
