#!/usr/bin/env python3
"""Makes the cloud image classifier and the cloud detector partitionable for
split computing: the edge device runs a head of the network, the features
cross the network (u8-quantised, zstd-compressed), the cloud runs the tail.

    ~/.cache/edge-offload/train-venv/bin/python models/export_splits.py

Inputs (committed, never retrained here): models/image_cloud.pt and
models/detect_cloud.pt, the TorchScript models that models/train_workloads.py
trained from the registry datasets named in its header (Debian
`dataset-fashion-mnist`, the photos bundled in the PyPI `scikit-image` wheel),
and their held-out sets models/heldout_images.bin (1000 images) and
models/heldout_scenes.bin (200 scenes). Nothing is trained or downloaded.

Outputs (models/):
- image_cloud_split.pt, detect_cloud_split.pt: one scripted TorchScript
  module each, holding the original (traced) submodules, with the methods
      forward(x: Tensor) -> Tensor                 the full model's output
      head(x: Tensor, point: int) -> Tensor        uint8 NHWC -> float32 NCHW features
      tail(h: Tensor, point: int) -> Tensor        features -> the full model's output
  so that tail(head(x, p), p) == forward(x) == the original model's output.
  The batch dimension is dynamic.
  Image (ResNet-18 layout): point k = after the stem and the first k of the
  8 residual blocks (head accepts 0..8); exported k = 0, 3, 5, 7.
  Detection (CenterNet): point 0 = after s2, point 1 = after s4 (the only
  boundaries that carry one tensor; later ones have skip connections); the
  tail runs the rest of the network and the top-32 peak decoding.
- splits.toml: the manifest the agent reads (points, shapes, seed timings,
  compressed feature sizes).
- splits_metrics.json: held-out quality of the full model, of head->tail in
  float32 and of head->quantise->dequantise->tail per point, feature sizes,
  timings, versions.

Quantisation (the agent implements exactly this): per sample, over that
sample's whole feature tensor, lo = min, hi = max, scale = (hi - lo) / 255
(1 if hi == lo), all in float32; q = clamp(round((x - lo) / scale), 0, 255)
as uint8, where round is half away from zero (Rust's f32::round); the
dequantised value is q * scale + lo. The q bytes (C-contiguous NCHW order)
are compressed with zstd level 1 (the `zstd` command line tool).

The script fails (assert) when the split module's forward differs from the
original model (max abs diff >= 1e-4 on 64 held-out inputs), when head->tail
in float32 differs from the full output (>= 1e-3), or when an image point
loses more than 0.5 accuracy points after quantisation; a detection point
losing more than 0.5 mAP points is reported and left out of the manifest.
Timings are one thread, batch 1, medians of repeated calls (round robin
over the methods) on the developer's machine: seeds for the agent, which measures its own.
"""

import io
import json
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import time
import zlib
from typing import List, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import train_workloads as tw  # noqa: E402  (guarded by __main__: importing trains nothing)

torch.set_num_threads(1)  # after the import, which sets its own thread count

TOPK = tw.TOPK
STRIDE = tw.STRIDE
MAX_LOSS_POINTS = 0.5
ZSTD_SAMPLES = 100
COMMAND = "~/.cache/edge-offload/train-venv/bin/python models/export_splits.py"

IMAGE_POINTS = [("stride4", 0, [32, 24, 24]), ("stride8", 3, [64, 12, 12]), ("stride16", 5, [128, 6, 6]), ("stride32", 7, [256, 3, 3])]
DETECT_POINTS = [("stride2", 0, [32, 128, 128]), ("stride4", 1, [80, 64, 64])]


# ---------------------------------------------------------------- split modules


