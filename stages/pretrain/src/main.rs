//! `pretrain`: masked LM + next sentence prediction (mask shards -> model.safetensors,
//! config.json, metrics.jsonl). `--bench` times training steps instead.

use std::process::ExitCode;

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

extern "C" {
    /// mimalloc's `mi_option_set` (linked in by the `mimalloc` crate).
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// `mi_option_purge_delay` in mimalloc v2 and v3's `mi_option_e`.
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// Keeps freed memory mapped. A training step frees and reallocates the same large buffers;
/// with mimalloc's default 10 ms purge every step page-faults (and zeroes) gigabytes anew,
/// ~20% of a BERT-mini step on CPU.
fn keep_freed_memory() {
    // SAFETY: sets a plain integer option; mimalloc reads it on its next purge.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) }
}

/// Pre-train BERT on the mask stage's instances (BERT §3.1, §A.2).
#[derive(Debug, Parser)]
#[command(name = "bertline-pretrain", version)]
struct Args {
    #[command(flatten)]
    common: bertline_cli::CommonArgs,
    /// Stop after this step (checkpointed); rerun to resume.
    #[arg(long)]
    stop_at: Option<usize>,
    /// Time training steps of BERT-mini (4 layers, hidden 256, 4 heads, vocab 8192,
    /// seq 128, batch 32) on random data instead of training; prints JSON.
    #[arg(long)]
    bench: bool,
    /// Timed steps for --bench (after one warm-up step).
    #[arg(long, default_value_t = 10)]
    bench_steps: usize,
    /// With --bench: time the profile's [model], batch size and (first phase's)
    /// max_seq_length instead.
    #[arg(long)]
    bench_profile: bool,
}

fn main() -> ExitCode {
    keep_freed_memory();
    let args = Args::parse();
    bertline_cli::main(args.common.verbose, || {
        if args.bench {
            let report = if args.bench_profile {
                let ctx = args.common.open()?;
                let cfg = ctx.config();
                // The first phase's length (pairs.max_seq_length without phases).
                let seq_len = cfg.pretrain_phases()[0].max_seq_length;
                bertline::pretrain::bench_default_device(
                    &cfg.model,
                    &cfg.pretrain,
                    seq_len,
                    args.bench_steps,
                )?
            } else {
                let (model, pretrain) = bertline::pretrain::bench_mini_config();
                bertline::pretrain::bench_default_device(&model, &pretrain, 128, args.bench_steps)?
            };
            println!("{}", serde_json::to_string_pretty(&report)?);
            return Ok(());
        }
        let ctx = args.common.open()?;
        let outcome = bertline::pretrain::run_with(&ctx, &args.common.progress(), args.stop_at)?;
        bertline_cli::report_outcome(&ctx, "pretrain", &outcome);
        Ok(())
    })
}
