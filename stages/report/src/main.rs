//! `report`: the benchmark report (manifest + the artifacts it names -> report.md and a
//! self-contained report.html). Prints the path of report.html and the headline numbers.

use std::process::ExitCode;

use bertline::report::{glue_table, headline, markdown_table};
use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Write the run's report: lineage, data statistics, pre-training curves, GLUE and SQuAD
/// beside the published BERT numbers, the machine.
#[derive(Debug, Parser)]
#[command(name = "bertline-report", version)]
struct Args {
    #[command(flatten)]
    common: bertline_cli::CommonArgs,
    /// Also print the fine-tuning table (this run beside the published scores).
    #[arg(long)]
    summary: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    bertline_cli::main(args.common.verbose, || {
        let ctx = args.common.open()?;
        let report = bertline::report::run(&ctx)?;
        let record = report.outcome.record();
        if report.outcome.skipped() {
            tracing::info!(
                "fresh: no artifact changed since the last report (use --force to rerun)"
            );
        } else {
            tracing::info!(
                artifacts = report.data.artifact_count(),
                seconds = format!("{:.1}", record.duration_s()),
                "done"
            );
        }
        for warning in &report.data.warnings {
            tracing::warn!("{warning}");
        }
        println!("{}", report.files.html.display());
        let lines = headline(&report.data);
        let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (name, value) in lines {
            println!("{name:<width$}  {value}");
        }
        if args.summary {
            print!(
                "{}",
                markdown_table(&glue_table(report.data.finetune.as_deref()))
            );
        }
        Ok(())
    })
}
