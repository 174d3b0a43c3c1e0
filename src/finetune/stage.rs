//! The `finetune` stage: every task x initialisation x seed, the learning-rate sweep, the
//! artifacts and the summary in the manifest record.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dfdx::tensor::AutoDevice;
use serde_json::{json, Value};

use super::{
    load_squad_data, load_task_data, majority_class_accuracy, run_seed, run_squad_seed,
    summarize_arm, ArmSummary, FinetuneSummary, Init, Recipe, SeedOutput, SeedRun, SquadRecipe,
    TaskData, TaskSummary, TrainStats,
};
use crate::config::{BertConfig, FinetuneConfig};
use crate::error::{Error, IoContext, Result};
use crate::metrics::{MetricsWriter, Targets};
use crate::model::export::{read_config_json, with_dropout, CONFIG_FILE, MODEL_FILE};
use crate::progress::Progress;
use crate::squad;
use crate::stage::{Begin, Outcome, Stage, StageCtx};
use crate::tasks::{resolve_task, write_glue_submission, TaskSpec};

/// The directory of this run's pre-training checkpoint: the pretrain stage's artifact of
/// kind `model` (else any artifact named `model.safetensors`, the last one recorded), which
/// must have `config.json` beside it.
pub fn pretrained_checkpoint_dir(ctx: &StageCtx) -> Result<PathBuf> {
    let record = ctx.upstream(Stage::Pretrain)?;
    let artifact = record
        .artifacts_of("model")
        .filter(|a| a.path.ends_with(MODEL_FILE))
        .last()
        .or_else(|| {
            record
                .artifacts
                .iter()
                .rfind(|a| a.path.ends_with(MODEL_FILE))
        })
        .ok_or_else(|| {
            Error::Stage(format!(
                "the pretrain stage recorded no {MODEL_FILE}; rerun `just stage pretrain`"
            ))
        })?;
    let dir = ctx
        .path_of(artifact)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| ctx.run_dir().to_path_buf());
    if !dir.join(CONFIG_FILE).is_file() {
        return Err(Error::checkpoint(
            dir.join(CONFIG_FILE),
            "missing beside the pre-trained model.safetensors; rerun `just stage pretrain`",
        ));
    }
    Ok(dir)
}

/// A BERT WordPiece tokenizer for an HF directory: its `tokenizer.json`, else one built
/// from its `vocab.txt` (lower-cased unless `tokenizer_config.json` says
/// `"do_lower_case": false`).
pub fn tokenizer_for_hf_dir(dir: &Path) -> Result<tokenizers::Tokenizer> {
    let json = dir.join("tokenizer.json");
    if json.is_file() {
        return tokenizers::Tokenizer::from_file(&json)
            .map_err(|e| Error::data(&json, format!("not a tokenizer.json: {e}")));
    }
    let vocab = dir.join("vocab.txt");
    if !vocab.is_file() {
        return Err(Error::data(
            &vocab,
            "missing: an HF BERT directory needs tokenizer.json or vocab.txt",
        ));
    }
    let lowercase = std::fs::read_to_string(dir.join("tokenizer_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v.get("do_lower_case").and_then(Value::as_bool))
        .unwrap_or(true);
    let model = tokenizers::models::wordpiece::WordPiece::from_file(&vocab.to_string_lossy())
        .unk_token("[UNK]".into())
        .build()
        .map_err(|e| Error::data(&vocab, format!("not a WordPiece vocab.txt: {e}")))?;
    let mut tokenizer = tokenizers::Tokenizer::new(model);
    tokenizer.with_normalizer(Some(tokenizers::normalizers::BertNormalizer::new(
        true, true, None, lowercase,
    )));
    tokenizer.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::bert::BertPreTokenizer));
    Ok(tokenizer)
}

/// The initialisations to run (`init`, plus `scratch` with `compare_scratch`), the model
/// config for scratch runs, and the tokenizer.
fn plan_inits(ctx: &StageCtx) -> Result<(Vec<Init>, BertConfig, tokenizers::Tokenizer)> {
    let cfg = &ctx.config().finetune;
    let (first, config, tokenizer) = match cfg.init.as_str() {
        "scratch" => {
            let (wp, _) = crate::tokenize::load_stage_vocab(ctx)?;
            (
                Init::Scratch,
                ctx.config().model.clone(),
                wp.tokenizer().clone(),
            )
        }
        "pretrained" => {
            let dir = pretrained_checkpoint_dir(ctx)?;
            let config = read_config_json(&dir.join(CONFIG_FILE))?;
            let (wp, _) = crate::tokenize::load_stage_vocab(ctx)?;
            (
                Init::Pretrained {
                    dir,
                    dropout: cfg.dropout,
                },
                config,
                wp.tokenizer().clone(),
            )
        }
        path => {
            let dir = ctx.loaded.resolve(path);
            let config = read_config_json(&dir.join(CONFIG_FILE))?;
            let tokenizer = tokenizer_for_hf_dir(&dir)?;
            (
                Init::Pretrained {
                    dir,
                    dropout: cfg.dropout,
                },
                config,
                tokenizer,
            )
        }
    };
    // The scratch arm trains with the same dropout as the pre-trained one.
    let config = with_dropout(config, cfg.dropout);
    let mut inits = vec![first];
    if cfg.compare_scratch && inits[0] != Init::Scratch {
        inits.push(Init::Scratch);
    }
    Ok((inits, config, tokenizer))
}

