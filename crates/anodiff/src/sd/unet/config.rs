//! `unet/config.json` of a diffusers `UNet2DConditionModel`: every key diffusers 0.42.1 writes is a
//! field, so a config is read and written ([`ConfigFile`]) without loss. Missing fields take
//! diffusers' constructor defaults; options this implementation does not have are rejected by
//! [`UNetConfig::validate`] instead of being silently ignored.

use crate::error::{Error, Result};
use crate::sd::config_file::{config_json, diffusers_keys, ConfigFile};
use serde::{Deserialize, Serialize};

/// A config value that is either one value for every block or one value per down block.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum PerBlock<T> {
    /// The same value for every block (written as a bare value).
    One(T),
    /// One value per down block (written as a list).
    Many(Vec<T>),
}

impl<T: Clone> PerBlock<T> {
    /// The value for block `i` of `n` (lists were length-checked by `validate`).
    pub fn get(&self, i: usize) -> T {
        match self {
            PerBlock::One(v) => v.clone(),
            PerBlock::Many(v) => v[i].clone(),
        }
    }

    /// Value for every block, in down-block order.
    pub fn expand(&self, n: usize) -> Vec<T> {
        (0..n).map(|i| self.get(i)).collect()
    }

    fn len_ok(&self, n: usize) -> bool {
        match self {
            PerBlock::One(_) => true,
            PerBlock::Many(v) => v.len() == n,
        }
    }
}

/// Down-path block kinds (`down_block_types`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DownKind {
    /// `CrossAttnDownBlock2D`.
    CrossAttn,
    /// `DownBlock2D`.
    Plain,
}

/// Up-path block kinds (`up_block_types`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpKind {
    /// `CrossAttnUpBlock2D`.
    CrossAttn,
    /// `UpBlock2D`.
    Plain,
}

