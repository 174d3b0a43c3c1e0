//! Sentence(-pair) classification and regression tasks: the nine GLUE presets as GLUE's
//! download script distributes them, tasks defined in pipeline.toml alone
//! ([`crate::config::CustomTask`]), their loaders, and the GLUE submission writer.
//!
//! The main type is [`TaskSpec`]: where each split's file is, how to read it
//! ([`TableSpec`]), the label set and the official metrics. [`TaskSpec::load`] reads a split
//! into [`Example`]s.
//!
//! GLUE files contain stray double quotes (MRPC: `" The foodservice pie ...`), so GLUE
//! presets split on tabs without any quote handling, as Google's `run_classifier.py` does
//! (`csv.reader(f, delimiter="\t", quotechar=None)`). Custom CSV tasks may turn
//! `quoting` on for RFC 4180 fields (`"a, b"`, `""` for a quote, newlines inside quotes).
//!
//! Every file is read strictly: a missing file is an error naming the file (never a
//! skipped task), and a row with the wrong number of columns or an unknown label is an
//! error naming the file and the line. Blank lines are ignored.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::{CustomTask, FinetuneConfig};
use crate::error::{Error, IoContext, Result};
use crate::metrics::{Metric, Targets};

/// A column of a table: by 0-based index or by header name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Column {
    Index(usize),
    Name(String),
}

impl Column {
    fn name(name: &str) -> Column {
        Column::Name(name.to_string())
    }

    /// Parses a column reference from pipeline.toml: a name when the file has a header,
    /// else a 0-based index.
    pub fn parse(text: &str, header: bool) -> std::result::Result<Column, String> {
        if header {
            Ok(Column::name(text))
        } else {
            text.trim().parse().map(Column::Index).map_err(|_| {
                format!("column `{text}` must be a 0-based index because the file has no header")
            })
        }
    }
}

impl std::fmt::Display for Column {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Column::Index(i) => write!(f, "column {i}"),
            Column::Name(n) => write!(f, "column `{n}`"),
        }
    }
}

/// How to read one split file and which columns hold what.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableSpec {
    pub path: PathBuf,
    /// Field delimiter (`\t` for GLUE).
    pub delimiter: char,
    /// Honour CSV double quotes.
    pub quoting: bool,
    /// The first row holds column names.
    pub header: bool,
    pub text_a: Column,
    pub text_b: Option<Column>,
    /// `None` for unlabelled test files.
    pub label: Option<Column>,
    /// Row id written to the GLUE submission (`index`); `None` uses the 0-based row number.
    pub id: Option<Column>,
}

/// A named evaluation file: a dev set (`dev`, `dev_matched`) or a test set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSplit {
    /// Split name used in artifact names (`dev`, `dev_mismatched`, `test_matched`).
    pub name: String,
    pub table: TableSpec,
    /// For test sets: the GLUE submission file name (`CoLA.tsv`, `MNLI-m.tsv`).
    pub submission_file: Option<String>,
}

/// Classification with named labels, or regression on a real-valued score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// Label strings as they appear in the files; the model predicts their index.
    Classification { labels: Vec<String> },
    /// A single real-valued output (STS-B: 0..5).
    Regression,
}

impl TaskKind {
    /// Output units of the head: the number of labels, or 1 for regression.
    pub fn num_labels(&self) -> usize {
        match self {
            TaskKind::Classification { labels } => labels.len(),
            TaskKind::Regression => 1,
        }
    }
}

/// Everything needed to train and evaluate one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The key in `finetune.tasks` (`cola`, `sst2`, or a custom name).
    pub name: String,
    pub kind: TaskKind,
    /// Official metrics; the first is the headline number.
    pub metrics: Vec<Metric>,
    pub train: TableSpec,
    /// Dev sets the metrics are reported on (MNLI has two).
    pub dev: Vec<EvalSplit>,
    /// Unlabelled test sets predictions are written for.
    pub test: Vec<EvalSplit>,
}

/// The gold value of one example.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Label {
    /// Index into the task's label list.
    Class(usize),
    /// Regression target.
    Score(f64),
}

/// One row of a task file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// The row id (`index` column of GLUE test files) or the 0-based row number.
    pub id: String,
    /// 1-based line in the file where the row starts (for error messages).
    pub line: usize,
    pub text_a: String,
    pub text_b: Option<String>,
    /// `None` for test rows.
    pub label: Option<Label>,
}

/// Names of the GLUE presets, as accepted in `finetune.tasks`.
pub const GLUE_TASKS: [&str; 9] = [
    "cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli",
];

