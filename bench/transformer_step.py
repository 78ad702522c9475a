#!/usr/bin/env python3
"""The Python PyTorch eager twin of bench/transformer_step_bench.cpp: the same Llama decoder
(RMSNorm, rotary positions in the rotate-half layout, grouped-query attention through
scaled_dot_product_attention with a causal mask, SwiGLU, tied embeddings), the same step
(forward, cross-entropy, backward, clip_grad_norm_, AdamW) on random tokens, timed after warm-up.
Prints one JSON line. Usage: transformer_step.py [--steps N] [--warmup N] [--batch B] [--seq T] [--threads N]
                                                [--device cpu|cuda] [--precision fp32|bf16|fp16]
--precision: the forward under torch.autocast, fp16 with torch.amp.GradScaler (as the engine's
trainer.precision does).
"""
import argparse
import json
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

V, H, L, NH, NKV, FFN, THETA = 49152, 256, 6, 4, 2, 768, 10000.0
HD = H // NH


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        f = x.float()
        return self.weight * (f * torch.rsqrt(f.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), -1)


class Layer(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn_norm, self.ffn_norm = RMSNorm(H), RMSNorm(H)
        self.q = nn.Linear(H, NH * HD, bias=False)
        self.k = nn.Linear(H, NKV * HD, bias=False)
        self.v = nn.Linear(H, NKV * HD, bias=False)
        self.out = nn.Linear(NH * HD, H, bias=False)
        self.gate = nn.Linear(H, FFN, bias=False)
        self.up = nn.Linear(H, FFN, bias=False)
        self.down = nn.Linear(FFN, H, bias=False)

    def forward(self, x, cos, sin, mask):
        b, t, _ = x.shape
        h = self.attn_norm(x)
        q = self.q(h).view(b, t, NH, HD).transpose(1, 2)
        k = self.k(h).view(b, t, NKV, HD).transpose(1, 2)
        v = self.v(h).view(b, t, NKV, HD).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = k.repeat_interleave(NH // NKV, 1)
        v = v.repeat_interleave(NH // NKV, 1)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(b, t, NH * HD)
        y = x + self.out(a)
        f = self.ffn_norm(y)
        return y + self.down(F.silu(self.gate(f)) * self.up(f))


class Llama(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(V, H)
        self.layers = nn.ModuleList(Layer() for _ in range(L))
        self.norm = RMSNorm(H)
        self.register_buffer("inv_freq", 1.0 / THETA ** (torch.arange(0, HD, 2).float() / HD))

    def forward(self, ids, mask):
        b, t = ids.shape
        freqs = torch.outer(torch.arange(t, dtype=torch.float32), self.inv_freq)
        emb = torch.cat((freqs, freqs), -1)
        cos, sin = emb.cos(), emb.sin()
        attn = torch.ones(t, t, dtype=torch.bool).tril().view(1, 1, t, t) & mask.bool().view(b, 1, 1, t)
        x = self.embed(ids)
        for layer in self.layers:
            x = layer(x, cos, sin, attn)
        return self.norm(x) @ self.embed.weight.t()


def main():
    p = argparse.ArgumentParser()
    for a, d in (("--steps", 20), ("--warmup", 3), ("--batch", 16), ("--seq", 128), ("--threads", 2)):
        p.add_argument(a, type=int, default=d)
    p.add_argument("--fused", action="store_true", help="AdamW(fused=True) (the default is PyTorch's default, unfused)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("transformer_step.py: --device cuda, but no CUDA device is visible")
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.precision)
    scaler = torch.amp.GradScaler(args.device) if args.precision == "fp16" else None
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Llama()
    with torch.no_grad():
        for prm in model.parameters():
            if prm.dim() >= 2:
                prm.normal_(0.0, 0.02)
    model.to(dev)
    decay = [q for q in model.parameters() if q.dim() >= 2]
    no_decay = [q for q in model.parameters() if q.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], lr=1e-3, weight_decay=0.1,
                            betas=(0.9, 0.95), fused=args.fused or None)
    mask = torch.ones(args.batch, args.seq, dtype=torch.long, device=dev)
    start = None
    for s in range(args.warmup + args.steps):
        if s == args.warmup:
            sync()
            start = time.perf_counter()
        tokens = torch.randint(0, V, (args.batch, args.seq + 1)).to(dev)
        ids, targets = tokens[:, :-1], tokens[:, 1:]
        opt.zero_grad()
        with torch.autocast(args.device, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = model(ids, mask).float()
            loss = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=-100)
        if scaler:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
    sync()
    total = time.perf_counter() - start
    print(json.dumps({"impl": "python" + (" fused adamw" if args.fused else ""), "device": args.device, "precision": args.precision, "tokens_per_second": round(args.steps * args.batch * args.seq / total, 1),
                      "ms_per_step": round(1e3 * total / args.steps, 2),
                      "params": sum(p.numel() for p in model.parameters()), "threads": args.threads,
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
