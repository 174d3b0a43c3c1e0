//! HF checkpoints: exact key names, bit-exact round trips, one-line errors.

mod model_common;

use bertline::model::export::{
    load_params, load_pretraining, load_sequence_classification, read_config_json,
    read_safetensors, save_pretraining, write_safetensors, CONFIG_FILE, MODEL_FILE,
};
use bertline::model::{HfParams, Mode};
use dfdx::prelude::*;
use model_common::{tiny_batch, tiny_config, tiny_model};

/// `BertForPreTraining(config).state_dict().keys()` for one layer, as transformers writes them.
const HF_KEYS_ONE_LAYER: &[&str] = &[
    "bert.embeddings.word_embeddings.weight",
    "bert.embeddings.position_embeddings.weight",
    "bert.embeddings.token_type_embeddings.weight",
    "bert.embeddings.LayerNorm.weight",
    "bert.embeddings.LayerNorm.bias",
    "bert.encoder.layer.0.attention.self.query.weight",
    "bert.encoder.layer.0.attention.self.query.bias",
    "bert.encoder.layer.0.attention.self.key.weight",
    "bert.encoder.layer.0.attention.self.key.bias",
    "bert.encoder.layer.0.attention.self.value.weight",
    "bert.encoder.layer.0.attention.self.value.bias",
    "bert.encoder.layer.0.attention.output.dense.weight",
    "bert.encoder.layer.0.attention.output.dense.bias",
    "bert.encoder.layer.0.attention.output.LayerNorm.weight",
    "bert.encoder.layer.0.attention.output.LayerNorm.bias",
    "bert.encoder.layer.0.intermediate.dense.weight",
    "bert.encoder.layer.0.intermediate.dense.bias",
    "bert.encoder.layer.0.output.dense.weight",
    "bert.encoder.layer.0.output.dense.bias",
    "bert.encoder.layer.0.output.LayerNorm.weight",
    "bert.encoder.layer.0.output.LayerNorm.bias",
    "bert.pooler.dense.weight",
    "bert.pooler.dense.bias",
    "cls.predictions.bias",
    "cls.predictions.transform.dense.weight",
    "cls.predictions.transform.dense.bias",
    "cls.predictions.transform.LayerNorm.weight",
    "cls.predictions.transform.LayerNorm.bias",
    "cls.predictions.decoder.weight",
    "cls.predictions.decoder.bias",
    "cls.seq_relationship.weight",
    "cls.seq_relationship.bias",
];

#[test]
fn saved_keys_and_shapes_are_exactly_hf_bert_for_pretraining() {
    let mut config = tiny_config();
    config.num_hidden_layers = 1;
    let (_dev, model) = tiny_model(&config, 1);
    let dir = tempfile::tempdir().unwrap();
    save_pretraining(&model, &config, dir.path()).unwrap();
    let (tensors, metadata) = read_safetensors(&dir.path().join(MODEL_FILE)).unwrap();
    let mut expected: Vec<&str> = HF_KEYS_ONE_LAYER.to_vec();
    expected.sort();
    let keys: Vec<&str> = tensors.keys().map(String::as_str).collect();
    assert_eq!(keys, expected);
    assert_eq!(metadata.get("format").map(String::as_str), Some("pt"));
    let (h, i, v) = (
        config.hidden_size,
        config.intermediate_size,
        config.vocab_size,
    );
    assert_eq!(
        tensors["bert.encoder.layer.0.intermediate.dense.weight"].0,
        vec![i, h]
    );
    assert_eq!(
        tensors["bert.encoder.layer.0.output.dense.weight"].0,
        vec![h, i]
    );
    assert_eq!(tensors["cls.predictions.decoder.weight"].0, vec![v, h]);
    assert_eq!(tensors["cls.seq_relationship.weight"].0, vec![2, h]);
    assert_eq!(
        tensors["cls.predictions.decoder.weight"],
        tensors["bert.embeddings.word_embeddings.weight"]
    );
    // Padding row of the word embeddings starts at zero (HF _init_weights).
    assert!(tensors["bert.embeddings.word_embeddings.weight"].1[..h]
        .iter()
        .all(|&x| x == 0.0));

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(CONFIG_FILE)).unwrap())
            .unwrap();
    assert_eq!(json["model_type"], "bert");
    assert_eq!(json["architectures"][0], "BertForPreTraining");
    assert_eq!(json["hidden_size"], 16);
    assert_eq!(json["layer_norm_eps"], 1e-12);
}

