#!/usr/bin/env python3
"""PyTorch reference timings for anodiff's benchmarks (same shapes/keys as
crates/anodiff/src/bench/). Usage: python tools/bench_reference.py ops [--json] [--iters N]
       python tools/bench_reference.py unet --preset sd15 --size 256 --batch 2 [--train-lora] [--json]
       python tools/bench_reference.py dual --preset sd15 --size 256 --pairs 2 [--json]
       python tools/bench_reference.py inpaint --preset sd15-inpaint --size 512 --batch 4 [--no-vae] [--json]
       python tools/bench_reference.py small [--steps 25] [--warmup 5] [--only KEY] [--json]
(unet: diffusers 0.42.1 UNet2DConditionModel with random weights; --train-lora adds peft 0.21.2 LoRA;
dual: one DualAnoDiff training step on our reference model, tools/parity/dual_reference.py;
inpaint: one AnomalySD partial-inpainting step of a batch of grid-cell masks, 9-channel UNet + DDIM;
small: training steps of the localisation net and of the `small` preset's UNet, crates/anodiff/src/bench/small.rs)
Runs on 2 threads, reports the median of N runs after one warm-up."""
import json
import os
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


# SD-1.5 shapes (diffusers / transformers configs of runwayml/stable-diffusion-v1-5).
SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                 up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3, block_out_channels=[320, 640, 1280, 1280],
                 layers_per_block=2, cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)
SD15_VAE = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
                latent_channels=4, norm_num_groups=32, sample_size=512, scaling_factor=0.18215)
SD15_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)


def bench_unet(args):
    """SD-1.5 UNet (diffusers, random weights): forward, and with --train-lora one LoRA training step
    (peft rank 32 on to_q/to_k/to_v/to_out.0, UNet frozen, AdamW, MSE on the noise prediction)."""
    import resource
    from diffusers import UNet2DConditionModel
    if args.preset != "sd15":
        sys.exit("bench_reference.py unet: only --preset sd15 is implemented")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15_UNET)
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


