//! `StableDiffusion::save` → `StableDiffusion::load`: a saved model is the same model. Latent-space
//! and pixel-space presets (with and without `anodiff_pixel_norm`) come back with identical
//! configs and bit-identical text-encoder and UNet outputs (tolerance: none); incomplete weights
//! are refused before anything is written.

mod common;
use anodiff::sd::attention::ForwardCtx;
use anodiff::sd::noise::SeededNoise;
use anodiff::sd::pipeline::{SampleOptions, StableDiffusion};
use anodiff::sd::pixel_norm::PixelNorm;
use anodiff::sd::presets::Preset;
use anodiff::sd::scheduler::SchedulerKind;
use candle_core::{Device, Tensor};
use common::max_diff;
use std::path::PathBuf;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("anodiff-folder-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Same configs, same text embeddings, same UNet prediction, to the bit.
fn assert_same_model(a: &StableDiffusion, b: &StableDiffusion, label: &str) {
    assert_eq!(a.unet.config(), b.unet.config(), "{label}");
    assert_eq!(a.text_encoder.config(), b.text_encoder.config(), "{label}");
    assert_eq!(
        a.vae.as_ref().map(|v| v.config()),
        b.vae.as_ref().map(|v| v.config()),
        "{label}"
    );
    assert_eq!(a.pixel_norm, b.pixel_norm, "{label}");
    assert_eq!(a.default_scheduler, b.default_scheduler, "{label}");
    let mut sched = b.scheduler_config.clone();
    sched.class_name = None;
    assert_eq!(a.scheduler_config, sched, "{label}");

    let dev = &a.device;
    let text_a = a.encode_text(&["a photo of a capsule"]).unwrap();
    let text_b = b.encode_text(&["a photo of a capsule"]).unwrap();
    assert_eq!(max_diff(&text_a, &text_b), 0.0, "{label}: text encoder");
    let side = a.unet.config().sample_size.unwrap();
    let x = Tensor::randn(0f32, 1.0, (2, a.unet.in_channels(), side, side), dev).unwrap();
    let t = Tensor::new(&[10f32, 700.0], dev).unwrap();
    let ctx = ForwardCtx::default();
    let text = text_a.repeat((2, 1, 1)).unwrap();
    let ya = a.unet.forward(&x, &t, &text, &ctx).unwrap();
    let yb = b.unet.forward(&x, &t, &text, &ctx).unwrap();
    assert_eq!(max_diff(&ya, &yb), 0.0, "{label}: UNet");
}

#[test]
fn saved_pixel_model_loads_back_bit_exactly() {
    let dev = Device::Cpu;
    let p = Preset::by_name("tiny-pixel").unwrap();
    for norm in [
        Some(PixelNorm {
            mean: [-0.25, 0.1, 0.3],
            std: [0.2, 0.3, 0.4],
        }),
        None,
    ] {
        let (mut sd, params) = StableDiffusion::from_preset_with_params(&p, 5, &dev).unwrap();
        sd.pixel_norm = norm.clone();
        sd.scheduler_config.clip_sample_range = 6.25;
        sd.default_scheduler = SchedulerKind::Ddim;
        let dir = scratch(&format!("pixel-{}", norm.is_some()));
        sd.save(&dir, &params).unwrap();
        assert!(!dir.join("vae").exists());
        let index: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("model_index.json")).unwrap())
                .unwrap();
        assert_eq!(index["anodiff_pixel_space"], true);
        assert_eq!(index["scheduler"][1], "DDIMScheduler");
        assert_eq!(index["vae"], serde_json::json!([null, null]));

        let back = StableDiffusion::load(&dir, &dev).unwrap();
        assert!(back.is_pixel_space());
        assert_same_model(&sd, &back, "tiny-pixel");
        // The whole sampler (pixel normalisation, DDIM with the saved clip range) agrees too.
        let o = SampleOptions {
            prompt: "a photo of a capsule".into(),
            steps: 3,
            guidance: 1.0,
            width: Some(32),
            height: Some(32),
            ..Default::default()
        };
        let sample = |m: &StableDiffusion| {
            let x = m
                .txt2img(&o, &mut SeededNoise::new(9), &mut |_, _| {})
                .unwrap();
            m.decode(&x).unwrap()
        };
        assert_eq!(max_diff(&sample(&sd), &sample(&back)), 0.0);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn saved_latent_model_loads_back_bit_exactly() {
    let dev = Device::Cpu;
    let p = Preset::by_name("tiny").unwrap();
    let (sd, params) = StableDiffusion::from_preset_with_params(&p, 2, &dev).unwrap();
    let dir = scratch("latent");
    sd.save(&dir, &params).unwrap();
    let back = StableDiffusion::load(&dir, &dev).unwrap();
    assert_same_model(&sd, &back, "tiny");
    let img = Tensor::rand(-1f32, 1.0, (1, 3, 32, 32), &dev).unwrap();
    let (za, zb) = (
        sd.encode_mean(&img).unwrap(),
        back.encode_mean(&img).unwrap(),
    );
    assert_eq!(max_diff(&za, &zb), 0.0, "VAE encoder");
    assert_eq!(
        max_diff(&sd.decode(&za).unwrap(), &back.decode(&za).unwrap()),
        0.0,
        "VAE decoder"
    );
    let index = std::fs::read_to_string(dir.join("model_index.json")).unwrap();
    assert!(!index.contains("anodiff_pixel"), "{index}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn incomplete_weights_are_refused_before_writing() {
    let dev = Device::Cpu;
    let (sd, _) =
        StableDiffusion::from_preset_with_params(&Preset::by_name("tiny-pixel").unwrap(), 1, &dev)
            .unwrap();
    // Stores of a different shape (tiny's UNet takes 4 channels): the UNet does not rebuild.
    let (_, other) =
        StableDiffusion::from_preset_with_params(&Preset::by_name("tiny").unwrap(), 1, &dev)
            .unwrap();
    let dir = scratch("refused");
    let e = sd.save(&dir, &other).unwrap_err().to_string();
    assert!(
        e.contains("cannot save the UNet") && e.contains("conv_in"),
        "{e}"
    );
    assert!(!dir.exists(), "nothing may be written");
}
