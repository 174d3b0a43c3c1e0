//! The fused CPU kernels (linear layers included) against their dfdx compositions (`model::device::reference`): the same
//! values and the same gradients for every input and parameter, on odd shapes (5 tokens,
//! head size 3) with padding and dropout, so a stride or a missing term shows up.

use bertline::model::device::reference;
use bertline::model::{BertDevice, Dropout, Matrix, Vector};
use dfdx::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const TOLERANCE: f32 = 2e-5;

fn random(rng: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(-1.0..1.0) * scale).collect()
}

fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let worst = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs() / w.abs().max(1.0))
        .fold(0.0f32, f32::max);
    assert!(worst < TOLERANCE, "{what}: max relative error {worst}");
    // A kernel that returned zeros would pass a loose check against zeros: make sure the
    // reference is not trivially zero.
    assert!(
        want.iter().any(|&w| w != 0.0),
        "{what}: reference is all zeros"
    );
}

/// `Σ out ⊙ weights`: a scalar whose gradient sends `weights` back into the kernel.
fn project(out: Matrix<Cpu, OwnedTape<f32, Cpu>>, weights: &[f32]) -> Gradients<f32, Cpu> {
    let w = out.device().tensor_from_vec(weights.to_vec(), *out.shape());
    (out * w).sum::<(), _>().backward()
}

fn matrix(dev: &Cpu, values: Vec<f32>, shape: (usize, usize)) -> Matrix<Cpu> {
    dev.tensor_from_vec(values, shape)
}

fn vector(dev: &Cpu, values: Vec<f32>) -> Vector<Cpu> {
    let n = values.len();
    dev.tensor_from_vec(values, (n,))
}

#[test]
fn linear_matches_the_composition() {
    let dev = Cpu::default();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    // Odd sizes and more rows than one parallel block, so a stride or a transposition shows.
    let (rows, inner, outs) = (70, 13, 9);
    let x = matrix(&dev, random(&mut rng, rows * inner, 1.0), (rows, inner));
    let weight = matrix(&dev, random(&mut rng, outs * inner, 1.0), (outs, inner));
    let b = vector(&dev, random(&mut rng, outs, 1.0));
    let w = random(&mut rng, rows * outs, 1.0);
    let run = |fused: bool| {
        let xt = x.leaky_trace();
        let out = if fused {
            <Cpu as BertDevice>::linear(xt, &weight, &b)
        } else {
            reference::linear(xt, &weight, &b)
        };
        let values = out.as_vec();
        let g = project(out, &w);
        (
            values,
            g.get(&x).as_vec(),
            g.get(&weight).as_vec(),
            g.get(&b).as_vec(),
        )
    };
    let (fused, reference) = (run(true), run(false));
    assert_close("linear value", &fused.0, &reference.0);
    assert_close("linear dx", &fused.1, &reference.1);
    assert_close("linear dweight", &fused.2, &reference.2);
    assert_close("linear dbias", &fused.3, &reference.3);
    // One value by hand: row 0, output 0.
    let (xv, wv, bv) = (x.as_vec(), weight.as_vec(), b.as_vec());
    let by_hand = bv[0] + (0..inner).map(|i| xv[i] * wv[i]).sum::<f32>();
    assert!(
        (fused.0[0] - by_hand).abs() < 1e-5,
        "{} vs {by_hand}",
        fused.0[0]
    );
}

#[test]
fn add_bias_matches_the_composition() {
    let dev = Cpu::default();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let shape = (70, 9); // more rows than one parallel block
    let x = matrix(&dev, random(&mut rng, 630, 1.0), shape);
    let b = vector(&dev, random(&mut rng, 9, 1.0));
    let w = random(&mut rng, 630, 1.0);
    let run = |fused: bool| {
        let xt = x.leaky_trace();
        let out = if fused {
            <Cpu as BertDevice>::add_bias(xt, &b)
        } else {
            reference::add_bias(xt, &b)
        };
        let values = out.as_vec();
        let g = project(out, &w);
        (values, g.get(&x).as_vec(), g.get(&b).as_vec())
    };
    let (fused, reference) = (run(true), run(false));
    assert_close("add_bias value", &fused.0, &reference.0);
    assert_close("add_bias dx", &fused.1, &reference.1);
    assert_close("add_bias dbias", &fused.2, &reference.2);
}

