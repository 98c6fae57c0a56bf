//! One file per subcommand.

pub mod bench;
pub mod demo;
pub mod inpaint;
pub mod lora_train;
pub mod presets;
pub mod sample;
pub mod txt2img;
