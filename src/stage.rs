//! Stages and their freshness: what each stage reads, how its fingerprint is made, and the
//! [`StageCtx`] every stage binary runs in.
//!
//! A stage's fingerprint is blake3 over its slice of the config, one digest per upstream stage
//! it reads (of that stage's artifacts' ids and hashes, [`upstream_input`]), the hashes of
//! raw input files, and [`SCHEMA_VERSION`]. A stage whose complete record has the same
//! fingerprint (and whose files are still there) is skipped; a changed one makes everything
//! downstream stale, because downstream fingerprints include the upstream artifacts' hashes.
//! Outputs are written into a staging directory and moved into place only when the stage
//! succeeds; only then is the manifest record written. A stage's artifact records are read
//! and written one at a time ([`Manifest::each_artifact`], [`StageRun::add_shard`]): a large
//! corpus makes hundreds of thousands of shards, and none of their records is held.
//!
//! Publishing is one step as far as freshness goes: before the outputs move, the manifest
//! marks the stage as publishing (flushed), and the commit that records the new outputs
//! clears the mark in the same transaction. A run killed in between leaves the mark, and
//! the stage is stale until it reruns. Artifacts changed on disk after they were recorded
//! are caught without `--verify` as well: a different size, or a different mtime whose
//! content hash differs, makes the stage stale; artifacts up to [`SMALL_ARTIFACT_BYTES`]
//! (vocab.txt, tokenizer.json, config.json, metrics) are always hashed, data shards (many,
//! as large as the corpus together) only when their mtime moved or with `--verify`.

use std::fmt;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::config::{load_config, LoadedConfig, PipelineConfig};
use crate::durable;
use crate::error::{Error, IoContext, Result};
use crate::manifest::{
    code_version, ArtifactRecord, InputRef, InputStamp, Manifest, StageRecord, Streamed,
    SCHEMA_VERSION,
};

/// The six stages, in pipeline order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    Vocab,
    Pairs,
    Mask,
    Pretrain,
    Finetune,
    Report,
}

impl Stage {
    /// All stages in pipeline order.
    pub const ALL: [Stage; 6] = [
        Stage::Vocab,
        Stage::Pairs,
        Stage::Mask,
        Stage::Pretrain,
        Stage::Finetune,
        Stage::Report,
    ];

    /// The stage's name (also its directory in the run and its `just` recipe).
    pub fn name(self) -> &'static str {
        match self {
            Stage::Vocab => "vocab",
            Stage::Pairs => "pairs",
            Stage::Mask => "mask",
            Stage::Pretrain => "pretrain",
            Stage::Finetune => "finetune",
            Stage::Report => "report",
        }
    }

    /// Parses a stage name.
    pub fn from_name(name: &str) -> Result<Stage> {
        Stage::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| {
                Error::Stage(format!(
                    "unknown stage `{name}`; stages are vocab, pairs, mask, pretrain, finetune, report"
                ))
            })
    }

    /// Stages whose artifacts this one reads under `cfg`.
    pub fn upstream(self, cfg: &PipelineConfig) -> Vec<Stage> {
        match self {
            Stage::Vocab => vec![],
            Stage::Pairs => vec![Stage::Vocab],
            Stage::Mask => vec![Stage::Vocab, Stage::Pairs],
            Stage::Pretrain => vec![Stage::Vocab, Stage::Mask],
            Stage::Finetune => {
                match cfg.finetune.init.as_str() {
                    "pretrained" => vec![Stage::Vocab, Stage::Pretrain],
                    "scratch" => vec![Stage::Vocab],
                    // An HF-format directory brings its own vocabulary: no stage upstream.
                    _ => vec![],
                }
            }
            // The report reads whatever exists; its inputs are resolved at run time.
            Stage::Report => vec![],
        }
    }

    /// The slice of the configuration that determines this stage's output.
    pub fn config_slice(self, cfg: &PipelineConfig) -> Value {
        let seed = cfg.run.random_seed;
        match self {
            Stage::Vocab => json!({ "corpus": cfg.corpus.input, "vocab": cfg.vocab }),
            Stage::Pairs if cfg.has_phases() => {
                // Pairs at every phase length; `pairs.max_seq_length` is not used for them.
                let mut pairs = json!(cfg.pairs);
                pairs["max_seq_length"] = Value::Null;
                let lengths: Vec<usize> = cfg
                    .instance_shapes()
                    .iter()
                    .map(|s| s.max_seq_length)
                    .collect();
                json!({
                    "corpus": cfg.corpus.input,
                    "pairs": pairs,
                    "max_seq_lengths": lengths,
                    "random_seed": seed,
                })
            }
            Stage::Pairs => {
                json!({ "corpus": cfg.corpus.input, "pairs": cfg.pairs, "random_seed": seed })
            }
            // Lengths and prediction caps of every phase, but not their steps or batch sizes.
            Stage::Mask if cfg.has_phases() => json!({
                "masked_lm_prob": cfg.mask.masked_lm_prob,
                "do_whole_word_mask": cfg.mask.do_whole_word_mask,
                "shapes": cfg.instance_shapes(),
                "random_seed": seed,
            }),
            Stage::Mask => json!({
                "mask": cfg.mask,
                "max_seq_length": cfg.pairs.max_seq_length,
                "random_seed": seed,
            }),
            Stage::Pretrain => json!({
                "model": cfg.model,
                "pretrain": cfg.pretrain,
                "heldout": cfg.corpus.heldout,
                "random_seed": seed,
            }),
            Stage::Finetune => {
                json!({ "finetune": cfg.finetune, "model": cfg.model, "random_seed": seed })
            }
            Stage::Report => json!({ "report": cfg.report }),
        }
    }

    /// Raw files (not artifacts) this stage reads, as (`file:<configured path>`, resolved path).
    pub fn input_files(self, loaded: &LoadedConfig) -> Result<Vec<(String, PathBuf)>> {
        let cfg = &loaded.config;
        let mut files = Vec::new();
        match self {
            Stage::Vocab | Stage::Pairs => {
                for f in corpus_files(loaded)? {
                    files.push((input_id(loaded, &f), f));
                }
            }
            Stage::Pretrain => {
                if let Some(h) = &cfg.corpus.heldout {
                    files.push((format!("file:{h}"), loaded.resolve(h)));
                }
            }
            Stage::Finetune => {
                for f in finetune_files(loaded) {
                    files.push((input_id(loaded, &f), f));
                }
            }
            Stage::Mask | Stage::Report => {}
        }
        Ok(files)
    }
}

