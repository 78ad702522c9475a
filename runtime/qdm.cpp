// The `.qdm` reader, writer and validator. The byte layout, field by field, is in docs/qdm.md; keep
// the two in step (a layout change is a new version, see "Versioning" there).
#include "runtime/qdm.h"

#include "common/atomic_file.h"
#include "common/error.h"

#include "runtime/strings.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <sstream>
#include <tuple>

namespace qd::rt {

namespace {

static_assert(std::numeric_limits<float>::is_iec559, "the .qdm format stores IEEE-754 binary32 floats");

constexpr uint8_t kMagic[8] = {'Q', 'D', 'M', 'O', 'D', 'E', 'L', 0};
constexpr size_t kHeaderBytes = 40;  // magic, version, 3 counts, payload size (u64), CRC-32, reserved

// Caps that keep a hostile file from making the reader or the interpreter allocate absurd memory.
// They are far above any model qdistill trains (the largest tensor of a ResNet on 32x32 inputs is
// ~2^16 values).
constexpr int64_t kMaxLayers = 4096;
constexpr int64_t kMaxDim = 65536;                     // c, h, w, out_c, kernel, stride, pad
constexpr int64_t kMaxElements = int64_t{1} << 26;     // one tensor, one array of a layer
constexpr int64_t kMaxActivations = int64_t{1} << 28;  // sum of every tensor's values
constexpr int64_t kMaxIm2col = int64_t{1} << 28;       // a convolution's im2col matrix (bytes)
constexpr size_t kMaxNameBytes = 255;
constexpr size_t kMaxFileBytes = size_t{256} << 20;
constexpr int32_t kMaxLeftShift = 20;
// Fixed part of a layer record (everything but the name and the array contents): lets the parser
// check the layer count against the bytes left before reserving anything.
constexpr size_t kMinLayerBytes = 92;

// CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320; the one of zlib, PNG and gzip), by hand:
// the runtime has no dependencies.
struct Crc32Table {
  uint32_t v[256];
  constexpr Crc32Table() : v() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1u) ? (0xEDB88320u ^ (c >> 1)) : (c >> 1);
      v[i] = c;
    }
  }
};
constexpr Crc32Table kCrc32;

uint32_t crc32(const uint8_t* p, size_t n) {
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) c = kCrc32.v[(c ^ p[i]) & 0xFFu] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

std::string hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

bool known_kind(OpKind k) {
  switch (k) {
    case OpKind::kConv2d:
    case OpKind::kMaxPool2d:
    case OpKind::kAdd:
    case OpKind::kGlobalAvgPool:
    case OpKind::kLinear:
      return true;
  }
  return false;
}

// "layer 3 (block2, conv2d)"
std::string layer_label(size_t i, const Layer& l) {
  const std::string kind = known_kind(l.kind) ? op_name(l.kind) : cat("kind ", static_cast<uint32_t>(l.kind));
  return l.name.empty() ? cat("layer ", i, " (", kind, ")")
                        : cat("layer ", i, " (", printable(l.name), ", ", kind, ")");
}

std::string shape(int64_t c, int64_t h, int64_t w) { return cat(c, "x", h, "x", w); }
std::string shape(const TensorInfo& t) { return shape(t.c, t.h, t.w); }

// ---- validation --------------------------------------------------------------------------------

bool valid_multiplier(const QuantizedMultiplier& q) {
  // 0, or normalized to [2^30, 2^31): the doubling high multiply then never overflows; the shift
  // range keeps every shift in multiply_by_quantized_multiplier defined on int64 / int32.
  const bool m_ok = q.multiplier == 0 || q.multiplier >= (int32_t{1} << 30);
  return m_ok && q.shift >= -31 && q.shift <= 30;
}

std::string multiplier_text(const QuantizedMultiplier& q) {
  return cat("(multiplier ", q.multiplier, ", shift ", q.shift, ")");
}
constexpr const char* kMultiplierRule = "must be 0 or in [2^30, 2^31) with shift in [-31, 30]";

bool is_int8(int64_t v) { return v >= -128 && v <= 127; }

// Every scalar of a layer is in range whatever its kind, also those the kind does not use (writers
// leave them at their defaults): nothing in the runtime can then size a buffer or shift by a
// field that only some kinds check.
std::string check_scalars(const Layer& l) {
  const int64_t in_c_max = l.kind == OpKind::kLinear ? kMaxElements : kMaxDim;
  const std::tuple<const char*, int64_t, int64_t, int64_t> ranges[] = {{"kernel", l.kernel, 1, kMaxDim},
                                                                       {"stride", l.stride, 1, kMaxDim},
                                                                       {"pad", l.pad, 0, int64_t{l.kernel} - 1},
                                                                       {"out_c", l.out_c, 0, kMaxDim},
                                                                       {"in_c", l.in_c, 0, in_c_max},
                                                                       {"left_shift", l.left_shift, 0, kMaxLeftShift}};
  for (const auto& [field, v, lo, hi] : ranges)
    if (v < lo || v > hi) return cat(field, " ", v, " must be in [", lo, ", ", hi, "]");
  const std::pair<const char*, const QuantizedMultiplier*> ms[] = {{"input_multiplier", &l.input_multiplier},
                                                                   {"input2_multiplier", &l.input2_multiplier},
                                                                   {"output_multiplier", &l.output_multiplier}};
  for (const auto& [field, q] : ms)
    if (!valid_multiplier(*q)) return cat(field, " ", multiplier_text(*q), " ", kMultiplierRule);
  if (!is_int8(l.act_min) || !is_int8(l.act_max) || l.act_min > l.act_max)
    return cat("act_min/act_max [", l.act_min, ", ", l.act_max, "] must satisfy -128 <= act_min <= act_max <= 127");
  return "";
}

