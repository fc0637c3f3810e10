#!/usr/bin/env python3
"""Writes an MLServer model repository serving the project's TorchScript models.

    make_repository.py MODELS_DIR OUT_DIR [--grpc-port N] [--http-port N]
                       [--metrics-port N] [--host H] [--only NAME,NAME]

OUT_DIR gets:
  settings.json                 server settings: ports, host, one process
  torchscript_runtime.py        the runtime (copied from beside this script;
                                `mlserver start OUT_DIR` puts OUT_DIR on
                                sys.path, so no PYTHONPATH is needed)
  <model>/model-settings.json   one folder per model: name = file stem,
                                version "1", platform pytorch_libtorch,
                                parameters.uri = absolute path of the .pt,
                                one input `input`, one output `output`

Only the standard library is used: any python3 can run it. Models of the
table below whose .pt is missing from MODELS_DIR are skipped (an error if
named with --only).
"""

import argparse
import json
import os
import shutil
import sys

# The V2 contract of each model: input datatype and shape, output shape
# (FP32). -1 is the batch dimension. Shapes were measured by loading each
# file with torch 2.13.0 and running a zero batch (see README.md).
CONTRACT = {
    "image_cloud": ("UINT8", [-1, 96, 96, 3], [-1, 10]),
    "image_edge": ("UINT8", [-1, 96, 96, 3], [-1, 10]),
    "detect_cloud": ("UINT8", [-1, 256, 256, 3], [-1, 32, 6]),
    "detect_edge": ("UINT8", [-1, 256, 256, 3], [-1, 32, 6]),
    "text_cloud": ("INT64", [-1, 64], [-1, 2]),
    "text_edge": ("INT64", [-1, 64], [-1, 2]),
    "digits_cloud": ("FP32", [-1, 1, 8, 8], [-1, 10]),
    "digits_edge": ("FP32", [-1, 1, 8, 8], [-1, 10]),
}

RUNTIME = "torchscript_runtime.TorchScriptRuntime"
VERSION = "1"
PLATFORM = "pytorch_libtorch"


def model_settings(name: str, pt_path: str) -> dict:
    in_dtype, in_shape, out_shape = CONTRACT[name]
    return {
        "name": name,
        "implementation": RUNTIME,
        "platform": PLATFORM,
        "versions": [VERSION],
        # One process for everything: no inference worker pool per model.
        "parallel_workers": 0,
        "inputs": [{"name": "input", "datatype": in_dtype, "shape": in_shape}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": out_shape}],
        "parameters": {"uri": pt_path, "version": VERSION},
    }


def server_settings(args) -> dict:
    return {
        "host": args.host,
        "http_port": args.http_port,
        "grpc_port": args.grpc_port,
        "metrics_port": args.metrics_port,
        # Inference in the server process itself: no worker pool, no
        # separate Python processes (light, and one libtorch per server).
        "parallel_workers": 0,
        "load_models_at_startup": True,
        "debug": False,
        # The largest request (detect, batch 16: 3 MiB raw) with room to spare.
        "grpc_max_message_length": 64 * 1024 * 1024,
        "metrics_dir": os.path.join(args.out_dir, ".metrics"),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models_dir")
    p.add_argument("out_dir")
    p.add_argument("--grpc-port", type=int, default=8081)
    p.add_argument("--http-port", type=int, default=8080)
    p.add_argument("--metrics-port", type=int, default=8082)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--only", help="comma-separated model names (default: all found)")
    args = p.parse_args(argv)
    args.out_dir = os.path.abspath(args.out_dir)
    models_dir = os.path.abspath(args.models_dir)

    if args.only:
        names = [n for n in args.only.split(",") if n]
        unknown = [n for n in names if n not in CONTRACT]
        if unknown:
            p.error(f"unknown model(s) {unknown}; known: {sorted(CONTRACT)}")
        absent = [n for n in names if not os.path.isfile(os.path.join(models_dir, n + ".pt"))]
        if absent:
            p.error(f"no .pt in {models_dir} for {absent}")
    else:
        names = [n for n in CONTRACT if os.path.isfile(os.path.join(models_dir, n + ".pt"))]
    if not names:
        p.error(f"no known model (*.pt) in {models_dir}")

    os.makedirs(args.out_dir, exist_ok=True)
    here = os.path.dirname(os.path.abspath(__file__))
    shutil.copyfile(
        os.path.join(here, "torchscript_runtime.py"),
        os.path.join(args.out_dir, "torchscript_runtime.py"),
    )
    os.makedirs(os.path.join(args.out_dir, ".metrics"), exist_ok=True)
    with open(os.path.join(args.out_dir, "settings.json"), "w") as f:
        json.dump(server_settings(args), f, indent=2)
        f.write("\n")
    for name in names:
        folder = os.path.join(args.out_dir, name)
        os.makedirs(folder, exist_ok=True)
        pt = os.path.join(models_dir, name + ".pt")
        with open(os.path.join(folder, "model-settings.json"), "w") as f:
            json.dump(model_settings(name, pt), f, indent=2)
            f.write("\n")
    print(f"{args.out_dir}: {', '.join(names)} (grpc {args.grpc_port}, "
          f"http {args.http_port}, metrics {args.metrics_port})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
