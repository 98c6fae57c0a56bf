//! DualAnoDiff parity with our PyTorch reference of the dual model on diffusers' attention-processor
//! API (tools/parity/make_dual_fixtures.py → tests/fixtures/dual), on the tiny sd1 UNet fixture
//! (22 attention layers) and a tiny CLIP text encoder, every dual parameter random and non-zero.
//!
//! Tolerances, max|ours − torch| ≤ tol · max|torch| per tensor:
//! - UNet outputs: 1e-4 (as the backbone's UNet and LoRA parity tests);
//! - gradients: 5e-4 (as `grad_parity.rs`: long f32 sums with cancellation);
//! - finite differences (f64, SAIM and BCM alone): 1e-6 relative to max(|g|, 1).

mod common;
use anodiff::dual::bcm::BcmLayer;
use anodiff::dual::model::ReferenceInput;
use anodiff::dual::saim::SaimLayer;
use anodiff::dual::{DualConfig, DualModel, Fusion};
use anodiff::nn::tensor_files::read_safetensors;
use anodiff::nn::{Params, TensorFiles};
use anodiff::sd::clip::ClipTextModel;
use anodiff::sd::unet::UNet2DConditionModel;
use anodiff::sd::weights::Component;
use candle_core::{DType, Device, Tensor, Var};
use common::{fixtures, max_abs, rel};
use std::collections::HashMap;

const OUT_TOL: f32 = 1e-4;
const GRAD_TOL: f32 = 5e-4;

struct Fixture {
    r: HashMap<String, Tensor>,
    unet: UNet2DConditionModel,
    clip: ClipTextModel,
}

fn fixture() -> Fixture {
    let dev = Device::Cpu;
    let r = read_safetensors(&fixtures("dual/reference.safetensors"), &dev)
        .unwrap()
        .into_iter()
        .collect();
    let unet = UNet2DConditionModel::load(&Component::at(fixtures("unet/sd1/unet")), &dev).unwrap();
    let clip = ClipTextModel::load(&Component::at(fixtures("dual/text_encoder")), &dev).unwrap();
    Fixture { r, unet, clip }
}

fn config(fusion: Fusion, saim: bool) -> DualConfig {
    DualConfig {
        rank: 4,
        bcm_hidden: 32,
        fusion,
        saim,
        ..Default::default()
    }
}

/// The fixture's dual model; `trainable` makes the SAIM/BCM weights Vars.
fn dual(f: &Fixture, cfg: &DualConfig, trainable: bool) -> DualModel {
    let dev = Device::Cpu;
    let files = TensorFiles::load(&[fixtures("dual/dual_modules.safetensors")], &dev).unwrap();
    let p = Params::from_files(files, &dev);
    let p = if trainable {
        p.with_trainable(|_| true)
    } else {
        p
    };
    let m = DualModel::new(&f.unet, &f.clip, cfg, p).unwrap();
    m.load_lora(
        &fixtures("dual/lora_set0.safetensors"),
        &fixtures("dual/lora_set1.safetensors"),
    )
    .unwrap();
    m.install(&f.unet, &f.clip);
    m
}

/// Text embeddings of the named prompts (`whole`, `part`, `uncond`), through the LoRA'd encoder.
fn embed(f: &Fixture, names: &[&str]) -> Tensor {
    let rows: Vec<Tensor> = names
        .iter()
        .map(|n| {
            let ids = f.r[&format!("ids.{n}")].to_dtype(DType::U32).unwrap();
            f.clip.forward(&ids).unwrap().last_hidden_state
        })
        .collect();
    Tensor::cat(&rows, 0).unwrap()
}