/// Writes `rel` under the stage directory and records it as an artifact.
fn write_artifact(
    run: &mut crate::stage::StageRun,
    rel: &str,
    kind: &str,
    rows: u64,
    value: &Value,
) -> Result<()> {
    let path = run.dir().join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).at(parent)?;
    }
    let text = serde_json::to_string_pretty(value).expect("JSON serialises");
    std::fs::write(&path, text).at(&path)?;
    run.add(rel, kind, rows)
}

/// What every task of one stage run shares.
struct StageEnv<'a> {
    ctx: &'a StageCtx,
    cfg: &'a FinetuneConfig,
    inits: &'a [Init],
    /// Architecture of scratch runs (the pre-trained checkpoint's when there is one).
    config: &'a BertConfig,
    tokenizer: &'a tokenizers::Tokenizer,
    device: &'a AutoDevice,
    progress: &'a dyn Progress,
}

/// Running totals over all tasks (the summary's throughput).
#[derive(Default)]
struct Totals {
    train_examples: usize,
    train_seconds: f64,
    log_rows: u64,
}

impl Totals {
    fn add(&mut self, train: &TrainStats) {
        self.train_examples += train.examples;
        self.train_seconds += train.seconds;
        self.log_rows += train.steps as u64;
    }
}

/// The `finetune` stage: every task of `finetune.tasks` × initialisation × seed.
///
/// Artifacts (under `<run>/finetune/`): `<task>/<arm>-seed<k>.json` (kind `predictions`:
/// the recipe, training stats, dev metrics and every dev prediction with its gold label),
/// `train-log.jsonl` (kind `metrics`: loss and lr per step of the GLUE tasks),
/// `submission/<arm>/<GLUE file>` (kind `glue-submission`: test predictions of the seed with
/// the best dev score), and `results.json` (kind `results`, the same summary as the
/// manifest record's metrics:
/// `{"tasks": {task: {"metric", "pretrained": {scores, mean, median, std, all}, "scratch"}}}`).
pub fn run(ctx: &StageCtx, progress: &dyn Progress) -> Result<Outcome> {
    crate::model::kernels::on_pool_thread(|| finetune_stage(ctx, progress))
}

/// [`run`]'s body, on a pool thread.
fn finetune_stage(ctx: &StageCtx, progress: &dyn Progress) -> Result<Outcome> {
    let cfg = ctx.config().finetune.clone();
    let (specs, with_squad) = resolve_tasks(ctx, &cfg)?;
    let mut run = match ctx.begin(Stage::Finetune)? {
        Begin::Skip(record) => return Ok(Outcome::Skipped(record)),
        Begin::Run(run) => run,
    };
    let (inits, config, tokenizer) = plan_inits(ctx)?;
    let device = AutoDevice::seed_from_u64(ctx.seed(Stage::Finetune, &[0]));
    let env = StageEnv {
        ctx,
        cfg: &cfg,
        inits: &inits,
        config: &config,
        tokenizer: &tokenizer,
        device: &device,
        progress,
    };
    let mut log = MetricsWriter::create(run.dir().join("train-log.jsonl"))?;
    let mut totals = Totals::default();
    let mut tasks = BTreeMap::new();
    for spec in specs {
        let name = spec.name.clone();
        let task = run_glue_task(&env, &mut run, spec, &mut log, &mut totals)?;
        tasks.insert(name, task);
    }
    if with_squad {
        let task = run_squad_task(&env, &mut run, &mut totals)?;
        tasks.insert("squad".into(), task);
    }
    drop(log);
    run.add("train-log.jsonl", "metrics", totals.log_rows)?;
    let summary = FinetuneSummary {
        init: cfg.init.clone(),
        arms: inits.iter().map(|i| i.arm().to_string()).collect(),
        examples_per_s: totals.train_examples as f64 / totals.train_seconds.max(1e-9),
        train_examples: totals.train_examples,
        train_seconds: totals.train_seconds,
        tasks,
    };
    let summary_json = serde_json::to_value(&summary).expect("the summary serialises");
    write_artifact(
        &mut run,
        "results.json",
        "results",
        summary.tasks.len() as u64,
        &summary_json,
    )?;
    Ok(Outcome::Ran(run.finish(ctx, summary_json)?))
}

