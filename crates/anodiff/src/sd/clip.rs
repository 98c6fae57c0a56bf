//! The CLIP text transformer that Stable Diffusion uses as its `text_encoder/`: numerically the
//! same computation as transformers' `CLIPTextModel` (token + position embeddings, pre-LayerNorm
//! encoder layers with causal self-attention, a final LayerNorm, and EOS pooling).
//!
//! Weights load from a diffusers `text_encoder/` folder. Checkpoints written by transformers 4.x
//! (every real SD release) prefix names with `text_model.`; transformers 5.x writes them without
//! the prefix. Both layouts are accepted.

use crate::error::{Error, Result};
use crate::nn::ops::{gelu, quick_gelu, softmax_last_dim};
use crate::nn::{Init, LayerNorm, Linear, Params};
use crate::sd::config_file::{config_json, ConfigFile, TRANSFORMERS_VERSION};
use crate::sd::weights::Component;
use candle_core::{DType, Device, Module, Tensor};
use serde::{Deserialize, Deserializer, Serialize};

/// The activation inside each MLP block (`hidden_act`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClipActivation {
    /// OpenAI CLIP (SD-1 ViT-L/14): x·σ(1.702x).
    QuickGelu,
    /// Exact erf GELU (SD-2 OpenCLIP-H).
    Gelu,
}

/// transformers' `CLIPTextConfig`; keys missing from `config.json` take transformers' defaults.
/// Written ([`ConfigFile`]) with `architectures: ["CLIPTextModel"]` and `model_type`, as
/// `CLIPTextModel.save_pretrained` does. Not kept: `dtype` / `torch_dtype` (the stored weights'
/// precision; every dtype is read as f32) and the rest of a list-valued token id (see `first_id`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct ClipTextConfig {
    /// Token vocabulary size.
    pub vocab_size: usize,
    /// Width of the token embeddings and every layer.
    pub hidden_size: usize,
    /// Width of each layer's MLP.
    pub intermediate_size: usize,
    /// Number of transformer layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Longest token sequence (77 for SD).
    pub max_position_embeddings: usize,
    /// MLP activation.
    pub hidden_act: ClipActivation,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
    /// Only used by the projection head, which SD does not load; kept for completeness.
    pub projection_dim: Option<usize>,
    /// Begin-of-text token id.
    #[serde(deserialize_with = "first_id")]
    pub bos_token_id: Option<u32>,
    /// Decides the pooling position (see [`ClipTextModel::pool_positions`]).
    #[serde(deserialize_with = "first_id")]
    pub eos_token_id: Option<u32>,
    /// Padding token id.
    #[serde(deserialize_with = "first_id")]
    pub pad_token_id: Option<u32>,
    /// Training-time attention dropout; not applied by this implementation.
    pub attention_dropout: f64,
    /// Weight-initialisation scales of transformers' fresh models; not used for loaded weights.
    pub initializer_range: f64,
    /// See `initializer_range`.
    pub initializer_factor: f64,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: ClipActivation::QuickGelu,
            layer_norm_eps: 1e-5,
            projection_dim: Some(512),
            bos_token_id: Some(49406),
            eos_token_id: Some(49407),
            pad_token_id: Some(1),
            attention_dropout: 0.0,
            initializer_range: 0.02,
            initializer_factor: 1.0,
        }
    }
}

impl ClipTextConfig {
    /// SD-1.x `text_encoder` (OpenAI CLIP ViT-L/14), as in its config.json (legacy eos id 2).
    pub fn sd15() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            hidden_act: ClipActivation::QuickGelu,
            projection_dim: Some(768),
            bos_token_id: Some(0),
            eos_token_id: Some(2),
            pad_token_id: Some(1),
            ..Self::default()
        }
    }

    /// SD-2.x `text_encoder` (OpenCLIP ViT-H/14 text tower with its last layer dropped: 23 layers).
    pub fn sd2() -> Self {
        Self {
            hidden_size: 1024,
            intermediate_size: 4096,
            num_hidden_layers: 23,
            num_attention_heads: 16,
            hidden_act: ClipActivation::Gelu,
            projection_dim: Some(512),
            ..Self::sd15()
        }
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Checks the shape parameters; the message says which key is wrong.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let nonzero = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        if let Some((k, _)) = nonzero.iter().find(|(_, v)| *v == 0) {
            return Err(format!("`{k}` must be positive"));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "`hidden_size` {} is not divisible by `num_attention_heads` {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.layer_norm_eps.is_nan() || self.layer_norm_eps <= 0.0 {
            return Err(format!(
                "`layer_norm_eps` must be positive, got {}",
                self.layer_norm_eps
            ));
        }
        Ok(())
    }
}

