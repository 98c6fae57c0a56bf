//! The dual training loss's defect weighting (`DualLoss::with_mask_weight`): with the same
//! random draws, the loss is affine in the weight (`L(w) = L(0) + w·mean(err·M_whole)`), a weight
//! changes nothing when the mask is empty, and a non-empty mask raises the loss. Checked on a
//! latent preset (mask reduced to the latent grid) and a pixel preset (mask used as is).

use anodiff::dual::pairs::PairBatch;
use anodiff::dual::train::DualLoss;
use anodiff::dual::{DualConfig, DualModel};
use anodiff::sd::pipeline::StableDiffusion;
use anodiff::sd::presets::Preset;
use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;

/// Two pairs at the preset's resolution; the mask is a square of side `side` (0: empty).
fn batch(size: usize, side: usize, dev: &Device) -> PairBatch {
    let whole = Tensor::randn(0f32, 0.5, (2, 3, size, size), dev)
        .unwrap()
        .clamp(-1f32, 1f32)
        .unwrap();
    let mut m = vec![0f32; 2 * size * size];
    for n in 0..2 {
        for y in 0..side {
            for x in 0..side {
                m[n * size * size + (y + 3 * n) * size + x + 2] = 1.0;
            }
        }
    }
    let mask = Tensor::from_vec(m, (2, 1, size, size), dev).unwrap();
    let part = whole.broadcast_mul(&mask).unwrap();
    let background = whole.clone();
    PairBatch {
        whole,
        part,
        mask,
        background,
    }
}

fn loss_at(sd: &StableDiffusion, model: &DualModel, b: &PairBatch, w: f64) -> f64 {
    let loss = DualLoss::new(sd, model).unwrap().with_mask_weight(w);
    // The same draws for every weight: only the weighting differs.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    loss.loss(b, &mut rng)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn check(preset: &str) {
    let dev = Device::Cpu;
    let p = Preset::by_name(preset).unwrap();
    let sd = StableDiffusion::from_preset_frozen(&p, 0, &dev).unwrap();
    let model = DualModel::fresh(&sd.unet, &sd.text_encoder, &DualConfig::default(), &dev).unwrap();
    model.install(&sd.unet, &sd.text_encoder);
    let size = p.resolution;

    let b = batch(size, 6, &dev);
    let (l0, l1, l3) = (
        loss_at(&sd, &model, &b, 0.0),
        loss_at(&sd, &model, &b, 1.0),
        loss_at(&sd, &model, &b, 3.0),
    );
    assert!(
        l1 > l0,
        "{preset}: a weighted defect must add to the loss ({l0} → {l1})"
    );
    let affine = (l3 - l0) - 3.0 * (l1 - l0);
    assert!(
        affine.abs() <= 1e-5 * l3,
        "{preset}: loss not affine in the weight: L0 {l0}, L1 {l1}, L3 {l3}"
    );

    let empty = batch(size, 0, &dev);
    let (e0, e5) = (
        loss_at(&sd, &model, &empty, 0.0),
        loss_at(&sd, &model, &empty, 5.0),
    );
    assert_eq!(
        e0, e5,
        "{preset}: an empty mask must make the weight irrelevant"
    );
}

#[test]
fn mask_weight_on_a_latent_preset() {
    check("tiny");
}

#[test]
fn mask_weight_on_a_pixel_preset() {
    check("tiny-pixel");
}
