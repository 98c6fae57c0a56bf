#!/usr/bin/env python3
"""Runs `anodiff bench <what> --json` and `tools/bench_reference.py <what> --json` back to back with the
same arguments and prints one markdown table with the ratio ours/PyTorch (the BENCHMARKS.md tables).

With `--rounds N` (default 1) the pair runs N times, alternating ours and PyTorch, and the table gives
the median of each side, the median of the N per-round ratios, the best-of-N ratio (fastest round of
ours / fastest round of PyTorch: interference from other tenants only ever adds time) and every
per-round ratio. On a machine whose speed drifts by tens of percent within minutes, single ratios
are not trustworthy.

Usage (from the repository root, after `cargo build --release`):
    python tools/bench_compare.py ops [--rounds 5]
    python tools/bench_compare.py unet --preset sd15 --size 256 --batch 2 [--rounds 3]
    python tools/bench_compare.py unet --preset sd15 --size 256 --batch 2 --train-lora
    python tools/bench_compare.py dual --preset sd15 --size 256 --pairs 2 [--rounds 3]
    python tools/bench_compare.py inpaint --preset sd15-inpaint --size 512 --batch 4 [--no-vae] [--rounds 3]
    python tools/bench_compare.py small [--steps 25] [--warmup 5] [--threads 1] [--rounds 5]
    python tools/bench_compare.py small --ours "--micro-batches 2" [--rounds 5]

`--ours "ARGS"` passes ARGS to our side only (options PyTorch's reference has no counterpart for, such as
`bench small --micro-batches 2`: the same batch and update, computed as two halves side by side).

When other work shares the cores, run PyTorch's OpenMP with `OMP_WAIT_POLICY=PASSIVE` (the environment is
passed through; the PyTorch JSON records the policy): libgomp's default spin-wait then costs about 8 ms per
parallel region (a 137k-element sqrt: 0.06 ms on 1 thread, 8 ms on 2 threads spinning, 0.07 ms passive),
which made a 64 px DualAnoDiff step take 132-137 s in PyTorch (ours: 15 s on the same busy machine). On an
idle machine passive costs PyTorch ~15 % on a 4096x320x320 matmul: use the default there.

Parameter counts (`parameters`, `*_params`) describe the model rather than measure it: they are listed
once, with a check that both sides count the same.
"""
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
# Keys that describe the run rather than measure it.
META = ("size", "batch", "pairs", "repeats", "threads", "parameters", "timestep")
# Keys only one side writes, by design (the PyTorch side records its OpenMP wait policy).
ONE_SIDED = ("omp_wait_policy", "micro_batches")


def is_count(k):
    return k == "parameters" or k.endswith("_params")


def run(cmd):
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    args = sys.argv[1:]
    rounds = 1
    if "--rounds" in args:
        i = args.index("--rounds")
        rounds = int(args[i + 1])
        del args[i:i + 2]
    ours_extra = []
    if "--ours" in args:
        i = args.index("--ours")
        ours_extra = args[i + 1].split()
        del args[i:i + 2]
    if not args or args[0] not in ("ops", "unet", "dual", "inpaint", "small") or rounds < 1:
        sys.exit(__doc__)
    what, rest = args[0], args[1:]
    rows = []  # one (ours, torch) pair of JSON objects per round
    for r in range(rounds):
        ours = run([os.environ.get("ANODIFF_BIN", os.path.join(ROOT, "target", "release", "anodiff")), "bench", what, *rest, *ours_extra, "--json"])
        torch = run([sys.executable, os.path.join(ROOT, "tools", "bench_reference.py"), what, *rest, "--json"])
        rows.append((ours, torch))
        print(f"round {r + 1}/{rounds} done", file=sys.stderr)
        only = sorted((set(ours) ^ set(torch)) - set(ONE_SIDED))
        if only:
            print(f"note: keys on one side only: {', '.join(only)}", file=sys.stderr)
        differ = [k for k in META if k in ours and k in torch and ours[k] != torch[k]]
        if differ:
            print("WARNING: the two sides ran different settings: "
                  + ", ".join(f"{k} {ours[k]} vs {torch[k]}" for k in differ), file=sys.stderr)
    keys = [k for k, v in rows[0][0].items() if isinstance(v, (int, float)) and k not in META and not is_count(k)
            and isinstance(rows[0][1].get(k), (int, float))]
    cmd = f"`anodiff bench {what} {' '.join(rest + ours_extra)}` vs `tools/bench_reference.py {what} {' '.join(rest)}`"
    print(f"{cmd}, {rounds} round(s) alternating\n")
    print("| key | anodiff | PyTorch | ratio ours/PyTorch (median of rounds) | best-of-N ratio | per-round ratios |")
    print("|---|---|---|---|---|---|")
    for k in keys:
        o = [a[k] for a, _ in rows]
        t = [b[k] for _, b in rows]
        ratios = [x / y if y else float("nan") for x, y in zip(o, t)]
        unit = " MiB" if k.endswith("_mb") else " ms"
        per = ", ".join(f"{x:.2f}" for x in ratios)
        best = min(o) / min(t) if min(t) else float("nan")
        print(f"| {k} | {statistics.median(o):.1f}{unit} | {statistics.median(t):.1f}{unit} | "
              f"{statistics.median(ratios):.2f} | {best:.2f} | {per} |")
    counts = [k for k in rows[0][0] if is_count(k) and k in rows[0][1]]
    if counts:
        print("\n| parameter count | anodiff | PyTorch | same |")
        print("|---|---|---|---|")
        for k in counts:
            a, b = rows[0][0][k], rows[0][1][k]
            print(f"| {k} | {a:,} | {b:,} | {'yes' if a == b else 'NO'} |")
    threads = [r.get("threads") for pair in rows for r in pair if "threads" in r]
    if threads:
        print(f"\nthreads: {sorted(set(threads))}")
    print()
    print("raw:", json.dumps([{"anodiff": a, "pytorch": b} for a, b in rows]))


if __name__ == "__main__":
    main()
