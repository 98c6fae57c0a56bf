#!/usr/bin/env python3
"""PyTorch reference timings for anodiff's op benchmarks (same shapes/keys as
crates/anodiff/src/bench/ops.rs). Usage: /work/venv/bin/python tools/bench_reference.py ops [--json]
Runs on 2 threads, reports the median of N runs after one warm-up."""
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F


def median_ms(fn, iters=5):
    fn()
    ts = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)


def ops(iters):
    torch.manual_seed(0)
    x = torch.randn(2, 320, 64, 64, requires_grad=True)
    w = (torch.randn(320, 320, 3, 3) * 0.02).requires_grad_()
    b = torch.randn(320, requires_grad=True)
    r = torch.randn(2, 320, 64, 64)
    gamma = torch.randn(320, requires_grad=True)
    beta = torch.randn(320, requires_grad=True)
    q, k, v = (torch.randn(1, 16, 1024, 40) for _ in range(3))
    scale = 40 ** -0.5

    def conv_fwd():
        with torch.no_grad():
            F.conv2d(x, w, b, padding=1)

    def conv_fwd_bwd():
        (F.conv2d(x, w, b, padding=1) * r).sum().backward()

    def gn():
        (F.silu(F.group_norm(x, 32, gamma, beta, 1e-5)) * r).sum().backward()

    def attn():
        with torch.no_grad():
            F.scaled_dot_product_attention(q, k, v)

    qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
    ro = torch.randn(1, 16, 1024, 40)

    def attn_fwd_bwd():
        (F.scaled_dot_product_attention(qg, kg, vg) * ro).sum().backward()

    def attn_unfused():
        with torch.no_grad():
            torch.softmax((q @ k.transpose(-1, -2)) * scale, dim=-1) @ v

    return {
        "conv_fwd": median_ms(conv_fwd, iters),
        "conv_fwd_bwd": median_ms(conv_fwd_bwd, iters),
        "groupnorm_silu_fwd_bwd": median_ms(gn, iters),
        "attention_fwd": median_ms(attn, iters),
        "attention_unfused_fwd": median_ms(attn_unfused, iters),
        "attention_fwd_bwd": median_ms(attn_fwd_bwd, iters),
    }


def main():
    if len(sys.argv) < 2 or sys.argv[1] != "ops":
        sys.exit("usage: bench_reference.py ops [--json] [--iters N]")
    torch.set_num_threads(2)
    iters = int(sys.argv[sys.argv.index("--iters") + 1]) if "--iters" in sys.argv else 7
    res = ops(iters)
    if "--json" in sys.argv:
        print(json.dumps(res))
    else:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {iters}")
        for k, v in res.items():
            print(f"{k:<24} {v:10.1f} ms")


if __name__ == "__main__":
    main()