/// The id of a raw input file: `file:` and its path relative to the directory of
/// pipeline.toml when it lies there (as written, or once symlinks are resolved), else the
/// path as configured, so the same config named by a relative or an absolute `--config`
/// path, or through a symlink, gives the same fingerprints.
pub fn input_id(loaded: &LoadedConfig, file: &Path) -> String {
    let under_root = |f: &Path| {
        std::iter::once(&loaded.root)
            .chain(&loaded.absolute_roots)
            .find_map(|root| f.strip_prefix(root).ok())
            .map(Path::to_path_buf)
    };
    let rel = under_root(file).or_else(|| {
        std::fs::canonicalize(file)
            .ok()
            .and_then(|c| under_root(&c))
    });
    format!("file:{}", rel.as_deref().unwrap_or(file).display())
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Expands `corpus.input` globs, sorted; errors when a pattern matches nothing. Expanded
/// once per loaded config (while `corpus.input` stays the same).
pub fn corpus_files(loaded: &LoadedConfig) -> Result<Vec<PathBuf>> {
    let patterns = &loaded.config.corpus.input;
    if let Some((expanded, files)) = loaded.corpus_files.get() {
        if expanded == patterns {
            return Ok(files.clone());
        }
    }
    let files = expand_corpus_files(loaded)?;
    let _ = loaded.corpus_files.set((patterns.clone(), files.clone()));
    Ok(files)
}

fn expand_corpus_files(loaded: &LoadedConfig) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for pattern in &loaded.config.corpus.input {
        let full = loaded.resolve(pattern);
        let matches: Vec<PathBuf> = glob::glob(&full.to_string_lossy())
            .map_err(|e| {
                Error::Config(format!(
                    "{}: corpus.input pattern `{pattern}` is not a valid glob ({e})",
                    loaded.path.display()
                ))
            })?
            .filter_map(|p| p.ok())
            .filter(|p| p.is_file())
            .collect();
        if matches.is_empty() {
            return Err(Error::Config(format!(
                "{}: corpus.input pattern `{pattern}` matches no file (looked for {}); fix the path in pipeline.toml",
                loaded.path.display(),
                full.display()
            )));
        }
        files.extend(matches);
    }
    files.sort();
    files.dedup();
    refuse_evaluation_text(loaded, &files)?;
    Ok(files)
}

/// Fails on the first corpus file that is a fine-tuning task's dev or test file (GLUE or
/// custom tasks of `finetune.tasks`, or the SQuAD dev file): evaluation text must never be
/// pre-training text. GLUE files are also recognised by their folder in
/// [`crate::corpus::read_corpus`], wherever they live.
fn refuse_evaluation_text(loaded: &LoadedConfig, files: &[PathBuf]) -> Result<()> {
    let ft = &loaded.config.finetune;
    let glue_dir = loaded.resolve(&ft.glue_dir);
    let specs: Vec<_> = ft
        .tasks
        .iter()
        .filter_map(|t| crate::tasks::resolve_task(t, ft, &glue_dir, &loaded.root).ok())
        .collect();
    let squad_dev = std::fs::canonicalize(loaded.resolve(&ft.squad.dev_file)).ok();
    for f in files {
        if let Some((spec, split)) = crate::corpus::find_evaluation_file(f, &specs) {
            return Err(crate::corpus::evaluation_text_error(f, &spec.name, split));
        }
        if squad_dev.is_some() && std::fs::canonicalize(f).ok() == squad_dev {
            return Err(crate::corpus::evaluation_text_error(f, "squad", "dev"));
        }
    }
    Ok(())
}