impl ConfigFile for ClipTextConfig {
    const FILE_NAME: &'static str = "config.json";

    fn to_json(&self) -> serde_json::Value {
        config_json(
            self,
            &[
                ("architectures", serde_json::json!(["CLIPTextModel"])),
                ("model_type", "clip_text_model".into()),
                ("transformers_version", TRANSFORMERS_VERSION.into()),
            ],
        )
    }
}

/// transformers allows `eos_token_id` (and friends) to be an int, a list of ints or null;
/// a list means "any of these", and the first one is the one the tokenizer emits.
fn first_id<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<u32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        One(u32),
        Many(Vec<u32>),
    }
    Ok(match Option::<Id>::deserialize(d)? {
        Some(Id::One(i)) => Some(i),
        Some(Id::Many(v)) => v.first().copied(),
        None => None,
    })
}

/// What [`ClipTextModel::forward`] returns.
#[derive(Clone, Debug)]
pub struct ClipOutput {
    /// `[B, T, H]` output of the last layer after the final LayerNorm (SD's usual conditioning).
    pub last_hidden_state: Tensor,
    /// `[B, T, H]` output of the second-to-last layer, without the final LayerNorm
    /// (transformers' `hidden_states[-2]`; "clip skip" applies the final LayerNorm to it).
    pub penultimate: Tensor,
    /// `[B, H]` `last_hidden_state` at the pooling (EOS) position of each sequence.
    pub pooled: Tensor,
}

/// Multi-head causal self-attention with CLIP's `{q,k,v,out}_proj` names.
struct ClipAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
    head_dim: usize,
}

impl ClipAttention {
    fn new(p: &Params, cfg: &ClipTextConfig) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            q_proj: Linear::new(&p.pp("q_proj"), h, h, true)?,
            k_proj: Linear::new(&p.pp("k_proj"), h, h, true)?,
            v_proj: Linear::new(&p.pp("v_proj"), h, h, true)?,
            out_proj: Linear::new(&p.pp("out_proj"), h, h, true)?,
            heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
        })
    }

    /// `x: [B, T, H]`, `mask: [T, T]` additive (0 or a large negative above the diagonal).
    fn forward(&self, x: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t, c) = x.dims3()?;
        let split = |y: Tensor| -> candle_core::Result<Tensor> {
            y.reshape((b, t, self.heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.q_proj.forward(x)?)?;
        let k = split(self.k_proj.forward(x)?)?;
        let v = split(self.v_proj.forward(x)?)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(mask)?;
        let y = softmax_last_dim(&scores)?.matmul(&v)?;
        let y = y.transpose(1, 2)?.reshape((b, t, c))?;
        self.out_proj.forward(&y)
    }
}

/// One pre-LayerNorm encoder layer: `x + attn(ln1(x))`, then `x + mlp(ln2(x))`.
struct ClipLayer {
    layer_norm1: LayerNorm,
    self_attn: ClipAttention,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    act: ClipActivation,
}

impl ClipLayer {
    fn new(p: &Params, cfg: &ClipTextConfig) -> Result<Self> {
        let (h, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        Ok(Self {
            layer_norm1: LayerNorm::new(&p.pp("layer_norm1"), h, eps)?,
            self_attn: ClipAttention::new(&p.pp("self_attn"), cfg)?,
            layer_norm2: LayerNorm::new(&p.pp("layer_norm2"), h, eps)?,
            fc1: Linear::new(&p.pp("mlp.fc1"), h, cfg.intermediate_size, true)?,
            fc2: Linear::new(&p.pp("mlp.fc2"), cfg.intermediate_size, h, true)?,
            act: cfg.hidden_act,
        })
    }

    fn forward(&self, x: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let x = (x + self
            .self_attn
            .forward(&self.layer_norm1.forward(x)?, mask)?)?;
        let y = self.fc1.forward(&self.layer_norm2.forward(&x)?)?;
        let y = match self.act {
            ClipActivation::QuickGelu => quick_gelu(&y)?,
            ClipActivation::Gelu => gelu(&y)?,
        };
        x + self.fc2.forward(&y)?
    }
}

/// The CLIP text transformer (token + position embeddings, causal pre-LN layers, final LayerNorm).
pub struct ClipTextModel {
    cfg: ClipTextConfig,
    token_embedding: Tensor,
    position_embedding: Tensor,
    layers: Vec<ClipLayer>,
    final_layer_norm: LayerNorm,
}

/// Added to attention scores above the diagonal. Finite so that no `inf - inf` can appear in
/// the softmax or its backward; half of `f32::MIN` leaves room for the scores themselves.
const MASKED: f32 = f32::MIN / 2.0;

impl ClipTextModel {
    /// Builds the model from `p` scoped at the component root. Names are looked up under
    /// `text_model.` (transformers 4.x checkpoints, and fresh stores) or, when the store has
    /// `embeddings.token_embedding.weight` at its root, without it (transformers 5.x saves).
    pub fn new(cfg: &ClipTextConfig, p: &Params) -> Result<Self> {
        cfg.validate()
            .map_err(|m| Error::invalid(format!("CLIP text config: {m}")))?;
        let bare = p.contains("embeddings.token_embedding.weight")
            && !p.contains("text_model.embeddings.token_embedding.weight");
        let p = if bare { p.clone() } else { p.pp("text_model") };
        let h = cfg.hidden_size;
        let emb = p.pp("embeddings");
        let token_embedding = emb.pp("token_embedding").get(
            &[cfg.vocab_size, h],
            "weight",
            Init::Normal { std: 0.02 },
        )?;
        let position_embedding = emb.pp("position_embedding").get(
            &[cfg.max_position_embeddings, h],
            "weight",
            Init::Normal { std: 0.01 },
        )?;
        // Older checkpoints also store the constant `position_ids` buffer [1, max_pos]; it is
        // always 0..max_pos, so it is read only to mark it as consumed.
        if emb.contains("position_ids") {
            emb.get(
                &[1, cfg.max_position_embeddings],
                "position_ids",
                Init::Zeros,
            )?;
        }
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| ClipLayer::new(&p.pp(format!("encoder.layers.{i}")), cfg))
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm = LayerNorm::new(&p.pp("final_layer_norm"), h, cfg.layer_norm_eps)?;
        Ok(Self {
            cfg: cfg.clone(),
            token_embedding,
            position_embedding,
            layers,
            final_layer_norm,
        })
    }

