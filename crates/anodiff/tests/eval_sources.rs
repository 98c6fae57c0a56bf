//! Anomaly sources (fewshot-real, cutpaste, cutpaste-scar, draem, dir:PATH): determinism, sizes,
//! binary masks, pixels outside the mask untouched, split hygiene, `dir:` error cases; on the real
//! MTD dataset (skipped when absent) preview sheets in out/ and sampling rates.

mod common;

use anodiff::data::split::{SplitEntry, SplitManifest, MANIFEST_VERSION};
use anodiff::eval::sources::perlin::{perlin_mask, perlin_noise};
use anodiff::eval::sources::{from_spec, preview_grid, AnomalyPair, SourceContext};
use anodiff::io::image::load_square;
use common::{shared_dataset, temp_dir};
use image::{GrayImage, Luma, Rgb, RgbImage};
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const SIZE: u32 = 32;

/// Per-pixel pseudo-random colours, so any moved patch changes pixels.
fn noise_image(w: u32, h: u32, seed: u32) -> RgbImage {
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    RgbImage::from_fn(w, h, |_, _| {
        let mut px = [0u8; 3];
        for v in &mut px {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            *v = (s >> 24) as u8;
        }
        Rgb(px)
    })
}

fn empty_split(root: &Path) -> SplitManifest {
    SplitManifest {
        version: MANIFEST_VERSION,
        protocol: "test".into(),
        dataset: root.to_path_buf(),
        train_good: vec![],
        eval_good: vec![],
        defects: BTreeMap::new(),
    }
}

fn ctx_with(split: SplitManifest, good: Vec<RgbImage>) -> SourceContext {
    SourceContext {
        split: Arc::new(split),
        good: Arc::new(good),
        size: SIZE,
    }
}

/// A defect image (`blue` channel marks train vs test), red 250 inside an asymmetric rectangle
/// mask and 100 outside; saved at `side`² with its mask.
fn put_defect(root: &Path, name: &str, side: u32, blue: u8, empty_mask: bool) -> SplitEntry {
    let inside =
        |x: u32, y: u32| !empty_mask && (2..side / 3).contains(&x) && (5..side - 2).contains(&y);
    let img = RgbImage::from_fn(side, side, |x, y| {
        Rgb([if inside(x, y) { 250 } else { 100 }, 0, blue])
    });
    let mask = GrayImage::from_fn(side, side, |x, y| {
        Luma([if inside(x, y) { 255 } else { 0 }])
    });
    let (ip, mp) = (
        format!("test/{name}.png"),
        format!("ground_truth/{name}_mask.png"),
    );
    for p in [&ip, &mp] {
        std::fs::create_dir_all(root.join(p).parent().unwrap()).unwrap();
    }
    img.save(root.join(&ip)).unwrap();
    mask.save(root.join(&mp)).unwrap();
    SplitEntry {
        stem: name.into(),
        image: ip,
        mask: Some(mp),
    }
}

/// Two defect types; train entries have blue 0, test entries blue 200; one train mask is empty.
fn defect_split(root: &Path) -> SplitManifest {
    let side = anodiff::eval::sources::fewshot::cache_side(SIZE);
    assert_eq!(side, 36);
    let mut m = empty_split(root);
    for (d, n_train) in [("crack", 2), ("hole", 1)] {
        let mut ds = anodiff::data::split::DefectSplit::default();
        for i in 0..n_train {
            ds.train
                .push(put_defect(root, &format!("{d}_tr{i}"), side, 0, false));
        }
        for i in 0..3 {
            ds.test
                .push(put_defect(root, &format!("{d}_te{i}"), side, 200, false));
        }
        m.defects.insert(d.into(), ds);
    }
    let e = put_defect(root, "hole_empty", side, 0, true);
    m.defects.get_mut("hole").unwrap().train.push(e);
    m
}