#[test]
fn dual_unet_output_matches_reference() {
    let f = fixture();
    let x = &f.r["forward.x"];
    let t = f.r["forward.t"].repeat(8).unwrap();
    let x_ref = &f.r["forward.x_ref"];
    let t_ref = f.r["forward.t"].repeat(4).unwrap();
    let branch = [0, 1, 0, 1, 0, 1, 0, 1];
    for (case, fusion, saim, bcm) in [
        ("paper", Fusion::Paper, true, true),
        ("code", Fusion::Code, true, true),
        ("off", Fusion::Paper, true, false),
        ("paper_nosaim", Fusion::Paper, false, true),
    ] {
        let cfg = config(fusion, saim);
        let m = dual(&f, &cfg, false);
        let emb = embed(
            &f,
            &[
                "uncond", "uncond", "uncond", "uncond", "whole", "part", "whole", "part",
            ],
        );
        let emb_ref = embed(&f, &["uncond", "uncond", "whole", "whole"]);
        let reference = bcm.then_some(ReferenceInput {
            sample: x_ref,
            timesteps: &t_ref,
            embeddings: &emb_ref,
        });
        let out = m.forward(&f.unet, x, &t, &emb, &branch, reference).unwrap();
        let want = &f.r[&format!("forward.{case}.out")];
        let e = rel(&out, want);
        println!("forward {case}: relative error {e:.2e} (tol {OUT_TOL:.0e})");
        assert!(e <= OUT_TOL, "{case}: {e}");
    }
    // The cases differ from each other by far more than the tolerance (each part matters).
    let d = rel(&f.r["forward.paper.out"], &f.r["forward.off.out"]);
    let s = rel(&f.r["forward.paper.out"], &f.r["forward.paper_nosaim.out"]);
    assert!(d > 1e-2 && s > 1e-2, "BCM effect {d}, SAIM effect {s}");
}

#[test]
fn dual_gradients_match_reference() {
    let f = fixture();
    for (name, fusion) in [("paper", Fusion::Paper), ("code", Fusion::Code)] {
        let cfg = config(fusion, true);
        let m = dual(&f, &cfg, true);
        let vars: HashMap<String, Var> = m.vars().into_iter().collect();
        let emb = embed(&f, &["whole", "part", "whole", "part"]);
        let emb_ref = embed(&f, &["whole", "whole"]);
        let t = &f.r["grad.t"];
        let t_ref = t
            .index_select(&Tensor::new(&[0u32, 2], &Device::Cpu).unwrap(), 0)
            .unwrap();
        let out = m
            .forward(
                &f.unet,
                &f.r["grad.x"],
                t,
                &emb,
                &[0, 1, 0, 1],
                Some(ReferenceInput {
                    sample: &f.r["grad.x_ref"],
                    timesteps: &t_ref,
                    embeddings: &emb_ref,
                }),
            )
            .unwrap();
        let loss = (out - &f.r["grad.target"])
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap();
        let want_loss = f.r[&format!("grad_{name}.loss")].get(0).unwrap();
        assert!(rel(&loss, &want_loss) <= OUT_TOL);
        let grads = loss.backward().unwrap();
        let prefix = format!("grad_{name}.");
        let (mut checked, mut worst) = (0, 0f32);
        let mut kinds = std::collections::BTreeSet::new();
        for (k, want) in f.r.iter().filter(|(k, _)| k.starts_with(&prefix)) {
            let key = &k[prefix.len()..];
            let var_name = if let Some(n) = key.strip_prefix("mod.") {
                n.to_string()
            } else if let Some(rest) = key.strip_prefix("lora") {
                // lora<set>.<component>.<module>.<down|up>
                let (set, rest) = rest.split_once('.').unwrap();
                let (module, which) = rest.rsplit_once('.').unwrap();
                let ab = if which == "down" { "lora_A" } else { "lora_B" };
                format!("{module}.{ab}.set{set}.weight")
            } else {
                continue;
            };
            let var = vars
                .get(&var_name)
                .unwrap_or_else(|| panic!("no variable {var_name}"));
            let g = grads.get(var.as_tensor()).unwrap();
            if var_name.ends_with("temporal_k.bias") {
                // A key bias shifts both scores of a query equally: softmax ignores it, so its
                // true gradient is 0 and both sides hold rounding noise only.
                let (a, b) = (max_abs(g), max_abs(want));
                assert!(a < 1e-6 && b < 1e-6, "{var_name}: {a} {b}");
                continue;
            }
            let e = rel(g, want);
            assert!(e <= GRAD_TOL, "{name} {var_name}: {e}");
            worst = worst.max(e);
            checked += 1;
            let kind = var_name
                .split('.')
                .find(|p| p.starts_with("temporal_") || p.starts_with("lora_"))
                .unwrap_or("?")
                .to_string();
            kinds.insert(format!(
                "{}{kind}",
                if var_name.starts_with("text_encoder") {
                    "te."
                } else {
                    ""
                }
            ));
        }
        println!("gradients ({name}): {checked} tensors, worst relative error {worst:.2e}, kinds {kinds:?}");
        // LoRA A/B (UNet, text encoder), SAIM n/i/q/k/v/o, BCM mlp/a.
        assert!(checked >= 140 && kinds.len() >= 10, "{checked} {kinds:?}");
    }
}

