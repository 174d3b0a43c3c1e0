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
    bertline_cli::main(args.common.verbose, || {
        let ctx = args.common.open()?;
        let outcome = bertline::pairs::run_pairs(&ctx, &args.common.progress())?;
        bertline_cli::report_outcome(&ctx, "pairs", &outcome);
        Ok(())
    })
}
