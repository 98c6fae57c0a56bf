//! The downstream localisation network (METHODS.md A.7): shapes and input checks, focal loss
//! against a hand-computed value and finite differences, gradients through the whole U-Net,
//! a small learning test, prediction at original image sizes, and exact resume.

mod common;

use anodiff::data::split::{DefectSplit, SplitEntry, SplitManifest};
use anodiff::eval::localisation::{
    focal_loss, image_score, predict, resize_bilinear, train, LocalisationNet, Protocol,
};
use anodiff::eval::sources::{AnomalyPair, AnomalySource, SourceContext};
use anodiff::io::image::load_square;
use anodiff::nn::Params;
use candle_core::{DType, Device, Tensor, Var};
use common::temp_dir;
use image::{GrayImage, Luma, Rgb, RgbImage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Grey noise texture (the "defect-free" class).
fn noise_image(rng: &mut StdRng, w: u32, h: u32) -> RgbImage {
    let base = rng.random_range(60.0..100.0f32);
    RgbImage::from_fn(w, h, |_, _| {
        let v = (base + rng.random_range(-25.0..25.0f32)).clamp(0.0, 255.0) as u8;
        Rgb([v, v, v])
    })
}

/// Paints a bright random rectangle into a random good image.
struct BrightSquares {
    good: Arc<Vec<RgbImage>>,
    size: u32,
    /// Fail after this many samples (to interrupt a run in the resume test).
    fail_after: Option<usize>,
    drawn: usize,
}

impl BrightSquares {
    fn new(ctx: &SourceContext) -> Self {
        Self {
            good: ctx.good.clone(),
            size: ctx.size,
            fail_after: None,
            drawn: 0,
        }
    }
}

impl AnomalySource for BrightSquares {
    fn name(&self) -> &str {
        "test:bright-squares"
    }

    fn sample(&mut self, rng: &mut StdRng) -> anodiff::Result<AnomalyPair> {
        if self.fail_after.is_some_and(|n| self.drawn >= n) {
            return Err(anodiff::Error::invalid("test source interrupted"));
        }
        self.drawn += 1;
        let s = self.size;
        let mut image = self.good[rng.random_range(0..self.good.len())].clone();
        let mut mask = GrayImage::new(s, s);
        let (rw, rh) = (
            rng.random_range(s / 8..s / 3),
            rng.random_range(s / 8..s / 3),
        );
        let (x0, y0) = (rng.random_range(0..s - rw), rng.random_range(0..s - rh));
        let level = rng.random_range(170..230u32);
        for y in y0..y0 + rh {
            for x in x0..x0 + rw {
                let v = (level as i32 + rng.random_range(-20..20)).clamp(0, 255) as u8;
                image.put_pixel(x, y, Rgb([v, v, v]));
                mask.put_pixel(x, y, Luma([255]));
            }
        }
        Ok(AnomalyPair { image, mask })
    }
}

fn context(size: u32, n: usize, seed: u64) -> SourceContext {
    let mut rng = StdRng::seed_from_u64(seed);
    let good: Vec<RgbImage> = (0..n).map(|_| noise_image(&mut rng, size, size)).collect();
    SourceContext {
        split: Arc::new(SplitManifest {
            version: 1,
            protocol: "test".into(),
            dataset: PathBuf::from("/nonexistent"),
            train_good: vec![],
            eval_good: vec![],
            defects: BTreeMap::new(),
        }),
        good: Arc::new(good),
        size,
    }
}

fn tiny_protocol(size: usize, width: usize, samples: usize, batch: usize, lr: f64) -> Protocol {
    Protocol {
        size,
        width,
        epochs: 1,
        samples_per_epoch: samples,
        batch,
        lr,
        lr_decay_at: vec![0.8, 0.9],
        lr_decay: 0.2,
        standardise: true,
    }
}

#[test]
fn forward_shapes_and_input_checks() {
    let dev = Device::Cpu;
    let net = LocalisationNet::new(&Params::fresh(1, &dev), 2, 3).unwrap();
    let x = Tensor::rand(0f32, 1.0, (2, 3, 64, 32), &dev).unwrap();
    assert_eq!(net.forward(&x).unwrap().dims(), &[2, 2, 64, 32]);
    for bad in [(1, 3, 48, 64), (1, 3, 32, 40), (1, 1, 32, 32)] {
        let x = Tensor::zeros(bad, DType::F32, &dev).unwrap();
        let err = net.forward(&x).unwrap_err().to_string();
        println!("{bad:?}: {err}");
        assert!(err.contains("multiples of 32"), "{err}");
    }
    assert!(Protocol {
        size: 100,
        ..Protocol::cpu()
    }
    .validate()
    .is_err());
    assert!(Protocol::parse("gpu").is_err());
    assert_eq!(Protocol::parse("paper").unwrap().steps(), 6250);
    // Paper: ×0.2 at epochs 160 and 180 of 200 = updates 5000 and 5625.
    let ph = Protocol::paper().phases();
    assert_eq!(ph.len(), 3);
    assert_eq!((ph[0].0, ph[1].0, ph[2].0), (5000, 5625, 6250));
    assert!((ph[2].1 - 1e-4 * 0.04).abs() < 1e-12);
    assert_eq!(Protocol::paper().score_window(), 21);
    assert_eq!(Protocol::cpu().score_window(), 5);
}

#[test]
fn focal_loss_matches_hand_value() {
    let dev = Device::Cpu;
    // Pixel 1: logits (0, ln 3) → p1 = 0.75, target 1: −0.25²·ln 0.75.
    // Pixel 2: same logits, target 0: p_t = 0.25: −0.75²·ln 0.25.
    let l3 = 3f32.ln();
    let logits = Tensor::from_vec(vec![0f32, 0.0, l3, l3], (1, 2, 1, 2), &dev).unwrap();
    let target = Tensor::from_vec(vec![1f32, 0.0], (1, 1, 1, 2), &dev).unwrap();
    let got = focal_loss(&logits, &target, 2.0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let want = 0.5 * (-(0.25f64.powi(2)) * 0.75f64.ln() - 0.75f64.powi(2) * 0.25f64.ln());
    println!("focal: got {got}, hand {want}");
    assert!((got as f64 - want).abs() < 1e-6);
    // γ = 0 is cross-entropy.
    let ce = focal_loss(&logits, &target, 0.0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let want_ce = -0.5 * (0.75f64.ln() + 0.25f64.ln());
    assert!((ce as f64 - want_ce).abs() < 1e-6, "{ce} vs {want_ce}");
}

/// Central differences of a scalar function of one tensor, in f64.
fn fd_check(x0: &Tensor, f: impl Fn(&Tensor) -> Tensor, analytic: &Tensor, idx: &[usize]) -> f64 {
    let n = x0.elem_count();
    let flat: Vec<f64> = x0.flatten_all().unwrap().to_vec1().unwrap();
    let g: Vec<f64> = analytic.flatten_all().unwrap().to_vec1().unwrap();
    let h = 1e-6;
    let mut worst = 0f64;
    for &i in idx {
        let i = i % n;
        let eval = |d: f64| {
            let mut v = flat.clone();
            v[i] += d;
            let t = Tensor::from_vec(v, x0.dims(), x0.device()).unwrap();
            f(&t).to_scalar::<f64>().unwrap()
        };
        let fd = (eval(h) - eval(-h)) / (2.0 * h);
        // Floor 1e-3: near p_t = 1 the difference quotient of 1 − exp(log p_t) loses digits.
        let rel = (fd - g[i]).abs() / (fd.abs().max(g[i].abs()).max(1e-3));
        if std::env::var("FD_DEBUG").is_ok() {
            println!("  [{i}] fd {fd:.6e} analytic {:.6e}", g[i]);
        }
        worst = worst.max(rel);
    }
    worst
}

#[test]
fn focal_loss_gradient_matches_finite_differences() {
    let dev = Device::Cpu;
    let mut rng = StdRng::seed_from_u64(3);
    let logits: Vec<f64> = (0..2 * 2 * 3 * 3)
        .map(|_| rng.random_range(-3.0..3.0))
        .collect();
    let target: Vec<f64> = (0..2 * 3 * 3)
        .map(|_| if rng.random_bool(0.4) { 1.0 } else { 0.0 })
        .collect();
    let x = Var::from_tensor(&Tensor::from_vec(logits, (2, 2, 3, 3), &dev).unwrap()).unwrap();
    let t = Tensor::from_vec(target, (2, 1, 3, 3), &dev).unwrap();
    for gamma in [2.0, 1.5] {
        let loss = focal_loss(x.as_tensor(), &t, gamma).unwrap();
        let g = loss.backward().unwrap();
        let gx = g.get(x.as_tensor()).unwrap();
        let idx: Vec<usize> = (0..36).collect();
        let err = fd_check(
            x.as_tensor(),
            |z| focal_loss(z, &t, gamma).unwrap(),
            gx,
            &idx,
        );
        println!("focal γ={gamma}: max relative FD error {err:.2e} (tolerance 1e-5)");
        assert!(err < 1e-5);
    }
}

#[test]
fn network_gradient_matches_finite_differences() {
    // The whole U-Net in f64 (max-pool and upsampling are our own reshape/broadcast versions;
    // this checks their backward together with the conv and GroupNorm kernels).
    let dev = Device::Cpu;
    let p = Params::fresh(5, &dev).with_dtype(DType::F64);
    let net = LocalisationNet::new(&p, 2, 3).unwrap();
    let mut rng = StdRng::seed_from_u64(9);
    let xv: Vec<f64> = (0..3 * 32 * 32)
        .map(|_| rng.random_range(0.0..1.0))
        .collect();
    let x = Tensor::from_vec(xv, (1, 3, 32, 32), &dev).unwrap();
    let mv: Vec<f64> = (0..32 * 32)
        .map(|i| {
            if (i / 32) % 16 < 6 && i % 32 < 10 {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    let m = Tensor::from_vec(mv, (1, 1, 32, 32), &dev).unwrap();
    let loss = focal_loss(&net.forward(&x).unwrap(), &m, 2.0).unwrap();
    let grads = loss.backward().unwrap();
    let vars = p.vars();
    let mut worst = 0f64;
    for name in [
        "encoder.block1.0.weight",
        "encoder.block5.3.weight",
        "decoder.upb.1.weight",
        "decoder.db4.4.bias",
        "decoder.fin_out.0.weight",
    ] {
        let (_, var) = vars.iter().find(|(n, _)| n == name).unwrap();
        let g = grads.get(var.as_tensor()).unwrap().clone();
        let orig = var.as_tensor().copy().unwrap();
        let f = |t: &Tensor| {
            var.set(t).unwrap();
            let l = focal_loss(&net.forward(&x).unwrap(), &m, 2.0).unwrap();
            var.set(&orig).unwrap();
            l
        };
        let err = fd_check(&orig, f, &g, &[0, 7, 13]);
        println!("{name}: max relative FD error {err:.2e}");
        worst = worst.max(err);
    }
    println!("network FD: worst {worst:.2e} (tolerance 1e-4)");
    assert!(worst < 1e-4);
}

#[test]
fn image_score_and_bilinear_resize() {
    let dev = Device::Cpu;
    // A 3×3 block of ones in a 9×9 zero map, window 3: the best window covers it fully.
    let mut v = vec![0f32; 81];
    for y in 3..6 {
        for x in 3..6 {
            v[y * 9 + x] = 1.0;
        }
    }
    let t = Tensor::from_vec(v, (1, 1, 9, 9), &dev).unwrap();
    let s = image_score(&t, 3).unwrap();
    assert!((s[0] - 1.0).abs() < 1e-6, "{s:?}");
    // Corner pixel with zero padding: 1/9 at best.
    let mut v = vec![0f32; 81];
    v[0] = 1.0;
    let t = Tensor::from_vec(v, (1, 1, 9, 9), &dev).unwrap();
    assert!((image_score(&t, 3).unwrap()[0] - 1.0 / 9.0).abs() < 1e-6);
    // Bilinear: constant stays constant, 2×2 → 4×4 matches torch (align_corners=False).
    let up = resize_bilinear(&[0.0, 1.0, 2.0, 3.0], 2, 2, 4, 4);
    let want = [
        0.0, 0.25, 0.75, 1.0, 0.5, 0.75, 1.25, 1.5, 1.5, 1.75, 2.25, 2.5, 2.0, 2.25, 2.75, 3.0,
    ];
    for (a, b) in up.iter().zip(want) {
        assert!((a - b).abs() < 1e-6, "{up:?}");
    }
}

/// Mean probability inside vs outside the masks of fresh source pairs, and the pixel AUROC.
fn separation(net: &LocalisationNet, ctx: &SourceContext, n: usize) -> (f64, f64, f64) {
    let dev = Device::Cpu;
    let mut src = BrightSquares::new(ctx);
    let mut rng = StdRng::seed_from_u64(12345);
    let (mut pos, mut neg) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let pair = src.sample(&mut rng).unwrap();
        let x = anodiff::io::image_tensor::rgb_to_unit_tensor(&pair.image, &dev)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let l = net.forward(&x).unwrap();
        let d = (l.narrow(1, 1, 1).unwrap() - l.narrow(1, 0, 1).unwrap()).unwrap();
        let p: Vec<f32> = anodiff::nn::ops::sigmoid(&d)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (v, m) in p.iter().zip(pair.mask.as_raw()) {
            if *m > 127 {
                pos.push(*v as f64)
            } else {
                neg.push(*v as f64)
            }
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    // AUROC = P(score_pos > score_neg) via ranks.
    let mut all: Vec<(f64, bool)> = pos
        .iter()
        .map(|&v| (v, true))
        .chain(neg.iter().map(|&v| (v, false)))
        .collect();
    all.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    let mut rank_sum = 0f64;
    let mut i = 0;
    while i < all.len() {
        let mut j = i;
        while j < all.len() && all[j].0 == all[i].0 {
            j += 1;
        }
        let avg_rank = (i + j + 1) as f64 / 2.0;
        rank_sum += avg_rank * all[i..j].iter().filter(|e| e.1).count() as f64;
        i = j;
    }
    let (np, nn) = (pos.len() as f64, neg.len() as f64);
    let auroc = (rank_sum - np * (np + 1.0) / 2.0) / (np * nn);
    (mean(&pos), mean(&neg), auroc)
}

#[test]
fn learns_to_localise_bright_squares() {
    let t0 = Instant::now();
    let ctx = context(32, 24, 1);
    let protocol = tiny_protocol(32, 4, 1600, 8, 3e-3);
    let untrained = LocalisationNet::new(&Params::fresh(7, &Device::Cpu), 4, 3).unwrap();
    let before = separation(&untrained, &ctx, 16);
    let mut src = BrightSquares::new(&ctx);
    let mut last = Vec::new();
    let net = train(&ctx, &mut src, &protocol, 7, None, |s| last.push(s.loss)).unwrap();
    let after = separation(&net, &ctx, 16);
    let first: f64 = last[..10].iter().sum::<f64>() / 10.0;
    let final_: f64 = last[last.len() - 10..].iter().sum::<f64>() / 10.0;
    println!(
        "{} steps in {:.1}s; loss {first:.4} → {final_:.4}; inside/outside/AUROC before \
         {before:.3?}, after {after:.3?}",
        last.len(),
        t0.elapsed().as_secs_f64()
    );
    assert_eq!(last.len(), protocol.steps());
    assert!(
        after.0 - after.1 > 0.3,
        "mean prob inside − outside too small: {after:?}"
    );
    assert!(after.2 > 0.9, "pixel AUROC {after:?}");
}

#[test]
fn predict_writes_original_size_maps_and_scores() {
    let dir = temp_dir("predict");
    let mut rng = StdRng::seed_from_u64(2);
    let mut entry = |rel: &str, w: u32, h: u32| {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        noise_image(&mut rng, w, h).save(&p).unwrap();
        SplitEntry {
            stem: PathBuf::from(rel)
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into(),
            image: rel.into(),
            mask: None,
        }
    };
    let eval_good = vec![
        entry("test/good/a.png", 50, 37),
        entry("test/good/b.png", 20, 61),
    ];
    let test: Vec<SplitEntry> = (0..9)
        .map(|i| entry(&format!("test/crack/{i:03}.png"), 40 + i, 33))
        .collect();
    let mut defects = BTreeMap::new();
    defects.insert(
        "crack".to_string(),
        DefectSplit {
            train: vec![],
            test,
        },
    );
    let split = SplitManifest {
        version: 1,
        protocol: "test".into(),
        dataset: dir.clone(),
        train_good: vec![],
        eval_good,
        defects,
    };
    let protocol = tiny_protocol(32, 2, 8, 8, 1e-3);
    let net = LocalisationNet::new(&Params::fresh(3, &Device::Cpu), 2, 3).unwrap();
    let mut seen = Vec::new();
    predict(&net, &split, &protocol, |defect, stem, map, score| {
        let img = image::open(dir.join(if defect == "good" {
            format!("test/good/{stem}.png")
        } else {
            format!("test/{defect}/{stem}.png")
        }))
        .unwrap();
        assert_eq!(
            (map.width, map.height),
            (img.width() as usize, img.height() as usize)
        );
        assert!(map.data.iter().all(|v| (0.0..=1.0).contains(v)));
        let max = map.data.iter().cloned().fold(0f32, f32::max);
        assert!(
            score > 0.0 && score <= max + 1e-4,
            "{score} vs map max {max}"
        );
        seen.push((defect.to_string(), stem.to_string()));
        Ok(())
    })
    .unwrap();
    assert_eq!(seen.len(), 11);
    assert_eq!(seen[0], ("good".to_string(), "a".to_string()));
    assert_eq!(seen[10], ("crack".to_string(), "008".to_string()));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn resumed_run_matches_uninterrupted_run_and_reloads() {
    let ctx = context(32, 8, 4);
    // 10 steps, decay after 8 and 9: an interruption in the first phase must resume into the
    // later phases with the same Adam state.
    let protocol = tiny_protocol(32, 2, 40, 4, 2e-3);
    let full_dir = temp_dir("full");
    let mut src = BrightSquares::new(&ctx);
    let full = train(&ctx, &mut src, &protocol, 11, Some(&full_dir), |_| {}).unwrap();

    let part_dir = temp_dir("part");
    let mut failing = BrightSquares::new(&ctx);
    failing.fail_after = Some(6);
    let err = train(&ctx, &mut failing, &protocol, 11, Some(&part_dir), |_| {})
        .err()
        .expect("the interrupted run must fail")
        .to_string();
    println!("interrupted: {err}");
    let mut src = BrightSquares::new(&ctx);
    let mut resumed_steps = Vec::new();
    let resumed = train(&ctx, &mut src, &protocol, 11, Some(&part_dir), |s| {
        resumed_steps.push(s.step)
    })
    .unwrap();
    println!("resumed steps {resumed_steps:?}");
    assert!(resumed_steps.first().is_some_and(|&s| s > 1));
    let mut worst = 0f32;
    for ((n, a), (_, b)) in full.tensors().iter().zip(resumed.tensors()) {
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d == 0.0, "{n} differs by {d}");
        worst = worst.max(d);
    }
    println!("resume: max weight difference {worst}");
    // "Resuming" a finished run trains nothing and returns its final weights.
    let mut again = 0;
    let done = train(&ctx, &mut src, &protocol, 11, Some(&full_dir), |_| {
        again += 1
    })
    .unwrap();
    assert_eq!(again, 0);
    for ((n, a), (_, b)) in full.tensors().iter().zip(done.tensors()) {
        let d = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d == 0.0, "finished run reloaded: {n} differs by {d}");
    }
    // A different protocol cannot resume this run directory.
    let other = tiny_protocol(32, 2, 80, 4, 2e-3);
    assert!(train(&ctx, &mut src, &other, 11, Some(&part_dir), |_| {}).is_err());
    // The saved weights reload to the same network.
    let loaded = LocalisationNet::load(&full_dir.join("localisation.safetensors")).unwrap();
    let x = Tensor::rand(0f32, 1.0, (1, 3, 32, 32), &Device::Cpu).unwrap();
    let d = (full.forward(&x).unwrap() - loaded.forward(&x).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(d, 0.0);
    assert!(full_dir.join("protocol.json").is_file());
    let _ = std::fs::remove_dir_all(&full_dir);
    let _ = std::fs::remove_dir_all(&part_dir);
}

/// Timing of `Protocol::cpu()` (run with `--ignored --nocapture`, and CANDLE_NUM_THREADS /
/// RAYON_NUM_THREADS set to 1 or 2).
#[test]
#[ignore]
fn bench_cpu_protocol() {
    let proto = std::env::var("LOC_PROTOCOL").unwrap_or_else(|_| "cpu".into());
    let mut protocol = Protocol::parse(&proto).unwrap();
    if let Ok(v) = std::env::var("LOC_SIZE") {
        protocol.size = v.parse().unwrap();
    }
    if let Ok(v) = std::env::var("LOC_WIDTH") {
        protocol.width = v.parse().unwrap();
    }
    if let Ok(v) = std::env::var("LOC_BATCH") {
        protocol.batch = v.parse().unwrap();
    }
    let steps = 12;
    protocol.epochs = 1;
    protocol.samples_per_epoch = steps * protocol.batch;
    let ctx = context(protocol.size as u32, 16, 1);
    let mut src = BrightSquares::new(&ctx);
    let mut secs = Vec::new();
    train(&ctx, &mut src, &protocol, 1, None, |s| secs.push(s.secs)).unwrap();
    secs.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let step = secs[secs.len() / 2];
    let net = LocalisationNet::new(&Params::fresh(1, &Device::Cpu), protocol.width, 3).unwrap();
    let s = protocol.size;
    let x = Tensor::rand(0f32, 1.0, (8, 3, s, s), &Device::Cpu).unwrap();
    net.forward(&x).unwrap();
    let t = Instant::now();
    for _ in 0..3 {
        net.forward(&x).unwrap();
    }
    let per_img = t.elapsed().as_secs_f64() / 24.0;
    let full = Protocol::parse(&proto).unwrap();
    println!(
        "size {} width {} batch {}: {step:.4} s/step (median of {steps}), {per_img:.4} s/image \
         forward; full `{proto}` run estimate: {} steps → {:.0} s train + 450 images → {:.0} s",
        s,
        protocol.width,
        protocol.batch,
        full.steps(),
        step * full.steps() as f64,
        per_img * 450.0
    );
}

/// CutPaste stand-in for real data: a random patch of one good image, brightness-jittered, pasted
/// at a random place of another.
struct CutPaste {
    good: Arc<Vec<RgbImage>>,
    size: u32,
}

impl AnomalySource for CutPaste {
    fn name(&self) -> &str {
        "test:cutpaste"
    }

    fn sample(&mut self, rng: &mut StdRng) -> anodiff::Result<AnomalyPair> {
        let s = self.size;
        let n = self.good.len();
        let mut image = self.good[rng.random_range(0..n)].clone();
        let donor = &self.good[rng.random_range(0..n)];
        let mut mask = GrayImage::new(s, s);
        let (rw, rh) = (
            rng.random_range(s / 16..s / 4),
            rng.random_range(s / 16..s / 4),
        );
        let (sx, sy) = (rng.random_range(0..s - rw), rng.random_range(0..s - rh));
        let (dx, dy) = (rng.random_range(0..s - rw), rng.random_range(0..s - rh));
        let gain = if rng.random_bool(0.5) {
            rng.random_range(0.3..0.7f32)
        } else {
            rng.random_range(1.4..2.2f32)
        };
        for y in 0..rh {
            for x in 0..rw {
                let p = donor.get_pixel(sx + x, sy + y).0;
                let q = p.map(|v| (v as f32 * gain).clamp(0.0, 255.0) as u8);
                image.put_pixel(dx + x, dy + y, Rgb(q));
                mask.put_pixel(dx + x, dy + y, Luma([255]));
            }
        }
        Ok(AnomalyPair { image, mask })
    }
}

/// One real run on MTD (`LOC_SPLIT=path/to/split.json`, run with `--ignored --nocapture`):
/// trains `Protocol::cpu()` with the CutPaste stand-in and reports the mean anomaly probability
/// inside vs outside the test masks per defect type.
#[test]
#[ignore]
fn mtd_real_run() {
    let Ok(split_path) = std::env::var("LOC_SPLIT") else {
        println!("LOC_SPLIT not set: skipping");
        return;
    };
    let split = SplitManifest::load(std::path::Path::new(&split_path)).unwrap();
    let protocol = Protocol::cpu();
    let s = protocol.size as u32;
    let t0 = Instant::now();
    let good = load_square(&split.train_good, s, |e| split.load_image(e)).unwrap();
    let ctx = SourceContext {
        split: Arc::new(split.clone()),
        good: Arc::new(good),
        size: s,
    };
    let t_load = t0.elapsed().as_secs_f64();
    let mut src = CutPaste {
        good: ctx.good.clone(),
        size: s,
    };
    let run_dir = std::env::var("LOC_RUN_DIR").ok().map(PathBuf::from);
    let t1 = Instant::now();
    let mut losses = Vec::new();
    let net = train(&ctx, &mut src, &protocol, 0, run_dir.as_deref(), |st| {
        losses.push(st.loss)
    })
    .unwrap();
    let t_train = t1.elapsed().as_secs_f64();
    let masks: BTreeMap<(String, String), PathBuf> = split
        .defects
        .iter()
        .flat_map(|(d, ds)| ds.test.iter().map(move |e| (d, e)))
        .filter_map(|(d, e)| {
            e.mask
                .as_ref()
                .map(|m| ((d.clone(), e.stem.clone()), split.resolve(m)))
        })
        .collect();
    // Per defect: (sum inside, n inside, sum outside, n outside, scores).
    let mut acc: BTreeMap<String, (f64, usize, f64, usize, Vec<f32>)> = BTreeMap::new();
    let t2 = Instant::now();
    let mut n_images = 0;
    predict(&net, &split, &protocol, |defect, stem, map, score| {
        n_images += 1;
        let a = acc.entry(defect.to_string()).or_default();
        a.4.push(score);
        let mask = masks
            .get(&(defect.to_string(), stem.to_string()))
            .map(|p| image::open(p).unwrap().to_luma8());
        for (i, v) in map.data.iter().enumerate() {
            let inside = mask.as_ref().is_some_and(|m| m.as_raw()[i] >= 128);
            if inside {
                a.0 += *v as f64;
                a.1 += 1;
            } else {
                a.2 += *v as f64;
                a.3 += 1;
            }
        }
        Ok(())
    })
    .unwrap();
    let t_pred = t2.elapsed().as_secs_f64();
    println!(
        "MTD cpu protocol: load {t_load:.1}s, train {} steps {t_train:.1}s (loss {:.4} → {:.4}), \
         predict {n_images} images {t_pred:.1}s",
        losses.len(),
        losses[..10].iter().sum::<f64>() / 10.0,
        losses[losses.len() - 10..].iter().sum::<f64>() / 10.0
    );
    let good_scores = acc.get("good").map(|a| a.4.clone()).unwrap_or_default();
    for (d, (si, ni, so, no, scores)) in &acc {
        // Image AUROC of this defect type vs the good eval images.
        let auroc = if d == "good" {
            f64::NAN
        } else {
            let mut wins = 0f64;
            for &p in scores {
                for &g in &good_scores {
                    wins += if p > g {
                        1.0
                    } else if p == g {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
            wins / (scores.len() * good_scores.len()) as f64
        };
        println!(
            "{d:>8}: mean prob inside {:.3} outside {:.3}; image AUROC vs good {auroc:.3}",
            si / (*ni).max(1) as f64,
            so / (*no).max(1) as f64
        );
    }
}
