#!/usr/bin/env python
"""DualAnoDiff parity fixtures: our own PyTorch reference of the dual model (METHODS.md part A),
written from the specification on diffusers' attention-processor API, run on a tiny random-weight
UNet (tests/fixtures/unet/sd1/unet, 22 attention layers) and a tiny random CLIP text encoder.

The dual model is defined in tools/parity/dual_reference.py (shared with the benchmark
`tools/bench_reference.py dual`).

Every dual parameter is random and non-zero (LoRA up != 0, the gate at 0.37, not its init).
Cases written to tests/fixtures/dual/:
  forward.*   UNet output for an interleaved CFG batch of 2 pairs ([uncond rows; cond rows], each
              [whole_0, part_0, whole_1, part_1]) with a 4-row reference pass, for BCM paper / code /
              off with SAIM on, and BCM paper with SAIM off.
  grad_<fusion>.*  gradients of an MSE noise loss (2 pairs, no CFG, text encoder in the graph) w.r.t.
              every LoRA (UNet sets 0 and 1, text encoder), SAIM and BCM parameter.
  generate.*  a 4-step PNDM generation, guidance 2.0, one pair, BCM paper + SAIM, with every random
              draw recorded: draw0 = initial latents [2,4,8,8] (whole, part), then before every UNet
              call the reference noise [2,4,8,8] (row 0: the all-zero reference of the uncond row,
              row 1: the background). The reference latents are noised with scheduler.add_noise
              at the call's timestep.
Weights: dual_modules.safetensors (SAIM/BCM, reference-code names per attention layer:
`<layer>.temporal_{n,i,q,k,v,o}.*`, `<layer>.temporal_condition_mlp.{0,1}.*`, `<layer>.temporal_a`),
lora_set0.safetensors / lora_set1.safetensors (diffusers/peft names; set 0 file also holds the
text-encoder LoRA).

Versions: torch 2.15.0, diffusers 0.42.1, transformers 5.23.0 (tools/requirements.txt).
Regenerate: python tools/parity/make_dual_fixtures.py   (needs tests/fixtures/unet/sd1)
"""
import json
import os
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import PNDMScheduler, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

from dual_reference import State, dual_params, install_text_lora, install_unet

ROOT = Path(__file__).resolve().parents[2]
UNET = ROOT / "tests" / "fixtures" / "unet" / "sd1" / "unet"
OUT = ROOT / "tests" / "fixtures" / "dual"
RANK = 4
# The spec's MLP width is 320; a smaller one keeps the fixture small and exercises the same code.
MLP_HIDDEN = 32
GATE = 0.37
# Gradients are recorded for every parameter of these layers (all kinds: LoRA sets 0/1 on every
# projection, SAIM, BCM, a self and a cross layer at three depths) and for the text-encoder LoRA.
GRAD_LAYERS = ("down_blocks.0.attentions.1.transformer_blocks.0.attn1",
               "down_blocks.1.attentions.0.transformer_blocks.0.attn2",
               "mid_block.attentions.0.transformer_blocks.0.attn1",
               "up_blocks.2.attentions.2.transformer_blocks.0.attn2",
               "up_blocks.1.attentions.0.transformer_blocks.0.attn1")


def build():
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_pretrained(UNET).float().eval()
    te_cfg = CLIPTextConfig(vocab_size=1000, hidden_size=unet.config.cross_attention_dim, intermediate_size=32,
                            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                            hidden_act="quick_gelu", bos_token_id=998, eos_token_id=999, pad_token_id=999,
                            projection_dim=unet.config.cross_attention_dim)
    te = CLIPTextModel(te_cfg).eval()
    with torch.no_grad():
        for n, p in te.named_parameters():
            if "norm" in n:
                p.copy_((1.0 if n.endswith("weight") else 0.0) + 0.2 * torch.randn(p.shape))
            else:
                p.copy_(torch.randn(p.shape) * (0.3 if p.dim() == 1 else 1.0 / p.shape[-1] ** 0.5))
    for p in list(unet.parameters()) + list(te.parameters()):
        p.requires_grad_(False)
    state = State()
    procs = install_unet(unet, state, RANK, MLP_HIDDEN, GATE)
    te_lora = install_text_lora(te, RANK)
    # Non-trivial SAIM / BCM values (PyTorch init is random already; make biases non-zero too).
    with torch.no_grad():
        for proc in procs.values():
            for n, p in proc.saim.named_parameters():
                if n.startswith("temporal_n"):
                    p.copy_((1.0 if n.endswith("weight") else 0.0) + 0.2 * torch.randn(p.shape))
                elif n.endswith("bias"):
                    p.copy_(0.1 * torch.randn(p.shape))
            if proc.bcm is not None:
                for n, p in proc.bcm.temporal_condition_mlp.named_parameters():
                    if n.endswith("bias"):
                        p.copy_(0.1 * torch.randn(p.shape))
    return unet, te, state, procs, te_lora


