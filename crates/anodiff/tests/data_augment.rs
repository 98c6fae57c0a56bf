//! Augmentation keeps image and mask aligned, is seeded, and rejects impossible crops.

use anodiff::data::augment::{AugmentOptions, Augmenter};
use image::{GrayImage, Luma, Rgb, RgbImage};

/// A blocky random image and the mask "red channel >= 128" (so alignment is checkable).
fn pair(w: u32, h: u32) -> (RgbImage, GrayImage) {
    let mut s = 12345u32;
    let mut next = move || {
        s = s.wrapping_mul(1664525).wrapping_add(1013904223);
        (s >> 24) as u8
    };
    let cells: Vec<u8> = (0..(w / 4 + 1) * (h / 4 + 1)).map(|_| next()).collect();
    let img = RgbImage::from_fn(w, h, |x, y| {
        let v = cells[((y / 4) * (w / 4 + 1) + x / 4) as usize];
        Rgb([v, x as u8, y as u8])
    });
    let mask = GrayImage::from_fn(w, h, |x, y| {
        Luma([if img.get_pixel(x, y)[0] >= 128 {
            255
        } else {
            0
        }])
    });
    (img, mask)
}

fn thresholded(img: &RgbImage) -> GrayImage {
    GrayImage::from_fn(img.width(), img.height(), |x, y| {
        Luma([if img.get_pixel(x, y)[0] >= 128 {
            255
        } else {
            0
        }])
    })
}

#[test]
fn crop_and_flips_keep_mask_exactly_aligned() {
    let (img, mask) = pair(48, 40);
    let opts = AugmentOptions {
        resize: None,
        crop: Some((32, 24)),
        hflip: 0.5,
        vflip: 0.5,
    };
    let mut aug = Augmenter::new(opts, 7);
    let mut seen_flips = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let (a, m) = aug.apply(&img, Some(&mask)).unwrap();
        let m = m.unwrap();
        assert_eq!(a.dimensions(), (32, 24));
        assert_eq!(m, thresholded(&a));
        // The coordinate channels reveal the flips.
        let (x0, x1) = (a.get_pixel(0, 0)[1], a.get_pixel(31, 0)[1]);
        let (y0, y1) = (a.get_pixel(0, 0)[2], a.get_pixel(0, 23)[2]);
        seen_flips.insert((x0 > x1, y0 > y1));
    }
    assert_eq!(seen_flips.len(), 4, "all flip combinations should occur");
}

#[test]
fn resize_keeps_mask_binary_and_aligned() {
    let (img, mask) = pair(64, 64);
    let opts = AugmentOptions {
        resize: Some((32, 32)),
        crop: Some((24, 24)),
        hflip: 0.5,
        vflip: 0.5,
    };
    let mut aug = Augmenter::new(opts, 3);
    for _ in 0..10 {
        let (a, m) = aug.apply(&img, Some(&mask)).unwrap();
        let m = m.unwrap();
        assert!(m.iter().all(|&v| v == 0 || v == 255));
        // Bilinear vs nearest differ only at block edges: require >= 90% agreement.
        let agree = m
            .iter()
            .zip(thresholded(&a).iter())
            .filter(|(p, q)| p == q)
            .count();
        let frac = agree as f64 / m.len() as f64;
        println!("resize agreement {frac:.3}");
        assert!(frac >= 0.9, "agreement {frac}");
    }
}

#[test]
fn seeded_and_errors() {
    let (img, mask) = pair(40, 40);
    let opts = AugmentOptions {
        crop: Some((20, 20)),
        vflip: 0.5,
        ..Default::default()
    };
    let run = |seed| {
        let mut aug = Augmenter::new(opts.clone(), seed);
        (0..5)
            .map(|_| aug.apply(&img, Some(&mask)).unwrap().0)
            .collect::<Vec<_>>()
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
    let mut big = Augmenter::new(
        AugmentOptions {
            crop: Some((41, 10)),
            ..Default::default()
        },
        0,
    );
    assert!(big
        .apply(&img, None)
        .unwrap_err()
        .to_string()
        .contains("41x10"));
    let small = GrayImage::new(10, 10);
    assert!(Augmenter::new(AugmentOptions::default(), 0)
        .apply(&img, Some(&small))
        .is_err());
}