// The checks of one layer's kind (its ids and check_scalars() passed). Returns "" or the message,
// without the layer's label.
std::string validate_layer(const Model& m, size_t i, const Layer& l) {
  const TensorInfo& ti = m.tensors[static_cast<size_t>(l.input)];
  const TensorInfo& to = m.tensors[i + 1];

  auto expect_size = [](const char* field, size_t have, int64_t want) -> std::string {
    if (static_cast<int64_t>(have) == want) return "";
    return cat(field, " has ", have, " values, expected ", want);
  };
  auto expect_empty = [&](const char* field, size_t have) -> std::string {
    if (have == 0) return "";
    return cat(field, " must be empty for ", op_name(l.kind), ", has ", have, " values");
  };
  // kernel, stride, pad, clamps, left_shift and the add multipliers are range-checked already
  // (check_scalars), whatever the kind.
  auto check_window = [&]() -> std::string {
    if (int64_t{ti.h} + 2 * int64_t{l.pad} < l.kernel || int64_t{ti.w} + 2 * int64_t{l.pad} < l.kernel)
      return cat("kernel ", l.kernel, " is larger than the padded input ", shape(ti), " (pad ", l.pad, ")");
    return "";
  };
  auto out_hw = [&](int32_t in) -> int64_t { return (int64_t{in} + 2 * int64_t{l.pad} - l.kernel) / l.stride + 1; };
  // The int32 accumulators (the GEMM's, and its sum with the bias) must not overflow: |x - zero
  // point| <= 255 for int8 x, so |acc| <= 255 * sum |w| for each output channel.
  auto check_accumulators = [&](int64_t row) -> std::string {
    for (int64_t o = 0; o < l.out_c; ++o) {
      int64_t l1 = 0;
      for (int64_t k = 0; k < row; ++k) l1 += std::abs(int64_t{l.weight[static_cast<size_t>(o * row + k)]});
      const int64_t bias = l.bias[static_cast<size_t>(o)];
      if (255 * l1 + std::abs(bias) > std::numeric_limits<int32_t>::max())
        return cat("output channel ", o, ": bias ", bias, " with sum |weight| = ", l1,
                   " can overflow the int32 accumulator (255 * sum |weight| + |bias| must be < 2^31)");
    }
    return "";
  };
  auto check_weights = [&](int64_t row) -> std::string {
    std::string e;
    if (!(e = expect_size("weight", l.weight.size(), l.out_c * row)).empty()) return e;
    if (!(e = expect_size("bias", l.bias.size(), l.out_c)).empty()) return e;
    if (!(e = expect_size("weight_scale", l.weight_scale.size(), l.out_c)).empty()) return e;
    for (size_t k = 0; k < l.weight.size(); ++k)
      if (l.weight[k] == -128) return cat("weight[", k, "] is -128: weights are symmetric int8, in [-127, 127]");
    for (size_t o = 0; o < l.weight_scale.size(); ++o)
      if (!std::isfinite(l.weight_scale[o]) || !(l.weight_scale[o] > 0.0f))
        return cat("weight_scale[", o, "] ", l.weight_scale[o], " must be finite and > 0");
    return check_accumulators(row);
  };
  auto check_multipliers = [&](size_t want) -> std::string {
    std::string e;
    if (!(e = expect_size("multiplier", l.multiplier.size(), static_cast<int64_t>(want))).empty()) return e;
    for (size_t o = 0; o < l.multiplier.size(); ++o)
      if (!valid_multiplier(l.multiplier[o]))
        return cat("multiplier[", o, "] ", multiplier_text(l.multiplier[o]), " ", kMultiplierRule);
    return "";
  };

  std::string e;
  switch (l.kind) {
    case OpKind::kConv2d: {
      if (!(e = check_window()).empty()) return e;
      if (l.in_c != ti.c) return cat("in_c ", l.in_c, " differs from input tensor ", l.input, " (", shape(ti), ")");
      if (to.c != l.out_c || to.h != out_hw(ti.h) || to.w != out_hw(ti.w))
        return cat("output tensor ", i + 1, " is ", shape(to), ", expected ",
                   shape(l.out_c, out_hw(ti.h), out_hw(ti.w)), " (input ", shape(ti), ", kernel ", l.kernel,
                   ", stride ", l.stride, ", pad ", l.pad, ")");
      const int64_t row = int64_t{l.in_c} * l.kernel * l.kernel;  // <= 2^48: no overflow
      if (row > kMaxElements || row * l.out_c > kMaxElements)
        return cat("weight would have ", l.out_c, " x ", row, " values, over the limit of 2^26");
      if (row * to.h * to.w > kMaxIm2col)
        return cat("im2col matrix of ", row, " x ", int64_t{to.h} * to.w, " bytes is over the limit of 2^28");
      if (!(e = check_weights(row)).empty()) return e;
      if (!(e = check_multipliers(static_cast<size_t>(l.out_c))).empty()) return e;
      if (!(e = expect_empty("output_scale", l.output_scale.size())).empty()) return e;
      return "";
    }
    case OpKind::kMaxPool2d: {
      if (!(e = check_window()).empty()) return e;
      if (to.c != ti.c || to.h != out_hw(ti.h) || to.w != out_hw(ti.w))
        return cat("output tensor ", i + 1, " is ", shape(to), ", expected ", shape(ti.c, out_hw(ti.h), out_hw(ti.w)),
                   " (input ", shape(ti), ", kernel ", l.kernel, ", stride ", l.stride, ", pad ", l.pad, ")");
      // Max-pooling moves int8 values: the output must mean what the input meant.
      if (to.scale != ti.scale || to.zero_point != ti.zero_point)
        return cat("output tensor ", i + 1, " scale/zero_point (", to.scale, ", ", to.zero_point,
                   ") must equal the input's (", ti.scale, ", ", ti.zero_point, ")");
      break;
    }
    case OpKind::kAdd: {
      const TensorInfo& t2 = m.tensors[static_cast<size_t>(l.input2)];
      if (ti.c != t2.c || ti.h != t2.h || ti.w != t2.w)
        return cat("operands differ in shape: tensor ", l.input, " is ", shape(ti), ", tensor ", l.input2, " is ",
                   shape(t2));
      if (to.c != ti.c || to.h != ti.h || to.w != ti.w)
        return cat("output tensor ", i + 1, " is ", shape(to), ", expected the operands' ", shape(ti));
      break;
    }
    case OpKind::kGlobalAvgPool: {
      if (to.c != ti.c || to.h != 1 || to.w != 1)
        return cat("output tensor ", i + 1, " is ", shape(to), ", expected ", shape(ti.c, 1, 1));
      if (!(e = check_multipliers(1)).empty()) return e;
      break;
    }
    case OpKind::kLinear: {
      if (l.in_c != ti.numel())
        return cat("in_c ", l.in_c, " differs from the ", ti.numel(), " values of input tensor ", l.input, " (",
                   shape(ti), ")");
      if (to.c != l.out_c || to.h != 1 || to.w != 1)
        return cat("output tensor ", i + 1, " is ", shape(to), ", expected ", shape(l.out_c, 1, 1));
      if (int64_t{l.in_c} * l.out_c > kMaxElements)
        return cat("weight would have ", l.out_c, " x ", l.in_c, " values, over the limit of 2^26");
      if (!(e = check_weights(l.in_c)).empty()) return e;
      if (!(e = expect_size("output_scale", l.output_scale.size(), l.out_c)).empty()) return e;
      for (size_t o = 0; o < l.output_scale.size(); ++o)
        if (!std::isfinite(l.output_scale[o]))
          return cat("output_scale[", o, "] ", l.output_scale[o], " must be finite");
      return expect_empty("multiplier", l.multiplier.size());
    }
  }
  // Pooling and addition carry no weights.
  const std::pair<const char*, size_t> unused[] = {{"weight", l.weight.size()},
                                                   {"bias", l.bias.size()},
                                                   {"weight_scale", l.weight_scale.size()},
                                                   {"output_scale", l.output_scale.size()}};
  for (const auto& [field, n] : unused)
    if (!(e = expect_empty(field, n)).empty()) return e;
  if (l.kind != OpKind::kGlobalAvgPool) return expect_empty("multiplier", l.multiplier.size());
  return "";
}

