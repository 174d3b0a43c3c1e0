//! `just bench-finetune`, bertline side: fine-tuning and inference throughput of
//! BertForSequenceClassification at the default profile's size (2 layers, hidden 128,
//! 2 heads, intermediate 512, vocab 8192), batch 32 x seq 128, 2 labels. A training step is
//! forward + backward + clip + AdamW in train mode (dropout 0.1); inference is a forward
//! pass in eval mode. Prints one JSON object; ignored in normal test runs.

use std::time::Instant;

use bertline::config::BertConfig;
use bertline::finetune::HostBatch;
use bertline::model::{init, BertForSequenceClassification, HfParams, Mode, TrainTape};
use bertline::optim::{clip_grad_norm, AdamW, AdamWConfig, ParamGrads};
use dfdx::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const BATCH: usize = 32;
const SEQ: usize = 128;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
#[ignore = "benchmark: run with `just bench-finetune`"]
fn bench_sequence_classification_throughput() {
    // As the finetune stage runs: on a rayon worker (`on_pool_thread`).
    let report = bertline::model::kernels::on_pool_thread(measure);
    println!("{report}");
}

/// Times training steps and inference batches; the JSON line `just bench-finetune` prints.
fn measure() -> serde_json::Value {
    let steps: usize = std::env::var("BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let config = BertConfig {
        vocab_size: 8192,
        hidden_size: 128,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        intermediate_size: 512,
        ..BertConfig::default()
    };
    let device = Cpu::seed_from_u64(0);
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let mut model =
        BertForSequenceClassification::new(&config, 2, &mut init(&config, &device, &mut rng));
    let ids: Vec<Vec<u32>> = (0..BATCH)
        .map(|_| (0..SEQ).map(|_| rng.gen_range(5..8192)).collect())
        .collect();
    let segments: Vec<u32> = (0..SEQ).map(|i| u32::from(i >= SEQ / 2)).collect();
    let batch = HostBatch::pad(ids.iter().map(|r| (r.as_slice(), segments.as_slice())));
    let inputs = batch.inputs(&device);
    let labels: Vec<f32> = (0..BATCH).map(|i| (i % 2) as f32).collect();
    let mut optimizer = AdamW::new(AdamWConfig {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-6,
        weight_decay: 0.01,
    });
    let mut mode = Mode::train(1);
    let mut train = Vec::new();
    for step in 0..steps + 2 {
        let started = Instant::now();
        let logits = model.forward::<TrainTape<Cpu>>(&inputs, &mut mode);
        let loss = model.loss(logits, &labels);
        let mut grads = loss.backward();
        let mut host = ParamGrads::from_gradients(&model, &mut grads);
        clip_grad_norm(&mut host, 1.0);
        optimizer.update(&mut model, &host, 2e-5);
        if step >= 2 {
            train.push(started.elapsed().as_secs_f64());
        }
    }
    let mut infer = Vec::new();
    for step in 0..steps + 2 {
        let started = Instant::now();
        let logits = model.forward::<NoneTape>(&inputs, &mut Mode::Eval);
        assert_eq!(logits.as_vec().len(), BATCH * 2);
        if step >= 2 {
            infer.push(started.elapsed().as_secs_f64());
        }
    }
    let (train_s, infer_s) = (median(train), median(infer));
    serde_json::json!({
            "framework": "bertline (dfdx cpu)",
            "threads": rayon::current_num_threads(),
            "model": {"layers": 2, "hidden": 128, "heads": 2, "intermediate": 512, "vocab": 8192},
            "parameters": model.num_parameters(),
            "batch": BATCH,
            "seq": SEQ,
            "train_step_median_s": train_s,
            "train_examples_per_s": BATCH as f64 / train_s,
            "inference_batch_median_s": infer_s,
            "inference_examples_per_s": BATCH as f64 / infer_s,
    })
}