    /// Loads a diffusers `text_encoder/` folder (config.json + *.safetensors, f32/f16/bf16).
    pub fn load(c: &Component, device: &Device) -> Result<Self> {
        let cfg: ClipTextConfig = c.config()?;
        cfg.validate()
            .map_err(|m| Error::config(c.dir.join("config.json"), m))?;
        let p = c.params(device)?;
        Self::new(&cfg, &p)
    }

    /// The config the model was built from.
    pub fn config(&self) -> &ClipTextConfig {
        &self.cfg
    }

    /// The final LayerNorm, e.g. to apply to [`ClipOutput::penultimate`] for "clip skip".
    pub fn final_layer_norm(&self) -> &LayerNorm {
        &self.final_layer_norm
    }

    /// Calls `f` on every attention projection (`…self_attn.{q,k,v,out}_proj`), layer by layer.
    pub fn visit_linears(&self, f: &mut dyn FnMut(&Linear)) {
        for l in &self.layers {
            let a = &l.self_attn;
            for lin in [&a.q_proj, &a.k_proj, &a.v_proj, &a.out_proj] {
                f(lin);
            }
        }
    }

    /// Where each sequence is pooled, as transformers does it: with the legacy `eos_token_id: 2`
    /// (SD-1/SD-2 configs) at the first maximal id (EOS is the largest id of the CLIP vocabulary);
    /// otherwise at the first occurrence of `eos_token_id` (position 0 if absent, like argmax of
    /// an all-false mask).
    pub fn pool_positions(&self, ids: &[Vec<u32>]) -> Vec<usize> {
        let first_max = |row: &[u32]| {
            let m = row.iter().copied().max().unwrap_or(0);
            row.iter().position(|&x| x == m).unwrap_or(0)
        };
        ids.iter()
            .map(|row| match self.cfg.eos_token_id {
                Some(eos) if eos != 2 => row.iter().position(|&x| x == eos).unwrap_or(0),
                _ => first_max(row),
            })
            .collect()
    }