/// Canonical preset key for the common spellings (`SST-2`, `sst-2`, `STS-B`, `MNLI`).
fn canonical_glue_name(name: &str) -> Option<&'static str> {
    let key: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase();
    GLUE_TASKS.into_iter().find(|t| *t == key)
}

/// Builder of the GLUE tables: every GLUE file is tab-separated without quoting.
struct GlueFolder {
    dir: PathBuf,
}

impl GlueFolder {
    fn table(
        &self,
        file: &str,
        header: bool,
        text_a: Column,
        text_b: Option<Column>,
        label: Option<Column>,
        id: Option<Column>,
    ) -> TableSpec {
        TableSpec {
            path: self.dir.join(file),
            delimiter: '\t',
            quoting: false,
            header,
            text_a,
            text_b,
            label,
            id,
        }
    }

    /// A headed file with named text and label columns (train or dev).
    fn labelled(&self, file: &str, a: &str, b: Option<&str>, label: &str) -> TableSpec {
        self.table(
            file,
            true,
            Column::name(a),
            b.map(Column::name),
            Some(Column::name(label)),
            None,
        )
    }

    /// A headed test file with named text columns and an id column.
    fn test(&self, file: &str, a: &str, b: Option<&str>, id: &str) -> TableSpec {
        self.table(
            file,
            true,
            Column::name(a),
            b.map(Column::name),
            None,
            Some(Column::name(id)),
        )
    }
}

fn dev_split(name: &str, table: TableSpec) -> EvalSplit {
    EvalSplit {
        name: name.to_string(),
        table,
        submission_file: None,
    }
}

fn test_split(name: &str, table: TableSpec, submission: &str) -> EvalSplit {
    EvalSplit {
        name: name.to_string(),
        table,
        submission_file: Some(submission.to_string()),
    }
}

fn labels(names: &[&str]) -> TaskKind {
    TaskKind::Classification {
        labels: names.iter().map(|s| s.to_string()).collect(),
    }
}

