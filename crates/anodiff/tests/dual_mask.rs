//! Masks from generated part images, on hand-made part images: a grey image with a blob gives the
//! blob, noise specks go, Otsu splits a bimodal histogram between the modes, and failed pairs
//! (empty, not flat, too faint, area out of range) are rejected with the right reason, and the judge
//! skips the edge ring the extractor skips.

mod common;

use anodiff::data::mask_ops::{otsu, BinaryMask};
use anodiff::dual::mask::{
    defect_contrast, judge, part_image, real_part_contrast, AreaRange, DistanceMask,
    DistanceMaskOptions, MaskExtractor, Reason, RejectOptions, Threshold, Verdict, PART_FILL,
};
use image::{GrayImage, Luma, Rgb, RgbImage};
use rand::{Rng, SeedableRng};

const GREY: Rgb<u8> = Rgb([128, 128, 128]);

/// A 96×80 part image: mid-grey with a filled disk (centre (40, 36), radius 12) of `colour`.
fn blob_part(colour: [u8; 3]) -> (RgbImage, GrayImage) {
    let inside = |x: u32, y: u32| {
        let (dx, dy) = (x as f32 + 0.5 - 40.0, y as f32 + 0.5 - 36.0);
        dx * dx + dy * dy <= 144.0
    };
    let img = RgbImage::from_fn(96, 80, |x, y| if inside(x, y) { Rgb(colour) } else { GREY });
    let truth = GrayImage::from_fn(96, 80, |x, y| Luma([if inside(x, y) { 255 } else { 0 }]));
    (img, truth)
}

fn iou(a: &GrayImage, b: &GrayImage) -> f64 {
    BinaryMask::from_gray(a, 128)
        .iou(&BinaryMask::from_gray(b, 128))
        .unwrap()
}

#[test]
fn blob_on_grey_gives_the_blob() {
    for colour in [[30, 30, 30], [220, 60, 40], [170, 170, 170]] {
        let (img, truth) = blob_part(colour);
        let m = DistanceMask::default().extract(&img).unwrap();
        assert_eq!(m.dimensions(), img.dimensions());
        let v = iou(&m, &truth);
        assert!(v >= 0.95, "{colour:?}: IoU {v:.4}");
    }
}

#[test]
fn specks_are_removed_and_noise_ignored() {
    let (mut img, truth) = blob_part([40, 40, 40]);
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    // Sampling noise on the grey (±4 levels) and isolated dark specks away from the blob.
    for p in img.pixels_mut() {
        if *p == GREY {
            let n: i16 = rng.random_range(-4..=4);
            *p = Rgb([(128 + n) as u8; 3]);
        }
    }
    let specks = [(80u32, 10u32), (10, 70), (85, 60), (5, 5)];
    for &(x, y) in &specks {
        img.put_pixel(x, y, Rgb([0, 0, 0]));
    }
    let m = DistanceMask::default().extract(&img).unwrap();
    for &(x, y) in &specks {
        assert_eq!(m.get_pixel(x, y)[0], 0, "speck at ({x}, {y}) kept");
    }
    let v = iou(&m, &truth);
    assert!(v >= 0.95, "IoU {v:.4}");
    // Without the component filter and smoothing, the specks would be in the mask.
    let raw = DistanceMask::new(DistanceMaskOptions {
        sigma: 0.0,
        min_component: 1,
        ..Default::default()
    })
    .extract(&img)
    .unwrap();
    assert!(specks.iter().all(|&(x, y)| raw.get_pixel(x, y)[0] == 255));
}

#[test]
fn otsu_picks_a_threshold_between_modes() {
    // Two noisy modes around 20 and 110, unequal sizes.
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let mut v: Vec<f32> = (0..3000)
        .map(|_| 20.0 + rng.random_range(-8.0..8.0))
        .collect();
    v.extend((0..500).map(|_| 110.0 + rng.random_range(-15.0..15.0)));
    let o = otsu(&v).unwrap();
    assert!(o.threshold > 28.0 && o.threshold < 95.0, "{o:?}");
    // Through the extractor: half the image 20 levels off grey, a blob 100 levels off.
    let img = RgbImage::from_fn(64, 64, |x, y| {
        let d = (x as i32 - 40).pow(2) + (y as i32 - 32).pow(2);
        if d < 64 {
            Rgb([28, 28, 28])
        } else if x < 32 {
            Rgb([148, 148, 148])
        } else {
            GREY
        }
    });
    let e = DistanceMask::default().extract_detailed(&img).unwrap();
    assert!(e.threshold > 20.0 && e.threshold < 100.0, "{}", e.threshold);
    assert_eq!(e.mask.get_pixel(40, 32)[0], 255);
    assert_eq!(e.mask.get_pixel(10, 32)[0], 0);
}

