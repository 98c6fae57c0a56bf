//! The DualAnoDiff jobs end to end on a tiny pixel-space model and a synthetic category: exact
//! resume, the run folder loading back to the trained state, generation outputs and their
//! manifest, shards that merge into exactly what one run writes, and re-judging a folder in place.

mod common;

use anodiff::data::synth::{synth_dataset, SynthOptions};
use anodiff::dual::generate::{
    dual_generate, merge_shards, read_manifest, rejudge, CheckOptions, GenerateOptions,
    ManifestLine, Shard,
};
use anodiff::dual::pairs::{PairOptions, Sampling};
use anodiff::dual::run::{dual_train, DualTrainOptions, PairData};
use anodiff::dual::{DualConfig, DualModel};
use anodiff::sd::model_source::ModelSource;
use anodiff::sd::scheduler::SchedulerKind;
use candle_core::Device;
use common::{temp_dir, tensors};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A synthetic capsule category at 32 px and the options of a tiny dual run on its `spot` defects.
fn setup(root: &Path, out: &str) -> DualTrainOptions {
    let data = root.join("data");
    if !data.exists() {
        synth_dataset(
            &data,
            0,
            &SynthOptions {
                size: 32,
                train_good: 4,
                test_good: 2,
                per_defect: 6,
            },
        )
        .unwrap();
        let (ds, _) = anodiff::data::mvtec::MvtecDataset::open(
            &data.join("capsule"),
            anodiff::data::mvtec::OnBadFile::Error,
        )
        .unwrap();
        anodiff::data::split::SplitManifest::few_shot(&ds)
            .unwrap()
            .save(&root.join("split.json"))
            .unwrap();
    }
    let mut o = DualTrainOptions::paper(
        ModelSource::Preset {
            name: "tiny-pixel".into(),
            seed: 1,
        },
        PairData::Split {
            manifest: root.join("split.json"),
            defect: "spot".into(),
        },
        root.join(out),
    );
    o.pairs = PairOptions {
        sampling: Sampling::Resize {
            size: 32,
            margin: 0,
        },
        ..PairOptions::default()
    };
    o.config = DualConfig {
        rank: 4,
        bcm_hidden: 16,
        ..DualConfig::default()
    };
    o.batch = 2;
    o.lr = 1e-3;
    // Exercised so exact resume also covers the dropout coins.
    o.prompt_dropout = 0.5;
    o.checkpoint_every = 0;
    o.sample_every = 0;
    o.sample_count = 1;
    o.sample_steps = 2;
    o
}

/// Two pairs per update as two micro-batches: computed one after the other (a one-thread pool)
/// and side by side (two threads, BCM's reference passes of both lanes in flight at once), the
/// trained weights must be identical.
#[test]
fn micro_batches_side_by_side_equal_one_after_the_other() {
    let root = temp_dir("dual_lanes");
    let run = |threads: usize, out: &str| {
        let mut o = setup(&root, out);
        o.steps = 3;
        o.micro_batches = 2;
        assert!(o.config.bcm, "the check needs BCM's reference passes");
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| dual_train(&o, None, |_| {}).unwrap());
        o.out
    };
    let (seq, par) = (run(1, "seq"), run(2, "par"));
    for f in [
        "pytorch_lora_weights.safetensors",
        "pytorch_lora_weights_part.safetensors",
        "dual_modules.safetensors",
    ] {
        let (a, b) = (tensors(&seq.join(f)), tensors(&par.join(f)));
        assert!(!a.is_empty(), "{f}");
        for (k, t) in &a {
            let d = (t - &b[k]).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0, "{f} {k}");
        }
    }
}