/// GLUE folder names of the task presets.
pub fn glue_folder(task: &str) -> Option<&'static str> {
    Some(match task {
        "cola" => "CoLA",
        "sst2" => "SST-2",
        "mrpc" => "MRPC",
        "stsb" => "STS-B",
        "qqp" => "QQP",
        "mnli" => "MNLI",
        "qnli" => "QNLI",
        "rte" => "RTE",
        "wnli" => "WNLI",
        _ => return None,
    })
}

fn finetune_files(loaded: &LoadedConfig) -> Vec<PathBuf> {
    let ft = &loaded.config.finetune;
    let mut files = Vec::new();
    // An HF-format directory as the starting point is an input like any file.
    if ft.init != "pretrained" && ft.init != "scratch" {
        let dir = loaded.resolve(&ft.init);
        for name in [
            "config.json",
            "model.safetensors",
            "vocab.txt",
            "tokenizer.json",
        ] {
            files.push(dir.join(name));
        }
    }
    for task in &ft.tasks {
        if let Some(folder) = glue_folder(task) {
            let dir = loaded.resolve(&ft.glue_dir).join(folder);
            if let Ok(rd) = std::fs::read_dir(&dir) {
                files.extend(
                    rd.filter_map(|e| e.ok())
                        .map(|e| e.path())
                        .filter(|p| p.is_file()),
                );
            }
        } else if task == "squad" {
            files.push(loaded.resolve(&ft.squad.dev_file));
            if let Some(t) = &ft.squad.train_file {
                files.push(loaded.resolve(t));
            }
        } else if let Some(c) = ft.custom.get(task) {
            files.push(loaded.resolve(&c.train));
            files.push(loaded.resolve(&c.dev));
            if let Some(t) = &c.test {
                files.push(loaded.resolve(t));
            }
        }
    }
    files.retain(|p| p.is_file());
    files.sort();
    files.dedup();
    files
}

/// Where a stage stands relative to the current config and its inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freshness {
    /// Complete, same fingerprint, files present.
    Fresh,
    /// Has a record, but the config, an input or a file changed (the reason).
    Stale(String),
    /// Never completed (the reason, e.g. which upstream is missing).
    Missing(String),
}

impl Freshness {
    /// True for [`Freshness::Fresh`].
    pub fn is_fresh(&self) -> bool {
        matches!(self, Freshness::Fresh)
    }
}

impl fmt::Display for Freshness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Freshness::Fresh => f.write_str("fresh"),
            Freshness::Stale(why) => write!(f, "stale: {why}"),
            Freshness::Missing(why) => write!(f, "missing: {why}"),
        }
    }
}

/// How a stage binary was asked to run.
#[derive(Debug, Clone)]
pub struct StageOptions {
    /// pipeline.toml.
    pub config: PathBuf,
    /// Profile name.
    pub profile: String,
    /// Rerun even when fresh.
    pub force: bool,
    /// Check artifact hashes, not only sizes, when deciding freshness.
    pub verify: bool,
}

/// Everything a stage needs: the loaded config, the open manifest, the options.
#[derive(Debug)]
pub struct StageCtx {
    /// The profile's configuration and where it came from.
    pub loaded: LoadedConfig,
    /// The run's manifest (held open, and so locked, for the life of the stage).
    pub manifest: Manifest,
    /// Command-line options.
    pub options: StageOptions,
    /// Content hashes of input files already hashed by this process, by path, with the size
    /// and mtime they were hashed at: a stage checks the freshness of its upstream stages
    /// several times, and a large corpus should be read once, not once per check.
    input_hashes: std::sync::Mutex<std::collections::HashMap<PathBuf, HashedInput>>,
}

/// An input file's size and mtime when it was hashed, and its hash.
type HashedInput = (u64, Option<u128>, String);

/// What a stage should do.
#[derive(Debug)]
pub enum Begin {
    /// Up to date: nothing to do.
    Skip(StageRecord),
    /// Run, writing into the [`StageRun`]'s directory.
    Run(StageRun),
}

struct Expected {
    fingerprint: String,
    config: Value,
    config_hash: String,
    inputs: Vec<InputRef>,
}

impl StageCtx {
    /// Loads the config profile, opens (and locks) the run's manifest, sizes the thread pool.
    pub fn open(options: StageOptions) -> Result<StageCtx> {
        let loaded = load_config(&options.config, &options.profile)?;
        // `threads` 0 = one per core. Training loops run on these threads
        // (`model::kernels::on_pool_thread`), so they get a main thread's stack size.
        // Fails only if a pool already exists (tests): then the existing one is used.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(loaded.config.run.threads)
            .stack_size(8 << 20)
            .build_global();
        let manifest = Manifest::open(&loaded.run_dir())?;
        // The manifest's run lock is held: no other process can be using these.
        remove_dead_leftovers(manifest.run_dir());
        Ok(StageCtx {
            loaded,
            manifest,
            options,
            input_hashes: Default::default(),
        })
    }

    /// The profile's configuration.
    pub fn config(&self) -> &PipelineConfig {
        &self.loaded.config
    }

    /// The run directory.
    pub fn run_dir(&self) -> &Path {
        self.manifest.run_dir()
    }

    /// Absolute path of a recorded artifact.
    pub fn path_of(&self, a: &ArtifactRecord) -> PathBuf {
        self.run_dir().join(&a.path)
    }

