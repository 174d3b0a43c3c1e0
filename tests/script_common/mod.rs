//! Shared by the tests of the repository's Python scripts (table printers, the chaos
//! comparison, the GPU step sizing): runs `python3 scripts/NAME ARGS...` from the repository.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A path under the repository root.
pub fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

/// `python3 scripts/SCRIPT ARGS...`; `None` (the test skips, saying so) without python3.
pub fn run_script<I, S>(script: &str, args: I) -> Option<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    match Command::new("python3")
        .arg(repo("scripts").join(script))
        .args(args)
        .output()
    {
        Ok(o) => Some(o),
        Err(e) => {
            eprintln!("skipped: python3 not runnable ({e})");
            None
        }
    }
}
