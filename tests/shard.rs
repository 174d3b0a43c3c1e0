//! Arrow shards: exact round trips, `u16` and `u32` ids, fixed-length padding derived on
//! reading, and one-line errors for truncated or foreign files.

use bertline::shard::{
    pad_instances, read_instances, read_pair_columns, read_pair_columns_into, read_pairs,
    write_instance_columns, write_instances, write_pairs, InstanceColumns, PairBatches,
    PairColumns, BATCH_ROWS,
};
use bertline::{SentencePair, TrainingInstance};

fn pairs() -> Vec<SentencePair> {
    vec![
        SentencePair {
            tokens_a: vec![10, 11, 12],
            tokens_b: vec![20],
            is_random_next: false,
        },
        SentencePair {
            tokens_a: vec![7],
            tokens_b: vec![8, 9, 4000000],
            is_random_next: true,
        },
    ]
}

#[test]
fn pairs_round_trip_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("p.arrow");
    let info = write_pairs(&path, &pairs()).unwrap();
    assert_eq!(info.rows, 2);
    assert_eq!(info.bytes, std::fs::metadata(&path).unwrap().len());
    assert_eq!(read_pairs(&path).unwrap(), pairs());
    // Same input, same bytes: hashes are reproducible.
    let again = write_pairs(&tmp.path().join("q.arrow"), &pairs()).unwrap();
    assert_eq!(again.blake3, info.blake3);
}

/// What a write reports is the file: its size and BLAKE3 hash. The encoder's buffers are
/// kept by the writing thread from shard to shard; a small shard written after a large one
/// is byte for byte the file a fresh thread writes.
#[test]
fn shard_info_is_the_file_and_reused_encoder_buffers_leave_no_trace() {
    let tmp = tempfile::tempdir().unwrap();
    let large: Vec<SentencePair> = (0..2000u32)
        .map(|i| SentencePair {
            tokens_a: (i..i + 60).collect(),
            tokens_b: (i..i + 40).rev().collect(),
            is_random_next: i % 3 == 0,
        })
        .collect();
    let (large_path, small_path) = (
        tmp.path().join("large.arrow"),
        tmp.path().join("small.arrow"),
    );
    let large_info = write_pairs(&large_path, &large).unwrap();
    let small_info = write_pairs(&small_path, &pairs()).unwrap();
    for (path, info) in [(&large_path, &large_info), (&small_path, &small_info)] {
        let (hash, size) = bertline::durable::hash_file(path).unwrap();
        assert_eq!((info.blake3.as_str(), info.bytes), (hash.as_str(), size));
    }
    let fresh_path = tmp.path().join("fresh.arrow");
    let fresh_info = std::thread::scope(|s| {
        s.spawn(|| write_pairs(&fresh_path, &pairs()).unwrap())
            .join()
            .unwrap()
    });
    assert_eq!(fresh_info, small_info);
    assert_eq!(
        std::fs::read(&fresh_path).unwrap(),
        std::fs::read(&small_path).unwrap()
    );
    assert_eq!(read_pairs(&large_path).unwrap(), large);
    assert_eq!(read_pairs(&small_path).unwrap(), pairs());
}

/// A pairs shard read into buffers that held a larger shard is exactly that shard, nothing
/// of the old one left; buffers with room enough are kept (the same memory, no new pages).
#[test]
fn a_shard_read_into_used_buffers_is_exactly_the_shard() {
    let tmp = tempfile::tempdir().unwrap();
    let large: Vec<SentencePair> = (0..500u32)
        .map(|i| SentencePair {
            tokens_a: vec![i; 30],
            tokens_b: vec![i + 1; 20],
            is_random_next: true,
        })
        .collect();
    let (large_path, small_path) = (
        tmp.path().join("large.arrow"),
        tmp.path().join("small.arrow"),
    );
    write_pairs(&large_path, &large).unwrap();
    write_pairs(&small_path, &pairs()).unwrap();
    let mut columns = PairColumns::default();
    read_pair_columns_into(&large_path, &mut columns).unwrap();
    assert_eq!(columns.to_pairs(), large);
    let memory = columns.tokens_a.values.as_ptr();
    read_pair_columns_into(&small_path, &mut columns).unwrap();
    assert_eq!(columns, read_pair_columns(&small_path).unwrap());
    assert_eq!(columns.to_pairs(), pairs());
    assert_eq!(columns.tokens_a.values.as_ptr(), memory);
    // A bad file leaves an error naming it, whatever the buffers held.
    std::fs::write(&small_path, b"not a shard").unwrap();
    let err = read_pair_columns_into(&small_path, &mut columns).unwrap_err();
    assert!(err.to_string().contains("small.arrow"), "{err}");
}

