//! Every bad input the README's "Bad input" table lists, each checked against the real
//! loader: a one-line error that names the key and the line that sets it (the profile's
//! line when a profile sets it). The table in the README is printed by
//! `cargo test --release --test bad_inputs -- --ignored --nocapture print_table`, and a test
//! checks the README lists every case.

use bertline::config::parse_config;

const SHIPPED: &str = include_str!("../pipeline.toml");

/// One bad pipeline.toml: the shipped file with `find` replaced by `replace` (or `replace`
/// appended when `find` is empty), loaded for `profile`.
struct Case {
    profile: &'static str,
    find: &'static str,
    replace: &'static str,
    /// Text the error must contain (the key and the offending value).
    expect: &'static str,
    /// The error must start with the line that sets the key ([`expected_line`]).
    line: bool,
}

const fn case(
    profile: &'static str,
    find: &'static str,
    replace: &'static str,
    expect: &'static str,
) -> Case {
    Case {
        profile,
        find,
        replace,
        expect,
        line: true,
    }
}

const CASES: &[Case] = &[
    // [run], [corpus]
    case("default", "random_seed = 12345 ", "random_seed = -1 ", "run.random_seed"),
    case("default", "threads = 0 ", "threads = -2 ", "run.threads"),
    case("default", "data_memory_mb = 256 ", "data_memory_mb = 0 ", "run.data_memory_mb = 0"),
    case(
        "default",
        "input = [\"datasets/pretrain/*.txt\"]",
        "input = []",
        "corpus.input = []",
    ),
    // [vocab]
    case("default", "vocab_size = 8192             # tokens", "vocab_size = 100             # tokens", "vocab.vocab_size = 100 but model.vocab_size = 8192"),
    case("default", "limit_alphabet = 1000 ", "limit_alphabet = 0 ", "vocab.limit_alphabet = 0"),
    case("default", "min_frequency = 2 ", "min_frequency = -2 ", "vocab.min_frequency"),
    case("default", "max_words = 500000 ", "max_words = 10 ", "vocab.max_words = 10 must be at least 1000"),
    // [pairs]
    case("default", "max_seq_length = 128          # tokens incl.", "max_seq_length = 4          # tokens incl.", "pairs.max_seq_length = 4"),
    case("default", "max_seq_length = 128          # tokens incl.", "max_seq_length = 1024          # tokens incl.", "pairs.max_seq_length = 1024 exceeds"),
    case("default", "short_seq_prob = 0.1 ", "short_seq_prob = 2.0 ", "pairs.short_seq_prob = 2"),
    case("default", "dupe_factor = 5 ", "dupe_factor = 0 ", "pairs.dupe_factor = 0"),
    case("default", "dupe_factor = 5 ", "dupe_factor = -5 ", "pairs.dupe_factor"),
    case("default", "dupe_factor = 5 ", "dupe_factor = \"five\" ", "pairs.dupe_factor"),
    case("default", "eval_fraction = 0.02 ", "eval_fraction = 1.0 ", "pairs.eval_fraction = 1"),
    case("default", "shard_rows = 32768 ", "shard_rows = 0 ", "pairs.shard_rows = 0"),
    case("tiny", "dupe_factor = 1\n", "dupe_factor = -1\n", "pairs.dupe_factor"),
    // [mask]
    case("default", "masked_lm_prob = 0.15 ", "masked_lm_prob = 0.0 ", "mask.masked_lm_prob = 0"),
    case("default", "masked_lm_prob = 0.15 ", "masked_lm_prob = 1.5 ", "mask.masked_lm_prob = 1.5"),
    case("default", "masked_lm_prob = 0.15 ", "masked_lm_prb = 0.15 ", "unknown field `masked_lm_prb`"),
    case("default", "max_predictions_per_seq = 20 ", "max_predictions_per_seq = 0 ", "mask.max_predictions_per_seq = 0"),
    case("default", "max_predictions_per_seq = 20 ", "max_predictions_per_seq = 200 ", "mask.max_predictions_per_seq = 200 must be within 1..=125"),
    case("tiny", "max_predictions_per_seq = 10\n[profiles.tiny.model]", "max_predictions_per_seq = 0\n[profiles.tiny.model]", "mask.max_predictions_per_seq = 0"),
    // [model]
    case("default", "num_attention_heads = 2\n", "num_attention_heads = 3\n", "model.num_attention_heads = 3 does not divide model.hidden_size = 128"),
    case("default", "num_hidden_layers = 2\n", "num_hidden_layers = 0\n", "model.num_hidden_layers = 0"),
    case("default", "intermediate_size = 512\n", "intermediate_size = 0\n", "model.intermediate_size = 0"),
    case("default", "hidden_act = \"gelu\" ", "hidden_act = \"relu\" ", "model.hidden_act = \"relu\""),
    case("default", "hidden_dropout_prob = 0.1\n", "hidden_dropout_prob = 1.0\n", "model.hidden_dropout_prob = 1"),
    case("default", "attention_probs_dropout_prob = 0.1\n", "attention_probs_dropout_prob = -0.1\n", "model.attention_probs_dropout_prob = -0.1"),
    case("default", "type_vocab_size = 2\n", "type_vocab_size = 1\n", "model.type_vocab_size = 1"),
    case("default", "initializer_range = 0.02 ", "initializer_range = 0.0 ", "model.initializer_range = 0"),
    case("default", "layer_norm_eps = 1e-12\n", "layer_norm_eps = -1e-12\n", "model.layer_norm_eps = -0.000000000001"),
    case("tiny", "hidden_size = 32\n", "hidden_size = 33\n", "model.num_attention_heads = 2 does not divide model.hidden_size = 33"),
    // [pretrain]
    case("default", "train_batch_size = 32 ", "train_batch_size = 0 ", "pretrain.train_batch_size = 0"),
    case("default", "gradient_accumulation_steps = 1\n", "gradient_accumulation_steps = 3\n", "pretrain.gradient_accumulation_steps = 3 does not divide pretrain.train_batch_size = 32"),
    case("default", "learning_rate = 1e-3          # peak", "learning_rate = -1e-3          # peak", "pretrain.learning_rate = -0.001"),
    case("default", "learning_rate = 1e-3          # peak", "learning_rate = 0.0          # peak", "pretrain.learning_rate = 0"),
    case("default", "num_train_steps = 800 ", "num_train_steps = 0 ", "pretrain.num_train_steps = 0: train at least 1 step"),
    case("default", "num_warmup_steps = 80 ", "num_warmup_steps = 900 ", "pretrain.num_warmup_steps = 900 exceeds the 800 training steps"),
    case("tiny", "num_warmup_steps = 2\n", "num_warmup_steps = 21\n", "pretrain.num_warmup_steps = 21 exceeds the 20 training steps"),
    case("default", "weight_decay = 0.01 ", "weight_decay = -0.01 ", "pretrain.weight_decay = -0.01"),
    case("default", "max_grad_norm = 1.0 ", "max_grad_norm = -1.0 ", "pretrain.max_grad_norm = -1"),
    case("default", "log_every_steps = 25 ", "log_every_steps = 0 ", "pretrain.log_every_steps = 0"),
    case("default", "eval_batches = 10 ", "eval_batches = 0 ", "pretrain.eval_batches = 0"),
    case("default", "keep_checkpoints = 2 ", "keep_checkpoints = 0 ", "pretrain.keep_checkpoints = 0"),
    case("default", "shuffle_buffer = 10000 ", "shuffle_buffer = 0 ", "pretrain.shuffle_buffer = 0"),
    case("default", "save_checkpoints_steps = 200 ", "save_checkpoints_steps = -200 ", "pretrain.save_checkpoints_steps"),
    case("default", "weight_decay = 0.01 ", "adam_beta2 = 1.0\nweight_decay = 0.01 ", "pretrain.adam_beta2 = 1"),
    case("default", "weight_decay = 0.01 ", "adam_epsilon = 0.0\nweight_decay = 0.01 ", "pretrain.adam_epsilon = 0"),
    case("phases", "num_train_steps = 500 ", "num_train_steps = 400 ", "pretrain.num_train_steps = 400 but the phases' num_train_steps add up to 500"),
    case("phases", "num_train_steps = 50\n", "num_train_steps = 0\n", "pretrain.phases[1].num_train_steps = 0"),
    // [finetune]
    case("default", "learning_rate = 1e-3          # tiny", "learning_rate = -1e-3          # tiny", "finetune.learning_rate = -0.001"),
    case("default", "train_batch_size = 16 ", "train_batch_size = 0 ", "finetune.train_batch_size = 0"),
    case("default", "num_train_epochs = 3.0\n", "num_train_epochs = 0.0\n", "finetune.num_train_epochs = 0"),
    case("default", "seeds = [1, 2] ", "seeds = [] ", "finetune.seeds = []"),
    case("tiny", "seeds = [1]\nmax_train_examples = 200", "seeds = []\nmax_train_examples = 200", "finetune.seeds = []"),
    case("default", "warmup_proportion = 0.1\n", "warmup_proportion = 1.5\n", "finetune.warmup_proportion = 1.5"),
    case("default", "max_seq_length = 128\nmax_train_examples", "max_seq_length = 4\nmax_train_examples", "finetune.max_seq_length = 4 must be at least 8"),
    case("default", "max_train_examples = 1500 ", "max_train_examples = -1 ", "finetune.max_train_examples"),
    case("default", "compare_scratch = true ", "learning_rates = [1e-4, 0.0]\ncompare_scratch = true ", "finetune.learning_rates = 0"),
    case("default", "init = \"pretrained\" ", "init = \"\" ", "finetune.init = \"\""),
    case("wiki-gpu-glue", "dropout = 0.1   ", "dropout = 1.5   ", "finetune.dropout = 1.5"),
    case("default", "[report]\n", "[finetune.overrides.sst2]\ntrain_batch_size = 0\n[report]\n", "finetune.overrides.sst2.train_batch_size = 0"),
    case("default", "[report]\n", "[finetune.overrides.mrpc]\nseeds = []\n[report]\n", "finetune.overrides.mrpc.seeds = []"),
    case("default", "[report]\n", "[finetune.custom.mine]\ndelimiter = \";\"\ntrain = \"a.tsv\"\ndev = \"b.tsv\"\ntext_a = \"s\"\nlabel = \"l\"\n[report]\n", "finetune.custom.mine.delimiter = \";\""),
    case("default", "[report]\n", "[finetune.custom.mine]\nmetrics = [\"auc\"]\ntrain = \"a.tsv\"\ndev = \"b.tsv\"\ntext_a = \"s\"\nlabel = \"l\"\n[report]\n", "finetune.custom.mine.metrics: unknown metric `auc`"),
    case("default", "doc_stride = 128\n", "doc_stride = 0\n", "finetune.squad.doc_stride = 0"),
    case("default", "max_query_length = 64\n", "max_query_length = 400\n", "finetune.squad.max_query_length = 400 leaves no room"),
    case("default", "max_answer_length = 30\n", "max_answer_length = 0\n", "finetune.squad.max_answer_length = 0"),
];

