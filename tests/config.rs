//! pipeline.toml: profiles, overlays, and one-line errors naming the key and line.

use bertline::config::parse_config;

const SHIPPED: &str = include_str!("../pipeline.toml");

#[test]
fn shipped_profiles_parse() {
    let default = parse_config(SHIPPED, "default").unwrap();
    assert_eq!(default.pairs.max_seq_length, 128);
    assert_eq!(default.mask.max_predictions_per_seq, 20);
    assert_eq!(default.model.vocab_size, default.vocab.vocab_size);
    let tiny = parse_config(SHIPPED, "tiny").unwrap();
    assert_eq!(tiny.model.hidden_size, 32);
    // Overlay changes only the keys it names.
    assert_eq!(tiny.mask.masked_lm_prob, default.mask.masked_lm_prob);
    let base = parse_config(SHIPPED, "base").unwrap();
    assert_eq!(base.model.num_hidden_layers, 12);
    assert_eq!(base.model.intermediate_size, 3072);
}

#[test]
fn unknown_key_names_key_and_line() {
    let text = SHIPPED.replace("masked_lm_prob = 0.15", "masked_lm_prb = 0.15");
    let err = parse_config(&text, "default").unwrap_err();
    let line = text
        .lines()
        .position(|l| l.starts_with("masked_lm_prb"))
        .unwrap()
        + 1;
    assert!(err.contains("masked_lm_prb"), "{err}");
    assert!(err.contains(&format!("line {line}")), "{err}");
    assert!(!err.contains('\n'));
}

#[test]
fn unknown_key_in_profile_names_line() {
    let text = SHIPPED.replace(
        "[profiles.tiny.model]\n",
        "[profiles.tiny.model]\nhiden_size = 3\n",
    );
    let err = parse_config(&text, "tiny").unwrap_err();
    let line = text
        .lines()
        .position(|l| l.starts_with("hiden_size"))
        .unwrap()
        + 1;
    assert!(
        err.contains("hiden_size") && err.contains(&format!("line {line}")),
        "{err}"
    );
}

#[test]
fn mistyped_value_and_bad_toml() {
    let text = SHIPPED.replace("dupe_factor = 5 ", "dupe_factor = \"five\" ");
    let err = parse_config(&text, "default").unwrap_err();
    assert!(
        err.contains("line") && err.contains("dupe_factor") || err.contains("invalid type"),
        "{err}"
    );
    let err = parse_config("[run\ndir = 1", "default").unwrap_err();
    assert!(err.starts_with("line 1"), "{err}");
}

#[test]
fn gpu_profiles_pretrain_without_dropout_and_finetune_with_it() {
    let gpu = parse_config(SHIPPED, "wiki-gpu").unwrap();
    assert_eq!(gpu.model.hidden_dropout_prob, 0.0);
    assert_eq!(gpu.model.attention_probs_dropout_prob, 0.0);
    assert_eq!(gpu.pairs.dupe_factor, 10);
    let glue = parse_config(SHIPPED, "wiki-gpu-glue").unwrap();
    assert_eq!(glue.finetune.dropout, Some(0.1));
    assert_eq!(glue.finetune.init, "checkpoints/wiki-gpu");
    assert_eq!(
        parse_config(SHIPPED, "default").unwrap().finetune.dropout,
        None
    );

    let text = SHIPPED.replace("dropout = 0.1   ", "dropout = 1.5   ");
    let err = parse_config(&text, "wiki-gpu-glue").unwrap_err();
    assert!(err.contains("finetune.dropout = 1.5"), "{err}");
    assert!(!err.contains('\n'));
}

#[test]
fn vocab_model_mismatch_is_an_error() {
    let text = SHIPPED.replacen("vocab_size = 8192 ", "vocab_size = 9000 ", 1);
    let err = parse_config(&text, "default").unwrap_err();
    assert!(
        err.contains("vocab.vocab_size = 9000") && err.contains("model.vocab_size = 8192"),
        "{err}"
    );
}

#[test]
fn unknown_profile_lists_known_ones() {
    let err = parse_config(SHIPPED, "huge").unwrap_err();
    assert!(
        err.contains("default, tiny, base") || err.contains("tiny"),
        "{err}"
    );
}

