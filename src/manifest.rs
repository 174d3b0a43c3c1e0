//! The manifest: a sled database in the run directory recording every stage run and every
//! artifact it wrote (content hash, bytes, rows, the config that made it, its inputs).
//! The main type is [`Manifest`].
//!
//! One process at a time: [`RunLock`] (an exclusive lock on `<run>/manifest.lock`) is taken
//! before sled opens, so a second process on the same run gets a one-line "in use" error.
//! Holding it also means any temp file in the run belongs to a dead process, which is what
//! lets an open clear what a killed open left behind (see [`Manifest::open`]).
//!
//! Records are JSON values in three trees: `stages` (stage name -> latest complete
//! [`StageRecord`], without its artifacts), `history` (`<finished_at>/<stage>` ->
//! [`HistoryRecord`], a few hundred bytes) and `publishing` (stage name -> fingerprint of a run
//! that started moving its outputs into place and has not recorded them yet). A stage's
//! [`ArtifactRecord`]s are not in sled: they are its *artifact list*, a file of one JSON
//! record a line in `<run>/manifest.artifacts/` ([`ARTIFACT_LISTS`]), which the stage record
//! names with its blake3.
//!
//! A stage of a large corpus writes hundreds of thousands of shards, and sled keeps in memory
//! what it wrote or read, whatever its cache size (its cache counts pages on disk, not the
//! memory they take): with every artifact record in sled, 16 to a value, `mask` on 50 MB of
//! text cut into 44,039 shards peaked at 219 MB (55 MB with its usual 250 shards), most of
//! it in the commit. [`Manifest::commit`] therefore writes the list (temp file, fsync,
//! rename) under a new generation, then, in one sled transaction, the stage record naming
//! it, its history entry and the cleared publishing mark. A kill before the transaction
//! leaves the old record and its list whole (the new list is removed by the next commit); a
//! list that is missing, unreadable or not the one recorded reads as none, and its stage is
//! stale. Values are small because sled rewrites a whole leaf (up to 17 values) on a change:
//! with every artifact inline in the stage record and in each history entry, the `mask`
//! stage of 500 MB of text (2,477 shards) grew by 23 MB in its commit. A fourth tree,
//! `input_stamps` (input file path -> [`InputStamp`]), is a cache: the content hash of an
//! input file as of a size, mtime, ctime and inode, so a stage does not re-read a large
//! corpus to find it unchanged. Losing it costs a re-hash, never a wrong answer.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sled::Transactional;

use crate::error::{Error, Result};

/// Version of the record layout and shard schemas; part of every fingerprint.
pub const SCHEMA_VERSION: u32 = 1;

/// The code version recorded with every artifact.
pub fn code_version() -> String {
    match option_env!("BERTLINE_GIT_SHA") {
        Some(sha) => format!("{}+{sha}", env!("CARGO_PKG_VERSION")),
        None => env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// One file a stage wrote, as recorded in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArtifactRecord {
    /// `<stage>/<path>`: unique within the run.
    pub id: String,
    /// Stage that wrote it.
    pub stage: String,
    /// What it is (`vocab`, `tokenizer`, `pairs-shard`, `instances-shard`, `checkpoint`,
    /// `metrics`, `predictions`, `report`, ...).
    pub kind: String,
    /// Path relative to the run directory.
    pub path: String,
    /// blake3 of the content, hex.
    pub blake3: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Modification time (nanoseconds since the Unix epoch) when recorded; a different
    /// mtime on disk makes the freshness check hash the file. Absent in older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtime_ns: Option<u128>,
    /// Rows (shards, metrics lines) or 0 where rows mean nothing.
    pub rows: u64,
    /// [`SCHEMA_VERSION`] at write time.
    pub schema_version: u32,
    /// blake3 of the stage's canonical config JSON.
    pub config_hash: String,
    /// What it was made from: for a shard, the ids of its sources (input files, an upstream
    /// shard); else the ids of its stage's inputs (`file:` paths and `stage:<name>`).
    pub inputs: Vec<String>,
    /// [`code_version`] of the writer.
    pub code_version: String,
    /// Unix seconds: when its stage started.
    pub started_at: f64,
    /// Unix seconds: when it was recorded (a shard, [`crate::stage::StageRun::add_shard`]),
    /// else when its stage finished.
    pub finished_at: f64,
    /// Which shard it is, for the shards of `pairs` and `mask` (what later stages
    /// read instead of the file name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<crate::shard::ShardId>,
}

/// An input of a stage run: an upstream stage's outputs or a raw file, with its hash at run
/// time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputRef {
    /// `stage:<name>` (all of an upstream stage's artifacts, [`crate::stage::upstream_input`]),
    /// `file:<path>`, or in records of earlier versions an artifact id
    /// (`pairs/train-00000-0000.arrow`).
    pub id: String,
    /// blake3 of the content when the stage ran (for a stage, of its artifacts' ids and
    /// hashes).
    pub blake3: String,
}

