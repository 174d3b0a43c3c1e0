//! Bounded parallelism for the data stages' outer loops: [`map_bounded`] runs one item per
//! thread at a time on a few plain threads.
//!
//! Why not rayon's `par_iter` over files or shards: every shard read and write runs on
//! polars' own thread pool, and a rayon worker that waits for another pool does not sleep,
//! it runs other queued jobs of its own pool meanwhile, on top of its stack. With `par_iter`
//! over the input files, a worker waiting for one file's shards to be written started the
//! next file, and the next, each holding its pairs in a suspended stack frame until the
//! writes under it returned: peak RSS grew with the number of files (0.8 GB for the 64
//! Wikipedia files of `../shared/datasets`) and fell only as the stack unwound. A plain
//! thread blocks instead, so at most one item per thread is in flight. The work inside an
//! item (tokenizing, masking blocks, polars' encoding) still runs on the thread pools.
//!
//! Each item (a block of text, a shard) needs memory of its own while it is worked on, so a
//! stage's peak RSS grows with the number of items in flight: [`items_in_flight`] caps it
//! by the run's memory budget (`run.data_memory_mb`), whatever the number of cores.
//!
//! [`Recycler`] hands a stage's large per-shard buffers from one item to the next.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::error::Result;

/// How many items of `item_bytes` of working memory each a stage works on at once: one per
/// thread of the rayon pool, fewer when they would hold more than `budget_mb` megabytes
/// (10^6 bytes) in all; at least one.
pub fn items_in_flight(budget_mb: usize, item_bytes: usize) -> usize {
    let fit = budget_mb.saturating_mul(1_000_000) / item_bytes.max(1);
    fit.clamp(1, rayon::current_num_threads().max(1))
}

/// `f(index, item)` for every item, on `in_flight` plain threads (at least one, at most one
/// per item), each taking the next item when it finishes one; the results in item order.
/// After an error no new item starts, and the error of the lowest index is returned.
pub fn map_bounded<T, R, F>(items: &[T], in_flight: usize, f: F) -> Result<Vec<R>>
where
    T: Sync,
    R: Send,
    F: Fn(usize, &T) -> Result<R> + Sync,
{
    let threads = in_flight.clamp(1, items.len().max(1));
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let slots: Vec<Mutex<Option<Result<R>>>> = items.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                while !failed.load(Ordering::Relaxed) {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(index) else {
                        break;
                    };
                    let result = f(index, item);
                    if result.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    *slots[index].lock().expect("result slot") = Some(result);
                }
            });
        }
    });
    let results: Vec<Option<Result<R>>> = slots
        .into_iter()
        .map(|slot| slot.into_inner().expect("result slot"))
        .collect();
    if let Some(index) = results.iter().position(|r| matches!(r, Some(Err(_)))) {
        let Some(Some(Err(e))) = results.into_iter().nth(index) else {
            unreachable!("an error at {index}")
        };
        return Err(e);
    }
    Ok(results
        .into_iter()
        .map(|r| match r {
            Some(Ok(value)) => value,
            _ => unreachable!("every item ran when none failed"),
        })
        .collect())
}

/// Buffers handed back after use and taken again by whichever thread needs one next: the
/// data stages' per-shard buffers (megabytes each), so that memory already paged in is
/// reused. Freed instead, it was often not handed out again for the next shard (a page
/// fault profile showed the shard reads and the masked blocks, which rayon's threads
/// allocate and the stage's own free, faulting fresh pages shard after shard), and every
/// first touch of a fresh page costs a page fault (about 4 us on the benchmark machine,
/// docs/benchmarks.md).
/// Holds at most as many buffers as were in use at once.
pub struct Recycler<T> {
    free: Mutex<Vec<T>>,
}

impl<T> Default for Recycler<T> {
    fn default() -> Self {
        Recycler {
            free: Mutex::new(Vec::new()),
        }
    }
}

impl<T: Default> Recycler<T> {
    /// A buffer handed back earlier (as it was left: the caller clears it), or a new one.
    pub fn take(&self) -> T {
        self.free
            .lock()
            .expect("recycler lock")
            .pop()
            .unwrap_or_default()
    }

    /// Hands `buffer` back for a later [`Recycler::take`].
    pub fn give_back(&self, buffer: T) {
        self.free.lock().expect("recycler lock").push(buffer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    /// A buffer given back is the one taken next, its memory untouched; an empty recycler
    /// makes a new one.
    #[test]
    fn a_given_back_buffer_is_taken_again_with_its_memory() {
        let recycler = Recycler::<Vec<u32>>::default();
        let mut first = recycler.take();
        assert_eq!(first.capacity(), 0);
        first.extend(0..1000);
        let address = first.as_ptr();
        recycler.give_back(first);
        let again = recycler.take();
        assert_eq!((again.as_ptr(), again.len()), (address, 1000));
        assert_eq!(recycler.take().capacity(), 0);
    }

    #[test]
    fn results_come_back_in_item_order() {
        let items: Vec<u64> = (0..100).collect();
        let out = map_bounded(&items, 4, |i, &x| Ok((i as u64, x * x))).unwrap();
        assert_eq!(out, (0..100).map(|x| (x, x * x)).collect::<Vec<_>>());
        assert!(map_bounded(&[] as &[u8], 4, |_, _| Ok(()))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn the_lowest_failing_index_is_returned_and_no_new_item_starts_after_it() {
        let items: Vec<usize> = (0..1000).collect();
        let started = AtomicUsize::new(0);
        let err = map_bounded(&items, 4, |i, _| {
            started.fetch_add(1, Ordering::Relaxed);
            if i == 3 || i == 7 {
                Err(Error::Stage(format!("item {i}")))
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        assert!(err.to_string().contains("item 3"), "{err}");
        assert!(started.load(Ordering::Relaxed) < 1000);
    }

    /// Exactly `in_flight` items are worked on at once (the items sleep, so every thread
    /// gets one), never more.
    #[test]
    fn at_most_in_flight_items_are_worked_on_at_once() {
        let items = vec![(); 48];
        for in_flight in [1, 3, 6] {
            let (now, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
            map_bounded(&items, in_flight, |_, _| {
                most.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                std::thread::sleep(std::time::Duration::from_millis(10));
                now.fetch_sub(1, Ordering::SeqCst);
                Ok(())
            })
            .unwrap();
            assert_eq!(most.load(Ordering::SeqCst), in_flight);
        }
    }

    /// The budget caps the items in flight, never below one nor above the pool's threads.
    #[test]
    fn the_memory_budget_caps_the_items_in_flight() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(16)
            .build()
            .unwrap();
        pool.install(|| {
            assert_eq!(items_in_flight(256, 16_000_000), 16);
            assert_eq!(items_in_flight(256, 32_000_000), 8);
            assert_eq!(items_in_flight(256, 33_000_000), 7);
            assert_eq!(items_in_flight(10, 32_000_000), 1);
            assert_eq!(items_in_flight(usize::MAX, 0), 16);
        });
    }
}