std::string tensor_label(size_t t, const Model& m) {
  if (t == 0) return "tensor 0 (the input)";
  return cat("tensor ", t, " (output of ", layer_label(t - 1, m.layers[t - 1]), ")");
}

// ---- bytes -------------------------------------------------------------------------------------

class Writer {
 public:
  void u32(uint32_t v) {
    for (int k = 0; k < 4; ++k) out.push_back(static_cast<uint8_t>(v >> (8 * k)));
  }
  void u64(uint64_t v) {
    for (int k = 0; k < 8; ++k) out.push_back(static_cast<uint8_t>(v >> (8 * k)));
  }
  void i32(int32_t v) { u32(static_cast<uint32_t>(v)); }
  void f32(float v) {
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    u32(bits);
  }
  void multiplier(const QuantizedMultiplier& q) {
    i32(q.multiplier);
    i32(q.shift);
  }
  void bytes(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    out.insert(out.end(), b, b + n);
  }
  void pad4() {
    while (out.size() % 4 != 0) out.push_back(0);
  }
  std::vector<uint8_t> out;
};

// Bounded little-endian reads over [data, end): every read checks the bytes left first, and a
// failed check names what was being read, where, and how much was missing.
class Reader {
 public:
  Reader(const uint8_t* data, size_t pos, size_t end) : data_(data), pos_(pos), end_(end) {}

  std::string where;  // the part of the file being read ("tensor table", "layer 3 (block2, conv2d)")

  size_t offset() const { return pos_; }
  size_t left() const { return end_ - pos_; }

  // `plural`: the grammar of `what` ("weights need", "bias needs").
  void need(uint64_t n, const std::string& what, bool plural = false) const {
    if (n <= left()) return;
    throw QdmError(cat("truncated: ", where, ": ", what, plural ? " need " : " needs ", n, " bytes at offset ", pos_,
                       ", the file has ", left(), " left"));
  }
  uint32_t u32(const std::string& what) {
    need(4, what);
    const uint8_t* p = data_ + pos_;
    pos_ += 4;
    return uint32_t{p[0]} | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16 | uint32_t{p[3]} << 24;
  }
  int32_t i32(const std::string& what) { return static_cast<int32_t>(u32(what)); }
  float f32(const std::string& what) {
    const uint32_t bits = u32(what);
    float v;
    std::memcpy(&v, &bits, 4);
    return v;
  }
  QuantizedMultiplier multiplier(const std::string& what) {
    need(8, what);
    QuantizedMultiplier q;
    q.multiplier = i32(what);
    q.shift = i32(what);
    return q;
  }
  const uint8_t* take(size_t n, const std::string& what, bool plural = false) {
    need(n, what, plural);
    const uint8_t* p = data_ + pos_;
    pos_ += n;
    return p;
  }
  // Zero bytes up to the next multiple of 4 (they keep the following arrays aligned).
  void pad4(const std::string& what) {
    const size_t n = (4 - pos_ % 4) % 4;
    const size_t at = pos_;
    const uint8_t* p = take(n, what + " padding");
    for (size_t k = 0; k < n; ++k)
      if (p[k] != 0)
        throw QdmError(
            cat(where, ": the padding after ", what, " at offset ", at + k, " is ", int{p[k]}, ", must be 0"));
  }
  // An array's u32 count, checked against the cap and against the bytes left before anything is
  // allocated for it.
  size_t count(const std::string& what, size_t elem_bytes, bool plural = false) {
    const size_t at = pos_;
    const uint32_t n = u32(what + " count");
    if (n > kMaxElements)
      throw QdmError(cat(where, ": ", what, " count ", n, " at offset ", at, " is over the limit of 2^26"));
    need(uint64_t{n} * elem_bytes, what, plural);
    return n;
  }

 private:
  const uint8_t* data_;
  size_t pos_, end_;
};

uint32_t load_u32(const uint8_t* p) {
  return uint32_t{p[0]} | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16 | uint32_t{p[3]} << 24;
}
uint64_t load_u64(const uint8_t* p) { return uint64_t{load_u32(p)} | uint64_t{load_u32(p + 4)} << 32; }


