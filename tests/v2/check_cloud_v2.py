#!/usr/bin/env python3
"""Drives our cloud's KServe V2 listener with PyPI tritonclient (grpc).

    check_cloud_v2.py --url HOST:PORT --cases DIR [--tls-dir DIR]
                      [--server-version V] [--max-bytes N]

DIR/cases.json (written by tests/tests/v2_server.rs) lists each model: its
name, version, input datatype and per-sample shape, what its output means
(logits or boxes, min_score, labels) and, per held-out sample, the answer
our cloud's EdgeAIService gave for the same payload. DIR/<model>.bin holds
the samples' input tensors back to back (as `agent::infer` prepares them).
The script checks server liveness, readiness and metadata, each model's
readiness and metadata, sends the samples in batches, computes the answers
from the raw `output` tensor with numpy (softmax + argmax + label; boxes
over min_score, scaled, strongest first) and compares them: class and label
equal, confidence within 1e-4, boxes within 1e-3. Bad requests (wrong
shape, wrong datatype, a batch over the size limit) must be
INVALID_ARGUMENT and an unknown model NOT_FOUND. Exit status 0 when every
check passed.
"""

import argparse
import json
import os
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

NP = {"UINT8": np.uint8, "INT64": np.int64, "FP32": np.float32}
failures = []


def check(ok, what):
    if not ok:
        print("FAIL " + what)
        failures.append(what)
    return ok


def expect_status(fn, status, what):
    try:
        fn()
        check(False, f"{what}: accepted, expected {status}")
    except InferenceServerException as e:
        check(e.status() == f"StatusCode.{status}", f"{what}: {e.status()} {e.message()[:120]}")


def answer(row, model, scale):
    """The answer for one sample's raw output, as the agent computes it."""
    labels = model["labels"]
    label = lambda c: labels[c] if 0 <= c < len(labels) else str(c)
    if model["output"] == "logits":
        x = row.astype(np.float32)
        e = np.exp(x - x.max())
        p = e / e.sum()
        c = int(np.argmax(p))
        return {"class": c, "confidence": float(p[c]), "label": label(c), "boxes": []}
    rows = row.reshape(-1, 6)
    keep = rows[(rows[:, 4] >= model["min_score"]) & np.isfinite(rows).all(axis=1)]
    keep = keep[np.argsort(-keep[:, 4], kind="stable")]
    sx, sy = scale
    boxes = [
        {"class": int(r[5]), "label": label(int(r[5])), "score": float(r[4]),
         "x1": float(r[0] * sx), "y1": float(r[1] * sy),
         "x2": float(r[2] * sx), "y2": float(r[3] * sy)}
        for r in keep
    ]
    if boxes:
        return {"class": boxes[0]["class"], "confidence": boxes[0]["score"],
                "label": boxes[0]["label"], "boxes": boxes}
    return {"class": -1, "confidence": 0.0, "label": "", "boxes": []}


def same(got, want, what):
    ok = check(got["class"] == want["class"], f"{what}: class {got['class']} vs {want['class']}")
    ok &= check(got["label"] == want["label"], f"{what}: label {got['label']!r} vs {want['label']!r}")
    ok &= check(abs(got["confidence"] - want["confidence"]) <= 1e-4,
                f"{what}: confidence {got['confidence']} vs {want['confidence']}")
    if not check(len(got["boxes"]) == len(want["boxes"]),
                 f"{what}: {len(got['boxes'])} boxes vs {len(want['boxes'])}"):
        return False
    for a, b in zip(got["boxes"], want["boxes"]):
        ok &= check(a["class"] == b["class"] and a["label"] == b["label"], f"{what}: box {a} vs {b}")
        ok &= check(all(abs(a[k] - b[k]) <= 1e-3 for k in ("score", "x1", "y1", "x2", "y2")),
                    f"{what}: box {a} vs {b}")
    return ok


def infer(client, model, array, datatype, request_id=""):
    inp = grpcclient.InferInput("input", list(array.shape), datatype)
    inp.set_data_from_numpy(array)
    return client.infer(model["name"], [inp], model_version=model["version"],
                        outputs=[grpcclient.InferRequestedOutput("output")],
                        request_id=request_id, client_timeout=60)


