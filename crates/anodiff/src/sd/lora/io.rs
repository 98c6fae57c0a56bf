//! LoRA files: reading diffusers/peft and kohya-ss safetensors, writing diffusers/peft ones.
//!
//! diffusers/peft (what `StableDiffusionPipeline.save_lora_weights` writes, diffusers 0.42.1):
//! `unet.<module>.lora_A.weight` (`down [r, in]`), `unet.<module>.lora_B.weight` (`up [out, r]`),
//! `text_encoder.[text_model.]<module>.lora_{A,B}.weight`; the peft `LoraConfig` of each component
//! is JSON in the header entry `lora_adapter_metadata`, keys prefixed `unet.` / `text_encoder.`
//! (`lora_alpha`, `alpha_pattern`, `use_rslora`, …). A per-module `<…>.alpha` tensor is honoured too.
//!
//! kohya-ss: `lora_unet_<module with . → _>.lora_down.weight` / `.lora_up.weight` / `.alpha`,
//! `lora_te_text_model_encoder_layers_<i>_self_attn_<p>.…` (also `lora_te1_`). Underscored names
//! are mapped back through a table built from the model's own layer names, so the mapping is
//! exact (and an ambiguous table is an error, never a guess).
//!
//! Scale = alpha / rank (alpha / √rank with `use_rslora`); without any alpha, scale = 1.

use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// safetensors header entry holding peft's adapter config (JSON), read and written.
pub const METADATA_KEY: &str = "lora_adapter_metadata";

/// Which model a LoRA belongs to; gives the file-name prefixes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoraComponent {
    /// The UNet (`unet.` prefix).
    Unet,
    /// The CLIP text encoder (`text_encoder.` prefix).
    TextEncoder,
}

impl LoraComponent {
    /// diffusers prefix (`unet`, `text_encoder`).
    pub fn prefix(self) -> &'static str {
        match self {
            LoraComponent::Unet => "unet",
            LoraComponent::TextEncoder => "text_encoder",
        }
    }

    fn kohya_prefixes(self) -> &'static [&'static str] {
        match self {
            LoraComponent::Unet => &["lora_unet_"],
            LoraComponent::TextEncoder => &["lora_te_", "lora_te1_"],
        }
    }

    /// Canonical module name of a file's module path (text encoder: always `text_model.…`, the
    /// transformers-4 layout of real SD checkpoints; transformers-5 saves omit it).
    pub fn canonical(self, module: &str) -> String {
        match self {
            LoraComponent::TextEncoder if !module.starts_with("text_model.") => {
                format!("text_model.{module}")
            }
            _ => module.to_string(),
        }
    }
}

/// The weights of one layer as read from a file (f32, shapes checked against the model).
#[derive(Clone, Debug)]
pub struct LoraEntry {
    /// Canonical module name of the adapted layer.
    pub module: String,
    /// `[r, in]`.
    pub down: Tensor,
    /// `[out, r]`.
    pub up: Tensor,
    /// Scale of the term, from the file's alpha (1 without).
    pub scale: f64,
}

/// Known target layers of the model: canonical module name → (in, out).
pub type LayerDims = BTreeMap<String, (usize, usize)>;

#[derive(Default)]
struct Partial {
    down: Option<(String, Tensor)>,
    up: Option<(String, Tensor)>,
    alpha: Option<f64>,
}

