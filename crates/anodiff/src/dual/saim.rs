//! Self-Attention Interaction Module (SAIM, METHODS.md A.4): after every UNet attention layer,
//! the whole-image token and the anomaly-part token at the same spatial position attend to each
//! other, so the two branches stay aligned (the part's defect sits where the whole image has it).
//!
//! On a layer output `o: [2b, T, C]` whose rows alternate whole / part:
//! `x = L(LayerNorm(o))`, regroup to `[b·T, 2, C]`, single-head attention with `Wq, Wk, Wv`
//! (scale 1/√C) and output `Wo`, regroup back, return `o + SAIM(o)`. The weights are full rank and
//! trained; names follow the reference code (`temporal_n`, `temporal_i`, `temporal_{q,k,v,o}`) so
//! its checkpoints can be imported.

use crate::error::{Error, Result};
use crate::nn::{ops, LayerNorm, Linear, Params};
use crate::sd::attention::{AttnCall, AttnProcessor, PassKind};
use candle_core::{Module, Tensor};

/// The SAIM weights of one attention layer (channel width `C` = the layer's query width).
pub struct SaimLayer {
    norm: LayerNorm,
    input: Linear,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    channels: usize,
}

/// LayerNorm epsilon of the reference implementation.
pub const SAIM_NORM_EPS: f64 = 1e-6;

impl SaimLayer {
    /// Loads or creates the weights under `p` (PyTorch default init when fresh).
    pub fn new(p: &Params, channels: usize) -> Result<Self> {
        let lin = |name: &str| Linear::new(&p.pp(name), channels, channels, true);
        Ok(Self {
            norm: LayerNorm::new(&p.pp("temporal_n"), channels, SAIM_NORM_EPS)?,
            input: lin("temporal_i")?,
            q: lin("temporal_q")?,
            k: lin("temporal_k")?,
            v: lin("temporal_v")?,
            out: lin("temporal_o")?,
            channels,
        })
    }

    /// Parameters of one layer of width `c`: LayerNorm (2C) and five C×C linears with bias.
    pub fn parameter_count(c: usize) -> usize {
        5 * c * c + 7 * c
    }

    /// `o: [2b, T, C]`, rows alternating whole / part → `o + SAIM(o)`, same shape.
    pub fn forward(&self, o: &Tensor) -> Result<Tensor> {
        let (rows, t, c) = o.dims3()?;
        if c != self.channels || rows % 2 != 0 {
            return Err(Error::invalid(format!(
                "SAIM expects [2b, T, {}] with whole/part rows interleaved, got {:?}",
                self.channels,
                o.dims()
            )));
        }
        let b = rows / 2;
        let x = self.input.forward(&self.norm.forward(o)?)?;
        // [2b, T, C] -> [b, 2, T, C] -> [b, T, 2, C] -> [b·T, 2, C]: one length-2 sequence per token.
        let x = x
            .reshape((b, 2, t, c))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b * t, 2, c))?;
        let (q, k, v) = (
            self.q.forward(&x)?,
            self.k.forward(&x)?,
            self.v.forward(&x)?,
        );
        let w = ops::softmax_last_dim(&(q.matmul(&k.t()?)? / (c as f64).sqrt())?)?;
        let y = self.out.forward(&w.matmul(&v)?)?;
        let y = y
            .reshape((b, t, 2, c))?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((rows, t, c))?;
        Ok((o + y)?)
    }
}

/// SAIM as the `output` stage of an attention processor. It runs in main passes only (not in
/// BCM's reference pass) and insists on the interleaved whole/part row layout.
pub struct SaimProcessor(pub std::sync::Arc<SaimLayer>);

impl AttnProcessor for SaimProcessor {
    fn output(&self, call: &AttnCall, _hidden: &Tensor, out: Tensor) -> Result<Tensor> {
        if call.ctx.pass == PassKind::Reference {
            return Ok(out);
        }
        check_interleaved(call)?;
        self.0.forward(&out)
    }
}

/// SAIM pairs row 2i (whole, branch 0) with row 2i+1 (part, branch 1); anything else would pair
/// unrelated images silently.
fn check_interleaved(call: &AttnCall) -> Result<()> {
    let ok = match call.ctx.branch.as_deref() {
        Some(b) => b.len() % 2 == 0 && b.chunks(2).all(|p| p == [0, 1]),
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "SAIM at {}: the batch must interleave whole/part rows (branch [0, 1, 0, 1, …]), got {:?}",
            call.layer.name, call.ctx.branch
        )))
    }
}
