//! The public denoising loop (`sd::denoise`) on small random-weight UNets: a batch of different
//! rows gives what each row gives alone (with and without guidance, with extra channels and a
//! partial start), the CFG row layout reaches attention processors as documented, the step hook
//! sees every UNet call and can run a reference pass, bad input is a clear error, the
//! pipelines' default size comes from the model, and sampling through trainable weights keeps no
//! autograd graph.

mod common;
use anodiff::nn::Params;
use anodiff::sd::attention::{AttnCall, AttnProcessor, ForwardCtx, HasAttention, PassKind};
use anodiff::sd::noise::{NoiseSource, ReplayNoise, SeededNoise};
use anodiff::sd::pipeline::{SampleOptions, StableDiffusion};
use anodiff::sd::presets::Preset;
use anodiff::sd::scheduler::{make_scheduler, Scheduler, SchedulerConfig, SchedulerKind};
use anodiff::sd::unet::{UNet2DConditionModel, UNetConfig};
use anodiff::sd::{denoise, Conditioning, DenoiseOptions, StepInput};
use candle_core::{Device, Tensor};
use common::{max_diff, rel};
use std::sync::{Arc, Mutex};

/// Latent side of the test runs (the tiny preset's UNet takes any size).
const S: usize = 8;
/// Text length: any works, short keeps the tests fast.
const TOKENS: usize = 5;

/// The tiny preset's UNet with `in_channels` inputs and fresh random weights.
fn unet(in_channels: usize) -> UNet2DConditionModel {
    let cfg = UNetConfig {
        in_channels,
        ..Preset::by_name("tiny").unwrap().unet
    };
    UNet2DConditionModel::new(&cfg, &Params::fresh(3, &Device::Cpu)).unwrap()
}

fn randn(seed: u64, shape: &[usize]) -> Tensor {
    SeededNoise::new(seed).draw(shape, &Device::Cpu).unwrap()
}

/// A prepared scheduler of `kind` with SD-1.5's settings.
fn sched(kind: SchedulerKind, steps: usize) -> Box<dyn Scheduler> {
    let mut s = make_scheduler(kind, &SchedulerConfig::default(), 0.0).unwrap();
    s.set_timesteps(steps).unwrap();
    s
}

fn rows(t: &Tensor, i: usize, n: usize) -> Tensor {
    t.narrow(0, i, n).unwrap()
}

/// Batch independence tolerance: the only difference between a batch of 2 and two batches of 1
/// is how the kernels block their sums, so rows agree to float rounding.
const BATCH_TOL: f32 = 1e-5;

/// One `denoise` call; the step noise (if the scheduler draws any) is replayed from `draws`.
#[allow(clippy::too_many_arguments)]
fn run(
    u: &UNet2DConditionModel,
    kind: SchedulerKind,
    latents: &Tensor,
    cond: &Conditioning,
    extra: Option<&Tensor>,
    start: usize,
    guidance: f64,
    draws: Vec<Tensor>,
) -> Tensor {
    let mut s = sched(kind, 4);
    let mut noise = ReplayNoise::new(draws);
    let o = DenoiseOptions {
        extra,
        start,
        guidance,
        ..DenoiseOptions::new(cond)
    };
    let out = denoise(u, s.as_mut(), latents.clone(), o, &mut noise).unwrap();
    assert_eq!(noise.remaining(), 0, "{kind:?}: unused step noise");
    out
}