/// Reads the `component` part of a LoRA file (diffusers/peft or kohya names). Keys of the other
/// component are skipped; anything else unknown is an error naming the file and the key — except
/// that with `skipped: Some(..)`, well-formed keys of layers that are not targets here (e.g. a
/// kohya LoRA that also adapts `ff` or `proj_in`) are collected there instead.
pub fn read_lora(
    path: &Path,
    component: LoraComponent,
    layers: &LayerDims,
    device: &Device,
    mut skipped: Option<&mut Vec<String>>,
) -> Result<Vec<LoraEntry>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |msg: String| Error::config(path, msg);
    let (_, header) =
        safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| Error::Safetensors {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
    let meta = match header.metadata().as_ref().and_then(|m| m.get(METADATA_KEY)) {
        Some(s) => Some(
            serde_json::from_str::<serde_json::Value>(s)
                .map_err(|e| bad(format!("header entry `{METADATA_KEY}` is not JSON: {e}")))?,
        ),
        None => None,
    };
    let tensors = crate::nn::tensor_files::read_safetensors(path, device)?;

    let pre = format!("{}.", component.prefix());
    let mut kohya: HashMap<String, String> = HashMap::new();
    for m in layers.keys() {
        for kp in component.kohya_prefixes() {
            let k = format!("{kp}{}", m.replace('.', "_"));
            if let Some(other) = kohya.insert(k.clone(), m.clone()) {
                return Err(Error::invalid(format!(
                    "kohya name `{k}` is ambiguous in this model (`{other}` and `{m}`)"
                )));
            }
        }
    }
    let foreign = [
        "unet.",
        "text_encoder.",
        "text_encoder_2.",
        "lora_unet_",
        "lora_te",
    ];

    let mut parts: BTreeMap<String, Partial> = BTreeMap::new();
    for (key, t) in tensors {
        let (module, kind) = if let Some(rest) = key.strip_prefix(&pre) {
            let (m, kind) = split_suffix(rest, &[".lora_A.weight", ".lora_B.weight", ".alpha"])
                .ok_or_else(|| {
                    bad(format!(
                        "key `{key}`: expected `{pre}<module>.lora_A.weight`, `.lora_B.weight` or `.alpha`"
                    ))
                })?;
            (component.canonical(m), kind)
        } else if component
            .kohya_prefixes()
            .iter()
            .any(|kp| key.starts_with(kp))
        {
            let (base, kind) =
                split_suffix(&key, &[".lora_down.weight", ".lora_up.weight", ".alpha"])
                    .ok_or_else(|| {
                        bad(format!(
                            "key `{key}`: expected `<name>.lora_down.weight`, `.lora_up.weight` or `.alpha`"
                        ))
                    })?;
            match kohya.get(base) {
                Some(m) => (m.clone(), kind),
                None => match skipped.as_mut() {
                    Some(s) => {
                        s.push(key);
                        continue;
                    }
                    None => {
                        return Err(bad(format!(
                            "key `{key}`: `{base}` is not a LoRA-targetable layer of this model"
                        )))
                    }
                },
            }
        } else if foreign.iter().any(|f| key.starts_with(f)) {
            continue;
        } else {
            return Err(bad(format!("key `{key}` is not a LoRA weight name this loader knows (diffusers `unet.…lora_A.weight` or kohya `lora_unet_…lora_down.weight`)")));
        };
        if !layers.contains_key(&module) {
            if let Some(s) = skipped.as_mut() {
                s.push(key);
                continue;
            }
            return Err(bad(format!(
                "key `{key}`: `{module}` is not a LoRA-targetable layer of this model"
            )));
        }
        let p = parts.entry(module).or_default();
        match kind {
            ".lora_A.weight" | ".lora_down.weight" => p.down = Some((key, t)),
            ".lora_B.weight" | ".lora_up.weight" => p.up = Some((key, t)),
            _ => {
                let v = t
                    .to_dtype(DType::F64)?
                    .flatten_all()?
                    .to_vec1::<f64>()?
                    .first()
                    .copied()
                    .filter(|_| t.elem_count() == 1)
                    .ok_or_else(|| bad(format!("key `{key}`: alpha must be a single number")))?;
                p.alpha = Some(v);
            }
        }
    }

    let cfg = |k: &str| {
        meta.as_ref()
            .and_then(|m| m.get(format!("{}.{k}", component.prefix())))
    };
    let meta_alpha = cfg("lora_alpha").and_then(|v| v.as_f64());
    let rslora = cfg("use_rslora").and_then(|v| v.as_bool()).unwrap_or(false);
    let alpha_pattern: Vec<(String, f64)> = cfg("alpha_pattern")
        .and_then(|v| v.as_object())
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| v.as_f64().map(|x| (k.clone(), x)))
                .collect()
        })
        .unwrap_or_default();

    let mut out = Vec::with_capacity(parts.len());
    for (module, p) in parts {
        let (dk, down) = p.down.ok_or_else(|| {
            bad(format!(
                "layer `{module}` has an up (lora_B) weight but no down (lora_A)"
            ))
        })?;
        let (uk, up) = p.up.ok_or_else(|| {
            bad(format!(
                "layer `{module}` has a down (lora_A) weight but no up (lora_B)"
            ))
        })?;
        let (inp, outp) = layers[&module];
        let r = down.dims().first().copied().unwrap_or(0);
        if down.rank() != 2 || r == 0 || down.dims()[1] != inp {
            return Err(shape_err(path, &dk, &[r, inp], down.dims()));
        }
        if up.dims() != [outp, r] {
            return Err(shape_err(path, &uk, &[outp, r], up.dims()));
        }
        let pattern = alpha_pattern
            .iter()
            .find(|(k, _)| module == *k || module.ends_with(&format!(".{k}")))
            .map(|(_, a)| *a);
        let alpha = p.alpha.or(pattern).or(meta_alpha);
        let scale = match alpha {
            Some(a) if rslora => a / (r as f64).sqrt(),
            Some(a) => a / r as f64,
            None => 1.0,
        };
        out.push(LoraEntry {
            module,
            down: down.to_dtype(DType::F32)?,
            up: up.to_dtype(DType::F32)?,
            scale,
        });
    }
    if out.is_empty() {
        return Err(bad(format!(
            "no LoRA weights for the {} in this file",
            component.prefix()
        )));
    }
    Ok(out)
}