#[test]
fn resume_is_exact_and_the_run_folder_is_the_trained_state() {
    let root = temp_dir("dual_resume");
    let mut straight = setup(&root, "straight");
    straight.steps = 4;
    let r = dual_train(&straight, None, |_| {}).unwrap();
    assert_eq!(r.steps.len(), 4);
    assert!(r.steps.iter().all(|s| s.loss.is_finite()));
    assert!(straight.out.join("samples/step-000004.png").is_file());

    let mut split = setup(&root, "split");
    split.steps = 2;
    dual_train(&split, None, |_| {}).unwrap();
    split.steps = 4;
    let r2 = dual_train(&split, Some(&split.out), |_| {}).unwrap();
    assert_eq!(r2.steps.len(), 2, "the resumed run continues at step 3");

    for f in [
        "pytorch_lora_weights.safetensors",
        "pytorch_lora_weights_part.safetensors",
        "dual_modules.safetensors",
    ] {
        let (a, b) = (tensors(&straight.out.join(f)), tensors(&split.out.join(f)));
        assert_eq!(a.len(), b.len(), "{f}");
        assert!(!a.is_empty(), "{f}");
        for (k, t) in &a {
            let d = (t - &b[k]).unwrap().abs().unwrap().max_all().unwrap();
            assert_eq!(
                d.to_scalar::<f32>().unwrap(),
                0.0,
                "{f} {k} differs after resume"
            );
        }
    }

    // The folder loads back (trainable) to exactly the last checkpoint's variables.
    let dev = Device::Cpu;
    let sd = straight.model.load(&dev).unwrap();
    let m = DualModel::load(&straight.out, &sd.unet, &sd.text_encoder, true, &dev).unwrap();
    let ck = tensors(
        &anodiff::train::checkpoint::latest(&straight.out)
            .unwrap()
            .join("weights.safetensors"),
    );
    let vars = m.vars();
    assert_eq!(vars.len(), ck.len());
    for (name, v) in vars {
        let d = (v.as_tensor() - &ck[&name])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert_eq!(d.to_scalar::<f32>().unwrap(), 0.0, "{name}");
    }
    // Training moved the whole-image and part LoRA sets apart (up starts at 0 in both).
    let whole = tensors(&straight.out.join("pytorch_lora_weights.safetensors"));
    let part = tensors(&straight.out.join("pytorch_lora_weights_part.safetensors"));
    let k = whole
        .keys()
        .find(|k| k.starts_with("unet.") && k.ends_with("lora_B.weight"))
        .unwrap();
    let d = (&whole[k] - &part[k])
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    assert!(d.to_scalar::<f32>().unwrap() > 0.0);
    std::fs::remove_dir_all(&root).ok();
}

/// Every file under `dir`, by relative path.
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.strip_prefix(dir).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

