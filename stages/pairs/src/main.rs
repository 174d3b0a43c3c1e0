//! `pairs`: next-sentence pairs for pre-training (corpus text + vocab -> pairs shards), the
//! first half of Google's `create_pretraining_data.py`.

use std::process::ExitCode;

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Cut the corpus into sentence pairs, half with a random next sentence (BERT §3.1, task #2).
#[derive(Debug, Parser)]
#[command(name = "bertline-pairs", version)]
struct Args {
    #[command(flatten)]
    common: bertline_cli::CommonArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    bertline_cli::stage_main("pairs", &args.common, bertline::pairs::run)
}
