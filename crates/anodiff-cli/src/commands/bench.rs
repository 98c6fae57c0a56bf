//! `anodiff bench`: timings with random weights (no files), printed as a table or as one JSON
//! object whose keys match `tools/bench_reference.py` for side-by-side comparison.

use anodiff::bench::dual::{bench_dual, DualBenchOptions};
use anodiff::bench::inpaint::{bench_inpaint, InpaintBenchOptions};
use anodiff::bench::small::{bench_small, SmallBenchOptions};
use anodiff::bench::unet::{bench_unet, UnetBenchOptions};
use anodiff::dual::DualConfig;
use anyhow::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    pub what: What,
}

#[derive(clap::Subcommand, Debug)]
pub enum What {
    /// The hot ops at SD-1.5 shapes (conv 3×3 320→320 on 2×64×64, GroupNorm+SiLU, attention
    /// 16×1024×40): our kernels and candle's own path.
    Ops(OpsArgs),
    /// One UNet forward of a preset at a given image size (median of --repeats runs).
    Unet(UnetArgs),
    /// One DualAnoDiff training step (VAE encode, text encoder + LoRA, BCM reference pass, main
    /// pass, MSE, backward, AdamW on LoRA sets, text LoRA, SAIM and BCM) with random weights.
    Dual(DualArgs),
    /// One denoising step of AnomalySD's partial inpainting (B grid-cell masks over one image,
    /// 9-channel UNet, guidance 1, DDIM) with random weights, plus the text encode and VAE encode /
    /// decode of such a call, each timed separately.
    Inpaint(InpaintArgs),
    /// Training steps (forward, backward, Adam) of the small networks CPU-scale work trains: the
    /// localisation net at 64 px / width 8 / batch 8 and 128 px / width 16 / batch 16, and the
    /// `small` preset's UNet (32 px, batch 8). Threads: the global --threads.
    Small(SmallArgs),
    /// The downstream-detector benchmark (METHODS.md A.7): train the localisation network on an
    /// anomaly source for several seeds, predict, evaluate; mean ± std of all metrics.
    Localisation(super::bench_localisation::Args),
    /// AnomalySD detection (METHODS.md B): detect with a detect-train run over datasets, shot
    /// counts and draws, with the single-branch ablations and the nearest-neighbour baseline;
    /// scored by the evaluation toolkit.
    Detection(super::bench_detection::Args),
}

#[derive(clap::Args, Debug)]
pub struct OpsArgs {
    /// Timed runs per op (median reported).
    #[arg(long, default_value_t = 7)]
    pub iters: usize,
    /// JSON of PyTorch timings (`tools/bench_reference.py ops --json`) to print alongside.
    #[arg(long)]
    pub torch: Option<std::path::PathBuf>,
    /// Print one JSON object of our median milliseconds.
    #[arg(long)]
    pub json: bool,
    /// Time only these ops (repeatable), e.g. `--only conv_fwd_bwd`.
    #[arg(long, value_name = "KEY")]
    pub only: Vec<String>,
    /// Skip candle's own path (slow; not needed for the PyTorch comparison).
    #[arg(long)]
    pub skip_candle: bool,
}

