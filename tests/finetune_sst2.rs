//! End to end on real rows: a tiny BERT fine-tuned from scratch on an SST-2 subset must beat
//! the majority class on the full SST-2 dev set.

use std::path::Path;

use bertline::config::{BertConfig, VocabConfig};
use bertline::finetune::{
    convert_examples_to_features, majority_class_accuracy, predict_sequence_classifier,
    prediction_targets, predictions_from_logits, subsample, train_sequence_classifier, TrainLog,
    TrainingRecipe,
};
use bertline::metrics::{accuracy, Targets};
use bertline::model::{init, BertForSequenceClassification};
use bertline::progress::NoProgress;
use bertline::tasks::glue_preset;
use bertline::tokenize::train_wordpiece;
use dfdx::tensor::Cpu;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

#[test]
fn tiny_model_beats_the_majority_class_on_sst2() {
    let glue = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/glue");
    let task = glue_preset("sst2", &glue).unwrap();
    let train = subsample(&task.load_train().unwrap(), 4000, 7);
    let dev = task.load(&task.dev[0].table).unwrap();
    // A 1,000-token WordPiece vocabulary trained on the training subset itself.
    let vocab = VocabConfig {
        vocab_size: 1000,
        lowercase: true,
        min_frequency: 2,
        limit_alphabet: 200,
        max_words: bertline::config::MAX_WORDS,
    };
    let lines: Vec<&str> = train.iter().map(|e| e.text_a.as_str()).collect();
    let wp = train_wordpiece(&vocab, lines.into_iter(), &task.train.path).unwrap();
    let tokenizer = wp.tokenizer();
    let train_features = convert_examples_to_features(&train, tokenizer, 64).unwrap();
    let dev_features = convert_examples_to_features(&dev, tokenizer, 64).unwrap();

    // A [model] table as pipeline.toml writes it.
    let config: BertConfig = toml::from_str(
        "vocab_size = 1000\nhidden_size = 32\nnum_hidden_layers = 1\nnum_attention_heads = 2\n\
         intermediate_size = 64\nmax_position_embeddings = 64",
    )
    .unwrap();
    let device = Cpu::seed_from_u64(1);
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut model =
        BertForSequenceClassification::new(&config, 2, &mut init(&config, &device, &mut rng));
    // [finetune] learning_rate = 2e-3, batch 32, 3 epochs, 10% warmup, seed 1.
    let finetune: bertline::config::FinetuneConfig = toml::from_str(
        "learning_rate = 2e-3\ntrain_batch_size = 32\nnum_train_epochs = 3.0\nseeds = [1]",
    )
    .unwrap();
    let recipe = TrainingRecipe::for_task(&finetune, "sst2");
    assert_eq!(recipe.warmup_proportion, 0.1);
    let log = TrainLog {
        task: "sst2",
        arm: "scratch",
        seed: 1,
        writer: None,
    };
    let stats = train_sequence_classifier(
        &mut model,
        &train_features,
        &recipe,
        1,
        &device,
        &NoProgress,
        log,
    )
    .unwrap();
    // int(4000 / 32 * 3) steps, 10% warmup, three epoch losses, falling.
    assert_eq!((stats.steps, stats.warmup_steps), (375, 37));
    assert_eq!(stats.epoch_losses.len(), 3);
    assert!(
        stats.epoch_losses[2] < stats.epoch_losses[0],
        "{:?}",
        stats.epoch_losses
    );

    let logits = predict_sequence_classifier(&model, &dev_features, &device);
    let predictions = predictions_from_logits(&task.kind, &logits);
    let Targets::Classes(predicted) = prediction_targets(&predictions) else {
        panic!("classification predictions")
    };
    let Targets::Classes(gold) = task.gold(&dev, &task.dev[0].table.path).unwrap() else {
        panic!("classification gold")
    };
    let majority = majority_class_accuracy(&gold);
    let acc = accuracy(&predicted, &gold);
    eprintln!(
        "SST-2 dev accuracy {acc:.4} (majority class {majority:.4}), {:.0} train examples/s",
        stats.examples_per_s
    );
    assert!((majority - 444.0 / 872.0).abs() < 1e-12);
    assert!(
        acc > majority + 0.08,
        "accuracy {acc} vs majority {majority}"
    );
}
