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
    /// One UNet forward of a preset at a given image size (median of --repeats runs).
    Unet(UnetArgs),
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
    /// Print one JSON object of median milliseconds.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: Args) -> Result<()> {
    match a.what {
        What::Unet(u) => {
            let o = UnetBenchOptions {
                preset: u.preset,
                size: u.size,
                batch: u.batch,
                repeats: u.repeats,
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
                println!(
                    "UNet {} ({:.0} M params), {}px batch {}: forward median {:.0} ms over {} runs; peak RSS {:.0} MiB",
                    r.preset,
                    r.parameters as f64 / 1e6,
                    r.size,
                    r.batch,
                    r.unet_fwd,
                    r.repeats,
                    r.peak_rss_mb
                );
            }
        }
    }
    Ok(())
}
