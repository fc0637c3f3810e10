"""Train and export the two digit classifiers the agent serves, plus the held-out test set.

Run once by a developer; the outputs are committed and CI never retrains:

    python3 -m venv /root/train-venv
    /root/train-venv/bin/pip install torch==2.13.0 scikit-learn numpy
    /root/train-venv/bin/python models/train.py

torch must match the libtorch version the agent links (2.13.0, see xtask setup) so
that the TorchScript files load there. Everything is written next to this script:

    digits_edge.pt    small CNN (TorchScript), run on the edge device
    digits_cloud.pt   larger, more accurate CNN (TorchScript), run by the offload target
    digits_test.bin   held-out test set (format below), never trained on
    metrics.json      parameter counts, held-out accuracies, training times, versions
    samples/          one PGM image per digit from the held-out set, for `submit`

Data: scikit-learn's bundled `load_digits` (1797 images, 8x8, values 0..16), so no
download happens here. A stratified 80/20 split with SPLIT_SEED gives train/held-out.

Image wire format (what the agent sends and the models expect after decoding):
64 bytes, row-major 8x8, uint8 0..255, pixel = floor(v * 255 / 16 + 0.5) for a
dataset value v. Model input: float32 tensor [N, 1, 8, 8] = pixel / 255.0.
Model output: logits float32 [N, 10]. N is dynamic.

digits_test.bin format (all integers little-endian):
    offset 0   8 bytes   ASCII magic "DIGITS01"
    offset 8   u32       record count N
    offset 12  N records of 65 bytes: 1 byte label (0..9), then 64 pixel bytes
                         in the wire format above
"""

import json
import random
import struct
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

SPLIT_SEED = 20240601
TRAIN_SEED = 7
TEST_FRACTION = 0.2
MAGIC = b"DIGITS01"
RECORD_BYTES = 65

OUT_DIR = Path(__file__).resolve().parent


def quantise(values: np.ndarray) -> np.ndarray:
    """Dataset values 0..16 -> wire-format bytes 0..255 (round half up)."""
    return np.floor(values.astype(np.float64) * 255.0 / 16.0 + 0.5).astype(np.uint8)


def to_input(pixels: np.ndarray) -> torch.Tensor:
    """Wire-format bytes [N, 64] -> model input [N, 1, 8, 8]; mirrors what the agent does."""
    return torch.from_numpy(pixels.astype(np.float32) / 255.0).reshape(-1, 1, 8, 8)