    /// A seed for `stage` and the given indexes, derived from `run.random_seed`.
    pub fn seed(&self, stage: Stage, parts: &[u64]) -> u64 {
        derive_seed(self.config().run.random_seed, stage.name(), parts)
    }

    /// The record of an upstream stage, which must be fresh.
    pub fn upstream(&self, stage: Stage) -> Result<StageRecord> {
        self.require_fresh(stage)?;
        Ok(self
            .manifest
            .stage(stage.name())?
            .expect("fresh stage has a record"))
    }

    /// Streams the artifact records of an upstream stage, which must be fresh, to `f`, in
    /// recorded order, none held (the shards of a large corpus are hundreds of thousands).
    pub fn each_upstream_artifact(
        &self,
        stage: Stage,
        mut f: impl FnMut(ArtifactRecord) -> Result<()>,
    ) -> Result<()> {
        self.require_fresh(stage)?;
        let read = self.manifest.each_artifact(stage.name(), |a| {
            f(a)?;
            Ok(ControlFlow::Continue(()))
        })?;
        match read {
            Some(Streamed::All(_)) => Ok(()),
            _ => Err(Error::Stage(format!(
                "the artifact records of `{stage}` changed while it was read; run again"
            ))),
        }
    }

    /// Fails with a one-line error unless the upstream stage is fresh.
    fn require_fresh(&self, stage: Stage) -> Result<()> {
        match self.freshness(stage)? {
            Freshness::Fresh => Ok(()),
            other => Err(Error::Stage(format!(
                "upstream stage `{stage}` is {other}; run `just stage {stage}` (or `just pipeline`) first"
            ))),
        }
    }

    /// Freshness of every stage, in pipeline order.
    pub fn status(&self) -> Result<Vec<(Stage, Freshness)>> {
        Stage::ALL
            .into_iter()
            .map(|s| Ok((s, self.freshness(s)?)))
            .collect()
    }

    /// Where `stage` stands now.
    pub fn freshness(&self, stage: Stage) -> Result<Freshness> {
        let record = self.manifest.stage_summary(stage.name())?;
        let mut upstream = stage.upstream(self.config());
        if stage == Stage::Report {
            // The report describes every stage that has run: it is stale when any of them is.
            for s in &Stage::ALL[..5] {
                if self.manifest.stage_summary(s.name())?.is_some() {
                    upstream.push(*s);
                }
            }
        }
        for up in upstream {
            match self.freshness(up)? {
                Freshness::Fresh => {}
                other => {
                    let why = format!("upstream `{up}` is {}", short(&other));
                    return Ok(match record {
                        Some(_) => Freshness::Stale(why),
                        None => Freshness::Missing(why),
                    });
                }
            }
        }
        self.own_freshness(stage, record)
    }

    /// Freshness from the stage's own record alone (`record`: without its artifacts, which
    /// are streamed from the manifest): fingerprint and files, ignoring whether upstream
    /// stages are themselves fresh.
    fn own_freshness(&self, stage: Stage, record: Option<StageRecord>) -> Result<Freshness> {
        let Some(record) = record else {
            return Ok(Freshness::Missing("never run".into()));
        };
        let expected = match self.expected(stage) {
            Ok(e) => e,
            Err(e) => return Ok(Freshness::Stale(format!("cannot check inputs: {e}"))),
        };
        if record.fingerprint != expected.fingerprint {
            return Ok(Freshness::Stale(explain_change(&record, &expected)));
        }
        if self.manifest.publishing(stage.name())?.is_some() {
            return Ok(Freshness::Stale(
                "a run was killed while moving its outputs into place".into(),
            ));
        }
        let mut changed = None;
        let read = self.manifest.each_artifact(stage.name(), |a| {
            changed = self.artifact_change(&a)?;
            Ok(match changed {
                Some(_) => ControlFlow::Break(()),
                None => ControlFlow::Continue(()),
            })
        })?;
        Ok(match (changed, read) {
            (Some(why), _) => Freshness::Stale(why),
            (None, Some(Streamed::All(n))) if n == record.artifact_count => Freshness::Fresh,
            (None, Some(Streamed::All(n))) => Freshness::Stale(format!(
                "the manifest holds {n} of its {} artifact records",
                record.artifact_count
            )),
            (None, _) => Freshness::Stale(format!(
                "its list of {} artifact records is missing or not the one recorded",
                record.artifact_count
            )),
        })
    }

    /// How a recorded artifact differs from the file on disk, if it does: gone, another
    /// size, or (hashed when small, when its mtime moved, or with `--verify`) other bytes.
    fn artifact_change(&self, a: &ArtifactRecord) -> Result<Option<String>> {
        let path = self.path_of(a);
        let Ok(meta) = std::fs::metadata(&path) else {
            return Ok(Some(format!("artifact {} is gone", a.path)));
        };
        if meta.len() != a.bytes {
            return Ok(Some(format!("artifact {} changed size on disk", a.path)));
        }
        let hash = self.options.verify
            || (a.bytes <= SMALL_ARTIFACT_BYTES && a.shard.is_none())
            || a.mtime_ns.is_some_and(|t| mtime_ns(&meta) != Some(t));
        if hash {
            let (hash, _) = durable::hash_file(&path)?;
            if hash != a.blake3 {
                return Ok(Some(format!("artifact {} changed on disk", a.path)));
            }
        }
        Ok(None)
    }

