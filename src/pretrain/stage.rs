//! The `pretrain` stage: resolves the mask shards and held-out text from the run's
//! manifest, runs the loop, and records the final checkpoint.

use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{
    checkpoint_dir, read_checked_shard, read_eval_batches, train, JobPhase, LogSplit, PretrainJob,
    PretrainLogRow, ShardExpect, StepStats, TrainSummary, METRICS_FILE, OPTIM_FILE, STATE_FILE,
};
use crate::durable;
use crate::error::{Error, IoContext, Result};
use crate::mask::{instances_kind, recorded_shard_id};
use crate::model::export::{CONFIG_FILE, MODEL_FILE};
use crate::model::{BertDevice, MaskedLmBatch};
use crate::optim::total_train_steps;
use crate::progress::Progress;
use crate::shard::{ShardId, Split};
use crate::stage::{Begin, Outcome, Stage, StageCtx};

/// A mask shard's identity and path.
pub type MaskShard = (ShardId, PathBuf);

/// The mask stage's shards of `split` with the identities they were recorded with, every
/// sequence length, in file-name order; [`phase_shards`] picks one phase's. The stage's
/// records are read one at a time (the `mask` stage must be fresh).
pub fn mask_shards(ctx: &StageCtx, split: Split) -> Result<Vec<MaskShard>> {
    let kind = instances_kind(split);
    let mut shards = Vec::new();
    ctx.each_upstream_artifact(Stage::Mask, |a| {
        if a.kind == kind {
            shards.push((recorded_shard_id(&a)?, ctx.path_of(&a)));
        }
        Ok(())
    })?;
    shards.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(shards)
}

/// The paths of `shards` cut for `max_seq_length` (all of them in a run with one length).
pub fn phase_shards(shards: &[MaskShard], max_seq_length: Option<usize>) -> Vec<PathBuf> {
    shards
        .iter()
        .filter(|(id, _)| max_seq_length.is_none() || id.seq_len == max_seq_length)
        .map(|(_, path)| path.clone())
        .collect()
}

/// The `pretrain` stage: trains on the mask shards, checkpoints into the stage's work
/// directory (resuming a killed run), and records the final `model.safetensors`,
/// `config.json`, `optim.safetensors`, `state.json`, vocabulary and `metrics.jsonl`.
pub fn run(ctx: &StageCtx, progress: &dyn Progress) -> Result<Outcome> {
    run_with(ctx, progress, None)
}

/// [`run`], optionally stopping after step `stop_at` (checkpointed, not recorded).
pub fn run_with(
    ctx: &StageCtx,
    progress: &dyn Progress,
    stop_at: Option<usize>,
) -> Result<Outcome> {
    #[cfg(feature = "cuda")]
    {
        let device = dfdx::tensor::Cuda::try_build(0, ctx.seed(Stage::Pretrain, &[1]))
            .map_err(|e| Error::Model(format!("cannot open CUDA device 0: {e:?}")))?;
        dfdx::tensor::Cache::enable_cache(&device);
        run_on(ctx, progress, stop_at, &device)
    }
    #[cfg(not(feature = "cuda"))]
    crate::model::kernels::on_pool_thread(|| {
        let device = dfdx::tensor::Cpu::seed_from_u64(ctx.seed(Stage::Pretrain, &[1]));
        // Reuse freed buffers: without the cache every step page-faults its activations anew.
        dfdx::tensor::Cache::enable_cache(&device);
        run_on(ctx, progress, stop_at, &device)
    })
}

