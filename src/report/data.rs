//! What the report shows, gathered from the manifest and the artifacts it names, and
//! nothing else. The main type is [`ReportData`]; [`ReportData::from_manifest`] builds it.
//!
//! Every field that a stage may not have produced is an `Option` or an empty list, so the
//! renderers print "missing" for it instead of a zero. Unknown metric keys are kept where a
//! table can show them and ignored elsewhere.

use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{IoContext, Result};
use crate::finetune::{ArmSummary, FinetuneSummary};
use crate::manifest::Streamed;
use crate::manifest::{ArtifactRecord, HistoryRecord, InputRef, Manifest, StageRecord};
use crate::metrics::SeedSummary;
use crate::pretrain::{fill_tokens_seen, LogSplit, PretrainLogRow};
use crate::stage::{UpstreamDigest, UPSTREAM_PREFIX};

use super::reference::{canonical_task, DATA_REFERENCES, STANDARD_TASKS};

/// The stages the report describes, in pipeline order. Other stages found in the manifest
/// are listed after these; the `report` stage itself is never an input.
pub const PIPELINE_STAGES: [&str; 5] = ["vocab", "pairs", "mask", "pretrain", "finetune"];

/// The report's own stage name.
pub const REPORT_STAGE: &str = "report";

/// The artifact kind of the pre-training JSONL log.
pub const METRICS_KIND: &str = "metrics";

/// Everything the report shows.
#[derive(Debug, Clone)]
pub struct ReportData {
    /// Heading of the report.
    pub title: String,
    /// The run directory the manifest describes.
    pub run_dir: PathBuf,
    /// Every pipeline stage, present or missing, in pipeline order.
    pub stages: Vec<StageEntry>,
    /// Every stage run recorded, oldest first.
    pub history: Vec<HistoryEntry>,
    /// Statistics of the masked-LM instances (`mask` stage) and of the pairs.
    pub data_stats: DataStats,
    /// Pre-training curves; `None` when the `pretrain` stage is missing.
    pub pretrain: Option<PretrainCurves>,
    /// Fine-tuning results; `None` when the `finetune` stage is missing.
    pub finetune: Option<Vec<TaskResult>>,
    /// The machine the report was made on.
    pub machine: Machine,
    /// Problems found while reading (changed or unreadable artifacts), shown at the top.
    pub warnings: Vec<String>,
}

/// One stage of the lineage.
#[derive(Debug, Clone)]
pub struct StageEntry {
    /// Stage name.
    pub name: String,
    /// Its latest complete run, if it ever ran, with the artifacts that are not shards (a
    /// large corpus makes hundreds of thousands of shards: they are in `shards`, summed).
    pub record: Option<StageRecord>,
    /// Its shards, one group per kind, in recorded order of their first shard.
    pub shards: Vec<ShardGroup>,
    /// Inputs whose artifact has since been replaced or removed upstream.
    pub stale_inputs: Vec<String>,
    /// What a stage reading this one records of it (`stage:<name>` and the digest of all its
    /// artifacts, [`crate::stage::upstream_input`]).
    pub digest: Option<InputRef>,
}

/// A stage's shards of one kind, summed as the report reads them one at a time.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardGroup {
    /// Artifact kind (`pairs-train`, `instances-eval`, ...).
    pub kind: String,
    /// How many.
    pub count: usize,
    /// The first shard's id and hash, in recorded order.
    pub first: (String, String),
    /// The last shard's id.
    pub last: String,
    /// Rows over all of them.
    pub rows: u64,
    /// Bytes over all of them.
    pub bytes: u64,
    /// blake3 over their ids and hashes, in recorded order.
    pub blake3: String,
}

/// Builds the [`ShardGroup`]s of one stage from its shards, one at a time.
#[derive(Default)]
struct ShardGroups(Vec<(ShardGroup, UpstreamDigest)>);

impl ShardGroups {
    fn add(&mut self, a: &ArtifactRecord) {
        let i = match self.0.iter().position(|(g, _)| g.kind == a.kind) {
            Some(i) => i,
            None => {
                let group = ShardGroup {
                    kind: a.kind.clone(),
                    count: 0,
                    first: (a.id.clone(), a.blake3.clone()),
                    last: String::new(),
                    rows: 0,
                    bytes: 0,
                    blake3: String::new(),
                };
                self.0.push((group, UpstreamDigest::default()));
                self.0.len() - 1
            }
        };
        let (group, digest) = &mut self.0[i];
        group.count += 1;
        group.last.clone_from(&a.id);
        group.rows += a.rows;
        group.bytes += a.bytes;
        digest.add(a);
    }

    fn finish(self) -> Vec<ShardGroup> {
        self.0
            .into_iter()
            .map(|(mut group, digest)| {
                group.blake3 = digest.finish(&group.kind).blake3;
                group
            })
            .collect()
    }
}

