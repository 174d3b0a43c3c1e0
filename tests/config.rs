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
