//! Durable writes: every file a stage records goes through a temp file, fsync, rename,
//! then an fsync of the directory, so a killed process never leaves a half-written file
//! under a final name.
//!
//! Data shards, written by the dozen into a stage's staging directory, skip the per-file
//! fsync ([`write_bytes_unsynced`]: temp file and rename only, their writeback started at
//! once); [`sync_tree`] fsyncs them all, in parallel, before the stage publishes them, so
//! nothing is recorded in the manifest before it is on disk. Two fsyncs per file, each
//! waiting for its file's data as it was written, took a third of the `mask` stage's wall
//! time.
//!
//! It also holds the fault-injection points of the crash campaign (`scripts/chaos.sh`):
//! [`crash_point`] and [`crash_timer`].

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// The temp name used while `path` is being written.
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Writes `path` atomically through `write`, which gets a buffered writer.
pub fn write_with<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&mut BufWriter<File>) -> Result<()>,
{
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).at(dir)?;
    }
    let tmp = temp_path(path);
    let result = (|| {
        let file = File::create(&tmp).at(&tmp)?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        write(&mut w)?;
        let file = w
            .into_inner()
            .map_err(|e| Error::io(&tmp, e.into_error()))?;
        file.sync_all().at(&tmp)?;
        fs::rename(&tmp, path).at(path)?;
        sync_dir(path.parent().unwrap_or(Path::new(".")));
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes `bytes` to `path` atomically.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_with(path, |w| w.write_all(bytes).at(path))
}

/// Writes `bytes` to `path` through a temp file and a rename, without an fsync: for files
/// of a stage's staging directory, which [`StageRun::finish`](crate::stage::StageRun::finish)
/// makes durable with [`sync_tree`] before recording them.
pub fn write_bytes_unsynced(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).at(dir)?;
    }
    let tmp = temp_path(path);
    let result = (|| {
        let mut file = File::create(&tmp).at(&tmp)?;
        file.write_all(bytes).at(&tmp)?;
        start_writeback(&file);
        fs::rename(&tmp, path).at(path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Starts writing `file`'s data to disk without waiting for it (Linux `sync_file_range`), so
/// the disk works while the stage computes and the final [`sync_tree`] has little left.
fn start_writeback(file: &File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid open descriptor; the call only schedules writeback of its pages.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

/// Makes every file under `dir` (recursively) and the directories themselves durable:
/// one fsync each, issued in parallel, so files written with [`write_bytes_unsynced`] (whose
/// writeback started as they were written) are on disk. Only these files are waited for:
/// a `syncfs` would also wait for every other process's writes to the same filesystem.
pub fn sync_tree(dir: &Path) -> Result<()> {
    use rayon::prelude::*;
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < dirs.len() {
        for entry in fs::read_dir(&dirs[i]).at(&dirs[i])? {
            let entry = entry.at(&dirs[i])?;
            let path = entry.path();
            if entry.file_type().at(&path)?.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
        i += 1;
    }
    files
        .par_iter()
        .chain(dirs.par_iter())
        .try_for_each(|path| File::open(path).and_then(|f| f.sync_all()).at(path))
}

/// Writes `value` as pretty JSON to `path` atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_vec_pretty(value)
        .map_err(|e| Error::data(path, format!("cannot encode JSON: {e}")))?;
    write_bytes(path, &text)
}

/// Copies `from` to `to` atomically.
pub fn copy_file(from: &Path, to: &Path) -> Result<()> {
    let bytes = fs::read(from).at(from)?;
    write_bytes(to, &bytes)
}

/// fsyncs a directory so a rename inside it survives a crash (best effort).
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// blake3 of a file's content (hex) and its size.
pub fn hash_file(path: &Path) -> Result<(String, u64)> {
    let mut hasher = blake3::Hasher::new();
    let file = File::open(path).at(path)?;
    hasher.update_reader(file).at(path)?;
    let bytes = fs::metadata(path).at(path)?.len();
    Ok((hasher.finalize().to_hex().to_string(), bytes))
}

/// Fault injection: when `BERTLINE_CRASH_AT` equals `point`, the process aborts here as a
/// SIGKILL would stop it (no unwinding, no destructors, no flush). Points: `publish` (a
/// stage's outputs marked as publishing, not moved), `commit` (moved, not recorded).
pub fn crash_point(point: &str) {
    if std::env::var("BERTLINE_CRASH_AT").is_ok_and(|p| p == point) {
        eprintln!("BERTLINE_CRASH_AT={point}: aborting");
        std::process::abort();
    }
}

/// Fault injection inside a call we do not control (sled's open): when `BERTLINE_CRASH_AT`
/// is `point:MICROS`, a thread aborts the process MICROS microseconds from now, whatever the
/// calling thread is doing by then.
pub fn crash_timer(point: &str) {
    let Ok(spec) = std::env::var("BERTLINE_CRASH_AT") else {
        return;
    };
    let Some(micros) = spec
        .strip_prefix(point)
        .and_then(|r| r.strip_prefix(':'))
        .and_then(|m| m.parse::<u64>().ok())
    else {
        return;
    };
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_micros(micros));
        std::process::abort();
    });
}