#[derive(clap::Args, Debug)]
pub struct UnetArgs {
    /// Model configuration (see `anodiff presets`).
    #[arg(long, default_value = "sd15")]
    pub preset: String,
    /// Image side in pixels.
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    #[arg(long, default_value_t = 2)]
    pub batch: usize,
    /// Timed runs after one warm-up.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Time a LoRA training step (rank 32 on all attention projections, UNet frozen) instead.
    #[arg(long)]
    pub train_lora: bool,
    /// Print one JSON object of median milliseconds.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct DualArgs {
    /// Model configuration (see `anodiff presets`).
    #[arg(long, default_value = "sd15")]
    pub preset: String,
    /// Image side in pixels.
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Training pairs per step (whole + part rows: twice as many UNet rows).
    #[arg(long, default_value_t = 2)]
    pub pairs: usize,
    /// Timed steps after one warm-up.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// LoRA rank (UNet sets and text encoder).
    #[arg(long, default_value_t = 32)]
    pub rank: usize,
    /// Hidden width of BCM's MLP.
    #[arg(long, default_value_t = 320)]
    pub bcm_hidden: usize,
    /// Turn BCM off (the "without BCM" ablation: no reference pass).
    #[arg(long)]
    pub no_bcm: bool,
    /// Turn SAIM off.
    #[arg(long)]
    pub no_saim: bool,
    /// No text-encoder LoRA.
    #[arg(long)]
    pub no_text_lora: bool,
    /// Print one JSON object of median milliseconds and parameter counts.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `anodiff bench small`.
#[derive(clap::Args, Debug)]
pub struct SmallArgs {
    /// Timed steps per network (median reported).
    #[arg(long, default_value_t = 25)]
    pub steps: usize,
    /// Untimed warm-up steps per network.
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// Time only these keys (repeatable): locnet64_step, locnet128_step, small_unet_step.
    #[arg(long, value_name = "KEY")]
    pub only: Vec<String>,
    /// Compute each batch as this many micro-batches side by side, one per core, gradients
    /// added (what `pretrain --micro-batches` does); must divide 8 and 16.
    #[arg(long, default_value_t = 1)]
    pub micro_batches: usize,
    /// Print one JSON object of median milliseconds (keys as `tools/bench_reference.py small`).
    #[arg(long)]
    pub json: bool,
}

fn run_small(a: SmallArgs) -> Result<()> {
    let o = SmallBenchOptions {
        steps: a.steps,
        warmup: a.warmup,
        only: a.only,
        micro_batches: a.micro_batches,
    };
    let quiet = a.json;
    let r = bench_small(&o, &mut |msg| {
        if !quiet {
            eprintln!("bench small: {msg}")
        }
    })?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "training steps, {} threads, median of {} (ms): locnet 64 px w8 b8 {}, locnet 128 px \
             w16 b16 {}, small UNet 32 px b8 {}; peak RSS {:.0} MiB",
            r.threads,
            r.repeats,
            fmt_ms(r.locnet64_step),
            fmt_ms(r.locnet128_step),
            fmt_ms(r.small_unet_step),
            r.peak_rss_mb
        );
    }
    Ok(())
}

fn fmt_ms(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.1}"))
}

/// Arguments of `anodiff bench inpaint`.
#[derive(clap::Args, Debug)]
pub struct InpaintArgs {
    /// Model configuration (see `anodiff presets`); a text-to-image preset is widened to its
    /// inpainting variant (9-channel UNet).
    #[arg(long, default_value = "sd15-inpaint")]
    pub preset: String,
    /// Image side in pixels.
    #[arg(long, default_value_t = 512)]
    pub size: usize,
    /// Masks (grid cells) inpainted in one batch.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Timed runs of each phase after one warm-up.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Skip the VAE encode / decode (latents drawn at random; only the step and text encode).
    #[arg(long)]
    pub no_vae: bool,
    /// Print one JSON object of median milliseconds.
    #[arg(long)]
    pub json: bool,
}

fn run_inpaint(a: InpaintArgs) -> Result<()> {
    let o = InpaintBenchOptions {
        preset: a.preset,
        size: a.size,
        batch: a.batch,
        repeats: a.repeats,
        vae: !a.no_vae,
    };
    let quiet = a.json;
    let r = bench_inpaint(&o, &mut |msg| {
        if !quiet {
            eprintln!("bench inpaint: {msg}")
        }
    })?;
    if a.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0} ms"));
        println!(
            "inpainting step, {} {}px, batch {}, {} threads (t = {}): median {:.0} ms over {} runs; \
             text encode {:.0} ms, VAE encode (1 + {} images) {}, VAE decode {}; peak RSS {:.0} MiB",
            r.preset,
            r.size,
            r.batch,
            r.threads,
            r.timestep,
            r.inpaint_step,
            r.repeats,
            r.text_encode,
            r.batch,
            ms(r.vae_encode),
            ms(r.vae_decode),
            r.peak_rss_mb
        );
    }
    Ok(())
}

