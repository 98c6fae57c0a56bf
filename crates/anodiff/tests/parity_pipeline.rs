//! Full-pipeline parity with diffusers: 4-step txt2img with classifier-free guidance for every
//! scheduler, a 4-step inpainting run, and strength-0.5 inpainting (6 steps, the last 3 run from
//! the noised image) for DDPM, DDIM, PNDM and Euler, on a tiny random-weight SD
//! (tools/parity/make_pipeline_fixtures.py).
//! Every random tensor diffusers drew is replayed, so final latents must agree to float precision.
//! Tolerance: max|ours − ref| ≤ 1e-3 · max|ref| on the final latents.

mod common;

use anodiff::sd::noise::ReplayNoise;
use anodiff::sd::pipeline::{SampleOptions, StableDiffusion};
use candle_core::{Device, Tensor};
use common::{assets, fixtures, rel, temp_dir, tensors};
use std::path::{Path, PathBuf};

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
}

/// Builds a diffusers folder for one case from the shared fixture parts.
/// `tag` keeps the folders of tests running in parallel (same process id) apart.
fn assemble(case: &serde_json::Value, tag: &str) -> PathBuf {
    let fix = fixtures("pipeline");
    let name = case["name"].as_str().unwrap();
    let dir = temp_dir(&format!("{tag}-{name}"));
    copy_dir(&assets("clip"), &dir.join("tokenizer"));
    for part in ["text_encoder", "vae"] {
        copy_dir(&fix.join(part), &dir.join(part));
    }
    copy_dir(
        &fix.join(case["unet_dir"].as_str().unwrap()),
        &dir.join("unet"),
    );
    copy_dir(
        &fix.join(case["scheduler_dir"].as_str().unwrap()),
        &dir.join("scheduler"),
    );
    std::fs::write(dir.join("model_index.json"), b"{}").unwrap();
    dir
}

#[test]
fn pipelines_match_diffusers() {
    let dev = Device::Cpu;
    let fix = fixtures("pipeline");
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fix.join("cases.json")).unwrap()).unwrap();
    let refs = tensors(&fix.join("reference.safetensors"));
    let mut worst = 0f32;
    for case in cases["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let dir = assemble(case, "parity");
        let sd = StableDiffusion::load(&dir, &dev).unwrap();
        let opts = SampleOptions {
            prompt: case["prompt"].as_str().unwrap().into(),
            negative_prompt: case["negative"].as_str().unwrap().into(),
            steps: case["steps"].as_u64().unwrap() as usize,
            guidance: case["guidance"].as_f64().unwrap(),
            width: Some(32),
            height: Some(32),
            scheduler: None,
            eta: case["eta"].as_f64().unwrap(),
        };
        let draws: Vec<Tensor> = (0..case["draws"].as_u64().unwrap())
            .map(|i| refs[&format!("{name}.draw{i}")].clone())
            .collect();
        let mut noise = ReplayNoise::new(draws);
        let mut calls = 0;
        let strength = case["strength"].as_f64().unwrap_or(1.0);
        let latents = if case["kind"] == "inpaint" {
            let img = &refs["inpaint.image_in"];
            let mask = &refs["inpaint.mask"];
            sd.inpaint(&opts, img, mask, strength, &mut noise, &mut |_, _| {
                calls += 1
            })
            .unwrap()
        } else {
            sd.txt2img(&opts, &mut noise, &mut |_, _| calls += 1)
                .unwrap()
        };
        assert_eq!(
            noise.remaining(),
            0,
            "{name}: not every recorded draw was used"
        );
        let kept = (opts.steps as f64 * strength) as usize;
        assert!(calls >= kept, "{name}: progress called {calls} times");
        let e = rel(&latents, &refs[&format!("{name}.final")]);
        println!("{name}: final latents max|diff|/max|ref| = {e:.3e}");
        assert!(e <= 1e-3, "{name}: relative error {e}");
        if let Some(img_ref) = refs.get(&format!("{name}.image")) {
            let img = sd.decode(&latents).unwrap();
            let e = rel(&img, img_ref);
            println!("{name}: decoded image max|diff|/max|ref| = {e:.3e}");
            assert!(e <= 1e-3, "{name}: decoded image relative error {e}");
        }
        worst = worst.max(e);
        std::fs::remove_dir_all(&dir).unwrap();
    }
    println!("worst final-latent relative error: {worst:.3e}");
}

#[test]
fn wrong_sizes_and_unet_kind_are_clear_errors() {
    let dev = Device::Cpu;
    let fix = fixtures("pipeline");
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fix.join("cases.json")).unwrap()).unwrap();
    let txt = cases["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "txt2img")
        .unwrap();
    let dir = assemble(txt, "errors");
    let sd = StableDiffusion::load(&dir, &dev).unwrap();
    let mut noise = anodiff::sd::noise::SeededNoise::new(0);
    let bad = SampleOptions {
        width: Some(30),
        height: Some(32),
        steps: 2,
        ..Default::default()
    };
    let e = sd
        .txt2img(&bad, &mut noise, &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("multiples of"), "{e}");
    let ok = SampleOptions {
        width: Some(32),
        height: Some(32),
        steps: 2,
        ..Default::default()
    };
    let img = Tensor::zeros((1, 3, 32, 32), candle_core::DType::F32, &dev).unwrap();
    let mask = Tensor::zeros((1, 1, 32, 32), candle_core::DType::F32, &dev).unwrap();
    let e = sd
        .inpaint(&ok, &img, &mask, 1.0, &mut noise, &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("inpainting UNet"), "{e}");
    // Same seed, same bytes.
    let a = sd
        .txt2img(
            &ok,
            &mut anodiff::sd::noise::SeededNoise::new(5),
            &mut |_, _| {},
        )
        .unwrap();
    let b = sd
        .txt2img(
            &ok,
            &mut anodiff::sd::noise::SeededNoise::new(5),
            &mut |_, _| {},
        )
        .unwrap();
    assert_eq!(
        a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