#[test]
fn a_batch_of_two_rows_equals_the_rows_run_alone() {
    let (u4, u9) = (unet(4), unet(9));
    let latents = randn(1, &[2, 4, S, S]);
    let cond = randn(2, &[2, TOKENS, 64]);
    let uncond = randn(3, &[2, TOKENS, 64]);
    let extra = randn(4, &[2, 5, S, S]);
    // DDPM draws step noise for the whole batch at once: row r of each draw belongs to row r.
    let ddpm_draws: Vec<Tensor> = (0..4).map(|k| randn(10 + k, &[2, 4, S, S])).collect();
    let row_draws = |r: usize| ddpm_draws.iter().map(|d| rows(d, r, 1)).collect::<Vec<_>>();
    for guidance in [1.0, 4.0] {
        let both = Conditioning::guided(cond.clone(), uncond.clone());
        let one = |r: usize| Conditioning::guided(rows(&cond, r, 1), rows(&uncond, r, 1));
        // Full DDPM run, 4-channel UNet.
        let batch = run(
            &u4,
            SchedulerKind::Ddpm,
            &latents,
            &both,
            None,
            0,
            guidance,
            ddpm_draws.clone(),
        );
        for r in 0..2 {
            let alone = run(
                &u4,
                SchedulerKind::Ddpm,
                &rows(&latents, r, 1),
                &one(r),
                None,
                0,
                guidance,
                row_draws(r),
            );
            let e = rel(&rows(&batch, r, 1), &alone);
            println!("DDPM guidance {guidance} row {r}: {e:.2e}");
            assert!(e <= BATCH_TOL, "DDPM guidance {guidance} row {r}: {e}");
        }
        // Partial Euler run (from the third timestep) with per-row extra channels, 9-channel UNet.
        let batch = run(
            &u9,
            SchedulerKind::Euler,
            &latents,
            &both,
            Some(&extra),
            2,
            guidance,
            vec![],
        );
        for r in 0..2 {
            let alone = run(
                &u9,
                SchedulerKind::Euler,
                &rows(&latents, r, 1),
                &one(r),
                Some(&rows(&extra, r, 1)),
                2,
                guidance,
                vec![],
            );
            let e = rel(&rows(&batch, r, 1), &alone);
            println!("Euler+extra guidance {guidance} row {r}: {e:.2e}");
            assert!(e <= BATCH_TOL, "Euler guidance {guidance} row {r}: {e}");
        }
    }
    // The rows really differ (the test would be vacuous otherwise) ...
    let out = run(
        &u4,
        SchedulerKind::Ddim,
        &latents,
        &Conditioning::new(cond.clone()),
        None,
        0,
        1.0,
        vec![],
    );
    assert!(rel(&rows(&out, 0, 1), &rows(&out, 1, 1)) > 1e-2);
    // ... and a single conditioning row is shared by every latent row.
    let shared = run(
        &u4,
        SchedulerKind::Ddim,
        &latents,
        &Conditioning::new(rows(&cond, 0, 1)),
        None,
        0,
        1.0,
        vec![],
    );
    let repeated = run(
        &u4,
        SchedulerKind::Ddim,
        &latents,
        &Conditioning::new(Tensor::cat(&[rows(&cond, 0, 1), rows(&cond, 0, 1)], 0).unwrap()),
        None,
        0,
        1.0,
        vec![],
    );
    assert_eq!(rel(&shared, &repeated), 0.0);
}

/// What one attention call saw of its pass.
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    branch: Option<Vec<usize>>,
    pass: PassKind,
    timestep: Option<f64>,
    rows: usize,
}

/// Records the context of every call of the layer it is installed on.
struct Recorder(Arc<Mutex<Vec<Seen>>>);

impl AttnProcessor for Recorder {
    fn output(&self, call: &AttnCall, _h: &Tensor, out: Tensor) -> anodiff::Result<Tensor> {
        self.0.lock().unwrap().push(Seen {
            branch: call.ctx.branch.clone(),
            pass: call.ctx.pass,
            timestep: call.ctx.timestep,
            rows: out.dim(0)?,
        });
        Ok(out)
    }
}

