//! Synthetic dataset: deterministic bytes, masks exactly equal to the changed pixels, and the
//! MVTec reader accepts it with no warning.

mod common;

use anodiff::data::mvtec::{Check, MvtecDataset, OnBadFile};
use anodiff::data::synth::{render_defect, synth_dataset, Category, SynthOptions, MARKER};
use common::temp_dir;
use std::path::{Path, PathBuf};

fn small() -> SynthOptions {
    SynthOptions {
        size: 64,
        train_good: 4,
        test_good: 2,
        per_defect: 3,
    }
}

fn files(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((
                    p.strip_prefix(root).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn same_seed_same_bytes() {
    let (a, b, c) = (temp_dir("a"), temp_dir("b"), temp_dir("c"));
    let sa = synth_dataset(&a, 5, &small()).unwrap();
    synth_dataset(&b, 5, &small()).unwrap();
    synth_dataset(&c, 6, &small()).unwrap();
    let (fa, fb, fc) = (files(&a), files(&b), files(&c));
    // 2 categories x (4 + 2) good + (3 + 4 defect types) x 3 x (image + mask) + marker.
    assert_eq!(fa.len(), 2 * 6 + 7 * 3 * 2 + 1);
    assert_eq!(sa.files, fa.len());
    assert!(fa == fb, "same seed must give identical files");
    assert!(fa != fc, "another seed must differ");
    // Rewriting over a previous synth output is allowed; over a foreign folder it is not.
    synth_dataset(&a, 5, &small()).unwrap();
    assert!(files(&a) == fa);
    let foreign = temp_dir("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("keep.txt"), "mine").unwrap();
    let e = synth_dataset(&foreign, 5, &small())
        .unwrap_err()
        .to_string();
    assert!(e.contains("refusing") && e.contains(MARKER), "{e}");
    assert!(foreign.join("keep.txt").is_file());
    for d in [a, b, c, foreign] {
        std::fs::remove_dir_all(d).unwrap();
    }
}

#[test]
fn masks_are_exactly_the_changed_pixels() {
    for cat in Category::ALL {
        for &kind in cat.defects() {
            for seed in 0..12u64 {
                for size in [64, 128] {
                    let s = render_defect(cat, kind, size, seed);
                    let mut n = 0;
                    for (x, y, m) in s.mask.enumerate_pixels() {
                        let changed = s.good.get_pixel(x, y) != s.image.get_pixel(x, y);
                        assert!(m[0] == 0 || m[0] == 255);
                        assert_eq!(
                            m[0] == 255,
                            changed,
                            "{cat:?} {kind:?} seed {seed} size {size} at ({x},{y})"
                        );
                        n += changed as usize;
                    }
                    assert!(
                        n >= 6,
                        "{cat:?} {kind:?} seed {seed}: only {n} defect pixels"
                    );
                }
            }
        }
    }
}

#[test]
fn reader_accepts_output_without_warnings() {
    let d = temp_dir("reader");
    let summary = synth_dataset(&d, 0, &small()).unwrap();
    assert_eq!(summary.categories.len(), 2);
    for (cat, root) in Category::ALL.iter().zip(&summary.categories) {
        let (ds, rep) = MvtecDataset::open_with(root, OnBadFile::Error, Check::Full).unwrap();
        assert!(rep.is_clean(), "{rep:?}");
        assert_eq!(ds.train_good.len(), 4);
        assert_eq!(ds.test_good.len(), 2);
        let mut want: Vec<&str> = cat.defects().iter().map(|k| k.name()).collect();
        want.sort();
        assert_eq!(ds.defect_names(), want);
        for def in &ds.defects {
            assert_eq!(def.samples.len(), 3);
            for s in &def.samples {
                assert_eq!((s.width, s.height), (64, 64));
                assert!(MvtecDataset::load_mask(s).unwrap().contains(&255));
            }
        }
    }
    std::fs::remove_dir_all(&d).unwrap();
}
