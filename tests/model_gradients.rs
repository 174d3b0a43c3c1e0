//! Gradients of the dfdx BERT: every parameter is reached, GELU and the whole model agree
//! with finite differences, the padding mask and dropout behave.

mod model_common;

use bertline::model::{
    gelu, BertForQuestionAnswering, BertForSequenceClassification, BertInputs, HfParams, Mode,
    TrainTape,
};
use bertline::optim::ParamGrads;
use dfdx::prelude::*;
use model_common::{tiny_batch, tiny_config, tiny_model};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

fn assert_all_nonzero_finite(grads: &ParamGrads, skip: &[&str]) {
    assert!(!grads.layout.names.is_empty());
    for (name, g) in grads.iter() {
        assert!(
            g.iter().all(|x| x.is_finite()),
            "{name}: non-finite gradient"
        );
        if skip.iter().any(|s| name.starts_with(s)) {
            continue;
        }
        assert!(g.iter().any(|&x| x != 0.0), "{name}: zero gradient");
    }
}

#[test]
fn every_pretraining_parameter_gets_a_nonzero_finite_gradient() {
    let config = tiny_config();
    let (_dev, model) = tiny_model(&config, 1);
    let out = model.loss::<TrainTape<Cpu>>(&tiny_batch(), &mut Mode::train(7));
    assert!(out.loss.array().is_finite());
    let mut grads = out.loss.backward();
    let g = ParamGrads::from_gradients(&model, &mut grads);
    // HF BertForPreTraining: 5 embedding + 16 per layer + 2 pooler + 7 head parameters
    // (the decoder weight and bias are tied, not separate).
    assert_eq!(
        g.layout.names.len(),
        5 + 16 * config.num_hidden_layers + 2 + 7
    );
    assert_all_nonzero_finite(&g, &[]);
}

#[test]
fn every_classifier_and_qa_parameter_gets_a_gradient() {
    let config = tiny_config();
    let dev = Cpu::seed_from_u64(3);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let batch = tiny_batch();
    let inputs = batch.inputs(&dev);

    let classifier = BertForSequenceClassification::new(
        &config,
        3,
        &mut bertline::model::init(&config, &dev, &mut rng),
    );
    let logits = classifier.forward::<TrainTape<Cpu>>(&inputs, &mut Mode::train(1));
    assert_eq!(*logits.shape(), (2, 3));
    let loss = classifier.loss(logits, &[2.0, 0.0]);
    let mut grads = loss.backward();
    let g = ParamGrads::from_gradients(&classifier, &mut grads);
    assert!(g.layout.names.contains(&"classifier.weight".to_string()));
    assert_all_nonzero_finite(&g, &[]);

    let regressor = BertForSequenceClassification::new(
        &config,
        1,
        &mut bertline::model::init(&config, &dev, &mut rng),
    );
    let logits = regressor.forward::<TrainTape<Cpu>>(&inputs, &mut Mode::Eval);
    let loss = regressor.loss(logits, &[4.5, 1.0]);
    let mut grads = loss.backward();
    assert_all_nonzero_finite(&ParamGrads::from_gradients(&regressor, &mut grads), &[]);

    let qa =
        BertForQuestionAnswering::new(&config, &mut bertline::model::init(&config, &dev, &mut rng));
    let out = qa.forward::<TrainTape<Cpu>>(&inputs, &mut Mode::train(2));
    assert_eq!(*out.start_logits.shape(), (2, 8));
    let loss = qa.loss(out, &[2, 3], &[3, 4]);
    let mut grads = loss.backward();
    let g = ParamGrads::from_gradients(&qa, &mut grads);
    assert!(g.layout.names.contains(&"qa_outputs.weight".to_string()));
    // HF's QA model has no pooler; ours keeps an unused one.
    assert_all_nonzero_finite(&g, &["bert.pooler."]);
}