#[test]
fn processors_see_the_cfg_row_layout_and_the_hook_runs_a_reference_pass() {
    let u = unet(9);
    let seen = Arc::new(Mutex::new(Vec::new()));
    // Only the first attention layer records, so one entry = one UNet pass.
    u.set_attn_processors(&mut |info| -> Arc<dyn AttnProcessor> {
        if info.index == 0 {
            Arc::new(Recorder(seen.clone()))
        } else {
            Arc::new(anodiff::sd::attention::DefaultProcessor)
        }
    });
    let latents = randn(1, &[3, 4, S, S]);
    let cond = Conditioning::guided(randn(2, &[3, TOKENS, 64]), randn(3, &[3, TOKENS, 64]));
    let extra = randn(4, &[3, 5, S, S]);
    let branch = vec![0, 1, 1];
    let mut s = sched(SchedulerKind::Pndm, 3);
    let timesteps = s.timesteps().to_vec();
    let start = 1;
    let mut hooked = Vec::new();
    let mut progress = Vec::new();
    {
        // BCM-style: before each main pass, a reference pass of the same input.
        let mut hook = |i: &StepInput<'_>| -> anodiff::Result<()> {
            hooked.push((i.step, i.index, i.timestep, i.model_input.dims().to_vec()));
            assert_eq!(i.encoder_hidden_states.dim(0)?, 6);
            assert_eq!(i.timesteps.dims(), &[6]);
            let ctx = ForwardCtx {
                pass: PassKind::Reference,
                ..i.ctx.clone()
            };
            u.forward(i.model_input, i.timesteps, i.encoder_hidden_states, &ctx)?;
            Ok(())
        };
        let mut report = |done: usize, total: usize| progress.push((done, total));
        let o = DenoiseOptions {
            extra: Some(&extra),
            ctx: ForwardCtx {
                branch: Some(branch.clone()),
                ..Default::default()
            },
            start,
            guidance: 3.0,
            hook: Some(&mut hook),
            progress: Some(&mut report),
            ..DenoiseOptions::new(&cond)
        };
        denoise(&u, s.as_mut(), latents.clone(), o, &mut SeededNoise::new(0)).unwrap();
    }
    let run = &timesteps[start..];
    assert_eq!(hooked.len(), run.len());
    for (k, (step, index, t, dims)) in hooked.iter().enumerate() {
        assert_eq!((*step, *index, *t), (k, start + k, run[k]));
        assert_eq!(dims, &[6, 9, S, S], "UNet input: 2×3 rows, 4 + 5 channels");
    }
    let totals: Vec<_> = (1..=run.len()).map(|d| (d, run.len())).collect();
    assert_eq!(progress, totals);
    // Unconditional half first, then the conditional half, each in latent-row order.
    let doubled = Some(vec![0, 1, 1, 0, 1, 1]);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.len(),
        2 * run.len(),
        "one reference and one main pass per step"
    );
    for (k, &t) in run.iter().enumerate() {
        for (j, pass) in [PassKind::Reference, PassKind::Main]
            .into_iter()
            .enumerate()
        {
            let want = Seen {
                branch: doubled.clone(),
                pass,
                timestep: Some(t),
                rows: 6,
            };
            assert_eq!(seen[2 * k + j], want, "step {k}");
        }
    }

    // Without guidance the branch vector is passed as given.
    seen_without_cfg(&u, &latents, &cond, &extra, &branch);
}

