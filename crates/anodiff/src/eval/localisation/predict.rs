//! Prediction over a split's evaluation images: `eval_good` (reported as defect `good`) and every
//! defect type's `test` entries. Each image is resized to the network size, the anomaly map is the
//! softmax probability of class 1, the image score the maximum of its k×k average-pooled map, and
//! the map is resized bilinearly back to the image's original size.

use super::net::LocalisationNet;
use super::protocol::Protocol;
use crate::data::split::{SplitEntry, SplitManifest};
use crate::error::{Error, Result};
use crate::eval::npy::Map2;
use crate::io::image_tensor::rgb_to_unit_tensor;
use candle_core::{Device, Tensor};

/// Images per forward pass.
const BATCH: usize = 8;

/// DRAEM's image score: the maximum of the `k`×`k` average-pooled map (stride 1, zero padding
/// k/2 counted in the average, as `F.avg_pool2d(…, padding=k//2)`). `probs: [B, 1, H, W]`
/// → one score per image.
pub fn image_score(probs: &Tensor, k: usize) -> Result<Vec<f32>> {
    let pad = k / 2;
    let padded = probs
        .pad_with_zeros(2, pad, pad)?
        .pad_with_zeros(3, pad, pad)?;
    let pooled = padded.avg_pool2d_with_stride((k, k), (1, 1))?;
    let b = pooled.dim(0)?;
    Ok(pooled.reshape((b, ()))?.max(1)?.to_vec1::<f32>()?)
}

/// Bilinear resize of a row-major `sh`×`sw` map to `dh`×`dw` with half-pixel centres (PyTorch
/// `interpolate(mode="bilinear", align_corners=False)`; no antialiasing).
pub fn resize_bilinear(src: &[f32], sh: usize, sw: usize, dh: usize, dw: usize) -> Vec<f32> {
    let coords = |d: usize, s: usize| -> Vec<(usize, usize, f32)> {
        let scale = s as f32 / d as f32;
        (0..d)
            .map(|i| {
                let x = ((i as f32 + 0.5) * scale - 0.5).max(0.0);
                let x0 = (x.floor() as usize).min(s - 1);
                let x1 = (x0 + 1).min(s - 1);
                (x0, x1, x - x0 as f32)
            })
            .collect()
    };
    let ys = coords(dh, sh);
    let xs = coords(dw, sw);
    let mut out = Vec::with_capacity(dh * dw);
    for &(y0, y1, fy) in &ys {
        for &(x0, x1, fx) in &xs {
            let top = src[y0 * sw + x0] * (1.0 - fx) + src[y0 * sw + x1] * fx;
            let bot = src[y1 * sw + x0] * (1.0 - fx) + src[y1 * sw + x1] * fx;
            out.push(top * (1.0 - fy) + bot * fy);
        }
    }
    out
}

/// Runs the network on every evaluation image of `split` and hands each result to `sink` as
/// (defect type or `good`, stem, anomaly map at the image's original size, image score).
pub fn predict(
    net: &LocalisationNet,
    split: &SplitManifest,
    protocol: &Protocol,
    mut sink: impl FnMut(&str, &str, Map2, f32) -> Result<()>,
) -> Result<()> {
    protocol.validate()?;
    let dev = Device::Cpu;
    let size = protocol.size;
    let k = protocol.score_window();
    let mut jobs: Vec<(&str, &SplitEntry)> = split.eval_good.iter().map(|e| ("good", e)).collect();
    for (name, d) in &split.defects {
        jobs.extend(d.test.iter().map(|e| (name.as_str(), e)));
    }
    for chunk in jobs.chunks(BATCH) {
        let mut xs = Vec::with_capacity(chunk.len());
        let mut dims = Vec::with_capacity(chunk.len());
        for (_, e) in chunk {
            let img = split.load_image(e)?;
            dims.push((img.height() as usize, img.width() as usize));
            let small = image::imageops::resize(
                &img,
                size as u32,
                size as u32,
                image::imageops::FilterType::Triangle,
            );
            xs.push(rgb_to_unit_tensor(&small, &dev)?);
        }
        let logits = net.forward(&Tensor::stack(&xs, 0)?)?;
        // softmax class 1 of two logits = σ(l1 − l0).
        let d = (logits.narrow(1, 1, 1)? - logits.narrow(1, 0, 1)?)?;
        let probs = crate::nn::ops::sigmoid(&d)?;
        let scores = image_score(&probs, k)?;
        let maps = probs.flatten_from(1)?.to_vec2::<f32>()?;
        for (i, (defect, e)) in chunk.iter().enumerate() {
            let (h, w) = dims[i];
            let data = resize_bilinear(&maps[i], size, size, h, w);
            let map = Map2::new(h, w, data)?;
            sink(defect, &e.stem, map, scores[i]).map_err(|err| match err {
                Error::Invalid(msg) => Error::invalid(format!("{defect}/{}: {msg}", e.stem)),
                other => other,
            })?;
        }
    }
    Ok(())
}
