//! `detect-train` with VAE decoder tuning (METHODS.md B.1) end to end on a tiny latent-space
//! inpainting model: the tuned decoder lands in the saved `model/vae/`, the encoder does not move,
//! and the settings the run cannot honour are refused before any training; the decoder learns
//! under the LPIPS term with user-supplied weights.

mod common;
use anodiff::data::synth::{synth_dataset, SynthOptions};
use anodiff::detect::run::DetectRun;
use anodiff::detect::train::{detect_train, BaseModel, DetectTrainOptions, VAE_TUNE_DIR};
use anodiff::detect::vae_tune::Perceptual;
use anodiff::detect::vae_tune::{vae_tune, VaeTuneOptions};
use anodiff::eval::lpips::LpipsNet;
use anodiff::nn::tensor_files::write_safetensors;
use anodiff::sd::pipeline::StableDiffusion;
use anodiff::sd::presets::Preset;
use anodiff::sd::unet::UNetConfig;
use candle_core::{Device, Tensor};
use common::{fixtures, lpips_formula_weights, temp_dir, tensors};
use std::path::PathBuf;

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// `tiny` with a 9-channel (inpainting) UNet, saved as a diffusers folder.
fn tiny_inpaint_folder(dir: &std::path::Path) {
    let tiny = Preset::by_name("tiny").unwrap();
    let preset = Preset {
        unet: UNetConfig {
            in_channels: 9,
            ..tiny.unet.clone()
        },
        ..tiny
    };
    let (sd, params) = StableDiffusion::from_preset_with_params(&preset, 5, &Device::Cpu).unwrap();
    sd.save(dir, &params).unwrap();
}

#[test]
fn full_run_saves_the_tuned_decoder_and_keeps_the_encoder() {
    let root = temp_dir("vae-full");
    let base = root.join("base");
    tiny_inpaint_folder(&base);
    let data = root.join("data");
    synth_dataset(
        &data,
        0,
        &SynthOptions {
            size: 32,
            train_good: 3,
            test_good: 1,
            per_defect: 1,
        },
    )
    .unwrap();
    let o = DetectTrainOptions {
        datasets: vec![data.join("capsule"), data.join("metal_texture")],
        base: BaseModel::Folder(base.clone()),
        out: root.join("run"),
        steps: 2,
        batch: 2,
        lr: 1e-4,
        warmup: 0,
        checkpoint_every: 0,
        samples: 0,
        vae_steps: 6,
        vae_batch: 2,
        vae_lr: 1e-3,
        vae_beta: 0.05,
        vae_perceptual: Perceptual::Gradient,
        ..Default::default()
    };
    let r = detect_train(&o, |_| {}).unwrap();
    let v = r.vae.as_ref().expect("the decoder was tuned");
    eprintln!(
        "decoder {} params, {} updates: MSE {:.4} -> {:.4}",
        v.trainable_parameters,
        v.steps.len(),
        v.mse_before,
        v.mse_after
    );
    assert_eq!(v.steps.len(), 6);
    assert_eq!(v.images, 6);
    assert!(v.mse_after.is_finite() && v.mse_before.is_finite());
    assert!(o.out.join(VAE_TUNE_DIR).join("train_log.jsonl").is_file());
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(o.out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["vae"]["perceptual"], "gradient");

    let file = PathBuf::from("vae/diffusion_pytorch_model.safetensors");
    let before = tensors(&base.join(&file));
    let after = tensors(&o.out.join("model").join(&file));
    assert_eq!(before.len(), after.len());
    let mut moved = 0;
    for (name, t) in &before {
        let same = values(t) == values(&after[name]);
        if name.starts_with("decoder.") || name.starts_with("post_quant_conv.") {
            moved += usize::from(!same);
        } else {
            assert!(same, "frozen VAE weight `{name}` changed");
        }
    }
    assert!(moved > 0, "no decoder weight changed in model/vae/");
    // The run folder (with the tuned decoder in model/vae/) loads for inference.
    let run = DetectRun::open(&o.out).unwrap();
    assert!(run.sd.vae.is_some());
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn unhonourable_vae_settings_are_refused_before_training() {
    let lora = DetectTrainOptions {
        datasets: vec![PathBuf::from("/nonexistent/category")],
        base: BaseModel::Folder(PathBuf::from("/nonexistent/model")),
        lora_rank: Some(4),
        vae_steps: 10,
        ..Default::default()
    };
    let e = detect_train(&lora, |_| {}).unwrap_err().to_string();
    assert!(e.contains("full runs only"), "{e}");
    let beta_alone = DetectTrainOptions {
        vae_beta: 0.1,
        ..lora.clone()
    };
    let beta_alone = DetectTrainOptions {
        lora_rank: None,
        vae_steps: 0,
        ..beta_alone
    };
    let e = detect_train(&beta_alone, |_| {}).unwrap_err().to_string();
    assert!(e.contains("without --vae-steps"), "{e}");
    let term_without_beta = DetectTrainOptions {
        lora_rank: None,
        vae_perceptual: Perceptual::Gradient,
        ..lora
    };
    let e = detect_train(&term_without_beta, |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("β = 0"), "{e}");
}

#[test]
fn lpips_term_with_user_weights_lowers_the_decoders_lpips() {
    // AlexNet LPIPS with the parity fixture's weights (formula backbone, the package's heads) as
    // the "user-supplied" network; the tiny VAE at 32 px (AlexNet needs ≥ 31 px).
    let root = temp_dir("vae-lpips");
    let refs = tensors(&fixtures("lpips").join("reference.safetensors"));
    let weights = root.join("lpips-alex.safetensors");
    std::fs::create_dir_all(&root).unwrap();
    write_safetensors(&weights, &lpips_formula_weights(LpipsNet::Alex, &refs)).unwrap();
    let dev = Device::Cpu;
    let preset = Preset::by_name("tiny").unwrap();
    let (sd, params) = StableDiffusion::from_preset_with_params(&preset, 3, &dev).unwrap();
    let vp = params.vae.clone().expect("tiny has a VAE");
    let images: Vec<_> = (0..4)
        .map(|i| {
            anodiff::data::synth::render_good(
                anodiff::data::synth::Category::ALL[i % 2],
                32,
                i as u64,
            )
        })
        .collect();
    let o = VaeTuneOptions {
        steps: 20,
        batch: 2,
        lr: 2e-3,
        warmup: 2,
        beta: 1.0,
        perceptual: Perceptual::Lpips,
        lpips_weights: Some(weights.clone()),
        checkpoint_every: 0,
        ..Default::default()
    };
    let r = vae_tune(&sd, &vp, &images, &root.join("tune"), &o, |_| {}).unwrap();
    let (b, a) = (r.lpips_before.unwrap(), r.lpips_after.unwrap());
    eprintln!(
        "tiny decoder, 20 steps with LPIPS: LPIPS {b:.4} -> {a:.4}, MSE {:.4} -> {:.4}",
        r.mse_before, r.mse_after
    );
    assert!(a < 0.8 * b, "LPIPS {b} -> {a}");
    assert!(r.mse_after.is_finite());
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("tune").join("report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report["perceptual"], "lpips");
    assert!(report["lpips_after"].as_f64().is_some());
    let _ = std::fs::remove_dir_all(&root);
}