fn seen_without_cfg(
    u: &UNet2DConditionModel,
    latents: &Tensor,
    cond: &Conditioning,
    extra: &Tensor,
    branch: &[usize],
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    u.set_attn_processors(&mut |_| Arc::new(Recorder(seen.clone())));
    let mut s = sched(SchedulerKind::Ddim, 2);
    let o = DenoiseOptions {
        extra: Some(extra),
        ctx: ForwardCtx {
            branch: Some(branch.to_vec()),
            ..Default::default()
        },
        ..DenoiseOptions::new(cond)
    };
    denoise(u, s.as_mut(), latents.clone(), o, &mut SeededNoise::new(0)).unwrap();
    let seen = seen.lock().unwrap();
    assert!(!seen.is_empty());
    for v in seen.iter() {
        assert_eq!(v.branch.as_deref(), Some(branch));
        assert_eq!((v.pass, v.rows), (PassKind::Main, 3));
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let u = unet(4);
    let latents = randn(1, &[2, 4, S, S]);
    let cond = Conditioning::new(randn(2, &[2, TOKENS, 64]));
    let err = |o: DenoiseOptions<'_>, latents: &Tensor, start_steps: usize| {
        let mut s = sched(SchedulerKind::Ddim, start_steps);
        denoise(&u, s.as_mut(), latents.clone(), o, &mut SeededNoise::new(0))
            .unwrap_err()
            .to_string()
    };
    let e = err(
        DenoiseOptions {
            guidance: 7.5,
            ..DenoiseOptions::new(&cond)
        },
        &latents,
        2,
    );
    assert!(e.contains("unconditional embeddings"), "{e}");
    let e = err(
        DenoiseOptions {
            ctx: ForwardCtx {
                branch: Some(vec![0, 1, 0]),
                ..Default::default()
            },
            ..DenoiseOptions::new(&cond)
        },
        &latents,
        2,
    );
    assert!(e.contains("ctx.branch has 3 entries for 2"), "{e}");
    let three = Conditioning::new(randn(2, &[3, TOKENS, 64]));
    let e = err(DenoiseOptions::new(&three), &latents, 2);
    assert!(
        e.contains("conditioning.cond") && e.contains("2 rows"),
        "{e}"
    );
    let e = err(
        DenoiseOptions {
            start: 5,
            ..DenoiseOptions::new(&cond)
        },
        &latents,
        2,
    );
    assert!(e.contains("start index 5"), "{e}");
    let extra = randn(4, &[2, 5, S, S]);
    let e = err(
        DenoiseOptions {
            extra: Some(&extra),
            ..DenoiseOptions::new(&cond)
        },
        &latents,
        2,
    );
    assert!(e.contains("4 latent + 5 extra channels"), "{e}");
    let e = err(DenoiseOptions::new(&cond), &randn(1, &[4, S, S]), 2);
    assert!(e.contains("[B, C, h, w]"), "{e}");
    // A failing hook stops the loop with its own error.
    let mut hook = |_: &StepInput<'_>| -> anodiff::Result<()> {
        Err(anodiff::Error::invalid("reference image missing"))
    };
    let e = err(
        DenoiseOptions {
            hook: Some(&mut hook),
            ..DenoiseOptions::new(&cond)
        },
        &latents,
        2,
    );
    assert!(e.contains("reference image missing"), "{e}");
}

#[test]
fn pipelines_default_to_the_models_own_size() {
    let dev = Device::Cpu;
    let tiny = Preset::by_name("tiny").unwrap();
    let sd = StableDiffusion::from_preset(&tiny, 0, &dev).unwrap();
    // UNet sample_size 16 × VAE factor 2.
    assert_eq!(sd.vae_scale_factor(), tiny.vae.downscale_factor());
    assert_eq!(sd.native_size(), 32);
    let o = SampleOptions {
        prompt: "a scratch".into(),
        steps: 2,
        guidance: 1.0,
        ..Default::default()
    };
    assert_eq!(o.size_for(&sd), (32, 32));
    let x = sd
        .txt2img(&o, &mut SeededNoise::new(0), &mut |_, _| {})
        .unwrap();
    assert_eq!(x.dims(), &[1, 4, 16, 16]);
    let wide = SampleOptions {
        width: Some(48),
        ..o.clone()
    };
    assert_eq!(wide.size_for(&sd), (48, 32));

    // A pixel-space inpainting model (VAE factor 1) takes sizes that are not multiples of 8, and
    // its default size is the image's.
    let px = Preset::by_name("tiny-pixel").unwrap();
    let px = Preset {
        unet: UNetConfig {
            in_channels: 7,
            ..px.unet
        },
        ..px
    };
    let sd = StableDiffusion::from_preset(&px, 0, &dev).unwrap();
    assert_eq!(sd.vae_scale_factor(), 1);
    let img = randn(5, &[1, 3, 12, 20]).clamp(-1f32, 1f32).unwrap();
    let mask = Tensor::ones((1, 1, 12, 20), candle_core::DType::F32, &dev).unwrap();
    for strength in [1.0, 0.5] {
        let x = sd
            .inpaint(
                &o,
                &img,
                &mask,
                strength,
                &mut SeededNoise::new(0),
                &mut |_, _| {},
            )
            .unwrap();
        assert_eq!(x.dims(), &[1, 3, 12, 20]);
    }
    // A strength that keeps no step is refused (diffusers raises too).
    let e = sd
        .inpaint(
            &o,
            &img,
            &mask,
            0.25,
            &mut SeededNoise::new(0),
            &mut |_, _| {},
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("keeps none of the 2 steps"), "{e}");
}

