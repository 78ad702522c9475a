"""The engine's fixed text splits (data/text_corpus.h, docs/text_data.md), for the benchmarks:
a record's key hashed with FNV-1a 64, hash % 100 < 5 is the test split."""
import os


def fnv1a64(s: str) -> int:
    h = 0xCBF29CE484222325
    for b in s.encode():
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def _glosses(root):
    """(key, gloss, synset fields) of every WordNet synset in file order, as data/text_corpus.cpp's
    load_wordnet reads them: key = ss_type + offset, the gloss before its first quoted example,
    example-only glosses skipped."""
    for name in ("noun", "verb", "adj", "adv"):
        with open(os.path.join(root, "data." + name), encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip() or line.startswith(" ") or " | " not in line:
                    continue
                head, gloss = line.rstrip("\n").split(" | ", 1)
                fields = head.split()
                gloss = gloss.strip()
                example = gloss.find('; "')
                if example >= 0:
                    gloss = gloss[:example]
                if gloss.startswith('"'):
                    continue
                gloss = gloss.strip()
                if gloss:
                    yield fields[2][:1] + fields[0], gloss, fields


def test_definitions(root="/usr/share/wordnet"):
    """(key, definition) of the test split in file order."""
    return [(key, gloss) for key, gloss, _ in _glosses(root) if fnv1a64(key) % 100 < 5]


def test_text(root="/usr/share/games/fortunes", chars=4000):
    """Fortunes of the test split, joined, the first `chars` characters (the English files)."""
    skip = {"chinese", "tang300", "song100", "ascii-art"}
    out = []
    for name in sorted(os.listdir(root)):
        p = os.path.join(root, name)
        if name in skip or "." in name or not os.path.isfile(p):
            continue
        with open(p, encoding="utf-8", errors="replace") as f:
            for doc in f.read().split("\n%\n"):
                key = " ".join(doc.split())
                if key and fnv1a64(key) % 100 < 5:
                    out.append(doc.strip())
        if sum(map(len, out)) > chars:
            break
    return "\n".join(out)[:chars]


def synsets(split="test", root="/usr/share/wordnet"):
    """(definition, lemma list) of a split in file order, as the engine's reverse-dictionary benchmark
    reads them (docs/transformers.md, "Recall@k"): lemmas with '_' as spaces and their "(a)"-style
    markers cut, joined by ", "."""
    lo, hi = {"test": (0, 5), "validation": (5, 10)}[split]
    out = []
    for key, gloss, fields in _glosses(root):
        if not lo <= fnv1a64(key) % 100 < hi:
            continue
        words = []
        for i in range(int(fields[3], 16)):
            w = fields[4 + 2 * i].replace("_", " ")
            if w.endswith(")") and "(" in w:
                w = w[: w.index("(")]
            words.append(w)
        out.append((gloss, ", ".join(words)))
    return out