fn run_dual(d: DualArgs) -> Result<()> {
    let o = DualBenchOptions {
        preset: d.preset,
        size: d.size,
        pairs: d.pairs,
        repeats: d.repeats,
        config: DualConfig {
            rank: d.rank,
            bcm_hidden: d.bcm_hidden,
            bcm: !d.no_bcm,
            saim: !d.no_saim,
            text_encoder_lora: !d.no_text_lora,
            ..Default::default()
        },
    };
    let quiet = d.json;
    let r = bench_dual(&o, &mut |msg| {
        if !quiet {
            eprintln!("bench dual: {msg}")
        }
    })?;
    if d.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        let m = |n: usize| n as f64 / 1e6;
        println!(
            "DualAnoDiff step, {} {}px, {} pairs, {} threads: median {:.0} ms over {} steps \
             (forward {:.0}, backward {:.0}, update {:.0}); peak RSS {:.0} MiB\n\
             trainable: UNet LoRA sets {:.2} M, text LoRA {:.2} M, SAIM {:.2} M, BCM {:.2} M",
            r.preset,
            r.size,
            r.pairs,
            r.threads,
            r.dual_step,
            r.repeats,
            r.dual_fwd,
            r.dual_bwd,
            r.dual_opt,
            r.peak_rss_mb,
            m(r.lora_params),
            m(r.text_lora_params),
            m(r.saim_params),
            m(r.bcm_params)
        );
    }
    Ok(())
}

pub fn run(a: Args) -> Result<()> {
    match a.what {
        What::Ops(o) => {
            let only: Vec<&str> = o.only.iter().map(String::as_str).collect();
            let rows = anodiff::bench::ops::run(o.iters, &only, !(o.skip_candle || o.json))?;
            if o.json {
                let m: serde_json::Map<String, serde_json::Value> = rows
                    .iter()
                    .map(|r| (r.key.to_string(), serde_json::json!(r.ours_ms)))
                    .collect();
                println!("{}", serde_json::Value::Object(m));
            } else {
                let torch = match &o.torch {
                    Some(p) => anodiff::bench::ops::read_reference(p)?,
                    None => Vec::new(),
                };
                print!("{}", anodiff::bench::ops::table(&rows, &torch));
            }
        }
        What::Localisation(l) => super::bench_localisation::run(l)?,
        What::Detection(d) => super::bench_detection::run(d)?,
        What::Dual(d) => run_dual(d)?,
        What::Inpaint(i) => run_inpaint(i)?,
        What::Small(s) => run_small(s)?,
        What::Unet(u) => {
            let o = UnetBenchOptions {
                preset: u.preset,
                size: u.size,
                batch: u.batch,
                repeats: u.repeats,
                train_lora: u.train_lora,
            };
            let quiet = u.json;
            let r = bench_unet(&o, &mut |msg| {
                if !quiet {
                    eprintln!("bench unet: {msg}")
                }
            })?;
            if u.json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                let (what, ms) = match (r.unet_fwd, r.lora_step) {
                    (Some(f), _) => ("forward", f),
                    (_, Some(l)) => ("LoRA step", l),
                    _ => ("?", f64::NAN),
                };
                println!(
                    "UNet {} ({:.0} M params), {}px batch {}: {what} median {ms:.0} ms over {} runs; peak RSS {:.0} MiB",
                    r.preset,
                    r.parameters as f64 / 1e6,
                    r.size,
                    r.batch,
                    r.repeats,
                    r.peak_rss_mb
                );
            }
        }
    }
    Ok(())
}
