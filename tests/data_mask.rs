//! Masked-LM instances: exact behaviour of Google's `create_masked_lm_predictions` on small
//! fixed sequences, and determinism of the parallel shard masking.

use bertline::config::MaskConfig;
use bertline::mask::{
    create_instance_columns, create_masked_lm_predictions, create_training_instance,
    create_training_instances, MaskVocab, MASK_BLOCK_ROWS,
};
use bertline::pairs::seeded_rng;
use bertline::shard::PairColumns;
use bertline::SentencePair;

const CLS: u32 = 2;
const SEP: u32 = 3;
const MASK: u32 = 4;

/// 100 ids: 0..5 special (`[PAD] [UNK] [CLS] [SEP] [MASK]`), 5..50 words, 50..100 `##` pieces.
fn vocab() -> MaskVocab {
    let tokens: Vec<String> = (0..100)
        .map(|id| match id {
            0 => "[PAD]".to_string(),
            1 => "[UNK]".to_string(),
            2 => "[CLS]".to_string(),
            3 => "[SEP]".to_string(),
            4 => "[MASK]".to_string(),
            5..50 => format!("w{id}"),
            _ => format!("##p{id}"),
        })
        .collect();
    MaskVocab::from_tokens(&tokens).unwrap()
}

fn cfg(masked_lm_prob: f64, max_predictions_per_seq: usize, whole_word: bool) -> MaskConfig {
    MaskConfig {
        masked_lm_prob,
        max_predictions_per_seq,
        do_whole_word_mask: whole_word,
    }
}

/// `[CLS] a [SEP] b [SEP]` from word ids.
fn with_specials(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut tokens = vec![CLS];
    tokens.extend(a);
    tokens.push(SEP);
    tokens.extend(b);
    tokens.push(SEP);
    tokens
}

#[test]
fn vocab_finds_special_tokens_and_pieces() {
    let v = vocab();
    assert_eq!((v.vocab_size, v.cls, v.sep, v.mask), (100, CLS, SEP, MASK));
    assert!(!v.is_continuation[49] && v.is_continuation[50]);
    let err = MaskVocab::from_tokens(&["[CLS]", "[SEP]"]).unwrap_err();
    assert!(err.to_string().contains("[MASK]"), "{err}");
}

#[test]
fn instance_layout_is_cls_a_sep_b_sep() {
    let pair = SentencePair {
        tokens_a: vec![10, 11],
        tokens_b: vec![12, 13, 14],
        is_random_next: true,
    };
    let instance = create_training_instance(
        &pair,
        &cfg(0.15, 20, false),
        &vocab(),
        &mut seeded_rng(1, "t", &[]),
    );
    assert_eq!(instance.segment_ids, vec![0, 0, 0, 0, 1, 1, 1, 1]);
    assert!(instance.is_random_next);
    let original = [CLS, 10, 11, SEP, 12, 13, 14, SEP];
    // 8 tokens * 0.15 = 1.2 -> one prediction.
    assert_eq!(instance.masked_lm_positions.len(), 1);
    let position = instance.masked_lm_positions[0] as usize;
    assert!(![0, 3, 7].contains(&position));
    assert_eq!(instance.masked_lm_labels, vec![original[position]]);
    for (i, (&shown, &orig)) in instance.tokens.iter().zip(&original).enumerate() {
        if i != position {
            assert_eq!(shown, orig);
        }
    }
}

#[test]
fn num_to_predict_rounds_half_to_even_like_python() {
    let v = vocab();
    let count = |len: usize, prob: f64, max: usize| {
        let words: Vec<u32> = (0..len as u32 - 3).map(|i| 5 + i % 45).collect();
        let tokens = with_specials(&words[..1], &words[1..]);
        assert_eq!(tokens.len(), len);
        let (_, positions, _) = create_masked_lm_predictions(
            &tokens,
            prob,
            max,
            false,
            &v,
            &mut seeded_rng(9, "t", &[]),
        );
        positions.len()
    };
    assert_eq!(count(10, 0.15, 20), 2); // 1.5 -> 2
    assert_eq!(count(30, 0.15, 20), 4); // 4.5 -> 4, not 5
    assert_eq!(count(50, 0.15, 20), 8); // 7.5 -> 8
    assert_eq!(count(5, 0.15, 20), 1); // 0.75 -> 1, and never 0
    assert_eq!(count(128, 0.15, 20), 19); // 19.2 -> 19
    assert_eq!(count(128, 0.5, 20), 20); // capped by max_predictions_per_seq
}

