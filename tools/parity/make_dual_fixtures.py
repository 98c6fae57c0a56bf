#!/usr/bin/env python
"""DualAnoDiff parity fixtures: our own PyTorch reference of the dual model (METHODS.md part A),
written from the specification on diffusers' attention-processor API, run on a tiny random-weight
UNet (tests/fixtures/unet/sd1/unet, 22 attention layers) and a tiny random CLIP text encoder.

The dual model, per UNet attention layer (self `attn1` and cross `attn2`):
- two LoRA sets on to_q, to_k, to_v, to_out.0 (set 0 for whole-image rows, set 1 for anomaly-part
  rows; row i uses set branch[i]); scale 1; one shared LoRA set on the text encoder's
  q_proj/k_proj/v_proj/out_proj;
- SAIM on the layer output o (after to_out with its LoRA): x = L(LayerNorm(o)), pairs (row 2i whole,
  row 2i+1 part) form a length-2 sequence per token, single-head attention (scale 1/sqrt(C)) with
  Wq, Wk, Wv, output Wo; o + SAIM(o). Not in the BCM reference pass.
- BCM on attn1 only: a reference pass (whole-image LoRA on every row, whole prompt, no SAIM, no
  fusion) records the input hidden states h_ref of every attn1; in the main pass, for whole rows
  only, keys and values come from fuse(h, MLP(h_ref)) with MLP = Linear(C, 320) -> Linear(320, C)
  ("paper": h + g * MLP(h_ref); "code": (1 - a) * h + a * MLP(h_ref)). The k-th whole row of the
  main batch uses the k-th row of the reference batch.

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
import torch.nn as nn
import torch.nn.functional as F
from diffusers import PNDMScheduler, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

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


class State:
    """What every processor of one forward pass needs: the row branches, the pass kind and the
    reference hidden states recorded by the reference pass."""

    def __init__(self):
        self.branch = None
        self.kind = "main"  # or "reference"
        self.refs = {}
        self.fusion = "paper"  # or "code" or None (BCM off)
        self.saim = True


class LoraSets(nn.Module):
    def __init__(self, n_in, n_out, sets=2):
        super().__init__()
        self.down = nn.ParameterList([nn.Parameter(torch.randn(RANK, n_in) / RANK) for _ in range(sets)])
        self.up = nn.ParameterList([nn.Parameter(torch.randn(n_out, RANK) * 0.2) for _ in range(sets)])

    def forward(self, base, x, branch):
        y = base(x)
        for s in range(len(self.down)):
            sel = torch.tensor([1.0 if b == s else 0.0 for b in branch]).view(-1, *([1] * (x.dim() - 1)))
            y = y + sel * F.linear(F.linear(x, self.down[s]), self.up[s])
        return y


class Saim(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.temporal_n = nn.LayerNorm(c, eps=1e-6)
        self.temporal_i = nn.Linear(c, c)
        self.temporal_q = nn.Linear(c, c)
        self.temporal_k = nn.Linear(c, c)
        self.temporal_v = nn.Linear(c, c)
        self.temporal_o = nn.Linear(c, c)

    def forward(self, o):
        b2, t, c = o.shape
        x = self.temporal_i(self.temporal_n(o))
        # (b*2, t, c) -> (b*t, 2, c): row 2i and 2i+1 of the same token attend to each other.
        x = x.view(b2 // 2, 2, t, c).permute(0, 2, 1, 3).reshape(b2 // 2 * t, 2, c)
        q, k, v = self.temporal_q(x), self.temporal_k(x), self.temporal_v(x)
        w = torch.softmax(q @ k.transpose(1, 2) / c ** 0.5, dim=-1)
        y = self.temporal_o(w @ v)
        y = y.view(b2 // 2, t, 2, c).permute(0, 2, 1, 3).reshape(b2, t, c)
        return o + y


class Bcm(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.temporal_condition_mlp = nn.Sequential(nn.Linear(c, MLP_HIDDEN), nn.Linear(MLP_HIDDEN, c))
        self.temporal_a = nn.Parameter(torch.tensor([GATE]))

    def fuse(self, h, h_ref, fusion):
        m = self.temporal_condition_mlp(h_ref)
        if fusion == "paper":
            return h + self.temporal_a * m
        return (1 - self.temporal_a) * h + self.temporal_a * m


class DualProcessor(nn.Module):
    def __init__(self, name, attn, state, is_self):
        super().__init__()
        self.name, self.state, self.is_self = name, state, is_self
        c = attn.to_q.in_features
        self.lora = nn.ModuleDict({
            "to_q": LoraSets(attn.to_q.in_features, attn.to_q.out_features),
            "to_k": LoraSets(attn.to_k.in_features, attn.to_k.out_features),
            "to_v": LoraSets(attn.to_v.in_features, attn.to_v.out_features),
            "to_out": LoraSets(attn.to_out[0].in_features, attn.to_out[0].out_features),
        })
        self.saim = Saim(c)
        self.bcm = Bcm(c) if is_self else None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        st = self.state
        h = hidden_states
        branch = st.branch
        if st.kind == "reference":
            branch = [0] * h.shape[0]
            if self.is_self:
                st.refs[self.name] = h
        kv = h if encoder_hidden_states is None else encoder_hidden_states
        if self.is_self and st.kind == "main" and st.fusion is not None:
            whole = [i for i, b in enumerate(branch) if b == 0]
            h_ref = st.refs[self.name]
            assert h_ref.shape[0] == len(whole)
            fused = self.bcm.fuse(h[whole], h_ref, st.fusion)
            rows = []
            k = 0
            for i in range(h.shape[0]):
                if branch[i] == 0:
                    rows.append(fused[k])
                    k += 1
                else:
                    rows.append(h[i])
            kv = torch.stack(rows)
        q = self.lora["to_q"](attn.to_q, h, branch)
        k = self.lora["to_k"](attn.to_k, kv, branch)
        v = self.lora["to_v"](attn.to_v, kv, branch)
        b, t, _ = q.shape
        hd = q.shape[-1] // attn.heads
        q, k, v = (z.view(b, -1, attn.heads, hd).transpose(1, 2) for z in (q, k, v))
        o = torch.softmax(q @ k.transpose(-1, -2) * attn.scale, dim=-1) @ v
        o = o.transpose(1, 2).reshape(b, t, attn.heads * hd)
        o = self.lora["to_out"](attn.to_out[0], o, branch)
        if st.kind == "main" and st.saim:
            o = self.saim(o)
        return o


class LoraLinear(nn.Module):
    def __init__(self, base):
        super().__init__()
        self.base = base
        self.down = nn.Parameter(torch.randn(RANK, base.in_features) / RANK)
        self.up = nn.Parameter(torch.randn(base.out_features, RANK) * 0.2)

    def forward(self, x):
        return self.base(x) + F.linear(F.linear(x, self.down), self.up)


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
    procs = {}
    for name, attn in unet.attn_processors.items():
        layer = name[: -len(".processor")]
        module = unet.get_submodule(layer)
        procs[name] = DualProcessor(layer, module, state, layer.endswith("attn1"))
    unet.set_attn_processor(dict(procs))  # diffusers pops entries from the dict it is given
    te_lora = {}
    for li, layer in enumerate(te.encoder.layers):
        for p in ["q_proj", "k_proj", "v_proj", "out_proj"]:
            wrapped = LoraLinear(getattr(layer.self_attn, p))
            setattr(layer.self_attn, p, wrapped)
            te_lora[f"text_model.encoder.layers.{li}.self_attn.{p}"] = wrapped
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


def dual_params(procs):
    """SAIM/BCM parameters by file name; LoRA by (set, diffusers module)."""
    mods, lora = {}, {0: {}, 1: {}}
    for proc in procs.values():
        for n, p in proc.saim.named_parameters():
            mods[f"{proc.name}.{n}"] = p
        if proc.bcm is not None:
            for n, p in proc.bcm.named_parameters():
                mods[f"{proc.name}.{n}"] = p
        for proj, l in proc.lora.items():
            target = "to_out.0" if proj == "to_out" else proj
            for s in range(2):
                lora[s][f"{proc.name}.{target}"] = (l.down[s], l.up[s])
    return mods, lora


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