#[test]
fn layer_norm_matches_the_composition() {
    let dev = Cpu::default();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let shape = (67, 11);
    let x = matrix(&dev, random(&mut rng, 67 * 11, 3.0), shape);
    let gamma = vector(&dev, random(&mut rng, 11, 1.0));
    let beta = vector(&dev, random(&mut rng, 11, 1.0));
    let w = random(&mut rng, 67 * 11, 1.0);
    let run = |fused: bool| {
        let xt = x.leaky_trace();
        let out = if fused {
            <Cpu as BertDevice>::layer_norm(xt, &gamma, &beta, 1e-12)
        } else {
            reference::layer_norm(xt, &gamma, &beta, 1e-12)
        };
        let values = out.as_vec();
        let g = project(out, &w);
        (
            values,
            g.get(&x).as_vec(),
            g.get(&gamma).as_vec(),
            g.get(&beta).as_vec(),
        )
    };
    let (fused, reference) = (run(true), run(false));
    assert_close("layer_norm value", &fused.0, &reference.0);
    assert_close("layer_norm dx", &fused.1, &reference.1);
    assert_close("layer_norm dgamma", &fused.2, &reference.2);
    assert_close("layer_norm dbeta", &fused.3, &reference.3);
}

#[test]
fn residual_layer_norm_matches_the_composition() {
    let dev = Cpu::default();
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    // More rows than one parallel block (a block of 64 rows of 11 starts mid-way through a
    // Philox counter block); dropout 0.1.
    let (rows, cols) = (131, 11);
    let x = matrix(&dev, random(&mut rng, rows * cols, 3.0), (rows, cols));
    let r = matrix(&dev, random(&mut rng, rows * cols, 2.0), (rows, cols));
    let gamma = vector(&dev, random(&mut rng, cols, 1.0));
    let beta = vector(&dev, random(&mut rng, cols, 1.0));
    let w = random(&mut rng, rows * cols, 1.0);
    for mask in [Some(Dropout::new(11, 3, 2, 0.1)), None] {
        let run = |fused: bool| {
            let (xt, rt) = (x.leaky_trace(), r.leaky_trace());
            let out = if fused {
                <Cpu as BertDevice>::residual_layer_norm(xt, rt, mask, &gamma, &beta, 1e-12)
            } else {
                reference::residual_layer_norm(xt, rt, mask, &gamma, &beta, 1e-12)
            };
            let values = out.as_vec();
            let g = project(out, &w);
            (
                values,
                g.get(&x).as_vec(),
                g.get(&r).as_vec(),
                g.get(&gamma).as_vec(),
                g.get(&beta).as_vec(),
            )
        };
        let (fused, reference) = (run(true), run(false));
        let what = if mask.is_some() {
            "with dropout"
        } else {
            "no dropout"
        };
        assert_close(
            &format!("residual_layer_norm value, {what}"),
            &fused.0,
            &reference.0,
        );
        assert_close(
            &format!("residual_layer_norm dx, {what}"),
            &fused.1,
            &reference.1,
        );
        assert_close(
            &format!("residual_layer_norm dresidual, {what}"),
            &fused.2,
            &reference.2,
        );
        assert_close(
            &format!("residual_layer_norm dgamma, {what}"),
            &fused.3,
            &reference.3,
        );
        assert_close(
            &format!("residual_layer_norm dbeta, {what}"),
            &fused.4,
            &reference.4,
        );
        if mask.is_some() {
            // Dropped positions pass no gradient to x, but still to the residual.
            assert!(fused.1.iter().filter(|g| **g == 0.0).count() > rows * cols / 20);
            assert!(fused.2.iter().all(|g| *g != 0.0));
        }
    }
}

