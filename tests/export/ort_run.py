#!/usr/bin/env python3
"""Runs an exported ONNX model with ONNX Runtime (CPU, all graph optimizations) and writes its logits.

    ort_run.py MODEL.onnx --input RAW_F32 --shape N,C,H,W [--output RAW_F32]
    ort_run.py MODEL.onnx --images IDX[.gz] [--labels IDX[.gz]] [--reference RAW_F32 [--min-agreement 0.995]]
                          [--output RAW_F32] [--session-config KEY=VALUE ...]

--input is raw little-endian float32 pixels in [0, 1], NCHW. --images is an IDX ubyte image file
(Fashion-MNIST); its pixels become float32 exactly as qdistill's loader computes them
(p.astype(float32) / float32(255)), shape [N, 1, H, W]. --output gets the logits as raw
little-endian float32 [N, classes]. --labels prints the accuracy. --reference compares the argmax
with a logits file of the same shape (e.g. from qdistill-run; with --limit N, its first N rows)
and exits 1 when the agreement is below --min-agreement. Bad arguments, missing files and wrong sizes exit 2.

Needs only numpy and onnxruntime (the `onnx` Python package is not required).
"""
import argparse
import gzip
import os
import sys

import numpy as np


def die(msg):
    print(f"ort_run.py: error: {msg}", file=sys.stderr)
    sys.exit(2)


def read_bytes(path):
    if not os.path.isfile(path):
        die(f"no such file: {path}")
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":  # gzip magic, whatever the file is called
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            die(f"{path}: corrupt gzip data ({e})")
    return data


def read_idx_ubyte(path):
    """An IDX file of unsigned bytes (type 0x08) as a numpy uint8 array of its dimensions."""
    data = read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        die(f"{path}: not an IDX file (bad magic)")
    if data[2] != 0x08:
        die(f"{path}: IDX element type 0x{data[2]:02x}, expected 0x08 (unsigned byte)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        die(f"{path}: truncated IDX header")
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    count = int(np.prod(dims, dtype=np.int64))
    if len(data) - header != count:
        die(f"{path}: IDX dimensions {dims} need {count} bytes of data, the file has {len(data) - header}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_f32(path, count, what, at_least=False):
    if not os.path.isfile(path):
        die(f"no such file: {path}")
    size = os.path.getsize(path)
    if size != 4 * count and not (at_least and size > 4 * count and size % 4 == 0):
        die(f"{path}: {what} needs {count} float32 values ({4 * count} bytes), the file has {size} bytes")
    return np.fromfile(path, dtype="<f4", count=count).astype(np.float32)


def parse_shape(text):
    try:
        shape = [int(x) for x in text.split(",")]
    except ValueError:
        die(f"--shape {text!r}: expected N,C,H,W (four integers)")
    if len(shape) != 4 or min(shape) <= 0:
        die(f"--shape {text!r}: expected four positive integers N,C,H,W")
    return shape


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="raw little-endian float32 pixels, NCHW (needs --shape)")
    src.add_argument("--images", help="IDX ubyte image file (.gz or not)")
    ap.add_argument("--shape", help="N,C,H,W of --input")
    ap.add_argument("--output", help="write the logits here: raw little-endian float32 [N, classes]")
    ap.add_argument("--labels", help="IDX ubyte label file: print the accuracy")
    ap.add_argument("--reference", help="raw float32 logits [N, classes] to compare the argmax with")
    ap.add_argument("--min-agreement", type=float, default=0.995,
                    help="with --reference: exit 1 when the argmax agreement is below this (default 0.995)")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N images (default 0: all)")
    ap.add_argument("--batch", type=int, default=1000, help="images per session run (default 1000)")
    ap.add_argument("--threads", type=int, default=0, help="intra-op threads (default 0: ORT decides)")
    ap.add_argument("--session-config", action="append", default=[], metavar="KEY=VALUE",
                    help="an ONNX Runtime session config entry, e.g. session.x64quantprecision=1 (repeatable)")
    args = ap.parse_args()
    if args.batch <= 0:
        die("--batch must be > 0")

    if not os.path.isfile(args.model):
        die(f"no such file: {args.model}")
    if args.input is not None:
        if args.shape is None:
            die("--input needs --shape N,C,H,W")
        shape = parse_shape(args.shape)
        x = read_f32(args.input, int(np.prod(shape)), f"--shape {args.shape}").reshape(shape)
    else:
        if args.shape is not None:
            die("--shape goes with --input; --images takes the shape from the IDX file")
        images = read_idx_ubyte(args.images)
        if images.ndim != 3:
            die(f"{args.images}: expected an [N, H, W] IDX image file, got dimensions {list(images.shape)}")
        # The loader's conversion, bit for bit: uint8 -> float32, then one float32 division.
        x = (images.astype(np.float32) / np.float32(255)).reshape(images.shape[0], 1, *images.shape[1:])
    if args.limit < 0:
        die("--limit must be >= 0")
    if args.limit > 0:
        x = x[:args.limit]
    n = x.shape[0]

    import onnxruntime as ort  # late: argument errors do not need it

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if args.threads > 0:
        opts.intra_op_num_threads = args.threads
    for entry in args.session_config:
        key, sep, value = entry.partition("=")
        if not sep or not key:
            die(f"--session-config {entry!r}: expected KEY=VALUE")
        opts.add_session_config_entry(key, value)
    try:
        sess = ort.InferenceSession(args.model, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
        die(f"onnxruntime cannot load {args.model}: {e}")
    inp = sess.get_inputs()[0]
    # The model's static dims (C, H, W) must match the data; the batch dim is symbolic.
    for axis, (want, have) in enumerate(zip(inp.shape, x.shape)):
        if axis > 0 and isinstance(want, int) and want != have:
            die(f"{args.model} expects input {inp.shape}, the data is {list(x.shape)}")
    if len(inp.shape) != x.ndim:
        die(f"{args.model} expects a rank-{len(inp.shape)} input, the data is {list(x.shape)}")
    out_name = sess.get_outputs()[0].name

    chunks = []
    for start in range(0, n, args.batch):
        chunks.append(sess.run([out_name], {inp.name: np.ascontiguousarray(x[start:start + args.batch])})[0])
    logits = np.concatenate(chunks, axis=0).astype(np.float32).reshape(n, -1)
    classes = logits.shape[1]
    pred = logits.argmax(axis=1)
    print(f"ort_run.py: {n} images, {classes} classes, model {args.model} (onnxruntime {ort.__version__})")

    if args.output:
        logits.astype("<f4").tofile(args.output)

    if args.labels:
        labels = read_idx_ubyte(args.labels)
        if labels.ndim == 1 and args.limit > 0:
            labels = labels[:n]
        if labels.ndim != 1 or labels.shape[0] != n:
            die(f"{args.labels}: {list(labels.shape)} labels for {n} images")
        correct = int((pred == labels).sum())
        print(f"accuracy: {correct / n:.4f} ({correct}/{n})")

    if args.reference:
        # With --limit, a reference of the whole set: its first n rows.
        ref = read_f32(args.reference, n * classes, f"{n} x {classes} logits",
                       at_least=args.limit > 0).reshape(n, classes)
        agree = int((ref.argmax(axis=1) == pred).sum())
        agreement = agree / n
        print(f"argmax agreement with {args.reference}: {agreement:.4f} ({agree}/{n}), "
              f"max |logit difference| {float(np.abs(ref - logits).max()):.6g}")
        if agreement < args.min_agreement:
            print(f"ort_run.py: agreement {agreement:.4f} is below --min-agreement {args.min_agreement}",
                  file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
