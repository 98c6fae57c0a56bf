//! The AnomalySD jobs end to end on the `small-inpaint` preset (32 px, pixel space) and the two
//! synthetic categories: `detect-train` writes a run folder that loads back to the trained state
//! and resumes exactly; `detect_split` writes every method's prediction folder (maps at the
//! ORIGINAL image size, `detect.json`) that `evaluate` scores; the multi-scale branch ignores the
//! shots and the batch size; `detect_folder` writes maps, overlays and sorted scores; and the
//! usual mistakes are clear errors.
//!
//! One tiny run (4 updates) is trained once and shared by every test; detection works on a
//! second synthetic dataset at 40 px, so "original size" differs from the model's 32 px.

mod common;

use anodiff::data::mvtec::{MvtecDataset, OnBadFile};
use anodiff::data::split::SplitManifest;
use anodiff::data::synth::{synth_dataset, SynthOptions};
use anodiff::detect::distance::{Distance, DistanceMeter};
use anodiff::detect::infer::{DetectSettings, Detector, ImageScore};
use anodiff::detect::job::{
    detect_folder, detect_split, detect_split_shard, draw_shots, merge_score_shards, Method, Output,
};
use anodiff::detect::run::{DetectRun, RUN_CONFIG};
use anodiff::detect::train::{detect_train, BaseModel, DetectTrainOptions, DetectTrainReport};
use anodiff::eval::evaluate::{evaluate, EvalOptions};
use anodiff::eval::lpips::{Lpips, LpipsNet};
use anodiff::eval::npy::{self, Map2};
use anodiff::eval::predictions::Predictions;
use anodiff::io::shard::Shard;
use anodiff::nn::tensor_files::write_safetensors;
use common::{fixtures, lpips_formula_weights, temp_dir, tensors};
use image::RgbImage;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Side of the images detection runs on (the model works at 32 px).
const EVAL_SIZE: usize = 40;
/// Tests that use the shared fixture; the last one to finish removes its folder.
const FIXTURE_USERS: usize = 7;

/// The shared run and data.
struct Fixture {
    root: PathBuf,
    /// Synthetic dataset at 32 px (training data of the run).
    data32: PathBuf,
    /// Synthetic dataset at 40 px (detection data, same categories).
    data40: PathBuf,
    /// The options the run was trained with.
    options: DetectTrainOptions,
    /// What training reported.
    report: DetectTrainReport,
    /// A copy of the run's step-2 checkpoint, taken while the run went on to step 4.
    mid: PathBuf,
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dst = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dst);
        } else {
            std::fs::copy(&p, &dst).unwrap();
        }
    }
}

fn train_options(data: &Path, out: PathBuf) -> DetectTrainOptions {
    DetectTrainOptions {
        datasets: vec![data.join("metal_texture"), data.join("capsule")],
        base: BaseModel::Preset("small-inpaint".into()),
        out,
        steps: 4,
        batch: 2,
        // Side by side on two cores: exact resume covers that path too.
        micro_batches: 2,
        lr: 1e-3,
        warmup: 1,
        seed: 3,
        checkpoint_every: 2,
        samples: 0,
        // Exercised so exact resume also covers the dropout coins.
        prompt_dropout: 0.5,
        ..DetectTrainOptions::default()
    }
}

/// Removes shared-fixture folders (≈130 MB each) left by earlier runs of this binary whose
/// process is gone: a run of only some tests never reaches [`FIXTURE_USERS`] and so keeps its
/// folder. Only where `/proc` tells which processes live.
fn remove_stale_fixtures(prefix: &str) {
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) = name.strip_prefix(prefix) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            std::fs::remove_dir_all(e.path()).ok();
        }
    }
}

fn build_fixture() -> Fixture {
    let root = temp_dir("detect_shared");
    remove_stale_fixtures(&format!(
        "anodiff-{}-detect_shared-",
        env!("CARGO_CRATE_NAME")
    ));
    let (data32, data40) = (root.join("data32"), root.join("data40"));
    let opts = |size: u32, test_good: usize| SynthOptions {
        size,
        train_good: 4,
        test_good,
        per_defect: 2,
    };
    synth_dataset(&data32, 0, &opts(32, 1)).unwrap();
    synth_dataset(&data40, 1, &opts(EVAL_SIZE as u32, 1)).unwrap();
    let options = train_options(&data32, root.join("run"));
    let mid = root.join("mid-checkpoint");
    let (ck_root, mid_copy) = (options.out.join("checkpoints"), mid.clone());
    let report = detect_train(&options, move |s| {
        // At step 3's report the step-2 checkpoint is complete and not yet replaced.
        if s.step == 3 {
            let latest = std::fs::read_to_string(ck_root.join("LATEST")).unwrap();
            copy_dir(&ck_root.join(latest.trim()), &mid_copy);
        }
    })
    .unwrap();
    Fixture {
        root,
        data32,
        data40,
        options,
        report,
        mid,
    }
}