/// Exact GELU value and derivative at `x`, in f64 (erf by its Maclaurin series, |x| <= 3).
fn gelu_reference(x: f64) -> (f64, f64) {
    let z = x / std::f64::consts::SQRT_2;
    let mut term = z;
    let mut erf = 0.0;
    for n in 0..60 {
        erf += term / (2 * n + 1) as f64;
        term *= -z * z / (n + 1) as f64;
    }
    erf *= 2.0 / std::f64::consts::PI.sqrt();
    let cdf = 0.5 * (1.0 + erf);
    let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
    (x * cdf, cdf + x * pdf)
}

#[test]
fn gelu_value_and_gradient_match_the_exact_function() {
    let dev = Cpu::default();
    let xs: Vec<f32> = (-30..=30).map(|i| i as f32 / 10.0).collect();
    let n = xs.len();
    let x: Tensor<(usize,), f32, Cpu> = dev.tensor_from_vec(xs.clone(), (n,));
    let y = gelu(x.leaky_trace());
    let values = y.as_vec();
    let grads = y.sum::<(), Axis<0>>().backward();
    let dx = grads.get(&x).as_vec();
    for i in 0..n {
        let (f, df) = gelu_reference(xs[i] as f64);
        // f32 evaluation of erf: ~1e-7 relative.
        assert!(
            (values[i] as f64 - f).abs() < 1e-6,
            "gelu({}) = {} vs {f}",
            xs[i],
            values[i]
        );
        // dfdx 0.13's own gradient is off by up to 0.1 here (x·φ(x)·(sqrt 2 − 1)).
        assert!(
            (dx[i] as f64 - df).abs() < 1e-5,
            "gelu'({}) = {} vs {df}",
            xs[i],
            dx[i]
        );
    }
    // Without a tape (evaluation), the same values.
    let plain = gelu(dev.tensor_from_vec(xs, (n,))).as_vec();
    assert_eq!(plain, values);
}

/// Loss of the fixed batch with dropout off.
fn eval_loss(model: &bertline::model::BertForPreTraining<Cpu>) -> f64 {
    model
        .loss::<NoneTape>(&tiny_batch(), &mut Mode::Eval)
        .loss
        .array() as f64
}

