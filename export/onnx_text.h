// The transformer encoder as ONNX (issue 16's BERT case): the sentence-embedding op graph that
// export/text_export.h builds for qdistill-run, written for ONNX Runtime and TensorRT, validated by
// ONNX's checker (opset 17, IR 8). No LibTorch: it works from the graph alone, so the `.qdm` file
// and the ONNX files describe the same integers.
//
//   inputs  "input_ids"      int64 [batch, sequence]  (the WordPiece ids, [CLS] ... [SEP])
//           "attention_mask" int64 [batch, sequence]  (1 for a token, 0 for padding on the right)
//   output  "embedding"      float32 [batch, dim]     (L2-normalised, one per sentence)
//
// Padding changes nothing: masked keys get -1e9 before the softmax, mean pooling sums only the
// tokens, and every other op works per token, so a sentence in a padded batch has the embedding
// it has alone (up to float summation order).
//
// kInt8Qdq (the int8 file): each quantized linear is MatMulInteger of its input, quantized per
// token as the runtime and the training simulation do (scale = max|x| / 127, an all-zero token
// scale 1, QuantizeLinear per axis on the [tokens, in] view: round half to even), and its int8
// weight transposed, both stored as uint8 (value + 128, zero point 128: ONNX Runtime's exact
// uint8 x uint8 kernel on every CPU), then times x_scale, w_scale, plus the bias: the runtime's
// exact int32 sums. The word table is an int8 initializer whose rows are gathered, then scaled;
// the position table a per-row DequantizeLinear. Weight groups other than one per row (Q8_0 /
// Q4_0 blocks, qat.weight.group_size) have no per-channel form: UserError.
// kFloat32: the same graph with every weight dequantized (the student's trained weights on their
// grid) and the activations left float: the fp32 reference for accuracy and speed.
#pragma once

#include <string>

#include "export/onnx_writer.h"
#include "runtime/graph.h"

namespace qd {

// The checked ONNX model's bytes. Throws UserError for a graph this form cannot express (a
// decoder, grouped weights in kInt8Qdq: the message says what to do), std::runtime_error when
// ONNX's checker rejects the model (a bug).
std::string text_onnx_bytes(const rt::Graph& g, OnnxPrecision p, const OnnxMetadata& metadata = {});

// The same, written atomically to `path`.
void write_text_onnx(const rt::Graph& g, OnnxPrecision p, const std::string& path, const OnnxMetadata& metadata = {});

}  // namespace qd