#[test]
fn save_then_load_is_bit_exact_and_gives_the_same_loss() {
    let config = tiny_config();
    let (dev, mut model) = tiny_model(&config, 2);
    // Perturb the LayerNorm weights so round-tripping non-trivial values is tested.
    for (name, mut p) in model.named_parameters_mut() {
        if name.contains("LayerNorm.weight") {
            let values: Vec<f32> = p
                .as_ref()
                .to_vec()
                .iter()
                .enumerate()
                .map(|(i, v)| v + i as f32 * 1e-3)
                .collect();
            p.copy_from(&values);
        }
    }
    let dir = tempfile::tempdir().unwrap();
    save_pretraining(&model, &config, dir.path()).unwrap();
    let (loaded, loaded_config) = load_pretraining(dir.path(), &dev).unwrap();
    assert_eq!(loaded_config, config);
    let a = model.named_parameters();
    let b = loaded.named_parameters();
    assert_eq!(a.len(), b.len());
    for ((na, pa), (nb, pb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        let (va, vb) = (pa.to_vec(), pb.to_vec());
        assert!(
            va.iter().zip(&vb).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{na}"
        );
    }
    let loss = |m: &bertline::model::BertForPreTraining<Cpu>| {
        m.loss::<NoneTape>(&tiny_batch(), &mut Mode::Eval)
            .loss
            .array()
    };
    assert_eq!(loss(&model).to_bits(), loss(&loaded).to_bits());
}

#[test]
fn load_accepts_a_checkpoint_without_the_tied_decoder_keys() {
    let config = tiny_config();
    let (dev, model) = tiny_model(&config, 3);
    let dir = tempfile::tempdir().unwrap();
    save_pretraining(&model, &config, dir.path()).unwrap();
    let path = dir.path().join(MODEL_FILE);
    let (mut tensors, _) = read_safetensors(&path).unwrap();
    tensors.remove("cls.predictions.decoder.weight").unwrap();
    tensors.remove("cls.predictions.decoder.bias").unwrap();
    write_safetensors(&path, &tensors, Default::default()).unwrap();
    let (loaded, _) = load_pretraining(dir.path(), &dev).unwrap();
    assert_eq!(
        loaded.cls.predictions.bias.as_vec(),
        model.cls.predictions.bias.as_vec()
    );
}

#[test]
fn hf_bert_model_checkpoint_with_bare_names_and_int_buffers_loads_as_a_classifier() {
    // HF `BertModel` files (sentence encoders, many hub models): no `bert.` prefix, no
    // pre-training heads, and an I64 `embeddings.position_ids` buffer.
    use safetensors::tensor::{Dtype, TensorView};
    let config = tiny_config();
    let (dev, model) = tiny_model(&config, 6);
    let dir = tempfile::tempdir().unwrap();
    save_pretraining(&model, &config, dir.path()).unwrap();
    let path = dir.path().join(MODEL_FILE);
    let (tensors, _) = read_safetensors(&path).unwrap();
    let bare: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .filter_map(|(name, (shape, values))| {
            let bare = name.strip_prefix("bert.")?;
            let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            Some((bare.to_string(), shape.clone(), bytes))
        })
        .collect();
    let positions: Vec<u8> = (0..config.max_position_embeddings as i64)
        .flat_map(|i| i.to_le_bytes())
        .collect();
    let mut views: Vec<(String, TensorView<'_>)> = bare
        .iter()
        .map(|(n, shape, bytes)| {
            let view = TensorView::new(Dtype::F32, shape.clone(), bytes).unwrap();
            (n.clone(), view)
        })
        .collect();
    let position_shape = vec![1, config.max_position_embeddings];
    let position_view = TensorView::new(Dtype::I64, position_shape, &positions).unwrap();
    views.push(("embeddings.position_ids".into(), position_view));
    std::fs::write(&path, safetensors::serialize(views, &None).unwrap()).unwrap();

    let (read, _) = read_safetensors(&path).unwrap();
    assert!(!read.contains_key("embeddings.position_ids"));
    let (classifier, _) = load_sequence_classification(dir.path(), 2, &dev, 1, None).unwrap();
    assert_eq!(
        classifier.bert.encoder.layer[0]
            .intermediate
            .dense
            .weight
            .as_vec(),
        model.bert.encoder.layer[0]
            .intermediate
            .dense
            .weight
            .as_vec()
    );
    assert_eq!(
        classifier.bert.pooler.dense.bias.as_vec(),
        model.bert.pooler.dense.bias.as_vec()
    );
}

#[test]
fn missing_key_and_shape_mismatch_are_one_line_errors_naming_file_and_key() {
    let config = tiny_config();
    let (dev, model) = tiny_model(&config, 4);
    let dir = tempfile::tempdir().unwrap();
    save_pretraining(&model, &config, dir.path()).unwrap();
    let path = dir.path().join(MODEL_FILE);
    let (tensors, _) = read_safetensors(&path).unwrap();

    let mut missing = tensors.clone();
    missing.remove("bert.encoder.layer.1.output.dense.bias");
    write_safetensors(&path, &missing, Default::default()).unwrap();
    let err = load_pretraining(dir.path(), &dev).unwrap_err().to_string();
    assert!(err.contains("model.safetensors"), "{err}");
    assert!(
        err.contains("bert.encoder.layer.1.output.dense.bias"),
        "{err}"
    );
    assert!(!err.contains('\n'));

    let mut wrong = tensors.clone();
    wrong.insert("bert.pooler.dense.bias".into(), (vec![3], vec![0.0; 3]));
    write_safetensors(&path, &wrong, Default::default()).unwrap();
    let err = load_pretraining(dir.path(), &dev).unwrap_err().to_string();
    assert!(
        err.contains("bert.pooler.dense.bias") && err.contains("[3]"),
        "{err}"
    );

    std::fs::write(&path, b"not a checkpoint").unwrap();
    let err = load_pretraining(dir.path(), &dev).unwrap_err().to_string();
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn classifier_from_a_pretraining_checkpoint_keeps_bert_and_gets_a_fresh_head() {
    let config = tiny_config();
    let (dev, model) = tiny_model(&config, 5);
    let dir = tempfile::tempdir().unwrap();
    save_pretraining(&model, &config, dir.path()).unwrap();
    let (classifier, _) = load_sequence_classification(dir.path(), 3, &dev, 42, None).unwrap();
    assert_eq!(
        classifier.bert.encoder.layer[1]
            .output
            .dense
            .weight
            .as_vec(),
        model.bert.encoder.layer[1].output.dense.weight.as_vec()
    );
    assert_eq!(
        *classifier.classifier.weight.shape(),
        (3, config.hidden_size)
    );
    let w = classifier.classifier.weight.as_vec();
    let std = (w.iter().map(|x| x * x).sum::<f32>() / w.len() as f32).sqrt();
    assert!(std > 0.005 && std < 0.05, "classifier init std {std}");
    assert!(classifier
        .classifier
        .bias
        .as_vec()
        .iter()
        .all(|&b| b == 0.0));

    // Reloading the same checkpoint with the same seed gives the same head.
    let (again, _) = load_sequence_classification(dir.path(), 3, &dev, 42, None).unwrap();
    assert_eq!(again.classifier.weight.as_vec(), w);
    assert_eq!(again.dropout_prob, config.hidden_dropout_prob);

    // finetune.dropout replaces the checkpoint's dropout everywhere, weights untouched.
    let (dropped, loaded) =
        load_sequence_classification(dir.path(), 3, &dev, 42, Some(0.25)).unwrap();
    assert_eq!(loaded.hidden_dropout_prob, 0.25);
    assert_eq!(loaded.attention_probs_dropout_prob, 0.25);
    assert_eq!(dropped.dropout_prob, 0.25);
    assert_eq!(dropped.bert.embeddings.dropout_prob, 0.25);
    let layer = &dropped.bert.encoder.layer[0];
    assert_eq!(layer.attention.self_attention.dropout_prob, 0.25);
    assert_eq!(layer.attention.output.dropout_prob, 0.25);
    assert_eq!(layer.output.dropout_prob, 0.25);
    assert_eq!(dropped.classifier.weight.as_vec(), w);
}

#[test]
fn hf_config_json_with_extra_keys_reads_and_unsupported_activation_fails() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(
        &path,
        r#"{"architectures": ["BertForMaskedLM"], "attention_probs_dropout_prob": 0.1,
            "gradient_checkpointing": false, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
            "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072,
            "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert",
            "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 0,
            "position_embedding_type": "absolute", "transformers_version": "4.6.0.dev0",
            "type_vocab_size": 2, "use_cache": true, "vocab_size": 30522}"#,
    )
    .unwrap();
    assert_eq!(
        read_config_json(&path).unwrap(),
        bertline::BertConfig::default()
    );
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"gelu\"", "\"relu\"");
    std::fs::write(&path, text).unwrap();
    let err = read_config_json(&path).unwrap_err().to_string();
    assert!(err.contains("config.json") && err.contains("relu"), "{err}");
}

