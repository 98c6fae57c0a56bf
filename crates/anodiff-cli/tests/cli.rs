//! The `anodiff` binary on the tiny diffusers fixture model: same seed → same bytes, and bad
//! input gives a clear error and a non-zero exit, never a panic or a half-written file; a closed
//! stdout ends the process quietly.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Output;

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/pipeline");
const VOCAB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../anodiff/assets/clip");

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
}

/// A diffusers folder from the pipeline fixture parts; `unet` picks the 4- or 9-channel UNet.
fn model(tag: &str, unet: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("anodiff-cli-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let fix = Path::new(FIX);
    copy_dir(Path::new(VOCAB), &dir.join("tokenizer"));
    copy_dir(&fix.join("text_encoder"), &dir.join("text_encoder"));
    copy_dir(&fix.join("vae"), &dir.join("vae"));
    copy_dir(&fix.join(unet), &dir.join("unet"));
    copy_dir(&fix.join("scheduler_pndm"), &dir.join("scheduler"));
    std::fs::write(dir.join("model_index.json"), b"{}").unwrap();
    dir
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn txt2img_is_deterministic_and_writes_a_png() {
    let m = model("det", "unet");
    let (a, b, c) = (m.join("a.png"), m.join("b.png"), m.join("c.png"));
    let base = [
        "txt2img",
        "--model",
        p(&m),
        "--prompt",
        "a scratch",
        "--steps",
        "3",
        "--width",
        "32",
        "--height",
        "24",
        "--out",
    ];
    for out in [&a, &b] {
        let o = anodiff(&[&base[..], &[p(out), "--seed", "5"]].concat());
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let o = anodiff(&[&base[..], &[p(&c), "--seed", "6"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let (ba, bb, bc) = (
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        std::fs::read(&c).unwrap(),
    );
    assert_eq!(ba, bb, "same seed must give identical bytes");
    assert_ne!(ba, bc, "another seed must give another image");
    let img = image::open(&a).unwrap();
    assert_eq!((img.width(), img.height()), (32, 24));
    let _ = std::fs::remove_dir_all(m);
}

#[test]
fn txt2img_defaults_to_the_models_own_size() {
    // The fixture's UNet sample_size 8 × VAE factor 4 = 32 px (not SD's 512).
    let m = model("size", "unet");
    let out = m.join("d.png");
    let o = anodiff(&[
        "txt2img",
        "--model",
        p(&m),
        "--prompt",
        "a scratch",
        "--steps",
        "1",
        "--out",
        p(&out),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let img = image::open(&out).unwrap();
    assert_eq!((img.width(), img.height()), (32, 32));
    let _ = std::fs::remove_dir_all(m);
}

#[test]
fn bad_input_is_a_clear_error() {
    let m = model("bad", "unet");
    let out = m.join("x.png");
    // Width not a multiple of the VAE factor (4 for this fixture's 3-block VAE).
    let o = anodiff(&[
        "txt2img",
        "--model",
        p(&m),
        "--prompt",
        "x",
        "--steps",
        "2",
        "--width",
        "30",
        "--height",
        "32",
        "--out",
        p(&out),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("multiples of 4"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"));
    // Missing model folder.
    let o = anodiff(&[
        "txt2img",
        "--model",
        "/nonexistent/model",
        "--prompt",
        "x",
        "--out",
        p(&out),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("/nonexistent/model"), "{}", stderr(&o));
    // Unknown scheduler name.
    let o = anodiff(&[
        "txt2img",
        "--model",
        p(&m),
        "--prompt",
        "x",
        "--scheduler",
        "lms",
        "--out",
        p(&out),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("lms"), "{}", stderr(&o));

    // Inpainting with the 4-channel UNet, and image/mask size mismatch.
    let img = m.join("img.png");
    let mask = m.join("mask.png");
    let small = m.join("small.png");
    image::RgbImage::from_pixel(32, 32, image::Rgb([90, 90, 90]))
        .save(&img)
        .unwrap();
    image::GrayImage::from_pixel(32, 32, image::Luma([255]))
        .save(&mask)
        .unwrap();
    image::GrayImage::from_pixel(16, 32, image::Luma([255]))
        .save(&small)
        .unwrap();
    let inpaint = |mask: &Path| {
        anodiff(&[
            "inpaint",
            "--model",
            p(&m),
            "--image",
            p(&img),
            "--mask",
            p(mask),
            "--prompt",
            "x",
            "--steps",
            "2",
            "--out",
            p(&out),
        ])
    };
    let o = inpaint(&mask);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("9 input channels"), "{}", stderr(&o));
    let o = inpaint(&small);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("same size"), "{}", stderr(&o));
    // Sizes are checked against the model's VAE factor (4 here), not a fixed 8.
    let (img30, mask30) = (m.join("img30.png"), m.join("mask30.png"));
    image::RgbImage::from_pixel(30, 32, image::Rgb([90, 90, 90]))
        .save(&img30)
        .unwrap();
    image::GrayImage::from_pixel(30, 32, image::Luma([255]))
        .save(&mask30)
        .unwrap();
    let o = anodiff(&[
        "inpaint",
        "--model",
        p(&m),
        "--image",
        p(&img30),
        "--mask",
        p(&mask30),
        "--prompt",
        "x",
        "--steps",
        "2",
        "--out",
        p(&out),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("multiples of 4"), "{}", stderr(&o));
    assert!(!out.exists(), "no output file after a failure");
    let _ = std::fs::remove_dir_all(m);
}

#[test]
fn inpaint_runs_with_the_9_channel_unet() {
    let m = model("inp", "unet_inpaint");
    let (img, mask, out) = (m.join("img.png"), m.join("mask.png"), m.join("out.png"));
    image::RgbImage::from_fn(32, 32, |x, y| {
        image::Rgb([(x * 8) as u8, (y * 8) as u8, 128])
    })
    .save(&img)
    .unwrap();
    image::GrayImage::from_fn(32, 32, |x, _| image::Luma([if x < 16 { 255 } else { 0 }]))
        .save(&mask)
        .unwrap();
    let o = anodiff(&[
        "inpaint",
        "--model",
        p(&m),
        "--image",
        p(&img),
        "--mask",
        p(&mask),
        "--prompt",
        "x",
        "--steps",
        "3",
        "--out",
        p(&out),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let got = image::open(&out).unwrap();
    assert_eq!((got.width(), got.height()), (32, 32));
    let _ = std::fs::remove_dir_all(m);
}

#[cfg(unix)]
#[test]
fn a_closed_stdout_ends_the_process_quietly() {
    // `anodiff presets | head -0`: the pipe's reader is gone before anything is written. Other
    // tools end on SIGPIPE; a panic message with a backtrace would be a bug.
    use std::os::unix::process::ExitStatusExt;
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_anodiff"))
        .arg("presets")
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(o.status.signal(), Some(13), "{:?}: {err}", o.status);
}
