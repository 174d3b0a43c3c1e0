//! `release_free_memory` gives mimalloc's freed memory back to the OS at once, under the
//! stages' own global allocator: the resident set falls by what was freed, where without it
//! mimalloc keeps the pages for its purge delay (a second); `release_every` does it once a
//! thread has done the work it is given.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The tests measure the whole process's resident set: one at a time.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Resident set of this process, in MB (Linux `/proc/self/statm`, in pages of 4 KiB).
fn resident_mb() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: f64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096.0 / 1e6
}

#[test]
#[cfg(target_os = "linux")]
fn freed_shard_sized_buffers_leave_the_resident_set_once_released() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let before = resident_mb();
    // 96 MB in buffers the size of a pairs shard's id lists, every page touched, then freed.
    let buffers: Vec<Vec<u32>> = (0..12).map(|i| vec![i as u32 + 1; 2_000_000]).collect();
    assert!(buffers.iter().all(|b| b[b.len() - 1] != 0));
    let held = resident_mb();
    assert!(held - before > 80.0, "{before:.0} MB -> {held:.0} MB");
    drop(buffers);
    let kept = resident_mb();
    bertline::allocator::release_free_memory();
    let released = resident_mb();
    assert!(
        kept - released > 40.0 && released - before < 40.0,
        "resident {before:.0} MB before, {held:.0} MB holding, {kept:.0} MB freed, {released:.0} MB released"
    );
}

/// `release_every` releases only once the work counted on the thread reaches its interval:
/// below it the freed pages stay resident, at it they go.
#[test]
#[cfg(target_os = "linux")]
fn freed_memory_is_released_once_the_work_since_the_last_release_reaches_the_interval() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    std::thread::spawn(|| {
        let before = resident_mb();
        let buffers: Vec<Vec<u32>> = (0..12).map(|i| vec![i as u32 + 1; 2_000_000]).collect();
        assert!(buffers.iter().all(|b| b[b.len() - 1] != 0));
        drop(buffers);
        bertline::allocator::release_every(2, 5);
        bertline::allocator::release_every(2, 5);
        let kept = resident_mb();
        assert!(kept - before > 80.0, "{before:.0} MB -> {kept:.0} MB");
        bertline::allocator::release_every(1, 5);
        let released = resident_mb();
        assert!(
            kept - released > 40.0,
            "{before:.0} MB before, {kept:.0} MB after 4 of 5, {released:.0} MB after 5"
        );
    })
    .join()
    .unwrap();
}
