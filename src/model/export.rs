//! Hugging Face checkpoints: `model.safetensors` with `BertForPreTraining`'s key names and
//! `config.json`, written so `transformers.BertForPreTraining.from_pretrained(dir)` loads them,
//! and read back from any HF-format BERT directory.
//!
//! Writes are atomic (temp file, fsync, rename). Reading names the file and the key on every
//! failure. A head missing from the file (a classifier on top of a pre-training checkpoint)
//! keeps its fresh initialisation; `cls.*` keys a fine-tuning model lacks are ignored.

use super::BertDevice;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use rand_chacha::ChaCha8Rng;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use super::{
    init, BertConfig, BertForPreTraining, BertForQuestionAnswering, BertForSequenceClassification,
    HfParams,
};
use crate::durable;
use crate::error::{Error, IoContext, Result};

/// File name of the weights in an HF model directory.
pub const MODEL_FILE: &str = "model.safetensors";
/// File name of the configuration in an HF model directory.
pub const CONFIG_FILE: &str = "config.json";

/// Named `f32` tensors as stored on disk: `name -> (shape, row-major values)`.
pub type TensorMap = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// Writes `tensors` as a safetensors file atomically (temp file, fsync, rename).
pub fn write_safetensors(
    path: &Path,
    tensors: &TensorMap,
    metadata: HashMap<String, String>,
) -> Result<()> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(name, (shape, values))| {
            let data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name.clone(), shape.clone(), data)
        })
        .collect();
    let views = bytes
        .iter()
        .map(|(name, shape, data)| {
            TensorView::new(Dtype::F32, shape.clone(), data)
                .map(|view| (name.clone(), view))
                .map_err(|e| Error::checkpoint(path, format!("tensor {name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut buffer = safetensors::serialize(views, &Some(metadata))
        .map_err(|e| Error::checkpoint(path, format!("cannot serialize: {e}")))?;
    canonical_header(&mut buffer);
    durable::write_bytes(path, &buffer)
}

/// Rewrites a serialized safetensors file's JSON header with its keys sorted, in place:
/// safetensors writes the `__metadata__` map in `HashMap` order, so the same tensors would
/// give other bytes on every run. Same keys and values, so the same length.
fn canonical_header(buffer: &mut [u8]) {
    fn sorted(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                serde_json::Value::Object(
                    keys.into_iter()
                        .map(|k| (k.clone(), sorted(&map[k])))
                        .collect(),
                )
            }
            other => other.clone(),
        }
    }
    let Some(len) = buffer
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")) as usize)
    else {
        return;
    };
    let Some(header) = buffer.get(8..8 + len) else {
        return;
    };
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(header) else {
        return;
    };
    let text = serde_json::to_string(&sorted(&json)).expect("JSON serialises");
    if text.len() <= len {
        let slot = &mut buffer[8..8 + len];
        slot[..text.len()].copy_from_slice(text.as_bytes());
        slot[text.len()..].fill(b' ');
    }
}

/// Reads every floating-point tensor of a safetensors file as `f32` (F32, F16 and BF16 are
/// accepted), with the file's metadata; integer buffers (HF's `position_ids`) are skipped.
pub fn read_safetensors(path: &Path) -> Result<(TensorMap, HashMap<String, String>)> {
    let buffer = std::fs::read(path).at(path)?;
    let (_, metadata) = SafeTensors::read_metadata(&buffer)
        .map_err(|e| Error::checkpoint(path, format!("not a safetensors file: {e:?}")))?;
    let file = SafeTensors::deserialize(&buffer)
        .map_err(|e| Error::checkpoint(path, format!("not a safetensors file: {e:?}")))?;
    let mut out = TensorMap::new();
    for (name, view) in file.tensors() {
        if is_buffer_dtype(view.dtype()) {
            // Integer tensors are buffers, not parameters (HF's `embeddings.position_ids`).
            continue;
        }
        let values = decode_f32(view.dtype(), view.data()).ok_or_else(|| {
            Error::checkpoint(
                path,
                format!("{name}: unsupported dtype {:?}", view.dtype()),
            )
        })?;
        out.insert(name, (view.shape().to_vec(), values));
    }
    Ok((out, metadata.metadata().clone().unwrap_or_default()))
}

fn is_buffer_dtype(dtype: Dtype) -> bool {
    matches!(
        dtype,
        Dtype::BOOL
            | Dtype::U8
            | Dtype::I8
            | Dtype::I16
            | Dtype::U16
            | Dtype::I32
            | Dtype::U32
            | Dtype::I64
            | Dtype::U64
    )
}

fn decode_f32(dtype: Dtype, data: &[u8]) -> Option<Vec<f32>> {
    match dtype {
        Dtype::F32 => Some(
            data.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        Dtype::BF16 => Some(
            data.chunks_exact(2)
                .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
                .collect(),
        ),
        Dtype::F16 => Some(
            data.chunks_exact(2)
                .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
                .collect(),
        ),
        _ => None,
    }
}

fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as i32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, _) => {
            // Subnormal: value = frac * 2^-24.
            let v = frac as f32 * (2.0f32).powi(-24);
            return if sign != 0 { -v } else { v };
        }
        (31, 0) => sign | 0x7f80_0000,
        (31, _) => sign | 0x7fc0_0000,
        _ => sign | (((exp - 15 + 127) as u32) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}

/// Every parameter of `model` by HF name, copied to the host.
pub fn model_tensors<D: BertDevice, M: HfParams<D>>(model: &M) -> TensorMap {
    model
        .named_parameters()
        .into_iter()
        .map(|(name, p)| (name, (p.shape(), p.to_vec())))
        .collect()
}

/// `BertForPreTraining`'s tensors plus the tied keys HF writes:
/// `cls.predictions.decoder.weight` (= word embeddings) and `cls.predictions.decoder.bias`
/// (= `cls.predictions.bias`).
pub fn pretraining_tensors<D: BertDevice>(model: &BertForPreTraining<D>) -> TensorMap {
    let mut tensors = model_tensors(model);
    let word = tensors["bert.embeddings.word_embeddings.weight"].clone();
    let bias = tensors["cls.predictions.bias"].clone();
    tensors.insert("cls.predictions.decoder.weight".into(), word);
    tensors.insert("cls.predictions.decoder.bias".into(), bias);
    tensors
}

fn pt_metadata() -> HashMap<String, String> {
    HashMap::from([("format".to_string(), "pt".to_string())])
}

/// Writes `dir/model.safetensors` and `dir/config.json` for a pre-training model.
pub fn save_pretraining<D: BertDevice>(
    model: &BertForPreTraining<D>,
    config: &BertConfig,
    dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir).at(dir)?;
    write_safetensors(
        &dir.join(MODEL_FILE),
        &pretraining_tensors(model),
        pt_metadata(),
    )?;
    write_config_json(config, "BertForPreTraining", None, &dir.join(CONFIG_FILE))
}

/// Writes `dir/model.safetensors` and `dir/config.json` for a fine-tuned classifier.
pub fn save_sequence_classification<D: BertDevice>(
    model: &BertForSequenceClassification<D>,
    config: &BertConfig,
    dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir).at(dir)?;
    write_safetensors(&dir.join(MODEL_FILE), &model_tensors(model), pt_metadata())?;
    write_config_json(
        config,
        "BertForSequenceClassification",
        Some(model.num_labels),
        &dir.join(CONFIG_FILE),
    )
}

