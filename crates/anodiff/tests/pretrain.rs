//! Pretraining from scratch in pixel space: presets, a short run that must lower the loss and
//! write a folder `StableDiffusion::load` reads, training on native-scale windows, and the demo
//! report writer.

mod common;

use anodiff::data::synth::{synth_dataset, SynthOptions};
use anodiff::io::html::loss_svg;
use anodiff::io::image::centre_window;
use anodiff::sd::noise::SeededNoise;
use anodiff::sd::pipeline::{SampleOptions, StableDiffusion};
use anodiff::sd::presets::Preset;
use anodiff::sd::tokenizer::ClipTokenizer;
use anodiff::train::log::read_loss_log;
use anodiff::train::pretrain::{pretrain, PretrainOptions};
use candle_core::Device;
use common::temp_dir;

#[test]
fn pixel_presets_build_and_sample_rgb() {
    let dev = Device::Cpu;
    for name in ["tiny-pixel", "small"] {
        let p = Preset::by_name(name).unwrap();
        assert!(p.pixel_space);
        assert_eq!(p.parameter_counts().unwrap().vae, 0);
        let sd = StableDiffusion::from_preset(&p, 0, &dev).unwrap();
        assert!(sd.is_pixel_space());
        assert_eq!(sd.vae_scale_factor(), 1);
        assert!(sd.vae().is_err());
        let o = SampleOptions {
            prompt: "a photo of a capsule".into(),
            steps: 2,
            guidance: 1.0,
            // No size given: the model's native size (UNet sample_size × factor 1).
            ..Default::default()
        };
        let x = sd
            .txt2img(&o, &mut SeededNoise::new(1), &mut |_, _| {})
            .unwrap();
        assert_eq!(x.dims(), &[1, 3, p.resolution, p.resolution], "{name}");
        let img = sd.decode(&x).unwrap();
        let max = img
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(max <= 1.0, "{name}: decode clamps to [-1, 1], got {max}");
    }
}

#[test]
fn short_pretrain_lowers_loss_and_writes_a_loadable_model() {
    let tmp = temp_dir("short");
    let opts = SynthOptions {
        size: 32,
        train_good: 8,
        test_good: 4,
        per_defect: 1,
    };
    let summary = synth_dataset(&tmp.join("data"), 3, &opts).unwrap();
    let run = tmp.join("run");
    let o = PretrainOptions {
        dataset: summary.categories[0].clone(),
        preset: "tiny-pixel".into(),
        out: run.clone(),
        steps: 30,
        batch: 4,
        // Two micro-batches side by side: the learning check covers that path too.
        micro_batches: 2,
        lr: 2e-3,
        warmup: 3,
        seed: 0,
        checkpoint_every: 0,
        resume: None,
        samples: 2,
        sample_steps: 2,
        pixel_norm: true,
        prompt_dropout: 0.0,
        canvas: 0.0,
        tile_scale: None,
    };
    let t = std::time::Instant::now();
    let r = pretrain(&o, |_| {}).unwrap();
    let secs = t.elapsed().as_secs_f64();
    let first5: f64 = r.steps[..5].iter().map(|s| s.loss).sum::<f64>() / 5.0;
    let last5: f64 = r.steps[25..].iter().map(|s| s.loss).sum::<f64>() / 5.0;
    println!(
        "30 steps in {secs:.1} s ({:.3} s/step); loss first5 {first5:.4} last5 {last5:.4}; held-out {:?} (untrained {:?})",
        r.train_secs / 30.0,
        r.held_out,
        r.held_out_untrained
    );
    assert!(last5 < first5, "loss did not go down: {first5} -> {last5}");
    assert_eq!(r.held_out.len(), 3);
    assert!(r.held_out[1].1 < r.held_out_untrained[1].1);
    assert_eq!(read_loss_log(&r.log).unwrap().len(), 30);
    assert!(r.grid.as_ref().unwrap().is_file());

    let dev = Device::Cpu;
    let sd = StableDiffusion::load(&r.model_dir, &dev).unwrap();
    assert!(sd.is_pixel_space());
    let embedded = ClipTokenizer::embedded().unwrap();
    assert_eq!(
        sd.tokenizer.encode(&r.prompt),
        embedded.encode(&r.prompt),
        "saved tokenizer differs from the built-in one"
    );
    let so = SampleOptions {
        prompt: r.prompt.clone(),
        steps: 2,
        guidance: 1.0,
        width: Some(32),
        height: Some(32),
        ..Default::default()
    };
    let x = sd
        .txt2img(&so, &mut SeededNoise::new(0), &mut |_, _| {})
        .unwrap();
    assert_eq!(x.dims(), &[1, 3, 32, 32]);
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn pretraining_on_native_scale_windows() {
    // 64-px images, a 32-px preset: with a tile scale of 1 the model trains on 32-px windows at
    // native resolution (a quarter of each image) instead of squashed whole images.
    let tmp = temp_dir("tiles");
    let opts = SynthOptions {
        size: 64,
        train_good: 6,
        test_good: 2,
        per_defect: 1,
    };
    let summary = synth_dataset(&tmp.join("data"), 5, &opts).unwrap();
    let o = PretrainOptions {
        dataset: summary.categories[0].clone(),
        preset: "tiny-pixel".into(),
        out: tmp.join("run"),
        steps: 3,
        batch: 2,
        warmup: 1,
        checkpoint_every: 0,
        samples: 2,
        sample_steps: 2,
        tile_scale: Some(1.0),
        ..Default::default()
    };
    let bad = PretrainOptions {
        micro_batches: 3,
        ..o.clone()
    };
    let e = pretrain(&bad, |_| {}).unwrap_err().to_string();
    assert!(e.contains("micro-batches 3"), "{e}");
    let r = pretrain(&o, |_| {}).unwrap();
    assert_eq!((r.size, r.tile_scale), (32, Some(1.0)));
    assert_eq!((r.train_images, r.test_images), (6, 2));
    assert!(r.held_out.iter().all(|(_, l)| l.is_finite()));
    // The grid's second row shows the real images as the model saw them: the first one's
    // centre window at native scale (row 1 of 32-px cells + 2-px gaps + 4-px row gap).
    let grid = image::open(r.grid.unwrap()).unwrap().to_rgb8();
    let mut good: Vec<_> = std::fs::read_dir(summary.categories[0].join("train/good"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    good.sort();
    let first = image::open(&good[0]).unwrap().to_rgb8();
    assert_eq!(first.dimensions(), (64, 64));
    let shown = image::imageops::crop_imm(&grid, 0, 38, 32, 32).to_image();
    assert!(
        shown == centre_window(&first, 32),
        "the grid does not show the native-scale centre window"
    );
    for bad in [0.0, -1.0, f64::NAN] {
        let e = pretrain(
            &PretrainOptions {
                tile_scale: Some(bad),
                out: tmp.join("bad"),
                ..o.clone()
            },
            |_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("tile scale"), "{e}");
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn loss_svg_draws_a_curve() {
    let losses: Vec<(usize, f64)> = (1..=50).map(|s| (s, 1.0 / s as f64)).collect();
    let svg = loss_svg(&losses, 300.0, 100.0);
    assert!(svg.starts_with("<svg") && svg.contains("<polyline"));
    assert!(loss_svg(&[], 10.0, 10.0).contains("no loss"));
}
