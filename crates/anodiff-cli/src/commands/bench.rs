//! `anodiff bench`: timings with random weights (no files), printed as a table or as one JSON
//! object whose keys match `tools/bench_reference.py` for side-by-side comparison.

use anodiff::bench::unet::{bench_unet, UnetBenchOptions};
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
    /// The downstream-detector benchmark (METHODS.md A.7): train the localisation network on an
    /// anomaly source for several seeds, predict, evaluate; mean ± std of all metrics.
    Localisation(super::bench_localisation::Args),
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
