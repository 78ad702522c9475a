// The `.qdm` file: a compact, versioned, little-endian binary of an integer model (runtime/model.h).
// The byte layout is documented in docs/qdm.md. Loading validates every field, so a corrupt or
// truncated file gives one clear QdmError (naming the field, the layer and the byte offset) and
// never a crash or an out-of-bounds read at inference time. Plain C++17, no LibTorch.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "runtime/graph.h"
#include "runtime/model.h"

namespace qd::rt {

constexpr uint32_t kQdmVersion = 1;       // the image-model layout of runtime/model.h
constexpr uint32_t kQdmGraphVersion = 2;  // a graph of ops (runtime/graph.h)


// Every invariant the interpreter relies on (shapes chain, sizes of every vector, ids refer to
// earlier tensors, scales finite and > 0, zero points and clamps in int8, multipliers in range,
// the last layer is the only kLinear, ...). Returns "" when valid, else a message naming the
// layer and the field.
std::string validate(const Model& m);

// Throws QdmError if validate() fails. Float weights (export-only fields) are not written.
std::vector<uint8_t> serialize(const Model& m);
// Parses and validates; throws QdmError.
Model parse_qdm(const uint8_t* data, size_t size);

// File forms: load names the path in its errors; save writes atomically (temporary + rename).
Model load_qdm(const std::string& path);
void save_qdm(const Model& m, const std::string& path);

// Version 2: a graph of ops (runtime/graph.h). The reader takes both versions: a version-1 file is
// converted (to_graph), so models exported before the op table still run.
std::vector<uint8_t> serialize_graph(const Graph& g);  // validates; throws QdmError
Graph parse_graph(const uint8_t* data, size_t size);   // checks, reads, validates; throws QdmError
Graph load_graph(const std::string& path);
void save_graph(const Graph& g, const std::string& path);

// A version-1 image model as a graph: `pixels` (f32 CxHxW) -> quantize_image -> the layers as
// conv2d, maxpool2d, add_i8, global_avg_pool, linear_i8 -> `logits` (f32 [classes]).
Graph to_graph(const Model& m);

}  // namespace qd::rt
