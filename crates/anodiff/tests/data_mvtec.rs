//! MVTec-layout reader: every bad case on small generated folders, plus the real datasets in
//! ../shared/data (skipped with a message when absent).

mod common;

use anodiff::data::mvtec::{Check, IssueKind, MvtecDataset, OnBadFile};
use common::{shared_dataset, temp_dir};
use image::{GrayImage, Luma, Rgb, RgbImage};
use std::path::{Path, PathBuf};

fn rgb(path: &Path, w: u32, h: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    RgbImage::from_fn(w, h, |x, y| Rgb([x as u8 * 9, y as u8 * 7, 100]))
        .save(path)
        .unwrap();
}

fn mask(path: &Path, w: u32, h: u32, value: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    GrayImage::from_fn(w, h, |x, _| Luma([if x < w / 2 { value } else { 0 }]))
        .save(path)
        .unwrap();
}

/// A clean dataset: 3 train/good (one greyscale JPEG), 2 test/good, 3 crack + masks.
fn clean(name: &str) -> PathBuf {
    let r = temp_dir(name);
    rgb(&r.join("train/good/a.png"), 16, 12);
    rgb(&r.join("train/good/b.bmp"), 16, 12);
    std::fs::create_dir_all(r.join("train/good")).unwrap();
    GrayImage::from_fn(16, 12, |x, _| Luma([x as u8 * 10]))
        .save(r.join("train/good/c.jpg"))
        .unwrap();
    rgb(&r.join("test/good/g1.png"), 16, 12);
    rgb(&r.join("test/good/g2.png"), 16, 12);
    for s in ["c1", "c2", "c3"] {
        rgb(&r.join(format!("test/crack/{s}.png")), 20, 10);
        mask(
            &r.join(format!("ground_truth/crack/{s}_mask.png")),
            20,
            10,
            255,
        );
    }
    r
}

fn has(report: &anodiff::data::mvtec::ValidationReport, kind: IssueKind, file: &str) -> bool {
    report
        .errors
        .iter()
        .chain(&report.warnings)
        .any(|i| i.kind == kind && i.to_string().contains(file))
}

#[test]
fn clean_dataset_indexes_and_loads() {
    let r = clean("clean");
    let (ds, rep) = MvtecDataset::open_with(&r, OnBadFile::Error, Check::Full).unwrap();
    assert!(rep.is_clean(), "{rep:?}");
    assert_eq!(ds.train_good.len(), 3);
    assert_eq!(ds.test_good.len(), 2);
    assert_eq!(ds.defect_names(), vec!["crack"]);
    let crack = ds.defect("crack").unwrap();
    assert_eq!(crack.samples.len(), 3);
    assert_eq!((crack.samples[0].width, crack.samples[0].height), (20, 10));
    // Greyscale JPEG loads as 3 equal channels.
    let c = ds.train_good.iter().find(|s| s.stem == "c").unwrap();
    let img = MvtecDataset::load_image(c).unwrap();
    assert_eq!(img.dimensions(), (16, 12));
    assert!(img.pixels().all(|p| p[0] == p[1] && p[1] == p[2]));
    let m = MvtecDataset::load_mask(&crack.samples[0]).unwrap();
    assert_eq!(m.iter().filter(|&&v| v == 255).count(), 10 * 10);
    let good_mask = MvtecDataset::load_mask(&ds.test_good[0]).unwrap();
    assert!(good_mask.iter().all(|&v| v == 0));
    std::fs::remove_dir_all(&r).unwrap();
}

#[test]
fn missing_mask_is_an_error_or_skipped() {
    let r = clean("missing");
    std::fs::remove_file(r.join("ground_truth/crack/c2_mask.png")).unwrap();
    let err = MvtecDataset::open(&r, OnBadFile::Error)
        .unwrap_err()
        .to_string();
    println!("{err}");
    assert!(
        err.contains("c2.png") && err.contains("c2_mask.png"),
        "{err}"
    );
    let (ds, rep) = MvtecDataset::open(&r, OnBadFile::Skip).unwrap();
    assert_eq!(ds.defect("crack").unwrap().samples.len(), 2);
    assert!(has(&rep, IssueKind::MissingMask, "c2.png"));
    assert!(rep.skipped.iter().any(|p| p.ends_with("test/crack/c2.png")));
    std::fs::remove_dir_all(&r).unwrap();
}

