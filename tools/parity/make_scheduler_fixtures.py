#!/usr/bin/env python3
"""Parity fixtures for anodiff's schedulers (crates/anodiff/src/sd/scheduler/).

Generated with diffusers 0.42.1, torch 2.x (CPU), numpy. Regenerate from the repo root with:
    python tools/parity/make_scheduler_fixtures.py

Writes tests/fixtures/scheduler/:
  configs/<cfg>_<class>.json  the scheduler_config.json each diffusers class writes (save_config)
  scheduler.json              timestep lists, run descriptions, add_noise timesteps
  scheduler.safetensors       f32 tensors: fake model outputs, noise, expected step outputs, tables

Fake model: step i of every run receives `bank.model.<i>` (fixed tensors, correlated across steps like
a real denoiser's outputs), and variance noise `bank.noise.<i>`; sharing the bank across runs keeps the
fixture small while Rust feeds exactly the tensors diffusers saw.
"""
import inspect
import json
import os
import shutil

import diffusers
import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler, PNDMScheduler
from diffusers.utils.torch_utils import randn_tensor
from safetensors.torch import save_file

assert diffusers.__version__ == "0.42.1", diffusers.__version__
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "scheduler")
SHAPE = (1, 4, 8, 8)
BANK = 12  # longest run: PNDM with 10 steps visits 11 timesteps

SD15 = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
            steps_offset=1, set_alpha_to_one=False, clip_sample=False, skip_prk_steps=True,
            prediction_type="epsilon", timestep_spacing="leading")
VARIANT = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
               steps_offset=0, set_alpha_to_one=True, clip_sample=True, skip_prk_steps=True,
               prediction_type="v_prediction", timestep_spacing="trailing")
CONFIGS = {"sd15": SD15, "variant": VARIANT}
# Timestep lists and Euler sigmas only: the `linspace` spacing (EulerDiscreteScheduler's default).
LINSPACE = dict(SD15, timestep_spacing="linspace")
CLASSES = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "pndm": PNDMScheduler, "euler": EulerDiscreteScheduler}


def num_list(ts):
    """Timesteps as JSON numbers: integers stay integers (exact), Euler's floats keep f32 precision."""
    return [int(t) if float(t).is_integer() else float(t) for t in ts]


def make(kind, cfg):
    cls = CLASSES[kind]
    keys = set(inspect.signature(cls.__init__).parameters)
    sched = cls(**{k: v for k, v in cfg.items() if k in keys})
    return sched