def bench_dual(args):
    """One DualAnoDiff training step at SD-1.5 size, as `anodiff bench dual` (crates/anodiff/src/bench/dual.rs)
    and DualLoss::loss run it: random whole / part / background images -> frozen VAE encode (posterior mean x
    0.18215, no gradient) -> prompts through the CLIP text encoder with its rank-32 LoRA -> BCM reference pass
    (background latents noised to each pair's timestep, whole prompt) -> main pass over [whole_0, part_0, ...]
    -> MSE to the noise -> backward -> clip the global norm at 1.0 -> AdamW (torch defaults, lr 1e-4) on both
    UNet LoRA sets, the text LoRA, SAIM and BCM. The model is tools/parity/dual_reference.py (the definition the
    parity tests match) with SDPA attention, on diffusers / transformers random-weight SD-1.5 modules."""
    import resource
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "parity"))
    from dual_reference import State, install_text_lora, install_unet
    if args.preset != "sd15":
        sys.exit("bench_reference.py dual: only --preset sd15 is implemented")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15_UNET)
    unet_params = sum(p.numel() for p in unet.parameters())
    vae = AutoencoderKL(**SD15_VAE).eval()
    te = CLIPTextModel(CLIPTextConfig(**SD15_TEXT))
    for m in (unet, vae, te):
        m.requires_grad_(False)
    state = State()
    state.fusion, state.saim = ("paper" if args.bcm else None), args.saim
    procs = install_unet(unet, state, args.rank, args.bcm_hidden, 0.0, sdpa=True)
    te_lora = install_text_lora(te, args.rank) if args.text_lora else {}
    if not args.bcm:
        for p in procs.values():
            p.bcm = None
    # Training starts from LoRA up = 0 (values do not change the timings; this keeps them finite).
    with torch.no_grad():
        for l in [l for p in procs.values() for l in p.lora.values()]:
            for u in l.up:
                u.zero_()
        for l in te_lora.values():
            l.up.zero_()

    def count(mods):
        return sum(p.numel() for m in mods for p in m.parameters())
    lora_params = count(l for p in procs.values() for l in p.lora.values())
    saim_params = count(p.saim for p in procs.values()) if args.saim else 0
    bcm_params = count(p.bcm for p in procs.values() if p.bcm is not None)
    text_lora_params = sum(l.down.numel() + l.up.numel() for l in te_lora.values())
    params = [p for proc in procs.values() for m in [*proc.lora.values(), proc.saim if args.saim else None, proc.bcm]
              if m is not None for p in m.parameters()]
    params += [p for l in te_lora.values() for p in (l.down, l.up)]
    opt = torch.optim.AdamW(params, lr=1e-4)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    n, size = args.pairs, args.size
    whole = torch.rand(n, 3, size, size) * 2 - 1
    part = whole * (torch.rand(n, 1, size, size) >= 0.5).float()
    background = torch.rand(n, 3, size, size) * 2 - 1
    # Token ids as the CLIP tokenizer pads them (start, a few tokens, end repeated to 77).
    ids = [[49406, *toks, *[49407] * (76 - len(toks))] for toks in ([320, 7, 593, 21, 1124], [21, 1124])]
    ids = torch.tensor(ids)

    def encode(x):
        with torch.no_grad():
            return vae.encode(x).latent_dist.mean * vae.config.scaling_factor

    def step():
        t0 = time.perf_counter()
        w, p = encode(whole), encode(part)
        x0 = torch.stack([w, p], 1).reshape(2 * n, *w.shape[1:])
        noise = torch.randn_like(x0)
        t_pairs = torch.randint(0, 1000, (n,))
        t_rows = t_pairs.repeat_interleave(2)
        noisy = sched.add_noise(x0, noise, t_rows)
        emb = te(ids).last_hidden_state
        emb_rows = emb[[0, 1] * n]
        state.refs = {}
        if args.bcm:
            bg = encode(background)
            ref = sched.add_noise(bg, torch.randn_like(bg), t_pairs)
            state.kind, state.branch = "reference", [0] * n
            unet(ref, t_pairs, encoder_hidden_states=emb[:1].repeat(n, 1, 1))
        state.kind, state.branch = "main", [0, 1] * n
        pred = unet(noisy, t_rows, encoder_hidden_states=emb_rows).sample
        loss = F.mse_loss(pred, noise)
        if not torch.isfinite(loss).item():
            sys.exit(f"bench_reference.py dual: loss is {loss.item()}")
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        state.refs = {}
        t3 = time.perf_counter()
        return [(b - a) * 1e3 for a, b in ((t0, t1), (t1, t2), (t2, t3))]

    step()
    runs = [step() for _ in range(max(args.repeats, 1))]
    med = lambda xs: statistics.median(xs)
    return {"preset": args.preset, "size": size, "pairs": n, "repeats": len(runs), "threads": torch.get_num_threads(),
            "parameters": unet_params,
            "dual_step": med([sum(r) for r in runs]), "dual_fwd": med([r[0] for r in runs]),
            "dual_bwd": med([r[1] for r in runs]), "dual_opt": med([r[2] for r in runs]),
            "lora_params": lora_params, "text_lora_params": text_lora_params, "saim_params": saim_params,
            "bcm_params": bcm_params, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


def timed(fn, runs):
    """(median milliseconds of `runs` calls after one warm-up call, the last call's result)."""
    out = fn()
    ts = []
    for _ in range(max(runs, 1)):
        t = time.perf_counter()
        out = fn()
        ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts), out


# AnomalySD's defaults (crates/anodiff/src/bench/inpaint.rs): a full run of 20 DDIM steps, of which the
# bench times the last one; masks are the cells of the 2x2, 4x4, 8x8 grids in order.
INPAINT_STEPS = 20
INPAINT_SCALES = (2, 4, 8)


