//! One file per subcommand.

pub mod bench;
pub mod bench_detection;
pub mod bench_localisation;
pub mod dataset_check;
pub mod demo;
pub mod detect;
pub mod detect_train;
pub mod dual_generate;
pub mod dual_report;
pub mod dual_train;
pub mod eval;
pub mod foreground;
pub mod inpaint;
pub mod lora_train;
pub mod presets;
pub mod pretrain;
pub mod report;
pub mod sample;
pub mod split;
pub mod synth_dataset;
pub mod txt2img;
