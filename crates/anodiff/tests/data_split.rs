//! Few-shot split: counts, no overlap, determinism, manifest round trip and validation.

mod common;

use anodiff::data::mvtec::{MvtecDataset, OnBadFile};
use anodiff::data::split::{few_shot_train_count, SplitManifest};
use common::{shared_dataset, temp_dir};
use image::{GrayImage, Luma, Rgb, RgbImage};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn put(root: &Path, rel: &str, mask: bool) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    if mask {
        GrayImage::from_pixel(8, 8, Luma([255])).save(p).unwrap();
    } else {
        RgbImage::from_pixel(8, 8, Rgb([1, 2, 3])).save(p).unwrap();
    }
}

/// 4 train/good, 3 test/good, crack x7, dent x1, scratch x3 (files created in shuffled order).
fn dataset(name: &str) -> PathBuf {
    let r = temp_dir(name);
    for i in [3, 0, 2, 1] {
        put(&r, &format!("train/good/{i:03}.png"), false);
    }
    for i in 0..3 {
        put(&r, &format!("test/good/{i:03}.png"), false);
    }
    for (d, n) in [("crack", 7), ("dent", 1), ("scratch", 3)] {
        for i in (0..n).rev() {
            put(&r, &format!("test/{d}/{d}{i}.png"), false);
            put(&r, &format!("ground_truth/{d}/{d}{i}_mask.png"), true);
        }
    }
    r
}

#[test]
fn ceil_third() {
    let got: Vec<usize> = (0..8).map(few_shot_train_count).collect();
    assert_eq!(got, vec![0, 1, 1, 1, 2, 2, 2, 3]);
}

#[test]
fn counts_no_overlap_sorted() {
    let r = dataset("counts");
    let (ds, _) = MvtecDataset::open(&r, OnBadFile::Error).unwrap();
    let m = SplitManifest::few_shot(&ds).unwrap();
    assert_eq!(
        m.counts(),
        vec![
            ("crack".to_string(), 3, 4),
            ("dent".to_string(), 1, 0),
            ("scratch".to_string(), 1, 2)
        ]
    );
    assert_eq!(m.train_good.len(), 4);
    assert_eq!(m.eval_good.len(), 3);
    let crack = &m.defects["crack"];
    let train: Vec<&str> = crack.train.iter().map(|e| e.stem.as_str()).collect();
    assert_eq!(train, vec!["crack0", "crack1", "crack2"]);
    assert_eq!(crack.train[0].image, "test/crack/crack0.png");
    assert_eq!(
        crack.train[0].mask.as_deref(),
        Some("ground_truth/crack/crack0_mask.png")
    );
    let tr: BTreeSet<_> = m
        .defects
        .values()
        .flat_map(|d| &d.train)
        .chain(&m.train_good)
        .map(|e| e.image.clone())
        .collect();
    let ev: BTreeSet<_> = m
        .defects
        .values()
        .flat_map(|d| &d.test)
        .chain(&m.eval_good)
        .map(|e| e.image.clone())
        .collect();
    assert!(tr.is_disjoint(&ev));
    assert_eq!(tr.len() + ev.len(), 4 + 3 + 11);
    std::fs::remove_dir_all(&r).unwrap();
}

#[test]
fn deterministic_and_round_trips() {
    let r = dataset("roundtrip");
    let (ds, _) = MvtecDataset::open(&r, OnBadFile::Error).unwrap();
    let a = SplitManifest::few_shot(&ds).unwrap();
    let b = SplitManifest::few_shot(&MvtecDataset::open(&r, OnBadFile::Error).unwrap().0).unwrap();
    assert_eq!(a, b);
    let path = r.join("out/split.json");
    a.save(&path).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    b.save(&path).unwrap();
    assert_eq!(bytes, std::fs::read(&path).unwrap());
    let back = SplitManifest::load(&path).unwrap();
    assert_eq!(back, a);
    assert!(back.resolve(&back.eval_good[0].image).is_file());
    let crack0 = &back.defects["crack"].train[0];
    assert_eq!(back.load_image(crack0).unwrap().dimensions(), (8, 8));
    assert!(back.load_mask(crack0).unwrap().iter().all(|&v| v == 255));
    assert!(back
        .load_mask(&back.eval_good[0])
        .unwrap()
        .iter()
        .all(|&v| v == 0));
    // A moved dataset: resolve against the new place.
    let moved = r.with_extension("moved");
    let _ = std::fs::remove_dir_all(&moved);
    std::fs::rename(&r, &moved).unwrap();
    let mpath = moved.join("out/split.json");
    assert!(SplitManifest::load(&mpath).is_err());
    let at = SplitManifest::load_at(&mpath, &moved).unwrap();
    assert!(at.load_image(crack0).is_ok());
    std::fs::rename(&moved, &r).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(json["version"], 1);
    std::fs::remove_dir_all(&r).unwrap();
}

#[test]
fn load_rejects_missing_files_overlap_and_bad_version() {
    let r = dataset("invalid");
    let (ds, _) = MvtecDataset::open(&r, OnBadFile::Error).unwrap();
    let m = SplitManifest::few_shot(&ds).unwrap();
    let path = r.join("split.json");

    m.save(&path).unwrap();
    std::fs::remove_file(r.join("test/crack/crack5.png")).unwrap();
    let e = SplitManifest::load(&path).unwrap_err().to_string();
    assert!(
        e.contains("split.json") && e.contains("test/crack/crack5.png"),
        "{e}"
    );

    let mut overlap = m.clone();
    overlap.defects.get_mut("crack").unwrap().test.truncate(0);
    let first = overlap.defects["crack"].train[0].clone();
    overlap.eval_good.push(first);
    overlap.save(&path).unwrap();
    let e = SplitManifest::load(&path).unwrap_err().to_string();
    assert!(e.contains("crack0.png") && e.contains("both"), "{e}");

    let mut old = m.clone();
    old.version = 99;
    old.save(&path).unwrap();
    let e = SplitManifest::load(&path).unwrap_err().to_string();
    assert!(e.contains("version 99"), "{e}");

    std::fs::write(&path, "{").unwrap();
    assert!(SplitManifest::load(&path)
        .unwrap_err()
        .to_string()
        .contains("split.json"));
    let e = SplitManifest::load(&r.join("nope.json"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope.json"));
    std::fs::remove_dir_all(&r).unwrap();
}

#[test]
fn real_datasets_split() {
    for (name, expected) in [
        (
            "mtd",
            vec![
                ("blowhole", 39, 76),
                ("break", 29, 56),
                ("crack", 19, 38),
                ("fray", 11, 21),
                ("uneven", 35, 68),
            ],
        ),
        ("bsdata", vec![("pitting", 56, 111)]),
    ] {
        let Some(root) = shared_dataset(name) else {
            continue;
        };
        let (ds, _) = MvtecDataset::open(&root, OnBadFile::Error).unwrap();
        let m = SplitManifest::few_shot(&ds).unwrap();
        println!("{name}: {:?}, eval_good {}", m.counts(), m.eval_good.len());
        let want: Vec<(String, usize, usize)> = expected
            .into_iter()
            .map(|(d, a, b)| (d.to_string(), a, b))
            .collect();
        assert_eq!(m.counts(), want);
        m.validate().unwrap();
    }
}