/// Writes `dir/model.safetensors` and `dir/config.json` for a fine-tuned span extractor.
pub fn save_question_answering<D: BertDevice>(
    model: &BertForQuestionAnswering<D>,
    config: &BertConfig,
    dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir).at(dir)?;
    write_safetensors(&dir.join(MODEL_FILE), &model_tensors(model), pt_metadata())?;
    write_config_json(
        config,
        "BertForQuestionAnswering",
        None,
        &dir.join(CONFIG_FILE),
    )
}

/// HF `config.json`: the [`BertConfig`] keys plus `model_type`, `architectures` and, for
/// classifiers, `num_labels` (as `id2label`/`label2id`, which is how HF stores it).
pub fn write_config_json(
    config: &BertConfig,
    architecture: &str,
    num_labels: Option<usize>,
    path: &Path,
) -> Result<()> {
    let mut json = serde_json::to_value(config).expect("BertConfig serialises");
    let object = json.as_object_mut().expect("BertConfig is a JSON object");
    object.insert("model_type".into(), "bert".into());
    object.insert("architectures".into(), serde_json::json!([architecture]));
    object.insert("position_embedding_type".into(), "absolute".into());
    object.insert("torch_dtype".into(), "float32".into());
    if let Some(n) = num_labels {
        let id2label: serde_json::Map<String, serde_json::Value> = (0..n)
            .map(|i| (i.to_string(), format!("LABEL_{i}").into()))
            .collect();
        let label2id: serde_json::Map<String, serde_json::Value> =
            (0..n).map(|i| (format!("LABEL_{i}"), i.into())).collect();
        object.insert("id2label".into(), id2label.into());
        object.insert("label2id".into(), label2id.into());
        if n == 1 {
            object.insert("problem_type".into(), "regression".into());
        }
    }
    let text = serde_json::to_string_pretty(&json).expect("JSON serialises");
    durable::write_bytes(path, text.as_bytes())
}