impl StageEntry {
    /// `missing`, `stale` (an input changed since it ran) or `ok`.
    pub fn status(&self) -> &'static str {
        match (&self.record, self.stale_inputs.is_empty()) {
            (None, _) => "missing",
            (Some(_), false) => "stale",
            (Some(_), true) => "ok",
        }
    }

    /// Rows over all artifacts, shards included.
    pub fn total_rows(&self) -> Option<u64> {
        self.record.as_ref().map(|r| {
            r.artifacts.iter().map(|a| a.rows).sum::<u64>()
                + self.shards.iter().map(|g| g.rows).sum::<u64>()
        })
    }

    /// Bytes over all artifacts, shards included.
    pub fn total_bytes(&self) -> Option<u64> {
        self.record.as_ref().map(|r| {
            r.artifacts.iter().map(|a| a.bytes).sum::<u64>()
                + self.shards.iter().map(|g| g.bytes).sum::<u64>()
        })
    }

    /// The stage's own throughput figure (the first metrics key ending in `_per_s`), or rows
    /// written per second of wall time. `None` when the stage is missing or took no time.
    pub fn throughput(&self) -> Option<(f64, String)> {
        let record = self.record.as_ref()?;
        if let Value::Object(metrics) = &record.metrics {
            for (key, value) in metrics {
                if let (Some(unit), Some(v)) = (key.strip_suffix("_per_s"), value.as_f64()) {
                    return Some((v, format!("{}/s", unit.replace('_', " "))));
                }
            }
        }
        let rows = self.total_rows()?;
        let seconds = record.duration_s();
        (rows > 0 && seconds > 0.0).then(|| (rows as f64 / seconds, "rows/s".to_string()))
    }
}

/// One past stage run, from the manifest's history.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryEntry {
    pub stage: String,
    pub finished_at: f64,
    pub duration_s: f64,
    pub fingerprint: String,
    pub artifacts: usize,
    /// This run is the stage's latest (its artifacts are the ones in the lineage).
    pub current: bool,
}

/// The `mask` stage's statistics beside Google's figures, plus the other scalar metrics of
/// `vocab`, `pairs` and `mask`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DataStats {
    /// What the `vocab` stage left out of its training to stay within `vocab.max_words`
    /// (`None`: nothing, or no vocab record).
    pub vocab_dropped: Option<VocabDropped>,
    /// The `mask` stage has a record.
    pub mask_present: bool,
    /// Instances written (`instances` in the mask metrics).
    pub instances: Option<f64>,
    /// One row per [`DATA_REFERENCES`] entry.
    pub compared: Vec<DataStatRow>,
    /// Other scalar metrics, `stage.key` → value, for a second table.
    pub other: Vec<(String, String)>,
}

/// Words the `vocab` stage left out ([`crate::vocab::WordCounter`]), from its metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VocabDropped {
    /// Distinct words it trained on (`distinct_words`).
    pub kept: u64,
    /// Words counted at most this many times were left out (`dropped_word_floor`).
    pub floor: u64,
    /// Word entries left out (`dropped_words`).
    pub words: u64,
    /// Occurrences they held (`dropped_occurrences`).
    pub occurrences: u64,
}

impl VocabDropped {
    /// From the vocab stage's metrics: `None` when it dropped nothing (or predates the limit).
    fn from_metrics(metrics: &Value) -> Option<VocabDropped> {
        let get = |key: &str| metrics.get(key).and_then(Value::as_u64);
        let words = get("dropped_words")?;
        (words > 0).then(|| VocabDropped {
            kept: get("distinct_words").unwrap_or(0),
            floor: get("dropped_word_floor").unwrap_or(0),
            words,
            occurrences: get("dropped_occurrences").unwrap_or(0),
        })
    }
}

/// One statistic of this run beside its reference.
#[derive(Debug, Clone, PartialEq)]
pub struct DataStatRow {
    pub label: String,
    pub value: Option<f64>,
    pub reference: f64,
    pub decimals: usize,
}

/// A field of a log row as a number, `None` where the row lacks it.
pub type RowValue = fn(&PretrainLogRow) -> Option<f64>;

/// The pre-training log (`metrics.jsonl`, rows written by [`crate::pretrain::MetricsLog`]),
/// split by what each row measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PretrainCurves {
    /// Artifact id of the log, when the stage recorded one.
    pub source: Option<String>,
    /// Rows logged during training (`loss`, `mlm_accuracy`, `learning_rate`, ...).
    pub train: Vec<PretrainLogRow>,
    /// Evaluations on the mask stage's eval shards.
    pub eval: Vec<PretrainLogRow>,
    /// The evaluation on the held-out text (`corpus.heldout`) after the last step.
    pub heldout: Vec<PretrainLogRow>,
    /// The stage's final metrics, flattened to `key` → printed value.
    pub final_metrics: Vec<(String, String)>,
}