/// Resolves every task of `finetune.tasks` and checks its files before anything trains;
/// returns the GLUE-style specs and whether SQuAD runs.
fn resolve_tasks(ctx: &StageCtx, cfg: &FinetuneConfig) -> Result<(Vec<TaskSpec>, bool)> {
    if cfg.tasks.is_empty() {
        return Err(Error::Config(
            "finetune.tasks is empty: name at least one task (e.g. [\"sst2\"])".into(),
        ));
    }
    let glue_dir = ctx.loaded.resolve(&cfg.glue_dir);
    let mut specs = Vec::new();
    for name in cfg.tasks.iter().filter(|t| *t != "squad") {
        let spec = resolve_task(name, cfg, &glue_dir, &ctx.loaded.root)?;
        spec.check_files()?;
        specs.push(spec);
    }
    let with_squad = cfg.tasks.iter().any(|t| t == "squad");
    if with_squad {
        for file in std::iter::once(&cfg.squad.dev_file).chain(&cfg.squad.train_file) {
            let path = ctx.loaded.resolve(file);
            if !path.is_file() {
                squad::load_squad(&path)?;
            }
        }
    }
    Ok((specs, with_squad))
}

/// One GLUE-style task: every arm and seed, their artifacts and GLUE submissions; returns
/// the task's summary.
fn run_glue_task(
    env: &StageEnv<'_>,
    run: &mut crate::stage::StageRun,
    spec: TaskSpec,
    log: &mut MetricsWriter,
    totals: &mut Totals,
) -> Result<TaskSummary> {
    let name = spec.name.clone();
    let recipe = Recipe::for_task(env.cfg, &name);
    let headline = spec.metrics[0].name().to_string();
    let subsample_seed = env.ctx.seed(Stage::Finetune, &[task_key(&name)]);
    let mut data = load_task_data(spec, recipe.clone(), env.tokenizer, subsample_seed)?;
    let mut task = TaskSummary {
        metric: Some(headline.clone()),
        train_examples: Some(data.train.len()),
        train_rows: Some(data.train_rows),
        recipe: serde_json::to_value(&recipe).expect("the recipe serialises"),
        ..TaskSummary::default()
    };
    if let Some((_, path, examples, _)) = data.dev.first() {
        if let Ok(Targets::Classes(gold)) = data.spec.gold(examples, path) {
            task.majority_class_accuracy = Some(majority_class_accuracy(&gold));
        }
    }
    let sweep = recipe.training.learning_rates.clone();
    for init_from in env.inits {
        let arm = init_from.arm();
        let mut tried: Vec<(f64, ArmSummary, Option<SeedOutput>)> = Vec::new();
        for &lr in &sweep {
            data.recipe.training.learning_rate = lr;
            let mut runs = Vec::new();
            let mut best: Option<(f64, SeedOutput)> = None;
            for &seed in &recipe.training.seeds {
                let output = run_seed(
                    &data,
                    init_from,
                    env.config,
                    seed,
                    env.device,
                    env.progress,
                    Some(&mut *log),
                )?;
                totals.add(&output.run.train);
                write_seed_artifact(run, &data, sweep.len() > 1, &output)?;
                let metrics = output.run.flat_metrics();
                tracing::info!(task = %name, arm, lr, seed, ?metrics, "fine-tuned");
                let score = metrics.get(&headline).copied().unwrap_or(f64::NEG_INFINITY);
                runs.push(output.run.clone());
                if best.as_ref().is_none_or(|(b, _)| score > *b) {
                    best = Some((score, output));
                }
            }
            let refs: Vec<&SeedRun> = runs.iter().collect();
            tried.push((lr, summarize_arm(&refs, &headline), best.map(|(_, o)| o)));
        }
        let (lr, summary, best) = tried.swap_remove(pick_learning_rate(&tried));
        if let Some(best) = best {
            write_submissions(run, &data, arm, &best)?;
        }
        *task.arm_mut(arm) = Some(summary.with_sweep(lr, &tried));
    }
    Ok(task)
}

/// The index of the sweep value with the best mean dev score (the first on a tie; a value
/// whose mean is missing or NaN never wins over one that has it).
pub fn pick_learning_rate<T>(tried: &[(f64, ArmSummary, T)]) -> usize {
    let mut best = 0;
    for (i, (_, summary, _)) in tried.iter().enumerate() {
        if let Some(m) = summary.finite_mean() {
            if tried[best].1.finite_mean().is_none_or(|b| m > b) {
                best = i;
            }
        }
    }
    best
}

