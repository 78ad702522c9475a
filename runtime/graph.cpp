#include "runtime/graph.h"

#include <cmath>

#include "runtime/ops.h"
#include "runtime/strings.h"

namespace qd::rt {

namespace {

constexpr int64_t kMaxElements = int64_t{1} << 31;  // any one tensor, static dimensions only
constexpr size_t kMaxRank = 8;

std::string node_label(size_t i, const Node& n) { return cat("node ", i, " (", printable(n.op), " '", printable(n.name), "')"); }

std::string check_shape(const Shape& s, bool dynamic_ok) {
  if (s.size() > kMaxRank) return cat("rank ", s.size(), " (at most ", kMaxRank, ")");
  int64_t total = 1;
  for (int64_t d : s) {
    if (d == -1 && dynamic_ok) continue;
    if (d < (dynamic_ok ? 1 : 0)) return cat("dimension ", d, " in ", shape_text(s));
    if (d > 0 && total > kMaxElements / d) return cat("more than 2^31 elements in ", shape_text(s));
    total *= d;
  }
  return "";
}

std::string check_value(const ValueInfo& v) {
  if (v.name.size() > 255) return "a name longer than 255 bytes";
  if (!known_dtype(static_cast<uint32_t>(v.dtype))) return cat("unknown dtype ", static_cast<uint32_t>(v.dtype));
  if (std::string e = check_shape(v.shape, true); !e.empty()) return e;
  if (v.dtype == DType::kI8) {
    if (!(std::isfinite(v.scale) && v.scale > 0.0f)) return cat("scale ", v.scale, " (must be finite and > 0)");
    if (v.zero_point < -128 || v.zero_point > 127) return cat("zero point ", v.zero_point, " outside [-128, 127]");
  }
  return "";
}

std::string check_attr(const std::string& key, const Attr& a) {
  if (a.kind == Attr::Kind::kFloat && !std::isfinite(a.f)) return cat("attribute ", key, " is ", a.f);
  for (float f : a.floats)
    if (!std::isfinite(f)) return cat("attribute ", key, " holds ", f);
  if (a.kind != Attr::Kind::kTensor) return "";
  if (!known_dtype(static_cast<uint32_t>(a.dtype))) return cat("attribute ", key, ": unknown dtype ", static_cast<uint32_t>(a.dtype));
  if (std::string e = check_shape(a.shape, false); !e.empty()) return cat("attribute ", key, ": ", e);
  const uint64_t want = static_cast<uint64_t>(shape_numel(a.shape)) * dtype_size(a.dtype);
  if (a.data.size() != want) return cat("attribute ", key, ": ", a.data.size(), " bytes for ", shape_text(a.shape), " ", dtype_name(a.dtype), " (", want, ")");
  if (a.dtype == DType::kF32) {
    const float* f = a.as<float>();
    const int64_t n = a.numel();
    for (int64_t i = 0; i < n; ++i)
      if (!std::isfinite(f[i])) return cat("attribute ", key, ": element ", i, " is not finite");
  }
  return "";
}

}  // namespace

const char* dtype_name(DType t) {
  switch (t) {
    case DType::kF32: return "f32";
    case DType::kI8: return "i8";
    case DType::kI32: return "i32";
  }
  return "?";
}

size_t dtype_size(DType t) {
  switch (t) {
    case DType::kF32: return 4;
    case DType::kI8: return 1;
    case DType::kI32: return 4;
  }
  return 0;
}

bool known_dtype(uint32_t t) { return t >= 1 && t <= 3; }

std::string shape_text(const Shape& s) {
  if (s.empty()) return "scalar";
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) out += (i ? "x" : "") + (s[i] < 0 ? std::string("?") : std::to_string(s[i]));
  return out;
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) {
    if (d < 0) return -1;
    n *= d;
  }
  return n;
}

const char* attr_kind_name(Attr::Kind k) {
  switch (k) {
    case Attr::Kind::kInt: return "int";
    case Attr::Kind::kFloat: return "float";
    case Attr::Kind::kInts: return "ints";
    case Attr::Kind::kFloats: return "floats";
    case Attr::Kind::kString: return "string";
    case Attr::Kind::kTensor: return "tensor";
  }
  return "?";
}