fn write_dir_pair(root: &Path, stem: &str, ext: &str, (w, h): (u32, u32), mask_size: (u32, u32)) {
    std::fs::create_dir_all(root.join("image")).unwrap();
    std::fs::create_dir_all(root.join("mask")).unwrap();
    noise_image(w, h, 7)
        .save(root.join(format!("image/{stem}.{ext}")))
        .unwrap();
    GrayImage::from_fn(mask_size.0, mask_size.1, |x, _| {
        Luma([if x < mask_size.0 / 2 { 255 } else { 0 }])
    })
    .save(root.join(format!("mask/{stem}.png")))
    .unwrap();
}

fn draw(spec: &str, ctx: &SourceContext, seed: u64, n: usize) -> Vec<AnomalyPair> {
    let mut src = from_spec(spec, ctx).unwrap();
    assert_eq!(src.name(), spec);
    let mut rng = StdRng::seed_from_u64(seed);
    (0..n).map(|_| src.sample(&mut rng).unwrap()).collect()
}

fn same(a: &[AnomalyPair], b: &[AnomalyPair]) -> bool {
    a.iter()
        .zip(b)
        .all(|(x, y)| x.image == y.image && x.mask == y.mask)
}

/// Context for every source at once: two good noise images, the defect split, a dir folder.
fn full_ctx(name: &str) -> (SourceContext, String) {
    let root = temp_dir(name);
    let split = defect_split(&root);
    let dir = root.join("generated");
    for i in 0..4 {
        write_dir_pair(&dir, &format!("g{i}"), "png", (48, 40), (48, 40));
    }
    let good = vec![noise_image(SIZE, SIZE, 1), noise_image(SIZE, SIZE, 2)];
    (ctx_with(split, good), format!("dir:{}", dir.display()))
}

#[test]
fn all_sources_deterministic_sized_binary() {
    let (ctx, dir) = full_ctx("determinism");
    for spec in [
        "fewshot-real",
        "cutpaste",
        "cutpaste-scar",
        "draem",
        dir.as_str(),
    ] {
        let a = draw(spec, &ctx, 11, 12);
        let b = draw(spec, &ctx, 11, 12);
        let c = draw(spec, &ctx, 12, 12);
        assert!(same(&a, &b), "{spec}: same seed gave different pairs");
        assert!(
            !same(&a, &c),
            "{spec}: different seeds gave identical pairs"
        );
        for p in &a {
            assert_eq!(p.image.dimensions(), (SIZE, SIZE), "{spec}");
            assert_eq!(p.mask.dimensions(), (SIZE, SIZE), "{spec}");
            assert!(
                p.mask.iter().all(|&v| v == 0 || v == 255),
                "{spec}: mask not binary"
            );
            assert!(p.mask.contains(&255), "{spec}: empty mask");
        }
        println!("{spec}: ok");
    }
}

#[test]
fn synthetic_sources_change_only_inside_mask() {
    let good = noise_image(SIZE, SIZE, 3);
    let ctx = ctx_with(empty_split(&temp_dir("inside")), vec![good.clone()]);
    for spec in ["cutpaste", "cutpaste-scar", "draem"] {
        let (mut area, mut changed_in) = (0usize, 0usize);
        for p in draw(spec, &ctx, 5, 60) {
            let mut changed = 0;
            for ((a, b), m) in p.image.pixels().zip(good.pixels()).zip(p.mask.pixels()) {
                if m[0] == 0 {
                    assert_eq!(a, b, "{spec}: pixel outside the mask changed");
                } else if a != b {
                    changed += 1;
                }
            }
            let n = p.mask.iter().filter(|&&v| v == 255).count();
            assert!(n > 0, "{spec}: empty mask");
            assert!(changed > 0, "{spec}: nothing changed inside the mask");
            area += n;
            changed_in += changed;
        }
        let frac = changed_in as f64 / area as f64;
        println!(
            "{spec}: mean mask area {:.1} % of the image, {:.1} % of masked pixels changed",
            100.0 * area as f64 / (60 * SIZE * SIZE) as f64,
            100.0 * frac
        );
        assert!(
            frac > 0.5,
            "{spec}: only {frac} of the masked pixels changed"
        );
    }
}

