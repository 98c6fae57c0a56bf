//! diffusers-style `Attention` layer (`to_q`, `to_k`, `to_v`, `to_out.0`) whose computation is
//! delegated, stage by stage, to an [`AttnProcessor`] chosen per layer.
//!
//! This is the one hook through which everything that customises attention plugs in — LoRA sets
//! (`linear`), BCM reference attention (`kv_source`), probes of a projection (`project`),
//! attention-map capture or a fast kernel (`attend`), SAIM (`output`) — so the UNet is never
//! forked. Processors compose with [`ProcessorStack`]; they keep state across passes through
//! interior mutability.

use crate::error::Result;
use crate::nn::{ops, Linear, Params};
use candle_core::{Module, Tensor};
use std::sync::{Arc, RwLock};

/// Which of a transformer block's two attention layers this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnKind {
    /// `attn1`: keys/values from the hidden states themselves.
    SelfAttn,
    /// `attn2`: keys/values from the text encoder states.
    Cross,
}

/// Static facts about one attention layer.
#[derive(Clone, Debug)]
pub struct AttnLayerInfo {
    /// diffusers module path, e.g. `down_blocks.0.attentions.1.transformer_blocks.0.attn2`.
    pub name: String,
    /// Position of the layer in forward order among the model's attention layers (0-based).
    pub index: usize,
    /// Self- or cross-attention.
    pub kind: AttnKind,
    /// Number of heads.
    pub heads: usize,
    /// Channels per head.
    pub head_dim: usize,
    /// Channels of the hidden states (query input and output).
    pub query_dim: usize,
    /// Channels of the key/value input (the text states for cross-attention).
    pub context_dim: usize,
}

/// What a UNet forward pass is for, so stateful processors know whether to record or to apply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PassKind {
    /// The pass whose output is used: sampling steps, training losses, plain inference.
    #[default]
    Main,
    /// An extra pass run only so processors can record features that the following main pass of
    /// the same step uses (DualAnoDiff's BCM runs the reference image through the UNet this way);
    /// its output is discarded.
    Reference,
}

/// Per-forward-pass information shared by all layers (built by the caller of the model).
#[derive(Clone, Debug, Default)]
pub struct ForwardCtx {
    /// For each batch row, which branch / LoRA set it belongs to (DualAnoDiff: 0 whole, 1 part).
    pub branch: Option<Vec<usize>>,
    /// The diffusion timestep of this pass, when there is one.
    pub timestep: Option<f64>,
    /// What the pass is for (default: [`PassKind::Main`]).
    pub pass: PassKind,
    /// Sees every attention layer's input and output in this pass only (after the layer's own
    /// processor). Read-only taps such as feature extraction use this rather than swapping the
    /// model's processors, so passes running at the same time on other threads are untouched.
    pub observer: Option<Observer>,
}

/// Looks at one attention layer's result without changing it (see [`ForwardCtx::observer`]).
pub trait AttnObserver: Send + Sync {
    /// `hidden`: the layer's input `[B, T, C]`; `out`: its output after the processor.
    fn observe(&self, call: &AttnCall, hidden: &Tensor, out: &Tensor) -> Result<()>;
}

/// A shared [`AttnObserver`] in a [`ForwardCtx`].
#[derive(Clone)]
pub struct Observer(pub Arc<dyn AttnObserver>);

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer(..)")
    }
}

/// What a processor sees about the current call.
pub struct AttnCall<'a> {
    /// The layer being called.
    pub layer: &'a AttnLayerInfo,
    /// The forward pass it belongs to.
    pub ctx: &'a ForwardCtx,
    /// Spatial size (h, w) of the token grid for UNet layers; None for text layers.
    pub hw: Option<(usize, usize)>,
}

/// The four projections of an attention layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proj {
    /// Query (`to_q`).
    Q,
    /// Key (`to_k`).
    K,
    /// Value (`to_v`).
    V,
    /// Output (`to_out.0`).
    Out,
}

impl Proj {
    /// Every projection, in the order a call computes them (also their index: `p as usize`).
    pub const ALL: [Proj; 4] = [Proj::Q, Proj::K, Proj::V, Proj::Out];

