// Runs a graph (runtime/graph.h) through the op table: validates it once, builds each node's kernel
// (weights packed then), and at each run infers every shape from the actual inputs, sizes the
// buffers (kept between runs) and runs the nodes in order. No LibTorch.
#pragma once

#include <functional>
#include <memory>
#include <vector>

#include "runtime/graph.h"
#include "runtime/ops.h"

namespace qd::rt {

class Executor {
 public:
  // Throws QdmError when the graph is invalid.
  explicit Executor(Graph g);

  // Graph input k: set its shape (dynamic dimensions free, the others as declared) and fill it.
  Buffer& input(size_t k) { return buffers_[static_cast<size_t>(graph_.inputs.at(k))]; }
  // Runs every node; `after(node, output buffers)` is called after each one (tests compare each
  // value with the training simulation, or feed a node the simulation's input).
  using Hook = std::function<void(size_t node, const std::vector<Buffer*>& out)>;
  void run(const Hook& after = {});
  const Buffer& output(size_t k) const { return buffers_[static_cast<size_t>(graph_.outputs.at(k))]; }
  const Buffer& value(int32_t id) const { return buffers_.at(static_cast<size_t>(id)); }
  // Starts a new sequence: kernels with state (a KV cache) forget it.
  void reset();

  const Graph& graph() const { return graph_; }

 private:
  Graph graph_;
  std::vector<Buffer> buffers_;  // one per value
  std::vector<const OpSpec*> ops_;  // per node, found once
  std::vector<std::unique_ptr<OpKernel>> kernels_;
};

}  // namespace qd::rt
