#!/usr/bin/env python3
"""Batch-1 latency of ONNX models with ONNX Runtime on the CPU.

    ort_latency.py MODEL.onnx [MODEL2.onnx ...] [--threads 1] [--iters 2000] [--warmup 200] [--json FILE]
                   [--session-config KEY=VALUE ...]

Each model runs one input of its own input shape (batch 1; a Fashion-MNIST [1, 1, 28, 28] where
the model leaves a dim symbolic) in a session with intra_op_num_threads=--threads,
inter_op_num_threads=1, sequential execution and all graph optimizations. The models are
interleaved in round-robin blocks of --block runs, so that machine noise (frequency changes,
other processes) hits all of them alike. Prints the median and p90 latency in microseconds per
model and, given two or more models, the ratio of the first model's latency to each other's
(e.g. fp32 first, int8 second: the int8 speed-up). --json writes the same numbers.

Needs only numpy and onnxruntime.
"""
import argparse
import json
import os
import platform
import sys
import time

import numpy as np

# Fashion-MNIST: what a symbolic dim of the input stands for, after the batch.
DEFAULT_CHW = (1, 28, 28)


def die(msg):
    print(f"ort_latency.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


# The CPU flags that decide which int8 kernels ONNX Runtime's MLAS picks (docs/export.md, "Exact on
# which CPUs"; `qdistill export` names the resulting class in report.json's deployment.this_machine):
# x86 without VNNI multiplies u8 x s8 with vpmaddubsw, whose pair sums saturate at int16.
KERNEL_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vnni", "avx_vnni", "amx_int8",
                "asimd", "asimddp", "i8mm", "sve")


def cpu_info():
    """{"model", "flags": the KERNEL_FLAGS present} from /proc/cpuinfo."""
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key in ("model name", "cpu model") and not model:
                    model = value.strip()
                if key in ("flags", "features"):
                    flags.update(value.split())
    except OSError:
        pass
    return {"model": model or platform.processor() or platform.machine(),
            "flags": [f for f in KERNEL_FLAGS if f in flags]}


def input_shape(inp):
    shape = []
    for axis, d in enumerate(inp.shape):
        if isinstance(d, int) and d > 0:
            shape.append(1 if axis == 0 else d)
        elif axis == 0:
            shape.append(1)
        elif len(inp.shape) == 4:
            shape.append(DEFAULT_CHW[axis - 1])
        else:
            die(f"input {inp.name!r} has a symbolic dim {d!r} at axis {axis}: cannot guess its size")
    return shape


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    ap.add_argument("--iters", type=int, default=2000, help="timed runs per model (default 2000)")
    ap.add_argument("--warmup", type=int, default=200, help="untimed runs per model first (default 200)")
    ap.add_argument("--block", type=int, default=100, help="runs per model per round-robin turn (default 100)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random input (default 0)")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--session-config", action="append", default=[], metavar="KEY=VALUE",
                    help="an ONNX Runtime session config entry for every model, e.g. session.x64quantprecision=1")
    args = ap.parse_args()
    if args.threads <= 0 or args.iters <= 0 or args.warmup < 0 or args.block <= 0:
        die("--threads, --iters and --block must be > 0 and --warmup >= 0")
    for m in args.models:
        if not os.path.isfile(m):
            die(f"no such file: {m}")

    import onnxruntime as ort

    cpu = cpu_info()
    print(f"cpu: {cpu['model']}; int8 kernel flags: {' '.join(cpu['flags']) or 'none'}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    for entry in args.session_config:
        key, sep, value = entry.partition("=")
        if not sep or not key:
            die(f"--session-config {entry!r}: expected KEY=VALUE")
        opts.add_session_config_entry(key, value)
    runs = []  # per model: (path, run function)
    for path in args.models:
        try:
            sess = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types
            die(f"onnxruntime cannot load {path}: {e}")
        inp = sess.get_inputs()[0]
        # Pixels in [0, 1), the same for every model of the same input shape.
        x = np.random.default_rng(args.seed).random(input_shape(inp), dtype=np.float32)
        feed = {inp.name: x}
        out = [sess.get_outputs()[0].name]
        runs.append((path, sess, out, feed))

    def run_block(entry, count, times=None):
        _, sess, out, feed = entry
        for _ in range(count):
            t0 = time.perf_counter_ns()
            sess.run(out, feed)
            t1 = time.perf_counter_ns()
            if times is not None:
                times.append(t1 - t0)

    # Warm-up, then the timed runs, both round-robin.
    for done in range(0, args.warmup, args.block):
        for e in runs:
            run_block(e, min(args.block, args.warmup - done))
    times = [[] for _ in runs]
    for done in range(0, args.iters, args.block):
        for e, t in zip(runs, times):
            run_block(e, min(args.block, args.iters - done), t)

    results = []
    for (path, *_), t in zip(runs, times):
        us = np.asarray(t, dtype=np.float64) / 1000.0
        r = {"model": path, "runs": int(us.size), "median_us": float(np.median(us)),
             "p90_us": float(np.percentile(us, 90)), "mean_us": float(us.mean()), "min_us": float(us.min())}
        results.append(r)
        print(f"{path}: median {r['median_us']:.1f} us, p90 {r['p90_us']:.1f} us, min {r['min_us']:.1f} us "
              f"({r['runs']} runs, batch 1, {args.threads} thread(s))")
    ratios = []
    first = results[0]
    for r in results[1:]:
        ratio = {"first": first["model"], "other": r["model"], "median_ratio": first["median_us"] / r["median_us"],
                 "p90_ratio": first["p90_us"] / r["p90_us"]}
        ratios.append(ratio)
        print(f"{first['model']} / {r['model']}: {ratio['median_ratio']:.2f}x median, {ratio['p90_ratio']:.2f}x p90")

    if args.json:
        doc = {"onnxruntime": ort.__version__, "machine": platform.machine(), "processor": platform.processor(),
               "cpu": cpu, "session_config": args.session_config, "cpus": os.cpu_count(), "threads": args.threads, "iters": args.iters, "warmup": args.warmup,
               "block": args.block, "models": results, "ratios": ratios}
        tmp = f"{args.json}.tmp.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
