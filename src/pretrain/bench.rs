//! The training-step benchmark (`bertline-pretrain --bench`): compute only, on random
//! instances.

use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::Trainer;
use crate::config::{BertConfig, PretrainConfig};
#[cfg(feature = "cuda")]
use crate::error::Error;
use crate::error::Result;
use crate::model::{BertDevice, MaskedLmBatch};

/// Timings of [`bench`].
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub layers: usize,
    pub hidden: usize,
    pub batch: usize,
    pub seq_len: usize,
    pub steps: usize,
    /// Median seconds per optimizer step (after one warm-up step).
    pub median_step_s: f64,
    /// `batch * seq_len / median_step_s`.
    pub tokens_per_s: f64,
    /// Peak resident memory of the process (VmHWM), MiB; 0 where unknown.
    pub peak_rss_mib: f64,
}

/// Times `steps` training steps of `model_config` on random instances (uniform ids, 15% of
/// positions predicted, half the pairs random-next). Compute only, no data loading.
pub fn bench<D: BertDevice>(
    model_config: &BertConfig,
    config: &PretrainConfig,
    batch: usize,
    seq_len: usize,
    steps: usize,
    device: &D,
) -> Result<BenchReport> {
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
            .extend((0..seq_len).map(|_| rng.gen_range(5..model_config.vocab_size as u32)));
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
            .extend((0..predictions).map(|_| rng.gen_range(5..model_config.vocab_size as u32)));
        b.masked_lm_weights
            .extend(std::iter::repeat_n(1.0, predictions));
        b.next_sentence_label.push(rng.gen_range(0..2));
    }
    let mut trainer = Trainer::new(model_config, config, 0, device);
    let mut times = Vec::with_capacity(steps);
    for i in 0..=steps {
        let t = Instant::now();
        trainer.train_step(&b, 1e-4)?;
        if i > 0 {
            times.push(t.elapsed().as_secs_f64());
        }
        tracing::debug!(step = i, seconds = t.elapsed().as_secs_f64(), "bench step");
    }
    times.sort_by(|a, b| a.partial_cmp(b).expect("finite times"));
    let median = times.get(times.len() / 2).copied().unwrap_or(0.0);
    Ok(BenchReport {
        layers: model_config.num_hidden_layers,
        hidden: model_config.hidden_size,
        batch,
        seq_len,
        steps,
        median_step_s: median,
        tokens_per_s: (batch * seq_len) as f64 / median.max(1e-12),
        peak_rss_mib: peak_rss_mib(),
    })
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`), 0 elsewhere.
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// BERT-mini (4 layers, hidden 256, 4 heads, intermediate 1024, vocab 8192), sequence 128,
/// batch 32: the configuration the PyTorch benchmark times too.
pub fn bench_mini_config() -> (BertConfig, PretrainConfig) {
    let model = BertConfig {
        vocab_size: 8192,
        hidden_size: 256,
        num_hidden_layers: 4,
        num_attention_heads: 4,
        intermediate_size: 1024,
        max_position_embeddings: 512,
        ..BertConfig::default()
    };
    let pretrain: PretrainConfig = toml::from_str(
        "train_batch_size = 32\nlearning_rate = 1e-4\nnum_train_steps = 100\nnum_warmup_steps = 10",
    )
    .expect("valid pretrain table");
    (model, pretrain)
}

/// [`bench`] of `model` with `pretrain`'s batch size and sequence length `seq_len` on the
/// default device (CUDA with the `cuda` feature, else the CPU with its buffer cache on).
pub fn bench_default_device(
    model: &BertConfig,
    pretrain: &PretrainConfig,
    seq_len: usize,
    steps: usize,
) -> Result<BenchReport> {
    let batch = pretrain.train_batch_size;
    #[cfg(feature = "cuda")]
    {
        let device = dfdx::tensor::Cuda::try_build(0, 0)
            .map_err(|e| Error::Model(format!("cannot open CUDA device 0: {e:?}")))?;
        dfdx::tensor::Cache::enable_cache(&device);
        bench(model, pretrain, batch, seq_len, steps, &device)
    }
    #[cfg(not(feature = "cuda"))]
    crate::model::kernels::on_pool_thread(|| {
        let device = dfdx::tensor::Cpu::default();
        dfdx::tensor::Cache::enable_cache(&device);
        bench(model, pretrain, batch, seq_len, steps, &device)
    })
}