impl PretrainCurves {
    /// The rows of `text`, one JSON object per line, by split. Returns the count of lines
    /// that are not log rows.
    pub fn parse(text: &str) -> (PretrainCurves, usize) {
        let mut curves = PretrainCurves::default();
        let mut bad = 0;
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let Some(row) = PretrainLogRow::parse(line) else {
                bad += 1;
                continue;
            };
            match row.split {
                LogSplit::Train => curves.train.push(row),
                LogSplit::Eval => curves.eval.push(row),
                LogSplit::Heldout => curves.heldout.push(row),
            }
        }
        (curves, bad)
    }

    /// `(x, y)` points of the training rows that have both values, finite values only.
    pub fn train_series(&self, x: RowValue, y: RowValue) -> Vec<(f64, f64)> {
        series(&self.train, x, y)
    }

    /// `(x, y)` points of the eval-shard rows that have both values.
    pub fn eval_series(&self, x: RowValue, y: RowValue) -> Vec<(f64, f64)> {
        series(&self.eval, x, y)
    }

    /// `(x, y)` points of the held-out text rows that have both values.
    pub fn heldout_series(&self, x: RowValue, y: RowValue) -> Vec<(f64, f64)> {
        series(&self.heldout, x, y)
    }

    /// The last finite value of a training row.
    pub fn last_train(&self, value: RowValue) -> Option<f64> {
        last(&self.train, value)
    }

    /// The last finite value of an eval-shard row.
    pub fn last_eval(&self, value: RowValue) -> Option<f64> {
        last(&self.eval, value)
    }

    /// The last finite value of a held-out text row.
    pub fn last_heldout(&self, value: RowValue) -> Option<f64> {
        last(&self.heldout, value)
    }

    /// A final metric the stage recorded (`train.loss`, `heldout_perplexity`, ...).
    pub fn final_metric(&self, key: &str) -> Option<f64> {
        self.final_metrics
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.parse().ok())
    }
}

fn series(rows: &[PretrainLogRow], x: RowValue, y: RowValue) -> Vec<(f64, f64)> {
    rows.iter()
        .filter_map(|r| Some((x(r)?, y(r)?)))
        .filter(|(a, b)| a.is_finite() && b.is_finite())
        .collect()
}

fn last(rows: &[PretrainLogRow], value: RowValue) -> Option<f64> {
    rows.iter()
        .rev()
        .find_map(|r| value(r).filter(|v| v.is_finite()))
}

/// One fine-tuning task: pre-trained and from-scratch results over seeds.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskResult {
    /// Task name as the finetune stage recorded it.
    pub task: String,
    /// Headline metric (`accuracy`, `f1`, `mcc`, `spearman`, ...).
    pub metric: Option<String>,
    pub pretrained: Option<ArmResult>,
    pub scratch: Option<ArmResult>,
}

/// The results of one initialisation (pre-trained or scratch) of a task over its seeds.
/// Scores are fractions (0..1) or percentages as the stage wrote them; the renderer prints
/// both as percentages.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ArmResult {
    /// Headline score per seed.
    pub scores: Vec<f64>,
    pub mean: Option<f64>,
    pub median: Option<f64>,
    pub std: Option<f64>,
    /// Every metric of the task (averaged over seeds), e.g. `accuracy` and `f1`.
    pub all: BTreeMap<String, f64>,
    /// The peak learning rate these scores were trained with (the sweep's choice).
    pub learning_rate: Option<f64>,
    /// Every learning rate of a sweep with its mean headline score.
    pub sweep: Vec<(f64, Option<f64>)>,
}

/// The machine the report was made on, and how this build was compiled.
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    /// `model name` from /proc/cpuinfo.
    pub cpu_model: Option<String>,
    /// Physical cores.
    pub cores: usize,
    /// Hardware threads.
    pub threads: usize,
    /// `linux-x86_64`.
    pub platform: String,
    /// Cargo features and CPU features this build uses.
    pub build_features: Vec<String>,
    /// `release` or `debug`.
    pub profile: String,
    /// bertline version (+ git sha when built from a checkout).
    pub code_version: String,
}