Attr Attr::of_int(int64_t v) {
  Attr a;
  a.kind = Kind::kInt;
  a.i = v;
  return a;
}
Attr Attr::of_float(float v) {
  Attr a;
  a.kind = Kind::kFloat;
  a.f = v;
  return a;
}
Attr Attr::of_ints(std::vector<int64_t> v) {
  Attr a;
  a.kind = Kind::kInts;
  a.ints = std::move(v);
  return a;
}
Attr Attr::of_floats(std::vector<float> v) {
  Attr a;
  a.kind = Kind::kFloats;
  a.floats = std::move(v);
  return a;
}
Attr Attr::of_string(std::string v) {
  Attr a;
  a.kind = Kind::kString;
  a.s = std::move(v);
  return a;
}

const Attr* Node::find(const std::string& key) const {
  auto it = attrs.find(key);
  return it == attrs.end() ? nullptr : &it->second;
}

const Attr& Node::at(const std::string& key) const {
  const Attr* a = find(key);
  if (!a) throw QdmError(cat(op, " '", name, "': no attribute ", key));
  return *a;
}

Graph last_token_output(Graph g) {
  if (g.outputs.size() != 1) return g;
  // The producer of each value, by index into g.nodes.
  std::vector<int> producer(g.values.size(), -1);
  for (size_t i = 0; i < g.nodes.size(); ++i)
    for (int32_t o : g.nodes[i].outputs)
      if (o >= 0 && static_cast<size_t>(o) < producer.size()) producer[static_cast<size_t>(o)] = static_cast<int>(i);
  const auto made_by = [&](int32_t v) { return v >= 0 && static_cast<size_t>(v) < producer.size() ? producer[static_cast<size_t>(v)] : -1; };
  const int head = made_by(g.outputs[0]);
  if (head < 0 || g.nodes[static_cast<size_t>(head)].op != "linear" || g.nodes[static_cast<size_t>(head)].inputs.size() != 1) return g;
  const int norm = made_by(g.nodes[static_cast<size_t>(head)].inputs[0]);
  if (norm < 0) return g;
  Node& nn = g.nodes[static_cast<size_t>(norm)];
  if ((nn.op != "rms_norm" && nn.op != "layer_norm") || nn.inputs.size() != 1) return g;
  const int32_t x = nn.inputs[0];
  const ValueInfo xv = g.values[static_cast<size_t>(x)];  // a copy: add_value below may move the values
  if (xv.dtype != DType::kF32 || xv.shape.size() != 2) return g;
  const int32_t last = g.add_value({xv.name + ".last", DType::kF32, {1, xv.shape[1]}});
  nn.inputs[0] = last;
  for (int32_t v : {nn.outputs[0], g.outputs[0]}) g.values[static_cast<size_t>(v)].shape[0] = 1;
  Node n;
  n.op = "last_row";
  n.name = xv.name + ".last";
  n.inputs = {x};
  n.outputs = {last};
  g.nodes.insert(g.nodes.begin() + norm, std::move(n));
  return g;
}

int32_t Graph::add_value(ValueInfo v) {
  values.push_back(std::move(v));
  return static_cast<int32_t>(values.size() - 1);
}

Node& Graph::add_node(std::string op, std::string name, std::vector<int32_t> in, std::vector<int32_t> out) {
  Node n;
  n.op = std::move(op);
  n.name = std::move(name);
  n.inputs = std::move(in);
  n.outputs = std::move(out);
  nodes.push_back(std::move(n));
  return nodes.back();
}

