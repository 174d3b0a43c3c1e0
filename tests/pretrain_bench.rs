//! Where a BERT-mini training step's time goes (ignored: timing only, run by hand with
//! `cargo test --release --test pretrain_bench -- --ignored --nocapture`).

use std::time::Instant;

use bertline::model::{init, BertForPreTraining, MaskedLmBatch, Mode, TrainTape};
use bertline::pretrain::bench_mini_config;
use dfdx::prelude::*;
use rand::{Rng, SeedableRng};

fn random_batch(vocab: u32, batch: usize, seq: usize, predictions: usize) -> MaskedLmBatch {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut b = MaskedLmBatch {
        batch,
        seq_len: seq,
        max_predictions: predictions,
        ..Default::default()
    };
    for _ in 0..batch {
        b.input_ids
            .extend((0..seq).map(|_| rng.gen_range(5..vocab)));
        b.token_type_ids
            .extend((0..seq).map(|i| (i >= seq / 2) as u32));
        b.attention_mask.extend(std::iter::repeat_n(1, seq));
        b.masked_lm_positions
            .extend((0..predictions as u32).map(|i| 1 + i * 6));
        b.masked_lm_ids
            .extend((0..predictions).map(|_| rng.gen_range(5..vocab)));
        b.masked_lm_weights
            .extend(std::iter::repeat_n(1.0, predictions));
        b.next_sentence_label.push(rng.gen_range(0..2));
    }
    b
}

#[test]
#[ignore]
fn forward_and_backward_timings() {
    let (config, _) = bench_mini_config();
    let dev = Cpu::default();
    dev.enable_cache();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let model = BertForPreTraining::new(&config, &mut init(&config, &dev, &mut rng));
    let batch = random_batch(8192, 32, 128, 20);
    let inputs = batch.inputs(&dev);
    for round in 0..3 {
        let t = Instant::now();
        let _ = model.loss_on::<NoneTape>(&inputs, &batch, &mut Mode::Eval);
        let eval = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let out = model.loss_on::<TrainTape<Cpu>>(&inputs, &batch, &mut Mode::Eval);
        let taped = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let _ = out.loss.backward();
        let backward = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let out = model.loss_on::<TrainTape<Cpu>>(&inputs, &batch, &mut Mode::train(1));
        let dropout = t.elapsed().as_secs_f64();
        drop(out);
        let t = Instant::now();
        let x: Tensor<(usize, usize), f32, Cpu> = dev.zeros_like(&(4096, 1024));
        let _ = bertline::model::gelu(x.leaky_trace());
        let gelu = t.elapsed().as_secs_f64();
        println!("round {round}: eval forward {eval:.3}s, taped forward {taped:.3}s, backward {backward:.3}s, taped+dropout forward {dropout:.3}s, one taped gelu [4096x1024] {gelu:.3}s");
    }
}
