//! One file per subcommand.

pub mod inpaint;
pub mod sample;
pub mod txt2img;
