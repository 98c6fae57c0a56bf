//! Parity of the anomaly-detection metrics with scikit-learn (AUROC, AP, F1-max) and with an
//! independent Python AU-PRO reference. Fixtures: tools/eval/make_metric_fixtures.py.

mod common;

use anodiff::eval::aupro::label_regions;
use anodiff::eval::metrics::{
    auroc, average_precision, binary_metrics, f1_max, pr_curve, roc_curve,
};
use anodiff::eval::pixels::{aupro, pixel_metrics, PixelScores};
use common::fixtures;
use serde_json::Value;

/// f64 metrics computed from integer counts: only summation-order rounding differs.
const TOL_BINARY: f64 = 1e-9;
const TOL_AUPRO: f64 = 1e-6;

fn load(name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(fixtures("eval").join(name)).unwrap()).unwrap()
}

/// Expected value: JSON null means NaN.
fn expected(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// |a - b|, 0 when both are NaN, +inf when only one is.
fn dev(a: f64, b: f64) -> f64 {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => 0.0,
        (false, false) => (a - b).abs(),
        _ => f64::INFINITY,
    }
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn binary_metrics_match_sklearn() {
    let fx = load("binary.json");
    let mut max_dev: f64 = 0.0;
    for c in fx["cases"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let s = f32s(&c["scores"]);
        let l: Vec<bool> = c["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap() == 1)
            .collect();
        let m = binary_metrics(&s, &l);
        for (what, got, want) in [
            ("auroc", auroc(&s, &l), &c["auroc"]),
            ("ap", average_precision(&s, &l), &c["ap"]),
            ("f1_max", f1_max(&s, &l), &c["f1_max"]),
            ("auroc (one pass)", m.auroc, &c["auroc"]),
        ] {
            let d = dev(got, expected(want));
            println!("{name:28} {what:16} got {got:.12} want {want} dev {d:.2e}");
            assert!(d <= TOL_BINARY, "{name} {what}: got {got}, want {want}");
            max_dev = max_dev.max(d);
        }
        // Curves: defined exactly when both classes are present; ROC ends at (1, 1).
        let roc = roc_curve(&s, &l);
        let pr = pr_curve(&s, &l);
        assert_eq!(roc.is_some(), !expected(&c["auroc"]).is_nan(), "{name}");
        if let (Some(roc), Some(pr)) = (roc, pr) {
            assert_eq!((roc.fpr[0], roc.tpr[0]), (0.0, 0.0));
            assert_eq!(
                (*roc.fpr.last().unwrap(), *roc.tpr.last().unwrap()),
                (1.0, 1.0)
            );
            assert_eq!(*pr.recall.last().unwrap(), 1.0);
            let f1 = pr
                .precision
                .iter()
                .zip(&pr.recall)
                .map(|(p, r)| 2.0 * p * r / (p + r).max(f64::MIN_POSITIVE))
                .fold(0.0, f64::max);
            assert!(dev(f1, m.f1_max) < 1e-12, "{name}: {f1} vs {}", m.f1_max);
        }
    }
    println!("max deviation vs sklearn (image-style metrics): {max_dev:.3e} (tol {TOL_BINARY:e})");
}

struct Images {
    height: usize,
    width: usize,
    scores: Vec<Vec<f32>>,
    masks: Vec<Vec<bool>>,
}

fn case_images(c: &Value) -> Images {
    let (height, width) = (
        c["height"].as_u64().unwrap() as usize,
        c["width"].as_u64().unwrap() as usize,
    );
    let mut im = Images {
        height,
        width,
        scores: vec![],
        masks: vec![],
    };
    if c["name"] == "large" {
        let bytes = std::fs::read(fixtures("eval/large.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let s = st.tensor("scores").unwrap();
        let m = st.tensor("masks").unwrap();
        let n = height * width;
        let sv: Vec<f32> = s
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        for i in 0..s.shape()[0] {
            im.scores.push(sv[i * n..(i + 1) * n].to_vec());
            im.masks.push(
                m.data()[i * n..(i + 1) * n]
                    .iter()
                    .map(|&v| v != 0)
                    .collect(),
            );
        }
    } else {
        for img in c["images"].as_array().unwrap() {
            im.scores.push(f32s(&img["scores"]));
            im.masks.push(
                img["mask"]
                    .as_str()
                    .unwrap()
                    .bytes()
                    .map(|b| b == b'1')
                    .collect(),
            );
        }
    }
    im
}

#[test]
fn pixel_metrics_and_aupro_match_reference() {
    let fx = load("aupro.json");
    let limit = fx["fpr_limit"].as_f64().unwrap();
    let (mut max_bin, mut max_pro): (f64, f64) = (0.0, 0.0);
    for c in fx["cases"].as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        let im = case_images(c);
        let mut acc = PixelScores::exact();
        let mut regions = 0;
        for (s, m) in im.scores.iter().zip(&im.masks) {
            acc.add_image(s, m, im.height, im.width).unwrap();
            regions += label_regions(m, im.height, im.width).1.len();
        }
        assert_eq!(regions as u64, c["regions"].as_u64().unwrap(), "{name}");
        let got = pixel_metrics(&[&acc.into_sorted()], limit).unwrap();
        for (what, g, tol) in [
            ("auroc", got.auroc, TOL_BINARY),
            ("ap", got.ap, TOL_BINARY),
            ("f1_max", got.f1_max, TOL_BINARY),
            ("aupro", got.aupro, TOL_AUPRO),
        ] {
            let want = expected(&c[what]);
            let d = dev(g, want);
            println!("{name:30} {what:7} got {g:.12} want {want:.12} dev {d:.2e}");
            assert!(d <= tol, "{name} {what}: got {g}, want {want}");
            if what == "aupro" {
                max_pro = max_pro.max(d);
            } else {
                max_bin = max_bin.max(d);
            }
        }
        // The convenience function agrees with the accumulator.
        let imgs: Vec<_> = im
            .scores
            .iter()
            .zip(&im.masks)
            .map(|(s, m)| (s.as_slice(), m.as_slice(), im.height, im.width))
            .collect();
        assert!(dev(aupro(&imgs, limit), got.aupro) == 0.0, "{name}");
    }
    println!("max deviation: pixel AUROC/AP/F1 {max_bin:.3e} (tol {TOL_BINARY:e}), AU-PRO {max_pro:.3e} (tol {TOL_AUPRO:e})");
}

#[test]
fn binned_mode_close_to_exact_on_large_case() {
    let fx = load("aupro.json");
    let c = fx["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "large")
        .unwrap();
    let im = case_images(c);
    let (lo, hi) = im
        .scores
        .iter()
        .flatten()
        .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
    let bins = 10_000;
    let mut acc = PixelScores::binned(bins, lo, hi);
    for (s, m) in im.scores.iter().zip(&im.masks) {
        acc.add_image(s, m, im.height, im.width).unwrap();
    }
    let got = pixel_metrics(&[&acc.into_sorted()], 0.3).unwrap();
    let mut worst: f64 = 0.0;
    for (what, g) in [
        ("auroc", got.auroc),
        ("ap", got.ap),
        ("f1_max", got.f1_max),
        ("aupro", got.aupro),
    ] {
        let d = dev(g, expected(&c[what]));
        println!("binned ({bins} bins) {what:7} dev {d:.2e}");
        worst = worst.max(d);
    }
    assert!(worst <= 1e-3, "binned mode deviates by {worst}");
}

/// Timing of exact pixel metrics on ~100 M synthetic pixels:
/// `cargo test --release -p anodiff --test eval_metrics -- --ignored --nocapture`.
#[test]
#[ignore]
fn exact_pixel_metrics_100m_timing() {
    let (h, w, n) = (1024usize, 1024usize, 96usize);
    let mut state = 0x9e3779b97f4a7c15u64;
    let mut rnd = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32
    };
    let t0 = std::time::Instant::now();
    let mut good = PixelScores::exact();
    let mut bad = PixelScores::exact();
    good.reserve(h * w * n / 2);
    bad.reserve(h * w * n / 2);
    let mut mask = vec![false; h * w];
    for y in 300..400 {
        for x in 200..330 {
            mask[y * w + x] = true;
        }
    }
    let empty = vec![false; h * w];
    for i in 0..n {
        let s: Vec<f32> = (0..h * w)
            .map(|j| rnd() + if mask[j] && i % 2 == 1 { 0.3 } else { 0.0 })
            .collect();
        if i % 2 == 0 {
            good.add_image(&s, &empty, h, w).unwrap();
        } else {
            bad.add_image(&s, &mask, h, w).unwrap();
        }
    }
    let t1 = std::time::Instant::now();
    let (good, bad) = (good.into_sorted(), bad.into_sorted());
    let t2 = std::time::Instant::now();
    let m = pixel_metrics(&[&good, &bad], 0.3).unwrap();
    let t3 = std::time::Instant::now();
    println!(
        "{} pixels: fill {:.1}s, sort {:.1}s, sweep {:.1}s; {m:?}",
        m.pixels,
        (t1 - t0).as_secs_f64(),
        (t2 - t1).as_secs_f64(),
        (t3 - t2).as_secs_f64()
    );
    assert!(m.auroc > 0.5 && m.aupro > 0.0);
}