impl ReportData {
    /// Reads the manifest's stage records and history, and the JSONL metrics artifacts they
    /// name. The report stage's own record is ignored.
    pub fn from_manifest(manifest: &Manifest) -> Result<ReportData> {
        let mut warnings = Vec::new();
        // Each stage's artifacts read one at a time: the shards summed by kind, the others
        // kept, and the digest a stage reading it records.
        let mut records = Vec::new();
        let mut shards: HashMap<String, Vec<ShardGroup>> = HashMap::new();
        let mut digests = Vec::new();
        for mut record in manifest.stage_summaries()? {
            let (mut groups, mut digest) = (ShardGroups::default(), UpstreamDigest::default());
            let read = manifest.each_artifact(&record.stage, |a| {
                digest.add(&a);
                match a.shard {
                    Some(_) => groups.add(&a),
                    None => record.artifacts.push(a),
                }
                Ok(ControlFlow::Continue(()))
            })?;
            if !matches!(read, Some(Streamed::All(n)) if n == record.artifact_count) {
                warnings.push(format!(
                    "the manifest's list of the {} stage's {} artifacts is missing or not the one recorded: rerun `just stage {}`",
                    record.stage, record.artifact_count, record.stage
                ));
            }
            digests.push(digest.finish(&record.stage));
            shards.insert(record.stage.clone(), groups.finish());
            records.push(record);
        }
        // What a stage may have read: an upstream stage as a whole (`stage:<name>`), or, in
        // records of earlier versions, each of its artifacts (shards among them are not
        // kept: such a record's stage reruns after an upgrade, and shows as stale here).
        let current: HashMap<&str, &str> = records
            .iter()
            .flat_map(|r| &r.artifacts)
            .map(|a| (a.id.as_str(), a.blake3.as_str()))
            .chain(digests.iter().map(|d| (d.id.as_str(), d.blake3.as_str())))
            .collect();
        let mut stale: HashMap<String, Vec<String>> = records
            .iter()
            .map(|r| (r.stage.clone(), stale_inputs(&current, r)))
            .collect();
        let digests: HashMap<String, InputRef> =
            digests.into_iter().map(|d| (d.id.clone(), d)).collect();
        let stages = order_stages(records)
            .into_iter()
            .map(|(name, record)| StageEntry {
                stale_inputs: stale.remove(&name).unwrap_or_default(),
                shards: shards.remove(&name).unwrap_or_default(),
                digest: digests.get(&format!("{UPSTREAM_PREFIX}{name}")).cloned(),
                name,
                record,
            })
            .collect::<Vec<_>>();
        let record_of = |name: &str| {
            stages
                .iter()
                .find(|s| s.name == name)
                .and_then(|s| s.record.as_ref())
        };
        let data_stats = data_stats(record_of("vocab"), record_of("pairs"), record_of("mask"));
        let pretrain = match record_of("pretrain") {
            Some(r) => Some(read_pretrain(manifest.run_dir(), r, &mut warnings)?),
            None => None,
        };
        let finetune = record_of("finetune").map(|r| parse_finetune(&r.metrics));
        let history = history_entries(manifest.history()?, &stages);
        Ok(ReportData {
            title: "bertline run report".to_string(),
            run_dir: manifest.run_dir().to_path_buf(),
            stages,
            history,
            data_stats,
            pretrain,
            finetune,
            machine: Machine::detect(),
            warnings,
        })
    }

    /// The stages this report describes, as the inputs of the report stage (one
    /// [`upstream_input`] each, a digest of all its artifacts): rerunning after any artifact
    /// changed makes a new report.
    pub fn inputs(&self) -> Vec<InputRef> {
        self.stages
            .iter()
            .filter(|s| s.record.is_some())
            .filter_map(|s| s.digest.clone())
            .collect()
    }

    /// The artifacts of every listed stage that are not shards, in pipeline order.
    pub fn artifacts(&self) -> impl Iterator<Item = &ArtifactRecord> {
        self.stages
            .iter()
            .filter_map(|s| s.record.as_ref())
            .flat_map(|r| r.artifacts.iter())
    }

    /// How many artifacts the listed stages recorded, shards included.
    pub fn artifact_count(&self) -> usize {
        self.stages
            .iter()
            .filter_map(|s| s.record.as_ref())
            .map(|r| r.artifact_count)
            .sum()
    }

    /// The record of `stage`, if it ran.
    pub fn record(&self, stage: &str) -> Option<&StageRecord> {
        self.stages
            .iter()
            .find(|s| s.name == stage)
            .and_then(|s| s.record.as_ref())
    }

    /// Model shape from the pre-training (or fine-tuning) config: `(layers, hidden, heads)`.
    pub fn model_shape(&self) -> Option<(u64, u64, u64)> {
        ["pretrain", "finetune"].iter().find_map(|stage| {
            let config = &self.record(stage)?.config;
            let model = find_object_with(config, "hidden_size")?;
            Some((
                model.get("num_hidden_layers")?.as_u64()?,
                model.get("hidden_size")?.as_u64()?,
                model.get("num_attention_heads")?.as_u64()?,
            ))
        })
    }

    /// Sum of the wall times of the stages that ran.
    pub fn total_wall_s(&self) -> f64 {
        self.stages
            .iter()
            .filter_map(|s| s.record.as_ref())
            .map(StageRecord::duration_s)
            .sum()
    }
}

/// Pairs each known stage with its record (or `None`), then appends unknown stages.
fn order_stages(records: Vec<StageRecord>) -> Vec<(String, Option<StageRecord>)> {
    let mut by_name: BTreeMap<String, StageRecord> = records
        .into_iter()
        .filter(|r| r.stage != REPORT_STAGE)
        .map(|r| (r.stage.clone(), r))
        .collect();
    let mut out: Vec<(String, Option<StageRecord>)> = PIPELINE_STAGES
        .iter()
        .map(|name| (name.to_string(), by_name.remove(*name)))
        .collect();
    out.extend(by_name.into_iter().map(|(name, r)| (name, Some(r))));
    out
}

/// Inputs of `record` that name an artifact which is now gone or has another hash;
/// `current` maps the id of every current artifact to its hash.
fn stale_inputs(current: &HashMap<&str, &str>, record: &StageRecord) -> Vec<String> {
    record
        .inputs
        .iter()
        .filter(|input| !input.id.starts_with("file:"))
        .filter(|input| current.get(input.id.as_str()) != Some(&input.blake3.as_str()))
        .map(|input| input.id.clone())
        .collect()
}

