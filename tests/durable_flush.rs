//! The background flush of unsynced shard writes under a small open-file limit: a stage that
//! writes many small shards must not hold one open descriptor per shard the disk has not yet
//! synced. Its own test binary, because it lowers the process's `RLIMIT_NOFILE`. Whether the
//! flusher falls that far behind depends on the disk: with an unbounded queue this test
//! failed ("Too many open files") in 1 of 3 runs on the development VM.

use bertline::durable::{sync_tree, write_bytes_unsynced, FLUSH_QUEUE};

#[test]
fn many_small_unsynced_files_under_a_low_open_file_limit() {
    let dir = tempfile::tempdir().unwrap();
    // Room for the queue, the test harness and a writer, and far fewer than the files.
    let limit = (FLUSH_QUEUE + 32) as libc::rlim_t;
    let files = 40 * FLUSH_QUEUE;
    // SAFETY: plain get/setrlimit calls on a zeroed struct of the right type.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut r), 0);
        r.rlim_cur = r.rlim_cur.min(limit);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &r), 0);
    }
    // Four writers of 16 KiB files, faster than one flusher's fdatasync of each.
    let content = |i: usize| -> Vec<u8> { (0..16 << 10).map(|b| (b ^ i) as u8).collect() };
    std::thread::scope(|s| {
        for writer in 0..4 {
            let (dir, content) = (dir.path(), &content);
            s.spawn(move || {
                for i in (writer..files).step_by(4) {
                    let path = dir.join(format!("shards/shard-{i:05}.bin"));
                    write_bytes_unsynced(&path, &content(i)).unwrap();
                }
            });
        }
    });
    sync_tree(dir.path()).unwrap();
    for i in [0, files / 2, files - 1] {
        let path = dir.path().join(format!("shards/shard-{i:05}.bin"));
        assert_eq!(std::fs::read(path).unwrap(), content(i));
    }
    let written = std::fs::read_dir(dir.path().join("shards"))
        .unwrap()
        .count();
    assert_eq!(written, files, "no temp file left, every file in place");
}