// The header's magic and version: the checks both readers make first, in the order that gives the
// most useful message (is it a .qdm at all, then can this runtime read its version, since a newer
// version may have another header).
uint32_t read_version(const uint8_t* data, size_t size) {
  if (size == 0) throw QdmError("truncated: the file is empty (not a .qdm file)");
  if (std::memcmp(data, kMagic, std::min(size, sizeof kMagic)) != 0) throw QdmError("not a .qdm file (bad magic)");
  if (size < 12) throw QdmError(cat("truncated: the header needs ", kHeaderBytes, " bytes, the file has ", size));
  const uint32_t version = load_u32(data + 8);
  if (version == 0) throw QdmError("invalid header: version 0");
  if (version > kQdmGraphVersion)
    throw QdmError(cat("version ", version, " is newer than this runtime reads (", kQdmGraphVersion,
                       "): re-export with this qdistill or update the runtime"));
  if (size < kHeaderBytes) throw QdmError(cat("truncated: the header needs ", kHeaderBytes, " bytes, the file has ", size));
  if (const uint32_t reserved = load_u32(data + 36); reserved != 0)
    throw QdmError(cat("invalid header: reserved field at offset 36 is ", hex32(reserved), ", must be 0"));
  return version;
}

// The rest of the header that both versions share: the reserved field, the payload size against
// the file's, and the payload's CRC-32. Call after the counts are checked.
void check_payload(const uint8_t* data, size_t size) {
  const uint64_t payload = load_u64(data + 24);
  const uint32_t crc = load_u32(data + 32);
  const uint64_t have = size - kHeaderBytes;
  if (payload > have)
    throw QdmError(cat("truncated: the header declares ", payload, " payload bytes after the ", kHeaderBytes,
                       "-byte header, the file has ", have));
  if (payload < have)
    throw QdmError(cat("invalid file: ", have - payload, " unexpected bytes after the ", payload,
                       "-byte payload the header declares"));
  const uint32_t actual = crc32(data + kHeaderBytes, static_cast<size_t>(payload));
  if (actual != crc)
    throw QdmError(cat("checksum mismatch: the payload's CRC-32 is ", hex32(actual), ", the header says ", hex32(crc),
                       " (the file is corrupt)"));
}

// Header: magic, version, three counts, then the payload size and CRC-32 that seal() fills in.
void begin_file(Writer& w, uint32_t version, uint32_t a, uint32_t b, uint32_t c) {
  w.bytes(kMagic, sizeof kMagic);
  w.u32(version);
  w.u32(a);
  w.u32(b);
  w.u32(c);
  w.u64(0);
  w.u32(0);
  w.u32(0);  // reserved
}

std::vector<uint8_t> seal(Writer& w) {
  std::vector<uint8_t>& out = w.out;
  const uint64_t payload = out.size() - kHeaderBytes;
  const uint32_t crc = crc32(out.data() + kHeaderBytes, out.size() - kHeaderBytes);
  for (int k = 0; k < 8; ++k) out[24 + k] = static_cast<uint8_t>(payload >> (8 * k));
  for (int k = 0; k < 4; ++k) out[32 + k] = static_cast<uint8_t>(crc >> (8 * k));
  return std::move(w.out);
}

}  // namespace

// ---- public API ----------------------------------------------------------------------------------

std::string validate(const Model& m) {
  if (m.layers.empty()) return "the model has no layers";
  if (m.layers.size() > static_cast<size_t>(kMaxLayers))
    return cat("the model has ", m.layers.size(), " layers, over the limit of ", kMaxLayers);
  if (m.tensors.size() != m.layers.size() + 1)
    return cat("the model has ", m.tensors.size(), " tensors for ", m.layers.size(), " layers (expected layers + 1)");

  int64_t total = 0;
  for (size_t t = 0; t < m.tensors.size(); ++t) {
    const TensorInfo& ti = m.tensors[t];
    const std::pair<const char*, int32_t> dims[] = {{"c", ti.c}, {"h", ti.h}, {"w", ti.w}};
    for (const auto& [field, v] : dims)
      if (v < 1 || v > kMaxDim) return cat(tensor_label(t, m), ": ", field, " ", v, " must be in [1, ", kMaxDim, "]");
    if (ti.numel() > kMaxElements)
      return cat(tensor_label(t, m), ": ", shape(ti), " = ", ti.numel(), " values, over the limit of 2^26");
    total += ti.numel();
    if (t + 1 == m.tensors.size()) break;  // the logits: float, no scale or zero point
    if (!std::isfinite(ti.scale) || !(ti.scale > 0.0f))
      return cat(tensor_label(t, m), ": scale ", ti.scale, " must be finite and > 0");
    if (!is_int8(ti.zero_point))
      return cat(tensor_label(t, m), ": zero_point ", ti.zero_point, " must be in [-128, 127]");
  }
  if (total > kMaxActivations) return cat("the tensors hold ", total, " values in all, over the limit of 2^28");

  const TensorInfo& in = m.tensors[0];
  if (m.mean.size() != static_cast<size_t>(in.c) || m.inv_std.size() != static_cast<size_t>(in.c))
    return cat("input normalization: mean has ", m.mean.size(), " and inv_std ", m.inv_std.size(),
               " values, expected one per input channel (", in.c, ")");
  for (size_t c = 0; c < m.mean.size(); ++c) {
    if (!std::isfinite(m.mean[c])) return cat("input normalization: mean[", c, "] ", m.mean[c], " must be finite");
    if (!std::isfinite(m.inv_std[c]) || m.inv_std[c] == 0.0f)
      return cat("input normalization: inv_std[", c, "] ", m.inv_std[c], " must be finite and non-zero");
  }

  for (size_t i = 0; i < m.layers.size(); ++i) {
    const Layer& l = m.layers[i];
    const std::string label = layer_label(i, l);
    if (!known_kind(l.kind)) return cat(label, ": unknown kind ", static_cast<uint32_t>(l.kind));
    if (l.name.size() > kMaxNameBytes)
      return cat(label, ": name is ", l.name.size(), " bytes, at most ", kMaxNameBytes);
    const bool last = i + 1 == m.layers.size();
    if (last && l.kind != OpKind::kLinear) return cat(label, ": the last layer must be linear (the classifier)");
    if (!last && l.kind == OpKind::kLinear) return cat(label, ": only the last layer may be linear");
    if (l.input < 0 || static_cast<size_t>(l.input) > i)
      return cat(label, ": input ", l.input, " must name an earlier tensor, in [0, ", i, "]");
    if (l.kind == OpKind::kAdd) {
      if (l.input2 < 0 || static_cast<size_t>(l.input2) > i)
        return cat(label, ": input2 ", l.input2, " must name an earlier tensor, in [0, ", i, "]");
    } else if (l.input2 != -1) {
      return cat(label, ": input2 ", l.input2, " must be -1 (only add has a second input)");
    }
    const std::string e = check_scalars(l);
    if (!e.empty()) return cat(label, ": ", e);
    const std::string e2 = validate_layer(m, i, l);
    if (!e2.empty()) return cat(label, ": ", e2);
  }
  return "";
}

