//! Median wall time of the SD hot ops at SD-1.5 64×64-latent shapes, our kernels vs candle's own
//! path, in one process. Keys match `tools/bench_reference.py ops` (PyTorch).

use crate::kernels::{attention, conv2d, groupnorm};
use crate::nn::ops::sdpa_basic;
use candle_core::{Device, Tensor, Var};
use std::time::Instant;

/// One benchmarked op: median milliseconds of our kernel and of candle's path.
#[derive(Debug, Clone)]
pub struct OpTiming {
    /// Op key, one of [`KEYS`].
    pub key: &'static str,
    /// Median milliseconds with our kernels.
    pub ours_ms: f64,
    /// Median milliseconds with candle's own ops (NaN when not measured).
    pub candle_ms: f64,
}

/// Median of `iters` timed runs of `f` after one warm-up run.
pub fn median_ms(
    iters: usize,
    mut f: impl FnMut() -> candle_core::Result<()>,
) -> candle_core::Result<f64> {
    f()?;
    let mut t = Vec::with_capacity(iters.max(1));
    for _ in 0..iters.max(1) {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

fn randn(shape: &[usize]) -> candle_core::Result<Tensor> {
    Tensor::randn(0f32, 1.0, shape, &Device::Cpu)
}

/// conv 3×3 320→320 pad 1 with bias on `[2, 320, 64, 64]`.
fn conv(ours: bool, x: &Tensor, w: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    if ours {
        return conv2d::conv2d_bias(x, w, Some(b), 1, 1);
    }
    x.conv2d(w, 1, 1, 1, 1)?
        .broadcast_add(&b.reshape((1, (), 1, 1))?)
}

/// The op keys [`run`] knows, in its order.
pub const KEYS: [&str; 5] = [
    "conv_fwd",
    "conv_fwd_bwd",
    "groupnorm_silu_fwd_bwd",
    "attention_fwd",
    "attention_fwd_bwd",
];

/// Runs every op `iters` times with our kernels and, when `candle`, with candle's own path
/// (`candle_ms` is NaN otherwise). `keys` filters (empty = all); an unknown key is an error.
pub fn run(iters: usize, keys: &[&str], candle: bool) -> candle_core::Result<Vec<OpTiming>> {
    if let Some(k) = keys.iter().find(|k| !KEYS.contains(k)) {
        candle_core::bail!("unknown op `{k}` (known: {})", KEYS.join(", "))
    }
    let want = |k: &str| keys.is_empty() || keys.contains(&k);
    let mut out = Vec::new();
    let x = Var::from_tensor(&randn(&[2, 320, 64, 64])?)?;
    let w = Var::from_tensor(&(randn(&[320, 320, 3, 3])? * 0.02)?)?;
    let b = Var::from_tensor(&randn(&[320])?)?;
    let r = randn(&[2, 320, 64, 64])?;
    let mut time = |key: &'static str, f: &dyn Fn(bool) -> candle_core::Result<()>| {
        if want(key) {
            let ours_ms = median_ms(iters, || f(true))?;
            let candle_ms = match candle {
                true => median_ms(iters, || f(false))?,
                false => f64::NAN,
            };
            out.push(OpTiming {
                key,
                ours_ms,
                candle_ms,
            });
        }
        candle_core::Result::Ok(())
    };
    time("conv_fwd", &|o| {
        conv(o, x.as_tensor(), w.as_tensor(), b.as_tensor()).map(drop)
    })?;
    time("conv_fwd_bwd", &|o| {
        let y = conv(o, &x, &w, &b)?;
        (y * &r)?.sum_all()?.backward().map(drop)
    })?;
    let gamma = Var::from_tensor(&randn(&[320])?)?;
    let beta = Var::from_tensor(&randn(&[320])?)?;
    time("groupnorm_silu_fwd_bwd", &|o| {
        let y = if o {
            groupnorm::group_norm(&x, &gamma, &beta, 32, 1e-5, groupnorm::Act::Silu)?
        } else {
            groupnorm::reference(&x, &gamma, &beta, 32, 1e-5, groupnorm::Act::Silu)?
        };
        (y * &r)?.sum_all()?.backward().map(drop)
    })?;
    let (q, k, v) = (
        randn(&[1, 16, 1024, 40])?,
        randn(&[1, 16, 1024, 40])?,
        randn(&[1, 16, 1024, 40])?,
    );
    let scale = 1.0 / (40f64).sqrt();
    time("attention_fwd", &|o| {
        if o {
            attention::attention(&q, &k, &v, scale).map(drop)
        } else {
            sdpa_basic(&q, &k, &v, scale).map(drop)
        }
    })?;
    let (qv, kv, vv) = (
        Var::from_tensor(&q)?,
        Var::from_tensor(&k)?,
        Var::from_tensor(&v)?,
    );
    let ro = randn(&[1, 16, 1024, 40])?;
    time("attention_fwd_bwd", &|o| {
        let y = if o {
            attention::attention(&qv, &kv, &vv, scale)?
        } else {
            sdpa_basic(&qv, &kv, &vv, scale)?
        };
        (y * &ro)?.sum_all()?.backward().map(drop)
    })?;
    Ok(out)
}

/// Reference timings (key → median ms) from a JSON object file, as written by
/// `tools/bench_reference.py ops --json`; entries that are not numbers are ignored.
pub fn read_reference(path: &std::path::Path) -> crate::Result<Vec<(String, f64)>> {
    let v: serde_json::Value = crate::io::json::read_json(path)?;
    Ok(v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, x)| Some((k.clone(), x.as_f64()?)))
                .collect()
        })
        .unwrap_or_default())
}

/// Plain-text table; `torch` (key → ms) adds a PyTorch column when given.
pub fn table(rows: &[OpTiming], torch: &[(String, f64)]) -> String {
    let mut s = format!(
        "{:<24} {:>10} {:>10} {:>10}\n",
        "op (median ms)", "ours", "candle", "torch"
    );
    for r in rows {
        let t = torch
            .iter()
            .find(|(k, _)| k == r.key)
            .map_or("-".to_string(), |(_, v)| format!("{v:.1}"));
        s += &format!(
            "{:<24} {:>10.1} {:>10.1} {:>10}\n",
            r.key, r.ours_ms, r.candle_ms, t
        );
    }
    s
}
