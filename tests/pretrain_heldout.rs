//! Held-out MLM perplexity data: WikiText-2 validation text, tokenized with a WordPiece
//! vocabulary trained on the repo's Alice in Wonderland, masked with a fixed seed.

use std::path::Path;

use bertline::config::{parse_config, VocabConfig};
use bertline::model::{init, BertForPreTraining};
use bertline::pretrain::{estimate_loss, heldout_batches};
use bertline::tokenize::{train_wordpiece, SPECIAL};
use dfdx::tensor::Cpu;
use rand::SeedableRng;

fn repo(p: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

#[test]
fn heldout_rows_are_wikitext_masked_like_bert_and_an_untrained_model_is_uniform() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = repo("datasets/pretrain/gutenberg_pg11.txt");
    let text = std::fs::read_to_string(&corpus).unwrap();
    let vocab = VocabConfig {
        vocab_size: 1024,
        lowercase: true,
        min_frequency: 2,
        limit_alphabet: 1000,
        max_words: bertline::config::MAX_WORDS,
    };
    let wp = train_wordpiece(
        &vocab,
        text.lines().filter(|l| !l.trim().is_empty()),
        &corpus,
    )
    .unwrap();
    let tokenizer = dir.path().join("tokenizer.json");
    wp.write_tokenizer_json(&tokenizer).unwrap();
    let pipeline = std::fs::read_to_string(repo("pipeline.toml")).unwrap();
    let cfg = parse_config(&pipeline, "tiny").unwrap();
    let heldout = repo("datasets/pretrain/heldout/wikitext2_tok_valid.txt");

    let batches = heldout_batches(&heldout, &tokenizer, &cfg).unwrap();
    assert_eq!(
        batches,
        heldout_batches(&heldout, &tokenizer, &cfg).unwrap(),
        "fixed seed"
    );
    assert_eq!(batches.len(), cfg.pretrain.eval_batches);
    let seq = cfg.pairs.max_seq_length;
    let (mut predictions, mut shown_as_mask) = (0, 0);
    for b in &batches {
        assert_eq!((b.batch, b.seq_len), (cfg.pretrain.train_batch_size, seq));
        for r in 0..b.batch {
            let row = &b.input_ids[r * seq..(r + 1) * seq];
            // WikiText is long: every row is a full [CLS] ... [SEP] chunk.
            assert_eq!((row[0], row[seq - 1]), (SPECIAL.cls, SPECIAL.sep));
            assert!(b.attention_mask[r * seq..(r + 1) * seq]
                .iter()
                .all(|&m| m == 1));
            let p = b.max_predictions;
            let weights = &b.masked_lm_weights[r * p..(r + 1) * p];
            // round(64 · 0.15) = 10 predictions, capped at max_predictions_per_seq = 10.
            assert_eq!(weights.iter().filter(|&&w| w == 1.0).count(), 10.min(p));
            for (k, &w) in weights.iter().enumerate() {
                if w == 1.0 {
                    let pos = b.masked_lm_positions[r * p + k] as usize;
                    assert!(pos > 0 && pos < seq - 1, "never [CLS] or [SEP]");
                    assert!(b.masked_lm_ids[r * p + k] < 1024);
                    predictions += 1;
                    shown_as_mask += (row[pos] == SPECIAL.mask) as usize;
                }
            }
        }
    }
    // 80% of predictions are shown as [MASK]: binomial(160, 0.8) has sd 0.032; 4 sd.
    let fraction = shown_as_mask as f64 / predictions as f64;
    assert!((fraction - 0.8).abs() < 0.13, "[MASK] fraction {fraction}");

    // An untrained model (logits ~ N(0, small)) predicts nearly uniformly: perplexity ~ V.
    let mut model_config = cfg.model.clone();
    model_config.vocab_size = 1024;
    let dev = Cpu::default();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let model = BertForPreTraining::new(&model_config, &mut init(&model_config, &dev, &mut rng));
    let stats = estimate_loss(&model, &batches);
    let perplexity = stats.mlm_loss.exp();
    assert!(
        perplexity > 0.8 * 1024.0 && perplexity < 1.25 * 1024.0,
        "perplexity {perplexity}"
    );
    assert_eq!(stats.mlm_count, predictions as f64);
}