#[test]
fn extra_mask_is_a_warning() {
    let r = clean("extra");
    mask(&r.join("ground_truth/crack/zz_mask.png"), 20, 10, 255);
    mask(&r.join("ground_truth/dent/d_mask.png"), 20, 10, 255);
    let (ds, rep) = MvtecDataset::open(&r, OnBadFile::Error).unwrap();
    assert!(rep.errors.is_empty());
    assert!(has(&rep, IssueKind::ExtraMask, "zz_mask.png"));
    assert!(has(&rep, IssueKind::ExtraMask, "ground_truth/dent"));
    assert_eq!(ds.defect("crack").unwrap().samples.len(), 3);
    std::fs::remove_dir_all(&r).unwrap();
}

#[test]
fn size_mismatch_is_an_error() {
    let r = clean("size");
    mask(&r.join("ground_truth/crack/c1_mask.png"), 21, 10, 255);
    let err = MvtecDataset::open(&r, OnBadFile::Error)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("c1_mask.png") && err.contains("21x10"),
        "{err}"
    );
    let (ds, rep) = MvtecDataset::open(&r, OnBadFile::Skip).unwrap();
    assert!(has(&rep, IssueKind::SizeMismatch, "c1_mask.png"));
    assert_eq!(ds.defect("crack").unwrap().samples.len(), 2);
    std::fs::remove_dir_all(&r).unwrap();
}

#[test]
fn non_binary_masks_warn_once_with_count_and_are_binarised() {
    let r = clean("nonbinary");
    mask(&r.join("ground_truth/crack/c1_mask.png"), 20, 10, 200);
    mask(&r.join("ground_truth/crack/c2_mask.png"), 20, 10, 100);
    let (ds, rep) = MvtecDataset::open(&r, OnBadFile::Error).unwrap();
    assert_eq!(rep.non_binary_masks.len(), 2);
    assert_eq!(rep.count(IssueKind::NonBinaryMask), 1);
    assert!(rep.warnings.iter().any(|i| i.msg.starts_with("2 mask(s)")));
    let s = &ds.defect("crack").unwrap().samples;
    // 200 >= 128 -> defect; 100 < 128 -> background (and so the mask is empty).
    let m1 = MvtecDataset::load_mask(&s[0]).unwrap();
    assert_eq!(m1.iter().filter(|&&v| v == 255).count(), 100);
    assert!(m1.iter().all(|&v| v == 0 || v == 255));
    assert!(has(&rep, IssueKind::EmptyMask, "c2_mask.png"));
    std::fs::remove_dir_all(&r).unwrap();
}

#[test]
fn empty_mask_is_a_warning() {
    let r = clean("emptymask");
    mask(&r.join("ground_truth/crack/c3_mask.png"), 20, 10, 0);
    let (ds, rep) = MvtecDataset::open(&r, OnBadFile::Error).unwrap();
    assert_eq!(rep.empty_masks.len(), 1);
    assert!(has(&rep, IssueKind::EmptyMask, "c3_mask.png"));
    assert_eq!(ds.defect("crack").unwrap().samples.len(), 3);
    std::fs::remove_dir_all(&r).unwrap();
}

#[test]
fn empty_and_missing_folders() {
    let r = clean("folders");
    for f in ["g1.png", "g2.png"] {
        std::fs::remove_file(r.join("test/good").join(f)).unwrap();
    }
    std::fs::remove_dir_all(r.join("train")).unwrap();
    std::fs::write(r.join("test/crack/notes.txt"), "x").unwrap();
    let err = MvtecDataset::open(&r, OnBadFile::Error)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("train/good") && err.contains("folder missing"),
        "{err}"
    );
    let (_, rep) = MvtecDataset::open(&r, OnBadFile::Skip).unwrap();
    assert!(has(&rep, IssueKind::EmptyFolder, "test/good"));
    assert!(has(&rep, IssueKind::UnexpectedFile, "notes.txt"));
    let missing = MvtecDataset::open(&r.join("nope"), OnBadFile::Skip).unwrap_err();
    assert!(missing.to_string().contains("nope"));
    std::fs::remove_dir_all(&r).unwrap();
}