    /// The diffusers module name of the projection inside its attention layer.
    pub fn suffix(self) -> &'static str {
        match self {
            Proj::Q => "to_q",
            Proj::K => "to_k",
            Proj::V => "to_v",
            Proj::Out => "to_out.0",
        }
    }
}

/// Stages of one attention call; every method has the plain-attention default.
pub trait AttnProcessor: Send + Sync {
    /// Source of keys and values. `kv` is the default (context for cross-attention, else `hidden`).
    fn kv_source(&self, _call: &AttnCall, _hidden: &Tensor, kv: Tensor) -> Result<Tensor> {
        Ok(kv)
    }
    /// Computes a projection in place of the layer's own `forward` (LoRA fuses its change with the
    /// frozen base layer here); `None` leaves it to the next processor / the layer. `project` still
    /// runs on the result.
    fn linear(
        &self,
        _call: &AttnCall,
        _proj: Proj,
        _layer: &Linear,
        _input: &Tensor,
    ) -> Result<Option<Tensor>> {
        Ok(None)
    }
    /// Post-processes a projection: `input` went into the layer's linear map, `output` came out.
    fn project(
        &self,
        _call: &AttnCall,
        _proj: Proj,
        _input: &Tensor,
        output: Tensor,
    ) -> Result<Tensor> {
        Ok(output)
    }
    /// Replaces the attention computation. `q: [B, H, T, d]`, `k, v: [B, H, S, d]`; return
    /// `Some([B, H, T, d])`, or `None` to leave it to the next processor / the default.
    fn attend(
        &self,
        _call: &AttnCall,
        _q: &Tensor,
        _k: &Tensor,
        _v: &Tensor,
        _scale: f64,
    ) -> Result<Option<Tensor>> {
        Ok(None)
    }
    /// Post-processes the layer output (after `to_out`), before the block's residual add.
    fn output(&self, _call: &AttnCall, _hidden: &Tensor, out: Tensor) -> Result<Tensor> {
        Ok(out)
    }
}

/// Plain scaled-dot-product attention.
pub struct DefaultProcessor;
impl AttnProcessor for DefaultProcessor {}

/// Several processors applied in order at every stage; for `linear` and `attend` the first that
/// answers wins.
pub struct ProcessorStack(pub Vec<Arc<dyn AttnProcessor>>);

impl AttnProcessor for ProcessorStack {
    fn kv_source(&self, call: &AttnCall, hidden: &Tensor, mut kv: Tensor) -> Result<Tensor> {
        for p in &self.0 {
            kv = p.kv_source(call, hidden, kv)?;
        }
        Ok(kv)
    }
    fn project(
        &self,
        call: &AttnCall,
        proj: Proj,
        input: &Tensor,
        mut output: Tensor,
    ) -> Result<Tensor> {
        for p in &self.0 {
            output = p.project(call, proj, input, output)?;
        }
        Ok(output)
    }
    fn linear(
        &self,
        call: &AttnCall,
        proj: Proj,
        layer: &Linear,
        input: &Tensor,
    ) -> Result<Option<Tensor>> {
        for p in &self.0 {
            if let Some(y) = p.linear(call, proj, layer, input)? {
                return Ok(Some(y));
            }
        }
        Ok(None)
    }
    fn attend(
        &self,
        call: &AttnCall,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        scale: f64,
    ) -> Result<Option<Tensor>> {
        for p in &self.0 {
            if let Some(o) = p.attend(call, q, k, v, scale)? {
                return Ok(Some(o));
            }
        }
        Ok(None)
    }
    fn output(&self, call: &AttnCall, hidden: &Tensor, mut out: Tensor) -> Result<Tensor> {
        for p in &self.0 {
            out = p.output(call, hidden, out)?;
        }
        Ok(out)
    }
}