class ImageSplit(nn.Module):
    """ResNet-18 classifier: pre, stem, 8 blocks, global mean, linear."""

    def __init__(self, full):
        super().__init__()
        self.pre = full.pre
        self.stem = full.net.stem
        self.blocks = nn.ModuleList(list(full.net.layers.children()))
        self.fc = full.net.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(self.pre(x))
        for b in self.blocks:
            h = b(h)
        return self.fc(h.mean((2, 3)))

    @torch.jit.export
    def head(self, x: torch.Tensor, point: int) -> torch.Tensor:
        if point < 0 or point > 8:
            raise ValueError("split point must be 0..8")
        h = self.stem(self.pre(x))
        for i, b in enumerate(self.blocks):
            if i < point:
                h = b(h)
        return h

    @torch.jit.export
    def tail(self, h: torch.Tensor, point: int) -> torch.Tensor:
        if point < 0 or point > 8:
            raise ValueError("split point must be 0..8")
        for i, b in enumerate(self.blocks):
            if i >= point:
                h = b(h)
        return self.fc(h.mean((2, 3)))


class DetectSplit(nn.Module):
    """CenterNet detector with the decoding of train_workloads.Detector."""

    __constants__ = ["topk", "stride"]

    def __init__(self, full):
        super().__init__()
        self.topk = TOPK
        self.stride = STRIDE
        net = full.net
        self.pre = full.pre
        self.s2 = net.s2
        self.s4 = net.s4
        self.s8 = net.s8
        self.s16 = net.s16
        self.up16 = net.up16
        self.up8 = net.up8
        self.fuse = net.fuse
        self.hm = net.hm
        self.wh = net.wh
        self.off = net.off

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rest(self.s4(self.s2(self.pre(x))))

    @torch.jit.export
    def head(self, x: torch.Tensor, point: int) -> torch.Tensor:
        if point < 0 or point > 1:
            raise ValueError("split point must be 0 (after s2) or 1 (after s4)")
        h = self.s2(self.pre(x))
        if point == 1:
            h = self.s4(h)
        return h

    @torch.jit.export
    def tail(self, h: torch.Tensor, point: int) -> torch.Tensor:
        if point < 0 or point > 1:
            raise ValueError("split point must be 0 (after s2) or 1 (after s4)")
        if point == 0:
            h = self.s4(h)
        return self.rest(h)

    def rest(self, f4: torch.Tensor) -> torch.Tensor:
        f8 = self.s8(f4)
        f16 = self.s16(f8)
        f8 = f8 + F.interpolate(self.up16(f16), scale_factor=2.0, mode="nearest")
        f4 = self.fuse(f4 + F.interpolate(self.up8(f8), scale_factor=2.0, mode="nearest"))
        return self.decode(self.hm(f4), self.wh(f4), self.off(f4))

    def decode(self, hm: torch.Tensor, wh: torch.Tensor, off: torch.Tensor) -> torch.Tensor:
        heat = torch.sigmoid(hm)
        n, c, h, w = heat.shape
        peaks = (F.max_pool2d(heat, 3, 1, 1) == heat).float() * heat
        scores, idx = peaks.reshape(n, -1).topk(self.topk)
        cls = torch.div(idx, h * w, rounding_mode="floor")
        pix = idx % (h * w)
        ys = torch.div(pix, w, rounding_mode="floor").float()
        xs = (pix % w).float()
        wh = wh.reshape(n, 2, -1).gather(2, pix.unsqueeze(1).expand(n, 2, self.topk))
        off = off.reshape(n, 2, -1).gather(2, pix.unsqueeze(1).expand(n, 2, self.topk))
        cx = (xs + off[:, 0]) * self.stride
        cy = (ys + off[:, 1]) * self.stride
        bw = wh[:, 0] * self.stride
        bh = wh[:, 1] * self.stride
        return torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2, scores, cls.float()], dim=2)


# ---------------------------------------------------------------- data


def decode_jpeg(b):
    return np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))