/// Central differences in f64 over every parameter of a SAIM layer and a BCM layer (both
/// fusions): the gradients candle's autograd builds through our code are the true ones.
#[test]
fn saim_and_bcm_gradients_match_finite_differences() {
    let dev = Device::Cpu;
    let f64r = |seed: u64, shape: &[usize]| {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        Tensor::from_vec(v, shape, &dev).unwrap()
    };
    let c = 6;
    let check = |label: &str, p: &Params, loss: &dyn Fn() -> Tensor| {
        let grads = loss().backward().unwrap();
        let eps = 1e-5;
        let mut worst = 0f64;
        for (name, var) in p.vars() {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{label}: no gradient for {name}"))
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            let v0 = var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap();
            for i in (0..v0.len()).step_by(1 + v0.len() / 12) {
                let eval = |d: f64| {
                    let mut v = v0.clone();
                    v[i] += d;
                    var.set(&Tensor::from_vec(v, var.dims(), &dev).unwrap())
                        .unwrap();
                    loss().to_scalar::<f64>().unwrap()
                };
                let fd = (eval(eps) - eval(-eps)) / (2.0 * eps);
                worst = worst.max((fd - g[i]).abs() / g[i].abs().max(1.0));
            }
            var.set(&Tensor::from_vec(v0, var.dims(), &dev).unwrap())
                .unwrap();
        }
        println!("{label}: max rel |fd - autograd| {worst:.2e} (tol 1e-6)");
        assert!(worst <= 1e-6, "{label}: {worst}");
    };
    // SAIM: 2 pairs, 3 tokens.
    let p = Params::fresh(5, &dev).with_dtype(DType::F64);
    let saim = SaimLayer::new(&p, c).unwrap();
    let o = f64r(1, &[4, 3, c]);
    let w = f64r(2, &[4, 3, c]);
    check("SAIM", &p, &|| {
        (saim.forward(&o).unwrap() * &w)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
    });
    // BCM: rows [whole, part, whole], two reference rows.
    for fusion in [Fusion::Paper, Fusion::Code] {
        let p = Params::fresh(6, &dev).with_dtype(DType::F64);
        let bcm = BcmLayer::new(&p, c, 5, fusion).unwrap();
        // Move the gate off its initial value so the code fusion's (1 - a) term is exercised.
        for (n, v) in p.vars() {
            if n.ends_with("temporal_a") {
                v.set(&Tensor::new(&[0.3f64], &dev).unwrap()).unwrap();
            }
        }
        let h = f64r(3, &[3, 4, c]);
        let h_ref = f64r(4, &[2, 4, c]);
        let w = f64r(5, &[3, 4, c]);
        check(&format!("BCM {fusion:?}"), &p, &|| {
            (bcm.fuse(&h, &h_ref, &[0, 1, 0]).unwrap() * &w)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
        });
        // Part rows are untouched, whole rows are not.
        let fused = bcm.fuse(&h, &h_ref, &[0, 1, 0]).unwrap();
        let d = (fused - &h)
            .unwrap()
            .abs()
            .unwrap()
            .sum(2)
            .unwrap()
            .sum(1)
            .unwrap();
        let d = d.to_vec1::<f64>().unwrap();
        assert!(d[0] > 1e-3 && d[1] == 0.0 && d[2] > 1e-3, "{d:?}");
    }
}

