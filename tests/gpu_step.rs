//! The GPU rows of scripts/gpu_check.sh's table, as ignored tests of the `cuda` build. Each
//! prints one JSON line (`{"check": ...}`) that scripts/gpu_table.py reads.
//!
//! - `gpu_one_step_matches_cpu_with_dropout`: one pre-training step of the same model (same
//!   seed, so the same weights), batch and dropout masks (Philox, the same on both devices) on
//!   the GPU and on the CPU: the training loss (dropout on) and the loss after the AdamW update.
//! - `gpu_throughput`: ms/step and tokens/s of BERT-Tiny (256 x 128), BERT-mini (32 x 128)
//!   and BERT-Base (128 x 128) in f32, with their model FLOPs per step.
//!
//! bf16 rows are printed as owed: `pretrain.precision = "bf16"` has no GPU step yet.
#![cfg(feature = "cuda")]

use bertline::model::{BertConfig, MaskedLmBatch};
use bertline::pretrain::{bench, Trainer};
use dfdx::tensor::{Cpu, Cuda};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn config(layers: usize, hidden: usize, heads: usize, vocab: usize) -> BertConfig {
    BertConfig {
        vocab_size: vocab,
        hidden_size: hidden,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        intermediate_size: 4 * hidden,
        max_position_embeddings: 512,
        ..BertConfig::default()
    }
}

fn pretrain(batch: usize) -> bertline::config::PretrainConfig {
    toml::from_str(&format!(
        "train_batch_size = {batch}\nlearning_rate = 1e-4\nnum_train_steps = 100\nnum_warmup_steps = 10"
    ))
    .unwrap()
}

/// Random instances as `pretrain::bench` draws them: uniform ids, 15% of positions predicted.
fn batch(model: &BertConfig, batch: usize, seq_len: usize) -> MaskedLmBatch {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let predictions = ((seq_len as f64 * 0.15).round() as usize).max(1);
    let mut b = MaskedLmBatch {
        batch,
        seq_len,
        max_predictions: predictions,
        ..Default::default()
    };
    for _ in 0..batch {
        b.input_ids
            .extend((0..seq_len).map(|_| rng.gen_range(5..model.vocab_size as u32)));
        b.token_type_ids
            .extend((0..seq_len).map(|i| (i >= seq_len / 2) as u32));
        b.attention_mask.extend(std::iter::repeat_n(1, seq_len));
        let mut positions: Vec<u32> = rand::seq::index::sample(&mut rng, seq_len - 1, predictions)
            .into_iter()
            .map(|p| p as u32 + 1)
            .collect();
        positions.sort_unstable();
        b.masked_lm_positions.extend(positions);
        b.masked_lm_ids
            .extend((0..predictions).map(|_| rng.gen_range(5..model.vocab_size as u32)));
        b.masked_lm_weights
            .extend(std::iter::repeat_n(1.0, predictions));
        b.next_sentence_label.push(rng.gen_range(0..2));
    }
    b
}

/// Model FLOPs of one training step, counted as scripts/bench_pretrain_torch.py counts them:
/// 6 x (encoder and pooler matrix parameters) per token, attention's two products
/// (12 x layers x seq x hidden per token), and 6 x (hidden² + hidden x vocab) per predicted
/// position (head transform and tied decoder).
fn training_flops(m: &BertConfig, batch: usize, seq: usize, predictions: usize) -> f64 {
    let (h, l, i, v) = (
        m.hidden_size as f64,
        m.num_hidden_layers as f64,
        m.intermediate_size as f64,
        m.vocab_size as f64,
    );
    let encoder = l * (4.0 * h * h + 2.0 * h * i) + h * h;
    let per_token = 6.0 * encoder + 12.0 * l * seq as f64 * h;
    per_token * (batch * seq) as f64 + 6.0 * (h * h + h * v) * (batch * predictions) as f64
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_one_step_matches_cpu_with_dropout() {
    let model = config(4, 256, 4, 8192);
    let cfg = pretrain(32);
    let b = batch(&model, 32, 128);
    let gpu = Cuda::try_build(0, 0).expect("CUDA device 0");
    let cpu = Cpu::default();
    let mut on_gpu = Trainer::new(&model, &cfg, 7, &gpu);
    let mut on_cpu = Trainer::new(&model, &cfg, 7, &cpu);
    let (g1, c1) = (
        on_gpu.train_step(&b, 1e-3).unwrap(),
        on_cpu.train_step(&b, 1e-3).unwrap(),
    );
    let (g2, c2) = (
        on_gpu.train_step(&b, 1e-3).unwrap(),
        on_cpu.train_step(&b, 1e-3).unwrap(),
    );
    let rel = |a: f64, b: f64| (a - b).abs() / b.abs();
    let (first, after) = (rel(g1.loss, c1.loss), rel(g2.loss, c2.loss));
    println!(
        "{}",
        serde_json::json!({
            "check": "one_step", "precision": "f32", "model": "mini", "batch": 32, "seq": 128,
            "loss_gpu": g1.loss, "loss_cpu": c1.loss,
            "loss_after_gpu": g2.loss, "loss_after_cpu": c2.loss,
            "rel_diff": first.max(after),
        })
    );
    assert!(
        first < 1e-4 && after < 1e-4,
        "GPU vs CPU: {first:e}, after the step {after:e}"
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_throughput() {
    let gpu = Cuda::try_build(0, 0).expect("CUDA device 0");
    dfdx::tensor::Cache::enable_cache(&gpu);
    let steps: usize = std::env::var("BERTLINE_BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let sizes = [
        ("tiny", config(2, 128, 2, 8192), 256),
        ("mini", config(4, 256, 4, 8192), 32),
        ("base", config(12, 768, 12, 30522), 128),
    ];
    let only = std::env::var("BERTLINE_GPU_SIZES").unwrap_or_default();
    for (name, model, batch) in sizes {
        if !only.is_empty() && !only.split(',').any(|s| s == name) {
            continue;
        }
        let report = bench(&model, &pretrain(batch), batch, 128, steps, &gpu).unwrap();
        let predictions = ((128.0f64 * 0.15).round()) as usize;
        println!(
            "{}",
            serde_json::json!({
                "check": "throughput", "impl": "bertline", "model": name, "precision": "f32",
                "batch": batch, "seq": 128, "steps": steps,
                "ms_per_step": report.median_step_s * 1e3,
                "tokens_per_s": report.tokens_per_s,
                "flops_per_step": training_flops(&model, batch, 128, predictions),
            })
        );
    }
}