#[test]
fn special_tokens_are_never_masked_and_labels_are_the_originals() {
    let v = vocab();
    for seed in 0..200 {
        let mut rng = seeded_rng(seed, "t", &[]);
        let words: Vec<u32> = (0..40).map(|i| 5 + (i * 7 + seed as u32) % 90).collect();
        let tokens = with_specials(&words[..15], &words[15..]);
        let (output, positions, labels) =
            create_masked_lm_predictions(&tokens, 0.15, 20, seed % 2 == 0, &v, &mut rng);
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "ascending: {positions:?}"
        );
        for (&p, &label) in positions.iter().zip(&labels) {
            assert!(tokens[p as usize] != CLS && tokens[p as usize] != SEP);
            assert_eq!(label, tokens[p as usize]);
        }
        for (i, (&shown, &orig)) in output.iter().zip(&tokens).enumerate() {
            if !positions.contains(&(i as u32)) {
                assert_eq!(shown, orig, "unmasked position {i} changed");
            }
        }
    }
}

#[test]
fn whole_word_masking_masks_all_pieces_of_a_word() {
    let v = vocab();
    // Words: [10 ##60 ##61] [11] [12 ##62] [13 ##63 ##64 ##65] [14] ...
    let a = [10, 60, 61, 11, 12, 62, 13, 63, 64, 65, 14, 15, 66];
    let b = [16, 67, 17, 18, 68, 69, 19, 20, 21, 70];
    let tokens = with_specials(&a, &b);
    let word_of = |i: usize| -> usize {
        // Index of the word start at or before i (skipping over [SEP]s is not needed here:
        // no piece follows a [SEP]).
        (0..=i)
            .rev()
            .find(|&j| !v.is_continuation[tokens[j] as usize])
            .unwrap()
    };
    let mut split_words = 0;
    for seed in 0..300 {
        let mut rng = seeded_rng(seed, "t", &[]);
        let (_, positions, _) = create_masked_lm_predictions(&tokens, 0.3, 20, true, &v, &mut rng);
        let masked: Vec<usize> = positions.iter().map(|&p| p as usize).collect();
        for &p in &masked {
            let start = word_of(p);
            let end = (start + 1..tokens.len())
                .find(|&j| !v.is_continuation[tokens[j] as usize])
                .unwrap_or(tokens.len());
            assert!(
                (start..end).all(|j| masked.contains(&j)),
                "seed {seed}: {masked:?}"
            );
        }
        // 26 tokens * 0.3 = 7.8 -> 8: whole words are skipped when they would overshoot.
        assert!(masked.len() <= 8);
        // Without whole-word masking, words do get split.
        let (_, positions, _) = create_masked_lm_predictions(
            &tokens,
            0.3,
            20,
            false,
            &v,
            &mut seeded_rng(seed, "t", &[]),
        );
        split_words += positions.iter().any(|&p| {
            let p = p as usize;
            v.is_continuation[tokens[p] as usize] && !positions.contains(&(word_of(p) as u32))
        }) as usize;
    }
    assert!(split_words > 100, "{split_words}");
}

