"""Reference values for anodiff's anomaly-detection metrics (crates/anodiff/src/eval/).

AUROC / AP / F1-max come from scikit-learn (roc_auc_score, average_precision_score,
precision_recall_curve). AU-PRO comes from an independent reference written here: regions from
scipy.ndimage.label with 8-connectivity, PRO and FPR evaluated directly at every unique threshold
(searchsorted on each region's sorted scores, cross-checked against a plain double loop on the
small cases) — not the incremental sweep the Rust code uses.

Versions used: scikit-learn 1.9.1, scipy 1.17.1, numpy 2.4.6, safetensors (numpy API).
Regenerate (from the repo root):
    python tools/eval/make_metric_fixtures.py
Writes tests/fixtures/eval/{binary.json, aupro.json, large.safetensors}.
"""

import json
import math
import os

import numpy as np
from scipy import ndimage
from safetensors.numpy import save_file
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "eval")
LIMIT = 0.3
EIGHT = np.ones((3, 3), dtype=int)


def nan_to_none(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def sk_metrics(scores, labels):
    """sklearn AUROC, AP, F1-max; NaN when only one class is present (anodiff's convention)."""
    labels = np.asarray(labels, dtype=bool)
    if labels.all() or not labels.any():
        return float("nan"), float("nan"), float("nan")
    s = np.asarray(scores, dtype=np.float32).astype(np.float64)
    auroc = roc_auc_score(labels, s)
    ap = average_precision_score(labels, s)
    p, r, _ = precision_recall_curve(labels, s)
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(p + r > 0, 2 * p * r / (p + r), 0.0)
    return float(auroc), float(ap), float(f1.max())


def regions_and_negatives(maps, masks):
    regions, neg = [], []
    for s, m in zip(maps, masks):
        lab, n = ndimage.label(m, structure=EIGHT)
        for r in range(1, n + 1):
            regions.append(np.sort(s[lab == r]))
        neg.append(s[~m])
    return regions, np.sort(np.concatenate(neg))


def integrate(fpr, pro, limit):
    """Trapezoids from (0,0) over the points, linear interpolation at fpr = limit."""
    area, px, py = 0.0, 0.0, 0.0
    for x, y in zip(fpr, pro):
        if x >= limit:
            y_lim = py + (y - py) * (limit - px) / (x - px)
            area += (limit - px) * (py + y_lim) / 2
            break
        area += (x - px) * (py + y) / 2
        px, py = x, y
    return area / limit


def aupro_ref(maps, masks, limit=LIMIT):
    regions, neg = regions_and_negatives(maps, masks)
    if not regions or neg.size == 0:
        return float("nan")
    thr = np.unique(np.concatenate([neg] + regions))[::-1]
    fpr = (neg.size - np.searchsorted(neg, thr, "left")) / neg.size
    pro = np.mean([(r.size - np.searchsorted(r, thr, "left")) / r.size for r in regions], axis=0)
    return integrate(fpr, pro, limit)


def aupro_loops(maps, masks, limit=LIMIT):
    """Slow double loop, used only to check aupro_ref on the small cases."""
    regions, neg = regions_and_negatives(maps, masks)
    if not regions or neg.size == 0:
        return float("nan")
    fpr, pro = [], []
    for t in sorted(set(np.concatenate([neg] + regions).tolist()), reverse=True):
        fpr.append(sum(1 for v in neg if v >= t) / neg.size)
        pro.append(sum(sum(1 for v in r if v >= t) / r.size for r in regions) / len(regions))
    return integrate(fpr, pro, limit)


def binary_cases(rng):
    cases = []

    def add(name, scores, labels):
        scores = np.asarray(scores, dtype=np.float32)
        labels = np.asarray(labels, dtype=bool)
        a, p, f = sk_metrics(scores, labels)
        cases.append(
            {
                "name": name,
                "scores": [float(v) for v in scores],
                "labels": [int(v) for v in labels],
                "auroc": nan_to_none(a),
                "ap": nan_to_none(p),
                "f1_max": nan_to_none(f),
            }
        )

    add("random", rng.random(200), rng.random(200) < 0.3)
    lab = rng.random(300) < 0.4
    add("heavy_ties", np.round(rng.random(300) * 4 + lab * 0.8) / 4, lab)
    add("constant", np.full(50, 0.5), rng.random(50) < 0.5)
    add("single_positive_class", rng.random(20), np.ones(20, bool))
    add("single_negative_class", rng.random(20), np.zeros(20, bool))
    add("signed_zero_and_negative", [-0.0, 0.0, -1.5, 2.0, 0.0, -1.5, 3.0], [1, 0, 0, 1, 1, 1, 0])
    lab = rng.random(500) < 0.1
    add("rare_positives_separable", np.where(lab, 1 + rng.random(500), rng.random(500)), lab)
    add("all_ties_but_one", [0.2] * 9 + [0.9], [1, 0, 1, 0, 0, 1, 0, 0, 0, 1])
    return cases


def blob_masks(rng, n, h, w, max_blobs, empty_every):
    masks = np.zeros((n, h, w), bool)
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        if i % empty_every == 0:
            continue
        for _ in range(rng.integers(1, max_blobs + 1)):
            cy, cx = rng.integers(0, h), rng.integers(0, w)
            ry, rx = rng.uniform(1, h / 6), rng.uniform(1, w / 6)
            masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    return masks


def score_maps(rng, masks, signal):
    out = []
    for m in masks:
        noise = ndimage.gaussian_filter(rng.standard_normal(m.shape), 1.5)
        out.append(noise + signal * ndimage.gaussian_filter(m.astype(float), 1.0))
    return np.asarray(out, dtype=np.float32)


def pixel_case(name, maps, masks, store_images=True):
    maps = np.asarray(maps, dtype=np.float32)
    masks = np.asarray(masks, dtype=bool)
    a, p, f = sk_metrics(maps.ravel(), masks.ravel())
    pro = aupro_ref(maps, masks)
    case = {
        "name": name,
        "height": int(maps.shape[1]),
        "width": int(maps.shape[2]),
        "auroc": nan_to_none(a),
        "ap": nan_to_none(p),
        "f1_max": nan_to_none(f),
        "aupro": nan_to_none(pro),
        "regions": int(sum(ndimage.label(m, structure=EIGHT)[1] for m in masks)),
    }
    if store_images:
        slow = aupro_loops(maps, masks)
        assert (math.isnan(pro) and math.isnan(slow)) or abs(pro - slow) < 1e-12, (name, pro, slow)
        case["images"] = [
            {
                "scores": [float(v) for v in s.ravel()],
                "mask": "".join("1" if v else "0" for v in m.ravel()),
            }
            for s, m in zip(maps, masks)
        ]
    return case


def main():
    rng = np.random.default_rng(20261123)
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "binary.json"), "w") as f:
        json.dump({"cases": binary_cases(rng)}, f)

    cases = []
    # Two regions that touch only diagonally (one 8-connected region) plus separate regions.
    m = np.zeros((3, 12, 10), bool)
    m[0, 1:3, 1:3] = True
    m[0, 3:5, 3:5] = True  # diagonal neighbour of the block above
    m[0, 8:11, 6:9] = True
    m[2, 0, 0] = True
    m[2, 5:9, 2] = True
    m[2, 6, 7:10] = True
    cases.append(pixel_case("multi_region_with_empty_mask", score_maps(rng, m, 1.0), m))
    cases.append(
        pixel_case("heavy_ties", np.round(score_maps(rng, m, 1.0) * 2) / 2, m)
    )
    cases.append(pixel_case("constant", np.full(m.shape, 0.25), m))
    cases.append(pixel_case("no_regions", score_maps(rng, m[1:2], 1.0), m[1:2]))
    m = blob_masks(rng, 6, 16, 20, 3, 3)
    cases.append(pixel_case("blobs", score_maps(rng, m, 0.8), m))

    # The large case: 20 images 40x48 (non-square), maps in safetensors.
    m = blob_masks(rng, 20, 40, 48, 4, 4)
    maps = score_maps(rng, m, 0.6)
    cases.append(pixel_case("large", maps, m, store_images=False))
    save_file(
        {"scores": maps, "masks": m.astype(np.uint8)},
        os.path.join(OUT, "large.safetensors"),
    )
    with open(os.path.join(OUT, "aupro.json"), "w") as f:
        json.dump({"fpr_limit": LIMIT, "cases": cases}, f)
    for c in cases:
        print(c["name"], c["regions"], c["auroc"], c["ap"], c["f1_max"], c["aupro"])


if __name__ == "__main__":
    main()