/// The GLUE preset `name` (any common spelling) reading from `glue_dir/<Task>/`.
/// Column layouts follow the files of GLUE's download script and the processors of
/// Google's `run_classifier.py`; test files are read by their `index` (QQP: `id`) column.
pub fn glue_preset(name: &str, glue_dir: &Path) -> Option<TaskSpec> {
    use Metric::*;
    let key = canonical_glue_name(name)?;
    let folder = |sub: &str| GlueFolder {
        dir: glue_dir.join(sub),
    };
    let binary = || labels(&["0", "1"]);
    let entailment = || labels(&["entailment", "not_entailment"]);
    let spec = match key {
        // CoLA train/dev: no header; source, label, original label, sentence.
        "cola" => {
            let g = folder("CoLA");
            let no_header = |file: &str| {
                g.table(
                    file,
                    false,
                    Column::Index(3),
                    None,
                    Some(Column::Index(1)),
                    None,
                )
            };
            TaskSpec {
                name: key.into(),
                kind: binary(),
                metrics: vec![Mcc],
                train: no_header("train.tsv"),
                dev: vec![dev_split("dev", no_header("dev.tsv"))],
                test: vec![test_split(
                    "test",
                    g.test("test.tsv", "sentence", None, "index"),
                    "CoLA.tsv",
                )],
            }
        }
        "sst2" => {
            let g = folder("SST-2");
            TaskSpec {
                name: key.into(),
                kind: binary(),
                metrics: vec![Accuracy],
                train: g.labelled("train.tsv", "sentence", None, "label"),
                dev: vec![dev_split(
                    "dev",
                    g.labelled("dev.tsv", "sentence", None, "label"),
                )],
                test: vec![test_split(
                    "test",
                    g.test("test.tsv", "sentence", None, "index"),
                    "SST-2.tsv",
                )],
            }
        }
        // MRPC: Quality, #1 ID, #2 ID, #1 String, #2 String (the header starts with a BOM).
        "mrpc" => {
            let g = folder("MRPC");
            let (a, b) = ("#1 String", Some("#2 String"));
            TaskSpec {
                name: key.into(),
                kind: binary(),
                metrics: vec![F1, Accuracy],
                train: g.labelled("train.tsv", a, b, "Quality"),
                dev: vec![dev_split("dev", g.labelled("dev.tsv", a, b, "Quality"))],
                test: vec![test_split(
                    "test",
                    g.test("test.tsv", a, b, "index"),
                    "MRPC.tsv",
                )],
            }
        }
        // STS-B: index, genre, filename, year, old_index, source1, source2, sentence1,
        // sentence2, score.
        "stsb" => {
            let g = folder("STS-B");
            let (a, b) = ("sentence1", Some("sentence2"));
            TaskSpec {
                name: key.into(),
                kind: TaskKind::Regression,
                // BERT Table 1 reports Spearman for STS-B.
                metrics: vec![Spearman, Pearson],
                train: g.labelled("train.tsv", a, b, "score"),
                dev: vec![dev_split("dev", g.labelled("dev.tsv", a, b, "score"))],
                test: vec![test_split(
                    "test",
                    g.test("test.tsv", a, b, "index"),
                    "STS-B.tsv",
                )],
            }
        }
        // QQP: id, qid1, qid2, question1, question2, is_duplicate; test: id, q1, q2.
        "qqp" => {
            let g = folder("QQP");
            let (a, b) = ("question1", Some("question2"));
            TaskSpec {
                name: key.into(),
                kind: binary(),
                metrics: vec![F1, Accuracy],
                train: g.labelled("train.tsv", a, b, "is_duplicate"),
                dev: vec![dev_split(
                    "dev",
                    g.labelled("dev.tsv", a, b, "is_duplicate"),
                )],
                test: vec![test_split(
                    "test",
                    g.test("test.tsv", a, b, "id"),
                    "QQP.tsv",
                )],
            }
        }
        // MNLI: sentence1, sentence2 and gold_label by name (dev files carry five
        // annotator labels, so the label column index differs from train). The GLUE
        // diagnostic set (AX) is predicted with the MNLI model.
        "mnli" => {
            let g = folder("MNLI");
            let (a, b) = ("sentence1", Some("sentence2"));
            let diagnostic = GlueFolder {
                dir: glue_dir.join("diagnostic"),
            };
            TaskSpec {
                name: key.into(),
                kind: labels(&["contradiction", "entailment", "neutral"]),
                metrics: vec![Accuracy],
                train: g.labelled("train.tsv", a, b, "gold_label"),
                dev: vec![
                    dev_split(
                        "dev_matched",
                        g.labelled("dev_matched.tsv", a, b, "gold_label"),
                    ),
                    dev_split(
                        "dev_mismatched",
                        g.labelled("dev_mismatched.tsv", a, b, "gold_label"),
                    ),
                ],
                test: vec![
                    test_split(
                        "test_matched",
                        g.test("test_matched.tsv", a, b, "index"),
                        "MNLI-m.tsv",
                    ),
                    test_split(
                        "test_mismatched",
                        g.test("test_mismatched.tsv", a, b, "index"),
                        "MNLI-mm.tsv",
                    ),
                    test_split(
                        "diagnostic",
                        diagnostic.test("diagnostic.tsv", a, b, "index"),
                        "AX.tsv",
                    ),
                ],
            }
        }
        "qnli" => {
            let g = folder("QNLI");
            let (a, b) = ("question", Some("sentence"));
            TaskSpec {
                name: key.into(),
                kind: entailment(),
                metrics: vec![Accuracy],
                train: g.labelled("train.tsv", a, b, "label"),
                dev: vec![dev_split("dev", g.labelled("dev.tsv", a, b, "label"))],
                test: vec![test_split(
                    "test",
                    g.test("test.tsv", a, b, "index"),
                    "QNLI.tsv",
                )],
            }
        }
        "rte" | "wnli" => {
            let (sub, kind, file) = if key == "rte" {
                ("RTE", entailment(), "RTE.tsv")
            } else {
                ("WNLI", binary(), "WNLI.tsv")
            };
            let g = folder(sub);
            let (a, b) = ("sentence1", Some("sentence2"));
            TaskSpec {
                name: key.into(),
                kind,
                metrics: vec![Accuracy],
                train: g.labelled("train.tsv", a, b, "label"),
                dev: vec![dev_split("dev", g.labelled("dev.tsv", a, b, "label"))],
                test: vec![test_split("test", g.test("test.tsv", a, b, "index"), file)],
            }
        }
        _ => unreachable!("canonical_glue_name returns a GLUE_TASKS entry"),
    };
    Some(spec)
}

