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
    assert!(!grads.names.is_empty());
    for (name, g) in grads.names.iter().zip(&grads.values) {
        assert!(g.iter().all(|x| x.is_finite()), "{name}: non-finite gradient");
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
    // HF BertForPreTraining has 5 + 16 per layer + 2 + 8 distinct parameters.
    assert_eq!(g.names.len(), 5 + 16 * config.num_hidden_layers + 2 + 8);
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
    assert!(g.names.contains(&"classifier.weight".to_string()));
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

    let qa = BertForQuestionAnswering::new(&config, &mut bertline::model::init(&config, &dev, &mut rng));
    let out = qa.forward::<TrainTape<Cpu>>(&inputs, &mut Mode::train(2));
    assert_eq!(*out.start_logits.shape(), (2, 8));
    let loss = qa.loss(out, &[2, 3], &[3, 4]);
    let mut grads = loss.backward();
    let g = ParamGrads::from_gradients(&qa, &mut grads);
    assert!(g.names.contains(&"qa_outputs.weight".to_string()));
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
        assert!((values[i] as f64 - f).abs() < 1e-6, "gelu({}) = {} vs {f}", xs[i], values[i]);
        // dfdx 0.13's own gradient is off by up to 0.1 here (x·φ(x)·(sqrt 2 − 1)).
        assert!((dx[i] as f64 - df).abs() < 1e-5, "gelu'({}) = {} vs {df}", xs[i], dx[i]);
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
    let config = tiny_config();
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
        "bert.encoder.layer.0.attention.self.key.bias",
        "bert.encoder.layer.1.intermediate.dense.weight",
        "bert.encoder.layer.1.output.LayerNorm.bias",
        "bert.pooler.dense.weight",
        "cls.predictions.bias",
        "cls.predictions.transform.dense.weight",
        "cls.seq_relationship.weight",
    ];
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let normal = Normal::new(0.0f32, 1.0).unwrap();
    for name in checked {
        let index = analytic.names.iter().position(|n| n == name).unwrap();
        let original = model.named_parameters()[index].1.to_vec();
        let direction: Vec<f32> = original.iter().map(|_| normal.sample(&mut rng)).collect();
        let expected: f64 = analytic.values[index]
            .iter()
            .zip(&direction)
            .map(|(&g, &u)| g as f64 * u as f64)
            .sum();
        // Central difference with step h along `direction` (entries ~N(0,1)). The loss is
        // ~4 in f32, so each evaluation carries ~4·6e-8 rounding; divided by 2h = 2e-2 that
        // is ~1e-5 absolute. Truncation is h²/6·(third derivative) ~ 1e-5 for this smooth
        // model. Tolerance: 2% of the derivative plus 2e-4.
        let h = 1e-2f32;
        let mut shifted = |sign: f32| {
            let values: Vec<f32> = original
                .iter()
                .zip(&direction)
                .map(|(&p, &u)| p + sign * h * u)
                .collect();
            model.named_parameters_mut()[index].1.copy_from(&values);
            eval_loss(&model)
        };
        let numeric = (shifted(1.0) - shifted(-1.0)) / (2.0 * h as f64);
        model.named_parameters_mut()[index].1.copy_from(&original);
        assert!(
            (numeric - expected).abs() <= 0.02 * expected.abs() + 2e-4,
            "{name}: analytic {expected} vs numeric {numeric}"
        );
        assert!(expected.abs() > 1e-4, "{name}: directional derivative too small to test");
    }
}

#[test]
fn changing_a_padded_token_leaves_unpadded_outputs_unchanged() {
    let config = tiny_config();
    let (dev, model) = tiny_model(&config, 9);
    let batch = tiny_batch();
    let run = |ids: &[u32]| {
        let inputs = BertInputs::new(&dev, 2, 8, ids, &batch.token_type_ids, &batch.attention_mask);
        let out = model.bert.forward_inputs::<NoneTape>(&inputs, &mut Mode::Eval);
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
    let x: Tensor<(usize,), f32, Cpu> = dev.tensor_from_vec(vec![1.0; n], (n,));
    let y = Mode::train(3).dropout(x, 0.1).as_vec();
    let kept = y.iter().filter(|&&v| v != 0.0).count() as f64 / n as f64;
    // Binomial(100000, 0.9): std of the fraction ~0.001; 5 sigma.
    assert!((kept - 0.9).abs() < 0.005, "kept {kept}");
    assert!(y.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6));
}