#[test]
fn fixed_threshold_and_flat_images() {
    let (img, truth) = blob_part([100, 100, 100]); // 28 levels off grey
    let fixed = |t| {
        DistanceMask::new(DistanceMaskOptions {
            threshold: Threshold::Fixed(t),
            ..Default::default()
        })
        .extract(&img)
        .unwrap()
    };
    assert!(iou(&fixed(14.0), &truth) >= 0.95);
    assert!(fixed(40.0).iter().all(|&v| v == 0));
    // A flat grey part: Otsu has nothing to split, the floor keeps the mask empty.
    let flat = RgbImage::from_pixel(32, 32, GREY);
    let m = DistanceMask::default().extract(&flat).unwrap();
    assert!(m.iter().all(|&v| v == 0));
    assert_eq!(
        judge(&flat, &m, &RejectOptions::default()).unwrap(),
        Verdict::Rejected(Reason::EmptyMask)
    );
}

#[test]
fn judge_accepts_good_and_rejects_failed_pairs() {
    let (img, _) = blob_part([30, 30, 30]);
    let m = DistanceMask::default().extract(&img).unwrap();
    let opts = RejectOptions::default();
    assert_eq!(judge(&img, &m, &opts).unwrap(), Verdict::Accepted);

    // Not flat: the "outside" carries image content (a gradient), the blob is still found.
    let busy = RgbImage::from_fn(96, 80, |x, y| {
        let p = *img.get_pixel(x, y);
        if p == GREY {
            Rgb([(60 + x) as u8, (90 + y / 2) as u8, 128])
        } else {
            p
        }
    });
    let bm = DistanceMask::default().extract(&busy).unwrap();
    match judge(&busy, &bm, &opts).unwrap() {
        Verdict::Rejected(Reason::PartNotFlat {
            outside_mean_distance,
        }) => assert!(outside_mean_distance > 6.0),
        v => panic!("expected PartNotFlat, got {v:?}"),
    }

    // Area range from training masks: 1 % and 4 % of the image, tolerance 2 → 0.5–8 %.
    let train = |share: f64| {
        GrayImage::from_fn(100, 100, |x, y| {
            Luma([if ((y * 100 + x) as f64) < share * 10_000.0 {
                255
            } else {
                0
            }])
        })
    };
    let r =
        AreaRange::from_training_masks(&[train(0.01), train(0.04), GrayImage::new(100, 100)], 2.0)
            .unwrap();
    assert!(
        (r.min - 0.005).abs() < 1e-12 && (r.max - 0.08).abs() < 1e-12,
        "{r:?}"
    );
    let area = m.iter().filter(|&&v| v == 255).count() as f64 / m.len() as f64; // ~5.9 %
    let with = |r: AreaRange| RejectOptions {
        area: Some(r),
        ..Default::default()
    };
    assert_eq!(judge(&img, &m, &with(r)).unwrap(), Verdict::Accepted);
    let narrow = AreaRange::from_areas(&[0.001, 0.002], 1.5).unwrap();
    match judge(&img, &m, &with(narrow)).unwrap() {
        Verdict::Rejected(Reason::AreaOutOfRange { area: a, min, max }) => {
            assert!((a - area).abs() < 1e-12 && min < max && a > max)
        }
        v => panic!("expected AreaOutOfRange, got {v:?}"),
    }
    assert!(AreaRange::from_areas(&[0.0], 2.0).is_err());
    assert!(AreaRange::from_areas(&[0.1], 0.5).is_err());
    assert!(judge(&img, &GrayImage::new(3, 3), &opts).is_err());
    assert!(Reason::EmptyMask.to_string().contains("empty"));
}

#[test]
fn an_off_grey_frame_at_the_edge_stays_out_of_the_mask() {
    // What small pixel-space UNets draw: the blob, plus the outermost ring 60 levels off grey.
    let (mut img, truth) = blob_part([30, 30, 30]);
    let (w, h) = img.dimensions();
    for y in 0..h {
        for x in 0..w {
            if x == 0 || y == 0 || x == w - 1 || y == h - 1 {
                img.put_pixel(x, y, Rgb([188, 188, 188]));
            }
        }
    }
    let m = DistanceMask::default().extract(&img).unwrap();
    let v = iou(&m, &truth);
    assert!(v >= 0.95, "IoU {v:.4} with the frame");
    // Without the border rule the frame is a long component and enters the mask.
    let framed = DistanceMask::new(DistanceMaskOptions {
        border: 0,
        ..Default::default()
    })
    .extract(&img)
    .unwrap();
    assert_eq!(framed.get_pixel(0, 40)[0], 255);
    assert!(iou(&framed, &truth) < 0.9);
}

#[test]
fn the_judge_skips_the_edge_ring_the_extractor_skips() {
    // A good part (blob on grey, 4 levels of offset noise) whose outermost ring is white: the
    // padding artefact of small UNets. The extractor leaves the ring out of the mask, so the judge
    // must not reject the pair for it; counted, the ring alone lifts the mean distance above 6.
    let (mut img, truth) = blob_part([30, 30, 30]);
    let (w, h) = img.dimensions();
    for y in 0..h {
        for x in 0..w {
            if x == 0 || y == 0 || x == w - 1 || y == h - 1 {
                img.put_pixel(x, y, Rgb([255, 255, 255]));
            } else if *img.get_pixel(x, y) == GREY {
                img.put_pixel(x, y, Rgb([132, 132, 132]));
            }
        }
    }
    let m = DistanceMask::default().extract(&img).unwrap();
    assert!(iou(&m, &truth) >= 0.95);
    let opts = RejectOptions::default();
    assert_eq!(opts.border, DistanceMaskOptions::default().border);
    assert_eq!(judge(&img, &m, &opts).unwrap(), Verdict::Accepted);
    let counted = RejectOptions { border: 0, ..opts };
    match judge(&img, &m, &counted).unwrap() {
        Verdict::Rejected(Reason::PartNotFlat {
            outside_mean_distance,
        }) => assert!(outside_mean_distance > 6.0, "{outside_mean_distance}"),
        v => panic!("expected PartNotFlat with the ring counted, got {v:?}"),
    }
}