class EdgeNet(nn.Module):
    """~38k parameters: cheap enough for per-request CPU inference on the edge."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        return self.fc2(F.relu(self.fc1(x)))


class CloudNet(nn.Module):
    """~2.35M parameters: trades latency for accuracy on the offload target.

    Most parameters sit in the classifier, where they are cheap to train; the
    convolutions stay narrow so training remains a few minutes on one CPU core.
    """

    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
            )

        self.features = nn.Sequential(
            block(1, 32),
            block(32, 64),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            block(64, 128),
            block(128, 128),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(1),
            nn.Dropout(0.3),
            nn.Linear(128 * 4 * 4, 1024),
            nn.ReLU(),
            nn.Dropout(0.3),
            nn.Linear(1024, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def random_affine(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Small random rotation (+-11 deg), scale (0.9-1.1) and shift (about +-1 px).

    1.4k images are too few for a 2M-parameter model; handwriting varies in
    exactly these ways, so the augmented copies stay plausible digits. The result
    is re-quantised to 1/255 steps so training still sees wire-format inputs.
    """
    n = x.shape[0]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    angle, scale = uniform(-0.2, 0.2), uniform(0.9, 1.1)
    # affine_grid works in [-1, 1] coordinates: 0.25 is one pixel of an 8-pixel side.
    tx, ty = uniform(-0.25, 0.25), uniform(-0.25, 0.25)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")
    return torch.round(out.clamp(0.0, 1.0) * 255.0) / 255.0


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float,
          weight_decay: float, augment: bool, seed: int) -> float:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    batch = 64
    steps = epochs * ((len(x) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    start = time.perf_counter()
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch):
            idx = perm[i : i + batch]
            xb = x[idx]
            if augment:
                xb = random_affine(xb, gen)
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    return time.perf_counter() - start


def accuracy(module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        pred = module(x).argmax(dim=1)
    return float((pred == y).float().mean())


def export(model: nn.Module, path: Path) -> None:
    scripted = torch.jit.script(model.cpu().eval())
    scripted.save(str(path))


def check_dynamic_batch(module, x: torch.Tensor) -> None:
    with torch.no_grad():
        for n in (1, 32):
            out = module(x[:n])
            assert out.shape == (n, 10) and out.dtype == torch.float32, out.shape


def write_test_set(path: Path, labels: np.ndarray, pixels: np.ndarray) -> None:
    with open(path, "wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<I", len(labels)))
        for label, img in zip(labels, pixels):
            f.write(bytes([int(label)]))
            f.write(img.tobytes())
    assert path.stat().st_size == len(MAGIC) + 4 + RECORD_BYTES * len(labels)


def write_samples(dir_: Path, labels: np.ndarray, pixels: np.ndarray) -> list:
    dir_.mkdir(exist_ok=True)
    for old in dir_.glob("digit-*.pgm"):
        old.unlink()
    written = []
    for digit in range(10):
        # Index is the record's position in digits_test.bin, so a sample can be traced back.
        index = int(np.flatnonzero(labels == digit)[0])
        name = f"digit-{digit}-{index}.pgm"
        with open(dir_ / name, "wb") as f:
            f.write(b"P5\n8 8\n255\n")
            f.write(pixels[index].tobytes())
        written.append(name)
    return written


def main() -> None:
    random.seed(TRAIN_SEED)
    np.random.seed(TRAIN_SEED)
    torch.manual_seed(TRAIN_SEED)
    torch.use_deterministic_algorithms(True)
    # CPU kernels may split reductions by thread count; one thread keeps reruns bit-identical.
    torch.set_num_threads(1)

    digits = load_digits()
    pixels = quantise(digits.data)  # [1797, 64] uint8, wire format
    labels = digits.target.astype(np.uint8)
    train_px, test_px, train_y, test_y = train_test_split(
        pixels, labels, test_size=TEST_FRACTION, stratify=labels, random_state=SPLIT_SEED
    )
    x_train, y_train = to_input(train_px), torch.from_numpy(train_y.astype(np.int64))
    x_test, y_test = to_input(test_px), torch.from_numpy(test_y.astype(np.int64))
    print(f"train {len(train_y)}  held-out {len(test_y)}")

    # Hyperparameters and the cloud augmentation were picked on a validation split
    # carved out of the training part; the held-out set is only ever scored.
    # The edge model is trained plainly: it is the cheap baseline the agent offloads from.
    configs = [
        ("digits_edge", EdgeNet, dict(epochs=60, lr=3e-3, weight_decay=1e-4, augment=False)),
        ("digits_cloud", CloudNet, dict(epochs=60, lr=2e-3, weight_decay=5e-4, augment=True)),
    ]
    results = []
    for name, cls, cfg in configs:
        torch.manual_seed(TRAIN_SEED)
        model = cls()
        params = sum(p.numel() for p in model.parameters())
        secs = train(model, x_train, y_train, seed=TRAIN_SEED, **cfg)
        path = OUT_DIR / f"{name}.pt"
        export(model, path)
        # Score what the agent will load, not the Python object it came from.
        reloaded = torch.jit.load(str(path), map_location="cpu")
        reloaded.eval()
        check_dynamic_batch(reloaded, x_test)
        acc = accuracy(reloaded, x_test, y_test)
        print(f"{name}: {params} params, trained {secs:.1f} s, held-out accuracy {acc:.4f}, "
              f"{path.stat().st_size} bytes")
        results.append({
            "name": name,
            "file": path.name,
            "parameters": params,
            "held_out_accuracy": round(acc, 6),
            "test_samples": len(test_y),
            "train_seconds": round(secs, 2),
        })

    write_test_set(OUT_DIR / "digits_test.bin", test_y, test_px)
    samples = write_samples(OUT_DIR / "samples", test_y, test_px)
    metrics = {
        "split_seed": SPLIT_SEED,
        "train_seed": TRAIN_SEED,
        "test_fraction": TEST_FRACTION,
        "torch_version": torch.__version__,
        "models": results,
        "samples": samples,
    }
    (OUT_DIR / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