/// Builds the spec of a task defined in pipeline.toml (`[finetune.custom.NAME]`); relative
/// paths resolve against `root` (the directory of pipeline.toml).
pub fn custom_task(name: &str, task: &CustomTask, root: &Path) -> Result<TaskSpec> {
    let config_error = |msg: String| Error::Config(format!("finetune.custom.{name}: {msg}"));
    let delimiter = match task.delimiter.as_str() {
        "\\t" | "\t" | "tab" => '\t',
        d if d.chars().count() == 1 => d.chars().next().expect("one char"),
        d => {
            return Err(config_error(format!(
                "delimiter `{d}` must be a single character such as \"\\t\" or \",\""
            )))
        }
    };
    let column = |text: &str| Column::parse(text, task.header).map_err(&config_error);
    let text_a = column(&task.text_a)?;
    let text_b = task.text_b.as_deref().map(column).transpose()?;
    let label = column(&task.label)?;
    let resolve = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            root.join(p)
        }
    };
    let table = |path: &Path, label: Option<Column>| TableSpec {
        path: resolve(path),
        delimiter,
        quoting: task.quoting,
        header: task.header,
        text_a: text_a.clone(),
        text_b: text_b.clone(),
        label,
        id: None,
    };
    let metrics = task
        .metrics
        .iter()
        .map(|m| {
            Metric::parse(m).ok_or_else(|| {
                config_error(format!(
                    "unknown metric `{m}`; use accuracy, f1, mcc, pearson or spearman"
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let kind = if task.labels.is_empty() {
        TaskKind::Regression
    } else {
        TaskKind::Classification {
            labels: task.labels.clone(),
        }
    };
    if kind == TaskKind::Regression {
        if let Some(m) = metrics.iter().find(|m| m.is_classification()) {
            return Err(config_error(format!(
                "metric `{m}` needs classes but `labels` is empty (a regression task): \
                 list the labels or use pearson / spearman"
            )));
        }
    }
    if metrics.is_empty() {
        return Err(config_error("`metrics` is empty: name at least one".into()));
    }
    Ok(TaskSpec {
        name: name.to_string(),
        kind,
        metrics,
        train: table(&task.train, Some(label.clone())),
        dev: vec![dev_split("dev", table(&task.dev, Some(label)))],
        test: task
            .test
            .as_deref()
            .map(|p| EvalSplit {
                name: "test".into(),
                table: table(p, None),
                submission_file: Some(format!("{name}.tsv")),
            })
            .into_iter()
            .collect(),
    })
}

/// Resolves a name from `finetune.tasks`: a custom task of `config` first, then a GLUE
/// preset under `glue_dir`. `squad` is not a [`TaskSpec`] (see [`crate::squad`]).
pub fn resolve_task(
    name: &str,
    config: &FinetuneConfig,
    glue_dir: &Path,
    root: &Path,
) -> Result<TaskSpec> {
    if let Some(custom) = config.custom.get(name) {
        return custom_task(name, custom, root);
    }
    glue_preset(name, glue_dir).ok_or_else(|| {
        let mut known: Vec<&str> = GLUE_TASKS.to_vec();
        known.push("squad");
        known.extend(config.custom.keys().map(String::as_str));
        Error::Config(format!(
            "finetune.tasks: unknown task `{name}`; known tasks: {} \
             (or define it under [finetune.custom.{name}])",
            known.join(", ")
        ))
    })
}

impl TaskSpec {
    /// The label names (empty for regression).
    pub fn label_names(&self) -> &[String] {
        match &self.kind {
            TaskKind::Classification { labels } => labels,
            TaskKind::Regression => &[],
        }
    }

    /// Every file this task reads for training and evaluation (train and dev).
    pub fn required_files(&self) -> Vec<&Path> {
        std::iter::once(self.train.path.as_path())
            .chain(self.dev.iter().map(|d| d.table.path.as_path()))
            .collect()
    }

    /// Fails with an error naming the first missing train or dev file.
    pub fn check_files(&self) -> Result<()> {
        for path in self.required_files() {
            if !path.is_file() {
                return Err(missing_file(&self.name, path));
            }
        }
        Ok(())
    }

    /// Reads one split file into examples, parsing labels against this task's label set.
    pub fn load(&self, table: &TableSpec) -> Result<Vec<Example>> {
        read_examples(&self.name, table, &self.kind)
    }

    /// The training examples.
    pub fn load_train(&self) -> Result<Vec<Example>> {
        self.load(&self.train)
    }

    /// Gold targets of labelled examples (an error names the first unlabelled row).
    pub fn gold(&self, examples: &[Example], path: &Path) -> Result<Targets> {
        let unlabelled = |e: &Example| {
            Error::data(
                path,
                format!(
                    "line {}: row has no label but is used for evaluation",
                    e.line
                ),
            )
        };
        match self.kind {
            TaskKind::Classification { .. } => examples
                .iter()
                .map(|e| match e.label {
                    Some(Label::Class(c)) => Ok(c),
                    _ => Err(unlabelled(e)),
                })
                .collect::<Result<Vec<_>>>()
                .map(Targets::Classes),
            TaskKind::Regression => examples
                .iter()
                .map(|e| match e.label {
                    Some(Label::Score(s)) => Ok(s),
                    _ => Err(unlabelled(e)),
                })
                .collect::<Result<Vec<_>>>()
                .map(Targets::Scores),
        }
    }
}

fn missing_file(task: &str, path: &Path) -> Error {
    Error::data(
        path,
        format!(
            "file not found, needed by task `{task}`: put the GLUE data there (GLUE's \
             download_glue_data.py layout), set finetune.glue_dir, or remove `{task}` from \
             finetune.tasks"
        ),
    )
}

/// Reads a table file into examples.
pub fn read_examples(task: &str, table: &TableSpec, kind: &TaskKind) -> Result<Vec<Example>> {
    let path = &table.path;
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing_file(task, path)),
        Err(e) => return Err(Error::io(path, e)),
    };
    let rows = if table.quoting {
        split_quoted_rows(&text, table.delimiter)
            .map_err(|(line, msg)| Error::data(path, format!("line {line}: {msg}")))?
    } else {
        split_plain_rows(&text, table.delimiter)
    };
    let mut rows = rows.into_iter();
    let (width, names) = if table.header {
        let (_, header) = rows
            .next()
            .ok_or_else(|| Error::data(path, "file is empty but a header row is expected"))?;
        (Some(header.len()), Some(header))
    } else {
        (None, None)
    };
    let find = |c: &Column| -> Result<usize> {
        match (c, &names) {
            (Column::Index(i), _) => Ok(*i),
            (Column::Name(n), Some(names)) => names.iter().position(|h| h == n).ok_or_else(|| {
                Error::data(
                    path,
                    format!(
                        "line 1: no column named `{n}` in the header (columns: {})",
                        names.join(", ")
                    ),
                )
            }),
            (Column::Name(n), None) => Err(Error::data(
                path,
                format!("column `{n}` is named but the file has no header: use an index"),
            )),
        }
    };
    let text_a = find(&table.text_a)?;
    let text_b = table.text_b.as_ref().map(find).transpose()?;
    let label = table.label.as_ref().map(find).transpose()?;
    let id = table.id.as_ref().map(find).transpose()?;
    let needed = [Some(text_a), text_b, label, id]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0)
        + 1;
    let mut width = width;
    let mut examples = Vec::new();
    for (line, fields) in rows {
        let expected = *width.get_or_insert(fields.len());
        if fields.len() != expected || fields.len() < needed {
            return Err(Error::data(
                path,
                format!(
                    "line {line}: {} columns, expected {} (check the delimiter and quoting)",
                    fields.len(),
                    expected.max(needed)
                ),
            ));
        }
        let label = label
            .map(|i| parse_label(&fields[i], kind))
            .transpose()
            .map_err(|msg| Error::data(path, format!("line {line}: {msg}")))?;
        examples.push(Example {
            id: match id {
                Some(i) => fields[i].clone(),
                None => examples.len().to_string(),
            },
            line,
            text_a: fields[text_a].clone(),
            text_b: text_b.map(|i| fields[i].clone()),
            label,
        });
    }
    Ok(examples)
}

fn parse_label(value: &str, kind: &TaskKind) -> std::result::Result<Label, String> {
    match kind {
        TaskKind::Classification { labels } => labels
            .iter()
            .position(|l| l == value)
            .map(Label::Class)
            .ok_or_else(|| {
                format!(
                    "unknown label `{value}` (expected one of: {})",
                    labels.join(", ")
                )
            }),
        TaskKind::Regression => value
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite())
            .map(Label::Score)
            .ok_or_else(|| format!("label `{value}` is not a number (regression task)")),
    }
}

/// Rows of a table file: `(1-based line where the row starts, fields)`.
pub type Rows = Vec<(usize, Vec<String>)>;

/// Splits text into rows of fields on `delimiter`, with no quote handling (GLUE's TSVs).
/// Returns `(1-based line, fields)`; blank lines are skipped, `\r\n` is accepted and a
/// byte-order mark at the start is dropped.
pub fn split_plain_rows(text: &str, delimiter: char) -> Rows {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    text.split('\n')
        .enumerate()
        .filter_map(|(i, line)| {
            let line = line.strip_suffix('\r').unwrap_or(line);
            (!line.is_empty()).then(|| {
                (
                    i + 1,
                    line.split(delimiter)
                        .map(str::to_string)
                        .collect::<Vec<_>>(),
                )
            })
        })
        .collect()
}

/// Splits CSV-style text into rows (RFC 4180): a field that starts with `"` runs to the
/// next lone `"`, may contain delimiters and newlines, and `""` inside it is one quote.
/// A quote inside an unquoted field is kept literally. Returns `(1-based line where the
/// row starts, fields)`; blank lines are skipped, a leading byte-order mark is dropped.
/// The error is `(line, message)` for an unterminated quote or text after a closing quote.
pub fn split_quoted_rows(
    text: &str,
    delimiter: char,
) -> std::result::Result<Rows, (usize, String)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut rows = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while chars.peek().is_some() {
        let row_line = line;
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut at_field_start = true;
        loop {
            let Some(c) = chars.next() else {
                fields.push(std::mem::take(&mut field));
                break;
            };
            if at_field_start && c == '"' {
                // Quoted field: read to the closing quote.
                let quote_line = line;
                loop {
                    match chars.next() {
                        None => return Err((quote_line, "unterminated quoted field".to_string())),
                        Some('"') if chars.peek() == Some(&'"') => {
                            chars.next();
                            field.push('"');
                        }
                        Some('"') => break,
                        Some(c) => {
                            if c == '\n' {
                                line += 1;
                            }
                            field.push(c);
                        }
                    }
                }
                at_field_start = false;
                match chars.peek() {
                    None | Some('\n') | Some('\r') => {}
                    Some(&d) if d == delimiter => {}
                    Some(&other) => {
                        return Err((
                            line,
                            format!("`{other}` after a closing quote; expected a delimiter"),
                        ))
                    }
                }
                continue;
            }
            if c == delimiter {
                fields.push(std::mem::take(&mut field));
                at_field_start = true;
            } else if c == '\n' || c == '\r' {
                if c == '\r' && chars.peek() == Some(&'\n') {
                    chars.next();
                }
                line += 1;
                fields.push(std::mem::take(&mut field));
                break;
            } else {
                field.push(c);
                at_field_start = false;
            }
        }
        let blank = fields.len() == 1 && fields[0].is_empty();
        if !blank {
            rows.push((row_line, fields));
        }
    }
    Ok(rows)
}