#[test]
fn model_gradient_matches_central_differences_along_random_directions() {
    // initializer_range 0.2 instead of 0.02: attention is far from uniform and every
    // tensor's gradient is well above the f32 resolution of the loss.
    let mut config = tiny_config();
    config.initializer_range = 0.2;
    let (_dev, mut model) = tiny_model(&config, 5);
    let out = model.loss::<TrainTape<Cpu>>(&tiny_batch(), &mut Mode::Eval);
    let mut grads = out.loss.backward();
    let analytic = ParamGrads::from_gradients(&model, &mut grads);

    let checked = [
        "bert.embeddings.word_embeddings.weight",
        "bert.embeddings.position_embeddings.weight",
        "bert.embeddings.token_type_embeddings.weight",
        "bert.embeddings.LayerNorm.weight",
        "bert.encoder.layer.0.attention.self.query.weight",
        "bert.encoder.layer.0.attention.self.key.weight",
        "bert.encoder.layer.0.attention.self.value.bias",
        "bert.encoder.layer.1.intermediate.dense.weight",
        "bert.encoder.layer.1.output.LayerNorm.bias",
        "bert.pooler.dense.weight",
        "cls.predictions.bias",
        "cls.predictions.transform.dense.weight",
        "cls.seq_relationship.weight",
    ];
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let normal = Normal::new(0.0f64, 1.0).unwrap();
    let mut failures = Vec::new();
    for name in checked {
        let index = analytic.layout.position(name).unwrap();
        let original = model.named_parameters()[index].1.to_vec();
        let grad = &analytic.flat[analytic.layout.range(index)];
        // Direction: half along the gradient, half random, unit norm. A gradient that is
        // wrong by a factor shows along the first half; a missing component along the second.
        let g_norm = grad.iter().map(|&g| (g as f64).powi(2)).sum::<f64>().sqrt();
        let random: Vec<f64> = grad.iter().map(|_| normal.sample(&mut rng)).collect();
        let r_norm = random.iter().map(|r| r * r).sum::<f64>().sqrt();
        let mut direction: Vec<f64> = grad
            .iter()
            .zip(&random)
            .map(|(&g, r)| g as f64 / g_norm + r / r_norm)
            .collect();
        let d_norm = direction.iter().map(|d| d * d).sum::<f64>().sqrt();
        direction.iter_mut().for_each(|d| *d /= d_norm);
        let expected: f64 = grad
            .iter()
            .zip(&direction)
            .map(|(&g, u)| g as f64 * u)
            .sum();
        // Central difference, step h = 1e-2 along the unit direction (weights are ~0.02 each,
        // a tensor's norm is >= 0.1). The loss is ~4 in f32: each evaluation carries ~2.4e-7
        // rounding, ~1.2e-5 after dividing by 2h. Truncation is h^2/6 times a third
        // derivative of order 1: ~2e-5. Tolerance: 1% of the derivative plus 1e-4.
        let h = 1e-2;
        let mut shifted = |sign: f64| {
            let values: Vec<f32> = original
                .iter()
                .zip(&direction)
                .map(|(&p, u)| (p as f64 + sign * h * u) as f32)
                .collect();
            model.named_parameters_mut()[index].1.copy_from(&values);
            eval_loss(&model)
        };
        let numeric = (shifted(1.0) - shifted(-1.0)) / (2.0 * h);
        model.named_parameters_mut()[index].1.copy_from(&original);
        if (numeric - expected).abs() > 0.01 * expected.abs() + 1e-4 || expected.abs() < 1e-3 {
            failures.push(format!("{name}: analytic {expected} vs numeric {numeric}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn changing_a_padded_token_leaves_unpadded_outputs_unchanged() {
    let config = tiny_config();
    let (dev, model) = tiny_model(&config, 9);
    let batch = tiny_batch();
    let run = |ids: &[u32]| {
        let inputs = BertInputs::new(
            &dev,
            2,
            8,
            ids,
            &batch.token_type_ids,
            &batch.attention_mask,
        );
        let out = model
            .bert
            .forward_inputs::<NoneTape>(&inputs, &mut Mode::Eval);
        (out.sequence_output.as_vec(), out.pooled_output.as_vec())
    };
    let (seq_a, pooled_a) = run(&batch.input_ids);
    let mut changed = batch.input_ids.clone();
    changed[14] = 37; // row 1, position 6: padding
    changed[15] = 5;
    let (seq_b, pooled_b) = run(&changed);
    let h = config.hidden_size;
    // Row 0 entirely, row 1 positions 0..5 (real tokens): identical bits.
    assert_eq!(seq_a[..8 * h], seq_b[..8 * h]);
    assert_eq!(seq_a[8 * h..13 * h], seq_b[8 * h..13 * h]);
    assert_eq!(pooled_a, pooled_b);
    // A real token does change them (the check is not vacuous).
    changed[12] = 31;
    let (seq_c, _) = run(&changed);
    assert_ne!(seq_a[8 * h..13 * h], seq_c[8 * h..13 * h]);
}

#[test]
fn dropout_is_off_in_eval_and_seeded_in_training() {
    let config = tiny_config();
    let (_dev, model) = tiny_model(&config, 4);
    let batch = tiny_batch();
    let loss = |mode: &mut Mode| model.loss::<NoneTape>(&batch, mode).loss.array();
    let eval = loss(&mut Mode::Eval);
    assert_eq!(eval, loss(&mut Mode::Eval));
    let train_a = loss(&mut Mode::train(1));
    assert_eq!(train_a, loss(&mut Mode::train(1)));
    assert_ne!(train_a, eval);
    assert_ne!(train_a, loss(&mut Mode::train(2)));
}

#[test]
fn mode_dropout_keeps_the_expected_fraction_and_scales() {
    let dev = Cpu::default();
    let n = 100_000;
    let x: Tensor<(usize, usize), f32, Cpu> = dev.tensor_from_vec(vec![1.0; n], (n, 1));
    let y = Mode::train(3).dropout(x, 0.1).as_vec();
    let kept = y.iter().filter(|&&v| v != 0.0).count() as f64 / n as f64;
    // Binomial(100000, 0.9): std of the fraction ~0.001; 5 sigma.
    assert!((kept - 0.9).abs() < 0.005, "kept {kept}");
    assert!(y.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
}
