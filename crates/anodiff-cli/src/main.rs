//! The `anodiff` command-line tool: parses arguments, calls the library, shows progress.

fn main() {
    println!("anodiff {}", env!("CARGO_PKG_VERSION"));
}