#[test]
fn gelu_and_dropout_match_the_composition() {
    let dev = Cpu::default();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let shape = (40, 13);
    let x = matrix(&dev, random(&mut rng, 520, 4.0), shape);
    let keep = Dropout::new(3, 1, 4, 0.1);
    let w = random(&mut rng, 520, 1.0);
    let run = |fused: bool| {
        let xt = x.leaky_trace();
        let out = if fused {
            let y = <Cpu as BertDevice>::gelu(xt);
            <Cpu as BertDevice>::dropout(y, keep)
        } else {
            reference::dropout(reference::gelu(xt), keep)
        };
        let values = out.as_vec();
        let g = project(out, &w);
        (values, g.get(&x).as_vec())
    };
    let (fused, reference) = (run(true), run(false));
    assert_close("gelu+dropout value", &fused.0, &reference.0);
    assert_close("gelu+dropout dx", &fused.1, &reference.1);
    assert!(fused.0.contains(&0.0), "some values were dropped");
}

#[test]
fn attention_matches_the_composition_with_padding_and_dropout() {
    let dev = Cpu::default();
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let (batch, seq, heads, head_size) = (3, 5, 2, 3);
    let hidden = heads * head_size;
    let rows = batch * seq;
    let q = matrix(&dev, random(&mut rng, rows * hidden, 2.0), (rows, hidden));
    let k = matrix(&dev, random(&mut rng, rows * hidden, 2.0), (rows, hidden));
    let v = matrix(&dev, random(&mut rng, rows * hidden, 2.0), (rows, hidden));
    // Sequence 0 has no padding, 1 pads its last 2 keys, 2 pads its last one.
    let lengths = [5, 3, 4];
    let bias: Vec<f32> = (0..rows)
        .map(|r| {
            if r % seq < lengths[r / seq] {
                0.0
            } else {
                -10000.0
            }
        })
        .collect();
    let bias = matrix(&dev, bias, (batch, seq));
    let w = random(&mut rng, rows * hidden, 1.0);
    let keep = Dropout::new(4, 9, 1, 0.2);
    for dropout in [None, Some(keep)] {
        let run = |fused: bool| {
            // Three tapes, merged by the kernel, as in the model.
            let (qt, kt, vt) = (q.leaky_trace(), k.leaky_trace(), v.leaky_trace());
            let out = if fused {
                <Cpu as BertDevice>::attention(qt, kt, vt, &bias, heads, dropout)
            } else {
                reference::attention(qt, kt, vt, &bias, heads, dropout)
            };
            let values = out.as_vec();
            let g = project(out, &w);
            (
                values,
                g.get(&q).as_vec(),
                g.get(&k).as_vec(),
                g.get(&v).as_vec(),
            )
        };
        let (fused, reference) = (run(true), run(false));
        let label = if dropout.is_some() {
            "with dropout"
        } else {
            "no dropout"
        };
        assert_close(&format!("attention value {label}"), &fused.0, &reference.0);
        assert_close(&format!("attention dq {label}"), &fused.1, &reference.1);
        assert_close(&format!("attention dk {label}"), &fused.2, &reference.2);
        assert_close(&format!("attention dv {label}"), &fused.3, &reference.3);
    }
}