std::vector<uint8_t> serialize(const Model& m) {
  const std::string err = validate(m);
  if (!err.empty()) throw QdmError("cannot write an invalid model: " + err);

  Writer w;
  begin_file(w, kQdmVersion, static_cast<uint32_t>(m.tensors.size()), static_cast<uint32_t>(m.layers.size()),
             static_cast<uint32_t>(m.mean.size()));
  for (float v : m.mean) w.f32(v);
  for (float v : m.inv_std) w.f32(v);
  for (const TensorInfo& t : m.tensors) {
    w.i32(t.c);
    w.i32(t.h);
    w.i32(t.w);
    w.f32(t.scale);
    w.i32(t.zero_point);
  }
  for (const Layer& l : m.layers) {
    w.u32(static_cast<uint32_t>(l.kind));
    w.u32(static_cast<uint32_t>(l.name.size()));
    w.bytes(l.name.data(), l.name.size());
    w.pad4();
    w.i32(l.input);
    w.i32(l.input2);
    w.i32(l.kernel);
    w.i32(l.stride);
    w.i32(l.pad);
    w.i32(l.out_c);
    w.i32(l.in_c);
    w.u32(static_cast<uint32_t>(l.weight.size()));
    w.bytes(l.weight.data(), l.weight.size());
    w.pad4();
    w.u32(static_cast<uint32_t>(l.bias.size()));
    for (int32_t v : l.bias) w.i32(v);
    w.u32(static_cast<uint32_t>(l.weight_scale.size()));
    for (float v : l.weight_scale) w.f32(v);
    w.u32(static_cast<uint32_t>(l.multiplier.size()));
    for (const QuantizedMultiplier& q : l.multiplier) w.multiplier(q);
    w.u32(static_cast<uint32_t>(l.output_scale.size()));
    for (float v : l.output_scale) w.f32(v);
    w.i32(l.left_shift);
    w.multiplier(l.input_multiplier);
    w.multiplier(l.input2_multiplier);
    w.multiplier(l.output_multiplier);
    w.i32(l.act_min);
    w.i32(l.act_max);
  }

  return seal(w);
}

Model parse_qdm(const uint8_t* data, size_t size) {
  if (read_version(data, size) == kQdmGraphVersion)
    throw QdmError("a version-2 .qdm holds a graph of ops: read it with load_graph");
  const uint32_t num_tensors = load_u32(data + 12), num_layers = load_u32(data + 16);
  const uint32_t input_channels = load_u32(data + 20);
  if (num_layers < 1 || num_layers > kMaxLayers)
    throw QdmError(cat("invalid header: ", num_layers, " layers, must be in [1, ", kMaxLayers, "]"));
  if (num_tensors != num_layers + 1)
    throw QdmError(cat("invalid header: ", num_tensors, " tensors for ", num_layers, " layers (expected layers + 1)"));
  if (input_channels < 1 || input_channels > kMaxDim)
    throw QdmError(cat("invalid header: ", input_channels, " input channels, must be in [1, ", kMaxDim, "]"));
  check_payload(data, size);
  const uint64_t payload = load_u64(data + 24);

  Model m;
  Reader r(data, kHeaderBytes, size);
  r.where = "input normalization";
  const size_t ic = input_channels;
  r.need(uint64_t{ic} * 8, "mean and inv_std", true);
  m.mean.resize(ic);
  m.inv_std.resize(ic);
  for (float& v : m.mean) v = r.f32("mean");
  for (float& v : m.inv_std) v = r.f32("inv_std");

  r.where = "tensor table";
  r.need(uint64_t{num_tensors} * 20, cat(num_tensors, " tensors"), true);
  m.tensors.resize(num_tensors);
  for (TensorInfo& t : m.tensors) {
    t.c = r.i32("c");
    t.h = r.i32("h");
    t.w = r.i32("w");
    t.scale = r.f32("scale");
    t.zero_point = r.i32("zero_point");
  }

  r.where = "layers";
  r.need(uint64_t{num_layers} * kMinLayerBytes, cat(num_layers, " layers"), true);
  m.layers.reserve(num_layers);
  for (uint32_t i = 0; i < num_layers; ++i) {
    m.layers.emplace_back();
    Layer& l = m.layers.back();
    r.where = cat("layer ", i);
    const size_t kind_at = r.offset();
    const uint32_t kind = r.u32("kind");
    l.kind = static_cast<OpKind>(kind);
    if (!known_kind(l.kind)) throw QdmError(cat(r.where, ": unknown kind ", kind, " at offset ", kind_at));
    r.where = layer_label(i, l);
    const size_t name_at = r.offset();
    const uint32_t name_len = r.u32("name length");
    if (name_len > kMaxNameBytes)
      throw QdmError(cat(r.where, ": name length ", name_len, " at offset ", name_at, " is over ", kMaxNameBytes));
    const uint8_t* name = r.take(name_len, "name");
    l.name.assign(reinterpret_cast<const char*>(name), name_len);
    r.where = layer_label(i, l);
    r.pad4("name");
    l.input = r.i32("input");
    l.input2 = r.i32("input2");
    l.kernel = r.i32("kernel");
    l.stride = r.i32("stride");
    l.pad = r.i32("pad");
    l.out_c = r.i32("out_c");
    l.in_c = r.i32("in_c");

    size_t n = r.count("weights", 1, true);
    const uint8_t* wb = r.take(n, "weights", true);
    l.weight.resize(n);
    if (n > 0) std::memcpy(l.weight.data(), wb, n);
    r.pad4("weights");
    n = r.count("bias", 4);
    l.bias.resize(n);
    for (int32_t& v : l.bias) v = r.i32("bias");
    n = r.count("weight_scale", 4);
    l.weight_scale.resize(n);
    for (float& v : l.weight_scale) v = r.f32("weight_scale");
    n = r.count("multipliers", 8, true);
    l.multiplier.resize(n);
    for (QuantizedMultiplier& q : l.multiplier) q = r.multiplier("multipliers");
    n = r.count("output_scale", 4);
    l.output_scale.resize(n);
    for (float& v : l.output_scale) v = r.f32("output_scale");

    l.left_shift = r.i32("left_shift");
    l.input_multiplier = r.multiplier("input_multiplier");
    l.input2_multiplier = r.multiplier("input2_multiplier");
    l.output_multiplier = r.multiplier("output_multiplier");
    l.act_min = r.i32("act_min");
    l.act_max = r.i32("act_max");
  }
  if (r.left() != 0)
    throw QdmError(cat("invalid file: ", r.left(), " unexpected bytes at offset ", r.offset(),
                       " after the last layer (the header declares ", payload, " payload bytes)"));

  const std::string err = validate(m);
  if (!err.empty()) throw QdmError("invalid model: " + err);
  return m;
}