std::string validate(const Graph& g) {
  const int64_t nv = static_cast<int64_t>(g.values.size());
  if (g.nodes.empty()) return "the graph has no nodes";
  if (g.inputs.empty() || g.outputs.empty()) return "the graph has no inputs or no outputs";
  for (size_t i = 0; i < g.values.size(); ++i)
    if (std::string e = check_value(g.values[i]); !e.empty()) return cat("value ", i, " ('", printable(g.values[i].name), "'): ", e);
  std::vector<char> written(g.values.size(), 0);
  for (int32_t id : g.inputs) {
    if (id < 0 || id >= nv) return cat("graph input ", id, " is not a value id (", nv, " values)");
    if (written[static_cast<size_t>(id)]) return cat("graph input ", id, " is listed twice");
    written[static_cast<size_t>(id)] = 1;
  }
  for (size_t ni = 0; ni < g.nodes.size(); ++ni) {
    const Node& n = g.nodes[ni];
    const std::string where = node_label(ni, n);
    if (n.name.size() > 255) return cat("node ", ni, ": a name longer than 255 bytes");
    const OpSpec* op = find_op(n.op);
    if (!op) return cat(where, ": unknown op (this runtime knows ", all_ops().size(), " ops; re-export with this version)");
    const int ins = static_cast<int>(n.inputs.size());
    if (ins < op->min_inputs || ins > op->max_inputs)
      return cat(where, ": ", ins, " inputs (", op->min_inputs, "..", op->max_inputs, ")");
    if (static_cast<int>(n.outputs.size()) != op->outputs) return cat(where, ": ", n.outputs.size(), " outputs (", op->outputs, ")");
    std::vector<const ValueInfo*> in;
    for (int k = 0; k < ins; ++k) {
      const int32_t id = n.inputs[static_cast<size_t>(k)];
      if (id == -1 && k >= op->min_inputs) {
        in.push_back(nullptr);
        continue;
      }
      if (id < 0 || id >= nv) return cat(where, ": input ", k, " is value ", id, " (", nv, " values)");
      if (!written[static_cast<size_t>(id)]) return cat(where, ": input ", k, " reads value ", id, " before any node writes it");
      in.push_back(&g.values[static_cast<size_t>(id)]);
    }
    for (const AttrRule& r : op->attrs) {
      const Attr* a = n.find(r.name);
      if (!a) {
        if (r.required) return cat(where, ": attribute ", r.name, " is missing");
        continue;
      }
      if (a->kind != r.kind) return cat(where, ": attribute ", r.name, " is a ", attr_kind_name(a->kind), ", not a ", attr_kind_name(r.kind));
      if (std::string e = check_attr(r.name, *a); !e.empty()) return cat(where, ": ", e);
    }
    for (const auto& [key, a] : n.attrs) {
      (void)a;
      bool known = false;
      for (const AttrRule& r : op->attrs) known = known || key == r.name;
      if (!known) return cat(where, ": unknown attribute '", printable(key.size() > 64 ? key.substr(0, 64) + "..." : key), "'");
    }
    if (std::string e = op->check(n, in); !e.empty()) return cat(where, ": ", e);
    std::vector<Shape> in_shapes;
    for (const ValueInfo* v : in) in_shapes.push_back(v ? v->shape : Shape{});
    const std::vector<Shape> shapes = op->infer(n, in_shapes);
    const std::vector<DType> dtypes = op->out_dtypes(n, in);
    for (size_t k = 0; k < n.outputs.size(); ++k) {
      const int32_t id = n.outputs[k];
      if (id < 0 || id >= nv) return cat(where, ": output ", k, " is value ", id, " (", nv, " values)");
      if (written[static_cast<size_t>(id)]) return cat(where, ": output ", k, " writes value ", id, ", which is already written");
      written[static_cast<size_t>(id)] = 1;
      const ValueInfo& v = g.values[static_cast<size_t>(id)];
      if (v.dtype != dtypes[k]) return cat(where, ": output ", k, " is ", dtype_name(v.dtype), ", the op writes ", dtype_name(dtypes[k]));
      if (v.shape != shapes[k])  // dynamic dimensions included
        return cat(where, ": output ", k, " is declared ", shape_text(v.shape), ", the op writes ", shape_text(shapes[k]));
    }
  }
  for (size_t i = 0; i < g.values.size(); ++i)
    if (!written[i]) return cat("value ", i, " ('", printable(g.values[i].name), "') is neither a graph input nor written by a node");
  for (int32_t id : g.outputs)
    if (id < 0 || id >= nv) return cat("graph output ", id, " is not a value id (", nv, " values)");
  return "";
}

}  // namespace qd::rt