fn split_suffix<'a>(key: &'a str, suffixes: &[&'static str]) -> Option<(&'a str, &'static str)> {
    suffixes
        .iter()
        .find_map(|s| key.strip_suffix(s).map(|m| (m, *s)))
        .filter(|(m, _)| !m.is_empty())
}

fn shape_err(path: &Path, key: &str, expected: &[usize], found: &[usize]) -> Error {
    Error::ShapeMismatch {
        path: PathBuf::from(path),
        name: key.to_string(),
        expected: expected.to_vec(),
        found: found.to_vec(),
    }
}

/// File name under which a layer is written (`unet.<module>`; text encoder with `text_model.`).
pub fn file_module(component: LoraComponent, module: &str) -> String {
    format!("{}.{}", component.prefix(), component.canonical(module))
}

/// Writes entries of one or more components as a diffusers/peft LoRA file (atomically), with
/// `lora_adapter_metadata` carrying rank, alpha, targets and per-layer deviations.
pub fn write_lora(path: &Path, parts: &[(LoraComponent, Vec<LoraEntry>)]) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    let mut meta = serde_json::Map::new();
    for (component, entries) in parts {
        let Some(first) = entries.first() else {
            continue;
        };
        let p = component.prefix();
        let r0 = first.down.dims()[0];
        let a0 = first.scale * r0 as f64;
        let mut rank_pattern = serde_json::Map::new();
        let mut alpha_pattern = serde_json::Map::new();
        let mut targets = Vec::new();
        for e in entries {
            let name = file_module(*component, &e.module);
            tensors.push((format!("{name}.lora_A.weight"), e.down.clone()));
            tensors.push((format!("{name}.lora_B.weight"), e.up.clone()));
            // peft matches a target by suffix; without `text_model.` it fits transformers 4 and 5.
            let target = e
                .module
                .strip_prefix("text_model.")
                .unwrap_or(&e.module)
                .to_string();
            let r = e.down.dims()[0];
            let a = e.scale * r as f64;
            if r != r0 {
                rank_pattern.insert(target.clone(), r.into());
            }
            if a != a0 {
                alpha_pattern.insert(target.clone(), a.into());
            }
            targets.push(serde_json::Value::from(target));
        }
        meta.insert(format!("{p}.r"), r0.into());
        meta.insert(format!("{p}.lora_alpha"), a0.into());
        meta.insert(format!("{p}.target_modules"), targets.into());
        meta.insert(format!("{p}.rank_pattern"), rank_pattern.into());
        meta.insert(format!("{p}.alpha_pattern"), alpha_pattern.into());
        meta.insert(format!("{p}.lora_dropout"), 0.0.into());
        meta.insert(format!("{p}.bias"), "none".into());
        meta.insert(format!("{p}.use_rslora"), false.into());
    }
    let json = serde_json::to_string_pretty(&serde_json::Value::Object(meta))
        .map_err(|e| Error::invalid(format!("{}: {e}", path.display())))?;
    write_with_metadata(path, &tensors, json)
}

fn write_with_metadata(path: &Path, tensors: &[(String, Tensor)], meta: String) -> Result<()> {
    let mut bufs = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let v: Vec<u8> = t
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        bufs.push((name.clone(), t.dims().to_vec(), v));
    }
    let views = bufs
        .iter()
        .map(|(n, s, b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::invalid(format!("{}: tensor `{n}`: {e}", path.display())))
        })
        .collect::<Result<Vec<_>>>()?;
    let header: HashMap<String, String> = [
        ("format".to_string(), "pt".to_string()),
        (METADATA_KEY.to_string(), meta),
    ]
    .into_iter()
    .collect();
    let bytes = safetensors::serialize(views, Some(header)).map_err(|e| Error::Safetensors {
        path: path.to_path_buf(),
        msg: e.to_string(),
    })?;
    crate::io::atomic::write_atomic(path, &bytes)
}