// ---- version 2: a graph of ops -------------------------------------------------------------------

namespace {

constexpr int64_t kMaxValues = int64_t{1} << 20;
constexpr int64_t kMaxNodes = int64_t{1} << 20;
constexpr int64_t kMaxMetadata = 256;
constexpr size_t kMaxRankBytes = 8;  // dimensions of a value or tensor attribute

void write_string(Writer& w, const std::string& s) {
  w.u32(static_cast<uint32_t>(s.size()));
  w.bytes(s.data(), s.size());
  w.pad4();
}

void write_shape(Writer& w, const Shape& s) {
  w.u32(static_cast<uint32_t>(s.size()));
  for (int64_t d : s) w.u64(static_cast<uint64_t>(d));
}

std::string read_string(Reader& r, const std::string& what, size_t max_bytes) {
  const size_t at = r.offset();
  const uint32_t n = r.u32(what + " length");
  if (n > max_bytes) throw QdmError(cat(r.where, ": ", what, " length ", n, " at offset ", at, " is over ", max_bytes));
  const uint8_t* p = r.take(n, what);
  std::string s(reinterpret_cast<const char*>(p), n);
  r.pad4(what);
  return s;
}

int64_t read_i64(Reader& r, const std::string& what) {
  const uint64_t lo = r.u32(what), hi = r.u32(what);
  return static_cast<int64_t>(lo | hi << 32);
}

Shape read_shape(Reader& r, const std::string& what) {
  const size_t at = r.offset();
  const uint32_t rank = r.u32(what + " rank");
  if (rank > kMaxRankBytes) throw QdmError(cat(r.where, ": ", what, " rank ", rank, " at offset ", at, " is over ", kMaxRankBytes));
  Shape s(rank);
  for (int64_t& d : s) {
    d = read_i64(r, what);
    if (d < -1 || d > (int64_t{1} << 31)) throw QdmError(cat(r.where, ": ", what, " dimension ", d, " at offset ", r.offset() - 8));
  }
  return s;
}

std::vector<int32_t> read_ids(Reader& r, const std::string& what) {
  const size_t n = r.count(what, 4, true);
  std::vector<int32_t> ids(n);
  for (int32_t& id : ids) id = r.i32(what);
  return ids;
}

void write_ids(Writer& w, const std::vector<int32_t>& ids) {
  w.u32(static_cast<uint32_t>(ids.size()));
  for (int32_t id : ids) w.i32(id);
}

void write_attr(Writer& w, const Attr& a) {
  w.u32(static_cast<uint32_t>(a.kind));
  switch (a.kind) {
    case Attr::Kind::kInt: w.u64(static_cast<uint64_t>(a.i)); break;
    case Attr::Kind::kFloat: w.f32(a.f); break;
    case Attr::Kind::kInts:
      w.u32(static_cast<uint32_t>(a.ints.size()));
      for (int64_t v : a.ints) w.u64(static_cast<uint64_t>(v));
      break;
    case Attr::Kind::kFloats:
      w.u32(static_cast<uint32_t>(a.floats.size()));
      for (float v : a.floats) w.f32(v);
      break;
    case Attr::Kind::kString: write_string(w, a.s); break;
    case Attr::Kind::kTensor:
      w.u32(static_cast<uint32_t>(a.dtype));
      write_shape(w, a.shape);
      w.u64(a.data.size());
      w.bytes(a.data.data(), a.data.size());
      w.pad4();
      break;
  }
}

Attr read_attr(Reader& r, const std::string& key) {
  Attr a;
  const size_t at = r.offset();
  const uint32_t kind = r.u32(key + " kind");
  if (kind < 1 || kind > 6) throw QdmError(cat(r.where, ": attribute ", key, ": unknown kind ", kind, " at offset ", at));
  a.kind = static_cast<Attr::Kind>(kind);
  switch (a.kind) {
    case Attr::Kind::kInt: a.i = read_i64(r, key); break;
    case Attr::Kind::kFloat: a.f = r.f32(key); break;
    case Attr::Kind::kInts: {
      a.ints.resize(r.count(key, 8, true));
      for (int64_t& v : a.ints) v = read_i64(r, key);
      break;
    }
    case Attr::Kind::kFloats: {
      a.floats.resize(r.count(key, 4, true));
      for (float& v : a.floats) v = r.f32(key);
      break;
    }
    case Attr::Kind::kString: a.s = read_string(r, key, size_t{1} << 26); break;
    case Attr::Kind::kTensor: {
      const size_t dt_at = r.offset();
      const uint32_t dt = r.u32(key + " dtype");
      if (!known_dtype(dt)) throw QdmError(cat(r.where, ": attribute ", key, ": unknown dtype ", dt, " at offset ", dt_at));
      a.dtype = static_cast<DType>(dt);
      a.shape = read_shape(r, key);
      const size_t n_at = r.offset();
      const int64_t n = read_i64(r, key + " byte count");
      if (n < 0 || n > (int64_t{1} << 31)) throw QdmError(cat(r.where, ": attribute ", key, ": byte count ", n, " at offset ", n_at));
      const uint8_t* p = r.take(static_cast<size_t>(n), key, true);
      a.data.assign(p, p + n);
      r.pad4(key);
      break;
    }
  }
  return a;
}

}  // namespace

