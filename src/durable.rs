//! Durable writes: every file a stage records goes through a temp file, fsync, rename,
//! then an fsync of the directory, so a killed process never leaves a half-written file
//! under a final name.
//!
//! Data shards, written by the dozen into a stage's staging directory, are not fsynced by
//! the thread that writes them ([`write_unsynced_with`]: temp file and rename, then the
//! file handed to a background flusher that `fdatasync`s it while the stage computes the
//! next one); [`sync_tree`] waits for the flusher and fsyncs them all, in parallel, before
//! the stage publishes them, so nothing is recorded in the manifest before it is on disk.
//! Two fsyncs per file on the writing thread took a third of the `mask` stage's wall time.
//! Starting the writeback alone was not enough: on a virtual disk the data reaches the
//! host's cache quickly, but the flush that makes it durable costs time in proportion to
//! the bytes written since the last one, and it all fell on the final fsync (45 ms of
//! `mask`'s 30 MB); flushed file by file in the background, that time overlaps the work.
//!
//! It also holds the fault-injection points of the crash campaign (`scripts/chaos.sh`):
//! [`crash_point`] and [`crash_timer`].

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, OnceLock};

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
        let file = write_temp(&tmp, 1 << 20, write)?;
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

/// Creates `tmp` and writes it through `write`, which gets a writer with a buffer of
/// `buffer` bytes; returns the file, its buffer flushed (not synced).
fn write_temp<F>(tmp: &Path, buffer: usize, write: F) -> Result<File>
where
    F: FnOnce(&mut BufWriter<File>) -> Result<()>,
{
    let file = File::create(tmp).at(tmp)?;
    let mut w = BufWriter::with_capacity(buffer, file);
    write(&mut w)?;
    w.into_inner().map_err(|e| Error::io(tmp, e.into_error()))
}

/// Writes `bytes` to `path` atomically.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_with(path, |w| w.write_all(bytes).at(path))
}

/// Writes `bytes` to `path` through a temp file and a rename, without an fsync: for files
/// of a stage's staging directory, which [`StageRun::finish`](crate::stage::StageRun::finish)
/// makes durable with [`sync_tree`] before recording them.
pub fn write_bytes_unsynced(path: &Path, bytes: &[u8]) -> Result<()> {
    write_unsynced_with(path, |w| w.write_all(bytes).at(path))
}