/// One complete run of a stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    /// Stage name.
    pub stage: String,
    /// Profile the run used.
    pub profile: String,
    /// blake3 over config, inputs, schema version: equal fingerprints mean equal work.
    pub fingerprint: String,
    /// blake3 of `config`.
    pub config_hash: String,
    /// The stage's slice of the configuration (canonical JSON).
    pub config: serde_json::Value,
    /// Everything it read.
    pub inputs: Vec<InputRef>,
    /// Everything it wrote, in the order it was recorded. Stored apart from the record
    /// ([`Manifest::commit`]).
    #[serde(default, skip_serializing)]
    pub artifacts: Vec<ArtifactRecord>,
    /// How many artifacts it wrote (`artifacts.len()`); set by the stage that made the
    /// record and by the manifest's readers.
    #[serde(default, skip_serializing)]
    pub artifact_count: usize,
    /// Structured results (counts, losses, scores, throughput).
    pub metrics: serde_json::Value,
    /// [`code_version`].
    pub code_version: String,
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Unix seconds.
    pub started_at: f64,
    /// Unix seconds.
    pub finished_at: f64,
}

impl StageRecord {
    /// Wall time of the run in seconds.
    pub fn duration_s(&self) -> f64 {
        (self.finished_at - self.started_at).max(0.0)
    }

    /// Artifacts of the given kind, in recorded order.
    pub fn artifacts_of<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a ArtifactRecord> {
        self.artifacts.iter().filter(move |a| a.kind == kind)
    }
}

/// One past run of a stage, as the manifest's history keeps it: what it was and how long it
/// took, not what it read or wrote (the stage's current record has those).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryRecord {
    /// Stage name.
    pub stage: String,
    /// Profile the run used.
    pub profile: String,
    /// The run's [`StageRecord::fingerprint`].
    pub fingerprint: String,
    /// blake3 of the stage's config.
    pub config_hash: String,
    /// How many artifacts it wrote.
    pub artifact_count: usize,
    /// How many inputs it read.
    pub input_count: usize,
    /// [`code_version`].
    pub code_version: String,
    /// Unix seconds.
    pub started_at: f64,
    /// Unix seconds.
    pub finished_at: f64,
}

impl HistoryRecord {
    /// Wall time of the run in seconds.
    pub fn duration_s(&self) -> f64 {
        (self.finished_at - self.started_at).max(0.0)
    }
}

impl From<&StageRecord> for HistoryRecord {
    fn from(r: &StageRecord) -> Self {
        HistoryRecord {
            stage: r.stage.clone(),
            profile: r.profile.clone(),
            fingerprint: r.fingerprint.clone(),
            config_hash: r.config_hash.clone(),
            artifact_count: r.artifact_count.max(r.artifacts.len()),
            input_count: r.inputs.len(),
            code_version: r.code_version.clone(),
            started_at: r.started_at,
            finished_at: r.finished_at,
        }
    }
}

/// The exclusive lock on a run directory (`<run>/manifest.lock`, an OS file lock, released
/// when the holder exits however it exits). Every process that opens the manifest or
/// deletes the run holds it.
#[derive(Debug)]
pub struct RunLock {
    _file: std::fs::File,
}

impl RunLock {
    /// Takes the lock, waiting up to 2 s for a process that is finishing; then fails with a
    /// one-line "in use" error.
    pub fn acquire(run_dir: &Path) -> Result<RunLock> {
        std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
        let path = run_dir.join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        for attempt in 0.. {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if attempt < 20 => {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(std::fs::TryLockError::WouldBlock) => return Err(in_use(run_dir)),
                Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
            }
        }
        Ok(RunLock { _file: file })
    }
}