fn history_entries(history: Vec<HistoryRecord>, stages: &[StageEntry]) -> Vec<HistoryEntry> {
    history
        .into_iter()
        .map(|r| {
            let current = stages.iter().any(|s| {
                s.record.as_ref().is_some_and(|c| {
                    c.stage == r.stage
                        && c.fingerprint == r.fingerprint
                        && c.finished_at == r.finished_at
                })
            });
            HistoryEntry {
                duration_s: r.duration_s(),
                artifacts: r.artifact_count,
                stage: r.stage,
                finished_at: r.finished_at,
                fingerprint: r.fingerprint,
                current,
            }
        })
        .collect()
}

/// Builds the data statistics from the `vocab`, `pairs` and `mask` metrics.
fn data_stats(
    vocab: Option<&StageRecord>,
    pairs: Option<&StageRecord>,
    mask: Option<&StageRecord>,
) -> DataStats {
    let metric = |key: &str| {
        mask.and_then(|m| m.metrics.get(key))
            .and_then(Value::as_f64)
    };
    let compared = DATA_REFERENCES
        .iter()
        .map(|r| DataStatRow {
            label: r.label.to_string(),
            value: metric(r.key),
            reference: r.reference,
            decimals: r.decimals,
        })
        .collect();
    let mut other = Vec::new();
    for record in [vocab, pairs, mask].into_iter().flatten() {
        for (key, value) in flatten_scalars(&record.metrics) {
            let shown = record.stage == "mask"
                && (key == "instances" || DATA_REFERENCES.iter().any(|r| r.key == key));
            if !shown {
                other.push((format!("{}.{key}", record.stage), value));
            }
        }
    }
    DataStats {
        vocab_dropped: vocab.and_then(|v| VocabDropped::from_metrics(&v.metrics)),
        mask_present: mask.is_some(),
        instances: metric("instances"),
        compared,
        other,
    }
}

/// Reads the stage's JSONL metrics artifact. A missing or changed file, or a malformed
/// line, becomes a warning: the report shows what can be read.
fn read_pretrain(
    run_dir: &Path,
    record: &StageRecord,
    warnings: &mut Vec<String>,
) -> Result<PretrainCurves> {
    let mut curves = PretrainCurves {
        final_metrics: flatten_scalars(&record.metrics),
        ..PretrainCurves::default()
    };
    let Some(artifact) = record.artifacts_of(METRICS_KIND).next() else {
        warnings.push(format!(
            "pretrain recorded no `{METRICS_KIND}` artifact: curves are missing"
        ));
        return Ok(curves);
    };
    curves.source = Some(artifact.id.clone());
    let path = run_dir.join(&artifact.path);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            warnings.push(format!(
                "{}: missing on disk (artifact {}); rerun pretrain",
                path.display(),
                artifact.id
            ));
            return Ok(curves);
        }
        Err(e) => return Err(e).at(&path),
    };
    if blake3::hash(&bytes).to_hex().as_str() != artifact.blake3 {
        warnings.push(format!(
            "{}: content differs from the hash pretrain recorded; the curves may not \
             belong to this run",
            path.display()
        ));
    }
    let (parsed, bad) = PretrainCurves::parse(&String::from_utf8_lossy(&bytes));
    if bad > 0 {
        warnings.push(format!(
            "{}: skipped {bad} malformed line(s)",
            path.display()
        ));
    }
    curves.train = parsed.train;
    curves.eval = parsed.eval;
    curves.heldout = parsed.heldout;
    // Logs written before `tokens_seen` was recorded: from the run's batch sizes.
    if let Some(config) = record
        .config
        .get("pretrain")
        .and_then(|p| serde_json::from_value(p.clone()).ok())
    {
        fill_tokens_seen(&mut curves.train, &config);
    }
    Ok(curves)
}

/// Parses the finetune metrics: `{"tasks": {name: {"metric", "pretrained", "scratch"}}}`.
/// Without a `tasks` object, every top-level object holding `pretrained` or `scratch` is
/// taken as a task.
pub fn parse_finetune(metrics: &Value) -> Vec<TaskResult> {
    // The stage's own record: the type it writes.
    if let Ok(summary) = serde_json::from_value::<FinetuneSummary>(metrics.clone()) {
        let mut results: Vec<TaskResult> = summary
            .tasks
            .into_iter()
            .map(|(name, task)| {
                let metric = task
                    .metric
                    .or_else(|| (canonical_task(&name) == "squad").then(|| "f1".to_string()));
                let arm = |a: Option<ArmSummary>| a.map(|a| arm_result(a, metric.as_deref()));
                TaskResult {
                    pretrained: arm(task.pretrained),
                    scratch: arm(task.scratch),
                    task: name,
                    metric,
                }
            })
            .collect();
        results.sort_by_key(|t| task_order(&t.task));
        return results;
    }
    // Other shapes (hand-written summaries): read leniently.
    let tasks = match metrics.get("tasks").and_then(Value::as_object) {
        Some(t) => t.clone(),
        None => metrics
            .as_object()
            .map(|m| {
                m.iter()
                    .filter(|(_, v)| v.get("pretrained").is_some() || v.get("scratch").is_some())
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            })
            .unwrap_or_default(),
    };
    let mut results: Vec<TaskResult> = tasks
        .iter()
        .map(|(name, task)| {
            let metric = task
                .get("metric")
                .and_then(Value::as_str)
                .map(str::to_string)
                .or_else(|| (canonical_task(name) == "squad").then(|| "f1".to_string()));
            let arm = |key: &str| task.get(key).and_then(|v| parse_arm(v, metric.as_deref()));
            TaskResult {
                task: name.clone(),
                pretrained: arm("pretrained"),
                scratch: arm("scratch"),
                metric,
            }
        })
        .collect();
    results.sort_by_key(|t| task_order(&t.task));
    results
}

