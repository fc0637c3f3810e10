#!/usr/bin/env python3
"""Checks a running KServe V2 server against the project's model contract.

    check_v2.py --url HOST:PORT [--models NAME,...] [--heldout-images FILE]
                [--min-accuracy X] [--timeout S]

Starts nothing: the server (MLServer on a repository written by
make_repository.py, or any V2 server) must already listen on the gRPC
port. With tritonclient.grpc it checks server live/ready, each model's
readiness and metadata (version "1", platform, one input `input` and one
output `output` with the contract's datatypes and shapes), runs zero and
random batches of 1 and 3 and checks the output shapes, and checks that a
wrong datatype and a wrong shape are refused with INVALID_ARGUMENT.
With --heldout-images (models/heldout_images.bin, needs Pillow) it also
scores image_cloud on the held-out images.

Run it with the v2 venv's python (~/.cache/edge-offload/v2-venv); exit
status 0 when every check passed.
"""

import argparse
import struct
import sys
import time

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

# name -> (input datatype, input shape, output shape); -1 is the batch.
CONTRACT = {
    "image_cloud": ("UINT8", [-1, 96, 96, 3], [-1, 10]),
    "detect_cloud": ("UINT8", [-1, 256, 256, 3], [-1, 32, 6]),
    "text_cloud": ("INT64", [-1, 64], [-1, 2]),
    "digits_cloud": ("FP32", [-1, 1, 8, 8], [-1, 10]),
}
NP = {"UINT8": np.uint8, "INT64": np.int64, "FP32": np.float32}
WRONG = {"UINT8": "FP32", "INT64": "INT32", "FP32": "INT64"}

failures = []


def check(ok: bool, what: str) -> None:
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def sample(datatype: str, shape, rng, zero: bool) -> np.ndarray:
    if zero:
        return np.zeros(shape, NP[datatype])
    if datatype == "UINT8":
        return rng.integers(0, 256, shape, dtype=np.uint8)
    if datatype == "INT64":
        return rng.integers(0, 2000, shape, dtype=np.int64)
    return rng.random(shape, dtype=np.float32)


def infer(client, model: str, array: np.ndarray, datatype: str, timeout: float):
    inp = grpcclient.InferInput("input", list(array.shape), datatype)
    inp.set_data_from_numpy(array)
    out = grpcclient.InferRequestedOutput("output")
    return client.infer(model, [inp], model_version="1", outputs=[out],
                        client_timeout=timeout)


def check_model(client, name: str, rng, timeout: float) -> None:
    in_dtype, in_shape, out_shape = CONTRACT[name]
    check(client.is_model_ready(name, "1"), f"{name}: ready (version 1)")
    md = client.get_model_metadata(name, "1")
    check(md.name == name and "1" in list(md.versions),
          f"{name}: metadata name/versions ({md.name}, {list(md.versions)})")
    check(md.platform == "pytorch_libtorch", f"{name}: platform ({md.platform})")
    ins = [(t.name, t.datatype, list(t.shape)) for t in md.inputs]
    outs = [(t.name, t.datatype, list(t.shape)) for t in md.outputs]
    check(ins == [("input", in_dtype, in_shape)], f"{name}: metadata inputs {ins}")
    check(outs == [("output", "FP32", out_shape)], f"{name}: metadata outputs {outs}")

    for batch in (1, 3):
        for zero in (True, False):
            shape = [batch] + in_shape[1:]
            t0 = time.monotonic()
            res = infer(client, name, sample(in_dtype, shape, rng, zero), in_dtype, timeout)
            ms = (time.monotonic() - t0) * 1000
            y = res.as_numpy("output")
            o = res.get_output("output")
            want = [batch] + out_shape[1:]
            check(y is not None and list(y.shape) == want and o.datatype == "FP32"
                  and bool(np.isfinite(y).all()),
                  f"{name}: {'zero' if zero else 'random'} batch {batch} -> "
                  f"{o.datatype if o else None} {None if y is None else list(y.shape)}"
                  f" (want FP32 {want}) in {ms:.1f} ms")

    # Refusals: a wrong datatype and a wrong shape are INVALID_ARGUMENT.
    bad_dtype = WRONG[in_dtype]
    bad = np.zeros([1] + in_shape[1:], NP.get(bad_dtype, np.int32))
    for what, array, dtype in (
        (f"datatype {bad_dtype}", bad, bad_dtype),
        ("shape with a wrong last dimension",
         np.zeros([1] + in_shape[1:-1] + [in_shape[-1] + 1], NP[in_dtype]), in_dtype),
    ):
        try:
            infer(client, name, array, dtype, timeout)
            check(False, f"{name}: {what} refused (it was accepted)")
        except InferenceServerException as e:
            check(e.status() == "StatusCode.INVALID_ARGUMENT",
                  f"{name}: {what} refused: {e.status()} {e.message()[:90]}")


def read_images(path: str):
    with open(path, "rb") as f:
        b = f.read()
    if b[:8] != b"EDGEIMG1":
        raise SystemExit(f"{path}: missing magic EDGEIMG1")
    (n,) = struct.unpack_from("<I", b, 8)
    pos, out = 12, []
    for _ in range(n):
        label = b[pos]
        (length,) = struct.unpack_from("<I", b, pos + 1)
        out.append((label, b[pos + 5:pos + 5 + length]))
        pos += 5 + length
    if pos != len(b):
        raise SystemExit(f"{path}: {len(b) - pos} trailing bytes")
    return out


def check_heldout(client, path: str, min_accuracy: float, timeout: float) -> None:
    import io
    from PIL import Image

    images = read_images(path)
    arrays = []
    for _, jpeg in images:
        img = Image.open(io.BytesIO(jpeg)).convert("RGB")
        if img.size != (96, 96):
            img = img.resize((96, 96), Image.BILINEAR)
        arrays.append(np.asarray(img, dtype=np.uint8))
    labels = np.array([l for l, _ in images])
    preds, t0 = [], time.monotonic()
    for i in range(0, len(arrays), 50):
        y = infer(client, "image_cloud", np.stack(arrays[i:i + 50]), "UINT8",
                  timeout).as_numpy("output")
        preds.extend(y.argmax(axis=1).tolist())
    acc = float((np.array(preds) == labels).mean())
    check(acc >= min_accuracy,
          f"image_cloud: held-out accuracy {acc:.4f} on {len(labels)} images "
          f"(min {min_accuracy}) in {time.monotonic() - t0:.1f} s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", required=True, help="gRPC HOST:PORT")
    p.add_argument("--models", default=",".join(CONTRACT))
    p.add_argument("--heldout-images")
    p.add_argument("--min-accuracy", type=float, default=0.72)
    p.add_argument("--timeout", type=float, default=60.0)
    args = p.parse_args()
    rng = np.random.default_rng(20261130)
    client = grpcclient.InferenceServerClient(args.url)
    check(client.is_server_live(), "server live")
    check(client.is_server_ready(), "server ready")
    md = client.get_server_metadata()
    print(f"     server {md.name} {md.version}")
    for name in [m for m in args.models.split(",") if m]:
        if name not in CONTRACT:
            raise SystemExit(f"unknown model {name}; known: {sorted(CONTRACT)}")
        check_model(client, name, rng, args.timeout)
    if args.heldout_images:
        check_heldout(client, args.heldout_images, args.min_accuracy, args.timeout)
    print(f"{'FAILED: ' + str(len(failures)) if failures else 'all checks passed'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