static FIXTURE: OnceLock<Fixture> = OnceLock::new();

fn fixture() -> &'static Fixture {
    FIXTURE.get_or_init(build_fixture)
}

/// Held by every test that uses the fixture: the last one to drop it (pass or fail) removes the
/// fixture's folder.
struct FixtureUser;

impl Drop for FixtureUser {
    fn drop(&mut self) {
        static DONE: AtomicUsize = AtomicUsize::new(0);
        if DONE.fetch_add(1, Ordering::SeqCst) + 1 == FIXTURE_USERS {
            if let Some(f) = FIXTURE.get() {
                std::fs::remove_dir_all(&f.root).ok();
            }
        }
    }
}

/// Cheap detection settings: scales 2 and 4 (20 inpaintings per image), 4 steps at strength
/// 0.5 (2 denoising steps each); image score = the map's maximum (some checks rely on it).
fn settings() -> DetectSettings {
    DetectSettings {
        scales: vec![2, 4],
        steps: 4,
        strength: 0.5,
        score: ImageScore::Max,
        ..DetectSettings::default()
    }
}

fn split_of(data: &Path, category: &str) -> SplitManifest {
    let (ds, _) = MvtecDataset::open(&data.join(category), OnBadFile::Error).unwrap();
    SplitManifest::few_shot(&ds).unwrap()
}

/// Every evaluation image of a split as (defect, stem, image path).
fn eval_images(split: &SplitManifest) -> Vec<(String, String, PathBuf)> {
    let mut v: Vec<_> = split
        .eval_good
        .iter()
        .map(|e| ("good".to_string(), e.stem.clone(), split.resolve(&e.image)))
        .collect();
    for (d, s) in &split.defects {
        v.extend(
            s.test
                .iter()
                .map(|e| (d.clone(), e.stem.clone(), split.resolve(&e.image))),
        );
    }
    v
}

fn read_map(dir: &Path, defect: &str, stem: &str) -> Map2 {
    npy::read(&anodiff::eval::predictions::map_path(dir, defect, stem)).unwrap()
}

fn max_of(v: &[f32]) -> f32 {
    v.iter().cloned().fold(f32::NEG_INFINITY, f32::max)
}

fn first_image(dir: &Path) -> RgbImage {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    image::open(&files[0]).unwrap().to_rgb8()
}

