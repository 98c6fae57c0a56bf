//! The data commands end to end: synth-dataset → dataset-check → split, and clear failures.

mod common;
use common::*;

#[test]
fn synth_check_split() {
    let dir = std::env::temp_dir().join(format!("anodiff-cli-data-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let ds = dir.join("syn");
    let (ds_s, cap) = (ds.to_str().unwrap(), ds.join("capsule"));
    let o = anodiff(&[
        "synth-dataset",
        "--out",
        ds_s,
        "--seed",
        "3",
        "--size",
        "32",
        "--train-good",
        "2",
        "--test-good",
        "2",
        "--per-defect",
        "4",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let o = anodiff(&["dataset-check", "--dataset", cap.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("0 error(s), 0 warning(s)"),
        "{}",
        text(&o)
    );

    let split = dir.join("split.json");
    let o = anodiff(&[
        "split",
        "--dataset",
        cap.to_str().unwrap(),
        "--out",
        split.to_str().unwrap(),
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    // 4 per defect type -> ceil(4/3) = 2 train, 2 eval.
    assert!(
        t.lines()
            .any(|l| l.split_whitespace().eq(["missing", "2", "2"])),
        "{t}"
    );
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&split).unwrap()).unwrap();
    assert_eq!(
        json["defects"]["crack"]["train"].as_array().unwrap().len(),
        2
    );

    // A broken dataset: dataset-check lists the file and exits non-zero; split refuses.
    std::fs::remove_file(cap.join("ground_truth/spot/001_mask.png")).unwrap();
    let o = anodiff(&["dataset-check", "--dataset", cap.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(text(&o).contains("spot/001.png"), "{}", text(&o));
    let o = anodiff(&[
        "split",
        "--dataset",
        cap.to_str().unwrap(),
        "--out",
        split.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("001_mask.png"), "{}", text(&o));
    std::fs::remove_dir_all(&dir).unwrap();
}
