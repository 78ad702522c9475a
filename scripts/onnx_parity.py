#!/usr/bin/env python3
"""ONNX Runtime on an exported encoder, against the embeddings it must reproduce (issue 16).

    onnx_parity.py RUN_DIR [--batch 16] [--min-cosine 0.999]
    onnx_parity.py --model FILE.onnx --ids IDS.json --reference REF.f32 [--batch 16] [--min-cosine C]
                   [--output OUT.f32] [--json OUT.json]

RUN_DIR: a transformer run after `qdistill export RUN_DIR` (with verification): runs
export/student.int8.onnx and export/student.fp32.onnx with ONNX Runtime (CPU, all graph
optimizations) on the held-out sentences the exporter verified on (export/verify_ids.json), in
right-padded batches of --batch, and compares every embedding with the training simulation's
(export/verify_simulation.f32): the cosine per sentence (min, mean, count below 0.999). The figures
go into export/report.json as "onnx_runtime" (written atomically). Exit 1 when the int8 file's
minimum cosine is below --min-cosine (the fp32 file is the float reference: its figures show what
quantization costs, with no threshold).

--model: one ONNX file against REF.f32 (float32 [sentences, dim]); the test suite's mode.
--output writes ONNX Runtime's embeddings. Bad arguments, missing files and wrong sizes exit 2.

Needs numpy and onnxruntime; the engine itself never runs Python.
"""
import argparse
import json
import os
import platform
import sys

import numpy as np


def die(msg):
    print(f"onnx_parity.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def read_ids(path):
    if not os.path.isfile(path):
        die(f"no such file: {path}")
    try:
        with open(path) as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        die(f"{path}: not JSON ({e})")
    ids = doc.get("ids") if isinstance(doc, dict) else None
    if not isinstance(ids, list) or not ids or not all(isinstance(s, list) and s and all(isinstance(t, int) for t in s) for s in ids):
        die(f"{path}: expected {{\"ids\": [[token ids], ...]}} with at least one non-empty sentence")
    return ids


def read_reference(path, sentences):
    if not os.path.isfile(path):
        die(f"no such file: {path}")
    data = np.fromfile(path, dtype="<f4")
    if data.size == 0 or data.size % sentences != 0:
        die(f"{path}: {data.size} float32 values are not {sentences} embeddings of one width")
    return data.reshape(sentences, -1).astype(np.float64)


def embed(model, ids, batch):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own exception types
        die(f"{model}: ONNX Runtime cannot load it: {e}")
    out = []
    for b0 in range(0, len(ids), batch):
        chunk = ids[b0:b0 + batch]
        longest = max(len(s) for s in chunk)
        x = np.zeros((len(chunk), longest), dtype=np.int64)
        m = np.zeros((len(chunk), longest), dtype=np.int64)
        for r, s in enumerate(chunk):
            x[r, :len(s)] = s
            m[r, :len(s)] = 1
        out.append(sess.run(["embedding"], {"input_ids": x, "attention_mask": m})[0])
    return np.concatenate(out, 0)


def compare(got, ref):
    if got.shape != ref.shape:
        die(f"ONNX Runtime gave embeddings of shape {got.shape}, the reference is {ref.shape}")
    g = got.astype(np.float64)
    cos = (g * ref).sum(1) / np.maximum(np.linalg.norm(g, axis=1) * np.linalg.norm(ref, axis=1), 1e-30)
    return {"sentences": int(len(cos)), "min_cosine": float(cos.min()), "mean_cosine": float(cos.mean()),
            "sentences_below_0_999": int((cos < 0.999).sum()), "max_abs_diff": float(np.abs(g - ref).max())}


def write_atomic(path, text):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", nargs="?")
    ap.add_argument("--model")
    ap.add_argument("--ids")
    ap.add_argument("--reference")
    ap.add_argument("--output")
    ap.add_argument("--json")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--min-cosine", type=float, default=0.999)
    a = ap.parse_args()
    if a.batch < 1:
        die("--batch must be >= 1")
    import onnxruntime as ort

    if a.model:
        if a.run_dir or not a.ids or not a.reference:
            die("--model needs --ids and --reference, and no RUN_DIR")
        ids = read_ids(a.ids)
        ref = read_reference(a.reference, len(ids))
        got = embed(a.model, ids, a.batch)
        if a.output:
            got.astype("<f4").tofile(a.output)
        r = compare(got, ref)
        print(json.dumps(r))
        if a.json:
            write_atomic(a.json, json.dumps(r, indent=2) + "\n")
        return 0 if r["min_cosine"] >= a.min_cosine else 1
    if not a.run_dir:
        die("give RUN_DIR, or --model with --ids and --reference")
    export = os.path.join(a.run_dir, "export")
    report_path = os.path.join(export, "report.json")
    ids_path = os.path.join(export, "verify_ids.json")
    if not os.path.isfile(ids_path):
        die(f"{ids_path}: not found; run `qdistill export {a.run_dir}` (with verification) on an encoder run first")
    ids = read_ids(ids_path)
    ref = read_reference(os.path.join(export, "verify_simulation.f32"), len(ids))
    try:
        with open(report_path) as f:
            report = json.load(f)
    except (OSError, ValueError) as e:
        die(f"{report_path}: cannot read it ({e}); run `qdistill export {a.run_dir}` again")
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    result = {"onnxruntime": ort.__version__, "cpu": cpu, "batch": a.batch,
              "split": report.get("verify", {}).get("split", "test")}
    status = 0
    for name in ("student.int8.onnx", "student.fp32.onnx"):
        path = os.path.join(export, name)
        if not os.path.isfile(path):
            die(f"{path}: not found; run `qdistill export {a.run_dir}` again")
        r = compare(embed(path, ids, a.batch), ref)
        result[name] = r
        print(f"{name}: ONNX Runtime vs the simulation on {r['sentences']} held-out sentences: cosine min "
              f"{r['min_cosine']:.6f}, mean {r['mean_cosine']:.6f}, {r['sentences_below_0_999']} below 0.999")
        if name == "student.int8.onnx" and r["min_cosine"] < a.min_cosine:
            print(f"  below --min-cosine {a.min_cosine}", file=sys.stderr)
            status = 1
    report["onnx_runtime"] = result
    write_atomic(report_path, json.dumps(report, indent=2) + "\n")
    print(f"recorded in {report_path} (\"onnx_runtime\")")
    return status


if __name__ == "__main__":
    sys.exit(main())