/// The UNet's `config.json`, field for field (field names are diffusers' keys).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct UNetConfig {
    /// Latent side the model was trained at (defaults the pipelines' image size).
    #[serde(default)]
    pub sample_size: Option<usize>,
    /// Channels of the noisy input (4; 9 for inpainting).
    #[serde(default = "d_four")]
    pub in_channels: usize,
    /// Channels of the prediction.
    #[serde(default = "d_four")]
    pub out_channels: usize,
    /// Map the input `x` to `2x − 1` before `conv_in`.
    #[serde(default)]
    pub center_input_sample: bool,
    /// Cosine half first in the timestep embedding.
    #[serde(default = "d_true")]
    pub flip_sin_to_cos: bool,
    /// Frequency shift of the timestep embedding.
    #[serde(default)]
    pub freq_shift: f64,
    /// `CrossAttnDownBlock2D` or `DownBlock2D`, one per level.
    #[serde(default = "d_down_types")]
    pub down_block_types: Vec<String>,
    /// `UNetMidBlock2DCrossAttn`, or `None` for no mid block.
    #[serde(default = "d_mid_type")]
    pub mid_block_type: Option<String>,
    /// `CrossAttnUpBlock2D` or `UpBlock2D`, one per level (deepest first).
    #[serde(default = "d_up_types")]
    pub up_block_types: Vec<String>,
    /// Must be false (rejected otherwise).
    #[serde(default = "d_false_pb")]
    pub only_cross_attention: PerBlock<bool>,
    /// Channels per level.
    #[serde(default = "d_block_out")]
    pub block_out_channels: Vec<usize>,
    /// Resnets per down block (up blocks have one more).
    #[serde(default = "d_two_pb")]
    pub layers_per_block: PerBlock<usize>,
    /// Padding of the down-sampling convolutions (0 or 1).
    #[serde(default = "d_one")]
    pub downsample_padding: usize,
    /// Mid-block resnets divide their output by this.
    #[serde(default = "d_one_f")]
    pub mid_block_scale_factor: f64,
    /// Resnet activation; only `silu`.
    #[serde(default = "d_silu")]
    pub act_fn: String,
    /// GroupNorm groups (required).
    #[serde(default = "d_groups")]
    pub norm_num_groups: Option<usize>,
    /// GroupNorm epsilon.
    #[serde(default = "d_eps")]
    pub norm_eps: f64,
    /// Width of the text states cross-attention reads.
    #[serde(default = "d_cross")]
    pub cross_attention_dim: PerBlock<usize>,
    /// Transformer blocks inside each transformer.
    #[serde(default = "d_one_pb")]
    pub transformer_layers_per_block: PerBlock<usize>,
    /// diffusers' naming quirk: for SD models this is the number of heads per block.
    #[serde(default = "d_head_pb")]
    pub attention_head_dim: PerBlock<usize>,
    /// diffusers 0.42.1 refuses any non-null value (see `validate`).
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock<usize>>,
    /// Rejected when true.
    #[serde(default)]
    pub dual_cross_attention: bool,
    /// Linear `proj_in`/`proj_out` in the transformers (SD-2) instead of 1×1 convolutions.
    #[serde(default)]
    pub use_linear_projection: bool,
    /// Only affects half-precision attention in diffusers; we compute in f32, so it is ignored.
    #[serde(default)]
    pub upcast_attention: bool,
    /// Rejected when set.
    #[serde(default)]
    pub class_embed_type: Option<String>,
    /// A class-label embedding (diffusers builds one even without `class_embed_type`): rejected.
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
    /// Rejected when set.
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    /// Only read by `addition_embed_type` = `text_time` / `text_image`, which are rejected.
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    /// Only read with `addition_embed_type` (rejected).
    #[serde(default = "d_sixty_four")]
    pub addition_embed_type_num_heads: usize,
    /// Only read by `class_embed_type` = `projection`, which is rejected.
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    /// Only `positional`.
    #[serde(default = "d_positional")]
    pub time_embedding_type: String,
    /// Width of the time embedding (default 4 × the first block's channels).
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    /// Rejected when set.
    #[serde(default)]
    pub time_embedding_act_fn: Option<String>,
    /// Rejected when set.
    #[serde(default)]
    pub timestep_post_act: Option<String>,
    /// Rejected when set.
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    /// Only `default`.
    #[serde(default = "d_default")]
    pub resnet_time_scale_shift: String,
    /// Only used by the `ResnetDownsampleBlock2D` / `SimpleCrossAttn*` blocks, which are rejected.
    #[serde(default)]
    pub resnet_skip_time_act: bool,
    /// Only used by the same unsupported blocks as `resnet_skip_time_act`.
    #[serde(default = "d_one_f")]
    pub resnet_out_scale_factor: f64,
    /// Kernel size of `conv_in` (odd).
    #[serde(default = "d_three")]
    pub conv_in_kernel: usize,
    /// Kernel size of `conv_out` (odd).
    #[serde(default = "d_three")]
    pub conv_out_kernel: usize,
    /// Rejected when set.
    #[serde(default)]
    pub encoder_hid_dim: Option<usize>,
    /// Rejected when set.
    #[serde(default)]
    pub encoder_hid_dim_type: Option<String>,
    /// Only `default`.
    #[serde(default = "d_default")]
    pub attention_type: String,
    /// Rejected when true.
    #[serde(default)]
    pub class_embeddings_concat: bool,
    /// Only false or `None`.
    #[serde(default)]
    pub mid_block_only_cross_attention: Option<bool>,
    /// Rejected when set.
    #[serde(default)]
    pub cross_attention_norm: Option<String>,
    /// Rejected when set.
    #[serde(default)]
    pub reverse_transformer_layers_per_block: Option<serde_json::Value>,
    /// Training-time dropout; not applied by this implementation.
    #[serde(default)]
    pub dropout: f64,
}