/// Name of the lock file in the run directory.
pub const LOCK_FILE: &str = "manifest.lock";

/// The sled database of one run directory.
pub struct Manifest {
    // Field order is drop order: sled closes before the run lock is released.
    db: sled::Db,
    run_dir: PathBuf,
    _lock: RunLock,
}

impl std::fmt::Debug for Manifest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manifest")
            .field("run_dir", &self.run_dir)
            .finish()
    }
}

impl Manifest {
    /// Opens (creating) `<run_dir>/manifest.sled` under the [`RunLock`]. Fails with a
    /// one-line "in use" error when another process has it open.
    ///
    /// A process killed while sled opens can leave `manifest.sled/snap.<lsn>.generating`:
    /// sled writes its snapshot there, fsyncs, then renames it to `snap.<lsn>`, and only
    /// after the rename removes older snapshots. On the next open sled reads the
    /// lexicographically last `snap.*` file, which is the half-written `.generating` one, and
    /// fails with "Read corrupted data". A `.generating` file is never a finished snapshot
    /// (the previous `snap.*`, or none and the log, still describe the database), and sled
    /// 0.34 writes snapshots only while opening, so with the run lock held no process can
    /// be writing one: they are removed before sled opens.
    pub fn open(run_dir: &Path) -> Result<Self> {
        let lock = RunLock::acquire(run_dir)?;
        let path = run_dir.join("manifest.sled");
        remove_unfinished_snapshots(&path)?;
        crate::durable::crash_timer("open");
        // sled's background flusher lets go of the file lock a moment after the last handle
        // is dropped: retry briefly so a stage started right after another one succeeds.
        let mut attempt = 0;
        let db = loop {
            match sled::Config::new()
                .path(&path)
                .mode(sled::Mode::LowSpace)
                .cache_capacity(MANIFEST_CACHE_BYTES)
                .open()
            {
                Ok(db) => break db,
                Err(e) if attempt < 20 && is_lock_error(&e) => {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                Err(e) => return Err(open_error(&path, e)),
            }
        };
        Ok(Manifest {
            db,
            run_dir: run_dir.to_path_buf(),
            _lock: lock,
        })
    }

    /// The run directory this manifest describes.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// Latest complete record of `stage`, with its artifacts, if any.
    pub fn stage(&self, stage: &str) -> Result<Option<StageRecord>> {
        self.stored_stage(stage)?
            .map(|v| self.stage_record(stage.as_bytes(), &v, true))
            .transpose()
    }

    /// All latest stage records, with their artifacts, by stage name.
    pub fn stages(&self) -> Result<Vec<StageRecord>> {
        self.all_stage_records(true)
    }

    /// All latest stage records without their artifacts (`artifact_count` set), by stage
    /// name; [`Manifest::each_artifact`] streams them.
    pub fn stage_summaries(&self) -> Result<Vec<StageRecord>> {
        self.all_stage_records(false)
    }

    /// The stored value of `stage`'s latest record, if any.
    fn stored_stage(&self, stage: &str) -> Result<Option<sled::IVec>> {
        self.tree("stages")?
            .get(stage.as_bytes())
            .map_err(|e| self.db_error(e))
    }

    /// Every latest stage record, by stage name, with its artifacts when `load_artifacts`.
    fn all_stage_records(&self, load_artifacts: bool) -> Result<Vec<StageRecord>> {
        let mut out = Vec::new();
        for kv in self.tree("stages")?.iter() {
            let (k, v) = kv.map_err(|e| self.db_error(e))?;
            out.push(self.stage_record(&k, &v, load_artifacts)?);
        }
        Ok(out)
    }

    /// Every stage run ever recorded here, oldest first.
    pub fn history(&self) -> Result<Vec<HistoryRecord>> {
        let mut out = Vec::new();
        for kv in self.tree(HISTORY)?.iter() {
            let (k, v) = kv.map_err(|e| self.db_error(e))?;
            // Entries written before HistoryRecord are whole stage records.
            out.push(match serde_json::from_slice::<HistoryRecord>(&v) {
                Ok(h) => h,
                Err(_) => HistoryRecord::from(&self.stage_record(&k, &v, false)?),
            });
        }
        Ok(out)
    }

    /// Notes that `stage` is about to move new outputs into place: until [`Manifest::commit`]
    /// records them, the stage is stale ([`Manifest::publishing`]), whatever its old record
    /// says. Flushed to disk before it returns.
    pub fn begin_publish(&self, stage: &str, fingerprint: &str) -> Result<()> {
        self.tree(PUBLISHING)?
            .insert(stage.as_bytes(), fingerprint.as_bytes())
            .map_err(|e| self.db_error(e))?;
        self.db.flush().map_err(|e| self.db_error(e))?;
        Ok(())
    }

    /// The fingerprint of a run of `stage` that began moving its outputs into place and was
    /// never recorded (killed in between), if any.
    pub fn publishing(&self, stage: &str) -> Result<Option<String>> {
        Ok(self
            .tree(PUBLISHING)?
            .get(stage.as_bytes())
            .map_err(|e| self.db_error(e))?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Records a complete stage run and its artifacts, replacing the stage's previous record
    /// (whose artifacts are dropped) and clearing its publishing mark; then flushes to disk.
    /// The artifacts go to a new artifact list first (fsynced), then one transaction makes
    /// the record naming it current (see the module doc): a kill at any point leaves either
    /// the old record with its artifacts or the new one with its.
    pub fn commit(&self, record: &StageRecord) -> Result<()> {
        let list = self.start_artifact_list(&record.stage)?;
        self.commit_with_list(record, list)
    }

    /// Starts the artifact list of a run of `stage` that records its artifacts as it goes
    /// ([`ArtifactList::push`]), so that none is held in memory; [`Manifest::commit_with_list`]
    /// ends it. A list never committed is removed by the stage's next commit, or by the
    /// next open of the run if its process died.
    pub fn start_artifact_list(&self, stage: &str) -> Result<ArtifactList> {
        let generation = self.db.generate_id().map_err(|e| self.db_error(e))?;
        let name = artifact_file_name(stage, generation);
        let dir = self.run_dir.join(ARTIFACT_LISTS);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let path = dir.join(&name);
        let temp = crate::durable::temp_path(&path);
        let file = std::fs::File::create(&temp).map_err(|e| Error::io(&temp, e))?;
        Ok(ArtifactList {
            name,
            path,
            temp,
            out: std::io::BufWriter::with_capacity(1 << 16, file),
            hasher: blake3::Hasher::new(),
            count: 0,
        })
    }

    /// [`Manifest::commit`] for a run whose artifacts went to `list` as they were recorded:
    /// `record.artifacts` are appended to it, then it is made durable and the record naming
    /// it is committed, counting every artifact in the list.
    pub fn commit_with_list(&self, record: &StageRecord, mut list: ArtifactList) -> Result<()> {
        for a in &record.artifacts {
            list.push(a)?;
        }
        let (file, blake3, artifact_count) = list.finish()?;
        crate::durable::crash_point("record");
        let json = to_json(&StoredStage {
            record,
            artifact_count,
            artifact_file: &file,
            artifact_blake3: &blake3,
        })?;
        let history = HistoryRecord {
            artifact_count,
            ..HistoryRecord::from(record)
        };
        let entry = to_json(&history)?;
        let key = format!("{:020.6}/{}", record.finished_at, record.stage);
        let trees = (
            &self.tree("stages")?,
            &self.tree(HISTORY)?,
            &self.tree(PUBLISHING)?,
        );
        trees
            .transaction(|(stages, history, publishing)| {
                stages.insert(record.stage.as_bytes(), json.clone())?;
                history.insert(key.as_bytes(), entry.clone())?;
                publishing.remove(record.stage.as_bytes())?;
                Ok(())
            })
            .map_err(|e: sled::transaction::TransactionError<()>| match e {
                sled::transaction::TransactionError::Storage(e) => self.db_error(e),
                sled::transaction::TransactionError::Abort(()) => {
                    Error::Manifest("manifest transaction aborted".into())
                }
            })?;
        // The old list goes only once the record naming the new one is on disk: sled's
        // transaction alone is not durable, and a kill before the flush brings the old record
        // back.
        self.db.flush().map_err(|e| self.db_error(e))?;
        self.remove_artifact_lists(&record.stage, Some(&file))?;
        self.remove_artifact_chunks(&record.stage)?;
        // A run directory of a version before stage_artifacts: its artifacts tree goes, and
        // its history entries, whole stage records, become history records.
        if self
            .db
            .drop_tree(LEGACY_ARTIFACTS)
            .map_err(|e| self.db_error(e))?
        {
            self.compact_history()?;
        }
        self.db.flush().map_err(|e| self.db_error(e))?;
        Ok(())
    }

    /// Forgets a stage (used by `clean`-like operations and tests).
    pub fn remove_stage(&self, stage: &str) -> Result<()> {
        self.tree("stages")?
            .remove(stage.as_bytes())
            .map_err(|e| self.db_error(e))?;
        self.remove_artifact_chunks(stage)?;
        self.db.flush().map_err(|e| self.db_error(e))?;
        self.remove_artifact_lists(stage, None)
    }

    /// Streams the artifact list `name` to `f`, one record at a time; the records read, or
    /// `None` (with a warning) when it is missing, unreadable or not the list recorded (its
    /// blake3 differs, found at its end, after `f` saw its records).
    fn stream_artifact_list(
        &self,
        name: &str,
        blake3: &str,
        f: &mut dyn FnMut(ArtifactRecord) -> Result<ControlFlow<()>>,
    ) -> Result<Option<Streamed>> {
        use std::io::BufRead;
        let path = self.run_dir.join(ARTIFACT_LISTS).join(name);
        let unreadable = |e: String| {
            tracing::warn!(file = %path.display(), "unreadable artifact list ({e}): its stage is stale");
            Ok(None)
        };
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) => return unreadable(e.to_string()),
        };
        let mut reader = std::io::BufReader::with_capacity(1 << 16, file);
        let (mut hasher, mut line, mut count) = (blake3::Hasher::new(), Vec::new(), 0);
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return unreadable(e.to_string()),
            }
            hasher.update(&line);
            let record = match serde_json::from_slice(&line) {
                Ok(record) => record,
                Err(e) => return unreadable(e.to_string()),
            };
            count += 1;
            if f(record)?.is_break() {
                return Ok(Some(Streamed::Stopped));
            }
        }
        if hasher.finalize().to_hex().as_str() != blake3 {
            return unreadable("its content is not the list recorded".into());
        }
        Ok(Some(Streamed::All(count)))
    }

    /// Removes the artifact lists of `stage` but `keep`: the previous record's, those of
    /// commits killed before their transaction, and temp files of killed writes.
    fn remove_artifact_lists(&self, stage: &str, keep: Option<&str>) -> Result<()> {
        let dir = self.run_dir.join(ARTIFACT_LISTS);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        let (list, temp) = (format!("{stage}-"), format!(".{stage}-"));
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let of_stage = (name.starts_with(&list) && is_list_name(&name[list.len()..]))
                || (name.starts_with(&temp) && name.ends_with(".tmp"));
            if of_stage && Some(name.as_str()) != keep {
                std::fs::remove_file(e.path()).map_err(|err| Error::io(e.path(), err))?;
            }
        }
        Ok(())
    }

    /// Rewrites history entries that are whole stage records as [`HistoryRecord`]s.
    fn compact_history(&self) -> Result<()> {
        let tree = self.tree(HISTORY)?;
        for kv in tree.iter() {
            let (k, v) = kv.map_err(|e| self.db_error(e))?;
            if serde_json::from_slice::<HistoryRecord>(&v).is_err() {
                let entry = HistoryRecord::from(&self.stage_record(&k, &v, false)?);
                tree.insert(k, to_json(&entry)?)
                    .map_err(|e| self.db_error(e))?;
            }
        }
        Ok(())
    }

    /// Removes the artifact chunks of `stage` that the version before artifact lists kept in
    /// `stage_artifacts`, and the tree once it is empty.
    fn remove_artifact_chunks(&self, stage: &str) -> Result<()> {
        if !self
            .db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == STAGE_ARTIFACTS.as_bytes())
        {
            return Ok(());
        }
        let tree = self.tree(STAGE_ARTIFACTS)?;
        for key in tree.scan_prefix(format!("{stage}/")).keys() {
            let key = key.map_err(|e| self.db_error(e))?;
            tree.remove(key).map_err(|e| self.db_error(e))?;
        }
        if tree.is_empty() {
            self.db
                .drop_tree(STAGE_ARTIFACTS)
                .map_err(|e| self.db_error(e))?;
        }
        Ok(())
    }

    /// A stored stage record as the readers see it: with its artifacts when `load_artifacts`,
    /// else with their count only.
    fn stage_record(&self, key: &[u8], value: &[u8], load_artifacts: bool) -> Result<StageRecord> {
        let (mut record, stored) = self.parse_stage_record(key, value)?;
        if load_artifacts {
            let mut artifacts = Vec::with_capacity(record.artifact_count);
            let read = self.stream_stored_artifacts(&record, &stored, &mut |a| {
                artifacts.push(a);
                Ok(ControlFlow::Continue(()))
            })?;
            // A list that cannot be read counts as none: the record is then stale.
            record.artifacts = if read.is_some() {
                artifacts
            } else {
                Vec::new()
            };
        }
        Ok(record)
    }

    /// A stored stage record without its artifacts (`artifact_count` set), and where they are.
    fn parse_stage_record(
        &self,
        key: &[u8],
        value: &[u8],
    ) -> Result<(StageRecord, StoredArtifacts)> {
        let unreadable = |e| self.unreadable(STAGES_OR_HISTORY, key, e);
        let mut record: StageRecord = serde_json::from_slice(value).map_err(unreadable)?;
        let mut stored: StoredArtifacts = serde_json::from_slice(value).map_err(unreadable)?;
        // Records written before stage_artifacts hold their artifacts inline.
        record.artifact_count = stored.artifact_count.unwrap_or(record.artifacts.len());
        stored.inline = std::mem::take(&mut record.artifacts);
        Ok((record, stored))
    }

    /// Streams a record's artifacts from wherever its version kept them: its artifact list,
    /// chunks in `stage_artifacts`, or inline.
    fn stream_stored_artifacts(
        &self,
        record: &StageRecord,
        stored: &StoredArtifacts,
        f: &mut dyn FnMut(ArtifactRecord) -> Result<ControlFlow<()>>,
    ) -> Result<Option<Streamed>> {
        if let (Some(file), Some(blake3)) = (&stored.artifact_file, &stored.artifact_blake3) {
            return self.stream_artifact_list(file, blake3, f);
        }
        let mut count = 0;
        let mut each = |a: ArtifactRecord| -> Result<bool> {
            count += 1;
            Ok(f(a)?.is_break())
        };
        if let Some(generation) = stored.artifact_generation {
            let prefix = chunk_prefix(&record.stage, generation);
            for kv in self.tree(STAGE_ARTIFACTS)?.scan_prefix(prefix) {
                let (k, v) = kv.map_err(|e| self.db_error(e))?;
                let chunk: Vec<ArtifactRecord> = serde_json::from_slice(&v)
                    .map_err(|e| self.unreadable(STAGE_ARTIFACTS, &k, e))?;
                for a in chunk {
                    if each(a)? {
                        return Ok(Some(Streamed::Stopped));
                    }
                }
            }
        } else {
            for a in stored.inline.iter().cloned() {
                if each(a)? {
                    return Ok(Some(Streamed::Stopped));
                }
            }
        }
        Ok(Some(Streamed::All(count)))
    }

    /// The latest complete record of `stage` without its artifacts (`artifact_count` says
    /// how many it has; [`Manifest::each_artifact`] reads them).
    pub fn stage_summary(&self, stage: &str) -> Result<Option<StageRecord>> {
        self.stored_stage(stage)?
            .map(|v| self.stage_record(stage.as_bytes(), &v, false))
            .transpose()
    }

    /// Streams the artifact records of `stage`'s latest record to `f`, in recorded order,
    /// none held: a stage of a large corpus has hundreds of thousands. `f` may stop early
    /// (`ControlFlow::Break`). `None` when the stage has no record, or its artifacts cannot
    /// be read whole (a list that is missing, unreadable or not the one recorded, warned
    /// about: the stage is stale, and `f` may have seen part of it).
    pub fn each_artifact(
        &self,
        stage: &str,
        mut f: impl FnMut(ArtifactRecord) -> Result<ControlFlow<()>>,
    ) -> Result<Option<Streamed>> {
        let Some(value) = self.stored_stage(stage)? else {
            return Ok(None);
        };
        let (record, stored) = self.parse_stage_record(stage.as_bytes(), &value)?;
        self.stream_stored_artifacts(&record, &stored, &mut f)
    }

    fn tree(&self, name: &str) -> Result<sled::Tree> {
        self.db.open_tree(name).map_err(|e| self.db_error(e))
    }

    fn get<T: for<'de> Deserialize<'de>>(&self, tree: &str, key: &str) -> Result<Option<T>> {
        match self.tree(tree)?.get(key.as_bytes()).map_err(|e| self.db_error(e))? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v).map(Some).map_err(|e| {
                Error::Manifest(format!(
                    "{}: unreadable record `{key}` in `{tree}` ({e}); run `just clean` to start this run over",
                    self.run_dir.join("manifest.sled").display()
                ))
            }),
        }
    }

    fn unreadable(&self, tree: &str, key: &[u8], e: serde_json::Error) -> Error {
        Error::Manifest(format!(
            "{}: unreadable record `{}` in `{tree}` ({e}); run `just clean` to start this run over",
            self.run_dir.join("manifest.sled").display(),
            String::from_utf8_lossy(key)
        ))
    }

    fn db_error(&self, e: sled::Error) -> Error {
        Error::Manifest(format!(
            "{}: {e}",
            self.run_dir.join("manifest.sled").display()
        ))
    }
}

fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| Error::Manifest(format!("cannot encode record: {e}")))
}

const PUBLISHING: &str = "publishing";
const INPUT_STAMPS: &str = "input_stamps";
const STAGE_ARTIFACTS: &str = "stage_artifacts";
const HISTORY: &str = "history";
/// Where versions before `stage_artifacts` kept artifact records (id -> record).
const LEGACY_ARTIFACTS: &str = "artifacts";
/// Named in errors about a stage record (read from `stages`, or a history entry of an older
/// version).
const STAGES_OR_HISTORY: &str = "stages";

/// sled's page cache (its default is 1 GiB): what sled keeps in memory of the records it
/// wrote or read. A stage reads its own and its upstream's records once, so a small cache
/// costs nothing, and the manifest's memory stays bounded however many artifacts a stage
/// of a large corpus records.
const MANIFEST_CACHE_BYTES: u64 = 8 << 20;

/// `<stage>/<generation, 16 hex digits>/`: the keys of one generation of a stage's chunks in
/// `stage_artifacts` (the version before artifact lists).
fn chunk_prefix(stage: &str, generation: u64) -> String {
    format!("{stage}/{generation:016x}/")
}

/// A stage record as [`Manifest::commit`] stores it: without its artifacts, with their
/// count and the artifact list holding them (its name and blake3).
#[derive(Serialize)]
struct StoredStage<'a> {
    #[serde(flatten)]
    record: &'a StageRecord,
    artifact_count: usize,
    artifact_file: &'a str,
    artifact_blake3: &'a str,
}

