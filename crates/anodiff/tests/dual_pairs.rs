//! DualAnoDiff pair data on the synthetic dataset: part rows are the image inside the mask and
//! exactly 0 outside, augmentation keeps mask and defect aligned (the synthetic mask is exactly
//! where the image differs from its defect-free rendering), DefectCrop windows hold the defect,
//! draws are reproducible, and bad input gives errors that name the problem.

mod common;

use common::shared_dataset;

use anodiff::data::foreground::{ClassicalForeground, ForegroundEstimator};
use anodiff::data::mvtec::{MvtecDataset, OnBadFile};
use anodiff::data::split::SplitManifest;
use anodiff::data::synth::{
    render_defect, seed_for, synth_dataset, Category, DefectKind, SynthOptions,
};
use anodiff::dual::pairs::{
    interleave, PairBatch, PairExample, PairOptions, PairSampler, PairSet, Sampling,
};
use anodiff::Result;
use candle_core::{Device, Tensor};
use image::{GrayImage, Luma, Rgb, RgbImage};
use std::path::{Path, PathBuf};

const SEED: u64 = 5;
const SIZE: u32 = 128;

/// Foreground = the left half of the image (known exactly, unlike an estimate).
struct LeftHalf;

impl ForegroundEstimator for LeftHalf {
    fn estimate(&self, image: &RgbImage, _: Option<&Path>) -> Result<GrayImage> {
        let w = image.width();
        Ok(GrayImage::from_fn(w, image.height(), |x, _| {
            Luma([if x < w / 2 { 255 } else { 0 }])
        }))
    }
    fn describe(&self) -> String {
        "left half".into()
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("anodiff-pairs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The synthetic dataset's capsule category and its few-shot split (6 defects per type → the
/// first 2 are training defects).
fn capsule(name: &str) -> (PathBuf, SplitManifest) {
    let root = temp_dir(name);
    let opts = SynthOptions {
        size: SIZE,
        train_good: 2,
        test_good: 1,
        per_defect: 6,
    };
    synth_dataset(&root.join("synth"), SEED, &opts).unwrap();
    let cat = root.join("synth").join("capsule");
    let (ds, _) = MvtecDataset::open(&cat, OnBadFile::Error).unwrap();
    let split = SplitManifest::few_shot(&ds).unwrap();
    (root, split)
}

/// The defect-free rendering under a synthetic defect image, from its file name.
fn good_under(kind: DefectKind, source: &Path) -> (RgbImage, RgbImage) {
    let k = Category::Capsule
        .defects()
        .iter()
        .position(|&d| d == kind)
        .unwrap();
    let i: usize = source
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let s = render_defect(
        Category::Capsule,
        kind,
        SIZE,
        seed_for(SEED, Category::Capsule, 10 + k as u64, i),
    );
    (s.good, s.image)
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn count(m: &GrayImage) -> usize {
    m.iter().filter(|&&v| v == 255).count()
}

#[test]
fn loads_only_the_training_defects() {
    let (root, split) = capsule("load");
    let (set, report) = PairSet::from_split(&split, "spot", &LeftHalf).unwrap();
    assert_eq!(set.len(), 2);
    assert_eq!(report.loaded, 2);
    assert!(report.empty_masks.is_empty());
    assert_eq!(report.foreground, "left half");
    let names: Vec<String> = set
        .examples()
        .iter()
        .map(|e| e.source.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["000.png", "001.png"]);
    for e in set.examples() {
        assert!(e.mask.iter().all(|&v| v == 0 || v == 255));
        assert!(count(&e.mask) > 0);
        assert_eq!(e.foreground.get_pixel(0, 0)[0], 255);
        // The image really is the defect rendering the split points at.
        assert_eq!(good_under(DefectKind::Spot, &e.source).1, e.image);
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn part_is_image_inside_mask_and_zero_outside() {
    let (root, split) = capsule("part");
    let (set, _) = PairSet::from_split(&split, "scratch", &LeftHalf).unwrap();
    for sampling in [
        Sampling::Resize {
            size: 64,
            margin: 8,
        },
        Sampling::DefectCrop {
            size: 48,
            scale: 1.0,
        },
    ] {
        let opts = PairOptions {
            sampling,
            ..Default::default()
        };
        let s = PairSampler::new(&set, opts).unwrap();
        let b = s.batch(&[0, 1, 0, 1], 11, &Device::Cpu).unwrap();
        let side = sampling.size() as usize;
        assert_eq!(b.whole.dims(), &[4, 3, side, side]);
        assert_eq!(b.part.dims(), &[4, 3, side, side]);
        assert_eq!(b.mask.dims(), &[4, 1, side, side]);
        assert_eq!(b.background.dims(), &[4, 3, side, side]);
        let (w, p, m) = (values(&b.whole), values(&b.part), values(&b.mask));
        let plane = side * side;
        let mut inside = 0;
        for n in 0..4 {
            for c in 0..3 {
                for i in 0..plane {
                    let k = (n * 3 + c) * plane + i;
                    let mv = m[n * plane + i];
                    if mv == 1.0 {
                        assert_eq!(p[k], w[k]);
                        inside += 1;
                    } else {
                        assert_eq!(mv, 0.0);
                        assert_eq!(p[k], 0.0);
                    }
                }
            }
        }
        assert!(inside > 0, "{sampling:?}: no defect pixel in the batch");
        assert!(w.iter().all(|v| (-1.0..=1.0).contains(v)));

        // Rows are interleaved whole, part, whole, part.
        let rows = b.interleaved().unwrap();
        assert_eq!(rows.dims(), &[8, 3, side, side]);
        for j in 0..4 {
            assert_eq!(
                values(&rows.get(2 * j).unwrap()),
                values(&b.whole.get(j).unwrap())
            );
            assert_eq!(
                values(&rows.get(2 * j + 1).unwrap()),
                values(&b.part.get(j).unwrap())
            );
        }
    }
    assert!(interleave(
        &Tensor::zeros((2, 3), candle_core::DType::F32, &Device::Cpu).unwrap(),
        &Tensor::zeros((3, 3), candle_core::DType::F32, &Device::Cpu).unwrap()
    )
    .is_err());
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn background_is_black_on_the_foreground() {
    let (root, split) = capsule("background");
    let (set, _) = PairSet::from_split(&split, "spot", &LeftHalf).unwrap();
    let s = PairSampler::new(&set, PairOptions::default()).unwrap();
    let draws: Vec<_> = (0..6).map(|k| s.draw(k % 2, k as u64).unwrap()).collect();
    let b = PairBatch::from_draws(&draws, &Device::Cpu).unwrap();
    let (w, bg) = (values(&b.whole), values(&b.background));
    let plane = 64 * 64;
    let mut black = 0;
    for (n, d) in draws.iter().enumerate() {
        for c in 0..3 {
            for (i, f) in d.foreground.iter().enumerate() {
                let k = (n * 3 + c) * plane + i;
                if *f == 255 {
                    assert_eq!(bg[k], -1.0);
                    black += 1;
                } else {
                    assert_eq!(bg[k], w[k]);
                }
            }
        }
    }
    assert!(black > 0 && black < 6 * 3 * plane);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn augmentation_keeps_mask_on_the_defect() {
    let (root, split) = capsule("align");
    for (kind, name) in [
        (DefectKind::Scratch, "scratch"),
        (DefectKind::Missing, "missing"),
    ] {
        let (set, _) = PairSet::from_split(&split, name, &LeftHalf).unwrap();
        // Both geometries without resampling, so "differs from the good rendering" is exact.
        for sampling in [
            Sampling::Resize {
                size: SIZE,
                margin: 0,
            },
            Sampling::DefectCrop {
                size: 64,
                scale: 1.0,
            },
        ] {
            let s = PairSampler::new(
                &set,
                PairOptions {
                    sampling,
                    ..Default::default()
                },
            )
            .unwrap();
            let (mut hflips, mut vflips) = (0, 0);
            for seed in 0..16u64 {
                for e in 0..s.len() {
                    let d = s.draw(e, seed).unwrap();
                    let (good, _) = good_under(kind, s.source(e).unwrap());
                    let good = s.transform_like(e, seed, &good).unwrap();
                    let diff = GrayImage::from_fn(d.image.width(), d.image.height(), |x, y| {
                        Luma([if d.image.get_pixel(x, y) != good.get_pixel(x, y) {
                            255
                        } else {
                            0
                        }])
                    });
                    assert_eq!(diff, d.mask, "{name} {sampling:?} example {e} seed {seed}");
                    hflips += d.params.hflip as usize;
                    vflips += d.params.vflip as usize;
                }
            }
            // Flips at p = 0.5 both happen and are both skipped.
            let n = 16 * s.len();
            assert!(hflips > 0 && hflips < n && vflips > 0 && vflips < n);
        }
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn defect_crop_windows_hold_the_defect() {
    let (root, split) = capsule("crop");
    let (set, _) = PairSet::from_split(&split, "spot", &LeftHalf).unwrap();
    let s = PairSampler::new(
        &set,
        PairOptions {
            sampling: Sampling::DefectCrop {
                size: 40,
                scale: 1.0,
            },
            ..Default::default()
        },
    )
    .unwrap();
    let mut corners = std::collections::BTreeSet::new();
    for e in 0..s.len() {
        let whole = count(&set.examples()[e].mask);
        for seed in 0..40u64 {
            let d = s.draw(e, seed).unwrap();
            assert_eq!(d.image.dimensions(), (40, 40));
            // Spots are smaller than the window: the whole defect is inside every window.
            assert_eq!(count(&d.mask), whole, "example {e} seed {seed}");
            corners.insert((e, d.params.crop));
        }
    }
    assert!(
        corners.len() > 2 * s.len(),
        "windows should vary: {corners:?}"
    );

    // A defect wider than the window: every window still holds defect pixels.
    let image = RgbImage::from_fn(200, 100, |x, y| Rgb([(x % 256) as u8, y as u8, 7]));
    let mask = GrayImage::from_fn(200, 100, |x, y| {
        Luma([if (20..180).contains(&x) && (49..52).contains(&y) {
            255
        } else {
            0
        }])
    });
    let big = PairSet::from_examples(
        "bar",
        vec![PairExample {
            source: "bar.png".into(),
            image,
            mask,
            foreground: GrayImage::from_pixel(200, 100, Luma([255])),
        }],
    )
    .unwrap();
    for scale in [1.0f32, 0.5] {
        let s = PairSampler::new(
            &big,
            PairOptions {
                sampling: Sampling::DefectCrop { size: 32, scale },
                ..Default::default()
            },
        )
        .unwrap();
        for seed in 0..50 {
            let d = s.draw(0, seed).unwrap();
            assert!(count(&d.mask) > 0, "scale {scale} seed {seed}");
        }
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn draws_are_reproducible() {
    let (root, split) = capsule("repro");
    let (set, _) = PairSet::from_split(&split, "crack", &LeftHalf).unwrap();
    let s = PairSampler::new(&set, PairOptions::default()).unwrap();
    let a = s.draw(1, 42).unwrap();
    let b = s.draw(1, 42).unwrap();
    assert_eq!((a.image, a.mask, a.params), (b.image, b.mask, b.params));
    let distinct: std::collections::BTreeSet<_> = (0..10)
        .map(|seed| format!("{:?}", s.draw(1, seed).unwrap().params))
        .collect();
    assert!(distinct.len() > 3);
    let x = s.batch(&[0, 1], 9, &Device::Cpu).unwrap();
    let y = s.batch(&[0, 1], 9, &Device::Cpu).unwrap();
    assert_eq!(values(&x.whole), values(&y.whole));
    assert!(s.draw(s.len(), 0).is_err());
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn vanishing_defects_are_dropped_or_refused() {
    let ex = |name: &str, defect: u32| {
        let mut mask = GrayImage::new(256, 256);
        for y in 100..100 + defect {
            for x in 100..100 + defect {
                mask.put_pixel(x, y, Luma([255]));
            }
        }
        PairExample {
            source: name.into(),
            image: RgbImage::from_pixel(256, 256, Rgb([9, 9, 9])),
            mask,
            foreground: GrayImage::new(256, 256),
        }
    };
    let opts = PairOptions {
        sampling: Sampling::Resize {
            size: 16,
            margin: 0,
        },
        ..Default::default()
    };
    // A 1-pixel pit vanishes at 16 px, a 64-pixel square does not.
    let set = PairSet::from_examples("t", vec![ex("pit.png", 1), ex("big.png", 64)]).unwrap();
    let s = PairSampler::new(&set, opts).unwrap();
    assert_eq!(s.len(), 1);
    assert_eq!(s.dropped(), [PathBuf::from("pit.png")]);
    let only = PairSet::from_examples("t", vec![ex("pit.png", 1)]).unwrap();
    let e = PairSampler::new(&only, opts).unwrap_err().to_string();
    assert!(e.contains("vanishes"), "{e}");
    let e = PairSet::from_examples("t", vec![ex("none.png", 0)])
        .unwrap_err()
        .to_string();
    assert!(e.contains("none.png") && e.contains("empty"), "{e}");
    // DefectCrop at native scale keeps it.
    assert_eq!(
        PairSampler::new(&only, PairOptions::default())
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn bad_split_input_is_named() {
    let (root, mut split) = capsule("bad");
    let e = PairSet::from_split(&split, "dent", &LeftHalf)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("dent") && e.contains("crack, missing, scratch, spot"),
        "{e}"
    );

    // Mis-sized mask (written after the split was made, as a stale manifest would see it).
    let gt = split.dataset.join("ground_truth/spot");
    GrayImage::new(64, 64)
        .save(gt.join("000_mask.png"))
        .unwrap();
    let e = PairSet::from_split(&split, "spot", &LeftHalf)
        .unwrap_err()
        .to_string();
    assert!(e.contains("000_mask.png") && e.contains("64x64"), "{e}");

    // Empty masks: skipped and counted; all empty is an error.
    GrayImage::new(SIZE, SIZE)
        .save(gt.join("000_mask.png"))
        .unwrap();
    let (set, report) = PairSet::from_split(&split, "spot", &LeftHalf).unwrap();
    assert_eq!(set.len(), 1);
    assert_eq!(report.empty_masks.len(), 1);
    assert!(report.empty_masks[0].ends_with("test/spot/000.png"));
    GrayImage::new(SIZE, SIZE)
        .save(gt.join("001_mask.png"))
        .unwrap();
    let e = PairSet::from_split(&split, "spot", &LeftHalf)
        .unwrap_err()
        .to_string();
    assert!(e.contains("empty mask"), "{e}");

    // A defect type without training images.
    split.defects.get_mut("crack").unwrap().train.clear();
    let e = PairSet::from_split(&split, "crack", &LeftHalf)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`crack` has no training images"), "{e}");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn folders_match_masks_by_stem() {
    let d = temp_dir("folders");
    let (imgs, masks) = (d.join("images"), d.join("masks"));
    std::fs::create_dir_all(&imgs).unwrap();
    std::fs::create_dir_all(&masks).unwrap();
    let img = RgbImage::from_fn(80, 60, |x, y| Rgb([x as u8, y as u8, 100]));
    let m = GrayImage::from_fn(80, 60, |x, y| {
        Luma([if (30..40).contains(&x) && (20..30).contains(&y) {
            255
        } else {
            0
        }])
    });
    img.save(imgs.join("a.png")).unwrap();
    img.save(imgs.join("b.png")).unwrap();
    m.save(masks.join("a.png")).unwrap();
    m.save(masks.join("b_mask.png")).unwrap();
    std::fs::write(imgs.join("notes.txt"), "not an image").unwrap();
    let (set, report) =
        PairSet::from_folders(&imgs, &masks, &ClassicalForeground::default()).unwrap();
    assert_eq!((set.len(), report.loaded), (2, 2));
    assert_eq!(set.examples()[1].mask, m);
    assert_eq!(
        report.whole_foreground, 2,
        "a gradient has no distinct background"
    );

    img.save(imgs.join("c.png")).unwrap();
    let e = PairSet::from_folders(&imgs, &masks, &LeftHalf)
        .unwrap_err()
        .to_string();
    assert!(e.contains("c.png") && e.contains("c_mask.png"), "{e}");
    GrayImage::new(10, 10).save(masks.join("c.png")).unwrap();
    let e = PairSet::from_folders(&imgs, &masks, &LeftHalf)
        .unwrap_err()
        .to_string();
    assert!(e.contains("masks/c.png") && e.contains("10x10"), "{e}");
    let e = PairSet::from_folders(&d.join("none"), &masks, &LeftHalf)
        .unwrap_err()
        .to_string();
    assert!(e.contains("none"), "{e}");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn real_defects_survive_defect_crops() {
    // The few-pixel real defects (data README): squashed to 64 px many vanish, a native-scale
    // 64 px window keeps every one.
    for (name, defect) in [
        ("mtd", "blowhole"),
        ("mtd", "uneven"),
        ("bsdata", "pitting"),
    ] {
        let Some(root) = shared_dataset(name) else {
            continue;
        };
        let (ds, _) = MvtecDataset::open(&root, OnBadFile::Error).unwrap();
        let split = SplitManifest::few_shot(&ds).unwrap();
        let (set, report) =
            PairSet::from_split(&split, defect, &ClassicalForeground::default()).unwrap();
        assert_eq!(
            set.len() + report.empty_masks.len(),
            split.defects[defect].train.len()
        );
        let squashed = PairSampler::new(
            &set,
            PairOptions {
                sampling: Sampling::Resize {
                    size: 64,
                    margin: 0,
                },
                ..Default::default()
            },
        );
        let crops = PairSampler::new(&set, PairOptions::default()).unwrap();
        println!(
            "{name}/{defect}: {} training defects, {} empty masks skipped, {} whole-image \
             foregrounds; vanish when squashed to 64 px: {}; at native-scale 64 px crops: {}",
            set.len(),
            report.empty_masks.len(),
            report.whole_foreground,
            squashed.map_or(set.len(), |s| s.dropped().len()),
            crops.dropped().len()
        );
        assert!(crops.dropped().is_empty());
        for e in 0..crops.len() {
            assert!(count(&crops.draw(e, e as u64).unwrap().mask) > 0);
        }
    }
}