std::vector<uint8_t> serialize_graph(const Graph& g) {
  const std::string err = validate(g);
  if (!err.empty()) throw QdmError("cannot write an invalid model: " + err);
  Writer w;
  begin_file(w, kQdmGraphVersion, static_cast<uint32_t>(g.values.size()), static_cast<uint32_t>(g.nodes.size()),
             static_cast<uint32_t>(g.metadata.size()));
  for (const auto& [k, v] : g.metadata) {
    write_string(w, k);
    write_string(w, v);
  }
  write_ids(w, g.inputs);
  write_ids(w, g.outputs);
  for (const ValueInfo& v : g.values) {
    write_string(w, v.name);
    w.u32(static_cast<uint32_t>(v.dtype));
    write_shape(w, v.shape);
    w.f32(v.scale);
    w.i32(v.zero_point);
  }
  for (const Node& n : g.nodes) {
    write_string(w, n.op);
    write_string(w, n.name);
    write_ids(w, n.inputs);
    write_ids(w, n.outputs);
    w.u32(static_cast<uint32_t>(n.attrs.size()));
    for (const auto& [k, a] : n.attrs) {
      write_string(w, k);
      write_attr(w, a);
    }
  }
  return seal(w);
}

Graph parse_graph(const uint8_t* data, size_t size) {
  if (read_version(data, size) == kQdmVersion) return to_graph(parse_qdm(data, size));
  const uint32_t num_values = load_u32(data + 12), num_nodes = load_u32(data + 16), num_meta = load_u32(data + 20);
  if (num_values < 1 || num_values > kMaxValues) throw QdmError(cat("invalid header: ", num_values, " values, must be in [1, ", kMaxValues, "]"));
  if (num_nodes < 1 || num_nodes > kMaxNodes) throw QdmError(cat("invalid header: ", num_nodes, " nodes, must be in [1, ", kMaxNodes, "]"));
  if (num_meta > kMaxMetadata) throw QdmError(cat("invalid header: ", num_meta, " metadata entries, at most ", kMaxMetadata));
  check_payload(data, size);

  Graph g;
  Reader r(data, kHeaderBytes, size);
  r.where = "metadata";
  for (uint32_t i = 0; i < num_meta; ++i) {
    std::string key = read_string(r, "key", kMaxNameBytes);
    std::string value = read_string(r, "value", size_t{1} << 26);
    if (!g.metadata.empty() && key <= g.metadata.rbegin()->first)
      throw QdmError(cat("metadata: key '", printable(key), "' is out of order or repeated (keys are sorted)"));
    g.metadata.emplace(std::move(key), std::move(value));
  }
  r.where = "graph inputs";
  g.inputs = read_ids(r, "input ids");
  r.where = "graph outputs";
  g.outputs = read_ids(r, "output ids");
  r.where = "value table";
  r.need(uint64_t{num_values} * 24, cat(num_values, " values"), true);
  g.values.resize(num_values);
  for (uint32_t i = 0; i < num_values; ++i) {
    ValueInfo& v = g.values[i];
    r.where = cat("value ", i);
    v.name = read_string(r, "name", kMaxNameBytes);
    const size_t dt_at = r.offset();
    const uint32_t dt = r.u32("dtype");
    if (!known_dtype(dt)) throw QdmError(cat(r.where, ": unknown dtype ", dt, " at offset ", dt_at));
    v.dtype = static_cast<DType>(dt);
    v.shape = read_shape(r, "shape");
    v.scale = r.f32("scale");
    v.zero_point = r.i32("zero_point");
  }
  r.need(uint64_t{num_nodes} * 24, cat(num_nodes, " nodes"), true);
  g.nodes.resize(num_nodes);
  for (uint32_t i = 0; i < num_nodes; ++i) {
    Node& n = g.nodes[i];
    r.where = cat("node ", i);
    n.op = read_string(r, "op", kMaxNameBytes);
    n.name = read_string(r, "name", kMaxNameBytes);
    r.where = cat("node ", i, " (", printable(n.op), " '", printable(n.name), "')");
    n.inputs = read_ids(r, "input ids");
    n.outputs = read_ids(r, "output ids");
    const size_t attrs = r.count("attributes", 8, true);
    for (size_t k = 0; k < attrs; ++k) {
      std::string key = read_string(r, "attribute name", kMaxNameBytes);
      if (!n.attrs.empty() && key <= n.attrs.rbegin()->first)
        throw QdmError(cat(r.where, ": attribute '", printable(key), "' is out of order or repeated (names are sorted)"));
      Attr a = read_attr(r, key);
      n.attrs.emplace(std::move(key), std::move(a));
    }
  }
  if (r.left() != 0)
    throw QdmError(cat("invalid file: ", r.left(), " unexpected bytes at offset ", r.offset(), " after the last node"));
  const std::string err = validate(g);
  if (!err.empty()) throw QdmError("invalid model: " + err);
  return g;
}

