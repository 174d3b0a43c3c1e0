//! `vocab`: trains the WordPiece vocabulary on the corpus (raw text -> vocab.txt,
//! tokenizer.json).

use std::process::ExitCode;

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Train the WordPiece vocabulary (BERT §3, WordPiece embeddings).
#[derive(Debug, Parser)]
#[command(name = "bertline-vocab", version)]
struct Args {
    #[command(flatten)]
    common: bertline_cli::CommonArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    bertline_cli::stage_main("vocab", &args.common, bertline::tokenize::run_vocab)
}