def read_images(path):
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"EDGEIMG1", "not a held-out image file"
    (count,) = struct.unpack_from("<I", data, 8)
    pos, xs, ys = 12, [], []
    for _ in range(count):
        label, n = struct.unpack_from("<BI", data, pos)
        pos += 5
        xs.append(decode_jpeg(data[pos : pos + n]))
        ys.append(label)
        pos += n
    assert pos == len(data)
    return torch.from_numpy(np.stack(xs)), torch.tensor(ys)


def read_scenes(path):
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"EDGEDET1", "not a held-out scene file"
    (count,) = struct.unpack_from("<I", data, 8)
    pos, xs, truths = 12, [], []
    for _ in range(count):
        (n,) = struct.unpack_from("<I", data, pos)
        pos += 4
        xs.append(decode_jpeg(data[pos : pos + n]))
        pos += n
        (nb,) = struct.unpack_from("<B", data, pos)
        pos += 1
        boxes = []
        for _ in range(nb):
            boxes.append(struct.unpack_from("<Bffff", data, pos))
            pos += 17
        truths.append(boxes)
    assert pos == len(data)
    return torch.from_numpy(np.stack(xs)), truths


# ---------------------------------------------------------------- quantisation


def quantise(h):
    """Per-sample u8 quantisation (module docstring). Returns (q uint8, dequantised float32)."""
    n = h.shape[0]
    flat = h.reshape(n, -1).float()
    lo = flat.min(1, keepdim=True).values
    hi = flat.max(1, keepdim=True).values
    scale = (hi - lo) / 255.0
    scale = torch.where(hi == lo, torch.ones_like(scale), scale)
    v = (flat - lo) / scale
    fl = v.floor()
    v = torch.where(v - fl >= 0.5, fl + 1.0, fl)  # round half away from zero (v >= 0)
    q = v.clamp(0, 255).to(torch.uint8)
    deq = q.float() * scale + lo
    return q.reshape(h.shape), deq.reshape(h.shape)


ZSTD = shutil.which("zstd")


def compressed_size(q_sample):
    raw = q_sample.contiguous().numpy().tobytes()
    if ZSTD:
        return len(subprocess.run([ZSTD, "-1", "-c", "-q"], input=raw, stdout=subprocess.PIPE, check=True).stdout)
    return len(zlib.compress(raw, 1))


def compressor_name():
    if not ZSTD:
        return "zlib level 1 (zstd command line tool not found)"
    v = subprocess.run([ZSTD, "--version"], stdout=subprocess.PIPE, text=True).stdout.strip()
    return f"zstd -1 ({v})"


# ---------------------------------------------------------------- measuring


def time_interleaved(fns, warmup=10, rounds=100):
    """Median and min wall time (ms) of each zero-argument callable, called
    round robin so that any background load spreads evenly over them."""
    times = {k: [] for k in fns}
    with torch.no_grad():
        for _ in range(warmup):
            for fn in fns.values():
                fn()
        for _ in range(rounds):
            for k, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[k].append((time.perf_counter() - t0) * 1000)
    return {k: (round(statistics.median(v), 3), round(min(v), 3)) for k, v in times.items()}


def batched(fn, x, bs):
    with torch.no_grad():
        return torch.cat([fn(x[i : i + bs]) for i in range(0, len(x), bs)])


def max_abs(a, b):
    return float((a - b).abs().max())


def accuracy(logits, y):
    return float((logits.argmax(1) == y).float().mean())


def m_ap(out, truths):
    return tw.mean_ap(tw.detections(out), truths)


