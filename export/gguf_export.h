// The llama student as a GGUF v3 file that llama.cpp loads (issue 16), written from the same op
// graph that `.qdm` holds (export/text_export.h), so the GGUF's weights are the runtime's weights:
//   token_embd.weight, blk.N.{attn_norm, attn_q, attn_k, attn_v, attn_output, ffn_norm, ffn_gate,
//   ffn_up, ffn_down}.weight, output_norm.weight, output.weight (only when the head is not the
//   embedding table), with Q and K rows in llama.cpp's interleaved rotary order;
//   llama.* hyper-parameters and the tokenizer.ggml.* keys of the BPE tokenizer.
// Each weight keeps its grid: Q8_0 or Q4_0 blocks (the QAT grid of qat.weight.format: ggml), F32
// where QAT left a layer float; norms F32. No LibTorch.
#pragma once

#include <string>

#include "formats/gguf_writer.h"
#include "runtime/graph.h"

namespace qd {

// UserError for a graph llama.cpp cannot run as it is: not a causal_lm llama graph, weights on
// another grid (per-row int8: train with qat.weight.format ggml), inputs not quantized in Q8_0
// blocks (llama.cpp's CPU matmuls do that: qat.activation.dynamic per_block), factored layers.
fmt::GgufWriter gguf_from_graph(const rt::Graph& g, const std::string& name);

}  // namespace qd