/// A pairs shard is written in record batches of `BATCH_ROWS` rows and read back batch by
/// batch: each batch is its rows, starting where the one before ended, into the same
/// buffers; a shard written in one batch (as before batches) is read in one; a file that is
/// not a pairs shard is refused at open, naming it.
#[test]
fn a_pairs_shard_is_read_batch_by_batch_exactly() {
    use polars::prelude::*;
    let tmp = tempfile::tempdir().unwrap();
    let rows = 2 * BATCH_ROWS + 1808;
    let all: Vec<SentencePair> = (0..rows as u32)
        .map(|i| SentencePair {
            tokens_a: (0..1 + i % 7).map(|j| i * 3 + j).collect(),
            tokens_b: vec![i % 65_000; 1 + (i % 5) as usize],
            is_random_next: i % 2 == 1,
        })
        .collect();
    let path = tmp.path().join("batched.arrow");
    write_pairs(&path, &all).unwrap();
    let mut batches = PairBatches::open(&path).unwrap();
    let mut columns = PairColumns::default();
    let mut seen = Vec::new();
    while let Some(first) = batches.next_into(&mut columns).unwrap() {
        assert_eq!(columns.to_pairs(), all[first..first + columns.len()]);
        seen.push((first, columns.len()));
    }
    assert_eq!(
        seen,
        [
            (0, BATCH_ROWS),
            (BATCH_ROWS, BATCH_ROWS),
            (2 * BATCH_ROWS, 1808)
        ]
    );
    assert_eq!(read_pairs(&path).unwrap(), all);

    // The same rows in one record batch, as polars' own writer puts them.
    let one = tmp.path().join("one-batch.arrow");
    let mut df = IpcReader::new(std::fs::File::open(&path).unwrap())
        .finish()
        .unwrap();
    df.rechunk_mut();
    IpcWriter::new(std::fs::File::create(&one).unwrap())
        .finish(&mut df)
        .unwrap();
    let mut batches = PairBatches::open(&one).unwrap();
    assert_eq!(batches.next_into(&mut columns).unwrap(), Some(0));
    assert_eq!(columns.to_pairs(), all);
    assert_eq!(batches.next_into(&mut columns).unwrap(), None);

    let instances = tmp.path().join("instances.arrow");
    write_instances(&instances, &[], 8, 2).unwrap();
    let err = PairBatches::open(&instances).err().unwrap().to_string();
    assert!(
        err.contains("instances.arrow") && err.contains("tokens_a"),
        "{err}"
    );
    std::fs::write(&one, b"not a shard").unwrap();
    let err = PairBatches::open(&one).err().unwrap().to_string();
    assert!(
        err.contains("one-batch.arrow") && !err.contains('\n'),
        "{err}"
    );
}

#[test]
fn instances_are_padded_to_fixed_length() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("i.arrow");
    let inst = TrainingInstance {
        tokens: vec![2, 40, 4, 3, 50, 3],
        segment_ids: vec![0, 0, 0, 0, 1, 1],
        masked_lm_positions: vec![2],
        masked_lm_labels: vec![41],
        is_random_next: true,
    };
    let info = write_instances(&path, std::slice::from_ref(&inst), 8, 3).unwrap();
    assert_eq!(info.rows, 1);
    let s = read_instances(&path).unwrap();
    assert_eq!((s.batch, s.seq_len, s.max_predictions), (1, 8, 3));
    assert_eq!(s.input_ids, vec![2, 40, 4, 3, 50, 3, 0, 0]);
    assert_eq!(s.token_type_ids, vec![0, 0, 0, 0, 1, 1, 0, 0]);
    assert_eq!(s.attention_mask, vec![1, 1, 1, 1, 1, 1, 0, 0]);
    assert_eq!(s.masked_lm_positions, vec![2, 0, 0]);
    assert_eq!(s.masked_lm_ids, vec![41, 0, 0]);
    assert_eq!(s.masked_lm_weights, vec![1.0, 0.0, 0.0]);
    assert_eq!(s.next_sentence_label, vec![1]);
    // The rows in memory (the held-out batches) are the rows on disk.
    assert_eq!(pad_instances(std::slice::from_ref(&inst), 8, 3).unwrap(), s);
}