#[test]
fn cutpaste_rect_mask_is_a_rectangle_of_the_right_area() {
    let ctx = ctx_with(
        empty_split(&temp_dir("rect")),
        vec![noise_image(SIZE, SIZE, 4)],
    );
    for p in draw("cutpaste", &ctx, 9, 100) {
        let on: Vec<(u32, u32)> = p
            .mask
            .enumerate_pixels()
            .filter(|q| q.2[0] == 255)
            .map(|q| (q.0, q.1))
            .collect();
        let (x0, x1) = (
            on.iter().map(|q| q.0).min().unwrap(),
            on.iter().map(|q| q.0).max().unwrap(),
        );
        let (y0, y1) = (
            on.iter().map(|q| q.1).min().unwrap(),
            on.iter().map(|q| q.1).max().unwrap(),
        );
        assert_eq!(
            on.len() as u32,
            (x1 - x0 + 1) * (y1 - y0 + 1),
            "mask is not a full rectangle"
        );
        let frac = on.len() as f64 / (SIZE * SIZE) as f64;
        // Rounding of the sides at 32 px widens the 0.02–0.15 range a little.
        assert!((0.01..=0.2).contains(&frac), "area fraction {frac}");
    }
}

#[test]
fn scar_footprint_matches_strip_size_at_256() {
    let mut ctx = ctx_with(
        empty_split(&temp_dir("scar")),
        vec![noise_image(256, 256, 5)],
    );
    ctx.size = 256;
    let (mut lo, mut hi) = (usize::MAX, 0);
    for p in draw("cutpaste-scar", &ctx, 4, 200) {
        let n = p.mask.iter().filter(|&&v| v == 255).count();
        lo = lo.min(n);
        hi = hi.max(n);
        // A w×h strip (2–16 × 10–25 px) covers about w·h pixel centres however it is rotated.
        assert!(
            (10..=16 * 25 + 2 * (16 + 25)).contains(&n),
            "scar footprint {n} px"
        );
    }
    println!("scar footprint at 256 px: {lo}..{hi} px");
}

#[test]
fn fewshot_real_uses_only_train_defects_aligned() {
    let (ctx, _) = full_ctx("fewshot");
    let pairs = draw("fewshot-real", &ctx, 3, 200);
    let mut flips = std::collections::BTreeSet::new();
    for p in &pairs {
        for (px, m) in p.image.pixels().zip(p.mask.pixels()) {
            assert_eq!(px[2], 0, "a test defect (blue 200) was used");
            assert_eq!(px[0] == 250, m[0] == 255, "image and mask are misaligned");
        }
        // The rectangle is left of centre and tall; flips move it right / shift it vertically.
        flips.insert((
            p.mask.get_pixel(SIZE - 4, SIZE / 2)[0],
            p.mask.get_pixel(4, SIZE / 2)[0],
        ));
    }
    assert!(flips.len() >= 2, "no horizontal flips seen: {flips:?}");
    let src = anodiff::eval::sources::fewshot::FewShotReal::new(&ctx).unwrap();
    assert_eq!(
        src.len(),
        3,
        "the empty-mask training defect should be skipped"
    );
}

#[test]
fn fewshot_real_errors_without_training_defects() {
    let ctx = ctx_with(empty_split(&temp_dir("nodefects")), vec![]);
    let e = from_spec("fewshot-real", &ctx)
        .err()
        .expect("must fail")
        .to_string();
    println!("{e}");
    assert!(e.contains("no training defects"), "{e}");
}