/// Reads an HF `config.json` into a [`BertConfig`], ignoring keys it does not model
/// (`architectures`, `transformers_version`, ...). Only `hidden_act = "gelu"` and absolute
/// positions are supported.
pub fn read_config_json(path: &Path) -> Result<BertConfig> {
    let text = std::fs::read_to_string(path).at(path)?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::checkpoint(path, format!("invalid JSON: {e}")))?;
    let object = json
        .as_object()
        .ok_or_else(|| Error::checkpoint(path, "expected a JSON object"))?;
    if let Some(kind) = object.get("model_type").and_then(|v| v.as_str()) {
        if kind != "bert" {
            return Err(Error::checkpoint(
                path,
                format!("model_type = {kind:?}: only \"bert\" models are supported"),
            ));
        }
    }
    if let Some(kind) = object
        .get("position_embedding_type")
        .and_then(|v| v.as_str())
    {
        if kind != "absolute" {
            return Err(Error::checkpoint(
                path,
                format!("position_embedding_type = {kind:?}: only \"absolute\" is supported"),
            ));
        }
    }
    let known = serde_json::to_value(BertConfig::default()).expect("BertConfig serialises");
    let known = known.as_object().expect("object");
    let kept: serde_json::Map<String, serde_json::Value> = object
        .iter()
        .filter(|(k, _)| known.contains_key(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let config: BertConfig = serde_json::from_value(kept.into())
        .map_err(|e| Error::checkpoint(path, format!("not a BERT config: {e}")))?;
    if config.hidden_act != "gelu" {
        return Err(Error::checkpoint(
            path,
            format!(
                "hidden_act = {:?}: only \"gelu\" is supported",
                config.hidden_act
            ),
        ));
    }
    if config.num_attention_heads == 0
        || !config
            .hidden_size
            .is_multiple_of(config.num_attention_heads)
    {
        return Err(Error::checkpoint(
            path,
            "hidden_size must be a positive multiple of num_attention_heads",
        ));
    }
    Ok(config)
}

/// What [`load_params`] did besides copying.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    /// Parameters absent from the file that kept their initialisation (allowed prefixes).
    pub fresh: Vec<String>,
    /// File keys no parameter used (`cls.*` for a classifier, HF buffers).
    pub unused: Vec<String>,
}

/// Copies tensors from `tensors` (read from `path`) into `model` by HF name.
///
/// Each parameter looks for its own name, then the legacy `LayerNorm.gamma`/`beta` spelling,
/// then its name without the `bert.` prefix (a bare `BertModel` checkpoint). A parameter not
/// found is an error unless its name starts with one of `fresh_prefixes`. Shapes must match.
pub fn load_params<D: BertDevice, M: HfParams<D>>(
    model: &mut M,
    tensors: &TensorMap,
    path: &Path,
    fresh_prefixes: &[&str],
) -> Result<LoadReport> {
    let mut report = LoadReport::default();
    let mut used = std::collections::BTreeSet::new();
    for (name, mut param) in model.named_parameters_mut() {
        let found = candidate_keys(&name)
            .into_iter()
            .find_map(|key| tensors.get_key_value(&key));
        let Some((key, (shape, values))) = found else {
            if fresh_prefixes.iter().any(|p| name.starts_with(p)) {
                report.fresh.push(name);
                continue;
            }
            return Err(Error::checkpoint(
                path,
                format!("missing tensor {name}: not an HF BERT checkpoint of this architecture"),
            ));
        };
        let expected = param.as_ref().shape();
        if *shape != expected {
            return Err(Error::checkpoint(
                path,
                format!(
                    "{key}: shape {shape:?} but the model expects {expected:?} (check config.json)"
                ),
            ));
        }
        param.copy_from(values);
        used.insert(key.clone());
    }
    report.unused = tensors
        .keys()
        .filter(|k| !used.contains(*k))
        .cloned()
        .collect();
    Ok(report)
}