#[test]
fn legacy_gamma_beta_names_load() {
    let config = tiny_config();
    let (_dev, model) = tiny_model(&config, 6);
    let (_dev2, mut other) = tiny_model(&config, 7);
    let mut tensors = bertline::model::export::pretraining_tensors(&model);
    let renamed: Vec<(String, String)> = tensors
        .keys()
        .filter(|k| k.contains("LayerNorm"))
        .map(|k| {
            (
                k.clone(),
                k.replace("LayerNorm.weight", "LayerNorm.gamma")
                    .replace("LayerNorm.bias", "LayerNorm.beta"),
            )
        })
        .collect();
    for (old, new) in renamed {
        let t = tensors.remove(&old).unwrap();
        tensors.insert(new, t);
    }
    let report = load_params(
        &mut other,
        &tensors,
        std::path::Path::new("x.safetensors"),
        &[],
    )
    .unwrap();
    assert!(report.fresh.is_empty());
    assert_eq!(
        report.unused,
        vec![
            "cls.predictions.decoder.bias".to_string(),
            "cls.predictions.decoder.weight".to_string()
        ]
    );
    assert_eq!(
        other.bert.embeddings.layer_norm.weight.as_vec(),
        model.bert.embeddings.layer_norm.weight.as_vec()
    );
}