def cell_masks(b, size):
    """The first b masks [b, 1, size, size] of the cells of INPAINT_SCALES, row by row (cycled), as
    anodiff::bench::inpaint::cell_masks and detect::masks::grid_cells make them."""
    cells = [(r * size // k, (r + 1) * size // k, c * size // k, (c + 1) * size // k)
             for k in INPAINT_SCALES for r in range(k) for c in range(k)]
    m = torch.zeros(b, 1, size, size)
    for i in range(b):
        y0, y1, x0, x1 = cells[i % len(cells)]
        m[i, :, y0:y1, x0:x1] = 1.0
    return m


def bench_inpaint(args):
    """One AnomalySD partial-inpainting step at SD-1.5-inpainting shapes, as `anodiff bench inpaint`
    (crates/anodiff/src/bench/inpaint.rs) runs it through anodiff's denoise loop: B grid-cell masks over one
    random image; the loop body of diffusers' StableDiffusionInpaintPipeline without CFG (guidance 1):
    scale_model_input, cat [z_t; mask; masked-image latents], UNet forward, DDIMScheduler.step (eta 0) at the
    last of 20 DDIM timesteps. Timed apart, each with its own warm-up: the prompt through CLIP (text_encode),
    the VAE encodes of one call (the image + the B masked images, posterior sampled x 0.18215: vae_encode) and
    the decode of the B step outputs (vae_decode). --no-vae draws the latents at random and skips the VAE."""
    import resource
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    if args.preset not in ("sd15", "sd15-inpaint"):
        sys.exit("bench_reference.py inpaint: only --preset sd15-inpaint (or sd15, widened to 9 channels) is implemented")
    b, size, runs = args.batch, args.size, max(args.repeats, 1)
    if b < 1 or size < 8 or size % 8:
        sys.exit("bench_reference.py inpaint: need --batch >= 1 and a --size of at least 8 divisible by 8")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**{**SD15_UNET, "in_channels": 9}).eval()
    vae = AutoencoderKL(**SD15_VAE).eval()
    te = CLIPTextModel(CLIPTextConfig(**SD15_TEXT)).eval()
    count = lambda m: sum(p.numel() for p in m.parameters())
    # SD-1.5's scheduler_config.json (the preset's SchedulerConfig::default()).
    sched = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    sf, lat = vae.config.scaling_factor, size // 8
    image = torch.rand(1, 3, size, size) * 2 - 1
    masks = cell_masks(b, size)
    masked = image * (masks < 0.5).float()
    # Token ids as the CLIP tokenizer pads them (start, a few tokens, end repeated to 77).
    ids = torch.tensor([[49406, 320, 1125, 539, 320, 5392, *[49407] * 71]])
    out = {"preset": args.preset, "size": size, "batch": b, "repeats": runs, "threads": torch.get_num_threads()}
    with torch.inference_mode():
        text_ms, emb = timed(lambda: te(ids).last_hidden_state, runs)
        if args.vae:
            enc_ms, (z0, masked_lat) = timed(
                lambda: (vae.encode(image).latent_dist.sample() * sf, vae.encode(masked).latent_dist.sample() * sf), runs)
        else:
            z0, masked_lat = torch.randn(1, 4, lat, lat), torch.randn(b, 4, lat, lat)
        sched.set_timesteps(INPAINT_STEPS)
        t = sched.timesteps[-1]
        latents = sched.add_noise(z0, torch.randn(1, 4, lat, lat), t.reshape(1)).repeat(b, 1, 1, 1)
        mask_lat = F.interpolate(masks, size=(lat, lat))
        prompt_embeds = emb.repeat(b, 1, 1)

        def step():
            sched.set_timesteps(INPAINT_STEPS)
            x = sched.scale_model_input(latents, t)
            x = torch.cat([x, mask_lat, masked_lat], dim=1)
            noise_pred = unet(x, t, encoder_hidden_states=prompt_embeds, return_dict=False)[0]
            return sched.step(noise_pred, t, latents, return_dict=False)[0]
        step_ms, y = timed(step, runs)
        if not torch.isfinite(y).all():
            sys.exit("bench_reference.py inpaint: the step's output is not finite")
        out.update(timestep=int(t), parameters=count(unet), vae_params=count(vae), text_params=count(te),
                   inpaint_step=step_ms, text_encode=text_ms)
        if args.vae:
            out["vae_encode"] = enc_ms
            out["vae_decode"] = timed(lambda: vae.decode(y / sf).sample, runs)[0]
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return out