#[test]
fn too_long_instance_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let inst = TrainingInstance {
        tokens: vec![1; 9],
        segment_ids: vec![0; 9],
        masked_lm_positions: vec![],
        masked_lm_labels: vec![],
        is_random_next: false,
    };
    let err = write_instances(&tmp.path().join("x.arrow"), &[inst], 8, 3).unwrap_err();
    assert!(err.to_string().contains("max_seq_length 8"), "{err}");
}

#[test]
fn truncated_shard_names_file_and_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("t.arrow");
    write_pairs(&path, &pairs()).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = read_pairs(&path).unwrap_err().to_string();
    assert!(
        err.contains("t.arrow") && err.contains("truncated") && !err.contains('\n'),
        "{err}"
    );
}

#[test]
fn pairs_shard_is_not_an_instance_shard() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("p.arrow");
    write_pairs(&path, &pairs()).unwrap();
    let err = read_instances(&path).unwrap_err().to_string();
    assert!(err.contains("missing column `input_ids`"), "{err}");
}

#[test]
fn no_temp_files_left_behind() {
    let tmp = tempfile::tempdir().unwrap();
    write_pairs(&tmp.path().join("p.arrow"), &pairs()).unwrap();
    let names: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["p.arrow".to_string()]);
}

/// A shard's identity names its file exactly as the stages always have, and survives the
/// manifest's JSON.
#[test]
fn shard_ids_name_files_and_round_trip_through_json() {
    use bertline::shard::{ShardId, Split};
    let pairs = ShardId {
        split: Split::Train,
        seq_len: None,
        file: 3,
        shard: 1,
        part: None,
    };
    assert_eq!(pairs.file_name(), "train-00003-0001.arrow");
    assert_eq!(pairs.with_part(2).file_name(), "train-00003-0001-02.arrow");
    let phased = ShardId {
        split: Split::Eval,
        seq_len: Some(128),
        file: 0,
        shard: 0,
        part: Some(0),
    };
    assert_eq!(phased.file_name(), "seq128-eval-00000-0000-00.arrow");
    for id in [pairs, phased] {
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<ShardId>(&json).unwrap(), id);
    }
    assert_eq!(
        serde_json::to_value(pairs).unwrap(),
        serde_json::json!({"split": "train", "file": 3, "shard": 1})
    );
}

/// Ids below 65,536 are stored as `u16` (half the bytes), larger ones as `u32`; both read
/// back exactly, the edges included.
#[test]
fn ids_are_narrowed_when_they_fit_and_read_back_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let row = |a: Vec<u32>, b: Vec<u32>| SentencePair {
        tokens_a: a,
        tokens_b: b,
        is_random_next: false,
    };
    let narrow: Vec<SentencePair> = (0..200)
        .map(|i| row(vec![0, 65535, i], vec![i * 300; 50]))
        .collect();
    let mut wide = narrow.clone();
    wide[7].tokens_b[3] = 65536;
    let narrow_info = write_pairs(&tmp.path().join("n.arrow"), &narrow).unwrap();
    let wide_info = write_pairs(&tmp.path().join("w.arrow"), &wide).unwrap();
    assert_eq!(read_pairs(&tmp.path().join("n.arrow")).unwrap(), narrow);
    assert_eq!(read_pairs(&tmp.path().join("w.arrow")).unwrap(), wide);
    // 200 rows x 53 ids: 2 bytes less per id, give or take the file's framing.
    let saved = wide_info.bytes as i64 - narrow_info.bytes as i64;
    assert!(
        (200 * 53 * 2 - 2048..=200 * 53 * 2 + 2048).contains(&saved),
        "{saved}"
    );
}