def check_model(client, model, cases_dir, max_bytes):
    name, dt, shape = model["name"], model["datatype"], model["shape"]
    check(client.is_model_ready(name, model["version"]), f"{name}: ready")
    check(not client.is_model_ready(name, "no-such-version"), f"{name}: other version not ready")
    md = client.get_model_metadata(name, model["version"])
    check(md.name == name and list(md.versions) == [model["version"]],
          f"{name}: metadata name/versions {md.name} {list(md.versions)}")
    check(md.platform == "pytorch_libtorch", f"{name}: platform {md.platform}")
    ins = [(t.name, t.datatype, list(t.shape)) for t in md.inputs]
    check(ins == [("input", dt, [-1] + shape)], f"{name}: inputs {ins}")
    outs = [(t.name, t.datatype, list(t.shape)) for t in md.outputs]
    rank = 2 if model["output"] == "logits" else 3
    check(len(outs) == 1 and outs[0][0] == "output" and outs[0][1] == "FP32"
          and len(outs[0][2]) == rank and outs[0][2][0] == -1
          and (rank == 2 or outs[0][2][2] == 6), f"{name}: outputs {outs}")

    samples = model["samples"]
    data = np.fromfile(os.path.join(cases_dir, name + ".bin"), dtype=NP[dt])
    data = data.reshape([len(samples)] + shape)
    per = data[0].nbytes
    batch = max(1, min(16, max_bytes // per))
    compared = 0
    for start in range(0, len(samples), batch):
        chunk = data[start:start + batch]
        rid = f"{name}-{start}"
        res = infer(client, model, chunk, dt, rid)
        resp = res.get_response()
        check(resp.id == rid, f"{name}: id echoed ({resp.id!r})")
        check(resp.model_version == model["version"], f"{name}: model_version {resp.model_version!r}")
        y = res.as_numpy("output")
        if not check(y is not None and y.shape[0] == len(chunk) and y.dtype == np.float32,
                     f"{name}: output {None if y is None else (y.shape, y.dtype)}"):
            continue
        for i, row in enumerate(y):
            s = samples[start + i]
            if same(answer(row, model, s["scale"]), s["expected"], f"{name} sample {start + i}"):
                compared += 1
    print(f"ok   {name}: {compared}/{len(samples)} answers equal to EdgeAIService's "
          f"(batches of {batch})")

    bad_shape = np.zeros([1] + shape[:-1] + [shape[-1] + 1], NP[dt])
    expect_status(lambda: infer(client, model, bad_shape, dt), "INVALID_ARGUMENT",
                  f"{name}: wrong shape")
    other = "INT64" if dt != "INT64" else "FP32"
    expect_status(lambda: infer(client, model, np.zeros([1] + shape, NP[other]), other),
                  "INVALID_ARGUMENT", f"{name}: wrong datatype")
    too_many = max_bytes // per + 1
    expect_status(lambda: infer(client, model, np.zeros([too_many] + shape, NP[dt]), dt),
                  "INVALID_ARGUMENT", f"{name}: batch of {too_many} over the size limit")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--cases", required=True)
    p.add_argument("--tls-dir")
    p.add_argument("--server-version", default="")
    p.add_argument("--max-bytes", type=int, default=1 << 20)
    a = p.parse_args()
    kw = {}
    if a.tls_dir:
        kw = dict(ssl=True,
                  root_certificates=os.path.join(a.tls_dir, "ca.pem"),
                  private_key=os.path.join(a.tls_dir, "client.key"),
                  certificate_chain=os.path.join(a.tls_dir, "client.pem"))
    client = grpcclient.InferenceServerClient(a.url, **kw)
    check(client.is_server_live(), "server live")
    check(client.is_server_ready(), "server ready")
    md = client.get_server_metadata()
    check(md.name == "edge-offload-cloud", f"server name {md.name}")
    check(not a.server_version or md.version == a.server_version, f"server version {md.version}")
    check(list(md.extensions) == [], f"extensions {list(md.extensions)}")
    check(not client.is_model_ready("no_such_model"), "unknown model not ready")
    expect_status(lambda: client.get_model_metadata("no_such_model"), "NOT_FOUND",
                  "unknown model metadata")
    cases = json.load(open(os.path.join(a.cases, "cases.json")))
    for model in cases["models"]:
        unknown = dict(model, name="no_such_model", version="")
        zero = np.zeros([1] + model["shape"], NP[model["datatype"]])
        expect_status(lambda: infer(client, unknown, zero, model["datatype"]), "NOT_FOUND",
                      "unknown model inference")
        check_model(client, model, a.cases, a.max_bytes)
    print("FAILED: %d checks" % len(failures) if failures else "all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