#[test]
fn generation_writes_pairs_and_shards_merge_into_one_run() {
    let root = temp_dir("dual_generate");
    let mut o = setup(&root, "run");
    o.steps = 2;
    dual_train(&o, None, |_| {}).unwrap();
    let g = GenerateOptions {
        n: 5,
        steps: Some(3),
        scheduler: Some(SchedulerKind::Ddim),
        batch: 2,
        reference_every: 2,
        ..GenerateOptions::default()
    };
    let one = root.join("one");
    let r = dual_generate(&o.out, &g, &one, |_, _| {}).unwrap();
    assert_eq!(r.attempted, 5);
    assert_eq!(
        r.accepted + r.rejected_empty + r.rejected_area + r.rejected_not_flat + r.rejected_faint,
        5
    );
    let lines = read_manifest(&one.join("manifest.jsonl")).unwrap();
    assert_eq!(
        lines.iter().map(|l| l.index).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );
    for l in &lines {
        let base = sample_dir(&one, l);
        for sub in ["image", "mask", "part"] {
            assert!(base.join(sub).join(format!("{}.png", l.stem)).is_file());
        }
        assert!(
            l.reference.is_some(),
            "BCM is on: every sample names its reference"
        );
        assert_eq!(l.accepted, l.rejected.is_none());
    }
    // References switch every 2 samples: samples 0 and 1 share one.
    assert_eq!(lines[0].reference, lines[1].reference);

    let sharded = root.join("sharded");
    for index in 0..2 {
        let gs = GenerateOptions {
            shard: Shard { index, count: 2 },
            ..g.clone()
        };
        dual_generate(&o.out, &gs, &sharded, |_, _| {}).unwrap();
    }
    assert_eq!(merge_shards(&sharded, 2).unwrap(), 5);
    let (a, b) = (files(&one), files(&sharded));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, v) in &a {
        assert!(
            v == &b[k],
            "{} differs between the sharded and the single run",
            k.display()
        );
    }

    // Re-judging with unchanged rules changes nothing, byte for byte.
    let r2 = rejudge(&o.out, &one, &g.checks).unwrap();
    assert_eq!((r2.attempted, r2.accepted), (r.attempted, r.accepted));
    assert!(
        files(&one) == a,
        "a re-judge with the same rules changed files"
    );
    // Stricter rules move pairs out, the old ones bring them back exactly.
    let strict = CheckOptions {
        min_contrast_share: 100.0,
        ..g.checks
    };
    let rs = rejudge(&o.out, &one, &strict).unwrap();
    assert_eq!(rs.accepted, 0);
    assert!(rs.rejected_faint >= r.accepted);
    rejudge(&o.out, &one, &g.checks).unwrap();
    assert!(
        files(&one) == a,
        "a round trip through stricter rules changed files"
    );
    let bad = CheckOptions {
        min_contrast_share: -1.0,
        ..g.checks
    };
    assert!(rejudge(&o.out, &one, &bad).is_err());
    // A pair an older rule let through (here: a flat grey part, filed as accepted), left half
    // moved by an interrupted re-judge (its image still under rejected/): it goes back to
    // rejected/ with its reason, and the counts follow.
    let l = &lines[0];
    let name = format!("{}.png", l.stem);
    let from = sample_dir(&one, l);
    for sub in ["mask", "part", "image"] {
        let to = match sub {
            "image" => one.join("rejected").join(sub),
            _ => one.join(sub),
        };
        std::fs::create_dir_all(&to).unwrap();
        std::fs::rename(from.join(sub).join(&name), to.join(&name)).unwrap();
    }
    let flat = image::RgbImage::from_pixel(32, 32, image::Rgb([128, 128, 128]));
    flat.save(one.join("part").join(&name)).unwrap();
    let mut edited = read_manifest(&one.join("manifest.jsonl")).unwrap();
    edited[0].accepted = true;
    edited[0].rejected = None;
    let text: String = edited
        .iter()
        .map(|l| serde_json::to_string(l).unwrap() + "\n")
        .collect();
    std::fs::write(one.join("manifest.jsonl"), text).unwrap();
    let r3 = rejudge(&o.out, &one, &g.checks).unwrap();
    let after = read_manifest(&one.join("manifest.jsonl")).unwrap();
    assert!(!after[0].accepted);
    assert_eq!(after[0].rejected.as_deref(), Some("empty mask"));
    assert_eq!(after[0].mask_area, 0.0);
    for sub in ["mask", "part", "image"] {
        assert!(
            one.join("rejected").join(sub).join(&name).is_file(),
            "{sub}"
        );
        assert!(
            !one.join(sub).join(&name).exists(),
            "{sub} left among the accepted"
        );
    }
    assert_eq!(r3.attempted, 5);
    assert_eq!(r3.accepted, after.iter().filter(|l| l.accepted).count());
    assert_eq!(after[1..], lines[1..], "the other samples' lines changed");
    // A sample whose files are gone is an error naming it.
    std::fs::remove_file(one.join("rejected").join("part").join(&name)).unwrap();
    let e = rejudge(&o.out, &one, &g.checks).unwrap_err().to_string();
    assert!(e.contains(&format!("part/{name}")), "{e}");
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn shard_parsing_reads_kubernetes_and_slurm_indices() {
    let none = |_: &str| None;
    assert_eq!(
        Shard::parse_with("1/4", &none).unwrap(),
        Shard { index: 1, count: 4 }
    );
    assert!(Shard::parse_with("4/4", &none).is_err());
    assert!(Shard::parse_with("1", &none).is_err());
    assert!(Shard::parse_with("env/4", &none)
        .unwrap_err()
        .to_string()
        .contains("JOB_COMPLETION_INDEX"));
    let k8s = |k: &str| (k == "JOB_COMPLETION_INDEX").then(|| "3".to_string());
    assert_eq!(
        Shard::parse_with("env/4", &k8s).unwrap(),
        Shard { index: 3, count: 4 }
    );
    let slurm = |k: &str| match k {
        "SLURM_ARRAY_TASK_ID" => Some("12".to_string()),
        "SLURM_ARRAY_TASK_MIN" => Some("10".to_string()),
        "SLURM_ARRAY_TASK_COUNT" => Some("5".to_string()),
        _ => None,
    };
    assert_eq!(
        Shard::parse_with("env", &slurm).unwrap(),
        Shard { index: 2, count: 5 }
    );
    assert!(Shard::parse_with("x/2", &none).is_err());
}

