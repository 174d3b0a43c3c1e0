//! The benchmark report (`report` stage): `report.md` and one self-contained `report.html`
//! (inline CSS and SVG plots, no network) made from the manifest and the artifacts it names.
//!
//! [`ReportData::from_manifest`] gathers the lineage (every stage, artifact, short hash,
//! rows, bytes, wall time, throughput and the config that made it), the data statistics
//! beside Google's generator, the pre-training curves, the fine-tuning table beside the
//! published BERT figures, and the machine. [`render_markdown`] and [`render_html`] print it;
//! [`write_report`] writes both files. Whatever a stage did not produce prints as
//! "missing", never as zero.
//!
//! # What the report reads from each stage
//!
//! Stage records are looked up by name: `vocab`, `pairs`, `mask`, `pretrain`, `finetune`
//! (others found in the manifest are listed after them). Every key below is optional.
//!
//! - Every stage: `StageRecord` fields as recorded; a numeric metrics key ending in
//!   `_per_s` (e.g. `tokens_per_s`) is its throughput, else rows written per second.
//! - `pairs`: its scalar metrics are listed under "other metrics".
//! - `mask` metrics: `instances`, `avg_non_pad_tokens`, `random_next_fraction`,
//!   `avg_masked_positions`, `mask_fraction`, `random_fraction`, `kept_fraction`
//!   (fractions in 0..1); other scalar keys are listed.
//! - `pretrain`: the first artifact of kind `metrics` is its JSONL log, one
//!   [`crate::pretrain::PretrainLogRow`] per line, the type the stage writes: training rows
//!   (`"split": "train"`), evaluations on the eval shards (`"eval"`) and on the held-out
//!   text (`"heldout"`). Its stage metrics (final values) are listed, and `train.loss`,
//!   `train.mlm_accuracy`, `train.nsp_accuracy` and `heldout_perplexity` stand in for a log
//!   that is missing. The model shape is read from the first object in
//!   its config holding `hidden_size`, `num_hidden_layers` and `num_attention_heads`.
//! - `finetune` metrics:
//!   ```json
//!   {"tasks": {
//!     "sst2": {"metric": "accuracy",
//!              "pretrained": {"scores": [0.81, 0.83], "mean": 0.82, "median": 0.82,
//!                             "std": 0.014, "all": {"accuracy": 0.82}},
//!              "scratch": {"scores": [0.70, 0.71], "all": {"accuracy": 0.705}}},
//!     "squad": {"metric": "f1",
//!               "pretrained": {"scores": [0.30], "exact_match": 0.21, "f1": 0.30}}}}
//!   ```
//!   Task names are matched loosely (`SST-2` = `sst2`). `scores` are the headline metric per
//!   seed; `mean`/`median`/`std` (sample) are computed from them when absent; `all` and any
//!   other numeric key of an arm are shown as "all metrics". An arm may also be a bare
//!   number. Scores are fractions in 0..1; values above 1 are taken to be percentages
//!   already (SQuAD's official script). Without a `tasks` object, top-level objects with
//!   `pretrained` or `scratch` are the tasks.

pub mod claim;
mod data;
mod document;
mod format;
mod plots;
mod reference;
mod render;

use std::path::{Path, PathBuf};

pub use data::{
    flatten_scalars, parse_cpuinfo, parse_finetune, ArmResult, DataStatRow, DataStats,
    HistoryEntry, Machine, PretrainCurves, ReportData, RowValue, ShardGroup, StageEntry,
    TaskResult, VocabDropped, METRICS_KIND, PIPELINE_STAGES, REPORT_STAGE,
};
pub use document::{build_document, glue_table, headline, Block, Chart, Document, Section, Table};
pub use format::{as_percent, fmt_bytes, fmt_duration, fmt_time, MISSING, NOT_APPLICABLE, NOT_RUN};
pub use plots::{pretrain_charts, render_line_chart, Curve, LineChart};
pub use reference::{
    canonical_task, task_display_name, DataReference, PublishedColumn, Split, BERT_BASE_DEV,
    BERT_BASE_TEST, BERT_MINI, BERT_TINY, DATA_REFERENCES, PUBLISHED, STANDARD_TASKS,
};
pub use render::{escape, markdown_table, render_html, render_markdown};

use serde_json::{json, Value};

use crate::durable;
use crate::error::{IoContext, Result};
use crate::stage::{Begin, Outcome, Stage, StageCtx};

/// The artifact kind of `report.md` and `report.html`.
pub const REPORT_KIND: &str = "report";

/// The two files a report consists of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportFiles {
    pub markdown: PathBuf,
    pub html: PathBuf,
}

/// Writes `report.md` and `report.html` into `out_dir` (created if needed), each through a
/// temp file, fsync and rename, so a reader never sees half a report.
pub fn write_report(data: &ReportData, out_dir: &Path) -> Result<ReportFiles> {
    std::fs::create_dir_all(out_dir).at(out_dir)?;
    let files = ReportFiles {
        markdown: out_dir.join("report.md"),
        html: out_dir.join("report.html"),
    };
    let html = render_html(data)?;
    durable::write_bytes(&files.markdown, render_markdown(data).as_bytes())?;
    durable::write_bytes(&files.html, html.as_bytes())?;
    tracing::debug!(
        html = %files.html.display(),
        artifacts = data.artifact_count(),
        "report written"
    );
    Ok(files)
}

/// What the report stage did, the data it showed and where the files are.
#[derive(Debug, Clone)]
pub struct ReportRun {
    /// Ran, or skipped because no artifact changed since the last report.
    pub outcome: Outcome,
    /// The data of the report (rebuilt from the manifest either way).
    pub data: ReportData,
    /// `<run>/report/report.md` and `report.html`.
    pub files: ReportFiles,
}

/// The `report` stage: reads the manifest and the artifacts it names, writes `report.md`
/// and `report.html`, and records them with every artifact they describe as inputs. Skips
/// when no artifact changed since the last report (`--force` reruns).
pub fn run(ctx: &StageCtx) -> Result<ReportRun> {
    let mut data = ReportData::from_manifest(&ctx.manifest)?;
    if let Some(title) = &ctx.config().report.title {
        data.title = title.clone();
    }
    let dir = ctx.run_dir().join(REPORT_STAGE);
    let files = ReportFiles {
        markdown: dir.join("report.md"),
        html: dir.join("report.html"),
    };
    let mut run = match ctx.begin(Stage::Report)? {
        Begin::Skip(record) => {
            return Ok(ReportRun {
                outcome: Outcome::Skipped(record),
                data,
                files,
            })
        }
        Begin::Run(run) => run,
    };
    write_report(&data, run.dir())?;
    run.add("report.md", REPORT_KIND, 0)?;
    run.add("report.html", REPORT_KIND, 0)?;
    let record = run.finish(ctx, report_metrics(&data))?;
    Ok(ReportRun {
        outcome: Outcome::Ran(record),
        data,
        files,
    })
}

/// The report stage's metrics: which stages it found, its warnings and headline numbers.
pub fn report_metrics(data: &ReportData) -> Value {
    let names = |present: bool| -> Vec<&str> {
        data.stages
            .iter()
            .filter(|s| s.record.is_some() == present)
            .map(|s| s.name.as_str())
            .collect()
    };
    let headline: serde_json::Map<String, Value> = headline(data)
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    json!({
        "stages_recorded": names(true),
        "stages_missing": names(false),
        "artifacts_described": data.artifact_count(),
        "warnings": data.warnings,
        "headline": headline,
    })
}
