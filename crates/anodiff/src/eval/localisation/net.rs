//! The segmentation network: DRAEM's discriminative subnetwork (an encoder of six levels of
//! [conv3×3 → norm → ReLU]×2 with widths w, 2w, 4w, 8w, 8w, 8w and 2×2 max-pooling between them; a
//! decoder that upsamples ×2, convolves, concatenates the encoder skip and applies two more conv
//! blocks, back to full resolution; a final 3×3 conv to 2 logits).
//!
//! Normalisation is GroupNorm, not DRAEM's BatchNorm: its statistics are per image, so training
//! (batches of mixed good/defect images) and prediction (eval batches) compute the same function;
//! BatchNorm's running statistics drift between the two and depend on the batch composition.

use crate::error::{Error, Result};
use crate::io::json::{read_json, write_json};
use crate::nn::tensor_files::{read_safetensors, write_safetensors};
use crate::nn::{Conv2d, GroupNorm, Params};
use candle_core::{Device, Module, Tensor, D};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// Encoder levels; the input side must be divisible by 2^(LEVELS-1).
const LEVELS: usize = 6;
/// The input side must be a multiple of this (one halving per encoder level below the first).
pub const SIZE_MULTIPLE: usize = 1 << (LEVELS - 1);

/// Shape of a [`LocalisationNet`], stored next to its weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NetConfig {
    /// Base width w (encoder channels w, 2w, 4w, 8w, 8w, 8w).
    pub width: usize,
    /// Input channels (3 for RGB).
    pub in_ch: usize,
    /// Standardise each input image (subtract its mean, divide by its std): MTD's defective images
    /// are systematically brighter than the good ones, so raw intensity would be a shortcut.
    pub standardise: bool,
}

/// Number of GroupNorm groups for `c` channels: up to 32 groups of at least 2 channels (a group
/// of one channel would be InstanceNorm, which discards per-channel contrast).
pub fn groups_for(c: usize) -> usize {
    let mut g = 32usize;
    while g > 1 && (!c.is_multiple_of(g) || c / g < 2) {
        g /= 2;
    }
    g
}

/// [conv3×3 → GroupNorm → ReLU] × n.
struct ConvBlock {
    layers: Vec<(Conv2d, GroupNorm)>,
}

impl ConvBlock {
    /// Layer names follow the PyTorch `Sequential` indices of DRAEM (conv 0, norm 1, conv 3,
    /// norm 4; `offset` shifts them for the decoder's upsampling blocks, whose index 0 is the
    /// upsample).
    fn new(
        p: &Params,
        names: &mut Vec<(String, Tensor)>,
        chans: &[(usize, usize)],
        offset: usize,
    ) -> Result<Self> {
        let mut layers = Vec::new();
        for (i, &(inp, out)) in chans.iter().enumerate() {
            let cp = p.pp(offset + 3 * i);
            let np = p.pp(offset + 3 * i + 1);
            let conv = Conv2d::new(&cp, inp, out, 3, 1, 1)?;
            let norm = GroupNorm::new(&np, groups_for(out), out, 1e-5)?;
            names.push((format!("{}.weight", cp.prefix()), conv.weight.clone()));
            if let Some(b) = &conv.bias {
                names.push((format!("{}.bias", cp.prefix()), b.clone()));
            }
            names.push((format!("{}.weight", np.prefix()), norm.weight.clone()));
            names.push((format!("{}.bias", np.prefix()), norm.bias.clone()));
            layers.push((conv, norm));
        }
        Ok(Self { layers })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for (conv, norm) in &self.layers {
            // GroupNorm and ReLU in one kernel (one pass and one backward node fewer).
            h = norm.forward_relu(&conv.forward(&h)?)?;
        }
        Ok(h)
    }
}

/// Nearest-neighbour ×2 upsampling from broadcast + reshape (its backward is a plain sum; candle's
/// `upsample_nearest2d` backward overwrites instead of accumulating).
fn upsample2(x: &Tensor) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    x.reshape((b, c, h, 1, w, 1))?
        .broadcast_as((b, c, h, 2, w, 2))?
        .contiguous()?
        .reshape((b, c, 2 * h, 2 * w))
}

/// The localisation U-Net (see the module doc); built fresh for training or loaded from a run.
pub struct LocalisationNet {
    /// Its shape.
    pub config: NetConfig,
    encoder: Vec<ConvBlock>,
    /// Per decoder level (deepest first): the upsampling conv block and the fusion block.
    decoder: Vec<(ConvBlock, ConvBlock)>,
    fin_out: Conv2d,
    tensors: Vec<(String, Tensor)>,
}

impl LocalisationNet {
    /// Builds the network with weights from `p` (`Params::fresh` for training from scratch).
    pub fn new(p: &Params, width: usize, in_ch: usize) -> Result<Self> {
        Self::with_config(
            p,
            NetConfig {
                width,
                in_ch,
                standardise: true,
            },
        )
    }

