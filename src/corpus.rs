//! Pre-training text in BERT's format: one sentence per line, a blank line between
//! documents. [`read_corpus`] validates a file (empty, not UTF-8, binary, not split into
//! sentences) with one-line errors naming the file and what to do.
//!
//! A GLUE task's *training* file (`SST-2/train.tsv`, ...) may also be listed as corpus
//! input: its sentences are read without their labels ([`task_train_text`]), which is
//! task-adaptive pre-training (Gururangan et al. 2020, *Don't Stop Pretraining*). A task's
//! dev or test file is refused: pre-training on evaluation text would inflate the scores.

use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::tasks::{glue_preset, Example, TaskSpec};

/// Rows of a single-sentence task (SST-2, CoLA) grouped into one pre-training document.
/// The rows are unrelated phrases, so a document is only a packing unit: it keeps the
/// packed sequences as long as the wiki text's, as `create_pretraining_data.py` packs
/// sentences up to the target length.
pub const TASK_ROWS_PER_DOCUMENT: usize = 8;

/// The GLUE task and split a file belongs to, when it sits in a GLUE task folder
/// (`<glue_dir>/SST-2/dev.tsv` -> the `sst2` preset and `dev`).
pub fn glue_split_of(path: &Path) -> Option<(TaskSpec, &'static str)> {
    let folder = path.parent()?;
    let name = folder.file_name()?.to_str()?;
    let spec = glue_preset(name, folder.parent()?)?;
    let same = |p: &Path| p.file_name() == path.file_name();
    if same(&spec.train.path) {
        return Some((spec, "train"));
    }
    if spec.dev.iter().any(|d| same(&d.table.path)) {
        return Some((spec, "dev"));
    }
    if spec.test.iter().any(|t| same(&t.table.path)) {
        return Some((spec, "test"));
    }
    None
}

/// The one-line refusal of an evaluation file listed as pre-training text.
pub fn evaluation_text_error(path: &Path, task: &str, split: &str) -> Error {
    Error::data(
        path,
        format!(
            "task `{task}`'s {split} split cannot be pre-training text (it would leak evaluation \
             text into the model); remove it from corpus.input (only a task's train file may be listed)"
        ),
    )
}

/// BERT-format text of a task's training rows without their labels: a pair task's row is
/// one document of its two sentences, a single-sentence task's rows are grouped
/// [`TASK_ROWS_PER_DOCUMENT`] to a document.
pub fn task_train_text(spec: &TaskSpec) -> Result<String> {
    let rows: Vec<Example> = spec.load_train()?;
    let mut text = String::new();
    let line = |text: &mut String, s: &str| {
        let s = s.trim();
        if !s.is_empty() {
            text.push_str(s);
            text.push('\n');
        }
    };
    let pairs = rows.iter().any(|r| r.text_b.is_some());
    for (i, row) in rows.iter().enumerate() {
        line(&mut text, &row.text_a);
        if let Some(b) = &row.text_b {
            line(&mut text, b);
        }
        if pairs || (i + 1) % TASK_ROWS_PER_DOCUMENT == 0 {
            text.push('\n');
        }
    }
    Ok(text)
}

/// Where `path` would leak evaluation text: the dev and test files of `specs`.
pub fn find_evaluation_file<'a>(
    path: &Path,
    specs: &'a [TaskSpec],
) -> Option<(&'a TaskSpec, &'static str)> {
    let canonical = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| PathBuf::from(p));
    let target = canonical(path);
    specs.iter().find_map(|spec| {
        if spec.dev.iter().any(|d| canonical(&d.table.path) == target) {
            Some((spec, "dev"))
        } else if spec.test.iter().any(|t| canonical(&t.table.path) == target) {
            Some((spec, "test"))
        } else {
            None
        }
    })
}

/// Longest line accepted as one sentence.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Reads and validates a corpus file, returning its text.
pub fn read_corpus(path: &Path) -> Result<String> {
    if let Some((spec, split)) = glue_split_of(path) {
        return match split {
            "train" => task_train_text(&spec),
            _ => Err(evaluation_text_error(path, &spec.name, split)),
        };
    }
    let bytes = std::fs::read(path).at(path)?;
    if let Some(pos) = bytes.iter().position(|&b| b == 0) {
        return Err(Error::data(
            path,
            format!("binary file (NUL byte at offset {pos}); corpus files must be plain UTF-8 text, one sentence per line"),
        ));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        Error::data(
            path,
            format!(
                "not UTF-8 (invalid byte at offset {}); convert it, e.g. `iconv -f latin1 -t utf-8`",
                e.utf8_error().valid_up_to()
            ),
        )
    })?;
    if text.trim().is_empty() {
        return Err(Error::data(
            path,
            "empty corpus file; remove it from corpus.input or add text (one sentence per line, blank line between documents)",
        ));
    }
    if let Some((i, _)) = text
        .lines()
        .enumerate()
        .find(|(_, l)| l.len() > MAX_LINE_BYTES)
    {
        return Err(Error::data(
            path,
            format!(
                "line {} is longer than {} bytes: the file is not one sentence per line; split it into sentences first",
                i + 1,
                MAX_LINE_BYTES
            ),
        ));
    }
    Ok(text)
}

/// Splits BERT-format text into documents of non-empty, trimmed sentences.
pub fn documents(text: &str) -> Vec<Vec<&str>> {
    let mut docs = Vec::new();
    let mut current = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            if !current.is_empty() {
                docs.push(std::mem::take(&mut current));
            }
        } else {
            current.push(line);
        }
    }
    if !current.is_empty() {
        docs.push(current);
    }
    docs
}