/// The fields [`StoredStage`] adds to a record, read back: the artifact list, or in records
/// of the version before it the generation of their chunks in `stage_artifacts`; neither in
/// records written before that (which hold their artifacts inline).
#[derive(Deserialize)]
struct StoredArtifacts {
    artifact_count: Option<usize>,
    artifact_file: Option<String>,
    artifact_blake3: Option<String>,
    artifact_generation: Option<u64>,
    /// The artifacts of a record that holds them inline (taken from the parsed record).
    #[serde(skip)]
    inline: Vec<ArtifactRecord>,
}

/// How far [`Manifest::each_artifact`] read a stage's artifacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Streamed {
    /// All of them: this many.
    All(usize),
    /// The callback stopped it.
    Stopped,
}

/// An artifact list being written: one JSON [`ArtifactRecord`] a line, to a temp file beside
/// its final name (see [`Manifest::start_artifact_list`]).
#[derive(Debug)]
pub struct ArtifactList {
    name: String,
    path: PathBuf,
    temp: PathBuf,
    out: std::io::BufWriter<std::fs::File>,
    hasher: blake3::Hasher,
    count: usize,
}

impl ArtifactList {
    /// Appends one record.
    pub fn push(&mut self, artifact: &ArtifactRecord) -> Result<()> {
        use std::io::Write;
        let mut line = to_json(artifact)?;
        line.push(b'\n');
        self.hasher.update(&line);
        self.out
            .write_all(&line)
            .map_err(|e| Error::io(&self.temp, e))?;
        self.count += 1;
        Ok(())
    }