/// An arm as the stage recorded it; summaries it lacks are computed from the scores.
fn arm_result(arm: ArmSummary, metric: Option<&str>) -> ArmResult {
    let mut scores = arm.scores;
    if scores.is_empty() {
        if let Some(v) = metric.and_then(|m| arm.all.get(m)) {
            scores.push(*v);
        }
    }
    let summary = (!scores.is_empty()).then(|| SeedSummary::of(&scores));
    ArmResult {
        mean: arm.mean.or(summary.map(|s| s.mean)),
        median: arm.median.or(summary.map(|s| s.median)),
        std: arm.std.or(summary.filter(|s| s.n > 1).map(|s| s.std)),
        scores,
        all: arm.all,
        learning_rate: arm.learning_rate,
        sweep: arm
            .sweep
            .iter()
            .map(|p| (p.learning_rate, p.mean))
            .collect(),
    }
}

/// Sort key: the paper's task order first, then other tasks by name.
fn task_order(task: &str) -> (usize, String) {
    let name = canonical_task(task);
    let rank = STANDARD_TASKS
        .iter()
        .position(|t| *t == name)
        .unwrap_or(STANDARD_TASKS.len());
    (rank, name)
}

/// One initialisation's results: a bare number, or an object with `scores`, `mean`,
/// `median`, `std`, `all` and any other numeric keys (SQuAD's `exact_match`, `f1`).
fn parse_arm(value: &Value, metric: Option<&str>) -> Option<ArmResult> {
    if let Some(v) = value.as_f64() {
        return Some(ArmResult {
            scores: vec![v],
            mean: Some(v),
            median: Some(v),
            std: None,
            all: BTreeMap::new(),
            ..ArmResult::default()
        });
    }
    let obj = value.as_object()?;
    let number = |k: &str| obj.get(k).and_then(Value::as_f64);
    let mut all: BTreeMap<String, f64> = obj
        .get("all")
        .and_then(Value::as_object)
        .map(|a| {
            a.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_f64()?)))
                .collect()
        })
        .unwrap_or_default();
    for (k, v) in obj {
        if !matches!(
            k.as_str(),
            "mean" | "median" | "std" | "scores" | "all" | "learning_rate" | "sweep"
        ) {
            if let Some(v) = v.as_f64() {
                all.entry(k.clone()).or_insert(v);
            }
        }
    }
    let mut scores: Vec<f64> = obj
        .get("scores")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default();
    if scores.is_empty() {
        if let Some(v) = metric.and_then(|m| all.get(m)) {
            scores.push(*v);
        }
    }
    // Summaries the stage did not record are computed from the per-seed scores.
    let summary = (!scores.is_empty()).then(|| SeedSummary::of(&scores));
    Some(ArmResult {
        mean: number("mean").or(summary.map(|s| s.mean)),
        median: number("median").or(summary.map(|s| s.median)),
        std: number("std").or(summary.filter(|s| s.n > 1).map(|s| s.std)),
        scores,
        all,
        learning_rate: number("learning_rate"),
        sweep: obj
            .get("sweep")
            .and_then(Value::as_array)
            .map(|rows| {
                rows.iter()
                    .filter_map(|r| Some((r["learning_rate"].as_f64()?, r["mean"].as_f64())))
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// Flattens the scalar leaves of a JSON object to `a.b.c` → printed value, in key order.
/// Arrays of scalars print as `[a, b]`; other arrays and nulls are left out.
pub fn flatten_scalars(value: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    flatten_into(value, String::new(), &mut out);
    out
}

fn flatten_into(value: &Value, prefix: String, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten_into(v, key, out);
            }
        }
        Value::String(s) if !prefix.is_empty() => out.push((prefix, s.clone())),
        Value::Number(n) if !prefix.is_empty() => out.push((prefix, n.to_string())),
        Value::Bool(b) if !prefix.is_empty() => out.push((prefix, b.to_string())),
        Value::Array(items) if !prefix.is_empty() && items.iter().all(is_scalar) => {
            let items: Vec<String> = items
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    v => v.to_string(),
                })
                .collect();
            out.push((prefix, format!("[{}]", items.join(", "))));
        }
        _ => {}
    }
}