/// Writes `path` like [`write_bytes_unsynced`], its bytes produced by `write` into a
/// buffered writer of the temp file (writes of 64 KiB or more go to the file directly), so
/// a large file needs no buffer of its own.
pub fn write_unsynced_with<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&mut BufWriter<File>) -> Result<()>,
{
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).at(dir)?;
    }
    let tmp = temp_path(path);
    let result = (|| {
        let file = write_temp(&tmp, 64 << 10, write)?;
        start_writeback(&file);
        fs::rename(&tmp, path).at(path)?;
        Ok(file)
    })();
    match result {
        Ok(file) => {
            Flusher::get().submit(path.to_path_buf(), file);
            Ok(())
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Files handed to the background flusher and not yet taken by it, at most: a writer that finds the
/// queue full waits for the disk. Each queued file is an open descriptor; unbounded, a stage
/// writing small shards faster than the disk syncs them (50 MB of text as 44,039 shards of
/// 16 pairs) ran out of descriptors ("Too many open files", the usual limit is 1,024).
pub const FLUSH_QUEUE: usize = 128;

/// The background thread that makes files written by [`write_bytes_unsynced`] durable
/// (`fdatasync`, one file at a time, in the order written), and what it has left to do.
struct Flusher {
    queue: std::sync::mpsc::SyncSender<(PathBuf, File)>,
    state: Mutex<FlushState>,
    idle: Condvar,
}

#[derive(Default)]
struct FlushState {
    /// Files handed over and not yet flushed.
    pending: Vec<PathBuf>,
    /// Files whose flush failed, kept until a [`sync_tree`] over them reports it.
    failed: Vec<(PathBuf, std::io::Error)>,
}

impl Flusher {
    /// The process's flusher, its thread started on first use.
    fn get() -> &'static Flusher {
        static FLUSHER: OnceLock<Flusher> = OnceLock::new();
        FLUSHER.get_or_init(|| {
            let (queue, files) = std::sync::mpsc::sync_channel::<(PathBuf, File)>(FLUSH_QUEUE);
            std::thread::Builder::new()
                .name("bertline-flush".into())
                .spawn(move || {
                    for (path, file) in files {
                        let result = file.sync_data();
                        drop(file);
                        Flusher::get().done(path, result);
                    }
                })
                .expect("cannot start the flush thread");
            Flusher {
                queue,
                state: Mutex::default(),
                idle: Condvar::new(),
            }
        })
    }

    fn submit(&self, path: PathBuf, file: File) {
        self.state
            .lock()
            .expect("flush state")
            .pending
            .push(path.clone());
        if let Err(unsent) = self.queue.send((path, file)) {
            // The thread is gone (it never exits while the process runs): flush here.
            let (path, file) = unsent.0;
            self.done(path, file.sync_data());
        }
    }

    fn done(&self, path: PathBuf, result: std::io::Result<()>) {
        let mut state = self.state.lock().expect("flush state");
        if let Some(i) = state.pending.iter().position(|p| *p == path) {
            state.pending.swap_remove(i);
        }
        if let Err(e) = result {
            state.failed.push((path, e));
        }
        self.idle.notify_all();
    }

    /// Waits until every file handed over from under `dir` is flushed; the first failure.
    fn wait(&self, dir: &Path) -> Result<()> {
        let mut state = self.state.lock().expect("flush state");
        while state.pending.iter().any(|p| p.starts_with(dir)) {
            state = self.idle.wait(state).expect("flush state");
        }
        match state.failed.iter().position(|(p, _)| p.starts_with(dir)) {
            Some(i) => {
                let (path, e) = state.failed.swap_remove(i);
                Err(Error::io(path, e))
            }
            None => Ok(()),
        }
    }
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

/// Makes every file under `dir` (recursively) and the directories themselves durable: waits
/// for the background flush of the files written with [`write_bytes_unsynced`] (reporting
/// any that failed), then one fsync each, issued in parallel (little is left for them to
/// wait for). Only these files are waited for: a `syncfs` would also wait for every other
/// process's writes to the same filesystem.
pub fn sync_tree(dir: &Path) -> Result<()> {
    use rayon::prelude::*;
    Flusher::get().wait(dir)?;
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
/// stage's outputs marked as publishing, not moved), `commit` (moved, not recorded),
/// `record` (inside the manifest's commit: the artifact records written, the stage record
/// not).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_tree_returns_only_after_every_unsynced_file_is_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = vec![7u8; 256 << 10];
        for i in 0..24 {
            write_bytes_unsynced(&dir.path().join(format!("shard-{i}.bin")), &bytes).unwrap();
        }
        sync_tree(dir.path()).unwrap();
        let state = Flusher::get().state.lock().unwrap();
        let left = state
            .pending
            .iter()
            .filter(|p| p.starts_with(dir.path()))
            .count();
        drop(state);
        assert_eq!(left, 0);
        for i in 0..24 {
            assert_eq!(
                fs::read(dir.path().join(format!("shard-{i}.bin"))).unwrap(),
                bytes
            );
        }
        // No temp file is left behind by the rename.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 24);
    }

    #[test]
    fn a_failed_background_flush_is_reported_once_by_the_sync_of_its_directory() {
        let flusher = Flusher::get();
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let file = a.path().join("train-00000.arrow");
        flusher.state.lock().unwrap().pending.push(file.clone());
        flusher.done(file.clone(), Err(std::io::Error::other("device went away")));
        // Another directory's sync does not see it...
        sync_tree(b.path()).unwrap();
        // ...its own does, naming the file, and only once.
        let err = sync_tree(a.path()).unwrap_err().to_string();
        assert!(err.contains("train-00000.arrow"), "{err}");
        assert!(err.contains("device went away"), "{err}");
        sync_tree(a.path()).unwrap();
    }
}