def export(name, wrapper_cls, quality_fn, x, points, bs, rounds, log, fail_hard):
    path_full = f"{HERE}/{name}.pt"
    path_split = f"{HERE}/{name}_split.pt"
    full = torch.jit.load(path_full).eval()
    wrapper = wrapper_cls(full).eval()
    torch.jit.script(wrapper).save(path_split)
    split = torch.jit.load(path_split).eval()  # everything below uses the reloaded file
    log(f"{name}: wrote {path_split} ({os.path.getsize(path_split)} bytes; original {os.path.getsize(path_full)})")

    with torch.no_grad():
        d_fwd = max_abs(split(x[:64]), full(x[:64]))
    log(f"{name}: forward of the split module vs the original on 64 held-out inputs: max abs diff {d_fwd:.3g}")
    assert d_fwd < 1e-4, f"{name}: split forward differs from the original ({d_fwd})"

    ref = batched(full, x, bs)
    q_full = quality_fn(ref)
    log(f"{name}: held-out quality of the full model {q_full:.4f}")
    one = x[:1]
    timed = {"full": lambda: full(one), "split_forward": lambda: split(one)}
    out = {
        "file": os.path.basename(path_split), "bytes": os.path.getsize(path_split),
        "full": os.path.basename(path_full), "full_bytes": os.path.getsize(path_full),
        "heldout_items": len(x), "quality_full": round(q_full, 4),
        "forward_vs_original_max_abs_diff_64": d_fwd,
        "points": {}, "dropped_points": [],
    }
    for pname, k, shape in points:
        with torch.no_grad():
            h = batched(lambda b: split.head(b, k), x, bs)
            assert list(h.shape[1:]) == shape, f"{name} {pname}: features {list(h.shape[1:])}, expected {shape}"
            assert h.dtype == torch.float32
            assert list(split.head(one, k).shape) == [1] + shape
            tail_f32 = torch.cat([split.tail(h[i : i + bs], k) for i in range(0, len(h), bs)])
            q, deq = quantise(h)
            tail_u8 = torch.cat([split.tail(deq[i : i + bs], k) for i in range(0, len(deq), bs)])
        d_tail = max_abs(tail_f32, ref)
        assert d_tail < 1e-3, f"{name} {pname}: head->tail differs from the full output ({d_tail})"
        q_f32 = quality_fn(tail_f32)
        q_u8 = quality_fn(tail_u8)
        loss = round((q_full - q_u8) * 100, 4)
        sizes = [compressed_size(q[i]) for i in range(min(ZSTD_SAMPLES, len(q)))]
        h1 = h[:1].clone()
        timed[f"head {pname}"] = lambda k=k: split.head(one, k)
        timed[f"tail {pname}"] = lambda k=k, h1=h1: split.tail(h1, k)
        numel = int(np.prod(shape))
        rec = {
            "index": k, "shape": shape,
            "head_tail_f32_max_abs_diff": d_tail,
            "quality_f32": round(q_f32, 4), "quality_u8": round(q_u8, 4), "quality_loss_points": loss,
            "u8_max_abs_error": max_abs(deq, h),
            "raw_f32_bytes": numel * 4, "u8_bytes": numel,
            "u8_zstd_mean_bytes": round(float(np.mean(sizes)), 1),
            "u8_zstd_min_bytes": min(sizes), "u8_zstd_max_bytes": max(sizes), "zstd_samples": len(sizes),
        }
        log(f"{name} {pname} (point {k}, {shape}): f32 diff {d_tail:.3g}, quality f32 {q_f32:.4f}, "
            f"u8 {q_u8:.4f} (loss {loss} points), u8+zstd {rec['u8_zstd_mean_bytes']} B")
        if loss > MAX_LOSS_POINTS:
            if fail_hard:
                raise AssertionError(f"{name} {pname}: quantised quality loss {loss} points > {MAX_LOSS_POINTS}")
            log(f"{name} {pname}: DROPPED, quantised quality loss {loss} points > {MAX_LOSS_POINTS}")
            rec["dropped"] = True
            out["dropped_points"].append(pname)
        out["points"][pname] = rec
    t = time_interleaved(timed, rounds=rounds)
    out["full_ms"], out["full_ms_min"] = t["full"]
    out["split_forward_ms"], out["split_forward_ms_min"] = t["split_forward"]
    for pname, rec in out["points"].items():
        rec["head_ms"], rec["head_ms_min"] = t[f"head {pname}"]
        rec["tail_ms"], rec["tail_ms_min"] = t[f"tail {pname}"]
        log(f"{name} {pname}: head {rec['head_ms']} ms, tail {rec['tail_ms']} ms (medians; full {out['full_ms']} ms)")
    return out