/// Every tensor of two safetensors files is bit-identical (and there is at least one).
fn assert_same_tensors(a: &Path, b: &Path) {
    let (ta, tb) = (tensors(a), tensors(b));
    assert!(!ta.is_empty(), "{}", a.display());
    let mut ka: Vec<_> = ta.keys().collect();
    let mut kb: Vec<_> = tb.keys().collect();
    ka.sort();
    kb.sort();
    assert_eq!(ka, kb, "{} vs {}", a.display(), b.display());
    for (k, t) in &ta {
        let u = &tb[k];
        assert_eq!(t.dims(), u.dims(), "{k}");
        let (x, y) = (
            t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            u.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert!(
            x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()),
            "{k} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
}

#[test]
fn train_writes_a_run_that_loads_back_and_resumes_exactly() {
    let f = fixture();
    let _u = FixtureUser;
    let run_dir = &f.options.out;
    let r = &f.report;

    // The report and the run folder.
    assert_eq!(r.steps.len(), 4);
    assert!(r.steps.iter().all(|s| s.loss.is_finite()));
    assert_eq!(
        r.images,
        vec![("metal_texture".to_string(), 4), ("capsule".to_string(), 4)]
    );
    assert_eq!(r.size, 32);
    assert!(r.samples.is_none(), "samples 0 writes no samples.png");
    assert!(!run_dir.join("samples.png").exists());
    for p in [
        RUN_CONFIG,
        "report.json",
        "train_log.jsonl",
        "model/model_index.json",
        "model/unet/diffusion_pytorch_model.safetensors",
        "model/text_encoder/model.safetensors",
    ] {
        assert!(run_dir.join(p).is_file(), "{p} missing");
    }
    assert!(
        !run_dir.join("model/vae").exists(),
        "a pixel-space run has no VAE"
    );

    // The saved model is exactly the trained state: every variable of the final checkpoint (the
    // Trainer's in-memory Vars at the end) equals the tensor of the same name in model/.
    let ck = anodiff::train::checkpoint::latest(run_dir).unwrap();
    assert!(ck.ends_with("step-00000004"), "{}", ck.display());
    let vars = tensors(&ck.join("weights.safetensors"));
    let unet = tensors(&run_dir.join("model/unet/diffusion_pytorch_model.safetensors"));
    let text = tensors(&run_dir.join("model/text_encoder/model.safetensors"));
    assert_eq!(vars.len(), unet.len() + text.len());
    let mut elems = 0;
    for (name, v) in &vars {
        let saved = if let Some(n) = name.strip_prefix("unet.") {
            &unet[n]
        } else if let Some(n) = name.strip_prefix("text_encoder.") {
            &text[n]
        } else {
            panic!("unexpected trainable variable {name}")
        };
        elems += v.elem_count();
        let d = (v - saved).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0, "{name}");
    }
    assert_eq!(elems, r.trainable_parameters);

    // Training moved the weights away from the preset's fresh ones.
    let preset = anodiff::sd::presets::Preset::by_name("small-inpaint").unwrap();
    let (_, fresh) = anodiff::sd::pipeline::StableDiffusion::from_preset_with_params(
        &preset,
        f.options.seed,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let moved = fresh.unet.vars().into_iter().any(|(n, v)| {
        let d = (v.as_tensor() - &unet[&n]).unwrap().abs().unwrap();
        d.max_all().unwrap().to_scalar::<f32>().unwrap() > 0.0
    });
    assert!(moved, "4 updates at lr 1e-3 changed no UNet weight");

    // The config names what was trained.
    let run = DetectRun::open(run_dir).unwrap();
    assert_eq!(run.config.categories, vec!["metal_texture", "capsule"]);
    assert_eq!(run.config.model, PathBuf::from("model"));
    assert!(run.config.lora.is_none() && run.lora.is_none());
    assert_eq!(run.config.size, 32);
    let norm = run
        .sd
        .pixel_norm
        .as_ref()
        .expect("a pixel-space run keeps its pixel normalisation");
    assert_eq!(
        run.sd.scheduler_config.clip_sample_range,
        norm.range_bound()
    );

    // Two loads of the run repaint bit-identically (and actually repaint).
    let img = first_image(&f.data32.join("capsule/test/good"));
    let s = DetectSettings {
        scales: vec![2],
        ..settings()
    };
    let ms = |run: &DetectRun| {
        let prompt = run.prompt("capsule").unwrap();
        Detector::new(&run.sd, &prompt, run.config.size, s.clone())
            .unwrap()
            .multi_scale(&img)
            .unwrap()
    };
    let a = ms(&run);
    let b = ms(&DetectRun::open(run_dir).unwrap());
    assert_eq!(a.inpaintings, 4);
    assert_eq!(a.map, b.map);
    assert_eq!(a.normal.as_raw(), b.normal.as_raw());
    assert_ne!(
        a.normal.as_raw(),
        img.as_raw(),
        "the model repainted nothing"
    );
    assert!(a.map.iter().all(|v| v.is_finite() && *v >= 0.0));

    // Exact resume: 2 updates, the step-2 checkpoint resumed to 4 updates, equals 4 straight.
    let mut resumed = train_options(&f.data32, f.root.join("resumed"));
    resumed.resume = Some(f.mid.clone());
    let r2 = detect_train(&resumed, |_| {}).unwrap();
    assert_eq!(
        r2.steps.iter().map(|s| s.step).collect::<Vec<_>>(),
        vec![3, 4],
        "the resumed run continues at step 3"
    );
    for (s, t) in r2.steps.iter().zip(&r.steps[2..]) {
        assert_eq!(
            s.loss.to_bits(),
            t.loss.to_bits(),
            "loss of step {}",
            s.step
        );
        assert_eq!(s.lr.to_bits(), t.lr.to_bits(), "lr of step {}", s.step);
    }
    for file in [
        "model/unet/diffusion_pytorch_model.safetensors",
        "model/text_encoder/model.safetensors",
    ] {
        assert_same_tensors(&run_dir.join(file), &resumed.out.join(file));
    }
    let norm2 = DetectRun::open(&resumed.out)
        .unwrap()
        .sd
        .pixel_norm
        .unwrap();
    assert_eq!(
        (norm.mean, norm.std),
        (norm2.mean, norm2.std),
        "pixel normalisation of the resumed run"
    );
}

/// The paths of one method's output for draw `draw` under `dir`.
fn output(dir: &Path, draw: usize, method: Method) -> Output {
    Output {
        draw,
        method,
        dir: dir.join(format!("draw{draw}")).join(method.name()),
        normal_dir: None,
    }
}

#[test]
fn shards_merged_equal_one_unsharded_run() {
    let f = fixture();
    let _u = FixtureUser;
    let run = DetectRun::open(&f.options.out).unwrap();
    let split = split_of(&f.data40, "capsule");
    let shots = vec![draw_shots(&split, 1, 0).unwrap()];
    let s = settings();
    let whole = f.root.join("shards_whole");
    let parts = f.root.join("shards_parts");
    let outs = |dir: &Path| -> Vec<Output> {
        [Method::Ms, Method::Knn]
            .iter()
            .map(|&m| output(dir, 0, m))
            .collect()
    };
    detect_split(
        &run,
        &split,
        "capsule",
        &s,
        &shots,
        &outs(&whole),
        |_, _, _| {},
    )
    .unwrap();
    let mut done = 0;
    for index in 0..2 {
        let sum = detect_split_shard(
            &run,
            &split,
            "capsule",
            &s,
            &shots,
            &outs(&parts),
            Shard { index, count: 2 },
            |_, _, _| {},
        )
        .unwrap();
        done += sum.images;
    }
    assert_eq!(
        done,
        eval_images(&split).len(),
        "every image in exactly one shard"
    );
    for (a, b) in outs(&whole).iter().zip(outs(&parts)) {
        // Before the merge there is no scores.csv, so the folder is not yet a prediction folder.
        assert!(Predictions::open(&b.dir).is_err());
        assert_eq!(merge_score_shards(&b.dir, 2).unwrap(), done);
        let sa = std::fs::read(a.dir.join("scores.csv")).unwrap();
        let sb = std::fs::read(b.dir.join("scores.csv")).unwrap();
        assert_eq!(sa, sb, "{}: merged scores differ", b.dir.display());
        for (defect, stem, _) in eval_images(&split) {
            let rel = Path::new(&defect).join(format!("{stem}.npy"));
            assert_eq!(
                std::fs::read(a.dir.join(&rel)).unwrap(),
                std::fs::read(b.dir.join(&rel)).unwrap(),
                "{}",
                rel.display()
            );
        }
    }
    // A missing shard is named.
    let e = merge_score_shards(&outs(&parts)[0].dir, 3)
        .unwrap_err()
        .to_string();
    assert!(e.contains("scores.shard-0-of-3.csv"), "{e}");
}

#[test]
fn split_detection_writes_every_method_in_the_prediction_format() {
    let f = fixture();
    let _u = FixtureUser;
    let run = DetectRun::open(&f.options.out).unwrap();
    let split = split_of(&f.data40, "metal_texture");
    let images = eval_images(&split);
    assert_eq!(images.len(), 1 + 3, "1 good + 1 per defect type");
    let s = settings();

    // Two 1-shot draws that pick different images.
    let d0 = draw_shots(&split, 1, 0).unwrap();
    assert_eq!(d0.len(), 1);
    assert_eq!(
        d0[0].0,
        draw_shots(&split, 1, 0).unwrap()[0].0,
        "draws are seeded"
    );
    let d1 = (1..50)
        .map(|seed| draw_shots(&split, 1, seed).unwrap())
        .find(|d| d[0].0 != d0[0].0)
        .expect("some seed draws another shot");

    // Draw A: every method, with the multi-scale "normal" images.
    let out_a = f.root.join("split_a");
    let mut outputs: Vec<Output> = Method::ALL.iter().map(|&m| output(&out_a, 0, m)).collect();
    outputs[1].normal_dir = Some(out_a.join("normal"));
    let mut calls = 0;
    let sum_a = detect_split(
        &run,
        &split,
        "metal_texture",
        &s,
        std::slice::from_ref(&d0),
        &outputs,
        |done, total, _| {
            calls += 1;
            assert_eq!(total, images.len());
            assert_eq!(done, calls);
        },
    )
    .unwrap();
    assert_eq!(calls, images.len());
    assert_eq!(sum_a.images, images.len());
    assert_eq!(sum_a.timings.len(), images.len());
    assert_eq!(sum_a.shots, vec![vec![d0[0].0.clone()]]);
    assert!(sum_a.timings.iter().all(|t| t.inpaintings >= 20));
    assert_eq!(sum_a.prompt, run.prompt("metal_texture").unwrap());

    // Draw B on its own: the multi-scale map and the kNN map.
    let out_b = f.root.join("split_b");
    let outputs_b = [
        output(&out_b, 0, Method::Ms),
        output(&out_b, 0, Method::Knn),
    ];
    let sum_b = detect_split(
        &run,
        &split,
        "metal_texture",
        &s,
        std::slice::from_ref(&d1),
        &outputs_b,
        |_, _, _| {},
    )
    .unwrap();
    // ms + knn need exactly the 4 + 16 grid inpaintings: the kNN map uses the prototype
    // deviation only, so no prototype-mask repaint may run.
    assert!(
        sum_b.timings.iter().all(|t| t.inpaintings == 20),
        "{:?}",
        sum_b.timings
    );

    let opts = EvalOptions::default();
    for o in outputs.iter().chain(&outputs_b) {
        let name = o.dir.display().to_string();
        // Every folder opens, lists every evaluation image once and has its map at image size.
        let pred = Predictions::open(&o.dir).unwrap();
        assert_eq!(pred.entries().count(), images.len(), "{name}");
        for (defect, stem, path) in &images {
            let score = pred
                .score(defect, stem)
                .unwrap_or_else(|| panic!("{name}: no score for {defect}/{stem}"));
            let map = pred.map(defect, stem).unwrap();
            let (w, h) = image::image_dimensions(path).unwrap();
            assert_eq!((map.height, map.width), (h as usize, w as usize), "{name}");
            assert_eq!(map.height, EVAL_SIZE);
            assert!(
                map.data.iter().all(|v| v.is_finite() && *v >= 0.0),
                "{name} {defect}/{stem}: maps are finite, non-negative distances"
            );
            assert!(score.is_finite());
            if o.method == Method::Brightness {
                // The control's score is the image's mean grey level (model-size resampling
                // moves it by little), its map the grey level.
                let img = image::open(path).unwrap().to_rgb8();
                let mean = img
                    .pixels()
                    .map(|p| (p[0] as f64 + p[1] as f64 + p[2] as f64) / (3.0 * 255.0))
                    .sum::<f64>()
                    / (img.width() * img.height()) as f64;
                assert!(
                    (score as f64 - mean).abs() < 0.02,
                    "{name} {defect}/{stem}: score {score}, mean grey {mean}"
                );
                assert!(max_of(&map.data) <= 1.0 + 1e-6);
            } else {
                // The score is the max of the model-size map; bilinear resizing never exceeds it.
                assert!(
                    max_of(&map.data) <= score * (1.0 + 1e-5) + 1e-7,
                    "{name} {defect}/{stem}: map max {} above the image score {score}",
                    max_of(&map.data)
                );
            }
        }
        // `evaluate` scores it.
        let rep = evaluate(&split, &pred, &opts).unwrap();
        assert_eq!(rep.counts.good_images, split.eval_good.len(), "{name}");
        assert_eq!(
            rep.counts.defect_images.values().sum::<usize>(),
            images.len() - split.eval_good.len()
        );
        assert_eq!(
            rep.counts.pixels,
            (images.len() * EVAL_SIZE * EVAL_SIZE) as u64
        );
        for m in [
            rep.overall.image_auroc,
            rep.overall.pixel_auroc,
            rep.overall.pixel_ap,
        ] {
            assert!((0.0..=1.0).contains(&m), "{name}: metric {m}");
        }
        // The per-image cost file.
        let j: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(o.dir.join("detect.json")).unwrap())
                .unwrap();
        assert_eq!(j["images"], images.len(), "{name}");
        assert_eq!(j["timings"].as_array().unwrap().len(), images.len());
        assert_eq!(j["settings"]["scales"], serde_json::json!([2, 4]));
    }

    // The multi-scale branch does not use the shots: identical maps and scores across draws; the
    // nearest-neighbour maps do depend on them.
    let dir = |out: &Path, m: Method| out.join("draw0").join(m.name());
    let (ms_a, ms_b) = (dir(&out_a, Method::Ms), dir(&out_b, Method::Ms));
    let (knn_a, knn_b) = (dir(&out_a, Method::Knn), dir(&out_b, Method::Knn));
    let mut knn_differs = false;
    for (defect, stem, _) in &images {
        assert_eq!(
            read_map(&ms_a, defect, stem),
            read_map(&ms_b, defect, stem),
            "ms map of {defect}/{stem} changed with the shots"
        );
        knn_differs |= read_map(&knn_a, defect, stem) != read_map(&knn_b, defect, stem);
    }
    assert_eq!(
        std::fs::read(ms_a.join("scores.csv")).unwrap(),
        std::fs::read(ms_b.join("scores.csv")).unwrap()
    );
    assert!(knn_differs, "knn maps do not depend on the shot draw");

    // S = (1 − α)·S_ms + α·S_pg: smoothing and resizing are linear, so the written maps obey it.
    let alpha = s.alpha as f32;
    for (defect, stem, _) in &images {
        let asd = read_map(&dir(&out_a, Method::AnomalySd), defect, stem);
        let ms = read_map(&ms_a, defect, stem);
        let pg = read_map(&dir(&out_a, Method::Pg), defect, stem);
        let scale = max_of(&asd.data).max(1e-6);
        for ((a, m), p) in asd.data.iter().zip(&ms.data).zip(&pg.data) {
            let want = (1.0 - alpha) * m + alpha * p;
            assert!(
                (a - want).abs() <= 1e-4 * scale,
                "{defect}/{stem}: anomalysd {a} vs (1-α)·ms + α·pg = {want}"
            );
        }
    }

    // The repainted normal images, one per evaluation image, at model size.
    for (defect, stem, _) in &images {
        let p = out_a
            .join("normal")
            .join(defect)
            .join(format!("{stem}.png"));
        let n = image::open(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .to_rgb8();
        assert_eq!(n.dimensions(), (32, 32));
    }
}

#[test]
fn multi_scale_maps_do_not_depend_on_the_batch_size() {
    let f = fixture();
    let _u = FixtureUser;
    let run = DetectRun::open(&f.options.out).unwrap();
    let prompt = run.prompt("capsule").unwrap();
    let img = first_image(&f.data40.join("capsule/test/crack"));
    let maps: Vec<_> = [32, 3, 1]
        .into_iter()
        .map(|batch| {
            let s = DetectSettings {
                batch,
                ..settings()
            };
            let det = Detector::new(&run.sd, &prompt, 32, s).unwrap();
            (batch, det.multi_scale(&img).unwrap())
        })
        .collect();
    let (_, want) = &maps[0];
    assert_eq!(want.inpaintings, 20);
    assert_eq!(want.per_scale.len(), 2);
    // Every chunk starts from the same noise, so chunking changes nothing but the float rounding
    // of batched kernels (≈1e-6 here; gemm blocking depends on the batch). A chunk given other
    // noise, or outputs put back in the wrong order, would differ by O(map).
    let close = |got: &[f32], want: &[f32], what: &str| {
        let tol = 1e-4 * max_of(want).max(1e-3);
        let d = got
            .iter()
            .zip(want)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(d <= tol, "{what}: max |Δ| {d:e} > {tol:e}");
    };
    for (batch, got) in &maps[1..] {
        assert_eq!(got.inpaintings, want.inpaintings);
        for (k, (a, b)) in got.per_scale.iter().zip(&want.per_scale).enumerate() {
            close(a, b, &format!("scale #{k}, batch {batch} vs 32"));
        }
        close(&got.map, &want.map, &format!("S_ms, batch {batch} vs 32"));
        let px = got
            .normal
            .as_raw()
            .iter()
            .zip(want.normal.as_raw())
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(px <= 1, "normal image, batch {batch}: {px} levels apart");
    }
}

/// AlexNet LPIPS weights (formula backbone, the package's heads) written to `dir`.
fn lpips_file(dir: &Path) -> PathBuf {
    let refs = tensors(&fixtures("lpips").join("reference.safetensors"));
    let path = dir.join("lpips-alex.safetensors");
    write_safetensors(&path, &lpips_formula_weights(LpipsNet::Alex, &refs)).unwrap();
    path
}

#[test]
fn lpips_distance_measures_cells_with_user_weights() {
    let f = fixture();
    let _u = FixtureUser;
    let dir = temp_dir("detect_lpips");
    let weights = lpips_file(&dir);
    let dev = candle_core::Device::Cpu;
    // The meter equals the network's spatial map (then the blur), across its batch chunks, and
    // is 0 for the image itself.
    let s = 32;
    let img = |seed: usize| -> Vec<f32> {
        (0..3 * s * s)
            .map(|i| (((i * 31 + seed * 17) % 97) as f32 / 48.5) - 1.0)
            .collect()
    };
    let reference = img(0);
    let mut others: Vec<Vec<f32>> = (1..11).map(img).collect();
    others.push(reference.clone());
    let meter = DistanceMeter::new(Distance::Lpips, Some(&weights), &dev).unwrap();
    let maps = meter.maps(&reference, &others, s, s, 0.0).unwrap();
    assert_eq!(maps.len(), 11);
    let net = Lpips::load(&weights, &dev).unwrap();
    let t = |v: &[f32]| candle_core::Tensor::from_slice(v, (1, 3, s, s), &dev).unwrap();
    for (o, m) in others.iter().zip(&maps) {
        let want = net
            .spatial_maps(&t(&reference), &t(o))
            .unwrap()
            .pop()
            .unwrap();
        let d = m
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-5, "meter vs network: {d}");
    }
    assert!(maps[10].iter().all(|v| v.abs() < 1e-6), "self-distance");
    assert!(maps[0].iter().any(|&v| v > 1e-3));
    // The detector uses it for every cell.
    let run = DetectRun::open(&f.options.out).unwrap();
    let prompt = run.prompt("capsule").unwrap();
    let image = first_image(&f.data40.join("capsule/test/crack"));
    let with = |distance, lpips_weights| DetectSettings {
        distance,
        lpips_weights,
        ..settings()
    };
    let lp = Detector::new(
        &run.sd,
        &prompt,
        32,
        with(Distance::Lpips, Some(weights.clone())),
    )
    .unwrap()
    .multi_scale(&image)
    .unwrap();
    let mix = Detector::new(&run.sd, &prompt, 32, with(Distance::Mix, None))
        .unwrap()
        .multi_scale(&image)
        .unwrap();
    assert_eq!(lp.inpaintings, 20);
    assert_eq!(lp.normal, mix.normal, "the same repaintings");
    assert!(lp.map.iter().all(|v| v.is_finite() && *v >= 0.0));
    assert!(lp.map.iter().any(|&v| v > 0.0));
    assert!(lp
        .map
        .iter()
        .zip(&mix.map)
        .any(|(a, b)| (a - b).abs() > 1e-4));
    // Mistakes: lpips without weights, weights with another distance.
    let e = err_text(Detector::new(
        &run.sd,
        &prompt,
        32,
        with(Distance::Lpips, None),
    ));
    assert!(e.contains("--lpips-weights"), "{e}");
    let e = err_text(Detector::new(
        &run.sd,
        &prompt,
        32,
        with(Distance::Ssim, Some(weights.clone())),
    ));
    assert!(
        e.contains("lpips-alex.safetensors") && e.contains("ssim"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn folder_detection_writes_maps_overlays_and_sorted_scores() {
    let f = fixture();
    let _u = FixtureUser;
    let run = DetectRun::open(&f.options.out).unwrap();
    let root = f.root.join("folder");
    let (shots, images, out) = (root.join("shots"), root.join("images"), root.join("out"));
    std::fs::create_dir_all(&shots).unwrap();
    std::fs::create_dir_all(&images).unwrap();
    let cap = f.data40.join("capsule");
    let pick = |sub: &str| {
        let mut v: Vec<PathBuf> = std::fs::read_dir(cap.join(sub))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    };
    for (i, p) in pick("train/good").iter().take(2).enumerate() {
        std::fs::copy(p, shots.join(format!("shot{i}.png"))).unwrap();
    }
    let names = ["good_a", "crack_b", "missing_c"];
    for (name, sub) in names
        .iter()
        .zip(["test/good", "test/crack", "test/missing"])
    {
        std::fs::copy(&pick(sub)[0], images.join(format!("{name}.png"))).unwrap();
    }
    // Not an image: ignored.
    std::fs::write(images.join("notes.txt"), "not an image").unwrap();

    let s = DetectSettings {
        score: ImageScore::TopK(0.05),
        ..settings()
    };
    let mut seen = 0;
    let scored = detect_folder(&run, "capsule", &s, &shots, &images, &out, |d, t, _| {
        seen += 1;
        assert_eq!((d, t), (seen, 3));
    })
    .unwrap();
    assert_eq!(seen, 3);
    assert_eq!(scored.len(), 3);
    assert!(
        scored.windows(2).all(|w| w[0].score >= w[1].score),
        "returned most anomalous first"
    );
    for name in names {
        let m = npy::read(&out.join(format!("{name}.npy"))).unwrap();
        assert_eq!((m.height, m.width), (EVAL_SIZE, EVAL_SIZE), "{name}");
        assert!(m.data.iter().all(|v| v.is_finite() && *v >= 0.0));
        let o = image::open(out.join(format!("{name}_overlay.png")))
            .unwrap()
            .to_rgb8();
        assert_eq!(o.dimensions(), (EVAL_SIZE as u32, EVAL_SIZE as u32));
        let it = scored
            .iter()
            .find(|s| s.image == images.join(format!("{name}.png")))
            .unwrap_or_else(|| panic!("{name} not scored"));
        assert_eq!(it.map, out.join(format!("{name}.npy")));
        assert_eq!(it.overlay, out.join(format!("{name}_overlay.png")));
        // A top-5 % mean of a non-negative map.
        assert!(it.score.is_finite() && it.score >= 0.0);
    }
    assert!(!out.join("notes.npy").exists());

    // scores.csv: header, one line per image, descending score, the returned order.
    let csv = std::fs::read_to_string(out.join("scores.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("image,score"));
    let rows: Vec<(String, f32)> = lines
        .map(|l| {
            let (p, v) = l.rsplit_once(',').unwrap();
            (p.to_string(), v.parse().unwrap())
        })
        .collect();
    assert_eq!(rows.len(), 3);
    assert!(rows.windows(2).all(|w| w[0].1 >= w[1].1), "{csv}");
    for (row, s) in rows.iter().zip(&scored) {
        // Paths are quoted (RFC 4180): they may hold commas.
        assert_eq!(row.0, format!("\"{}\"", s.image.display()));
        assert_eq!(row.1, s.score);
    }
}

fn err_text<T>(r: anodiff::error::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn mistakes_are_clear_errors() {
    let f = fixture();
    let _u = FixtureUser;
    let root = f.root.join("errors");

    // A folder without a run.
    let empty = root.join("not-a-run");
    std::fs::create_dir_all(&empty).unwrap();
    let e = err_text(DetectRun::open(&empty));
    assert!(e.contains(&empty.display().to_string()), "{e}");
    assert!(e.contains(RUN_CONFIG), "{e}");
    // A config whose model folder is missing (an unfinished or moved run): names the folder.
    let half = root.join("half-run");
    std::fs::create_dir_all(&half).unwrap();
    std::fs::copy(f.options.out.join(RUN_CONFIG), half.join(RUN_CONFIG)).unwrap();
    let e = err_text(DetectRun::open(&half));
    assert!(e.contains(&half.display().to_string()), "{e}");

    // A category the run was not trained on.
    let run = DetectRun::open(&f.options.out).unwrap();
    let e = err_text(run.prompt("bottle"));
    for w in ["bottle", "metal_texture", "capsule"] {
        assert!(e.contains(w), "`{w}` not in: {e}");
    }
    let split = split_of(&f.data40, "metal_texture");
    let s = settings();
    let e = err_text(detect_split(
        &run,
        &split,
        "bottle",
        &s,
        &[],
        &[output(&root.join("never"), 0, Method::Ms)],
        |_, _, _| {},
    ));
    assert!(e.contains("bottle"), "{e}");

    // More shots than train/good has, and no shots.
    assert_eq!(split.train_good.len(), 4);
    let e = err_text(draw_shots(&split, 5, 0));
    assert!(e.contains('5') && e.contains('4'), "{e}");
    assert!(e.contains(&split.dataset.display().to_string()), "{e}");
    assert!(draw_shots(&split, 4, 0).is_ok());
    assert!(draw_shots(&split, 0, 0).is_err());

    // Methods that need shots, given none; an output for a draw that was not given.
    let e = err_text(detect_split(
        &run,
        &split,
        "metal_texture",
        &s,
        &[],
        &[output(&root.join("never"), 0, Method::Knn)],
        |_, _, _| {},
    ));
    assert!(e.contains("shots"), "{e}");
    let d0 = draw_shots(&split, 1, 0).unwrap();
    assert!(detect_split(
        &run,
        &split,
        "metal_texture",
        &s,
        std::slice::from_ref(&d0),
        &[output(&root.join("never"), 1, Method::Knn)],
        |_, _, _| {},
    )
    .is_err());

    // A split with no evaluation images.
    let mut none = split.clone();
    none.eval_good.clear();
    for d in none.defects.values_mut() {
        d.test.clear();
    }
    let e = err_text(detect_split(
        &run,
        &none,
        "metal_texture",
        &s,
        &[],
        &[output(&root.join("never"), 0, Method::Ms)],
        |_, _, _| {},
    ));
    assert!(e.contains("no evaluation images"), "{e}");
    assert!(e.contains(&split.dataset.display().to_string()), "{e}");
    assert!(
        !root.join("never").exists(),
        "a refused job writes no output folder"
    );

    // Settings out of range, and an unknown method name.
    for bad in [
        DetectSettings {
            strength: 0.0,
            ..settings()
        },
        DetectSettings {
            alpha: 1.5,
            ..settings()
        },
        DetectSettings {
            scales: vec![],
            ..settings()
        },
        DetectSettings {
            scales: vec![64],
            ..settings()
        },
    ] {
        assert!(
            Detector::new(&run.sd, "x", 32, bad.clone()).is_err(),
            "{bad:?}"
        );
    }
    assert!("patchcore".parse::<Method>().is_err());
    assert_eq!("knn".parse::<Method>().unwrap(), Method::Knn);

    // An empty image folder in production mode names the folder.
    let (shots, images) = (root.join("shots"), root.join("images"));
    std::fs::create_dir_all(&shots).unwrap();
    std::fs::create_dir_all(&images).unwrap();
    let e = err_text(detect_folder(
        &run,
        "capsule",
        &s,
        &shots,
        &images,
        &root.join("out"),
        |_, _, _| {},
    ));
    assert!(e.contains(&shots.display().to_string()), "{e}");
}