fn d_four() -> usize {
    4
}
fn d_sixty_four() -> usize {
    64
}
fn d_three() -> usize {
    3
}
fn d_one() -> usize {
    1
}
fn d_one_f() -> f64 {
    1.0
}
fn d_true() -> bool {
    true
}
fn d_eps() -> f64 {
    1e-5
}
fn d_groups() -> Option<usize> {
    Some(32)
}
fn d_silu() -> String {
    "silu".into()
}
fn d_default() -> String {
    "default".into()
}
fn d_positional() -> String {
    "positional".into()
}
fn d_mid_type() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn d_false_pb() -> PerBlock<bool> {
    PerBlock::One(false)
}
fn d_one_pb() -> PerBlock<usize> {
    PerBlock::One(1)
}
fn d_two_pb() -> PerBlock<usize> {
    PerBlock::One(2)
}
fn d_head_pb() -> PerBlock<usize> {
    PerBlock::One(8)
}
fn d_cross() -> PerBlock<usize> {
    PerBlock::One(1280)
}
fn d_block_out() -> Vec<usize> {
    vec![320, 640, 1280, 1280]
}
fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}
fn d_down_types() -> Vec<String> {
    strings(&[
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ])
}
fn d_up_types() -> Vec<String> {
    strings(&[
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ])
}

impl Default for UNetConfig {
    /// diffusers' constructor defaults (an SD-1-shaped UNet with cross-attention dim 1280).
    fn default() -> Self {
        serde_json::from_str("{}").expect("all UNetConfig fields have defaults")
    }
}

impl UNetConfig {
    /// `runwayml/stable-diffusion-v1-5` (and SD-1.x in general): `unet/config.json`.
    pub fn sd15() -> Self {
        Self {
            sample_size: Some(64),
            in_channels: 4,
            out_channels: 4,
            cross_attention_dim: PerBlock::One(768),
            attention_head_dim: PerBlock::One(8),
            ..Self::default()
        }
    }

    /// `runwayml/stable-diffusion-inpainting`: latents + mask + masked-image latents = 9 channels.
    pub fn sd15_inpaint() -> Self {
        Self {
            in_channels: 9,
            ..Self::sd15()
        }
    }

    /// `stabilityai/stable-diffusion-2-base`: OpenCLIP-H context (1024), linear proj_in/proj_out,
    /// head counts per block.
    pub fn sd2_base() -> Self {
        Self {
            sample_size: Some(64),
            cross_attention_dim: PerBlock::One(1024),
            attention_head_dim: PerBlock::Many(vec![5, 10, 20, 20]),
            use_linear_projection: true,
            ..Self::default()
        }
    }

    /// How many independent passes of this UNet (generation blocks, detection images) are worth
    /// running side by side on [`crate::runtime::Lanes`]: one per worker thread for small UNets
    /// (widest level ≤ 256 channels: the CPU-scale presets), whose many small ops leave cores idle
    /// when split op by op; 1 for SD-size UNets, whose ops already fill the cores and whose
    /// activations would double the peak memory.
    pub fn side_by_side(&self) -> usize {
        match self.block_out_channels.iter().max() {
            Some(&w) if w <= 256 => rayon::current_num_threads().max(1),
            _ => 1,
        }
    }

    /// Number of resolution levels (`block_out_channels.len()`).
    pub fn num_blocks(&self) -> usize {
        self.block_out_channels.len()
    }

    /// Attention heads of down block `i` (also of up block `n-1-i`, which mirrors it).
    /// diffusers: `num_attention_heads = num_attention_heads or attention_head_dim`, and the former
    /// must be null in 0.42.1, so the value comes from `attention_head_dim`.
    pub fn heads(&self, i: usize) -> usize {
        match &self.num_attention_heads {
            Some(h) => h.get(i),
            None => self.attention_head_dim.get(i),
        }
    }

    /// Heads of the mid block: the last per-block entry.
    pub fn mid_heads(&self) -> usize {
        self.heads(self.num_blocks() - 1)
    }

    /// Time-embedding width (`block_out_channels[0] * 4` unless `time_embedding_dim` is set).
    pub fn time_embed_dim(&self) -> usize {
        self.time_embedding_dim
            .unwrap_or(self.block_out_channels[0] * 4)
    }

    /// GroupNorm groups (validated to be present).
    pub fn groups(&self) -> usize {
        self.norm_num_groups.unwrap_or(32)
    }

    /// `down_block_types` parsed; an unsupported type is an error naming it.
    pub fn down_kinds(&self) -> Result<Vec<DownKind>> {
        self.down_block_types
            .iter()
            .map(|t| match t.as_str() {
                "CrossAttnDownBlock2D" => Ok(DownKind::CrossAttn),
                "DownBlock2D" => Ok(DownKind::Plain),
                other => Err(Error::invalid(format!(
                    "unsupported down block type `{other}` (supported: CrossAttnDownBlock2D, DownBlock2D)"
                ))),
            })
            .collect()
    }

