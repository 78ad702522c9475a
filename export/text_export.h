// Export of the transformer students (issue 16): a QAT-trained bert or llama -> the op graph of
// the integer runtime (runtime/graph.h, `.qdm` version 2), and its verification against the
// training simulation on held-out text.
//
// The graph computes what the simulation computes (models/bert.cpp, models/llama.cpp with the
// twins of qat/module_qat.h): every weight on its trained grid (int8 per row, per group, or
// llama.cpp's Q8_0 / Q4_0 blocks with fp16 scales) as the integers the simulation multiplies by,
// every linear input quantized on the fly as its rule says (per token, or Q8_0 blocks); norms,
// softmax, rotary positions and the nonlinearities in float, as in training. Only the float
// summation order differs.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "runtime/graph.h"

namespace qd {

class TextModel;

// The graph of `model` (eval mode, CPU, QAT flags loaded), batch 1, a dynamic token count:
//   bert:  input_ids i32 [T] ([CLS] ... [SEP]) -> the L2-normalised sentence embedding f32 [D]
//          (metadata task "sentence_embedding", "tokenizer.json": the WordPiece tokenizer.json);
//   llama: input_ids i32 [T] -> next-token logits f32 [T, vocab], attention with a KV cache, so
//          that successive runs continue the sequence (Executor::reset starts a new one)
//          (metadata task "causal_lm", "tokenizer.bpe": text::BpeTokenizer::to_json).
// A layer that QAT left float keeps float weights; a KV cache that QAT quantizes (qat.kv_cache) is
// kept quantized the same way (attention's kv_store). UserError for what the runtime cannot
// express: a static (per-tensor) input scale or per-token inputs of other than 8 bits, asymmetric
// weights, a masked (not physically pruned) hidden size.
rt::Graph build_text_graph(TextModel& model);

// The runtime next to the simulation on `inputs` (token id sequences, each one example):
//   bert:  per sentence the cosine of the two embeddings (min, mean) and the count below 0.999;
//   llama: per position the next-token argmax agreement, both perplexities on the sequences' own
//          next tokens, and the KV-cache path (the first sequence fed in chunks) against the whole
//          sequence at once (max |logit difference|).
// `progress`: draw a progress bar. The JSON's keys are export/report.json's "verify".
// `simulation` (encoders): receives the simulation's embeddings, float32 [inputs, dim] row-major,
// the reference that scripts/onnx_parity.py holds ONNX Runtime to.
nlohmann::json verify_text_graph(TextModel& model, const rt::Graph& graph, const std::vector<std::vector<int32_t>>& inputs,
                                 bool progress, std::vector<float>* simulation = nullptr);

}  // namespace qd
