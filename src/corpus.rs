//! Pre-training text in BERT's format: one sentence per line, a blank line between
//! documents. [`read_corpus`] validates a file (empty, not UTF-8, binary, not split into
//! sentences) with one-line errors naming the file and what to do.

use std::path::Path;

use crate::error::{Error, IoContext, Result};

/// Longest line accepted as one sentence.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Reads and validates a corpus file, returning its text.
pub fn read_corpus(path: &Path) -> Result<String> {
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
