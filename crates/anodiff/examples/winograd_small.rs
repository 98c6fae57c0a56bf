//! Fastest-of-N time of the raw Winograd F(4,3) pieces (forward conv, weight gradient) at the
//! small networks' layer shapes (`bench small`), for A/B work on the transforms where whole
//! training steps are too noisy. `cargo run --release --example winograd_small [threads]`.
//!
//! Times are process CPU milliseconds (all threads), not wall time, so a background job sharing
//! the cores inflates them far less; with one thread they are the work itself.
use anodiff::kernels::winograd::{conv, transform_weights, weight_grad, Plan, Tile};

/// CPU time used by this process so far, in milliseconds.
fn cpu_ms() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 * 1e-6
}

fn fastest(n: usize, mut f: impl FnMut()) -> f64 {
    (0..n)
        .map(|_| {
            let t = cpu_ms();
            f();
            cpu_ms() - t
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    anodiff::runtime::tune_allocator();
    anodiff::runtime::set_thread_count(std::env::args().nth(1).and_then(|a| a.parse().ok()));
    anodiff::runtime::run_on_workers(|| {
        // (batch, in, side, out): locnet128 top level, locnet64 top level, the small UNet's 32 px.
        for (n, c, s, o) in [
            (16, 16, 128, 16),
            (8, 8, 64, 8),
            (8, 64, 16, 64),
            (8, 32, 32, 32),
        ] {
            let p = Plan {
                n,
                c,
                h: s,
                w: s,
                o,
                pad: 1,
            };
            let x: Vec<f32> = (0..n * c * s * s)
                .map(|i| ((i * 7919) % 997) as f32 / 997.0)
                .collect();
            let w: Vec<f32> = (0..o * c * 9)
                .map(|i| ((i * 31) % 17) as f32 / 17.0)
                .collect();
            let dy: Vec<f32> = (0..n * o * s * s)
                .map(|i| ((i * 13) % 101) as f32 / 101.0)
                .collect();
            let u = transform_weights(&w, o, c, false, Tile::F4);
            let fwd = fastest(15, || {
                std::hint::black_box(conv(&p, &x, &u, Tile::F4));
            });
            let wg = fastest(15, || {
                std::hint::black_box(weight_grad(&p, &x, &dy, Tile::F4));
            });
            println!("n{n} c{c} {s}px o{o}: conv {fwd:.2} ms, weight_grad {wg:.2} ms");
        }
    });
}