/// One attention layer: four projections plus the processor that runs them.
pub struct Attention {
    /// Static facts about the layer.
    pub info: AttnLayerInfo,
    /// Query projection `[query_dim → heads·head_dim]`, no bias.
    pub to_q: Linear,
    /// Key projection `[context_dim → heads·head_dim]`, no bias.
    pub to_k: Linear,
    /// Value projection `[context_dim → heads·head_dim]`, no bias.
    pub to_v: Linear,
    /// Output projection `[heads·head_dim → query_dim]`, with bias.
    pub to_out: Linear,
    processor: RwLock<Arc<dyn AttnProcessor>>,
}

impl Attention {
    /// diffusers `Attention` without q/k/v bias and with an output bias, as in SD's UNet.
    pub fn new(p: &Params, info: AttnLayerInfo) -> Result<Self> {
        let inner = info.heads * info.head_dim;
        Ok(Self {
            to_q: Linear::new(&p.pp(Proj::Q.suffix()), info.query_dim, inner, false)?,
            to_k: Linear::new(&p.pp(Proj::K.suffix()), info.context_dim, inner, false)?,
            to_v: Linear::new(&p.pp(Proj::V.suffix()), info.context_dim, inner, false)?,
            to_out: Linear::new(&p.pp(Proj::Out.suffix()), inner, info.query_dim, true)?,
            info,
            processor: RwLock::new(Arc::new(DefaultProcessor)),
        })
    }

    /// The layer's linear for projection `p`.
    pub fn proj(&self, p: Proj) -> &Linear {
        match p {
            Proj::Q => &self.to_q,
            Proj::K => &self.to_k,
            Proj::V => &self.to_v,
            Proj::Out => &self.to_out,
        }
    }

    /// Replaces the layer's processor (the default is [`DefaultProcessor`]).
    pub fn set_processor(&self, p: Arc<dyn AttnProcessor>) {
        *self.processor.write().unwrap() = p;
    }

    /// The layer's current processor.
    pub fn processor(&self) -> Arc<dyn AttnProcessor> {
        self.processor.read().unwrap().clone()
    }

    /// `hidden: [B, T, query_dim]`, `context: [B, S, context_dim]` for cross-attention.
    pub fn forward(
        &self,
        hidden: &Tensor,
        context: Option<&Tensor>,
        ctx: &ForwardCtx,
        hw: Option<(usize, usize)>,
    ) -> Result<Tensor> {
        let proc = self.processor();
        let call = AttnCall {
            layer: &self.info,
            ctx,
            hw,
        };
        let kv_in = proc.kv_source(&call, hidden, context.unwrap_or(hidden).clone())?;
        let project = |proj: Proj, layer: &Linear, input: &Tensor| -> Result<Tensor> {
            let y = match proc.linear(&call, proj, layer, input)? {
                Some(y) => y,
                None => layer.forward(input)?,
            };
            proc.project(&call, proj, input, y)
        };
        let q = project(Proj::Q, &self.to_q, hidden)?;
        let k = project(Proj::K, &self.to_k, &kv_in)?;
        let v = project(Proj::V, &self.to_v, &kv_in)?;
        let (q, k, v) = (self.heads(&q)?, self.heads(&k)?, self.heads(&v)?);
        let scale = 1.0 / (self.info.head_dim as f64).sqrt();
        let o = match proc.attend(&call, &q, &k, &v, scale)? {
            Some(o) => o,
            None => ops::sdpa(&q, &k, &v, scale)?,
        };
        let o = self.merge_heads(&o)?;
        let out = project(Proj::Out, &self.to_out, &o)?;
        let out = proc.output(&call, hidden, out)?;
        if let Some(obs) = &ctx.observer {
            obs.0.observe(&call, hidden, &out)?;
        }
        Ok(out)
    }

    /// `[B, T, H·d] → [B, H, T, d]`.
    pub fn heads(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        x.reshape((b, t, self.info.heads, self.info.head_dim))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// `[B, H, T, d] → [B, T, H·d]`.
    pub fn merge_heads(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, h, t, d) = x.dims4()?;
        x.transpose(1, 2)?.reshape((b, t, h * d))
    }
}

/// Anything that holds attention layers lets callers visit them in forward order (to install
/// processors by name or index).
pub trait HasAttention {
    /// Calls `f` on every attention layer in forward order.
    fn visit_attention(&self, f: &mut dyn FnMut(&Attention));