#[test]
fn fused_self_attention_matches_the_composition() {
    let dev = Cpu::default();
    let mut rng = ChaCha8Rng::seed_from_u64(14);
    // Odd sizes, padding in two sequences, more rows than one parallel block of the bias fill.
    let (batch, seq, heads, head_size) = (13, 7, 3, 2);
    let hidden = heads * head_size;
    let rows = batch * seq;
    let x = matrix(&dev, random(&mut rng, rows * hidden, 2.0), (rows, hidden));
    let weights: Vec<Matrix<Cpu>> = (0..3)
        .map(|_| {
            matrix(
                &dev,
                random(&mut rng, hidden * hidden, 1.0),
                (hidden, hidden),
            )
        })
        .collect();
    let biases: Vec<Vector<Cpu>> = (0..3)
        .map(|_| vector(&dev, random(&mut rng, hidden, 1.0)))
        .collect();
    let bias: Vec<f32> = (0..rows)
        .map(|r| match r / seq {
            1 if r % seq >= 4 => -10000.0,
            5 if r % seq >= 6 => -10000.0,
            _ => 0.0,
        })
        .collect();
    let bias = matrix(&dev, bias, (batch, seq));
    let w = random(&mut rng, rows * hidden, 1.0);
    let keep = Dropout::new(4, 9, 1, 0.2);
    for dropout in [None, Some(keep)] {
        let run = |fused: bool| {
            let xt = x.leaky_trace();
            let ws = [&weights[0], &weights[1], &weights[2]];
            let bs = [&biases[0], &biases[1], &biases[2]];
            let out = if fused {
                <Cpu as BertDevice>::self_attention(xt, ws, bs, &bias, heads, dropout)
            } else {
                reference::self_attention(xt, ws, bs, &bias, heads, dropout)
            };
            let values = out.as_vec();
            let g = project(out, &w);
            let mut all = vec![values, g.get(&x).as_vec()];
            all.extend(weights.iter().map(|t| g.get(t).as_vec()));
            all.extend(biases.iter().map(|t| g.get(t).as_vec()));
            all
        };
        let (fused, reference) = (run(true), run(false));
        let label = if dropout.is_some() {
            "with dropout"
        } else {
            "no dropout"
        };
        let names = ["value", "dx", "dWq", "dWk", "dWv", "dbq", "dbk", "dbv"];
        for ((name, f), r) in names.iter().zip(&fused).zip(&reference) {
            assert_close(&format!("self_attention {name} {label}"), f, r);
        }
    }
}

#[test]
fn label_log_probs_match_the_composition() {
    let dev = Cpu::default();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let (rows, vocab) = (9, 37);
    let mut values = random(&mut rng, rows * vocab, 5.0);
    let labels: Vec<usize> = (0..rows).map(|_| rng.gen_range(0..vocab)).collect();
    // Row 0's label is its maximum, row 1's label ties with another logit.
    values[labels[0]] = 100.0;
    values[vocab + labels[1]] = 50.0;
    values[vocab + (labels[1] + 1) % vocab] = 50.0;
    let x = matrix(&dev, values, (rows, vocab));
    let w = random(&mut rng, rows, 1.0);
    let run = |fused: bool| {
        let xt = x.leaky_trace();
        let (out, is_max) = if fused {
            <Cpu as BertDevice>::label_log_probs(xt, &labels)
        } else {
            reference::label_log_probs(xt, &labels)
        };
        let values = out.as_vec();
        let weights = dev.tensor_from_vec(w.clone(), (rows,));
        let g = (out * weights).sum::<(), _>().backward();
        (values, g.get(&x).as_vec(), is_max)
    };
    let (fused, reference) = (run(true), run(false));
    assert_close("label_log_probs value", &fused.0, &reference.0);
    assert_close("label_log_probs dx", &fused.1, &reference.1);
    assert_eq!(fused.2, reference.2);
    assert!(
        fused.2[0] && fused.2[1],
        "a maximum and a tie count as right"
    );
    assert!(fused.0.iter().all(|&v| v <= 0.0), "log-probabilities");
}