    /// Builds the network described by `config` with weights from `p`.
    pub fn with_config(p: &Params, config: NetConfig) -> Result<Self> {
        let (w, in_ch) = (config.width, config.in_ch);
        if w == 0 || in_ch == 0 {
            return Err(Error::invalid(format!(
                "localisation net: width ({w}) and input channels ({in_ch}) must be at least 1"
            )));
        }
        let widths = [w, 2 * w, 4 * w, 8 * w, 8 * w, 8 * w];
        let mut tensors = Vec::new();
        let enc = p.pp("encoder");
        let mut encoder = Vec::with_capacity(LEVELS);
        let mut prev = in_ch;
        for (i, &c) in widths.iter().enumerate() {
            let bp = enc.pp(format!("block{}", i + 1));
            encoder.push(ConvBlock::new(&bp, &mut tensors, &[(prev, c), (c, c)], 0)?);
            prev = c;
        }
        // Decoder level k (deepest first) upsamples from widths[k+1] to widths[k], concatenates
        // the skip of widths[k] channels and fuses back to widths[k]. DRAEM names the deepest
        // level `up_b`/`db_b`, then `up1`..`up4`/`db1`..`db4`.
        let dec = p.pp("decoder");
        let mut decoder = Vec::with_capacity(LEVELS - 1);
        for (j, k) in (0..LEVELS - 1).rev().enumerate() {
            let tag = if j == 0 {
                "b".to_string()
            } else {
                j.to_string()
            };
            let (from, to) = (widths[k + 1], widths[k]);
            let up = ConvBlock::new(&dec.pp(format!("up{tag}")), &mut tensors, &[(from, to)], 1)?;
            let fuse = ConvBlock::new(
                &dec.pp(format!("db{tag}")),
                &mut tensors,
                &[(2 * to, to), (to, to)],
                0,
            )?;
            decoder.push((up, fuse));
        }
        let fp = dec.pp("fin_out").pp(0);
        let fin_out = Conv2d::new(&fp, w, 2, 3, 1, 1)?;
        tensors.push((format!("{}.weight", fp.prefix()), fin_out.weight.clone()));
        if let Some(b) = &fin_out.bias {
            tensors.push((format!("{}.bias", fp.prefix()), b.clone()));
        }
        Ok(Self {
            config,
            encoder,
            decoder,
            fin_out,
            tensors,
        })
    }

    /// Checks the input: `[B, in_ch, H, W]` with H and W positive multiples of 32.
    pub fn check_input(&self, x: &Tensor) -> Result<()> {
        let dims = x.dims();
        let ok_rank = dims.len() == 4 && dims[1] == self.config.in_ch;
        let ok_size = dims.len() == 4
            && dims[2] > 0
            && dims[3] > 0
            && dims[2].is_multiple_of(SIZE_MULTIPLE)
            && dims[3].is_multiple_of(SIZE_MULTIPLE);
        if !ok_rank || !ok_size {
            return Err(Error::invalid(format!(
                "localisation net: input must be [B, {}, H, W] with H and W multiples of \
                 {SIZE_MULTIPLE}, got {dims:?}",
                self.config.in_ch
            )));
        }
        Ok(())
    }

    /// `x: [B, in_ch, H, W]` in [0, 1] → `[B, 2, H, W]` logits (class 1 = anomalous).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.check_input(x)?;
        let x = if self.config.standardise {
            standardise(x)?
        } else {
            x.clone()
        };
        let mut skips = Vec::with_capacity(LEVELS);
        let mut h = x;
        for (i, block) in self.encoder.iter().enumerate() {
            if i > 0 {
                h = crate::nn::ops::max_pool2d(&h, 2, 2)?;
            }
            h = block.forward(&h)?;
            skips.push(h.clone());
        }
        for (j, (up, fuse)) in self.decoder.iter().enumerate() {
            let skip = &skips[LEVELS - 2 - j];
            let u = up.forward(&upsample2(&h)?)?;
            h = fuse.forward(&Tensor::cat(&[&u, skip], 1)?)?;
        }
        Ok(self.fin_out.forward(&h)?)
    }

    /// Every parameter tensor with its name.
    pub fn tensors(&self) -> &[(String, Tensor)] {
        &self.tensors
    }

    /// Writes the weights (`path`, safetensors) and the config (`path` with extension `json`).
    pub fn save(&self, path: &Path) -> Result<()> {
        let detached: Vec<(String, Tensor)> = self
            .tensors
            .iter()
            .map(|(n, t)| (n.clone(), t.detach()))
            .collect();
        write_safetensors(path, &detached)?;
        let cfg_path = path.with_extension("json");
        write_json(&cfg_path, &self.config)
    }

    /// Loads weights written by [`save`](Self::save). Width and input channels come from the
    /// tensor shapes; `standardise` from the sibling `.json` (default on when it is absent).
    pub fn load(path: &Path) -> Result<Self> {
        let dev = Device::Cpu;
        let tensors: HashMap<String, Tensor> = read_safetensors(path, &dev)?.into_iter().collect();
        let first = "encoder.block1.0.weight";
        let t = tensors.get(first).ok_or_else(|| Error::MissingTensor {
            name: first.into(),
            looked_in: path.display().to_string(),
        })?;
        let (width, in_ch, _, _) = t.dims4()?;
        let cfg_path = path.with_extension("json");
        let standardise = if cfg_path.is_file() {
            read_json::<NetConfig>(&cfg_path)?.standardise
        } else {
            true
        };
        let p = Params::from_tensors(tensors, &dev);
        let net = Self::with_config(
            &p,
            NetConfig {
                width,
                in_ch,
                standardise,
            },
        )
        .map_err(|e| Error::config(path, e))?;
        let unused = p.unused();
        if !unused.is_empty() {
            return Err(Error::config(
                path,
                format!("tensors not used by the localisation net: {unused:?}"),
            ));
        }
        Ok(net)
    }
}

/// Per-image standardisation over channels and pixels.
pub fn standardise(x: &Tensor) -> candle_core::Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let flat = x.reshape((b, c * h * w))?;
    let mean = flat.mean_keepdim(D::Minus1)?;
    let xc = flat.broadcast_sub(&mean)?;
    let std = xc.sqr()?.mean_keepdim(D::Minus1)?.sqrt()?;
    xc.broadcast_div(&(std + 1e-4)?)?.reshape((b, c, h, w))
}