#[test]
fn replacement_split_is_80_10_10() {
    // 20,000 sequences x 19 predictions = 380,000 draws: the standard error of a 0.8
    // fraction is sqrt(0.16 / 380000) = 0.0006 and of 0.1 is 0.0005, so +-0.004 is over 6
    // standard errors. A random draw lands on [MASK] or on the label 1% of the time each
    // (1 of 100 ids), so the expected fractions are 0.801 / 0.098 / 0.101.
    let v = vocab();
    let words: Vec<u32> = (0..125).map(|i| 5 + i % 45).collect();
    let tokens = with_specials(&words[..60], &words[60..]);
    let mut rng = seeded_rng(42, "t", &[]);
    let (mut mask, mut kept, mut random, mut total) = (0, 0, 0, 0);
    for _ in 0..20_000 {
        let (output, positions, labels) =
            create_masked_lm_predictions(&tokens, 0.15, 20, false, &v, &mut rng);
        for (&p, &label) in positions.iter().zip(&labels) {
            let shown = output[p as usize];
            total += 1;
            if shown == MASK {
                mask += 1;
            } else if shown == label {
                kept += 1;
            } else {
                random += 1;
                assert!(shown < 100);
            }
        }
    }
    let frac = |n: i32| n as f64 / total as f64;
    assert_eq!(total, 20_000 * 19);
    assert!((frac(mask) - 0.801).abs() < 0.004, "mask {}", frac(mask));
    assert!(
        (frac(random) - 0.098).abs() < 0.004,
        "random {}",
        frac(random)
    );
    assert!((frac(kept) - 0.101).abs() < 0.004, "kept {}", frac(kept));
}

#[test]
fn shard_masking_is_deterministic_across_thread_counts() {
    let pairs: Vec<SentencePair> = (0..(2 * MASK_BLOCK_ROWS + 77) as u32)
        .map(|i| SentencePair {
            tokens_a: (0..(5 + i % 50)).map(|t| 5 + (i + t) % 90).collect(),
            tokens_b: (0..(3 + i % 30)).map(|t| 5 + (i * 3 + t) % 90).collect(),
            is_random_next: i % 3 == 0,
        })
        .collect();
    let (v, c) = (vocab(), cfg(0.15, 20, false));
    let run = |threads: usize, seed: u64, shard: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| create_training_instances(&pairs, &c, &v, seed, shard))
    };
    let one = run(1, 12345, 0);
    assert_eq!(one, run(2, 12345, 0));
    assert_eq!(one.len(), pairs.len());
    for (instance, pair) in one.iter().zip(&pairs) {
        assert_eq!(instance.is_random_next, pair.is_random_next);
        assert_eq!(
            instance.tokens.len(),
            pair.tokens_a.len() + pair.tokens_b.len() + 3
        );
    }
    assert_ne!(one, run(1, 12346, 0), "other seed, same masks");
    assert_ne!(one, run(1, 12345, 1), "other shard, same masks");
}

/// The stage's columnar masking gives the record path's instances exactly (same blocks,
/// seeds and draws), with and without whole-word masking, on any thread count.
#[test]
fn columns_give_the_same_instances_as_records() {
    let pairs: Vec<SentencePair> = (0..(2 * MASK_BLOCK_ROWS + 300) as u32)
        .map(|i| SentencePair {
            tokens_a: (0..(1 + i % 60)).map(|t| 5 + (i * 7 + t) % 95).collect(),
            tokens_b: (0..(1 + i % 40)).map(|t| 5 + (i * 11 + t) % 95).collect(),
            is_random_next: i % 2 == 0,
        })
        .collect();
    let columns = PairColumns::from_pairs(&pairs);
    assert_eq!(columns.to_pairs(), pairs);
    let v = vocab();
    for whole_word in [false, true] {
        let c = cfg(0.15, 20, whole_word);
        let records = create_training_instances(&pairs, &c, &v, 99, 3);
        for threads in [1, 3] {
            let instances = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| create_instance_columns(&columns, &c, &v, 99, 3));
            assert_eq!(instances.len(), records.len());
            for (i, record) in records.iter().enumerate() {
                assert_eq!(
                    &instances.instance(i),
                    record,
                    "instance {i}, wwm {whole_word}"
                );
            }
        }
    }
}