    /// `ids: [B, T]` token ids (u32, or i64/u8 which are converted), `1 ≤ T ≤ max_position_embeddings`.
    pub fn forward(&self, ids: &Tensor) -> candle_core::Result<ClipOutput> {
        let (b, t) = ids.dims2()?;
        let ids = match ids.dtype() {
            DType::U32 => ids.clone(),
            DType::I64 | DType::U8 => ids.to_dtype(DType::U32)?,
            other => {
                candle_core::bail!("CLIP text encoder: token ids must be integers, got {other:?}")
            }
        };
        if t == 0 || t > self.cfg.max_position_embeddings {
            candle_core::bail!(
                "CLIP text encoder: sequence length {t} outside 1..={}",
                self.cfg.max_position_embeddings
            );
        }
        let rows = ids.to_vec2::<u32>()?;
        if let Some(&bad) = rows
            .iter()
            .flatten()
            .find(|&&x| x as usize >= self.cfg.vocab_size)
        {
            candle_core::bail!(
                "CLIP text encoder: token id {bad} is outside the vocabulary (size {})",
                self.cfg.vocab_size
            );
        }
        let dev = self.token_embedding.device();
        let h = self.cfg.hidden_size;

        let tok = self
            .token_embedding
            .index_select(&ids.flatten_all()?.to_device(dev)?, 0)?
            .reshape((b, t, h))?;
        let mut x = tok.broadcast_add(&self.position_embedding.narrow(0, 0, t)?)?;

        let mask: Vec<f32> = (0..t * t)
            .map(|i| if i % t > i / t { MASKED } else { 0.0 })
            .collect();
        let mask = Tensor::from_vec(mask, (t, t), dev)?.to_dtype(x.dtype())?;

        let n = self.layers.len();
        let mut penultimate = x.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            if i + 1 == n {
                penultimate = x.clone();
            }
            x = layer.forward(&x, &mask)?;
        }
        let last_hidden_state = self.final_layer_norm.forward(&x)?;

        let idx: Vec<u32> = self
            .pool_positions(&rows)
            .into_iter()
            .enumerate()
            .map(|(row, pos)| (row * t + pos) as u32)
            .collect();
        let idx = Tensor::from_vec(idx, b, dev)?;
        let pooled = last_hidden_state
            .reshape((b * t, h))?
            .index_select(&idx, 0)?;
        Ok(ClipOutput {
            last_hidden_state,
            penultimate,
            pooled,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_lists_and_validation() {
        let c: ClipTextConfig = serde_json::from_str(
            r#"{"hidden_act":"gelu","eos_token_id":[7,8],"pad_token_id":null}"#,
        )
        .unwrap();
        assert_eq!(c.hidden_size, 512);
        assert_eq!(c.hidden_act, ClipActivation::Gelu);
        assert_eq!(c.eos_token_id, Some(7));
        assert_eq!(c.pad_token_id, None);
        assert!(ClipTextConfig::sd15().validate().is_ok());
        assert!(ClipTextConfig::sd2().validate().is_ok());
        let bad = ClipTextConfig {
            num_attention_heads: 5,
            ..ClipTextConfig::sd15()
        };
        assert!(bad.validate().unwrap_err().contains("num_attention_heads"));
        assert!(serde_json::from_str::<ClipTextConfig>(r#"{"hidden_act":"relu"}"#).is_err());
    }

    #[test]
    fn saved_config_loads_back_equal() {
        let dir = std::env::temp_dir().join(format!("anodiff-clip-cfg-{}", std::process::id()));
        let odd = ClipTextConfig {
            projection_dim: None,
            pad_token_id: None,
            attention_dropout: 0.1,
            ..ClipTextConfig::sd2()
        };
        for c in [ClipTextConfig::sd15(), ClipTextConfig::sd2(), odd] {
            c.save_config(&dir).unwrap();
            assert_eq!(ClipTextConfig::load_config(&dir).unwrap(), c);
        }
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        assert_eq!(v["architectures"], serde_json::json!(["CLIPTextModel"]));
        assert_eq!(v["hidden_act"], "gelu");
        assert!(v["projection_dim"].is_null());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fresh_model_runs_and_is_causal() {
        let dev = Device::Cpu;
        let cfg = ClipTextConfig {
            vocab_size: 50,
            hidden_size: 16,
            intermediate_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            max_position_embeddings: 8,
            eos_token_id: Some(49),
            ..ClipTextConfig::default()
        };
        let m = ClipTextModel::new(&cfg, &Params::fresh(3, &dev)).unwrap();
        let a = Tensor::new(&[[1u32, 5, 9, 49, 0, 0]], &dev).unwrap();
        let b = Tensor::new(&[[1u32, 5, 9, 49, 3, 4]], &dev).unwrap();
        let (oa, ob) = (m.forward(&a).unwrap(), m.forward(&b).unwrap());
        assert_eq!(oa.pooled.dims(), &[1, 16]);
        // Later tokens cannot change earlier positions.
        let d = (oa.last_hidden_state.narrow(1, 0, 4).unwrap()
            - ob.last_hidden_state.narrow(1, 0, 4).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
        assert!(d < 1e-6, "{d}");
        let mut names = Vec::new();
        m.visit_linears(&mut |l| names.push(l.name.clone()));
        assert_eq!(names.len(), 8);
        assert_eq!(names[0], "text_model.encoder.layers.0.self_attn.q_proj");
        assert!(m.forward(&Tensor::new(&[[50u32]], &dev).unwrap()).is_err());
        assert!(m
            .forward(&Tensor::zeros((1, 9), DType::U32, &dev).unwrap())
            .is_err());
    }
}
