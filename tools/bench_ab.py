#!/usr/bin/env python3
"""Alternating A/B of `anodiff bench small` between builds or settings: every round runs each variant
once, in turn, so drifts of the machine's speed hit all variants alike; prints every round and the
medians.

Usage (copy each build out of target/ first, e.g. `cp target/release/anodiff /tmp/new`):

    python tools/bench_ab.py --rounds 5 --threads 2 'old=/tmp/old' 'new=/tmp/new' \\
        'spin=CANDLE_BARRIER_POOL_SPIN_LIMIT=1000 /tmp/new' [--only locnet64_step] [--steps 6] [--micro-batches 2]

A variant is `label=[VAR=value ...] binary`.
"""
import argparse
import json
import os
import statistics
import subprocess

KEYS = ("locnet64_step", "locnet128_step", "small_unet_step")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", nargs="+", help="label=[VAR=value ...] binary")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--only", action="append", default=[], choices=KEYS)
    ap.add_argument("--micro-batches", type=int, default=1, help="passed to every variant")
    a = ap.parse_args()
    variants = []
    for v in a.variants:
        label, cmd = v.split("=", 1) if "=" in v.split()[0] else (v, v)
        env, binary = dict(os.environ), None
        for part in cmd.split():
            if "=" in part:
                k, val = part.split("=", 1)
                env[k] = val
            else:
                binary = part
        variants.append((label, env, binary))
    only = [x for k in a.only for x in ("--only", k)]
    results = {}
    for r in range(a.rounds):
        for label, env, binary in variants:
            cmd = [binary, "--threads", str(a.threads), "bench", "small", "--steps", str(a.steps),
                   "--warmup", str(a.warmup), "--micro-batches", str(a.micro_batches), "--json"] + only
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            d = json.loads(out.stdout.strip().splitlines()[-1])
            got = {k: d[k] for k in KEYS if d.get(k) is not None}
            for k, v in got.items():
                results.setdefault((k, label), []).append(v)
            print(f"round {r + 1} {label}: " + ", ".join(f"{k} {v:.0f} ms" for k, v in got.items()), flush=True)
    print(f"\n| key | variant | median ms | rounds |\n|---|---|---|---|")
    for (k, label), v in sorted(results.items()):
        print(f"| {k} | {label} | {statistics.median(v):.1f} | {', '.join(f'{x:.0f}' for x in v)} |")


if __name__ == "__main__":
    main()