#[test]
fn dropout_sites_follow_the_mode_and_repeat_per_seed() {
    use bertline::model::Mode;
    let n = 200_000;
    let (mut a, mut b) = (Mode::train(5), Mode::train(5));
    let first = a.dropout_mask(n, 0.1).unwrap();
    assert_eq!(
        first,
        b.dropout_mask(n, 0.1).unwrap(),
        "same seed, same mask"
    );
    let second = a.dropout_mask(n, 0.1).unwrap();
    assert_ne!(first, second, "each call draws a new mask");
    // The sites, in order, of (seed 5, step 0); another step, other masks.
    assert_eq!(a.next_dropout(0.1), Some(Dropout::new(5, 0, 2, 0.1)));
    assert_eq!(
        Mode::train_step(5, 3).next_dropout(0.2),
        Some(Dropout::new(5, 3, 0, 0.2))
    );
    let dropped = first.iter().filter(|&&v| v == 0.0).count() as f64 / n as f64;
    // Binomial(200000, 0.1): sd 0.00067; 6 sd.
    assert!((dropped - 0.1).abs() < 0.004, "dropped fraction {dropped}");
    assert!(first
        .iter()
        .all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
    assert!(Mode::Eval.dropout_mask(n, 0.1).is_none());
    // Probability 0 takes no site: the next mask is still site 0's.
    let mut c = Mode::train(5);
    assert!(c.dropout_mask(n, 0.0).is_none());
    assert_eq!(c.dropout_mask(n, 0.1).unwrap(), first);
}

/// Runs `f` on a rayon pool of `threads` threads.
fn with_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool")
        .install(f)
}

#[test]
fn dropout_kernels_apply_the_described_mask_whatever_the_thread_count() {
    let dev = Cpu::default();
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    // More elements than one parallel chunk (16384), not a multiple of 4.
    let (rows, cols) = (331, 61);
    let n = rows * cols;
    let x = matrix(&dev, random(&mut rng, n, 1.0), (rows, cols));
    let r = matrix(&dev, random(&mut rng, n, 1.0), (rows, cols));
    let gamma = vector(&dev, random(&mut rng, cols, 1.0));
    let beta = vector(&dev, random(&mut rng, cols, 1.0));
    let w = random(&mut rng, n, 1.0);
    let d = Dropout::new(0xdead_beef_0123, 17, 5, 0.25);
    // The dropout kernel is exactly x ⊙ mask, and its gradient exactly w ⊙ mask.
    let mask = d.mask(n);
    let out = <Cpu as BertDevice>::dropout(x.leaky_trace(), d);
    let want: Vec<f32> = x.as_vec().iter().zip(&mask).map(|(x, m)| x * m).collect();
    assert_eq!(out.as_vec(), want);
    let g = project(out, &w);
    let want: Vec<f32> = w.iter().zip(&mask).map(|(w, m)| w * m).collect();
    assert_eq!(g.get(&x).as_vec(), want);
    // Bit for bit the same values and gradients on 1, 2 and 3 threads.
    let run = || {
        let out = <Cpu as BertDevice>::residual_layer_norm(
            x.leaky_trace(),
            r.leaky_trace(),
            Some(d),
            &gamma,
            &beta,
            1e-12,
        );
        let values = out.as_vec();
        let g = project(out, &w);
        (values, g.get(&x).as_vec(), g.get(&r).as_vec())
    };
    let one = with_threads(1, run);
    assert_eq!(with_threads(2, run), one);
    assert_eq!(with_threads(3, run), one);
    // Dropped elements of x get no gradient: exactly the mask's zeros.
    let zeros = one.1.iter().filter(|g| **g == 0.0).count();
    assert_eq!(zeros, mask.iter().filter(|m| **m == 0.0).count());
}

#[test]
fn fast_erf_is_within_5e7_of_libm_everywhere() {
    use bertline::model::device::erf;
    let mut worst = 0.0f64;
    for i in -600_000..=600_000 {
        let x = i as f32 * 1e-5; // -6..6 in steps of 1e-5
        let err = (erf(x) as f64 - libm::erf(x as f64)).abs();
        worst = worst.max(err);
    }
    assert!(worst < 5e-7, "max |erf - libm::erf| = {worst:e}");
    assert_eq!(erf(0.0), 0.0);
    assert_eq!(erf(10.0), erf(4.0));
    assert!((erf(1.0) - 0.842_700_8).abs() < 2e-7);
    assert!((erf(-0.5) + 0.520_499_9).abs() < 2e-7);
}
