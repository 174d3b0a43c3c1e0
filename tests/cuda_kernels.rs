//! bertline's CUDA kernels (`src/model/device/cuda/*.cu`) against their CPU references
//! (`model::device::host`, `model::device::philox`, `optim`), on odd sizes. GPU only: built
//! with `--features cuda`, every test `#[ignore]`d (run by scripts/gpu_check.sh with
//! `--ignored`). Bit-exact where the arithmetic is the same operation for operation (the
//! dropout mask, AdamW, bf16 casts); within a tolerance where the GPU sums in another order.
#![cfg(feature = "cuda")]

use std::sync::Arc;

use bertline::model::device::cuda::CudaKernels;
use bertline::model::device::host;
use bertline::model::Dropout;
use bertline::optim::{adamw_fused, AdamWConfig, AdamWStep, FlatLayout, ParamGrads};
use cudarc::driver::{CudaDevice, CudaSlice};

fn kernels() -> CudaKernels {
    let dev: Arc<CudaDevice> = CudaDevice::new(0).expect("a CUDA device");
    CudaKernels::load(dev).expect("kernels compile and load")
}

/// A fixed sign-mixing sequence (Philox words scaled to [-scale, scale)).
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let d = Dropout::new(seed, 0, 0, 0.0);
    (0..n as u64)
        .map(|i| (d.word(i) as f32 / 4294967296.0 * 2.0 - 1.0) * scale)
        .collect()
}

fn up<T: cudarc::driver::DeviceRepr + Unpin>(k: &CudaKernels, x: &[T]) -> CudaSlice<T> {
    k.dev.htod_sync_copy(x).unwrap()
}

fn zeros(k: &CudaKernels, n: usize) -> CudaSlice<f32> {
    k.dev.alloc_zeros::<f32>(n).unwrap()
}

fn down<T: cudarc::driver::DeviceRepr + Default + Clone>(
    k: &CudaKernels,
    x: &CudaSlice<T>,
) -> Vec<T> {
    k.dev.dtoh_sync_copy(x).unwrap()
}

