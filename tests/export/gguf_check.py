"""Reads a GGUF file written by qdistill with the peers that know the format (test oracles only).

  gguf_check.py FILE                      the gguf package's view: one JSON object (the last line of
                                          stdout: llama.cpp may log before it) with, per tensor,
                                          its type, shape and the sum / sum of squares of its
                                          dequantized values, and the metadata the tests check
  gguf_check.py FILE --llama IDS OUT.f32  also llama.cpp (llama-cpp-python): evaluate the token ids
                                          (comma-separated) in one batch and write the logits of
                                          every position, raw float32 [T, vocab]; the KV cache in
                                          float32 ("llama": false in the JSON when not installed)
"""
import argparse
import json
import sys

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--llama", nargs=2, metavar=("IDS", "OUT"))
    a = ap.parse_args()
    import gguf
    from gguf.quants import dequantize

    r = gguf.GGUFReader(a.file)
    out = {"tensors": {}, "metadata": {}}
    for t in r.tensors:
        v = dequantize(t.data, t.tensor_type).astype(np.float64)
        out["tensors"][t.name] = {"type": t.tensor_type.name, "shape": [int(x) for x in reversed(t.shape)],
                                  "sum": float(v.sum()), "sum_sq": float((v * v).sum())}
    for key in ("general.architecture", "llama.block_count", "llama.embedding_length", "llama.attention.head_count",
                "llama.attention.head_count_kv", "llama.feed_forward_length", "general.file_type"):
        f = r.get_field(key)
        if f is not None:
            out["metadata"][key] = f.contents()
    f = r.get_field("tokenizer.ggml.tokens")
    out["metadata"]["tokens"] = len(f.contents()) if f is not None else 0
    if a.llama:
        try:
            import llama_cpp
        except ImportError:
            out["llama"] = False
        else:
            ids = [int(x) for x in a.llama[0].split(",")]
            m = llama_cpp.Llama(model_path=a.file, n_ctx=max(64, len(ids)), n_batch=max(64, len(ids)), logits_all=True,
                                n_threads=1, type_k=0, type_v=0, verbose=False)  # GGML_TYPE_F32 caches
            m.eval(ids)
            logits = np.array(m.scores[: len(ids)], dtype=np.float32)
            logits.tofile(a.llama[1])
            out["llama"] = True
            out["llama_cpp_version"] = llama_cpp.__version__
    sys.stdout.write("\n" + json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