fn edited(c: &Case) -> String {
    assert!(
        SHIPPED.matches(c.find).count() >= 1,
        "`{}` is not in pipeline.toml",
        c.find
    );
    SHIPPED.replacen(c.find, c.replace, 1)
}

/// The line (1-based) the error must name: the first line from the replacement on that
/// sets the key the expected message starts with (the replacement's first line when the
/// message names no dotted key).
fn expected_line(c: &Case, text: &str) -> usize {
    let at = SHIPPED.find(c.find).unwrap();
    let first = text[..at].matches('\n').count() + 1;
    let key = c.expect.split([' ', ':']).next().unwrap_or_default();
    let Some((_, leaf)) = key.rsplit_once('.') else {
        return first;
    };
    text.lines()
        .enumerate()
        .skip(first - 1)
        .find(|(_, l)| l.trim_start().starts_with(&format!("{leaf} =")))
        .map_or(first, |(i, _)| i + 1)
}

fn error_of(c: &Case) -> String {
    let text = edited(c);
    match parse_config(&text, c.profile) {
        Ok(_) => panic!("accepted: {} (profile {})", c.replace.trim(), c.profile),
        Err(e) => e,
    }
}

#[test]
fn every_bad_input_is_a_one_line_error_naming_key_and_line() {
    let mut failures = Vec::new();
    for c in CASES {
        let text = edited(c);
        let err = match parse_config(&text, c.profile) {
            Ok(_) => {
                failures.push(format!("accepted: `{}` ({})", c.replace.trim(), c.profile));
                continue;
            }
            Err(e) => e,
        };
        let line = format!("line {}:", expected_line(c, &text));
        if !err.contains(c.expect) || err.contains('\n') || (c.line && !err.starts_with(&line)) {
            failures.push(format!(
                "`{}` ({}): wanted {line} ... {}, got: {err}",
                c.replace.trim(),
                c.profile,
                c.expect
            ));
        }
    }
    assert!(CASES.len() >= 40);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn shipped_profiles_are_all_valid() {
    let doc: toml::Table = toml::from_str(SHIPPED).unwrap();
    let profiles = doc["profiles"].as_table().unwrap();
    for name in std::iter::once("default").chain(profiles.keys().map(String::as_str)) {
        parse_config(SHIPPED, name).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// The README row of a case; the line number is left out (`line N`) so that edits to
/// pipeline.toml do not stale the README.
fn table_row(c: &Case) -> String {
    let err = error_of(c);
    let err = match err.strip_prefix("line ").and_then(|r| r.split_once(':')) {
        Some((n, rest)) if n.chars().all(|d| d.is_ascii_digit()) => format!("line N:{rest}"),
        _ => err,
    };
    let input = c.replace.trim().replace('\n', "; ");
    let profile = if c.profile == "default" {
        String::new()
    } else {
        format!(" (`{}`)", c.profile)
    };
    format!(
        "| `{}`{profile} | `{}` |",
        input.replace('|', "\\|"),
        err.replace('|', "\\|").replace('`', "'")
    )
}

#[test]
#[ignore = "prints the README's bad-input table"]
fn print_table() {
    println!("| bad input (in pipeline.toml) | error |\n|---|---|");
    for c in CASES {
        println!("{}", table_row(c));
    }
}

#[test]
fn readme_lists_every_case_with_its_current_message() {
    let readme = include_str!("../README.md");
    let missing: Vec<String> = CASES
        .iter()
        .map(table_row)
        .filter(|row| !readme.contains(row.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "README lacks these rows (regenerate with print_table):\n{}",
        missing.join("\n")
    );
}

#[test]
fn hf_config_json_of_another_model_type_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    let mut json = serde_json::to_value(bertline::BertConfig::default()).unwrap();
    json["model_type"] = "roberta".into();
    std::fs::write(&path, json.to_string()).unwrap();
    let err = bertline::model::export::read_config_json(&path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("config.json")
            && err.contains("model_type = \"roberta\"")
            && !err.contains('\n'),
        "{err}"
    );
    json["model_type"] = "bert".into();
    std::fs::write(&path, json.to_string()).unwrap();
    bertline::model::export::read_config_json(&path).unwrap();
}