/// Segment ids, attention mask and weights are derived from the stored lengths; a row with
/// no B tokens and no predictions pads like the rest, and ids over `u16` stay exact.
#[test]
fn padding_is_derived_from_the_lengths_row_by_row() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("i.arrow");
    let rows = vec![
        TrainingInstance {
            tokens: vec![2, 4, 3, 5, 6, 3],
            segment_ids: vec![0, 0, 0, 1, 1, 1],
            masked_lm_positions: vec![1, 4],
            masked_lm_labels: vec![70000, 9],
            is_random_next: false,
        },
        TrainingInstance {
            tokens: vec![2, 7, 7, 7, 3],
            segment_ids: vec![0, 0, 0, 0, 0],
            masked_lm_positions: vec![],
            masked_lm_labels: vec![],
            is_random_next: true,
        },
    ];
    write_instances(&path, &rows, 7, 2).unwrap();
    let s = read_instances(&path).unwrap();
    assert_eq!(pad_instances(&rows, 7, 2).unwrap(), s);
    assert_eq!(
        s.token_type_ids,
        vec![0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(s.masked_lm_ids, vec![70000, 9, 0, 0]);
    assert_eq!(s.masked_lm_weights, vec![1.0, 1.0, 0.0, 0.0]);
    assert_eq!(s.next_sentence_label, vec![0, 1]);
}

/// An Arrow file with the right columns but not written by the mask stage (no shape in its
/// metadata) is refused with the stage to rerun.
#[test]
fn instance_shard_without_its_shape_is_refused() {
    use polars::prelude::*;
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("foreign.arrow");
    let list = |name: &str| {
        let mut b =
            ListPrimitiveChunkedBuilder::<UInt32Type>::new(name.into(), 1, 2, DataType::UInt32);
        b.append_slice(&[1, 2]);
        b.finish().into_series().into_column()
    };
    let df = DataFrame::new(
        1,
        vec![
            list("input_ids"),
            Series::new("segment_b_start".into(), vec![1u32]).into_column(),
            list("masked_lm_positions"),
            list("masked_lm_ids"),
            Series::new("next_sentence_label".into(), vec![0u8]).into_column(),
        ],
    )
    .unwrap();
    bertline::shard::write_frame(&path, df, &[]).unwrap();
    let err = read_instances(&path).unwrap_err().to_string();
    assert!(
        err.contains("foreign.arrow")
            && err.contains("rerun `just stage mask`")
            && !err.contains('\n'),
        "{err}"
    );
}

fn instance(tokens: &[u32], b: usize, positions: &[u32], random: bool) -> TrainingInstance {
    TrainingInstance {
        tokens: tokens.to_vec(),
        segment_ids: (0..tokens.len()).map(|t| u8::from(t >= b)).collect(),
        masked_lm_positions: positions.to_vec(),
        masked_lm_labels: positions.iter().map(|&p| 100 + p).collect(),
        is_random_next: random,
    }
}

#[test]
fn instance_blocks_are_written_as_the_shard_of_their_rows_joined() {
    let tmp = tempfile::tempdir().unwrap();
    let all = vec![
        instance(&[2, 40, 3, 50, 3], 3, &[1], false),
        instance(&[2, 41, 42, 3, 51, 3], 4, &[1, 4], true),
        instance(&[2, 43, 3, 52, 53, 54, 3], 3, &[], false),
        instance(&[2, 44, 3, 55, 3], 3, &[3], true),
        instance(&[2, 45, 46, 47, 3, 56, 3], 5, &[2, 3, 5], false),
    ];
    let block = |rows: &[TrainingInstance]| InstanceColumns::from_instances(rows).unwrap();
    let joined = tmp.path().join("joined.arrow");
    let in_blocks = tmp.path().join("blocks.arrow");
    write_instances(&joined, &all, 8, 3).unwrap();
    // Blocks of 2, 0 and 3 rows, written without joining them first (the `mask` stage).
    let blocks = [block(&all[..2]), block(&[]), block(&all[2..])];
    let info = write_instance_columns(&in_blocks, &blocks, 8, 3).unwrap();
    assert_eq!(info.rows, 5);
    assert_eq!(
        std::fs::read(&in_blocks).unwrap(),
        std::fs::read(&joined).unwrap()
    );
    assert_eq!(
        read_instances(&in_blocks).unwrap(),
        pad_instances(&all, 8, 3).unwrap()
    );
    // A row that does not fit is named by its index in the shard, not in its block.
    let mut long = all.clone();
    long[3] = instance(&[1; 9], 9, &[], false);
    let blocks = [block(&long[..2]), block(&long[2..])];
    let err = write_instance_columns(&tmp.path().join("x.arrow"), &blocks, 8, 3).unwrap_err();
    assert!(err.to_string().contains("instance 3 has 9 tokens"), "{err}");
}
