//! `finetune`: GLUE / SQuAD fine-tuning (BERT §4) of this run's pre-trained checkpoint, an
//! HF-format BERT directory, or random weights (checkpoint -> dev scores, dev predictions,
//! GLUE test predictions). Prints the stage directory on stdout.

use std::process::ExitCode;

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Fine-tune on the tasks of `finetune.tasks` and report dev metrics over seeds.
#[derive(Debug, Parser)]
#[command(name = "bertline-finetune", version)]
struct Args {
    #[command(flatten)]
    common: bertline_cli::CommonArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    bertline_cli::stage_main("finetune", &args.common, bertline::finetune::run)
}