/// HF names to try for a parameter, best first.
fn candidate_keys(name: &str) -> Vec<String> {
    let legacy = name
        .replace("LayerNorm.weight", "LayerNorm.gamma")
        .replace("LayerNorm.bias", "LayerNorm.beta");
    let mut keys = vec![name.to_string()];
    if legacy != name {
        keys.push(legacy.clone());
    }
    if let Some(bare) = name.strip_prefix("bert.") {
        keys.push(bare.to_string());
        if let Some(bare_legacy) = legacy.strip_prefix("bert.") {
            keys.push(bare_legacy.to_string());
        }
    }
    keys
}

/// `config` with both dropout probabilities set to `dropout`, when given.
pub fn with_dropout(mut config: BertConfig, dropout: Option<f64>) -> BertConfig {
    if let Some(p) = dropout {
        config.hidden_dropout_prob = p;
        config.attention_probs_dropout_prob = p;
    }
    config
}

/// Reads `dir/config.json` and `dir/model.safetensors`.
fn read_model_dir(dir: &Path) -> Result<(BertConfig, TensorMap, PathBuf)> {
    let config = read_config_json(&dir.join(CONFIG_FILE))?;
    let path = dir.join(MODEL_FILE);
    if !path.exists() {
        return Err(Error::checkpoint(
            &path,
            "missing: an HF model directory needs model.safetensors (convert pytorch_model.bin \
             with transformers' save_pretrained(safe_serialization=True))",
        ));
    }
    let (tensors, _) = read_safetensors(&path)?;
    Ok((config, tensors, path))
}

/// Loads a `BertForPreTraining` from an HF directory. The tied decoder keys are optional.
pub fn load_pretraining<D: BertDevice>(
    dir: &Path,
    device: &D,
) -> Result<(BertForPreTraining<D>, BertConfig)> {
    let (config, tensors, path) = read_model_dir(dir)?;
    let mut rng = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
    let mut model = BertForPreTraining::new(&config, &mut init(&config, device, &mut rng));
    load_params(&mut model, &tensors, &path, &[])?;
    Ok((model, config))
}

/// Loads a classifier: `bert.*` from the directory, `classifier.*` from the file when present
/// (a fine-tuned checkpoint) or freshly initialised from `seed` (a pre-training checkpoint).
/// `dropout` replaces the checkpoint's dropout probabilities (HF `from_pretrained(dir,
/// hidden_dropout_prob=p, attention_probs_dropout_prob=p)`).
pub fn load_sequence_classification<D: BertDevice>(
    dir: &Path,
    num_labels: usize,
    device: &D,
    seed: u64,
    dropout: Option<f64>,
) -> Result<(BertForSequenceClassification<D>, BertConfig)> {
    let (config, tensors, path) = read_model_dir(dir)?;
    let config = with_dropout(config, dropout);
    let mut rng = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed);
    let mut model = BertForSequenceClassification::new(
        &config,
        num_labels,
        &mut init(&config, device, &mut rng),
    );
    load_params(&mut model, &tensors, &path, &["classifier."])?;
    Ok((model, config))
}

/// Loads a span extractor: `bert.*` from the directory, `qa_outputs.*` from the file or fresh.
/// A checkpoint without a pooler (HF's QA models have none) keeps a fresh, unused pooler.
pub fn load_question_answering<D: BertDevice>(
    dir: &Path,
    device: &D,
    seed: u64,
    dropout: Option<f64>,
) -> Result<(BertForQuestionAnswering<D>, BertConfig)> {
    let (config, tensors, path) = read_model_dir(dir)?;
    let config = with_dropout(config, dropout);
    let mut rng = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(seed);
    let mut model = BertForQuestionAnswering::new(&config, &mut init(&config, device, &mut rng));
    load_params(
        &mut model,
        &tensors,
        &path,
        &["qa_outputs.", "bert.pooler."],
    )?;
    Ok((model, config))
}
