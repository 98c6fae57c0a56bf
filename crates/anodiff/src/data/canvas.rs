//! Canvas images for pretraining: a random region of a good image on the mid-grey canvas (0 in
//! [-1, 1]), the form of DualAnoDiff's anomaly-part images `I ⊙ M`.
//!
//! Why: SD-1.5 has seen every kind of image, flat backgrounds with one object among them, so its
//! part branch only has to be steered by LoRA. A small model pretrained here on one category
//! has seen only that category and predicts noise on a flat canvas badly (measured on the
//! synthetic capsules: the first dual-training steps had ε-MSE 0.95 over whole and part rows,
//! against ≈ 0.16 for the base on whole images alone), which attention-only adapters had not
//! repaired after 1000 steps (part samples stayed textured noise). Mixing canvas
//! images into pretraining gives the base that generality without any defect data: the regions
//! are random blobs on good images.

use crate::error::Result;
use candle_core::{Device, Tensor};
use rand::Rng;

/// A binary `[1, 1, H, W]` mask of one to three random ellipses, each with semi-axes between
/// 1.5 px and a third of the side and any orientation (1 inside).
pub fn blob_mask(
    width: usize,
    height: usize,
    rng: &mut impl Rng,
    device: &Device,
) -> Result<Tensor> {
    let side = width.min(height) as f64;
    let count = rng.random_range(1..=3);
    let blobs: Vec<[f64; 5]> = (0..count)
        .map(|_| {
            let a = rng.random_range(1.5..(side / 3.0).max(2.0));
            let b = rng.random_range(1.5..(side / 3.0).max(2.0));
            let cx = rng.random_range(0.0..width as f64);
            let cy = rng.random_range(0.0..height as f64);
            let th: f64 = rng.random_range(0.0..std::f64::consts::PI);
            [cx, cy, a, b, th]
        })
        .collect();
    let mut data = vec![0f32; width * height];
    for (i, v) in data.iter_mut().enumerate() {
        let (x, y) = ((i % width) as f64 + 0.5, (i / width) as f64 + 0.5);
        let inside = blobs.iter().any(|&[cx, cy, a, b, th]| {
            let (dx, dy) = (x - cx, y - cy);
            let u = dx * th.cos() + dy * th.sin();
            let w = -dx * th.sin() + dy * th.cos();
            (u / a).powi(2) + (w / b).powi(2) <= 1.0
        });
        *v = f32::from(u8::from(inside));
    }
    Ok(Tensor::from_vec(data, (1, 1, height, width), device)?)
}

/// `image ⊙ mask` for a `[B, 3, H, W]` image in [-1, 1] and a `[1 or B, 1, H, W]` mask: the region
/// on the mid-grey canvas (exactly 0 outside).
pub fn on_canvas(image: &Tensor, mask: &Tensor) -> Result<Tensor> {
    Ok(image.broadcast_mul(mask)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn blobs_are_binary_nonempty_and_vary() {
        let dev = Device::Cpu;
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut areas = Vec::new();
        for _ in 0..50 {
            let m = blob_mask(64, 48, &mut rng, &dev).unwrap();
            assert_eq!(m.dims(), &[1, 1, 48, 64]);
            let v: Vec<f32> = m.flatten_all().unwrap().to_vec1().unwrap();
            assert!(v.iter().all(|&x| x == 0.0 || x == 1.0));
            areas.push(v.iter().sum::<f32>() / v.len() as f32);
        }
        // Centres may fall near a border, but most blobs are visible and sizes spread widely.
        assert!(areas.iter().filter(|&&a| a > 0.0).count() >= 45);
        let (lo, hi) = areas
            .iter()
            .fold((1f32, 0f32), |(l, h), &a| (l.min(a), h.max(a)));
        assert!(lo < 0.02 && hi > 0.1, "areas {lo}..{hi}");
    }

    #[test]
    fn canvas_is_zero_outside_and_the_image_inside() {
        let dev = Device::Cpu;
        let img = Tensor::full(0.7f32, (2, 3, 4, 4), &dev).unwrap();
        let mut m = vec![0f32; 16];
        m[5] = 1.0;
        let mask = Tensor::from_vec(m, (1, 1, 4, 4), &dev).unwrap();
        let c = on_canvas(&img, &mask).unwrap();
        let v: Vec<f32> = c.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(v.iter().filter(|&&x| x == 0.7).count(), 2 * 3);
        assert_eq!(v.iter().filter(|&&x| x == 0.0).count(), 2 * 3 * 15);
    }
}