#[test]
fn synthetic_sources_error_without_good_images() {
    let ctx = ctx_with(empty_split(&temp_dir("nogood")), vec![]);
    for spec in ["cutpaste", "cutpaste-scar", "draem"] {
        let mut s = from_spec(spec, &ctx).unwrap();
        let e = s
            .sample(&mut StdRng::seed_from_u64(0))
            .expect_err("must fail")
            .to_string();
        assert!(e.contains("defect-free"), "{spec}: {e}");
    }
}

#[test]
fn dir_source_resizes_and_binarises() {
    let root = temp_dir("dirok");
    write_dir_pair(&root, "a", "png", (64, 20), (64, 20));
    write_dir_pair(&root, "b", "jpg", (20, 64), (20, 64));
    std::fs::write(root.join("image/notes.txt"), "ignored").unwrap();
    let ctx = ctx_with(empty_split(&root), vec![]);
    let pairs = draw(&format!("dir:{}", root.display()), &ctx, 1, 20);
    for p in &pairs {
        assert_eq!(p.image.dimensions(), (SIZE, SIZE));
        let n = p.mask.iter().filter(|&&v| v == 255).count();
        // Half of every mask (the left or right half after flips) is set.
        assert!(
            n.abs_diff((SIZE * SIZE / 2) as usize) <= SIZE as usize,
            "mask area {n}"
        );
    }
}

#[test]
fn dir_source_error_cases() {
    let ctx = ctx_with(empty_split(&temp_dir("dirctx")), vec![]);
    let err = |root: &Path| {
        let e = from_spec(&format!("dir:{}", root.display()), &ctx)
            .err()
            .expect("must fail")
            .to_string();
        println!("{e}");
        e
    };
    // Missing image/ and missing mask/.
    let r = temp_dir("dir-noimage");
    std::fs::create_dir_all(r.join("mask")).unwrap();
    assert!(err(&r).contains(&r.join("image").display().to_string()));
    let r = temp_dir("dir-nomask");
    std::fs::create_dir_all(r.join("image")).unwrap();
    assert!(err(&r).contains(&r.join("mask").display().to_string()));
    // Empty folder.
    let r = temp_dir("dir-empty");
    std::fs::create_dir_all(r.join("image")).unwrap();
    std::fs::create_dir_all(r.join("mask")).unwrap();
    assert!(err(&r).contains("no image/mask pairs"));
    // Image without mask.
    let r = temp_dir("dir-orphanimage");
    write_dir_pair(&r, "a", "png", (8, 8), (8, 8));
    noise_image(8, 8, 1).save(r.join("image/b.jpg")).unwrap();
    let e = err(&r);
    assert!(e.contains("b.jpg") && e.contains("has no mask"), "{e}");
    // Mask without image.
    let r = temp_dir("dir-orphanmask");
    write_dir_pair(&r, "a", "png", (8, 8), (8, 8));
    GrayImage::new(8, 8).save(r.join("mask/c.png")).unwrap();
    let e = err(&r);
    assert!(e.contains("c.png") && e.contains("has no image"), "{e}");
    // Size mismatch.
    let r = temp_dir("dir-size");
    write_dir_pair(&r, "a", "png", (8, 8), (8, 9));
    let e = err(&r);
    assert!(e.contains("a.png") && e.contains("8x9"), "{e}");
    // Missing folder altogether.
    let e = err(&r.join("nope"));
    assert!(e.contains("missing"), "{e}");
}

#[test]
fn unknown_spec_lists_valid_ones() {
    let ctx = ctx_with(empty_split(&temp_dir("unknown")), vec![]);
    for bad in ["cut-paste", "dir:", ""] {
        let e = from_spec(bad, &ctx).err().expect("must fail").to_string();
        assert!(e.contains("cutpaste-scar") && e.contains("dir:PATH"), "{e}");
    }
}

