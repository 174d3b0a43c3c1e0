//! Pre-training text in BERT's format: one sentence per line, a blank line between
//! documents. [`read_corpus`] validates a file (empty, not UTF-8, binary, not split into
//! sentences) with one-line errors naming the file and what to do.
//!
//! A GLUE task's *training* file (`SST-2/train.tsv`, ...) may also be listed as corpus
//! input: its sentences are read without their labels ([`task_train_text`]), which is
//! task-adaptive pre-training (Gururangan et al. 2020, *Don't Stop Pretraining*). A task's
//! dev or test file is refused: pre-training on evaluation text would inflate the scores.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::ops::Range;
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
    let text = validate_text(path, bytes, 0)?;
    if text.trim().is_empty() {
        return Err(empty_file_error(path));
    }
    Ok(text)
}

fn empty_file_error(path: &Path) -> Error {
    Error::data(
        path,
        "empty corpus file; remove it from corpus.input or add text (one sentence per line, blank line between documents)",
    )
}

/// Checks corpus bytes read from `path` at byte `offset` (no NUL, UTF-8, no line over
/// [`MAX_LINE_BYTES`]) and returns them as text. Errors give positions in the whole file:
/// the line number when the bytes start the file, else the line's byte offset.
fn validate_text(path: &Path, bytes: Vec<u8>, offset: u64) -> Result<String> {
    if let Some(pos) = bytes.iter().position(|&b| b == 0) {
        return Err(Error::data(
            path,
            format!("binary file (NUL byte at offset {}); corpus files must be plain UTF-8 text, one sentence per line", offset + pos as u64),
        ));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        Error::data(
            path,
            format!(
                "not UTF-8 (invalid byte at offset {}); convert it, e.g. `iconv -f latin1 -t utf-8`",
                offset + e.utf8_error().valid_up_to() as u64
            ),
        )
    })?;
    let mut line_start = 0;
    for (i, line) in text.split('\n').enumerate() {
        if line.len() > MAX_LINE_BYTES {
            let which = if offset == 0 {
                format!("line {}", i + 1)
            } else {
                format!("the line at byte offset {}", offset + line_start as u64)
            };
            return Err(Error::data(
                path,
                format!(
                    "{which} is longer than {MAX_LINE_BYTES} bytes: the file is not one sentence per line; split it into sentences first"
                ),
            ));
        }
        line_start += line.len() + 1;
    }
    Ok(text)
}

/// Corpus files are read, tokenized and paired in blocks of about this many bytes, so the
/// `pairs` and `vocab` stages' memory does not grow with the size of a file. A `pairs`
/// thread holds about 17 bytes per byte of its block at dupe_factor 5 (its pairs, the
/// tokenized documents, a shard being encoded; [`crate::pairs::block_memory`]): with 16
/// threads on 50 MB of text the stage peaked at 317 MB with blocks of 1 MiB, 700 MB with
/// blocks of 4 MiB. A block holds about 500 Wikipedia documents to draw random next
/// sentences from.
pub const BLOCK_BYTES: u64 = 1 << 20;

/// A piece of one corpus file that is read and paired on its own: whole documents, cut at a
/// blank line after every [`BLOCK_BYTES`]; a file of at most that size is one block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorpusBlock {
    /// The file.
    pub path: PathBuf,
    /// The file's index in the input list.
    pub file_index: usize,
    /// The block's index within its file (0 for the first or only block).
    pub block_index: usize,
    /// The bytes of the file it covers; `0..len` for a whole file.
    pub bytes: Range<u64>,
}

impl CorpusBlock {
    /// Its size in bytes.
    pub fn len(&self) -> u64 {
        self.bytes.end - self.bytes.start
    }

    /// True for an empty block (only an empty file has one).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads and validates the block's text ([`read_corpus`]'s checks; a GLUE train file is
    /// always one block and read as [`task_train_text`]).
    pub fn read(&self) -> Result<String> {
        let whole = self.bytes.start == 0 && self.block_index == 0 && {
            let len = std::fs::metadata(&self.path).at(&self.path)?.len();
            self.bytes.end >= len
        };
        if whole {
            return read_corpus(&self.path);
        }
        let mut file = File::open(&self.path).at(&self.path)?;
        file.seek(SeekFrom::Start(self.bytes.start))
            .at(&self.path)?;
        let mut bytes = vec![0; self.len() as usize];
        file.read_exact(&mut bytes).at(&self.path)?;
        validate_text(&self.path, bytes, self.bytes.start)
    }
}

/// Every input file's blocks, in input order ([`BLOCK_BYTES`] each at most, up to the
/// next blank line).
pub fn corpus_blocks(files: &[PathBuf]) -> Result<Vec<CorpusBlock>> {
    corpus_blocks_of_size(files, BLOCK_BYTES)
}

/// [`corpus_blocks`] with blocks of `block_bytes` (tests use small ones).
///
/// A file is cut at the first blank line at or after every `block_bytes` from the last cut
/// (the blank line starts the next block, so documents stay whole). A document that runs
/// on for another `block_bytes` without a blank line is cut at the next line break instead,
/// so no block exceeds about twice `block_bytes`; such a cut is logged. GLUE train files are
/// never cut.
pub fn corpus_blocks_of_size(files: &[PathBuf], block_bytes: u64) -> Result<Vec<CorpusBlock>> {
    let block_bytes = block_bytes.max(1);
    let mut blocks = Vec::new();
    for (file_index, path) in files.iter().enumerate() {
        let len = std::fs::metadata(path).at(path)?.len();
        let mut cuts = vec![0];
        if len > block_bytes && glue_split_of(path).is_none() {
            let mut file = BufReader::new(File::open(path).at(path)?);
            let mut start = 0;
            while len - start > block_bytes {
                let Some(cut) = next_cut(&mut file, start + block_bytes, block_bytes, path)? else {
                    break;
                };
                cuts.push(cut);
                start = cut;
            }
        }
        cuts.push(len);
        for (block_index, range) in cuts.windows(2).enumerate() {
            blocks.push(CorpusBlock {
                path: path.clone(),
                file_index,
                block_index,
                bytes: range[0]..range[1],
            });
        }
    }
    Ok(blocks)
}

/// Where to cut after byte `from`: the start of the first blank (whitespace-only) line that
/// starts at or after `from`, or, when none comes within `search` bytes, the start of the
/// first line after `from`. `None` when the file ends first.
fn next_cut(
    file: &mut BufReader<File>,
    from: u64,
    search: u64,
    path: &Path,
) -> Result<Option<u64>> {
    file.seek(SeekFrom::Start(from)).at(path)?;
    // Skip to the start of the next line, unless `from` already is one.
    let mut pos = from;
    if from > 0 {
        file.seek(SeekFrom::Start(from - 1)).at(path)?;
        pos = from - 1;
        let mut skipped = Vec::new();
        let n = file.read_until(b'\n', &mut skipped).at(path)?;
        if n == 0 || skipped.last() != Some(&b'\n') {
            return Ok(None);
        }
        pos += n as u64;
    }
    let first_line = pos;
    let mut line = Vec::new();
    while pos < from + search {
        line.clear();
        let n = file.read_until(b'\n', &mut line).at(path)?;
        if n == 0 {
            return Ok(None);
        }
        if line.iter().all(|b| b.is_ascii_whitespace()) {
            return Ok(Some(pos));
        }
        pos += n as u64;
    }
    tracing::warn!(
        file = %path.display(),
        offset = first_line,
        "no blank line within {search} bytes: a document this long is cut at a line break"
    );
    Ok(Some(first_line))
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
