//! `cargo run --release -p anodiff --example bench_ops -- [iters] [torch.json]`: ours vs candle
//! (and PyTorch when `tools/bench_reference.py ops --json` output is given) for the hot ops.

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let iters = args.first().and_then(|s| s.parse().ok()).unwrap_or(5);
    let torch = match args.get(1) {
        Some(p) => anodiff::bench::ops::read_reference(std::path::Path::new(p))?,
        None => Vec::new(),
    };
    let rows = anodiff::bench::ops::run(iters, &[], true)?;
    print!("{}", anodiff::bench::ops::table(&rows, &torch));
    Ok(())
}