/// One test-set prediction: a class id or a regression score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Prediction {
    Class(usize),
    Score(f64),
}

/// Writes the GLUE submission file of one test split: a header `index\tprediction`, then
/// one row per example with its id and the label name GLUE expects (`entailment`, `1`)
/// or, for regression, the score with three decimals (clipped to 0..5 for STS-B).
/// Returns the written path (`dir/CoLA.tsv`).
pub fn write_glue_submission(
    dir: &Path,
    task: &TaskSpec,
    split: &EvalSplit,
    examples: &[Example],
    predictions: &[Prediction],
) -> Result<PathBuf> {
    let file = split
        .submission_file
        .as_deref()
        .ok_or_else(|| Error::Stage(format!("split `{}` is not a test split", split.name)))?;
    if examples.len() != predictions.len() {
        return Err(Error::Model(format!(
            "{}: {} predictions for {} test rows",
            file,
            predictions.len(),
            examples.len()
        )));
    }
    let mut out = String::from("index\tprediction\n");
    for (example, prediction) in examples.iter().zip(predictions) {
        let value = match (prediction, &task.kind) {
            (Prediction::Class(c), TaskKind::Classification { labels }) => labels
                .get(*c)
                .cloned()
                .ok_or_else(|| Error::Model(format!("{file}: class id {c} out of range")))?,
            (Prediction::Score(s), TaskKind::Regression) => {
                // GLUE's STS-B scorer expects similarities within 0..5.
                let s = if task.name == "stsb" {
                    s.clamp(0.0, 5.0)
                } else {
                    *s
                };
                format!("{s:.3}")
            }
            _ => {
                return Err(Error::Model(format!(
                    "{file}: prediction kind does not match the task kind"
                )))
            }
        };
        writeln!(out, "{}\t{}", example.id, value).expect("writing to a String");
    }
    std::fs::create_dir_all(dir).at(dir)?;
    let path = dir.join(file);
    std::fs::write(&path, out).at(&path)?;
    Ok(path)
}