    /// The input a stage records for the upstream `stage` ([`upstream_input`]), its
    /// artifacts streamed from the manifest.
    fn upstream_input_of(&self, stage: &str) -> Result<Option<InputRef>> {
        let mut digest = UpstreamDigest::default();
        let read = self.manifest.each_artifact(stage, |a| {
            digest.add(&a);
            Ok(ControlFlow::Continue(()))
        })?;
        Ok(read.map(|_| digest.finish(stage)))
    }

    fn expected(&self, stage: Stage) -> Result<Expected> {
        let mut inputs = Vec::new();
        if stage == Stage::Report {
            // The report's inputs: every other stage's current artifacts.
            for s in &Stage::ALL[..5] {
                if self.manifest.stage_summary(s.name())?.is_some() {
                    inputs.extend(self.upstream_input_of(s.name())?);
                }
            }
        }
        for up in stage.upstream(self.config()) {
            let input = self.upstream_input_of(up.name())?.ok_or_else(|| {
                Error::Stage(format!(
                    "upstream stage `{up}` has not run; run `just stage {up}` first"
                ))
            })?;
            inputs.push(input);
        }
        for (id, path) in stage.input_files(&self.loaded)? {
            let blake3 = self.input_hash(&path)?;
            inputs.push(InputRef { id, blake3 });
        }
        let config = stage.config_slice(self.config());
        let config_hash = hash_json(&config);
        let mut h = blake3::Hasher::new();
        h.update(stage.name().as_bytes());
        h.update(&SCHEMA_VERSION.to_le_bytes());
        h.update(config_hash.as_bytes());
        for i in &inputs {
            h.update(i.id.as_bytes());
            h.update(i.blake3.as_bytes());
        }
        Ok(Expected {
            fingerprint: h.finalize().to_hex().to_string(),
            config,
            config_hash,
            inputs,
        })
    }

    /// The content hash of an input file: hashed once per process while its size and mtime
    /// stay the same, and taken from the manifest's stamp cache while its size, mtime, ctime
    /// and inode are those it was hashed with (never with `--verify`).
    fn input_hash(&self, path: &Path) -> Result<String> {
        let meta = std::fs::metadata(path).at(path)?;
        let stamp = (meta.len(), mtime_ns(&meta));
        let mut memo = self.input_hashes.lock().expect("input hash lock");
        if let Some((len, mtime, hash)) = memo.get(path) {
            if (*len, *mtime) == stamp {
                return Ok(hash.clone());
            }
        }
        let key = path.to_string_lossy();
        let now = FileStamp::of(&meta);
        if let (false, Some(now)) = (self.options.verify, &now) {
            if let Some(old) = self.manifest.input_stamp(&key)? {
                if now.matches(&old) {
                    memo.insert(path.to_path_buf(), (stamp.0, stamp.1, old.blake3.clone()));
                    return Ok(old.blake3);
                }
            }
        }
        let (hash, _) = durable::hash_file(path)?;
        // A file changed within the clock's resolution of the hashing could change again
        // with the same stamp: only settled files are remembered (git's "racy" rule).
        if let Some(now) = now.filter(FileStamp::settled) {
            self.manifest
                .remember_input_stamp(&key, &now.with_hash(&hash))?;
        }
        memo.insert(path.to_path_buf(), (stamp.0, stamp.1, hash.clone()));
        Ok(hash)
    }

    /// Decides whether `stage` runs. Upstream stages must be fresh. With `--force` it
    /// always runs; otherwise a fresh stage is skipped.
    pub fn begin(&self, stage: Stage) -> Result<Begin> {
        for up in stage.upstream(self.config()) {
            self.require_fresh(up)?;
        }
        // The report is skipped when what it read is unchanged, even if it describes stale
        // stages (rerunning it would write the same report); `status` still calls it stale.
        let fresh = if stage == Stage::Report {
            self.own_freshness(stage, self.manifest.stage_summary(stage.name())?)?
        } else {
            self.freshness(stage)?
        };
        if !self.options.force && fresh == Freshness::Fresh {
            let mut record = self
                .manifest
                .stage_summary(stage.name())?
                .expect("fresh has record");
            // As a run returns it (StageRun::finish): without its shards.
            self.manifest.each_artifact(stage.name(), |a| {
                if a.shard.is_none() {
                    record.artifacts.push(a);
                }
                Ok(ControlFlow::Continue(()))
            })?;
            return Ok(Begin::Skip(record));
        }
        let expected = self.expected(stage)?;
        let staging = self.run_dir().join(".staging").join(format!(
            "{}-{}",
            stage.name(),
            std::process::id()
        ));
        clear_stale_staging(&self.run_dir().join(".staging"), stage.name());
        std::fs::create_dir_all(&staging).at(&staging)?;
        Ok(Begin::Run(StageRun {
            stage,
            profile: self.loaded.profile.clone(),
            fingerprint: expected.fingerprint,
            config: expected.config,
            config_hash: expected.config_hash,
            inputs: expected.inputs,
            staging,
            started_at: now(),
            shards: Box::new(self.manifest.start_artifact_list(stage.name())?),
            artifacts: Vec::new(),
            artifact_index: Default::default(),
        }))
    }
}

