//! What the data stages ask of the allocator. Every stage binary allocates with mimalloc
//! (its `#[global_allocator]`), which keeps memory freed within the last second (its purge
//! delay) for reuse before giving it back to the OS. A stage that frees a shard's buffers
//! and allocates the next one's many times a second can hold on to several shards' worth
//! that way: `mask`'s peak RSS grew by 40-50 MB over a long run. [`release_free_memory`]
//! gives it back at once; the stage calls it every two full shards, where the cost (10-15
//! ms: the next shard faults the pages in again) is small against the work between two
//! calls.

/// Returns the calling thread's free mimalloc memory, and memory awaiting its purge delay,
/// to the OS (`mi_collect(force)`). Harmless where mimalloc is not the global allocator
/// (its own heaps are then empty).
pub fn release_free_memory() {
    // SAFETY: mi_collect has no preconditions; it only frees memory no live block uses.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