    /// Installs `make(info)` as the processor of every attention layer.
    fn set_attn_processors(&self, make: &mut dyn FnMut(&AttnLayerInfo) -> Arc<dyn AttnProcessor>) {
        self.visit_attention(&mut |a| a.set_processor(make(&a.info)));
    }

    /// Every layer's [`AttnLayerInfo`], in forward order.
    fn attention_infos(&self) -> Vec<AttnLayerInfo> {
        let mut v = Vec::new();
        self.visit_attention(&mut |a| v.push(a.info.clone()));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use std::sync::Mutex;

    fn layer(kind: AttnKind) -> Attention {
        let info = AttnLayerInfo {
            name: "t.attn".into(),
            index: 0,
            kind,
            heads: 2,
            head_dim: 4,
            query_dim: 8,
            context_dim: if kind == AttnKind::Cross { 6 } else { 8 },
        };
        Attention::new(&Params::fresh(1, &Device::Cpu), info).unwrap()
    }

    /// Records attention probabilities; proves a processor can replace the computation and keep state.
    struct Capture(Mutex<Vec<Tensor>>);
    impl AttnProcessor for Capture {
        fn attend(
            &self,
            _c: &AttnCall,
            q: &Tensor,
            k: &Tensor,
            v: &Tensor,
            scale: f64,
        ) -> Result<Option<Tensor>> {
            let probs = ops::softmax_last_dim(&(q.matmul(&k.t()?)? * scale)?)?;
            self.0.lock().unwrap().push(probs.clone());
            Ok(Some(probs.matmul(v)?))
        }
    }

    #[test]
    fn capture_processor_sees_maps_and_matches_default() {
        let a = layer(AttnKind::Cross);
        let dev = Device::Cpu;
        let h = Tensor::randn(0f32, 1.0, (3, 5, 8), &dev).unwrap();
        let c = Tensor::randn(0f32, 1.0, (3, 7, 6), &dev).unwrap();
        let ctx = ForwardCtx::default();
        let plain = a.forward(&h, Some(&c), &ctx, None).unwrap();
        let cap = Arc::new(Capture(Mutex::new(Vec::new())));
        a.set_processor(cap.clone());
        let got = a.forward(&h, Some(&c), &ctx, None).unwrap();
        let maps = cap.0.lock().unwrap();
        assert_eq!(maps.len(), 1);
        assert_eq!(maps[0].dims(), &[3, 2, 5, 7]);
        let rowsum = maps[0].sum_keepdim(3).unwrap();
        let err = (rowsum - 1.0)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(err < 1e-6);
        let d = (plain - got)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-6, "capture changed the output by {d}");
    }

    /// A stack applies output hooks in order and sees the batch layout through the context.
    struct AddBranch;
    impl AttnProcessor for AddBranch {
        fn output(&self, call: &AttnCall, _h: &Tensor, out: Tensor) -> Result<Tensor> {
            let b = call.ctx.branch.clone().unwrap();
            let add = Tensor::new(
                b.iter().map(|&x| x as f32).collect::<Vec<_>>(),
                out.device(),
            )?
            .reshape((b.len(), 1, 1))?;
            Ok(out.broadcast_add(&add)?)
        }
    }

    #[test]
    fn stack_composes_and_reads_branch_layout() {
        let a = layer(AttnKind::SelfAttn);
        let h = Tensor::zeros((2, 3, 8), DType::F32, &Device::Cpu).unwrap();
        let ctx = ForwardCtx {
            branch: Some(vec![0, 1]),
            ..Default::default()
        };
        let base = a.forward(&h, None, &ctx, Some((1, 3))).unwrap();
        a.set_processor(Arc::new(ProcessorStack(vec![
            Arc::new(AddBranch),
            Arc::new(AddBranch),
        ])));
        let got = a.forward(&h, None, &ctx, Some((1, 3))).unwrap();
        let diff = (got - base).unwrap();
        let row0 = diff
            .get(0)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let row1 = diff
            .get(1)
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(row0 < 1e-6);
        assert!((row1 - 2.0).abs() < 1e-5);
    }
}