#[test]
fn without_phases_one_phase_at_the_pairs_and_mask_values() {
    let default = parse_config(SHIPPED, "default").unwrap();
    assert!(!default.has_phases());
    let plan = default.pretrain_phases();
    assert_eq!(plan.len(), 1);
    let p = plan[0];
    assert_eq!(
        (
            p.phase,
            p.max_seq_length,
            p.max_predictions_per_seq,
            p.train_batch_size,
            p.num_train_steps,
            p.first_step
        ),
        (1, 128, 20, 32, 800, 0)
    );
}

#[test]
fn shipped_phase_schedules_follow_the_paper() {
    use bertline::config::InstanceShape;
    let shape = |max_seq_length, max_predictions_per_seq| InstanceShape {
        max_seq_length,
        max_predictions_per_seq,
    };
    // base: 90% of the steps at 128 with 20 predictions, 10% at 512 with 80 (Google's values).
    let base = parse_config(SHIPPED, "base").unwrap();
    let plan = base.pretrain_phases();
    let summary: Vec<_> = plan
        .iter()
        .map(|p| {
            (
                p.phase,
                p.max_seq_length,
                p.max_predictions_per_seq,
                p.num_train_steps,
                p.first_step,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![(1, 128, 20, 90000, 0), (2, 512, 80, 10000, 90000)]
    );
    assert!(plan.iter().all(|p| p.train_batch_size == 256));
    assert_eq!(base.instance_shapes(), vec![shape(128, 20), shape(512, 80)]);
    // phases: 64 then 128 tokens, 10 then 20 predictions.
    let phases = parse_config(SHIPPED, "phases").unwrap();
    assert_eq!(
        phases.instance_shapes(),
        vec![shape(64, 10), shape(128, 20)]
    );
    let steps: Vec<usize> = phases
        .pretrain_phases()
        .iter()
        .map(|p| p.num_train_steps)
        .collect();
    assert_eq!(steps.iter().sum::<usize>(), phases.pretrain.num_train_steps);
    assert_eq!(steps[0], 9 * steps[1]);
}

#[test]
fn phase_defaults_and_overrides() {
    let text = SHIPPED.replace(
        "shuffle_buffer = 10000 ",
        "shuffle_buffer = 10000\n[[pretrain.phases]]\nmax_seq_length = 96\nnum_train_steps = 700\n\
         [[pretrain.phases]]\nmax_seq_length = 512\nnum_train_steps = 100\n\
         max_predictions_per_seq = 76\ntrain_batch_size = 8\n#",
    );
    let cfg = parse_config(&text, "default").unwrap();
    let plan = cfg.pretrain_phases();
    // 20 predictions at 128 scale to ceil(20 * 96 / 128) = 15 at 96.
    assert_eq!(
        (plan[0].max_predictions_per_seq, plan[0].train_batch_size),
        (15, 32)
    );
    assert_eq!(
        (plan[1].max_predictions_per_seq, plan[1].train_batch_size),
        (76, 8)
    );
    assert_eq!((plan[1].first_step, plan[1].end_step()), (700, 800));
    assert_eq!(bertline::optim::total_train_steps(&cfg.pretrain), 800);
    assert_eq!(bertline::config::scaled_max_predictions(20, 128, 512), 80);
    assert_eq!(bertline::config::scaled_max_predictions(10, 64, 100), 16);
}

/// The default profile with `phases` as `[[pretrain.phases]]` tables and `num_train_steps`.
fn with_phases(phases: &[&str], num_train_steps: usize) -> String {
    let tables: String = phases
        .iter()
        .map(|p| format!("[[pretrain.phases]]\n{p}\n"))
        .collect();
    SHIPPED
        .replace(
            "num_train_steps = 800 ",
            &format!("num_train_steps = {num_train_steps} "),
        )
        .replace(
            "shuffle_buffer = 10000 ",
            &format!("shuffle_buffer = 10000\n{tables}#"),
        )
}

#[test]
fn bad_phases_are_one_line_errors_naming_the_key_and_the_fix() {
    let cases = [
        (
            with_phases(
                &[
                    "max_seq_length = 128\nnum_train_steps = 700",
                    "max_seq_length = 1024\nnum_train_steps = 100",
                ],
                800,
            ),
            "pretrain.phases[1].max_seq_length = 1024 exceeds model.max_position_embeddings = 512",
        ),
        (
            with_phases(
                &[
                    "max_seq_length = 128\nnum_train_steps = 700",
                    "max_seq_length = 512\nnum_train_steps = 100",
                ],
                900,
            ),
            "set pretrain.num_train_steps = 800",
        ),
        (
            with_phases(&["max_seq_length = 128\nnum_train_steps = 0"], 0),
            "pretrain.phases[0].num_train_steps = 0",
        ),
        (
            with_phases(
                &["max_seq_length = 128\nnum_train_steps = 10\ntrain_batch_size = 0"],
                10,
            ),
            "pretrain.phases[0].train_batch_size = 0 must be a positive multiple",
        ),
        (
            with_phases(
                &["max_seq_length = 128\nnum_train_steps = 10\nmax_predictions_per_seq = 200"],
                10,
            ),
            "pretrain.phases[0].max_predictions_per_seq = 200 must be within 1..=125",
        ),
        (
            with_phases(
                &[
                    "max_seq_length = 128\nnum_train_steps = 10",
                    "max_seq_length = 128\nnum_train_steps = 10\nmax_predictions_per_seq = 30",
                ],
                20,
            ),
            "share max_seq_length = 128 but not max_predictions_per_seq",
        ),
    ];
    for (text, expected) in cases {
        let err = parse_config(&text, "default").unwrap_err();
        assert!(err.contains(expected), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }
    // An unknown key inside a phase names the key and its line.
    let text = with_phases(&["max_seq_length = 128\nnum_train_step = 800"], 800);
    let err = parse_config(&text, "default").unwrap_err();
    let line = text
        .lines()
        .position(|l| l.starts_with("num_train_step ="))
        .unwrap()
        + 1;
    assert!(
        err.contains("num_train_step") && err.contains(&format!("line {line}")),
        "{err}"
    );
    // Through load_config the message names the file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pipeline.toml");
    std::fs::write(
        &path,
        with_phases(&["max_seq_length = 128\nnum_train_steps = 5"], 800),
    )
    .unwrap();
    let err = bertline::config::load_config(&path, "default")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("pipeline.toml") && err.contains("pretrain.num_train_steps = 5"),
        "{err}"
    );
}

#[test]
fn precision_defaults_to_f32_and_bf16_is_a_one_line_error_naming_key_and_line() {
    use bertline::config::Precision;
    let default = parse_config(SHIPPED, "default").unwrap();
    assert_eq!(default.pretrain.precision, Precision::F32);
    assert_eq!(default.finetune.precision, Precision::F32);
    let text = SHIPPED.replace("[pretrain]\n", "[pretrain]\nprecision = \"f32\"\n");
    assert_eq!(
        parse_config(&text, "default").unwrap().pretrain.precision,
        Precision::F32
    );
    // bf16 in [pretrain], then in [finetune]: rejected by this build (no bf16 step yet on any
    // build), naming the key and its line.
    for table in ["pretrain", "finetune"] {
        let header = format!("[{table}]\n");
        assert!(SHIPPED.contains(&header), "pipeline.toml has [{table}]");
        let text = SHIPPED.replace(&header, &format!("{header}precision = \"bf16\"\n"));
        let line = text
            .lines()
            .position(|l| l == format!("[{table}]"))
            .unwrap()
            + 2;
        let err = parse_config(&text, "default").unwrap_err();
        assert!(
            err.contains(&format!("line {line}: {table}.precision = \"bf16\"")),
            "{err}"
        );
        assert!(err.contains("set precision = \"f32\""), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }
    // In a profile overlay: the overlay's line.
    let text = SHIPPED.replace(
        "[profiles.tiny.pretrain]\n",
        "[profiles.tiny.pretrain]\nprecision = \"bf16\"\n",
    );
    let line = text
        .lines()
        .position(|l| l == "[profiles.tiny.pretrain]")
        .unwrap()
        + 2;
    let err = parse_config(&text, "tiny").unwrap_err();
    assert!(
        err.contains(&format!("line {line}: pretrain.precision")),
        "{err}"
    );
    // Any other value is a type error naming the variants.
    let text = SHIPPED.replace("[pretrain]\n", "[pretrain]\nprecision = \"fp16\"\n");
    let err = parse_config(&text, "default").unwrap_err();
    assert!(err.contains("fp16") && err.contains("bf16"), "{err}");
}
