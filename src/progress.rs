//! The progress callback: core loops report through [`Progress`], and each stage binary
//! draws it as a bar. The library itself never draws anything.

/// Receives progress from a long loop. All methods may be called from several threads.
pub trait Progress: Send + Sync {
    /// A phase named `what` starts with `total` units (0 if unknown).
    fn start(&self, what: &str, total: u64);
    /// `n` more units are done.
    fn advance(&self, n: u64);
    /// A short status line next to the bar (loss, rate...).
    fn message(&self, _msg: &str) {}
    /// The phase is over.
    fn finish(&self);
}

/// A [`Progress`] that ignores everything (tests, library callers).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _what: &str, _total: u64) {}
    fn advance(&self, _n: u64) {}
    fn finish(&self) {}
}