    /// `up_block_types` parsed; an unsupported type is an error naming it.
    pub fn up_kinds(&self) -> Result<Vec<UpKind>> {
        self.up_block_types
            .iter()
            .map(|t| match t.as_str() {
                "CrossAttnUpBlock2D" => Ok(UpKind::CrossAttn),
                "UpBlock2D" => Ok(UpKind::Plain),
                other => Err(Error::invalid(format!(
                    "unsupported up block type `{other}` (supported: CrossAttnUpBlock2D, UpBlock2D)"
                ))),
            })
            .collect()
    }

    /// Checks that the config describes a UNet this implementation computes exactly as diffusers
    /// does; every refusal says which field and why.
    pub fn validate(&self) -> Result<()> {
        let n = self.num_blocks();
        let bad = |msg: String| Err(Error::invalid(msg));
        if n == 0 {
            return bad("block_out_channels is empty".into());
        }
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            return bad(format!(
                "need as many down_block_types ({}) and up_block_types ({}) as block_out_channels ({n})",
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        self.down_kinds()?;
        self.up_kinds()?;
        for (name, ok) in [
            ("layers_per_block", self.layers_per_block.len_ok(n)),
            ("attention_head_dim", self.attention_head_dim.len_ok(n)),
            ("cross_attention_dim", self.cross_attention_dim.len_ok(n)),
            (
                "transformer_layers_per_block",
                self.transformer_layers_per_block.len_ok(n),
            ),
            ("only_cross_attention", self.only_cross_attention.len_ok(n)),
        ] {
            if !ok {
                return bad(format!(
                    "{name} must be one value or a list of {n} (one per block)"
                ));
            }
        }
        if self.num_attention_heads.is_some() {
            // diffusers 0.42.1 raises here too (issue #2011): `attention_head_dim` holds the heads.
            return bad(
                "num_attention_heads must be null: diffusers reads the head count from \
                 attention_head_dim for UNet2DConditionModel"
                    .into(),
            );
        }
        match self.mid_block_type.as_deref() {
            None | Some("UNetMidBlock2DCrossAttn") => {}
            Some(other) => {
                return bad(format!(
                "unsupported mid_block_type `{other}` (supported: UNetMidBlock2DCrossAttn or null)"
            ))
            }
        }
        if self.norm_num_groups.is_none() {
            return bad("norm_num_groups = null is not supported".into());
        }
        let unsupported: [(&str, bool); 17] = [
            (
                "act_fn (only silu)",
                self.act_fn != "silu" && self.act_fn != "swish",
            ),
            ("class_embed_type", self.class_embed_type.is_some()),
            ("num_class_embeds", self.num_class_embeds.is_some()),
            ("addition_embed_type", self.addition_embed_type.is_some()),
            (
                "time_embedding_type (only positional)",
                self.time_embedding_type != "positional",
            ),
            (
                "time_embedding_act_fn",
                self.time_embedding_act_fn.is_some(),
            ),
            ("timestep_post_act", self.timestep_post_act.is_some()),
            ("time_cond_proj_dim", self.time_cond_proj_dim.is_some()),
            ("dual_cross_attention", self.dual_cross_attention),
            (
                "resnet_time_scale_shift (only default)",
                self.resnet_time_scale_shift != "default",
            ),
            (
                "encoder_hid_dim / encoder_hid_dim_type",
                self.encoder_hid_dim.is_some() || self.encoder_hid_dim_type.is_some(),
            ),
            (
                "attention_type (only default)",
                self.attention_type != "default",
            ),
            ("class_embeddings_concat", self.class_embeddings_concat),
            ("cross_attention_norm", self.cross_attention_norm.is_some()),
            (
                "reverse_transformer_layers_per_block",
                self.reverse_transformer_layers_per_block.is_some(),
            ),
            (
                "only_cross_attention",
                (0..n).any(|i| self.only_cross_attention.get(i)),
            ),
            (
                "mid_block_only_cross_attention",
                self.mid_block_only_cross_attention == Some(true),
            ),
        ];
        if let Some((name, _)) = unsupported.iter().find(|(_, set)| *set) {
            return bad(format!(
                "UNet config option {name} is set; it is not supported by this implementation"
            ));
        }
        if self.downsample_padding > 1 {
            return bad(format!(
                "downsample_padding {} is not supported (0 or 1)",
                self.downsample_padding
            ));
        }
        if self.conv_in_kernel.is_multiple_of(2) || self.conv_out_kernel.is_multiple_of(2) {
            return bad("conv_in_kernel / conv_out_kernel must be odd".into());
        }
        let kinds = self.down_kinds()?;
        for (i, &ch) in self.block_out_channels.iter().enumerate() {
            let heads = self.heads(i);
            let has_attn = kinds[i] == DownKind::CrossAttn
                || self.up_kinds()?[n - 1 - i] == UpKind::CrossAttn
                || (i == n - 1 && self.mid_block_type.is_some());
            if has_attn && (heads == 0 || ch % heads != 0) {
                return bad(format!(
                    "block {i}: {ch} channels cannot be split into {heads} attention heads"
                ));
            }
        }
        Ok(())
    }
}

impl ConfigFile for UNetConfig {
    const FILE_NAME: &'static str = "config.json";

    fn to_json(&self) -> serde_json::Value {
        config_json(self, &diffusers_keys("UNet2DConditionModel"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_config_loads_back_equal() {
        let dir = std::env::temp_dir().join(format!("anodiff-unet-cfg-{}", std::process::id()));
        let custom = UNetConfig {
            sample_size: None,
            mid_block_type: None,
            layers_per_block: PerBlock::Many(vec![1, 2]),
            block_out_channels: vec![32, 64],
            down_block_types: strings(&["CrossAttnDownBlock2D", "DownBlock2D"]),
            up_block_types: strings(&["UpBlock2D", "CrossAttnUpBlock2D"]),
            norm_eps: 1e-6,
            freq_shift: 1.0,
            dropout: 0.1,
            ..UNetConfig::sd15()
        };
        for c in [UNetConfig::sd15(), UNetConfig::sd2_base(), custom] {
            let path = c.save_config(&dir).unwrap();
            assert!(path.ends_with("config.json"));
            assert_eq!(UNetConfig::load_config(&dir).unwrap(), c);
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            assert_eq!(v["_class_name"], "UNet2DConditionModel");
            assert!(v["num_attention_heads"].is_null() && v.get("_diffusers_version").is_some());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn presets_validate_and_head_lists_resolve() {
        for c in [
            UNetConfig::sd15(),
            UNetConfig::sd15_inpaint(),
            UNetConfig::sd2_base(),
        ] {
            c.validate().unwrap();
        }
        let c = UNetConfig::sd2_base();
        assert_eq!((c.heads(0), c.heads(3), c.mid_heads()), (5, 20, 20));
        assert_eq!(UNetConfig::sd15().time_embed_dim(), 1280);
    }

    #[test]
    fn parses_diffusers_json_and_rejects_unsupported() {
        let c: UNetConfig = serde_json::from_str(
            r#"{"attention_head_dim": [5, 10, 20, 20], "num_attention_heads": null,
                "cross_attention_dim": 1024, "addition_embed_type": null, "mid_block_type": null}"#,
        )
        .unwrap();
        assert_eq!(c.attention_head_dim, PerBlock::Many(vec![5, 10, 20, 20]));
        assert!(c.mid_block_type.is_none());
        c.validate().unwrap();
        let c: UNetConfig =
            serde_json::from_str(r#"{"addition_embed_type": "text_time"}"#).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("addition_embed_type"), "{e}");
        // diffusers builds a class embedding from num_class_embeds alone.
        let c: UNetConfig = serde_json::from_str(r#"{"num_class_embeds": 10}"#).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("num_class_embeds"), "{e}");
        let c: UNetConfig = serde_json::from_str(r#"{"num_attention_heads": 8}"#).unwrap();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("num_attention_heads"));
        let c: UNetConfig = serde_json::from_str(r#"{"attention_head_dim": [8, 8]}"#).unwrap();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("attention_head_dim"));
    }
}
