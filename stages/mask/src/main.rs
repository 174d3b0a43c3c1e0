//! `mask`: masked-LM instances (pairs shards -> mask shards), the second half of Google's
//! `create_pretraining_data.py`; `stats` summarises the written shards.

use std::process::ExitCode;

use bertline::shard::Split;
use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Mask 15% of the tokens of every pair: 80% [MASK], 10% random, 10% kept (BERT §3.1, task #1).
#[derive(Debug, Parser)]
#[command(name = "bertline-mask", version)]
struct Args {
    #[command(flatten)]
    common: bertline_cli::CommonArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print statistics of the written shards (length, random-next, masked positions, the
    /// [MASK]/random/kept split) next to Google's reference values.
    Stats {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Summarise the eval split instead of train.
        #[arg(long)]
        eval: bool,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    bertline_cli::main(args.common.verbose, || {
        let ctx = args.common.open()?;
        match args.command {
            None => {
                let outcome = bertline::mask::run(&ctx, &args.common.progress())?;
                bertline_cli::report_outcome(&ctx, "mask", &outcome);
            }
            Some(Command::Stats { json, eval }) => {
                let split = if eval { Split::Eval } else { Split::Train };
                let by_length = bertline::mask::stage_stats_by_length(&ctx, split)?;
                let several = by_length.len() > 1;
                if json && several {
                    // Pre-training phases: one object per sequence length.
                    let keyed: std::collections::BTreeMap<String, _> = by_length
                        .iter()
                        .map(|(len, s)| (format!("seq{len}"), s))
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&keyed)?);
                } else if json {
                    let stats = by_length.values().next().cloned().unwrap_or_default();
                    println!("{}", serde_json::to_string_pretty(&stats)?);
                } else {
                    for (len, stats) in &by_length {
                        if several {
                            println!("max_seq_length {len}");
                        }
                        print!("{stats}");
                    }
                }
            }
        }
        Ok(())
    })
}