#[test]
fn unreadable_and_truncated_images() {
    let r = clean("unreadable");
    std::fs::write(r.join("train/good/junk.png"), b"not an image at all").unwrap();
    // A PNG cut after its header: the size is readable, the pixels are not.
    let full = std::fs::read(r.join("test/good/g1.png")).unwrap();
    std::fs::write(r.join("test/good/cut.png"), &full[..full.len() / 2]).unwrap();

    let (ds, rep) = MvtecDataset::open(&r, OnBadFile::Skip).unwrap();
    assert!(has(&rep, IssueKind::UnreadableImage, "junk.png"));
    assert!(!has(&rep, IssueKind::UnreadableImage, "cut.png"));
    assert_eq!(ds.train_good.len(), 3);
    // Headers-only indexing lets the cut file through; loading it names the file.
    let cut = ds.test_good.iter().find(|s| s.stem == "cut").unwrap();
    let e = MvtecDataset::load_image(cut).unwrap_err().to_string();
    assert!(e.contains("cut.png"), "{e}");

    let (ds, rep) = MvtecDataset::open_with(&r, OnBadFile::Skip, Check::Full).unwrap();
    assert!(has(&rep, IssueKind::UnreadableImage, "cut.png"));
    assert_eq!(ds.test_good.len(), 2);
    let err = MvtecDataset::open_with(&r, OnBadFile::Error, Check::Full)
        .unwrap_err()
        .to_string();
    assert!(err.contains("junk.png") && err.contains("cut.png"), "{err}");
    std::fs::remove_dir_all(&r).unwrap();
}

#[test]
fn unreadable_mask_and_duplicate_stem() {
    let r = clean("dupe");
    std::fs::write(r.join("ground_truth/crack/c1_mask.png"), b"garbage").unwrap();
    rgb(&r.join("test/crack/c2.bmp"), 20, 10);
    let (ds, rep) = MvtecDataset::open(&r, OnBadFile::Skip).unwrap();
    assert!(has(&rep, IssueKind::UnreadableMask, "c1_mask.png"));
    assert!(has(&rep, IssueKind::DuplicateStem, "c2"));
    let names: Vec<_> = ds
        .defect("crack")
        .unwrap()
        .samples
        .iter()
        .map(|s| s.stem.clone())
        .collect();
    assert_eq!(names, vec!["c2", "c3"]);
    std::fs::remove_dir_all(&r).unwrap();
}

#[test]
fn real_mtd_counts_and_empty_masks() {
    let Some(root) = shared_dataset("mtd") else {
        return;
    };
    let t = std::time::Instant::now();
    let (ds, rep) = MvtecDataset::open(&root, OnBadFile::Error).unwrap();
    println!(
        "mtd: opened in {:.2} s; {} errors, {} warnings",
        t.elapsed().as_secs_f64(),
        rep.errors.len(),
        rep.warnings.len()
    );
    for w in &rep.warnings {
        println!("  warning: {w}");
    }
    assert_eq!(ds.train_good.len(), 762);
    assert_eq!(ds.test_good.len(), 190);
    let counts: Vec<(&str, usize)> = ds
        .defects
        .iter()
        .map(|d| (d.name.as_str(), d.samples.len()))
        .collect();
    println!("  defects: {counts:?}");
    assert_eq!(
        counts,
        vec![
            ("blowhole", 115),
            ("break", 85),
            ("crack", 57),
            ("fray", 32),
            ("uneven", 103)
        ]
    );
    assert!(rep.errors.is_empty());
    assert_eq!(rep.empty_masks.len(), 4);
    assert_eq!(rep.count(IssueKind::EmptyMask), 4);
    assert!(rep.non_binary_masks.is_empty());
    // Sizes vary; each sample's size is its own.
    let s = &ds.defect("crack").unwrap().samples[0];
    let img = MvtecDataset::load_image(s).unwrap();
    assert_eq!(img.dimensions(), (s.width, s.height));
}

#[test]
fn real_bsdata_counts() {
    let Some(root) = shared_dataset("bsdata") else {
        return;
    };
    let t = std::time::Instant::now();
    let (ds, rep) = MvtecDataset::open(&root, OnBadFile::Error).unwrap();
    println!(
        "bsdata: opened in {:.2} s; {} errors, {} warnings",
        t.elapsed().as_secs_f64(),
        rep.errors.len(),
        rep.warnings.len()
    );
    for w in &rep.warnings {
        println!("  warning: {w}");
    }
    assert_eq!(ds.train_good.len(), 551);
    assert_eq!(ds.test_good.len(), 137);
    assert_eq!(ds.defect_names(), vec!["pitting"]);
    assert_eq!(ds.defect("pitting").unwrap().samples.len(), 167);
    assert!(rep.errors.is_empty());
    let s = &ds.test_good[0];
    assert_eq!((s.width, s.height), (1130, 460));
}