/// Where a generated sample's files are: the output folder when accepted, `rejected/` when not.
fn sample_dir(out: &Path, l: &ManifestLine) -> PathBuf {
    if l.accepted {
        out.to_path_buf()
    } else {
        out.join("rejected")
    }
}

/// Mean |a − b| over the channels, in grey levels.
fn mean_abs_diff(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
    let s: f64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&x, &y)| (x as f64 - y as f64).abs())
        .sum();
    s / a.as_raw().len() as f64
}

/// The whole images of a generation folder and the reference each manifest line names.
fn wholes(out: &Path) -> Vec<(image::RgbImage, Option<String>)> {
    read_manifest(&out.join("manifest.jsonl"))
        .unwrap()
        .into_iter()
        .map(|l| {
            let path = sample_dir(out, &l)
                .join("image")
                .join(format!("{}.png", l.stem));
            (image::open(path).unwrap().to_rgb8(), l.reference)
        })
        .collect()
}

#[test]
fn generation_can_start_from_a_defect_free_image() {
    let root = temp_dir("dual_generate_init");
    let mut o = setup(&root, "run");
    o.steps = 2;
    dual_train(&o, None, |_| {}).unwrap();
    let base = GenerateOptions {
        n: 2,
        bcm: false,
        steps: Some(10),
        scheduler: Some(SchedulerKind::Ddim),
        batch: 2,
        ..GenerateOptions::default()
    };
    let near_opts = GenerateOptions {
        init_strength: Some(0.1),
        ..base.clone()
    };
    dual_generate(&o.out, &near_opts, &root.join("near"), |_, _| {}).unwrap();
    dual_generate(&o.out, &base, &root.join("far"), |_, _| {}).unwrap();
    let (near, far) = (wholes(&root.join("near")), wholes(&root.join("far")));
    for ((n, reference), (f, none)) in near.iter().zip(&far) {
        assert!(none.is_none(), "pure noise without BCM names no reference");
        let good = image::open(reference.as_ref().expect("init names its image"))
            .unwrap()
            .to_rgb8();
        let good = image::imageops::resize(&good, 32, 32, image::imageops::FilterType::Triangle);
        // One kept step at t ≈ 1: the image comes back almost unchanged; from pure noise the
        // same sample is unrelated to it.
        let (dn, df) = (mean_abs_diff(n, &good), mean_abs_diff(f, &good));
        assert!(dn < 6.0, "strength 0.1 moved the image by {dn} grey levels");
        assert!(
            df > (3.0 * dn).max(10.0),
            "pure noise ({df}) should be far from the image strength 0.1 keeps ({dn})"
        );
    }
    let bad = GenerateOptions {
        init_strength: Some(0.0),
        ..base.clone()
    };
    let err = dual_generate(&o.out, &bad, &root.join("bad"), |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("--init-strength"), "{err}");
    std::fs::remove_dir_all(&root).ok();
}