/// What a stage records of an upstream stage it read: `stage:<name>` and a blake3 over the
/// ids and content hashes of its artifacts, in recorded order. One input per upstream stage,
/// not one per artifact: `mask` reads every `pairs` shard, and a stage record listing each
/// grew with the corpus (44,039 inputs, 5 MB of JSON, on 50 MB of text cut into small
/// shards). Equal outputs give equal digests, so a forced rerun of an upstream stage that
/// writes the same files leaves the stages below it fresh.
pub fn upstream_input(record: &StageRecord) -> InputRef {
    let mut digest = UpstreamDigest::default();
    for a in &record.artifacts {
        digest.add(a);
    }
    digest.finish(&record.stage)
}

/// The digest of an [`upstream_input`], fed one artifact at a time.
#[derive(Default)]
pub struct UpstreamDigest(blake3::Hasher);

impl UpstreamDigest {
    /// Adds the next artifact, in recorded order.
    pub fn add(&mut self, a: &ArtifactRecord) {
        self.0.update(a.id.as_bytes());
        self.0.update(b"\0");
        self.0.update(a.blake3.as_bytes());
        self.0.update(b"\n");
    }

    /// The input a stage records for the upstream `stage` whose artifacts were added.
    pub fn finish(self, stage: &str) -> InputRef {
        InputRef {
            id: format!("{UPSTREAM_PREFIX}{stage}"),
            blake3: self.0.finalize().to_hex().to_string(),
        }
    }
}

/// The start of the id of an [`upstream_input`].
pub const UPSTREAM_PREFIX: &str = "stage:";

fn short(f: &Freshness) -> &'static str {
    match f {
        Freshness::Fresh => "fresh",
        Freshness::Stale(_) => "stale",
        Freshness::Missing(_) => "missing",
    }
}

fn explain_change(record: &StageRecord, expected: &Expected) -> String {
    if record.schema_version != SCHEMA_VERSION {
        return format!(
            "written by schema version {}, this build uses {SCHEMA_VERSION}",
            record.schema_version
        );
    }
    if record.config_hash != expected.config_hash {
        let keys = changed_keys(&record.config, &expected.config, "");
        return format!("config changed ({})", keys.join(", "));
    }
    let old: std::collections::BTreeMap<&str, &str> = record
        .inputs
        .iter()
        .map(|i| (i.id.as_str(), i.blake3.as_str()))
        .collect();
    let mut changed: Vec<&str> = expected
        .inputs
        .iter()
        .filter(|i| old.get(i.id.as_str()) != Some(&i.blake3.as_str()))
        .map(|i| i.id.as_str())
        .collect();
    let new_ids: std::collections::BTreeSet<&str> =
        expected.inputs.iter().map(|i| i.id.as_str()).collect();
    changed.extend(old.keys().filter(|k| !new_ids.contains(*k)).copied());
    changed.truncate(3);
    format!("inputs changed ({})", changed.join(", "))
}

fn changed_keys(old: &Value, new: &Value, prefix: &str) -> Vec<String> {
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .flat_map(|k| {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    changed_keys(
                        a.get(k).unwrap_or(&Value::Null),
                        b.get(k).unwrap_or(&Value::Null),
                        &p,
                    )
                })
                .collect()
        }
        (a, b) if a == b => vec![],
        _ => vec![if prefix.is_empty() {
            "config".into()
        } else {
            prefix.to_string()
        }],
    }
}

/// Artifacts up to this size, data shards excepted, are hashed on every freshness check
/// (not only with `--verify`).
pub const SMALL_ARTIFACT_BYTES: u64 = 4 << 20;

/// The fields of [`InputStamp`] a file has now.
struct FileStamp {
    bytes: u64,
    mtime_ns: u128,
    ctime_ns: u128,
    inode: u64,
}

impl FileStamp {
    /// Seconds a file's last change must lie in the past for its stamp to be remembered.
    const SETTLE_S: u128 = 2;

    #[cfg(unix)]
    fn of(meta: &std::fs::Metadata) -> Option<FileStamp> {
        use std::os::unix::fs::MetadataExt;
        let ns = |s: i64, n: i64| {
            u128::try_from(s)
                .ok()
                .map(|s| s * 1_000_000_000 + n as u128)
        };
        Some(FileStamp {
            bytes: meta.len(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec())?,
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec())?,
            inode: meta.ino(),
        })
    }

    /// Without ctime and inode a stamp is too weak to trust: always hash.
    #[cfg(not(unix))]
    fn of(_meta: &std::fs::Metadata) -> Option<FileStamp> {
        None
    }

    fn matches(&self, old: &InputStamp) -> bool {
        (self.bytes, self.mtime_ns, self.ctime_ns, self.inode)
            == (old.bytes, old.mtime_ns, old.ctime_ns, old.inode)
    }

    /// Last changed more than [`Self::SETTLE_S`] ago.
    fn settled(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        self.mtime_ns.max(self.ctime_ns) + Self::SETTLE_S * 1_000_000_000 < now
    }

    fn with_hash(self, blake3: &str) -> InputStamp {
        InputStamp {
            bytes: self.bytes,
            mtime_ns: self.mtime_ns,
            ctime_ns: self.ctime_ns,
            inode: self.inode,
            blake3: blake3.to_string(),
        }
    }
}