#[test]
fn perlin_noise_range_and_mask_coverage() {
    let mut rng = StdRng::seed_from_u64(0);
    let n = perlin_noise(64, 64, (4, 2), 30.0, &mut rng);
    let (lo, hi) = n
        .iter()
        .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
    println!("perlin range [{lo:.3}, {hi:.3}]");
    assert!(lo >= -1.001 && hi <= 1.001 && hi - lo > 0.5);
    let mut cover = 0.0;
    let mut empty = 0;
    for _ in 0..200 {
        let m = perlin_mask(64, &mut rng);
        let f = m.iter().filter(|&&v| v == 255).count() as f64 / (64.0 * 64.0);
        cover += f / 200.0;
        empty += (f == 0.0) as usize;
    }
    println!(
        "perlin mask: mean coverage {:.1} %, {empty}/200 empty",
        100.0 * cover
    );
    assert!((0.03..0.5).contains(&cover));
    let a = perlin_mask(64, &mut StdRng::seed_from_u64(1));
    assert_eq!(a, perlin_mask(64, &mut StdRng::seed_from_u64(1)));
}

#[test]
fn preview_grid_layout() {
    let (ctx, _) = full_ctx("preview");
    let mut src = from_spec("cutpaste", &ctx).unwrap();
    let g = preview_grid(src.as_mut(), 10, 0).unwrap();
    assert_eq!(g.dimensions(), (8 * (SIZE + 2), 2 * (2 * (SIZE + 2) + 4)));
    // The overlay row is red-tinted somewhere.
    assert!(g.pixels().any(|p| p[0] > 150 && p[1] < 110 && p[2] < 110));
}

#[test]
fn real_mtd_previews_and_rates() {
    use anodiff::data::mvtec::{MvtecDataset, OnBadFile};
    let Some(root) = shared_dataset("mtd") else {
        return;
    };
    let size = 128;
    let (ds, _) = MvtecDataset::open(&root, OnBadFile::Skip).unwrap();
    let split = SplitManifest::few_shot(&ds).unwrap();
    let good = load_square(&split.train_good[..64], size, |e| split.load_image(e)).unwrap();
    let mut ctx = SourceContext {
        split: Arc::new(split),
        good: Arc::new(good),
        size,
    };
    let out = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../out"));
    std::fs::create_dir_all(&out).unwrap();
    // A dir: source made from draem pairs, to preview the folder format end to end.
    let gen = temp_dir("mtd-dir");
    std::fs::create_dir_all(gen.join("image")).unwrap();
    std::fs::create_dir_all(gen.join("mask")).unwrap();
    for (i, p) in draw("draem", &ctx, 99, 16).iter().enumerate() {
        p.image.save(gen.join(format!("image/{i:03}.png"))).unwrap();
        p.mask.save(gen.join(format!("mask/{i:03}.png"))).unwrap();
    }
    let dir = format!("dir:{}", gen.display());
    for spec in [
        "fewshot-real",
        "cutpaste",
        "cutpaste-scar",
        "draem",
        dir.as_str(),
    ] {
        let t = std::time::Instant::now();
        let mut src = from_spec(spec, &ctx).unwrap();
        let built = t.elapsed().as_secs_f64();
        let mut rng = StdRng::seed_from_u64(0);
        let n = 300;
        let t = std::time::Instant::now();
        for _ in 0..n {
            let p = src.sample(&mut rng).unwrap();
            assert_eq!(p.image.dimensions(), (size, size));
        }
        let rate = n as f64 / t.elapsed().as_secs_f64();
        let label = if spec.starts_with("dir:") {
            "dir"
        } else {
            spec
        };
        let grid = preview_grid(src.as_mut(), 16, 1).unwrap();
        let path = out.join(format!("preview_{label}.png"));
        grid.save(&path).unwrap();
        println!(
            "{label}: built in {built:.2} s, {rate:.0} pairs/s at {size}px, preview {}",
            path.display()
        );
    }
    ctx.size = 1;
    assert!(from_spec("cutpaste", &ctx).is_err());
}