#[test]
fn a_defect_far_fainter_than_the_real_ones_is_rejected() {
    // A blob 22.5 levels from the fill: found by the extractor (its floor is 12), but fainter
    // than a 30-level minimum and brighter than an 18-level one.
    let (img, truth) = blob_part([105, 105, 105]);
    let c = defect_contrast(&img, &truth, PART_FILL, 0.0).unwrap();
    assert!((c - 22.5).abs() < 1e-4, "{c}");
    // Smoothed as the extractor smooths, the disk's rim pixels lose a little.
    let smooth = defect_contrast(&img, &truth, PART_FILL, 1.0).unwrap();
    assert!(smooth < c && smooth > 0.9 * c, "{smooth}");
    let empty = GrayImage::new(96, 80);
    assert_eq!(defect_contrast(&img, &empty, PART_FILL, 1.0), None);
    let small = GrayImage::new(3, 3);
    assert_eq!(defect_contrast(&img, &small, PART_FILL, 1.0), None);
    let m = DistanceMask::default().extract(&img).unwrap();
    assert!(iou(&m, &truth) >= 0.95);
    let with = |min| RejectOptions {
        min_contrast: Some(min),
        ..Default::default()
    };
    match judge(&img, &m, &with(30.0)).unwrap() {
        Verdict::Rejected(r @ Reason::FaintDefect { contrast, min }) => {
            assert!(contrast < min && contrast > 15.0, "{contrast} vs {min}");
            assert!(r.to_string().contains("too faint"));
        }
        v => panic!("expected FaintDefect, got {v:?}"),
    }
    assert_eq!(judge(&img, &m, &with(18.0)).unwrap(), Verdict::Accepted);
    assert_eq!(
        judge(&img, &m, &RejectOptions::default()).unwrap(),
        Verdict::Accepted
    );
}

#[test]
fn real_defects_drawn_softer_still_pass_the_contrast_check() {
    // The contrast check must not reject what a good generator draws. Stand-in: the synthetic
    // categories' real defects as part images (`I ⊙ M` on mid-grey), blurred (σ 1) as a
    // generator's softer strokes, through the default extractor; the limit is half the median of
    // the sharp parts' contrast, measured as `dual-generate` measures the training defects.
    let root = common::temp_dir("dual_mask_contrast");
    let data = anodiff::data::synth::synth_dataset(
        &root,
        0,
        &anodiff::data::synth::SynthOptions {
            size: 64,
            train_good: 1,
            test_good: 1,
            per_defect: 12,
        },
    )
    .unwrap();
    let extractor = DistanceMask::default();
    let mut checked = 0;
    for cat in &data.categories {
        for defect in ["spot", "crack", "scratch", "missing"] {
            let dir = cat.join("test").join(defect);
            if !dir.is_dir() {
                continue;
            }
            let mut parts = Vec::new();
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                let stem = p.file_stem().unwrap().to_str().unwrap().to_string();
                let img = image::open(&p).unwrap().to_rgb8();
                let gt = cat
                    .join("ground_truth")
                    .join(defect)
                    .join(format!("{stem}_mask.png"));
                let m = image::open(gt).unwrap().to_luma8();
                let c = real_part_contrast(&img, &m, &extractor).unwrap().unwrap();
                parts.push((c, part_image(&img, &m, PART_FILL)));
            }
            let mut cs: Vec<f32> = parts.iter().map(|p| p.0).collect();
            cs.sort_by(f32::total_cmp);
            let opts = RejectOptions {
                min_contrast: Some(0.5 * cs[cs.len() / 2]),
                ..Default::default()
            };
            let mut faint = 0;
            for (_, part) in &parts {
                let soft = image::imageops::blur(part, 1.0);
                let m = extractor.extract(&soft).unwrap();
                if let Verdict::Rejected(Reason::FaintDefect { .. }) =
                    judge(&soft, &m, &opts).unwrap()
                {
                    faint += 1;
                }
            }
            println!(
                "{}/{defect}: {faint} of {} too faint",
                cat.display(),
                parts.len()
            );
            assert!(
                faint * 10 <= parts.len(),
                "{}/{defect}: {faint} of {} real defects, blurred, judged too faint",
                cat.display(),
                parts.len()
            );
            checked += 1;
        }
    }
    assert!(checked >= 4, "only {checked} defect types found");
    std::fs::remove_dir_all(&root).ok();
}
