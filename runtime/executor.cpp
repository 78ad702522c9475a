#include "runtime/executor.h"

#include "runtime/strings.h"


namespace qd::rt {

namespace {

constexpr int64_t kMaxRunElements = int64_t{1} << 31;  // any one tensor at run time

// A run-time shape against its declaration: the same rank, the static dimensions equal.
bool fits(const Shape& actual, const Shape& declared) {
  if (actual.size() != declared.size()) return false;
  for (size_t i = 0; i < actual.size(); ++i)
    if (actual[i] < 1 || (declared[i] != -1 && actual[i] != declared[i])) return false;
  return true;
}

}  // namespace

Executor::Executor(Graph g) : graph_(std::move(g)) {
  if (std::string e = validate(graph_); !e.empty()) throw QdmError("invalid model: " + e);
  buffers_.resize(graph_.values.size());
  for (size_t i = 0; i < graph_.values.size(); ++i) {
    const ValueInfo& v = graph_.values[i];
    Buffer& b = buffers_[i];
    b.dtype = v.dtype, b.scale = v.scale, b.zero_point = v.zero_point;
    if (shape_numel(v.shape) >= 0) b.resize(v.shape);
  }
  for (const Node& n : graph_.nodes) {
    ops_.push_back(find_op(n.op));
    kernels_.push_back(ops_.back()->make(n, graph_));
  }
}

void Executor::reset() {
  for (auto& k : kernels_) k->reset();
}

void Executor::run(const Hook& after) {
  for (size_t k = 0; k < graph_.inputs.size(); ++k) {
    const size_t id = static_cast<size_t>(graph_.inputs[k]);
    const ValueInfo& v = graph_.values[id];
    const Buffer& b = buffers_[id];
    if (!fits(b.shape, v.shape) || b.bytes.size() != static_cast<size_t>(b.numel()) * dtype_size(v.dtype))
      throw QdmError(cat("input '", v.name, "' is ", shape_text(b.shape), " (", b.bytes.size(), " bytes); the model takes ",
                         dtype_name(v.dtype), " ", shape_text(v.shape)));
  }
  std::vector<const Buffer*> in;
  std::vector<Buffer*> out;
  std::vector<Shape> shapes;
  for (size_t ni = 0; ni < graph_.nodes.size(); ++ni) {
    const Node& n = graph_.nodes[ni];
    in.clear(), out.clear(), shapes.clear();
    for (int32_t id : n.inputs) {
      in.push_back(id < 0 ? nullptr : &buffers_[static_cast<size_t>(id)]);
      shapes.push_back(id < 0 ? Shape{} : buffers_[static_cast<size_t>(id)].shape);
    }
    const std::vector<Shape> out_shapes = ops_[ni]->infer(n, shapes);
    for (size_t k = 0; k < n.outputs.size(); ++k) {
      Buffer& b = buffers_[static_cast<size_t>(n.outputs[k])];
      const int64_t numel = shape_numel(out_shapes[k]);
      if (numel < 0 || numel > kMaxRunElements)
        throw QdmError(cat("node ", ni, " (", n.op, " '", n.name, "'): output ", k, " would be ", shape_text(out_shapes[k])));
      b.resize(out_shapes[k]);
      out.push_back(&b);
    }
    kernels_[ni]->run(in, out);
    if (after) after(ni, out);
  }
}

}  // namespace qd::rt