fn is_scalar(v: &Value) -> bool {
    matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_))
}

/// The first object (depth-first) that holds `key`.
fn find_object_with<'a>(value: &'a Value, key: &str) -> Option<&'a serde_json::Map<String, Value>> {
    let obj = value.as_object()?;
    if obj.contains_key(key) {
        return Some(obj);
    }
    obj.values().find_map(|v| find_object_with(v, key))
}

impl Machine {
    /// Reads /proc/cpuinfo (Linux) and the build's features.
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let (cpu_model, cores) = parse_cpuinfo(&cpuinfo);
        Machine {
            cpu_model,
            cores: cores.unwrap_or_else(num_cpus::get_physical),
            threads: num_cpus::get(),
            platform: format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH),
            build_features: build_features(),
            profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
            .to_string(),
            code_version: crate::manifest::code_version(),
        }
    }
}

/// `(model name, physical cores)` from the text of /proc/cpuinfo. Cores count distinct
/// `(physical id, core id)` pairs; `None` where the file does not say.
pub fn parse_cpuinfo(text: &str) -> (Option<String>, Option<usize>) {
    let mut model = None;
    let mut cores = std::collections::BTreeSet::new();
    let mut physical = String::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "model name" if model.is_none() && !value.is_empty() => model = Some(value.to_string()),
            "physical id" => physical = value.to_string(),
            "core id" => {
                cores.insert((physical.clone(), value.to_string()));
            }
            _ => {}
        }
    }
    (model, (!cores.is_empty()).then_some(cores.len()))
}