/// A file's modification time in nanoseconds since the Unix epoch.
pub fn mtime_ns(meta: &std::fs::Metadata) -> Option<u128> {
    meta.modified()
        .ok()?
        .duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_nanos())
}

/// Removes what killed processes left in a run directory: staging and trash directories
/// under `.staging/`, artifact lists being written in `manifest.artifacts/`, and temp files and checkpoint directories (`.tmp-*`, `.*.tmp`) in the
/// stages' work directories under `.work/`. Call only with the run lock held (then no
/// process that wrote them is alive). Best effort: a leftover that cannot be removed is
/// logged and left.
pub fn remove_dead_leftovers(run_dir: &Path) {
    let mut dead = Vec::new();
    if let Ok(rd) = std::fs::read_dir(run_dir.join(".staging")) {
        dead.extend(rd.flatten().map(|e| e.path()));
    }
    // Artifact lists a dead run was writing (crate::manifest::ArtifactList).
    if let Ok(rd) = std::fs::read_dir(run_dir.join(crate::manifest::ARTIFACT_LISTS)) {
        dead.extend(rd.flatten().map(|e| e.path()).filter(|p| {
            let name = p.file_name().unwrap_or_default().to_string_lossy();
            name.starts_with('.') && name.ends_with(".tmp")
        }));
    }
    if let Ok(rd) = std::fs::read_dir(run_dir.join(".work")) {
        for work in rd.flatten().filter(|e| e.path().is_dir()) {
            if let Ok(inner) = std::fs::read_dir(work.path()) {
                dead.extend(inner.flatten().map(|e| e.path()).filter(|p| {
                    let name = p
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    name.starts_with(".tmp-") || (name.starts_with('.') && name.ends_with(".tmp"))
                }));
            }
        }
    }
    for path in dead {
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match removed {
            Ok(()) => tracing::info!(path = %path.display(), "removed a killed run's leftover"),
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot remove a killed run's leftover: {e}")
            }
        }
    }
}

fn clear_stale_staging(dir: &Path, stage: &str) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{stage}-")) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// A stage in progress: outputs go into [`StageRun::dir`], and [`StageRun::finish`] moves
/// them into place and records them.
#[derive(Debug)]
pub struct StageRun {
    stage: Stage,
    profile: String,
    fingerprint: String,
    config: Value,
    config_hash: String,
    inputs: Vec<InputRef>,
    staging: PathBuf,
    started_at: f64,
    /// The records of the shards recorded so far, written to the manifest's artifact list as
    /// they come (a large corpus makes hundreds of thousands: none is held in memory).
    shards: Box<crate::manifest::ArtifactList>,
    /// The other artifacts (a few), appended to the list at [`StageRun::finish`].
    artifacts: Vec<ArtifactRecord>,
    /// Index in `artifacts` of each artifact id: an id recorded again replaces its record.
    artifact_index: std::collections::HashMap<String, usize>,
}

impl StageRun {
    /// The stage being run.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// The staging directory: write every output here, by its path relative to the stage.
    pub fn dir(&self) -> &Path {
        &self.staging
    }

    /// The fingerprint of this run (stable across a kill and rerun with unchanged inputs).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// A directory that survives a killed run with the same fingerprint (checkpoints to
    /// resume from). Removed by `just clean`.
    pub fn work_dir(&self, ctx: &StageCtx) -> Result<PathBuf> {
        let dir = ctx.run_dir().join(".work").join(format!(
            "{}-{}",
            self.stage.name(),
            &self.fingerprint[..16]
        ));
        std::fs::create_dir_all(&dir).at(&dir)?;
        Ok(dir)
    }

    /// Records `rel` (a file already written under [`StageRun::dir`]) as an artifact.
    pub fn add(&mut self, rel: &str, kind: &str, rows: u64) -> Result<()> {
        self.add_artifact(rel, kind, rows, None, None, None)
    }

    /// [`StageRun::add`] for a shard, recording its identity with it and, as its inputs, the
    /// ids of what it was made from (`sources`: a pairs shard's input files, a mask shard's
    /// pairs shard). Other artifacts list every input of their stage, which for shards would
    /// grow as shards x inputs: tens of millions of ids in the manifest for a large corpus.
    ///
    /// The record goes straight to the manifest's artifact list, in the order of the calls
    /// (make it deterministic), and is not kept: a shard is recorded once (shard names are
    /// unique by construction, [`crate::shard::ShardId`]), and its `finished_at` is the time
    /// it was recorded.
    pub fn add_shard(
        &mut self,
        rel: &str,
        kind: &str,
        id: &crate::shard::ShardId,
        written: &crate::shard::ShardInfo,
        sources: Vec<String>,
    ) -> Result<()> {
        let hashed = (written.blake3.clone(), written.bytes);
        self.add_artifact(
            rel,
            kind,
            written.rows,
            Some(*id),
            Some(hashed),
            Some(sources),
        )
    }