/// Parameter counts at SD-1.5 size (METHODS.md A.4: SAIM 5C² + 7C per layer, about 124 M in all;
/// two UNet LoRA sets about 13 M at rank 32).
#[test]
fn sd15_parameter_counts() {
    let p = anodiff::sd::presets::Preset::by_name("sd15").unwrap();
    let c = DualModel::parameter_counts(&p.unet, &p.text, &DualConfig::default()).unwrap();
    println!("SD-1.5 DualAnoDiff parameters: {c:?}, total {}", c.total());
    // 32 attention layers at widths 320 (10), 640 (10), 1280 (12) in SD-1.5.
    let saim: usize = [(320usize, 10usize), (640, 10), (1280, 12)]
        .iter()
        .map(|&(w, n)| n * (5 * w * w + 7 * w))
        .sum();
    assert_eq!(c.saim, saim);
    assert!((120_000_000..130_000_000).contains(&c.saim), "{}", c.saim);
    assert!(
        (12_000_000..14_500_000).contains(&c.unet_lora),
        "{}",
        c.unet_lora
    );
    // Text encoder: 12 layers × 4 projections × rank 32 × (768 + 768).
    assert_eq!(c.text_encoder_lora, 12 * 4 * 32 * 1536);
    // BCM: 16 self-attention layers, MLP C→320→C plus the gate.
    let bcm: usize = [(320usize, 5usize), (640, 5), (1280, 6)]
        .iter()
        .map(|&(w, n)| n * (2 * w * 320 + 320 + w + 1))
        .sum();
    assert_eq!(c.bcm, bcm);
}

/// (c) A 4-step PNDM generation with guidance 2.0, BCM (paper) and SAIM, one pair, every random
/// draw replayed from the reference run: the denoising loop, the reference pass in its hook, the
/// row layout under guidance and the per-pair noise order all match.
#[test]
fn dual_generation_matches_reference() {
    use anodiff::dual::sample::{sample_pairs, Backbone, PairText, References, SampleSettings};
    use anodiff::sd::noise::{NoiseSource, ReplayNoise};
    use anodiff::sd::scheduler::{SchedulerConfig, SchedulerKind};
    let f = fixture();
    let m = dual(&f, &config(Fusion::Paper, true), false);
    let draws: Vec<Tensor> = (0..6)
        .map(|i| f.r[&format!("generate.draw{i}")].clone())
        .collect();
    let sched: SchedulerConfig = Component::at(fixtures("dual/scheduler"))
        .json("scheduler_config.json")
        .unwrap();
    let text = PairText {
        whole: embed(&f, &["whole"]),
        part: embed(&f, &["part"]),
        negative: embed(&f, &["uncond"]),
    };
    let settings = SampleSettings {
        steps: 4,
        guidance: 2.0,
        scheduler: SchedulerKind::Pndm,
        negative_prompt: String::new(),
    };
    let mut streams: Vec<Box<dyn NoiseSource>> = vec![Box::new(ReplayNoise::new(draws))];
    let out = sample_pairs(
        &Backbone {
            unet: &f.unet,
            scheduler: &sched,
        },
        &m,
        &text,
        &settings,
        Some(References {
            backgrounds: &f.r["generate.bg"],
            zero: &f.r["generate.zero_ref"],
        }),
        None,
        &mut streams,
        (4, 8, 8),
    )
    .unwrap();
    let e = rel(&out, &f.r["generate.final"]);
    println!("4-step generation (PNDM, CFG 2, BCM, SAIM): relative error {e:.2e} (tol 1e-3)");
    // As the backbone's pipeline parity: 1e-3 on final latents after several steps.
    assert!(e <= 1e-3, "{e}");
    // Every recorded draw was used: 1 initial + 5 reference draws (PNDM calls the UNet 5 times).
    assert_eq!(f.r["generate.timesteps"].dims(), &[5]);
}
