#!/usr/bin/env python3
"""PyTorch reference timings for anodiff's op benchmarks (same shapes/keys as
crates/anodiff/src/bench/ops.rs). Usage: python tools/bench_reference.py ops [--json] [--iters N]
       python tools/bench_reference.py unet --preset sd15 --size 256 --batch 2 [--train-lora] [--json]
(unet: diffusers 0.42.1 UNet2DConditionModel with random weights; --train-lora adds peft 0.21.2 LoRA)
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


def bench_unet(args):
    """SD-1.5 UNet (diffusers, random weights): forward, and with --train-lora one LoRA training step
    (peft rank 32 on to_q/to_k/to_v/to_out.0, UNet frozen, AdamW, MSE on the noise prediction)."""
    import resource
    from diffusers import UNet2DConditionModel
    cfg = dict(sample_size=64, in_channels=4, out_channels=4, down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
               up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, block_out_channels=[320, 640, 1280, 1280],
               layers_per_block=2, cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)
    if args.preset != "sd15":
        sys.exit("bench_reference.py unet: only --preset sd15 is implemented")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**cfg)
    lat = args.size // 8
    x = torch.randn(args.batch, 4, lat, lat)
    ehs = torch.randn(args.batch, 77, 768)
    t = torch.full((args.batch,), 500.0)
    out = {"preset": args.preset, "size": args.size, "batch": args.batch, "threads": torch.get_num_threads()}
    if args.train_lora:
        from peft import LoraConfig
        unet.requires_grad_(False)
        unet.add_adapter(LoraConfig(r=32, lora_alpha=32, init_lora_weights="gaussian",
                                    target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
        params = [p for p in unet.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-4)
        target = torch.randn_like(x)

        def step():
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.mse_loss(unet(x, t, encoder_hidden_states=ehs).sample, target)
            loss.backward()
            opt.step()
        out["lora_params"] = sum(p.numel() for p in params)
        out["lora_step"] = median_ms(step, args.repeats)
    else:
        unet.eval()
        with torch.no_grad():
            out["unet_fwd"] = median_ms(lambda: unet(x, t, encoder_hidden_states=ehs), args.repeats)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return out


def main():
    import argparse
    ap = argparse.ArgumentParser(description="PyTorch reference timings (same keys as `anodiff bench`).")
    ap.add_argument("what", choices=["ops", "unet"])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--iters", type=int, default=7, help="ops: timed runs")
    ap.add_argument("--preset", default="sd15")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="unet: timed runs")
    ap.add_argument("--train-lora", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    iters = args.iters
    res = ops(iters) if args.what == "ops" else bench_unet(args)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        for k, v in res.items():
            print(f"{k:<24} {v}")


if __name__ == "__main__":
    main()