Graph to_graph(const Model& m) {
  if (std::string e = validate(m); !e.empty()) throw QdmError("invalid model: " + e);
  Graph g;
  g.metadata["task"] = "image_classification";
  const TensorInfo& t0 = m.tensors[0];
  const int32_t pixels = g.add_value({"pixels", DType::kF32, {t0.c, t0.h, t0.w}});
  std::vector<int32_t> ids(m.tensors.size());
  ids[0] = g.add_value({"input", DType::kI8, {t0.c, t0.h, t0.w}, t0.scale, t0.zero_point});
  g.inputs = {pixels};
  Node& q = g.add_node("quantize_image", "input_quant", {pixels}, {ids[0]});
  q.attrs["mean"] = Attr::of_floats(m.mean);
  q.attrs["inv_std"] = Attr::of_floats(m.inv_std);
  auto pair = [](const QuantizedMultiplier& q) { return Attr::of_ints({q.multiplier, q.shift}); };
  for (size_t i = 0; i < m.layers.size(); ++i) {
    const Layer& l = m.layers[i];
    const TensorInfo& to = m.tensors[i + 1];
    const bool last = l.kind == OpKind::kLinear;
    ids[i + 1] = last ? g.add_value({"logits", DType::kF32, {to.c}})
                      : g.add_value({l.name, DType::kI8, {to.c, to.h, to.w}, to.scale, to.zero_point});
    std::vector<int32_t> in = {ids[static_cast<size_t>(l.input)]};
    if (l.kind == OpKind::kAdd) in.push_back(ids[static_cast<size_t>(l.input2)]);
    static const char* const kOp[] = {"", "conv2d", "maxpool2d", "add_i8", "global_avg_pool", "linear_i8"};
    Node& n = g.add_node(kOp[static_cast<uint32_t>(l.kind)], l.name, in, {ids[i + 1]});
    auto& a = n.attrs;
    switch (l.kind) {
      case OpKind::kConv2d: {
        a["weight"] = Attr::of_tensor(DType::kI8, {l.out_c, l.in_c, l.kernel, l.kernel}, l.weight);
        std::vector<int64_t> mult;
        for (const QuantizedMultiplier& q : l.multiplier) mult.insert(mult.end(), {q.multiplier, q.shift});
        a["multiplier"] = Attr::of_ints(std::move(mult));
        a["bias"] = Attr::of_tensor(DType::kI32, {l.out_c}, l.bias);
        a["weight_scale"] = Attr::of_floats(l.weight_scale);
        a["act_min"] = Attr::of_int(l.act_min);
        a["act_max"] = Attr::of_int(l.act_max);
        [[fallthrough]];
      }
      case OpKind::kMaxPool2d:
        a["kernel"] = Attr::of_int(l.kernel);
        a["stride"] = Attr::of_int(l.stride);
        a["pad"] = Attr::of_int(l.pad);
        break;
      case OpKind::kAdd:
        a["left_shift"] = Attr::of_int(l.left_shift);
        a["input_multiplier"] = pair(l.input_multiplier);
        a["input2_multiplier"] = pair(l.input2_multiplier);
        a["output_multiplier"] = pair(l.output_multiplier);
        a["act_min"] = Attr::of_int(l.act_min);
        a["act_max"] = Attr::of_int(l.act_max);
        break;
      case OpKind::kGlobalAvgPool: a["multiplier"] = pair(l.multiplier[0]); break;
      case OpKind::kLinear:
        a["weight"] = Attr::of_tensor(DType::kI8, {l.out_c, l.in_c}, l.weight);
        a["bias"] = Attr::of_tensor(DType::kI32, {l.out_c}, l.bias);
        a["weight_scale"] = Attr::of_floats(l.weight_scale);
        a["output_scale"] = Attr::of_floats(l.output_scale);
        break;
    }
  }
  g.outputs = {ids.back()};
  if (std::string e = validate(g); !e.empty()) throw QdmError("converting a version-1 model: " + e);
  return g;
}

namespace {

// The whole file, refused before reading when it is over the limit.
std::vector<uint8_t> read_model_file(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw QdmError(cat(path, ": cannot open (", std::strerror(errno), ")"));
  std::vector<uint8_t> bytes;
  bool too_big = false;
  // A regular file's size first: a huge file is refused before reading any of it. (Pipes and
  // other special files are read up to the limit.)
  struct stat st {};
  if (::fstat(::fileno(f), &st) == 0) {
    if (S_ISDIR(st.st_mode)) {
      std::fclose(f);
      throw QdmError(cat(path, ": cannot read (", std::strerror(EISDIR), ")"));
    }
    if (S_ISREG(st.st_mode)) {
      too_big = static_cast<uint64_t>(st.st_size) > kMaxFileBytes;
      if (!too_big) bytes.reserve(static_cast<size_t>(st.st_size));
    }
  }
  uint8_t buf[1 << 16];
  while (!too_big) {
    const size_t n = std::fread(buf, 1, sizeof buf, f);
    bytes.insert(bytes.end(), buf, buf + n);
    if (bytes.size() > kMaxFileBytes) {
      too_big = true;
      break;
    }
    if (n < sizeof buf) break;
  }
  const bool failed = std::ferror(f) != 0;
  const int err = errno;
  std::fclose(f);
  if (failed) throw QdmError(cat(path, ": read failed (", std::strerror(err), ")"));
  if (too_big) throw QdmError(cat(path, ": file is over ", kMaxFileBytes >> 20, " MiB, too large for a .qdm model"));
  return bytes;
}

// A reader never sees a half-written model, and a written one survives a crash (common/atomic_file.h).
void write_model_file(const std::vector<uint8_t>& bytes, const std::string& path) {
  try {
    AtomicFile f(path);
    f.write(bytes.data(), bytes.size());
    f.commit();
  } catch (const qd::Error& e) {
    throw QdmError(cat(path, ": ", e.what()));
  }
}

}  // namespace

Model load_qdm(const std::string& path) {
  const std::vector<uint8_t> bytes = read_model_file(path);
  try {
    return parse_qdm(bytes.data(), bytes.size());
  } catch (const QdmError& e) {
    throw QdmError(path + ": " + e.what());
  }
}

Graph load_graph(const std::string& path) {
  const std::vector<uint8_t> bytes = read_model_file(path);
  try {
    return parse_graph(bytes.data(), bytes.size());
  } catch (const QdmError& e) {
    throw QdmError(path + ": " + e.what());
  }
}


void save_qdm(const Model& m, const std::string& path) {
  std::vector<uint8_t> bytes;
  try {
    bytes = serialize(m);
  } catch (const QdmError& e) {
    throw QdmError(path + ": " + e.what());
  }
  write_model_file(bytes, path);
}

void save_graph(const Graph& g, const std::string& path) {
  std::vector<uint8_t> bytes;
  try {
    bytes = serialize_graph(g);
  } catch (const QdmError& e) {
    throw QdmError(path + ": " + e.what());
  }
  write_model_file(bytes, path);
}

}  // namespace qd::rt
