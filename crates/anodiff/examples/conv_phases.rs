//! Median time of each conv piece at the `bench ops` shape: forward, input gradient only, weight
//! gradient only, for im2col and Winograd. `cargo run --release --example conv_phases`.
use anodiff::bench::ops::median_ms;
use anodiff::kernels::conv2d::conv2d_with;
use anodiff::kernels::winograd::Tile;
use candle_core::{Device, Tensor, Var};

fn main() -> candle_core::Result<()> {
    anodiff::runtime::tune_allocator();
    anodiff::runtime::set_thread_count(None);
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (2, 320, 64, 64), &dev)?;
    let w = (Tensor::randn(0f32, 1.0, (320, 320, 3, 3), &dev)? * 0.02)?;
    let r = Tensor::randn(0f32, 1.0, (2, 320, 64, 64), &dev)?;
    let (xv, wv) = (Var::from_tensor(&x)?, Var::from_tensor(&w)?);
    {
        use anodiff::kernels::winograd::{conv, transform_weights, Plan};
        let (xs, ws) = (
            x.flatten_all()?.to_vec1::<f32>()?,
            w.flatten_all()?.to_vec1::<f32>()?,
        );
        let p = Plan {
            n: 2,
            c: 320,
            h: 64,
            w: 64,
            o: 320,
            pad: 1,
        };
        for tile in [Tile::F2, Tile::F4] {
            let tw = median_ms(7, || {
                transform_weights(&ws, 320, 320, false, tile);
                Ok(())
            })?;
            let u = transform_weights(&ws, 320, 320, false, tile);
            let c = median_ms(7, || {
                conv(&p, &xs, &u, tile);
                Ok(())
            })?;
            println!("raw winograd {tile:?}: weights {tw:.1} ms, conv {c:.1} ms");
        }
    }
    for wino in [None, Some(Tile::F2), Some(Tile::F4)] {
        let fwd = median_ms(7, || {
            conv2d_with(&x, &w, None, 1, 1, 2 << 20, wino).map(drop)
        })?;
        let dx = median_ms(7, || {
            let y = conv2d_with(&xv, &w, None, 1, 1, 2 << 20, wino)?;
            (y * &r)?.sum_all()?.backward().map(drop)
        })?;
        let dw = median_ms(7, || {
            let y = conv2d_with(&x, &wv, None, 1, 1, 2 << 20, wino)?;
            (y * &r)?.sum_all()?.backward().map(drop)
        })?;
        let loss = median_ms(7, || {
            let y = xv.affine(1.0, 0.0)?;
            (y * &r)?.sum_all()?.backward().map(drop)
        })?;
        println!("winograd={wino:?}: fwd {fwd:.1} ms, fwd+dx {dx:.1} ms, fwd+dw {dw:.1} ms, autograd overhead (affine fwd+bwd) {loss:.1} ms");
    }
    Ok(())
}