/// [`run_with`] on a given device.
pub fn run_on<D: BertDevice>(
    ctx: &StageCtx,
    progress: &dyn Progress,
    stop_at: Option<usize>,
    device: &D,
) -> Result<Outcome> {
    let cfg = ctx.config();
    let model_config = cfg.model.clone();
    // Inputs first: every check fails before anything is written.
    let (_, tokenizer_path) = crate::tokenize::load_stage_vocab(ctx)?;
    let vocab_record = ctx.upstream(Stage::Vocab)?;
    let vocab_files: Vec<PathBuf> = vocab_record
        .artifacts
        .iter()
        .map(|a| ctx.path_of(a))
        .collect();
    let train_shards = mask_shards(ctx, Split::Train)?;
    let eval_shards = mask_shards(ctx, Split::Eval)?;
    let mut phases = Vec::new();
    for plan in cfg.pretrain_phases() {
        let length = cfg.has_phases().then_some(plan.max_seq_length);
        let (train, eval) = (
            phase_shards(&train_shards, length),
            phase_shards(&eval_shards, length),
        );
        if cfg.has_phases() && train.is_empty() {
            return Err(Error::Stage(format!(
                "no mask shards for phase {} (max_seq_length = {}); rerun `just stage mask`",
                plan.phase, plan.max_seq_length
            )));
        }
        let expect = ShardExpect {
            seq_len: plan.max_seq_length,
            vocab_size: model_config.vocab_size,
        };
        if let Some(first) = train.first() {
            read_checked_shard(first, expect)?;
        }
        let eval_batches = read_eval_batches(
            &eval,
            plan.train_batch_size,
            cfg.pretrain.eval_batches,
            expect,
        )?;
        phases.push(JobPhase {
            plan,
            train_shards: train,
            eval_batches,
        });
    }
    let heldout_batches = match &cfg.corpus.heldout {
        Some(h) => heldout_batches(&ctx.loaded.resolve(h), &tokenizer_path, cfg)?,
        None => Vec::new(),
    };
    let mut run = match ctx.begin(Stage::Pretrain)? {
        Begin::Skip(record) => return Ok(Outcome::Skipped(record)),
        Begin::Run(run) => run,
    };
    let job = PretrainJob {
        model_config,
        config: cfg.pretrain.clone(),
        phases,
        heldout_batches,
        work_dir: run.work_dir(ctx)?,
        vocab_files,
        seed: ctx.seed(Stage::Pretrain, &[0]),
        stop_at,
    };
    let started = Instant::now();
    let summary = train(&job, device, progress)?;
    if !summary.finished {
        tracing::info!(
            step = summary.step,
            "stopped before the end; rerun to resume"
        );
        return Err(Error::Stage(format!(
            "pretrain stopped at step {} of {} (checkpointed in {}); rerun to resume",
            summary.step,
            total_train_steps(&job.config),
            job.work_dir.display()
        )));
    }
    let checkpoint = summary
        .checkpoint
        .clone()
        .unwrap_or_else(|| checkpoint_dir(&job.work_dir, summary.step));
    for entry in std::fs::read_dir(&checkpoint).at(&checkpoint)? {
        let entry = entry.at(&checkpoint)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        durable::copy_file(&entry.path(), &run.dir().join(&name))?;
        let kind = match name.as_str() {
            MODEL_FILE => "model",
            CONFIG_FILE => "model_config",
            OPTIM_FILE => "optimizer",
            STATE_FILE => "train_state",
            "vocab.txt" => "vocab",
            "tokenizer.json" => "tokenizer",
            _ => "checkpoint_file",
        };
        run.add(&name, kind, 0)?;
    }
    durable::copy_file(&summary.metrics, &run.dir().join(METRICS_FILE))?;
    run.add(METRICS_FILE, "metrics", 0)?;
    let mut metrics = summary_metrics(&summary, started.elapsed().as_secs_f64());
    if cfg.has_phases() {
        metrics["phases"] = summary
            .phases
            .iter()
            .map(|p| {
                let value = serde_json::to_value(p).expect("phase summary serialises");
                (format!("phase{}", p.phase), value)
            })
            .collect::<serde_json::Map<_, _>>()
            .into();
    }
    Ok(Outcome::Ran(run.finish(ctx, metrics)?))
}

fn summary_metrics(s: &TrainSummary, seconds: f64) -> serde_json::Value {
    let stats = |x: &Option<StepStats>| {
        x.as_ref().map(|s| {
            serde_json::json!({
                "loss": s.loss, "mlm_loss": s.mlm_loss, "nsp_loss": s.nsp_loss,
                "mlm_accuracy": s.mlm_accuracy(), "nsp_accuracy": s.nsp_accuracy(),
                "mlm_perplexity": s.mlm_loss.exp(),
            })
        })
    };
    // A rerun that resumed from the final checkpoint trains and evaluates nothing: the process
    // that took the last steps logged them.
    let train = stats(&s.last_train).or_else(|| logged_stats(&s.metrics, LogSplit::Train));
    let eval = stats(&s.eval).or_else(|| logged_stats(&s.metrics, LogSplit::Eval));
    serde_json::json!({
        "steps": s.step,
        "resumed_from": s.resumed_from,
        "train": train,
        "eval": eval,
        // single sentences, not pairs: the MLM numbers alone (as in the log's heldout row)
        "heldout": s.heldout.map(|h| serde_json::json!({
            "loss": h.mlm_loss, "mlm_loss": h.mlm_loss, "mlm_accuracy": h.mlm_accuracy(),
            "mlm_perplexity": h.mlm_loss.exp(),
        })),
        "heldout_perplexity": s.heldout.as_ref().map(|h| h.mlm_loss.exp()),
        "tokens_per_s": s.tokens_per_s,
        "seconds": seconds,
    })
}

