//! One file per subcommand.

pub mod demo;
pub mod inpaint;
pub mod sample;
pub mod txt2img;
