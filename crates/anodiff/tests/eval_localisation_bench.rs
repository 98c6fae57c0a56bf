//! The localisation benchmark end to end on the synthetic dataset with a tiny protocol: every run
//! file is written, metrics are sane numbers, a finished seed is reused, the report renders
//! panels for every type, and the summary has mean ± std rows.

mod common;

use anodiff::data::synth::{synth_dataset, SynthOptions};
use anodiff::eval::evaluate::EvalOptions;
use anodiff::eval::localisation::Protocol;
use anodiff::eval::localisation_bench::{self, BenchOptions, Progress};
use anodiff::eval::run::RunLayout;
use common::temp_dir;

fn tiny_protocol() -> Protocol {
    Protocol {
        size: 32,
        width: 4,
        epochs: 2,
        samples_per_epoch: 16,
        batch: 4,
        ..Protocol::cpu()
    }
}

#[test]
fn bench_runs_reuses_and_reports() {
    let root = temp_dir("run");
    let data = root.join("data");
    let opts = SynthOptions {
        size: 48,
        train_good: 6,
        test_good: 3,
        per_defect: 3,
    };
    synth_dataset(&data, 1, &opts).unwrap();
    let o = BenchOptions {
        dataset: data.join("metal_texture"),
        source: "cutpaste".into(),
        seeds: vec![0, 1],
        protocol_name: "tiny".into(),
        protocol: tiny_protocol(),
        out: root.join("out"),
        eval: EvalOptions::default(),
        report: true,
    };
    let mut trained_steps = 0;
    let runs = localisation_bench::run(&o, |p| {
        if let Progress::Train(_) = p {
            trained_steps += 1
        }
    })
    .unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(trained_steps, 2 * 2 * 16 / 4);
    for r in &runs {
        assert!(!r.reused);
        let run = RunLayout::new(&r.dir);
        for p in [run.info(), run.split(), run.metrics(), run.report_html()] {
            assert!(p.exists(), "{} missing", p.display());
        }
        assert!(run.train_dir().join("train_log.jsonl").exists());
        assert!(run.predictions().join("scores.csv").exists());
        let m = r.metrics.overall;
        for v in [m.image_auroc, m.pixel_auroc, m.pixel_ap, m.pixel_aupro] {
            assert!((0.0..=1.0).contains(&v), "metric {v} out of range");
        }
        let html = std::fs::read_to_string(run.report_html()).unwrap();
        assert!(html.contains("<h3>good</h3>"));
        assert!(html.contains("pixel AUROC"));
        let pngs = std::fs::read_dir(run.report_assets()).unwrap().count();
        assert!(pngs >= 3 * 3, "only {pngs} report panels");
    }
    // Different seeds train different networks.
    assert_ne!(
        runs[0].metrics.overall.pixel_auroc,
        runs[1].metrics.overall.pixel_auroc
    );
    // A second call finds both seeds finished and trains nothing.
    let mut trained_again = 0;
    let again = localisation_bench::run(&o, |p| {
        if let Progress::Train(_) = p {
            trained_again += 1
        }
    })
    .unwrap();
    assert_eq!(trained_again, 0);
    assert!(again.iter().all(|r| r.reused));
    assert_eq!(again[1].metrics, runs[1].metrics);
    // Another source is a different run folder.
    let dirs: Vec<_> = runs.iter().map(|r| r.dir.clone()).collect();
    assert!(dirs[0].ends_with("metal_texture/cutpaste/seed0"));

    let md = localisation_bench::summary_markdown(&o, &runs);
    assert!(md.contains("| metal_texture | cutpaste | **all** |"));
    assert!(md.contains(" ± "));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn mean_std_is_sample_std_and_ignores_nan() {
    let (m, s) = localisation_bench::mean_std(&[1.0, 2.0, 3.0, f64::NAN]);
    assert!((m - 2.0).abs() < 1e-12 && (s - 1.0).abs() < 1e-12);
    assert_eq!(localisation_bench::mean_std(&[5.0]), (5.0, 0.0));
    assert!(localisation_bench::mean_std(&[f64::NAN]).0.is_nan());
}
