//! Shared fixtures for the model tests: a tiny config and a hand-made batch.
#![allow(dead_code)]

use bertline::model::{init, BertForPreTraining, MaskedLmBatch};
use bertline::BertConfig;
use dfdx::tensor::Cpu;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// 2 layers, hidden 16, 2 heads: every code path, milliseconds per step.
pub fn tiny_config() -> BertConfig {
    BertConfig {
        vocab_size: 40,
        hidden_size: 16,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        intermediate_size: 32,
        max_position_embeddings: 16,
        ..BertConfig::default()
    }
}

/// A model initialised from `seed`.
pub fn tiny_model(config: &BertConfig, seed: u64) -> (Cpu, BertForPreTraining<Cpu>) {
    let dev = Cpu::seed_from_u64(seed);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let model = BertForPreTraining::new(config, &mut init(config, &dev, &mut rng));
    (dev, model)
}

/// Two sequences of length 8: the second is padded after 5 tokens. Ids: 0 = [PAD],
/// 1 = [CLS], 2 = [SEP], 3 = [MASK]; both segments present; 3 predictions per row, the last
/// of row 1 is padding (weight 0).
pub fn tiny_batch() -> MaskedLmBatch {
    MaskedLmBatch {
        batch: 2,
        seq_len: 8,
        max_predictions: 3,
        input_ids: vec![1, 10, 3, 2, 20, 21, 3, 2, 1, 3, 12, 2, 30, 0, 0, 0],
        token_type_ids: vec![0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0],
        attention_mask: vec![1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        masked_lm_positions: vec![2, 4, 6, 1, 4, 0],
        masked_lm_ids: vec![11, 20, 22, 9, 30, 0],
        masked_lm_weights: vec![1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        next_sentence_label: vec![0, 1],
    }
}