def ids_of(tokens):
    """Token ids padded to 77 with the end token, as a CLIP tokenizer would (ids < 1000)."""
    ids = [998] + tokens + [999]
    return torch.tensor([ids + [999] * (77 - len(ids))])


def main():
    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "text_encoder").mkdir(parents=True)
    unet, te, state, procs, te_lora = build()
    mods, lora = dual_params(procs)

    # Files: text encoder (its own tiny config), dual modules, LoRA sets in peft names.
    base_sd = {k: v for k, v in te.state_dict().items() if ".down" not in k and ".up" not in k}
    base_sd = {k.replace(".base.", "."): v.contiguous() for k, v in base_sd.items()}
    save_file(base_sd, OUT / "text_encoder" / "model.safetensors")
    with open(OUT / "text_encoder" / "config.json", "w") as f:
        json.dump(te.config.to_dict(), f, indent=1, default=str)
    save_file({k: v.detach().contiguous() for k, v in mods.items()}, OUT / "dual_modules.safetensors")
    for s in range(2):
        t = {}
        for m, (d, u) in lora[s].items():
            t[f"unet.{m}.lora_A.weight"] = d.detach().contiguous()
            t[f"unet.{m}.lora_B.weight"] = u.detach().contiguous()
        if s == 0:
            for m, l in te_lora.items():
                t[f"text_encoder.{m}.lora_A.weight"] = l.down.detach().contiguous()
                t[f"text_encoder.{m}.lora_B.weight"] = l.up.detach().contiguous()
        save_file(t, OUT / f"lora_set{s}.safetensors")

    g = torch.Generator().manual_seed(21)
    ids = {"whole": ids_of([5, 17, 230, 41]), "part": ids_of([41]), "uncond": ids_of([])}
    rec = {f"ids.{k}": v.float() for k, v in ids.items()}  # f32: the Rust reader takes float tensors

    def embed(names):
        return torch.cat([te(ids[n]).last_hidden_state for n in names])

    # (a) forward: CFG batch of 2 pairs + reference pass.
    x = torch.randn((8, 4, 8, 8), generator=g)
    x_ref = torch.randn((4, 4, 8, 8), generator=g)
    t = torch.tensor([500.0] * 8)
    rec.update({"forward.x": x, "forward.x_ref": x_ref, "forward.t": t[:1]})
    cases = [("paper", True), ("code", True), ("off", True), ("paper_nosaim", False)]
    with torch.no_grad():
        emb = embed(["uncond", "uncond", "uncond", "uncond", "whole", "part", "whole", "part"])
        emb_ref = embed(["uncond", "uncond", "whole", "whole"])
        for name, saim in cases:
            fusion = {"paper": "paper", "code": "code", "off": None, "paper_nosaim": "paper"}[name]
            state.fusion, state.saim = fusion, saim
            if fusion is not None:
                state.kind, state.branch, state.refs = "reference", [0] * 4, {}
                unet(x_ref, t[:4], encoder_hidden_states=emb_ref)
            state.kind, state.branch = "main", [0, 1, 0, 1, 0, 1, 0, 1]
            rec[f"forward.{name}.out"] = unet(x, t, encoder_hidden_states=emb).sample

    # (b) gradients: 2 pairs, no CFG, text encoder with LoRA in the graph; MSE noise loss.
    for p in mods.values():
        p.requires_grad_(True)
    lora_params = [p for s in lora.values() for pair in s.values() for p in pair]
    for p in lora_params + [p for l in te_lora.values() for p in (l.down, l.up)]:
        p.requires_grad_(True)
    xg = torch.randn((4, 4, 8, 8), generator=g)
    xg_ref = torch.randn((2, 4, 8, 8), generator=g)
    target = torch.randn((4, 4, 8, 8), generator=g)
    tg = torch.tensor([120.0, 120.0, 870.0, 870.0])
    rec.update({"grad.x": xg, "grad.x_ref": xg_ref, "grad.target": target, "grad.t": tg})
    for fusion in ["paper", "code"]:
        for p in list(mods.values()) + lora_params + [p for l in te_lora.values() for p in (l.down, l.up)]:
            p.grad = None
        state.fusion, state.saim = fusion, True
        emb = embed(["whole", "part", "whole", "part"])
        emb_ref = embed(["whole", "whole"])
        state.kind, state.branch, state.refs = "reference", [0, 0], {}
        unet(xg_ref, tg[0::2], encoder_hidden_states=emb_ref)
        state.kind, state.branch = "main", [0, 1, 0, 1]
        out = unet(xg, tg, encoder_hidden_states=emb).sample
        loss = F.mse_loss(out, target)
        loss.backward()
        rec[f"grad_{fusion}.loss"] = loss.detach().view(1)
        for n, p in mods.items():
            if n.rsplit(".temporal", 1)[0] in GRAD_LAYERS:
                rec[f"grad_{fusion}.mod.{n}"] = p.grad.clone()
        for s in range(2):
            for m, (d, u) in lora[s].items():
                if m.rsplit(".", 2 if m.endswith("to_out.0") else 1)[0] not in GRAD_LAYERS:
                    continue
                rec[f"grad_{fusion}.lora{s}.unet.{m}.down"] = d.grad.clone()
                rec[f"grad_{fusion}.lora{s}.unet.{m}.up"] = u.grad.clone()
        for m, l in te_lora.items():
            rec[f"grad_{fusion}.lora0.text_encoder.{m}.down"] = l.down.grad.clone()
            rec[f"grad_{fusion}.lora0.text_encoder.{m}.up"] = l.up.grad.clone()
    for p in list(mods.values()) + lora_params + [p for l in te_lora.values() for p in (l.down, l.up)]:
        p.requires_grad_(False)

    # (c) 4-step PNDM generation with CFG 2.0, BCM paper + SAIM, one pair.
    sched = PNDMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                          beta_schedule="scaled_linear", steps_offset=1, set_alpha_to_one=False,
                          skip_prk_steps=True)
    sched.save_config(OUT / "scheduler")
    sched.set_timesteps(4)
    guidance = 2.0
    bg = torch.randn((1, 4, 8, 8), generator=g)
    zero_ref = torch.randn((1, 4, 8, 8), generator=g) * 0.1
    latents = torch.randn((2, 4, 8, 8), generator=g)
    rec.update({"generate.bg": bg, "generate.zero_ref": zero_ref, "generate.draw0": latents.clone()})
    draws = 1
    state.fusion, state.saim = "paper", True
    with torch.no_grad():
        emb = embed(["uncond", "uncond", "whole", "part"])
        emb_ref = embed(["uncond", "whole"])
        for ts in sched.timesteps:
            n = torch.randn((2, 4, 8, 8), generator=g)
            rec[f"generate.draw{draws}"] = n
            draws += 1
            ref_clean = torch.cat([zero_ref, bg])
            ref_in = sched.add_noise(ref_clean, n, ts.view(1).repeat(2))
            state.kind, state.branch, state.refs = "reference", [0, 0], {}
            unet(ref_in, ts.float().repeat(2), encoder_hidden_states=emb_ref)
            state.kind, state.branch = "main", [0, 1, 0, 1]
            inp = torch.cat([latents, latents])
            pred = unet(inp, ts.float().repeat(4), encoder_hidden_states=emb).sample
            u, c = pred.chunk(2)
            pred = u + guidance * (c - u)
            latents = sched.step(pred, ts, latents).prev_sample
    rec["generate.final"] = latents
    rec["generate.timesteps"] = sched.timesteps.float()
    save_file({k: v.contiguous() for k, v in rec.items()}, OUT / "reference.safetensors")
    with open(OUT / "cases.json", "w") as f:
        json.dump(dict(rank=RANK, mlp_hidden=MLP_HIDDEN, gate=GATE, grad_layers=GRAD_LAYERS, guidance=guidance, steps=4, draws=draws,
                       forward_cases=[c[0] for c in cases], unet="../unet/sd1/unet"), f, indent=1)
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT}: {len(rec)} tensors, {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