def toml_model(task_type, m, input_shape):
    lines = [
        "[[model]]",
        f'task_type = "{task_type}"',
        f'file = "{m["file"]}"',
        f'full = "{m["full"]}"  # the model the composition equals',
        f"input = [{', '.join(str(v) for v in input_shape)}]",
        f"full_ms = {m['full_ms']}",
    ]
    for pname, p in m["points"].items():
        if p.get("dropped"):
            continue
        lines += [
            "  [[model.point]]",
            f'  name = "{pname}"',
            f"  index = {p['index']}",
            f"  shape = [{', '.join(str(v) for v in p['shape'])}]",
            f"  head_ms = {p['head_ms']}",
            f"  tail_ms = {p['tail_ms']}",
            f"  feature_bytes = {int(round(p['u8_zstd_mean_bytes']))}",
        ]
    return "\n".join(lines)


def main():
    log = lambda s: print(s, flush=True)
    t0 = time.time()
    load_before = os.getloadavg()
    hx, hy = read_images(f"{HERE}/heldout_images.bin")
    sx, truths = read_scenes(f"{HERE}/heldout_scenes.bin")
    log(f"held-out: {len(hx)} images, {len(sx)} scenes; compressor {compressor_name()}")

    image = export("image_cloud", ImageSplit, lambda o: accuracy(o, hy), hx, IMAGE_POINTS, 100, 200, log, True)
    detect = export("detect_cloud", DetectSplit, lambda o: m_ap(o, truths), sx, DETECT_POINTS, 8, 60, log, False)
    image["quality_metric"] = "accuracy"
    detect["quality_metric"] = "mAP@0.5"

    metrics = {
        "_run": {
            "torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
            "command": COMMAND, "seconds": None, "loadavg_1m_before": round(load_before[0], 2),
            "compressor": compressor_name(), "zstd_samples_per_point": ZSTD_SAMPLES,
            "quantisation": "per sample: lo=min, hi=max, scale=(hi-lo)/255 (1 if hi==lo), float32; "
            "q=clamp(round_half_away((x-lo)/scale),0,255) u8; x'=q*scale+lo",
            "timing": "1 thread, batch 1, on the reloaded files, the first held-out input: median (and min) of "
            "200 (image) / 60 (detection) rounds after 10 warm-up rounds; each round calls full, forward and "
            "every head and tail once (round robin)",
            "quality_loss_points": "(quality_full - quality_u8) * 100; bound 0.5",
            "u8_bytes_note": "q bytes only; the per-sample lo and scale (2 f32) are not counted",
        },
        "image_classification": image,
        "object_detection": detect,
    }
    metrics["_run"]["seconds"] = round(time.time() - t0, 1)
    with open(f"{HERE}/splits_metrics.json", "w") as f:
        json.dump(metrics, f, indent=2)
        f.write("\n")

    toml = [
        "# Written by models/export_splits.py; do not edit.",
        "# head_ms, tail_ms, full_ms: measured by this script on the developer's machine",
        "# (1 thread, batch 1, unconstrained CPU), seeds only.",
        "# feature_bytes: mean size of one sample's u8-quantised features after zstd level 1.",
        "",
        toml_model("image_classification", image, [96, 96, 3]),
    ]
    if any(not p.get("dropped") for p in detect["points"].values()):
        toml += ["", toml_model("object_detection", detect, [256, 256, 3])]
    else:
        log("object_detection: every point dropped; not in the manifest")
    with open(f"{HERE}/splits.toml", "w") as f:
        f.write("\n".join(toml) + "\n")
    log(f"wrote splits.toml and splits_metrics.json ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
