//! What the data stages ask of the allocator. Every stage binary allocates with mimalloc
//! (its `#[global_allocator]`), which keeps memory freed within the last second (its purge
//! delay) for reuse before giving it back to the OS. A stage that frees a shard's buffers
//! and allocates the next one's many times a second can hold on to several shards' worth
//! that way: `mask`'s peak RSS grew by 40-50 MB over a long run, `pairs`' by 25-35 MB on one
//! large file. The largest buffers are now recycled instead ([`crate::workers::Recycler`]);
//! [`release_every`] gives what is still freed back every so much work on a thread (two
//! full shards in mask, 16 MiB of text in pairs), where the cost (10-15 ms: the next unit
//! faults the pages in again) is small against the work between two calls.

/// Returns the calling thread's free mimalloc memory, and memory awaiting its purge delay,
/// to the OS (`mi_collect(force)`). Harmless where mimalloc is not the global allocator
/// (its own heaps are then empty).
pub fn release_free_memory() {
    // SAFETY: mi_collect has no preconditions; it only frees memory no live block uses.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// Counts `work` (pairs masked, bytes of text paired: the caller's unit) done on this thread
/// and calls [`release_free_memory`] each time the count since the last call reaches
/// `every`.
pub fn release_every(work: usize, every: usize) {
    thread_local! {
        /// Work done on this thread since its last release.
        static SINCE_RELEASE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }
    SINCE_RELEASE.with(|done| {
        done.set(done.get() + work);
        if done.get() >= every {
            done.set(0);
            release_free_memory();
        }
    });
}
