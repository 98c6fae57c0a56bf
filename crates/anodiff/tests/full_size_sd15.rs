//! Full-size parity on a random-weight folder with the exact SD-1.5 configs, written by
//! `tools/make_sd15_random.py` (4.3 GB, not committed). Ignored by default:
//!   cargo test --release --test full_size_sd15 -- --ignored --nocapture
//! Folder: $ANODIFF_SD15_DIR or runs/sd15-random. Tolerance: max|diff| ≤ 1e-4 · max|ref| per output.

mod common;

use anodiff::sd::attention::ForwardCtx;
use anodiff::sd::clip::ClipTextModel;
use anodiff::sd::unet::UNet2DConditionModel;
use anodiff::sd::vae::AutoencoderKL;
use anodiff::sd::weights::ModelDir;
use candle_core::{DType, Device, Tensor};
use common::{rel, tensors};
use std::path::PathBuf;
use std::time::Instant;

fn dir() -> PathBuf {
    std::env::var_os("ANODIFF_SD15_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../runs/sd15-random"
            ))
        })
}

#[test]
#[ignore = "needs tools/make_sd15_random.py output (4.3 GB)"]
fn sd15_full_size_matches_diffusers() {
    let dev = Device::Cpu;
    let m = ModelDir::open(dir()).expect("run tools/make_sd15_random.py first");
    let r = tensors(&m.root.join("reference.safetensors"));
    let clip = ClipTextModel::load(&m.component("text_encoder").unwrap(), &dev).unwrap();
    let ids = r["clip.ids"].to_dtype(DType::U32).unwrap();
    let enc = clip.forward(&ids).unwrap().last_hidden_state;
    let e = rel(&enc, &r["clip.last_hidden"]);
    println!("clip last hidden: rel err {e:.3e}");
    assert!(e <= 1e-4);
    let unet = UNet2DConditionModel::load(&m.component("unet").unwrap(), &dev).unwrap();
    let enc = r["clip.last_hidden"].clone();
    for size in [256usize, 512] {
        let lat = &r[&format!("unet{size}.latents")];
        let t = Tensor::new(&[500f32, 500.0], &dev).unwrap();
        let t0 = Instant::now();
        let out = unet.forward(lat, &t, &enc, &ForwardCtx::default()).unwrap();
        let secs = t0.elapsed().as_secs_f64();
        let e = rel(&out, &r[&format!("unet{size}.out")]);
        println!("unet {size}px batch 2: rel err {e:.3e}, ours {secs:.2} s per step");
        assert!(e <= 1e-4);
    }
    let vae = AutoencoderKL::load(&m.component("vae").unwrap(), &dev).unwrap();
    let t0 = Instant::now();
    let img = vae.decode(&r["vae.z"]).unwrap();
    let e = rel(&img, &r["vae.decoded"]);
    println!(
        "vae decode 256px: rel err {e:.3e}, {:.2} s",
        t0.elapsed().as_secs_f64()
    );
    assert!(e <= 1e-4);
}
