//! What every bertline stage binary shares: the common flags, logging to stderr through
//! `tracing`, progress bars (indicatif) behind the library's `Progress` trait, and the
//! `main` wrapper that prints an error on one line and exits non-zero.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::Duration;

use bertline::progress::Progress;
use bertline::stage::{Outcome, StageCtx, StageOptions};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing_subscriber::EnvFilter;

/// Flags every stage takes.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// The pipeline configuration.
    #[arg(
        long,
        global = true,
        default_value = "pipeline.toml",
        env = "BERTLINE_CONFIG"
    )]
    pub config: PathBuf,
    /// Profile of pipeline.toml to use.
    #[arg(
        long,
        short,
        global = true,
        default_value = "default",
        env = "BERTLINE_PROFILE"
    )]
    pub profile: String,
    /// Rerun even if the stage is fresh.
    #[arg(long, global = true)]
    pub force: bool,
    /// Verify artifact hashes (not only sizes) when deciding freshness.
    #[arg(long, global = true)]
    pub verify: bool,
    /// Never draw progress bars.
    #[arg(long, global = true)]
    pub no_progress: bool,
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

impl CommonArgs {
    /// Opens the stage context (config profile + locked manifest).
    pub fn open(&self) -> anyhow::Result<StageCtx> {
        Ok(StageCtx::open(StageOptions {
            config: self.config.clone(),
            profile: self.profile.clone(),
            force: self.force,
            verify: self.verify,
        })?)
    }

    /// A progress reporter: bars on a terminal, periodic log lines otherwise.
    pub fn progress(&self) -> Bar {
        let draw = !self.no_progress && self.verbose == 0 && std::io::stderr().is_terminal();
        Bar::new(draw)
    }
}

/// Sets up logging and runs `body`; prints its error as one line and exits 2 on failure.
///
/// The process ends with `_exit` once `body` has returned and stdout and stderr are flushed:
/// by then every stage has closed its manifest (the record is committed and flushed before
/// `body` returns), and what is left is returning memory, which the kernel does at exit
/// anyway. The normal exit path first has the allocator hand every freed page back to the
/// system one by one (mimalloc's exit-time collect, meant for a library unloaded from a
/// longer-lived process): 10-25 ms of a data stage's wall time (docs/benchmarks.md).
pub fn main<F>(verbose: u8, body: F) -> ExitCode
where
    F: FnOnce() -> anyhow::Result<()>,
{
    die_quietly_on_closed_pipe();
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
    let code = match body() {
        Ok(()) => 0,
        Err(err) => {
            eprintln!("error: {}", one_line(&err));
            2
        }
    };
    exit_now(code)
}

/// Flushes stdout and stderr and ends the process with `code`, without running exit
/// handlers or destructors (see [`main`]). A failed flush of stdout (a full disk behind a
/// redirect) is an error: exit 2 with its message.
fn exit_now(code: i32) -> ! {
    use std::io::Write;
    let code = match std::io::stdout().flush() {
        Ok(()) => code,
        Err(e) => {
            eprintln!("error: cannot write to stdout: {e}");
            2
        }
    };
    let _ = std::io::stderr().flush();
    // SAFETY: `_exit` ends the process; nothing of this process runs after it, so no Rust
    // invariant can be observed broken.
    unsafe { libc::_exit(code) }
}

/// The error and its causes on one line, each cause once: the library's I/O errors already
/// print their OS error after the path, so a cause whose text is in the line is skipped.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut line = err.to_string();
    for cause in err.chain().skip(1) {
        let text = cause.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
    }
    line.replace('\n', " ")
}

/// `bertline status | head` closes the pipe early: end like `cat` does (SIGPIPE's default
/// action) instead of panicking in `println!`, which is what Rust's ignored SIGPIPE gives.
fn die_quietly_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: restores a signal's default disposition before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Logs what a stage did and prints its directory on stdout.
pub fn report_outcome(ctx: &StageCtx, stage: &str, outcome: &Outcome) {
    let record = outcome.record();
    if outcome.skipped() {
        tracing::info!(
            stage,
            "fresh: inputs and config unchanged, skipping (use --force to rerun)"
        );
    } else {
        tracing::info!(
            stage,
            artifacts = record.artifact_count,
            seconds = format!("{:.1}", record.duration_s()),
            "done"
        );
    }
    println!("{}", ctx.run_dir().join(stage).display());
}

/// An indicatif bar implementing [`Progress`]; when hidden (no terminal, `-v`,
/// `--no-progress`) it logs every 10% instead, so CI logs still show progress.
pub struct Bar {
    bar: ProgressBar,
    draw: bool,
    state: Mutex<(String, u64, u64, u64)>,
}

impl Bar {
    fn new(draw: bool) -> Bar {
        let bar = ProgressBar::with_draw_target(
            None,
            if draw {
                ProgressDrawTarget::stderr()
            } else {
                ProgressDrawTarget::hidden()
            },
        );
        Bar {
            bar,
            draw,
            state: Mutex::new((String::new(), 0, 0, 0)),
        }
    }
}

impl Progress for Bar {
    fn start(&self, what: &str, total: u64) {
        self.bar.reset();
        self.bar.set_length(total);
        self.bar.set_position(0);
        let style = if total > 0 {
            ProgressStyle::with_template(
                "{prefix:>12} [{elapsed_precise}] {wide_bar} {pos}/{len} {per_sec} eta {eta} {msg}",
            )
        } else {
            ProgressStyle::with_template("{prefix:>12} [{elapsed_precise}] {spinner} {pos} {msg}")
        };
        self.bar.set_style(style.expect("valid template"));
        self.bar.set_prefix(what.to_string());
        if self.draw {
            self.bar.enable_steady_tick(Duration::from_millis(200));
        }
        *self.state.lock().expect("progress lock") = (what.to_string(), total, 0, 0);
        tracing::debug!(what, total, "started");
    }

    fn advance(&self, n: u64) {
        self.bar.inc(n);
        if !self.draw {
            let mut s = self.state.lock().expect("progress lock");
            s.2 += n;
            if let Some(tenth) = (s.2 * 10).checked_div(s.1) {
                if tenth > s.3 {
                    s.3 = tenth;
                    tracing::info!("{}: {}/{} ({}%)", s.0, s.2, s.1, tenth * 10);
                }
            }
        }
    }

    fn message(&self, msg: &str) {
        self.bar.set_message(msg.to_string());
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
        let s = self.state.lock().expect("progress lock");
        tracing::debug!(what = s.0.as_str(), "finished");
    }
}

/// The whole `main` of a stage with no flags of its own: open the context, run the stage
/// with a progress bar, log what it did and print its directory.
pub fn stage_main<F>(stage: &str, common: &CommonArgs, run: F) -> ExitCode
where
    F: FnOnce(&StageCtx, &dyn Progress) -> bertline::Result<Outcome>,
{
    main(common.verbose, || {
        let ctx = common.open()?;
        let outcome = run(&ctx, &common.progress())?;
        report_outcome(&ctx, stage, &outcome);
        Ok(())
    })
}
