#!/usr/bin/env python3
"""Our BPE's reference against llama.cpp itself: tokenizes tokenizer_oracle.py's lines with
llama-cpp-python (llama.cpp's own tokenizer, vocab only) and compares with the oracle's "bpe" ids
(SmolLM2's pipeline, which tests/text/tokenizer_test.cpp requires our tokenizer to equal) and
"bpe_transformers_gguf" ids. Not part of the test suite (llama-cpp-python compiles llama.cpp);
how to run it is in docs/tokenizers.md.

    llamacpp_check.py ORACLE.json GGUF
"""
import json
import sys

from llama_cpp import Llama


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    d = json.load(open(sys.argv[1]))
    m = Llama(model_path=sys.argv[2], vocab_only=True, verbose=False)
    ours = [m.tokenize(l.encode("utf-8"), add_bos=False, special=True) for l in d["lines"]]
    for key in ("bpe", "bpe_transformers_gguf"):
        same = sum(a == b for a, b in zip(ours, d[key]))
        print(f"llama.cpp vs {key}: {same} of {len(ours)} lines identical")
    return 0


if __name__ == "__main__":
    sys.exit(main())