def groups_for(c):
    """GroupNorm groups of the localisation net (eval/localisation/net.rs): up to 32 groups of >= 2 channels."""
    g = 32
    while g > 1 and (c % g != 0 or c // g < 2):
        g //= 2
    return g


class LocNet(torch.nn.Module):
    """anodiff's localisation U-Net (crates/anodiff/src/eval/localisation/net.rs): per-image standardised input,
    six encoder levels of [conv3x3 -> GroupNorm -> ReLU] x 2 with widths w, 2w, 4w, 8w, 8w, 8w and 2x2
    max-pooling between them; each decoder level upsamples x2 (nearest), applies one conv block, concatenates
    the skip and fuses with two conv blocks; a final 3x3 conv to 2 logits."""

    def __init__(self, w, in_ch=3):
        super().__init__()
        nn = torch.nn

        def block(chans):
            layers = []
            for i, o in chans:
                layers += [nn.Conv2d(i, o, 3, padding=1), nn.GroupNorm(groups_for(o), o, eps=1e-5), nn.ReLU()]
            return nn.Sequential(*layers)

        widths = [w, 2 * w, 4 * w, 8 * w, 8 * w, 8 * w]
        self.enc = nn.ModuleList()
        prev = in_ch
        for c in widths:
            self.enc.append(block([(prev, c), (c, c)]))
            prev = c
        self.up = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for k in reversed(range(len(widths) - 1)):
            self.up.append(block([(widths[k + 1], widths[k])]))
            self.fuse.append(block([(2 * widths[k], widths[k]), (widths[k], widths[k])]))
        self.fin = nn.Conv2d(w, 2, 3, padding=1)

    def forward(self, x):
        b = x.shape[0]
        flat = x.reshape(b, -1)
        xc = flat - flat.mean(1, keepdim=True)
        std = xc.pow(2).mean(1, keepdim=True).sqrt()
        h = (xc / (std + 1e-4)).reshape(x.shape)
        skips = []
        for i, blk in enumerate(self.enc):
            if i > 0:
                h = F.max_pool2d(h, 2)
            h = blk(h)
            skips.append(h)
        for j, (up, fuse) in enumerate(zip(self.up, self.fuse)):
            u = up(F.interpolate(h, scale_factor=2, mode="nearest"))
            h = fuse(torch.cat([u, skips[len(skips) - 2 - j]], 1))
        return self.fin(h)


def focal_loss(logits, mask, gamma=2.0):
    """Focal loss on 2-class softmax, mean over pixels (eval/localisation/focal.rs)."""
    log_p = F.log_softmax(logits, dim=1)
    log_pt = log_p.gather(1, mask.long()).squeeze(1)
    return (-(1 - log_pt.exp()) ** gamma * log_pt).mean()


SMALL_KEYS = ("locnet64_step", "locnet128_step", "small_unet_step")


def bench_small(args):
    """Training steps (forward, backward, Adam) of the small networks, as `anodiff bench small`
    (crates/anodiff/src/bench/small.rs): median ms of --steps steps after --warmup steps."""
    import resource
    only = args.only or list(SMALL_KEYS)
    unknown = [k for k in only if k not in SMALL_KEYS]
    if unknown:
        sys.exit(f"unknown key(s) {unknown}; known: {SMALL_KEYS}")
    out = {"threads": torch.get_num_threads(), "repeats": max(args.steps, 1)}

    def steps(step):
        for _ in range(args.warmup):
            step()
        ts = []
        for _ in range(max(args.steps, 1)):
            t = time.perf_counter()
            step()
            ts.append((time.perf_counter() - t) * 1e3)
        return statistics.median(ts)

    def train_step(model, forward_loss):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)

        def step():
            opt.zero_grad(set_to_none=True)
            forward_loss().backward()
            opt.step()
        return steps(step), sum(p.numel() for p in model.parameters())

    torch.manual_seed(0)
    for key, size, width, batch in (("locnet64_step", 64, 8, 8), ("locnet128_step", 128, 16, 16)):
        if key in only:
            net = LocNet(width)
            x = torch.rand(batch, 3, size, size)
            mask = (torch.rand(batch, 1, size, size) >= 0.9).float()
            ms, n = train_step(net, lambda: focal_loss(net(x), mask))
            out[key], out[key.replace("_step", "_params")] = ms, n
    if "small_unet_step" in only:
        from diffusers import UNet2DConditionModel
        # The `small` preset (crates/anodiff/src/sd/presets.rs); parameter counts are compared by bench_compare.
        unet = UNet2DConditionModel(
            sample_size=32, in_channels=3, out_channels=3, block_out_channels=(32, 64, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            layers_per_block=1, norm_num_groups=8, cross_attention_dim=64, attention_head_dim=2)
        x = torch.randn(8, 3, 32, 32)
        target = torch.randn_like(x)
        ehs = torch.randn(8, 77, 64)
        t = torch.tensor([999., 870., 740., 610., 480., 350., 220., 90.])
        ms, n = train_step(unet, lambda: F.mse_loss(unet(x, t, encoder_hidden_states=ehs).sample, target))
        out["small_unet_step"], out["small_unet_params"] = ms, n
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return out


def main():
    import argparse
    ap = argparse.ArgumentParser(description="PyTorch reference timings (same keys as `anodiff bench`).")
    ap.add_argument("what", choices=["ops", "unet", "dual", "inpaint", "small"])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--iters", type=int, default=7, help="ops: timed runs")
    # Defaults per subcommand, as `anodiff bench` has them (inpaint: sd15-inpaint, 512 px, batch 4).
    ap.add_argument("--preset", default=None, help="default sd15 (inpaint: sd15-inpaint)")
    ap.add_argument("--size", type=int, default=None, help="default 256 (inpaint: 512)")
    ap.add_argument("--batch", type=int, default=None, help="default 2 (inpaint: 4 masks)")
    ap.add_argument("--repeats", type=int, default=3, help="unet, dual, inpaint: timed runs")
    ap.add_argument("--no-vae", dest="vae", action="store_false",
                    help="inpaint: skip the VAE encode / decode (latents drawn at random)")
    ap.add_argument("--train-lora", action="store_true")
    ap.add_argument("--pairs", type=int, default=2, help="dual: training pairs per step")
    ap.add_argument("--rank", type=int, default=32, help="dual: LoRA rank (UNet sets and text encoder)")
    ap.add_argument("--bcm-hidden", type=int, default=320, help="dual: BCM MLP width")
    ap.add_argument("--no-bcm", dest="bcm", action="store_false")
    ap.add_argument("--no-saim", dest="saim", action="store_false")
    ap.add_argument("--no-text-lora", dest="text_lora", action="store_false")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=25, help="small: timed steps per network")
    ap.add_argument("--warmup", type=int, default=5, help="small: warm-up steps per network")
    ap.add_argument("--only", action="append", default=[], help="small: only this key (repeatable)")
    args = ap.parse_args()
    inpaint = args.what == "inpaint"
    for k, general, for_inpaint in (("preset", "sd15", "sd15-inpaint"), ("size", 256, 512), ("batch", 2, 4)):
        if getattr(args, k) is None:
            setattr(args, k, for_inpaint if inpaint else general)
    torch.set_num_threads(args.threads)
    iters = args.iters
    # libgomp's default spin-waiting costs ~8 ms per parallel region when the cores are shared with other
    # work (tools/bench_compare.py notes); recorded so a table says which policy it ran with.
    policy = os.environ.get("OMP_WAIT_POLICY", "default")
    res = {"ops": lambda: ops(iters), "unet": lambda: bench_unet(args), "dual": lambda: bench_dual(args),
           "inpaint": lambda: bench_inpaint(args), "small": lambda: bench_small(args)}[args.what]()
    if args.what != "ops":
        res["omp_wait_policy"] = policy
    if args.json:
        print(json.dumps(res))
    else:
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        for k, v in res.items():
            print(f"{k:<24} {v}")


if __name__ == "__main__":
    main()