def main():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1234)
    base = torch.randn(SHAPE, generator=g)
    tensors = {}
    for i in range(BANK):
        fresh = torch.randn(SHAPE, generator=g)
        tensors[f"bank.model.{i}"] = (0.8 * base + 0.6 * fresh).contiguous()
    # Variance noise: drawn exactly as diffusers' randn_tensor draws it from a seeded generator, and
    # checked to be the same tensor the DDPM step gets from that generator.
    for i in range(BANK):
        n1 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(100 + i))
        n2 = randn_tensor(SHAPE, generator=torch.Generator().manual_seed(100 + i), dtype=torch.float32)
        assert torch.equal(n1, n2)
        tensors[f"bank.noise.{i}"] = n1
    init = torch.randn(SHAPE, generator=g)
    tensors["init"] = init
    x0 = torch.randn((4,) + SHAPE[1:], generator=g)
    noise = torch.randn((4,) + SHAPE[1:], generator=g)
    tensors["x0"] = x0
    tensors["noise"] = noise

    meta = {"timesteps": {}, "runs": [], "add_noise_t": [0, 1, 250, 999], "sweep": {}}
    shutil.rmtree(os.path.join(OUT, "configs"), ignore_errors=True)
    os.makedirs(os.path.join(OUT, "configs"), exist_ok=True)

    for cname, cfg in list(CONFIGS.items()) + [("linspace", LINSPACE)]:
        for kind in CLASSES:
            s = make(kind, cfg)
            s.save_config(os.path.join(OUT, "configs", f"tmp_{cname}_{kind}"))
            os.replace(os.path.join(OUT, "configs", f"tmp_{cname}_{kind}", "scheduler_config.json"),
                       os.path.join(OUT, "configs", f"{cname}_{kind}.json"))
            os.rmdir(os.path.join(OUT, "configs", f"tmp_{cname}_{kind}"))
            for n in (4, 10, 50):
                s.set_timesteps(n)
                meta["timesteps"][f"{cname}.{kind}.{n}"] = num_list(s.timesteps)
            sweep = {}
            for n in list(range(1, 13)) + [25, 61]:
                try:
                    s.set_timesteps(n)
                except Exception:
                    continue
                sweep[str(n)] = num_list(s.timesteps)
            meta["sweep"][f"{cname}.{kind}"] = sweep
            if kind == "euler":
                s.set_timesteps(50)
                tensors[f"{cname}.euler.sigmas.50"] = s.sigmas.clone()
        if cname not in CONFIGS:
            continue
        # Training-side quantities (identical in all classes): alphas_cumprod, add_noise, velocity.
        ddpm = make("ddpm", cfg)
        if cname == "sd15":
            tensors[f"{cname}.betas"] = ddpm.betas.clone()
        tensors[f"{cname}.alphas_cumprod"] = ddpm.alphas_cumprod.clone()
        t = torch.tensor(meta["add_noise_t"])
        tensors[f"{cname}.add_noise"] = ddpm.add_noise(x0, noise, t)
        tensors[f"{cname}.velocity"] = ddpm.get_velocity(x0, noise, t)
        # Euler's add_noise works in sigma space on the prepared run's timesteps.
        eu = make("euler", cfg)
        eu.set_timesteps(10)
        et = eu.timesteps[[0, 3, 6, 9]]
        meta[f"{cname}.euler_add_noise_t"] = [float(v) for v in et]
        tensors[f"{cname}.euler.add_noise"] = eu.add_noise(x0, noise, et)

    cos = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    tensors["cos.alphas_cumprod"] = cos.alphas_cumprod.clone()

    runs = [("ddpm", {}), ("ddim", {"eta": 0.0}), ("ddim", {"eta": 0.5}), ("pndm", {}), ("euler", {})]
    plan = [(c, cfg, kind, kw, n) for c, cfg in CONFIGS.items() for kind, kw in runs for n in (4, 10)]
    # `linspace` spacing ends at t = 0 (DDPM adds no noise there, DDIM with eta > 0 still does) and
    # gives Euler fractional timesteps.
    plan += [("linspace", LINSPACE, kind, kw, 4) for kind, kw in runs if kind in ("ddpm", "euler") or kw.get("eta")]
    for cname, cfg, kind, kw, n in plan:
        if True:
            if True:
                s = make(kind, cfg)
                s.set_timesteps(n)
                name = f"{cname}.{kind}{'_eta' + str(kw['eta']) if 'eta' in kw else ''}.{n}"
                sample = (init * s.init_noise_sigma).contiguous()
                if s.init_noise_sigma != 1.0:
                    tensors[f"{name}.start"] = sample  # otherwise the run starts from `init` itself
                ts = list(s.timesteps)
                assert len(ts) <= BANK, (name, ts)
                for i, t in enumerate(ts):
                    mo = tensors[f"bank.model.{i}"]
                    nz = tensors[f"bank.noise.{i}"]
                    if kind == "euler":
                        scaled = s.scale_model_input(sample, t)
                        if n == 4:  # (size) scale_model_input is recorded on the short runs only
                            tensors[f"{name}.scaled.{i}"] = scaled.contiguous()
                        out = s.step(mo, t, sample).prev_sample
                    elif kind == "ddpm":
                        gen = torch.Generator().manual_seed(100 + i)
                        out = s.step(mo, int(t), sample, generator=gen).prev_sample
                    elif kind == "ddim":
                        vn = nz if kw["eta"] > 0 else None
                        out = s.step(mo, int(t), sample, eta=kw["eta"], variance_noise=vn).prev_sample
                    else:
                        out = s.step(mo, int(t), sample).prev_sample
                    tensors[f"{name}.prev.{i}"] = out.contiguous()
                    sample = out
                run = {"name": name, "config": cname, "kind": kind, "steps": n,
                       "timesteps": [float(t) for t in ts], "init_noise_sigma": float(s.init_noise_sigma)}
                run.update(kw)
                meta["runs"].append(run)

    tensors = {k: v.to(torch.float32).contiguous() for k, v in tensors.items()}
    save_file(tensors, os.path.join(OUT, "scheduler.safetensors"))
    with open(os.path.join(OUT, "scheduler.json"), "w") as f:
        json.dump(meta, f, separators=(",", ":"))
    print("tensors:", len(tensors), "runs:", len(meta["runs"]))
    for f in sorted(os.listdir(OUT)):
        p = os.path.join(OUT, f)
        if os.path.isfile(p):
            print(f, os.path.getsize(p))


if __name__ == "__main__":
    main()