/// The last `split` row of the metrics file at `path`, with the fields of
/// [`summary_metrics`]'s stats (the row holds them as the process that logged it computed
/// them, so they are the same numbers).
fn logged_stats(path: &Path, split: LogSplit) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(path).ok()?;
    let row = text
        .lines()
        .rev()
        .filter_map(PretrainLogRow::parse)
        .find(|r| r.split == split)?;
    let mlm_loss = row.mlm_loss?;
    Some(serde_json::json!({
        "loss": row.loss?, "mlm_loss": mlm_loss, "nsp_loss": row.nsp_loss?,
        "mlm_accuracy": row.mlm_accuracy?, "nsp_accuracy": row.nsp_accuracy?,
        "mlm_perplexity": mlm_loss.exp(),
    }))
}

/// Held-out MLM batches: `path` (WikiText-2) tokenized line by line, the ids cut into
/// `[CLS] ... [SEP]` rows of the last phase's length (`pairs.max_seq_length` without
/// phases: the length the finished model is trained for), `mask.masked_lm_prob` of each row
/// masked with a fixed seed and the phase's `max_predictions_per_seq`, at most
/// `pretrain.eval_batches` batches of its batch size. NSP labels are 0 and meaningless
/// here: only the MLM numbers of this split are reported.
pub fn heldout_batches(
    path: &Path,
    tokenizer: &Path,
    cfg: &crate::config::PipelineConfig,
) -> Result<Vec<MaskedLmBatch>> {
    let wp = crate::tokenize::WordPiece::from_file(tokenizer)?;
    let text = crate::corpus::read_corpus(path)?;
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let ids: Vec<u32> = wp.encode_lines(&lines)?.into_iter().flatten().collect();
    let phases = cfg.pretrain_phases();
    let last = phases.last().expect("at least one phase");
    let (seq_len, max_predictions, batch_size) = (
        last.max_seq_length,
        last.max_predictions_per_seq,
        last.train_batch_size,
    );
    let rows_wanted = cfg.pretrain.eval_batches * batch_size;
    let mut rng = ChaCha8Rng::seed_from_u64(crate::stage::derive_seed(
        cfg.run.random_seed,
        "pretrain-heldout",
        &[],
    ));
    let special = crate::tokenize::SPECIAL;
    let vocab = crate::mask::MaskVocab::from_wordpiece(&wp);
    let mut rows = Vec::new();
    for chunk in ids.chunks(seq_len - 2).take(rows_wanted) {
        let mut tokens = Vec::with_capacity(seq_len);
        tokens.push(special.cls);
        tokens.extend_from_slice(chunk);
        tokens.push(special.sep);
        // The mask stage's own algorithm (BERT §3.1: 15% of the non-special tokens; of those
        // 80% [MASK], 10% random, 10% unchanged).
        let (masked, positions, labels) = crate::mask::create_masked_lm_predictions(
            &tokens,
            cfg.mask.masked_lm_prob,
            max_predictions,
            cfg.mask.do_whole_word_mask,
            &vocab,
            &mut rng,
        );
        rows.push(crate::shard::TrainingInstance {
            segment_ids: vec![0; masked.len()],
            tokens: masked,
            masked_lm_positions: positions,
            masked_lm_labels: labels,
            is_random_next: false,
        });
    }
    // The mask stage's own row format.
    let shard = crate::shard::pad_instances(&rows, seq_len, max_predictions)
        .map_err(|e| Error::data(path, e))?;
    let batches = (0..shard.batch)
        .collect::<Vec<_>>()
        .chunks(batch_size)
        .map(|chunk| MaskedLmBatch::from_rows(chunk.iter().map(|&r| (&shard, r))))
        .collect();
    Ok(batches)
}
