//! Helpers shared by the CLI integration tests.

use std::process::{Command, Output};

/// Runs the built `anodiff` binary with `args`.
pub fn anodiff(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_anodiff"))
        .args(args)
        .output()
        .expect("run anodiff")
}

/// stdout followed by stderr, for assertions on messages wherever they were printed.
#[allow(dead_code)] // not every test file uses it
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