/// The Cargo and CPU features compiled into this build.
fn build_features() -> Vec<String> {
    let mut features = Vec::new();
    if cfg!(feature = "cuda") {
        features.push("cuda".to_string());
    }
    let cpu = [
        ("sse4.2", cfg!(target_feature = "sse4.2")),
        ("avx", cfg!(target_feature = "avx")),
        ("avx2", cfg!(target_feature = "avx2")),
        ("fma", cfg!(target_feature = "fma")),
        ("avx512f", cfg!(target_feature = "avx512f")),
        ("neon", cfg!(target_feature = "neon")),
    ];
    features.extend(cpu.iter().filter(|(_, on)| *on).map(|(n, _)| n.to_string()));
    if features.is_empty() {
        features.push("cpu (baseline target features)".to_string());
    }
    features
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn metrics_log_splits_rows_by_split_and_reads_older_keys() {
        // `lr` (logs before the typed row) is read as `learning_rate`; a row without
        // `split` is a training row.
        let text = r#"{"step": 10, "loss": 7.5, "mlm_accuracy": 0.05, "tokens_seen": 1280}
{"step": 20, "loss": 6.9, "lr": 1e-4, "split": "train"}

{"step": 20, "split": "eval", "loss": 7.0, "mlm_perplexity": 900.5}
not json
{"step": 30, "split": "eval", "loss": 6.5}
{"step": 30, "split": "heldout", "loss": 6.0, "mlm_perplexity": 403.4}
"#;
        let (curves, bad) = PretrainCurves::parse(text);
        assert_eq!(
            (curves.train.len(), curves.eval.len(), curves.heldout.len()),
            (2, 2, 1)
        );
        assert_eq!(bad, 1);
        assert_eq!(curves.train[1].learning_rate, Some(1e-4));
        assert_eq!(curves.eval[0].mlm_perplexity, Some(900.5));
        let step: RowValue = |r| Some(r.step as f64);
        assert_eq!(
            curves.train_series(step, |r| r.loss),
            vec![(10.0, 7.5), (20.0, 6.9)]
        );
        assert_eq!(
            curves.eval_series(step, |r| r.loss),
            vec![(20.0, 7.0), (30.0, 6.5)]
        );
        assert_eq!(curves.last_train(|r| r.loss), Some(6.9));
        assert_eq!(curves.last_eval(|r| r.loss), Some(6.5));
        assert_eq!(curves.last_heldout(|r| r.mlm_perplexity), Some(403.4));
        assert_eq!(curves.last_train(|r| r.nsp_accuracy), None);
    }

    #[test]
    fn tokens_seen_of_older_logs_comes_from_the_batch_sizes() {
        let mut rows = vec![
            PretrainLogRow {
                step: 100,
                seq_len: Some(128),
                ..PretrainLogRow::default()
            },
            PretrainLogRow {
                step: 200,
                seq_len: Some(128),
                tokens_seen: Some(7),
                ..PretrainLogRow::default()
            },
        ];
        let config: crate::config::PretrainConfig = toml::from_str(
            "train_batch_size = 256\nlearning_rate = 1e-3\nnum_train_steps = 5000\nnum_warmup_steps = 250",
        )
        .unwrap();
        fill_tokens_seen(&mut rows, &config);
        assert_eq!(rows[0].tokens_seen, Some(100 * 256 * 128));
        assert_eq!(rows[1].tokens_seen, Some(7), "a recorded count is kept");
        // Two phases: 450 steps of 16 x 64, then 16 x 128.
        let phased: crate::config::PretrainConfig = toml::from_str(
            "train_batch_size = 16\nlearning_rate = 1e-3\nnum_train_steps = 500\nnum_warmup_steps = 50\n\
             [[phases]]\nmax_seq_length = 64\nnum_train_steps = 450\n\
             [[phases]]\nmax_seq_length = 128\nnum_train_steps = 50\n",
        )
        .unwrap();
        let mut rows = vec![PretrainLogRow {
            step: 460,
            ..PretrainLogRow::default()
        }];
        fill_tokens_seen(&mut rows, &phased);
        assert_eq!(rows[0].tokens_seen, Some(450 * 16 * 64 + 10 * 16 * 128));
    }

    #[test]
    fn finetune_arms_fill_in_missing_statistics() {
        let metrics = json!({"tasks": {
            "rte": {"metric": "accuracy",
                    "pretrained": {"scores": [0.50, 0.60, 0.55, 0.58], "all": {"accuracy": 0.5575}},
                    "scratch": {"scores": [0.52], "mean": 0.52, "median": 0.52, "std": 0.0}},
            "squad": {"pretrained": {"exact_match": 0.21, "f1": 0.30}}
        }});
        let tasks = parse_finetune(&metrics);
        assert_eq!(tasks.len(), 2);
        let rte = &tasks[0];
        assert_eq!(rte.task, "rte");
        let p = rte.pretrained.as_ref().unwrap();
        assert!((p.mean.unwrap() - 0.5575).abs() < 1e-12);
        assert!((p.median.unwrap() - 0.565).abs() < 1e-12);
        assert!((p.std.unwrap() - 0.043493).abs() < 1e-5);
        assert_eq!(rte.scratch.as_ref().unwrap().std, Some(0.0));
        let squad = &tasks[1];
        assert_eq!(squad.metric.as_deref(), Some("f1"));
        let sp = squad.pretrained.as_ref().unwrap();
        assert_eq!(sp.scores, vec![0.30]);
        assert_eq!(sp.all["exact_match"], 0.21);
        assert!(squad.scratch.is_none());
    }

    #[test]
    fn finetune_sweep_is_parsed_apart_from_the_metrics() {
        let metrics = json!({"tasks": {"sst2": {"metric": "accuracy", "pretrained": {
            "scores": [0.7, 0.8], "mean": 0.75, "all": {"accuracy": 0.75},
            "learning_rate": 3e-4,
            "sweep": [{"learning_rate": 1e-4, "mean": 0.6, "chosen": false},
                      {"learning_rate": 3e-4, "mean": 0.75, "chosen": true},
                      {"learning_rate": 1e-3, "mean": null, "chosen": false}]}}}});
        let tasks = parse_finetune(&metrics);
        let p = tasks[0].pretrained.as_ref().unwrap();
        assert_eq!(p.learning_rate, Some(3e-4));
        assert_eq!(
            p.sweep,
            vec![(1e-4, Some(0.6)), (3e-4, Some(0.75)), (1e-3, None)]
        );
        assert_eq!(p.all.keys().collect::<Vec<_>>(), vec!["accuracy"]);
        let table = crate::report::document::sweep_table(&tasks).unwrap();
        assert_eq!(table.rows.len(), 3);
        assert_eq!(table.rows[1][2..], ["3e-4", "75.0", "yes"]);
        assert_eq!(table.rows[2][3..], ["missing", ""]);
    }

    #[test]
    fn finetune_without_tasks_object_reads_top_level_tasks() {
        let tasks = parse_finetune(&json!({"sst2": {"pretrained": 0.8}, "elapsed_s": 3.0}));
        assert_eq!(tasks.len(), 1);
        assert_eq!(tasks[0].pretrained.as_ref().unwrap().mean, Some(0.8));
    }

    #[test]
    fn cpuinfo_counts_physical_cores() {
        let text =
            "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nphysical id\t: 0\ncore id\t: 0\n\n\
                    processor\t: 1\nmodel name\t: AMD EPYC 7B13\nphysical id\t: 0\ncore id\t: 0\n\n\
                    processor\t: 2\nmodel name\t: AMD EPYC 7B13\nphysical id\t: 0\ncore id\t: 1\n\n\
                    processor\t: 3\nmodel name\t: AMD EPYC 7B13\nphysical id\t: 1\ncore id\t: 0\n";
        assert_eq!(
            parse_cpuinfo(text),
            (Some("AMD EPYC 7B13".to_string()), Some(3))
        );
        assert_eq!(parse_cpuinfo(""), (None, None));
    }

    #[test]
    fn statistics_helpers() {
        assert_eq!(
            flatten_scalars(&json!({"a": {"b": 1, "c": [1, "s"], "f": [{}]}, "d": "x", "e": null})),
            vec![
                ("a.b".to_string(), "1".to_string()),
                ("a.c".to_string(), "[1, s]".to_string()),
                ("d".to_string(), "x".to_string())
            ]
        );
    }
}