fn close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let worst = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs() / w.abs().max(1.0))
        .fold(0.0f32, f32::max);
    assert!(worst < tol, "{what}: max relative error {worst}");
    println!("{what}: max relative error {worst:.2e}");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_dropout_masks_are_the_cpu_masks_bit_for_bit() {
    let k = kernels();
    // Unaligned length, a seed with both halves set, a large step and site.
    let n = 1_000_003;
    for d in [
        Dropout::new(0x299f_31d0_a409_3822, 123_456, 7, 0.1),
        Dropout::new(5, 0, 0, 0.5),
    ] {
        let mut out = zeros(&k, n);
        k.dropout_mask(d, &mut out).unwrap();
        assert_eq!(down(&k, &out), d.mask(n), "{d:?}");
        let x = values(n, 1, 2.0);
        let mut y = zeros(&k, n);
        k.dropout_forward(&up(&k, &x), d, &mut y).unwrap();
        let want: Vec<f32> = x.iter().zip(d.mask(n)).map(|(x, m)| x * m).collect();
        assert_eq!(down(&k, &y), want);
        let mut gx = up(&k, &vec![1.0f32; n]);
        k.dropout_backward(&up(&k, &x), d, &mut gx).unwrap();
        let want: Vec<f32> = x.iter().zip(d.mask(n)).map(|(g, m)| 1.0 + g * m).collect();
        assert_eq!(down(&k, &gx), want);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_bias_gelu_matches_the_cpu_reference() {
    let k = kernels();
    let (rows, cols) = (1031u32, 257u32);
    let n = (rows * cols) as usize;
    let (x, bias, gy) = (
        values(n, 2, 5.0),
        values(cols as usize, 3, 1.0),
        values(n, 4, 1.0),
    );
    let (want_pre, want_y) = host::bias_gelu(cols as usize, &x, &bias);
    let (mut pre, mut y, mut gpre) = (zeros(&k, n), zeros(&k, n), zeros(&k, n));
    k.bias_gelu_forward((rows, cols), &up(&k, &x), &up(&k, &bias), &mut pre, &mut y)
        .unwrap();
    assert_eq!(down(&k, &pre), want_pre, "x + bias is one rounding on both");
    close("bias_gelu y", &down(&k, &y), &want_y, 1e-6);
    k.bias_gelu_backward((rows, cols), &pre, &up(&k, &gy), &mut gpre)
        .unwrap();
    let want_g = host::bias_gelu_backward(&want_pre, &gy);
    close("bias_gelu gpre", &down(&k, &gpre), &want_g, 1e-6);
    let mut sums = zeros(&k, cols as usize);
    k.column_sums((rows, cols), &gpre, &mut sums).unwrap();
    close(
        "column_sums",
        &down(&k, &sums),
        &host::column_sums(cols as usize, &want_g),
        1e-5,
    );
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_residual_layer_norm_matches_the_cpu_reference() {
    let k = kernels();
    let (rows, cols) = (517u32, 768u32);
    let n = (rows * cols) as usize;
    let (x, r, gy) = (values(n, 5, 3.0), values(n, 6, 2.0), values(n, 7, 1.0));
    let (gamma, beta) = (values(cols as usize, 8, 1.0), values(cols as usize, 9, 1.0));
    for dropout in [Some(Dropout::new(10, 3, 4, 0.1)), None] {
        let want =
            host::residual_layer_norm(cols as usize, &x, Some(&r), (&gamma, &beta), 1e-12, dropout);
        let (mut xhat, mut rstd, mut y) = (zeros(&k, n), zeros(&k, rows as usize), zeros(&k, n));
        let (g, b) = (up(&k, &gamma), up(&k, &beta));
        k.residual_layer_norm_forward(
            (rows, cols),
            &up(&k, &x),
            Some(&up(&k, &r)),
            (&g, &b),
            1e-12,
            dropout,
            (&mut xhat, &mut rstd, &mut y),
        )
        .unwrap();
        close("layer_norm y", &down(&k, &y), &want.y, 1e-5);
        close("layer_norm xhat", &down(&k, &xhat), &want.xhat, 1e-5);
        let (wgx, wgr, wgg, wgb) =
            host::residual_layer_norm_backward(cols as usize, &gy, &want, &gamma, dropout);
        let (mut gx, mut gr) = (zeros(&k, n), zeros(&k, n));
        let (mut gg, mut gb) = (zeros(&k, cols as usize), zeros(&k, cols as usize));
        k.residual_layer_norm_backward(
            (rows, cols),
            &up(&k, &gy),
            (&xhat, &rstd),
            &g,
            dropout,
            (&mut gx, Some(&mut gr)),
            (&mut gg, &mut gb),
        )
        .unwrap();
        close("layer_norm gx", &down(&k, &gx), &wgx, 1e-4);
        close("layer_norm gresidual", &down(&k, &gr), &wgr, 1e-4);
        close("layer_norm ggamma", &down(&k, &gg), &wgg, 1e-4);
        close("layer_norm gbeta", &down(&k, &gb), &wgb, 1e-4);
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_masked_softmax_dropout_matches_the_cpu_reference() {
    let k = kernels();
    let (b, heads, s) = (3u32, 4u32, 128u32);
    let tasks = b * heads;
    let n = (tasks * s * s) as usize;
    let scores = values(n, 11, 8.0);
    let key_bias: Vec<f32> = (0..(b * s) as usize)
        .map(|i| if i % s as usize >= 100 { -10000.0 } else { 0.0 })
        .collect();
    let g = values(n, 12, 1.0);
    let dropout = Some(Dropout::new(13, 9, 2, 0.1));
    let (want_p, want_d) =
        host::masked_softmax_dropout(heads as usize, s as usize, &scores, &key_bias, dropout);
    let mut probs = up(&k, &scores);
    let mut dropped = zeros(&k, n);
    k.masked_softmax_dropout_forward(
        (tasks, heads, s),
        &mut probs,
        &up(&k, &key_bias),
        dropout,
        &mut dropped,
    )
    .unwrap();
    close("softmax probs", &down(&k, &probs), &want_p, 1e-5);
    let got_d = down(&k, &dropped);
    close("softmax dropped", &got_d, &want_d, 1e-5);
    assert_eq!(
        got_d.iter().map(|v| *v == 0.0).collect::<Vec<_>>(),
        want_d.iter().map(|v| *v == 0.0).collect::<Vec<_>>(),
        "the same elements dropped"
    );
    let mut gs = up(&k, &g);
    k.masked_softmax_dropout_backward((tasks, s), &probs, &mut gs, dropout)
        .unwrap();
    let want_g = host::masked_softmax_dropout_backward(s as usize, &want_p, &g, dropout);
    close("softmax backward", &down(&k, &gs), &want_g, 1e-5);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_mlm_loss_over_gathered_rows_matches_the_cpu_reference() {
    let k = kernels();
    let (positions, cols) = (640usize, 30_522u32);
    let hidden_rows = 4096usize;
    let table = values(hidden_rows * 8, 14, 1.0);
    let index: Vec<u32> = (0..positions as u32)
        .map(|i| (i * 37) % hidden_rows as u32)
        .collect();
    let mut gathered = zeros(&k, positions * 8);
    k.gather_rows(8, &up(&k, &table), &up(&k, &index), &mut gathered)
        .unwrap();
    assert_eq!(down(&k, &gathered), host::gather_rows(8, &table, &index));
    let logits = values(positions * cols as usize, 15, 10.0);
    let labels: Vec<u32> = (0..positions as u32).map(|i| (i * 7919) % cols).collect();
    let (want_lp, want_lse, want_max) = host::label_log_probs(cols as usize, &logits, &labels);
    let (lg, lb) = (up(&k, &logits), up(&k, &labels));
    let (mut lp, mut lse) = (zeros(&k, positions), zeros(&k, positions));
    let mut is_max = k.dev.alloc_zeros::<u8>(positions).unwrap();
    k.label_log_probs_forward(cols, &lg, &lb, (&mut lp, &mut lse, &mut is_max))
        .unwrap();
    close("label log-probs", &down(&k, &lp), &want_lp, 1e-5);
    let got_max: Vec<bool> = down(&k, &is_max).iter().map(|&v| v == 1).collect();
    assert_eq!(got_max, want_max);
    let gout = values(positions, 16, 1.0);
    let mut gx = zeros(&k, logits.len());
    k.label_log_probs_backward(cols, (&lg, &lse), &lb, &up(&k, &gout), &mut gx)
        .unwrap();
    let want_g = host::label_log_probs_backward(cols as usize, &logits, &want_lse, &labels, &gout);
    close("label log-probs gradient", &down(&k, &gx), &want_g, 1e-5);
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_adamw_and_gradient_norm_match_the_cpu_bit_for_bit() {
    let k = kernels();
    // Three parameters, decayed / not / decayed, boundaries not on any block edge.
    let named = vec![
        ("dense.weight".to_string(), values(300_007, 17, 1.0)),
        ("dense.bias".to_string(), values(13, 18, 1.0)),
        ("LayerNorm.weight".to_string(), values(70_001, 19, 1.0)),
    ];
    let grads = ParamGrads::from_named(named);
    let layout: FlatLayout = grads.layout.clone();
    let n = layout.len();
    let config = AdamWConfig {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-6,
        weight_decay: 0.01,
    };
    let mut p_cpu = values(n, 20, 0.5);
    let (mut m_cpu, mut v_cpu) = (vec![0.0f32; n], vec![0.0f32; n]);
    let (mut p, mut m, mut v) = (up(&k, &p_cpu), zeros(&k, n), zeros(&k, n));
    let g = up(&k, &grads.flat);
    let table = k.upload_layout(&layout).unwrap();
    let norm = grads.global_norm();
    let gpu_norm = k.global_norm(&g).unwrap();
    assert!(
        (gpu_norm - norm).abs() < 1e-9 * norm,
        "{gpu_norm} vs {norm}"
    );
    for t in 1..=3u64 {
        let step = AdamWStep::new(&config, t, 1e-3 * t as f64, Some(0.25));
        adamw_fused(
            &layout,
            &step,
            &mut p_cpu,
            &grads.flat,
            &mut m_cpu,
            &mut v_cpu,
        );
        k.adamw((&table.0, &table.1), &step, &mut p, &g, &mut m, &mut v)
            .unwrap();
    }
    assert_eq!(down(&k, &p), p_cpu, "parameters bit for bit");
    assert_eq!(down(&k, &m), m_cpu, "first moments bit for bit");
    assert_eq!(down(&k, &v), v_cpu, "second moments bit for bit");
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn cuda_bf16_casts_match_the_cpu_bit_for_bit() {
    let k = kernels();
    let mut x = values(100_003, 21, 1000.0);
    x.extend([
        0.0,
        -0.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        1e-40,
        f32::from_bits(0x3f80_8000),
    ]);
    let mut b = k.dev.alloc_zeros::<u16>(x.len()).unwrap();
    k.to_bf16(&up(&k, &x), &mut b).unwrap();
    let want: Vec<u16> = x.iter().map(|&v| host::f32_to_bf16(v)).collect();
    assert_eq!(down(&k, &b), want);
    let mut back = zeros(&k, x.len());
    k.from_bf16(&b, &mut back).unwrap();
    let want: Vec<f32> = want.iter().map(|&v| host::bf16_to_f32(v)).collect();
    assert_eq!(down(&k, &back), want);
}