/// `<task>/<arm>-seed<k>.json` (`<arm>-lr<lr>-seed<k>.json` in a sweep): the run, its
/// recipe, and every dev prediction.
fn write_seed_artifact(
    run: &mut crate::stage::StageRun,
    data: &TaskData,
    sweep: bool,
    output: &SeedOutput,
) -> Result<()> {
    let dev: Vec<Value> = data
        .dev
        .iter()
        .zip(&output.dev_predictions)
        .zip(&output.run.dev)
        .map(|(((split, _, examples, _), predictions), scores)| {
            let rows: Vec<Value> = examples
                .iter()
                .zip(predictions)
                .map(|(e, p)| json!({"id": e.id, "prediction": p, "label": e.label}))
                .collect();
            json!({"split": split, "metrics": scores.metrics, "predictions": rows})
        })
        .collect();
    let rows: usize = data.dev.iter().map(|d| d.2.len()).sum();
    let rel = seed_artifact_name(&output.run, sweep);
    write_artifact(
        run,
        &rel,
        "predictions",
        rows as u64,
        &json!({ "run": output.run, "recipe": data.recipe, "dev": dev }),
    )
}

/// `<task>/<arm>-seed<k>.json`, or `<task>/<arm>-lr<lr>-seed<k>.json` in a sweep.
pub fn seed_artifact_name(run: &SeedRun, sweep: bool) -> String {
    if sweep {
        format!(
            "{}/{}-lr{:e}-seed{}.json",
            run.task, run.arm, run.learning_rate, run.seed
        )
    } else {
        format!("{}/{}-seed{}.json", run.task, run.arm, run.seed)
    }
}

/// `submission/<arm>/<GLUE file>` for every loaded test split.
fn write_submissions(
    run: &mut crate::stage::StageRun,
    data: &TaskData,
    arm: &str,
    best: &SeedOutput,
) -> Result<()> {
    for ((split_index, examples, _), predictions) in data.test.iter().zip(&best.test_predictions) {
        let split = &data.spec.test[*split_index];
        let dir = run.dir().join("submission").join(arm);
        let path = write_glue_submission(&dir, &data.spec, split, examples, predictions)?;
        let rel = path
            .strip_prefix(run.dir())
            .expect("written under the stage directory")
            .to_string_lossy()
            .into_owned();
        run.add(&rel, "glue-submission", examples.len() as u64)?;
    }
    Ok(())
}

/// SQuAD: every arm and seed; returns the task's summary (EM and F1 as fractions).
fn run_squad_task(
    env: &StageEnv<'_>,
    run: &mut crate::stage::StageRun,
    totals: &mut Totals,
) -> Result<TaskSummary> {
    let recipe = SquadRecipe::for_finetune(env.cfg);
    let data = load_squad_data(
        &env.cfg.squad,
        &recipe,
        |p| env.ctx.loaded.resolve(p),
        env.tokenizer,
    )?;
    let mut task = TaskSummary {
        metric: Some("f1".into()),
        train_examples: Some(data.train_features.len()),
        train_questions: Some(data.train_questions),
        eval_questions: Some(data.eval_examples.len()),
        recipe: serde_json::to_value(&recipe).expect("the recipe serialises"),
        ..TaskSummary::default()
    };
    let sweep = recipe.training.learning_rates.clone();
    for init_from in env.inits {
        let arm = init_from.arm();
        let mut tried: Vec<(f64, ArmSummary, ())> = Vec::new();
        for &lr in &sweep {
            let mut recipe = recipe.clone();
            recipe.training.learning_rate = lr;
            let mut runs = Vec::new();
            for &seed in &recipe.training.seeds {
                let (seed_run, predictions) = run_squad_seed(
                    &data,
                    &recipe,
                    init_from,
                    env.config,
                    seed,
                    env.device,
                    env.progress,
                )?;
                totals.train_examples += seed_run.train.examples;
                totals.train_seconds += seed_run.train.seconds;
                write_artifact(
                    run,
                    &seed_artifact_name(&seed_run, sweep.len() > 1),
                    "predictions",
                    predictions.len() as u64,
                    &json!({ "run": seed_run, "recipe": recipe, "predictions": predictions }),
                )?;
                runs.push(seed_run);
            }
            let refs: Vec<&SeedRun> = runs.iter().collect();
            tried.push((lr, summarize_arm(&refs, "f1"), ()));
        }
        let (lr, summary, ()) = tried.swap_remove(pick_learning_rate(&tried));
        *task.arm_mut(arm) = Some(summary.with_sweep(lr, &tried));
    }
    Ok(task)
}

/// A stable number for a task name (seed derivation).
fn task_key(name: &str) -> u64 {
    let hash = blake3::hash(name.as_bytes());
    u64::from_le_bytes(hash.as_bytes()[..8].try_into().expect("8 bytes"))
}
