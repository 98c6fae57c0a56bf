//! The `anodiff` command-line tool: parses arguments, calls the library, shows progress.

mod commands;
mod model;
mod progress;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "anodiff",
    version,
    about = "Few-shot defect image generation (DualAnoDiff) and detection (AnomalySD) on Stable-Diffusion-class models",
    long_about = "anodiff runs Stable Diffusion 1.x/2.x models from diffusers folders on the CPU, in pure Rust.\n\
                  Model folders use the diffusers layout (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/) \
                  with *.safetensors weights (f32, f16 or bf16)."
)]
struct Cli {
    /// Worker threads for the numeric kernels (default: all cores; also read from RAYON_NUM_THREADS).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Offline end-to-end run: synthetic dataset, pretraining from scratch, samples; writes demo-out/report.html.
    Demo(commands::demo::Args),
    /// Train DualAnoDiff (two LoRA branches + SAIM + BCM) on the few training defects of one type.
    DualTrain(Box<commands::dual_train::Args>),
    /// Generate defect images with pixel-aligned masks from a dual-train run.
    DualGenerate(commands::dual_generate::Args),
    /// Write report.html for a dual-train run and its generated pairs (grids, rejection, mask alignment, benchmarks).
    DualReport(commands::dual_report::Args),
    /// AnomalySD anomaly maps and scores: over a split's evaluation images (for `anodiff eval`) or a folder of images.
    Detect(commands::detect::Args),
    /// Train AnomalySD's one inpainting model on the normal images of several categories (full or LoRA).
    DetectTrain(commands::detect_train::Args),
    /// Train a pixel-space preset (UNet + text encoder) from scratch on an MVTec-layout category.
    Pretrain(commands::pretrain::Args),
    /// List the built-in model configurations with parameter counts.
    Presets(commands::presets::Args),
    /// Time model components with random weights (no files needed).
    Bench(commands::bench::Args),
    /// Fine-tune a LoRA on a folder of images with one prompt (DreamBooth-style).
    LoraTrain(commands::lora_train::Args),
    /// Generate an image from a text prompt with a 4-channel Stable Diffusion model.
    Txt2img(commands::txt2img::Args),
    /// Repaint the white region of a mask with a 9-channel inpainting model.
    Inpaint(commands::inpaint::Args),
    /// Write the few-shot split (first ceil(n/3) defects per type train, rest eval) as JSON.
    Split(commands::split::Args),
    /// Write the procedural synthetic defect dataset (MVTec layout).
    SynthDataset(commands::synth_dataset::Args),
    /// Validate an MVTec-layout dataset and list every problem file.
    DatasetCheck(commands::dataset_check::Args),
    /// Preview a foreground (object) mask estimator on a dataset: rows of image | mask | background.
    Foreground(commands::foreground::Args),
    /// Score anomaly predictions against a split: image/pixel AUROC, AP, F1-max, AU-PRO.
    Eval(commands::eval::Args),
    /// Write report.html for an evaluation run: metrics per defect type, input / ground truth / anomaly map.
    Report(commands::report::Args),
}

fn main() {
    anodiff::runtime::quiet_broken_pipe();
    anodiff::runtime::tune_allocator();
    let cli = Cli::parse();
    // Must happen before the first parallel op creates the global thread pool.
    anodiff::runtime::set_thread_count(cli.threads);
    let result = anodiff::runtime::run_on_workers(|| run(cli.command));
    if let Err(e) = result {
        eprintln!("error: {}", error_chain(&e));
        std::process::exit(1);
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Demo(a) => commands::demo::run(a),
        Command::Presets(a) => commands::presets::run(a),
        Command::Detect(a) => commands::detect::run(a),
        Command::DetectTrain(a) => commands::detect_train::run(a),
        Command::Pretrain(a) => commands::pretrain::run(a),
        Command::DualTrain(a) => commands::dual_train::run(*a),
        Command::DualGenerate(a) => commands::dual_generate::run(a),
        Command::DualReport(a) => commands::dual_report::run(a),
        Command::Bench(a) => commands::bench::run(a),
        Command::LoraTrain(a) => commands::lora_train::run(a),
        Command::Txt2img(a) => commands::txt2img::run(a),
        Command::Inpaint(a) => commands::inpaint::run(a),
        Command::Split(a) => commands::split::run(a),
        Command::SynthDataset(a) => commands::synth_dataset::run(a),
        Command::DatasetCheck(a) => commands::dataset_check::run(a),
        Command::Foreground(a) => commands::foreground::run(a),
        Command::Eval(a) => commands::eval::run(a),
        Command::Report(a) => commands::report::run(a),
    }
}

/// The error and its causes joined by ": ", skipping a cause whose text the message before it
/// already contains (library errors embed their source, e.g. "file: No such file").
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