    /// Records `rel`; `hashed` is its (blake3, size) when the writer hashed the bytes it
    /// wrote, else the file is hashed here; `inputs` are its inputs, else the stage's. A shard
    /// goes to the artifact list at once, anything else is kept until [`StageRun::finish`].
    fn add_artifact(
        &mut self,
        rel: &str,
        kind: &str,
        rows: u64,
        shard: Option<crate::shard::ShardId>,
        hashed: Option<(String, u64)>,
        inputs: Option<Vec<String>>,
    ) -> Result<()> {
        let path = self.staging.join(rel);
        let (blake3, bytes) = match hashed {
            Some(h) => h,
            None => durable::hash_file(&path)?,
        };
        let mtime_ns = std::fs::metadata(&path).ok().and_then(|m| mtime_ns(&m));
        let id = format!("{}/{rel}", self.stage.name());
        let record = ArtifactRecord {
            id: id.clone(),
            stage: self.stage.name().into(),
            kind: kind.into(),
            path: id,
            blake3,
            bytes,
            mtime_ns,
            rows,
            schema_version: SCHEMA_VERSION,
            config_hash: self.config_hash.clone(),
            inputs: inputs.unwrap_or_else(|| self.inputs.iter().map(|i| i.id.clone()).collect()),
            code_version: code_version(),
            started_at: self.started_at,
            finished_at: if shard.is_some() { now() } else { 0.0 },
            shard,
        };
        if record.shard.is_some() {
            return self.shards.push(&record);
        }
        match self.artifact_index.get(&record.id) {
            Some(&i) => self.artifacts[i] = record,
            None => {
                self.artifact_index
                    .insert(record.id.clone(), self.artifacts.len());
                self.artifacts.push(record);
            }
        }
        Ok(())
    }

    /// Moves the outputs into `<run>/<stage>/` (replacing the previous ones) and writes the
    /// manifest record. Nothing is recorded if this is never called. The record returned
    /// holds the artifacts that are not shards; `artifact_count` counts them all (read the
    /// stage's record from the manifest for its shards).
    pub fn finish(mut self, ctx: &StageCtx, metrics: Value) -> Result<StageRecord> {
        let finished_at = now();
        for a in &mut self.artifacts {
            a.finished_at = finished_at;
        }
        let final_dir = ctx.run_dir().join(self.stage.name());
        // Shards were written without per-file fsyncs: flush them before anything records them.
        durable::sync_tree(&self.staging)?;
        // From here until the commit, a kill leaves the stage stale (not fresh on new files).
        ctx.manifest
            .begin_publish(self.stage.name(), &self.fingerprint)?;
        durable::crash_point("publish");
        if final_dir.exists() {
            let trash = ctx.run_dir().join(".staging").join(format!(
                "trash-{}-{}",
                self.stage.name(),
                std::process::id()
            ));
            std::fs::rename(&final_dir, &trash).at(&final_dir)?;
            let _ = std::fs::remove_dir_all(&trash);
        }
        std::fs::rename(&self.staging, &final_dir).at(&final_dir)?;
        durable::sync_dir(ctx.run_dir());
        durable::crash_point("commit");
        let record = StageRecord {
            stage: self.stage.name().into(),
            profile: self.profile,
            fingerprint: self.fingerprint,
            config_hash: self.config_hash,
            config: self.config,
            inputs: self.inputs,
            artifact_count: self.shards.len() + self.artifacts.len(),
            artifacts: self.artifacts,
            metrics,
            code_version: code_version(),
            schema_version: SCHEMA_VERSION,
            started_at: self.started_at,
            finished_at,
        };
        ctx.manifest.commit_with_list(&record, *self.shards)?;
        Ok(record)
    }
}

/// blake3 of a JSON value's canonical text (serde_json keeps object keys sorted).
pub fn hash_json(v: &Value) -> String {
    blake3::hash(v.to_string().as_bytes()).to_hex().to_string()
}

/// A 64-bit seed from the master seed, a stage name and indexes.
pub fn derive_seed(master: u64, stage: &str, parts: &[u64]) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&master.to_le_bytes());
    h.update(stage.as_bytes());
    for p in parts {
        h.update(&p.to_le_bytes());
    }
    let bytes = h.finalize();
    u64::from_le_bytes(bytes.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// Unix time in seconds.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// What a stage's `run` function did. Either way its record's `artifacts` leave out the
/// stage's shards (`pairs` and `mask` write hundreds of thousands for a large corpus, and
/// a run records them straight into the manifest: [`StageRun::add_shard`]);
/// `artifact_count` counts them, and [`Manifest::stage`] reads them.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Inputs and config unchanged: the previous record stands.
    Skipped(StageRecord),
    /// The stage ran and recorded this.
    Ran(StageRecord),
}

impl Outcome {
    /// The stage's record either way.
    pub fn record(&self) -> &StageRecord {
        match self {
            Outcome::Skipped(r) | Outcome::Ran(r) => r,
        }
    }

    /// True when the stage was skipped as fresh.
    pub fn skipped(&self) -> bool {
        matches!(self, Outcome::Skipped(_))
    }
}