/// Delegates to a real scheduler and records whether each model output reaching `step` still
/// carries an autograd graph.
struct Recording {
    inner: Box<dyn Scheduler>,
    tracked: Arc<Mutex<Vec<bool>>>,
}

impl Scheduler for Recording {
    fn set_timesteps(&mut self, steps: usize) -> anodiff::Result<()> {
        self.inner.set_timesteps(steps)
    }
    fn timesteps(&self) -> &[f64] {
        self.inner.timesteps()
    }
    fn init_noise_sigma(&self) -> f64 {
        self.inner.init_noise_sigma()
    }
    fn scale_model_input(&self, sample: &Tensor, t: f64) -> anodiff::Result<Tensor> {
        self.inner.scale_model_input(sample, t)
    }
    fn step(
        &mut self,
        model_output: &Tensor,
        t: f64,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> anodiff::Result<Tensor> {
        self.tracked.lock().unwrap().push(model_output.track_op());
        self.inner.step(model_output, t, sample, noise)
    }
    fn add_noise(&self, original: &Tensor, noise: &Tensor, t: &[usize]) -> anodiff::Result<Tensor> {
        self.inner.add_noise(original, noise, t)
    }
    fn config(&self) -> &SchedulerConfig {
        self.inner.config()
    }
}

/// With trainable weights the UNet's output carries the graph of its whole forward; PNDM keeps
/// four past outputs, so without a detach sampling held that many forwards' activations (an MTD
/// DualAnoDiff generation reached 18 GB and was OOM-killed). Every output the scheduler sees must
/// be graph-free, and the result must not change.
#[test]
fn sampling_with_trainable_weights_keeps_no_autograd_graph() {
    let cfg = Preset::by_name("tiny").unwrap().unet;
    let dev = Device::Cpu;
    let trainable =
        UNet2DConditionModel::new(&cfg, &Params::fresh(3, &dev).with_trainable(|_| true)).unwrap();
    let frozen = UNet2DConditionModel::new(&cfg, &Params::fresh(3, &dev)).unwrap();
    let lat = randn(1, &[1, 4, S, S]);
    let emb = randn(2, &[1, TOKENS, 64]);
    let t = Tensor::full(500f32, 1, &dev).unwrap();
    // The premise: a plain forward through trainable weights is tracked.
    let direct = trainable
        .forward(&lat, &t, &emb, &ForwardCtx::default())
        .unwrap();
    assert!(
        direct.track_op(),
        "a trainable UNet's output should be tracked"
    );

    let cond = Conditioning::guided(emb.clone(), randn(3, &[1, TOKENS, 64]));
    let mut outs = Vec::new();
    for u in [&trainable, &frozen] {
        let tracked = Arc::new(Mutex::new(Vec::new()));
        let mut s = Recording {
            inner: sched(SchedulerKind::Pndm, 4),
            tracked: tracked.clone(),
        };
        let o = DenoiseOptions {
            guidance: 3.0,
            ..DenoiseOptions::new(&cond)
        };
        let out = denoise(u, &mut s, lat.clone(), o, &mut SeededNoise::new(4)).unwrap();
        let seen = tracked.lock().unwrap().clone();
        assert!(seen.len() >= 4, "PNDM stepped {} times", seen.len());
        assert!(
            seen.iter().all(|&t| !t),
            "the scheduler saw tracked model outputs: {seen:?}"
        );
        assert!(!out.track_op());
        outs.push(out);
    }
    // Same weights (same seed), so detaching must not change a single value.
    let d = max_diff(&outs[0], &outs[1]);
    assert_eq!(d, 0.0, "trainable and frozen weights sampled differently");
}
