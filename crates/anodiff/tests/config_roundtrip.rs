//! Config files written by diffusers 0.42.1 / transformers 5.23 (tests/fixtures/configs, from
//! tools/parity/make_config_fixtures.py, plus the configs of the other parity fixtures) survive
//! `load_config` → `save_config` → `load_config` unchanged, and the file we write has every key of
//! the library's own file with an equal value, and no other key. Numbers compare by value (`1` and
//! `1.0` are the same JSON number to Python). The reverse direction — diffusers reading files we
//! write — is tools/parity/check_config_roundtrip.py.

use anodiff::sd::clip::ClipTextConfig;
use anodiff::sd::config_file::ConfigFile;
use anodiff::sd::scheduler::SchedulerConfig;
use anodiff::sd::unet::UNetConfig;
use anodiff::sd::vae::VaeConfig;
use serde_json::Value;
use std::fmt::Debug;
use std::path::{Path, PathBuf};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures");

/// Keys of the libraries' files that anodiff deliberately does not keep: transformers' `dtype`
/// (and 4.x's `torch_dtype`) describe the stored weights' precision, which every loader here
/// converts to f32.
const NOT_MODELLED: &[&str] = &["dtype", "torch_dtype"];

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fn read(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Loads `dir`'s config, saves it to a scratch folder, loads that, and compares both the values
/// and the written JSON with the original file.
fn roundtrip<C: ConfigFile + PartialEq + Debug>(dir: &Path, scratch: &Path) {
    let label = dir.display();
    let cfg = C::load_config(dir).unwrap_or_else(|e| panic!("{label}: {e}"));
    let written = cfg.save_config(scratch).unwrap();
    assert_eq!(C::load_config(scratch).unwrap(), cfg, "{label}");
    let (theirs, ours) = (read(&dir.join(C::FILE_NAME)), read(&written));
    let (Value::Object(theirs), Value::Object(ours)) = (theirs, ours) else {
        panic!("{label}: not JSON objects")
    };
    for (k, v) in &theirs {
        if NOT_MODELLED.contains(&k.as_str()) {
            continue;
        }
        let mine = ours.get(k);
        assert!(
            mine.is_some_and(|m| same(m, v)),
            "{label}: key `{k}`: theirs {v}, ours {mine:?}"
        );
    }
    let extra: Vec<_> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
    assert!(
        extra.is_empty(),
        "{label}: keys diffusers does not write: {extra:?}"
    );
}

/// Component folders holding `file` below `root` (sorted).
fn folders_with(root: &Path, file: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| n == file) {
                out.push(d.clone());
            }
        }
    }
    out.sort();
    out
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("anodiff-cfg-rt-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn diffusers_and_transformers_configs_roundtrip() {
    let root = Path::new(FIXTURES);
    let cfgs = root.join("configs");
    let tmp = scratch("all");
    // (folders, what they hold); the other parity fixtures' component folders count too.
    let unets: Vec<_> = [
        folders_with(&cfgs.join("unet"), "config.json"),
        folders_with(&root.join("unet"), "config.json"),
    ]
    .concat();
    let vaes: Vec<_> = [
        folders_with(&cfgs.join("vae"), "config.json"),
        folders_with(&root.join("vae"), "config.json"),
    ]
    .concat();
    let clips: Vec<_> = [
        folders_with(&cfgs.join("text_encoder"), "config.json"),
        folders_with(&root.join("clip"), "config.json"),
    ]
    .concat();
    let scheds = folders_with(&cfgs.join("scheduler"), "scheduler_config.json");
    assert!(
        unets.len() >= 8 && vaes.len() >= 4 && clips.len() >= 4 && scheds.len() >= 11,
        "fixtures missing: {} UNets, {} VAEs, {} text encoders, {} schedulers",
        unets.len(),
        vaes.len(),
        clips.len(),
        scheds.len()
    );
    for d in &unets {
        roundtrip::<UNetConfig>(d, &tmp.join("unet"));
    }
    for d in &vaes {
        roundtrip::<VaeConfig>(d, &tmp.join("vae"));
    }
    for d in &clips {
        roundtrip::<ClipTextConfig>(d, &tmp.join("clip"));
    }
    for d in &scheds {
        roundtrip::<SchedulerConfig>(d, &tmp.join("scheduler"));
    }
    println!(
        "round-tripped {} UNet, {} VAE, {} text-encoder and {} scheduler configs",
        unets.len(),
        vaes.len(),
        clips.len(),
        scheds.len()
    );
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn older_scheduler_fixtures_roundtrip() {
    // tests/fixtures/scheduler/configs holds files named <settings>_<class>.json.
    let dir = Path::new(FIXTURES).join("scheduler/configs");
    let tmp = scratch("sched");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let one = tmp.join(p.file_stem().unwrap());
        std::fs::create_dir_all(&one).unwrap();
        std::fs::copy(&p, one.join("scheduler_config.json")).unwrap();
        roundtrip::<SchedulerConfig>(&one, &one.join("out"));
        n += 1;
    }
    assert_eq!(n, 12);
    let _ = std::fs::remove_dir_all(&tmp);
}
