//! `bertline`: run-level commands that belong to no stage: `status` (fresh / stale /
//! missing per stage, and why) and `clean` (delete a run directory, after asking).

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Context;
use bertline::stage::{Freshness, Stage};
use clap::{Parser, Subcommand};

/// Run-level commands of the bertline pipeline.
#[derive(Debug, Parser)]
#[command(name = "bertline", version)]
struct Args {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    common: bertline_cli::CommonArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show every stage as fresh, stale or missing, and why.
    Status,
    /// Delete the run directory of the profile (asks first unless --yes).
    Clean {
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    bertline_cli::main(args.common.verbose, || match args.command {
        Command::Status => status(&args.common),
        Command::Clean { yes } => clean(&args.common, yes),
    })
}

fn status(common: &bertline_cli::CommonArgs) -> anyhow::Result<()> {
    let ctx = common.open()?;
    println!(
        "run {} (profile {})",
        ctx.run_dir().display(),
        ctx.loaded.profile
    );
    println!(
        "{:<9} {:<8} {:>9} {:>12} {:>8}  why",
        "stage", "state", "artifacts", "rows", "seconds"
    );
    for stage in Stage::ALL {
        let fresh = ctx.freshness(stage)?;
        let record = ctx.manifest.stage_summary(stage.name())?;
        let (state, why) = match &fresh {
            Freshness::Fresh => ("fresh", String::new()),
            Freshness::Stale(w) => ("stale", w.clone()),
            Freshness::Missing(w) => ("missing", w.clone()),
        };
        let (n, rows, secs) = match &record {
            Some(r) => {
                // Read one at a time: a stage of a large corpus has hundreds of thousands.
                let mut rows = 0;
                ctx.manifest.each_artifact(stage.name(), |a| {
                    rows += a.rows;
                    Ok(std::ops::ControlFlow::Continue(()))
                })?;
                (
                    r.artifact_count.to_string(),
                    rows.to_string(),
                    format!("{:.1}", r.duration_s()),
                )
            }
            None => ("-".into(), "-".into(), "-".into()),
        };
        println!(
            "{:<9} {:<8} {:>9} {:>12} {:>8}  {}",
            stage.name(),
            state,
            n,
            rows,
            secs,
            why
        );
    }
    Ok(())
}

fn clean(common: &bertline_cli::CommonArgs, yes: bool) -> anyhow::Result<()> {
    let loaded = bertline::config::load_config(&common.config, &common.profile)?;
    let dir = loaded.run_dir();
    if !dir.exists() {
        println!("nothing to clean: {} does not exist", dir.display());
        return Ok(());
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            anyhow::bail!(
                "refusing to delete {} without a terminal to ask on; pass --yes",
                dir.display()
            );
        }
        print!("delete {} and everything in it? [y/N] ", dir.display());
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            println!("kept {}", dir.display());
            return Ok(());
        }
    }
    // The run lock makes sure no stage is running on it; it is held while the files go.
    // (Not the manifest itself: a manifest a killed process left unreadable is deleted too.)
    let lock = bertline::manifest::RunLock::acquire(&dir)?;
    std::fs::remove_dir_all(&dir).with_context(|| format!("deleting {}", dir.display()))?;
    drop(lock);
    println!("deleted {}", dir.display());
    Ok(())
}