    /// Records appended so far.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True before the first record.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Flushes, fsyncs and renames the list to its final name: (name, blake3, records).
    fn finish(self) -> Result<(String, String, usize)> {
        let file = self
            .out
            .into_inner()
            .map_err(|e| Error::io(&self.temp, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&self.temp, e))?;
        std::fs::rename(&self.temp, &self.path).map_err(|e| Error::io(&self.path, e))?;
        crate::durable::sync_dir(self.path.parent().unwrap_or(Path::new(".")));
        Ok((
            self.name,
            self.hasher.finalize().to_hex().to_string(),
            self.count,
        ))
    }
}

/// The directory of the run holding the stages' artifact lists, beside `manifest.sled`.
pub const ARTIFACT_LISTS: &str = "manifest.artifacts";

/// `<stage>-<generation, 16 hex digits>.jsonl`: the artifact list of one commit of a stage.
fn artifact_file_name(stage: &str, generation: u64) -> String {
    format!("{stage}-{generation:016x}.jsonl")
}

/// True for what follows `<stage>-` in an artifact list's name: a generation and `.jsonl`
/// (so that the lists of a stage `mask` are not taken for those of a stage `mask-x`).
fn is_list_name(rest: &str) -> bool {
    rest.strip_suffix(".jsonl")
        .is_some_and(|g| g.len() == 16 && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// What a file looked like when its content hash was taken: any write, rename over it,
/// `touch` or copy changes at least one of these (git's index trusts the same fields).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputStamp {
    /// Size in bytes.
    pub bytes: u64,
    /// Modification time, ns since the epoch.
    pub mtime_ns: u128,
    /// Status change time, ns since the epoch (set by the kernel on every change, including
    /// a copy that keeps the mtime).
    pub ctime_ns: u128,
    /// Inode number.
    pub inode: u64,
    /// blake3 of the content, hex.
    pub blake3: String,
}

impl Manifest {
    /// The stamp remembered for the input file `path`, if any.
    pub fn input_stamp(&self, path: &str) -> Result<Option<InputStamp>> {
        // A cache: an entry this version cannot read counts as none.
        Ok(self.get(INPUT_STAMPS, path).unwrap_or(None))
    }

    /// Remembers `stamp` for `path`. Not flushed: the next commit (or close) writes it.
    pub fn remember_input_stamp(&self, path: &str, stamp: &InputStamp) -> Result<()> {
        self.tree(INPUT_STAMPS)?
            .insert(path.as_bytes(), to_json(stamp)?)
            .map_err(|e| self.db_error(e))?;
        Ok(())
    }
}

/// Removes `snap.*.generating` files a killed open left in `db_dir` (see [`Manifest::open`]).
/// Call only with the [`RunLock`] held.
fn remove_unfinished_snapshots(db_dir: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(db_dir) else {
        return Ok(());
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            tracing::warn!(
                file = %e.path().display(),
                "removing a snapshot a killed process left half-written"
            );
            std::fs::remove_file(e.path()).map_err(|err| Error::io(e.path(), err))?;
        }
    }
    Ok(())
}

fn in_use(run_dir: &Path) -> Error {
    Error::Manifest(format!(
        "{}: in use by another bertline process; wait for it to finish (or stop it) and run again",
        run_dir.join("manifest.sled").display()
    ))
}

fn is_lock_error(e: &sled::Error) -> bool {
    let text = e.to_string();
    text.contains("lock") || text.contains("WouldBlock") || text.contains("temporarily unavailable")
}

fn open_error(path: &Path, e: sled::Error) -> Error {
    let text = e.to_string();
    if is_lock_error(&e) {
        in_use(path.parent().unwrap_or(Path::new(".")))
    } else {
        Error::Manifest(format!(
            "{}: cannot open the manifest ({text}); if it is corrupt, `just clean` starts the run over",
            path.display()
        ))
    }
}
