//! `anodiff eval` end to end on a tiny synthetic MVTec-layout dataset: a perfect predictor scores
//! 100 everywhere; a missing or mis-sized map fails with exit code 1 and names the file.

mod common;
use anodiff::data::split::SplitManifest;
use anodiff::eval::npy::Map2;
use anodiff::eval::predictions::PredictionWriter;
use common::*;

#[test]
fn eval_perfect_missing_and_missized() {
    let dir = std::env::temp_dir().join(format!("anodiff-cli-eval-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ds = dir.join("syn");
    let o = anodiff(&[
        "synth-dataset",
        "--out",
        ds.to_str().unwrap(),
        "--seed",
        "5",
        "--size",
        "32",
        "--train-good",
        "1",
        "--test-good",
        "3",
        "--per-defect",
        "4",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let cat = ds.join("capsule");
    let split = dir.join("split.json");
    let o = anodiff(&[
        "split",
        "--dataset",
        cat.to_str().unwrap(),
        "--out",
        split.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));

    // Perfect predictor: the map is the ground-truth mask, the score the label.
    let m = SplitManifest::load(&split).unwrap();
    let pred = dir.join("pred");
    let mut w = PredictionWriter::create(&pred).unwrap();
    let lists = std::iter::once(("good", &m.eval_good))
        .chain(m.defects.iter().map(|(k, d)| (k.as_str(), &d.test)));
    for (defect, list) in lists {
        for e in list {
            let mask = m.load_mask(e).unwrap();
            let data = mask.iter().map(|&v| v as f32 / 255.0).collect();
            let map = Map2::new(mask.height() as usize, mask.width() as usize, data).unwrap();
            let score = if defect == "good" { 0.0 } else { 1.0 };
            w.write(defect, &e.stem, &map, score).unwrap();
        }
    }
    w.finish().unwrap();

    let out = dir.join("metrics.json");
    let run = |out: &std::path::Path| {
        anodiff(&[
            "eval",
            "--dataset",
            cat.to_str().unwrap(),
            "--split",
            split.to_str().unwrap(),
            "--predictions",
            pred.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let o = run(&out);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(
        t.contains("| overall | 100.0 | 100.0 | 100.0 | 100.0 | 100.0 | 100.0 | 100.0 |"),
        "{t}"
    );
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    for k in [
        "image_auroc",
        "image_ap",
        "image_f1_max",
        "pixel_auroc",
        "pixel_ap",
        "pixel_f1_max",
        "pixel_aupro",
    ] {
        let near1 = |v: &serde_json::Value| (v.as_f64().unwrap() - 1.0).abs() < 1e-12;
        assert!(near1(&json["overall"][k]), "{k}: {json}");
        for (d, v) in json["per_defect"].as_object().unwrap() {
            assert!(near1(&v[k]), "{d} {k}: {json}");
        }
    }
    assert_eq!(json["counts"]["good_images"], 3);

    // Binned mode gives the same perfect scores.
    let o = anodiff(&[
        "eval",
        "--split",
        split.to_str().unwrap(),
        "--predictions",
        pred.to_str().unwrap(),
        "--out",
        dir.join("binned.json").to_str().unwrap(),
        "--bins",
        "100",
    ]);
    assert!(text(&o).contains("| overall | 100.0 |"), "{}", text(&o));

    // A missing map.
    let first = &m.defects.values().next().unwrap().test[0].stem;
    let defect = m.defects.keys().next().unwrap();
    let missing = pred.join(defect).join(format!("{first}.npy"));
    let saved = std::fs::read(&missing).unwrap();
    std::fs::remove_file(&missing).unwrap();
    let o = run(&dir.join("m2.json"));
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains(missing.to_str().unwrap()), "{}", text(&o));
    std::fs::write(&missing, saved).unwrap();

    // A map of the wrong size.
    let bad = pred
        .join("good")
        .join(format!("{}.npy", m.eval_good[0].stem));
    anodiff::eval::npy::write(&bad, &Map2::new(3, 5, vec![0.0; 15]).unwrap()).unwrap();
    let o = run(&dir.join("m3.json"));
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains(bad.to_str().unwrap()) && t.contains("3x5") && t.contains("32x32"),
        "{t}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
