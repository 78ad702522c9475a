// libFuzzer target of the .qdm loaders: whatever the bytes, parse_qdm (version 1) and parse_graph
// (versions 1 and 2) either throw QdmError or return a model that validation accepts, and the
// interpreter / the executor then run it on zero inputs without an out-of-bounds access, a leak or
// undefined behaviour (the build uses ASan and UBSan). Any other exception, a crash or a sanitizer report is a finding. scripts/fuzz.sh builds
// it from the runtime's sources and runs it; `qdm_fuzz --write-seeds DIR` writes the seed corpus.
//
// Properties checked on each input:
//   * parse_qdm(bytes) throws only QdmError;
//   * when it parses, serialize(model) gives back exactly `bytes` (one encoding per model);
//   * Interpreter(model) accepts it (it validates again) and run() stays in bounds.
// Most mutations break the payload's CRC-32 and stop at "checksum mismatch", so each input is
// tried twice: as it is (the header and checksum paths), and with its header's payload size and
// CRC-32 made consistent (everything behind the checksum).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "runtime/executor.h"
#include "runtime/interpreter.h"
#include "runtime/qdm.h"
#include "tests/runtime/model_builders.h"

namespace {

using namespace qd::rt;
using namespace qd::rt::test_models;

constexpr size_t kHeaderBytes = 40;  // docs/qdm.md: payload size (u64) at 24, CRC-32 at 32


[[noreturn]] void finding(const char* what, const std::string& detail) {
  std::fprintf(stderr, "qdm_fuzz: FINDING: %s%s%s\n", what, detail.empty() ? "" : ": ", detail.c_str());
  std::abort();
}

// Multiply-adds and bytes touched by one run (plus the activation buffers the constructor fills).
// Valid models can be large (a 2^26-value tensor is valid); running those would only make the
// fuzzer report timeouts, not find bugs, so the interpreter runs models up to this much work.
constexpr int64_t kMaxRunCost = int64_t{1} << 24;

int64_t run_cost(const Model& m) {
  int64_t cost = 0;
  for (const TensorInfo& t : m.tensors) cost += t.numel();
  for (size_t i = 0; i < m.layers.size(); ++i) {
    const Layer& l = m.layers[i];
    const TensorInfo &in = m.tensors[static_cast<size_t>(l.input)], &out = m.tensors[i + 1];
    switch (l.kind) {
      case OpKind::kConv2d: {
        const int64_t row = int64_t{l.in_c} * l.kernel * l.kernel, pixels = int64_t{out.h} * out.w;
        cost += row * pixels * (l.out_c + 1);  // the im2col matrix, then the GEMM
        break;
      }
      case OpKind::kMaxPool2d:
        cost += out.numel() * l.kernel * l.kernel;
        break;
      case OpKind::kAdd:
        cost += out.numel();
        break;
      case OpKind::kGlobalAvgPool:
        cost += in.numel();
        break;
      case OpKind::kLinear:
        cost += int64_t{l.in_c} * l.out_c;
        break;
    }
  }
  return cost;
}

void check(const uint8_t* data, size_t size) {
  Model m;
  try {
    m = parse_qdm(data, size);
  } catch (const QdmError&) {
    return;  // the expected outcome for almost every input
  }
  const std::vector<uint8_t> again = serialize(m);  // throws (a finding) if validate() disagrees
  if (again.size() != size || std::memcmp(again.data(), data, size) != 0)
    finding("serialize(parse_qdm(bytes)) differs from bytes",
            std::to_string(size) + " bytes in, " + std::to_string(again.size()) + " out");
  if (run_cost(m) > kMaxRunCost) return;
  std::vector<float> pixels(static_cast<size_t>(m.tensors[0].numel()), 0.0f);
  std::vector<float> logits(static_cast<size_t>(m.num_classes()));
  try {
    Interpreter interpreter(std::move(m));
    interpreter.run(pixels.data(), logits.data());
  } catch (const QdmError& e) {
    finding("the interpreter refused a model that parse_qdm accepted", e.what());
  }
}

// The same properties for the version-2 reader (which also reads version 1): parse_graph throws
// only QdmError; serialize_graph gives back the bytes of a version-2 file; the executor accepts the
// graph and runs it on zero inputs of the declared shapes when the work is small. An upper bound
// of the work: each node's output elements times (1 + its tensor attributes' elements).
int64_t graph_cost(const Graph& g) {
  int64_t cost = 0;
  for (const Node& n : g.nodes) {
    int64_t weights = 1, outputs = 0;
    for (const auto& [k, a] : n.attrs)
      if (a.kind == Attr::Kind::kTensor) weights += a.numel();
    for (int32_t id : n.outputs) {
      int64_t numel = 1;  // a dynamic dimension counts as the 3 tokens the run feeds
      for (int64_t d : g.values[static_cast<size_t>(id)].shape) numel *= d < 0 ? 3 : d;
      outputs += numel;
    }
    if (weights > kMaxRunCost || outputs > kMaxRunCost) return kMaxRunCost + 1;
    cost += weights * outputs;
    if (cost > kMaxRunCost) return cost;
  }
  return cost;
}

void check_graph(const uint8_t* data, size_t size) {
  Graph g;
  try {
    g = parse_graph(data, size);
  } catch (const QdmError&) {
    return;
  }
  if (size > 8 && data[8] == kQdmGraphVersion) {
    const std::vector<uint8_t> again = serialize_graph(g);
    if (again.size() != size || std::memcmp(again.data(), data, size) != 0)
      finding("serialize_graph(parse_graph(bytes)) differs from bytes",
              std::to_string(size) + " bytes in, " + std::to_string(again.size()) + " out");
  }
  if (graph_cost(g) > kMaxRunCost) return;
  std::unique_ptr<Executor> ex;
  try {
    ex = std::make_unique<Executor>(g);
  } catch (const QdmError& e) {
    finding("the executor refused a graph that parse_graph accepted", e.what());
  }
  // Zero inputs of the declared shapes, a dynamic dimension (a token count) as 3: token id 0. A
  // run may refuse its inputs with a QdmError (3 positions past a model's max_positions, say).
  for (size_t k = 0; k < g.inputs.size(); ++k) {
    Shape s = g.values[static_cast<size_t>(g.inputs[k])].shape;
    for (int64_t& d : s) d = d < 0 ? 3 : d;
    ex->input(k).resize(s);
  }
  try {
    ex->run();
  } catch (const QdmError&) {
  }
}

// ---- the seed corpus: a few valid models that cover every layer kind -----------------------------

std::vector<Model> seed_models() {
  std::vector<Model> seeds;
  {  // the unit test's model: conv 3x3 -> maxpool -> conv 1x1 -> add -> global average pool -> linear
    Model m;
    m.mean = {0.286f};
    m.inv_std = {2.83f};
    m.tensors = {tensor(1, 8, 8, 0.0215f, -17), tensor(4, 8, 8, 0.05f, -128), tensor(4, 4, 4, 0.05f, -128),
                 tensor(4, 4, 4, 0.04f, 3),     tensor(4, 4, 4, 0.06f, -128), tensor(4, 1, 1, 0.03f, -100),
                 tensor(10, 1, 1, 1.0f, 0)};
    m.layers.push_back(conv("conv1", m, 0, 4, 3, 1, 1, 0.05f));
    m.layers.back().act_min = -128;
    m.layers.push_back(pool("pool1", 1, 2, 2, 0));
    m.layers.push_back(conv("conv2", m, 2, 4, 1, 1, 0, 0.04f));
    m.layers.push_back(add(m, 2, 3, 0.06f));
    m.layers.push_back(gap(m, 4, 0.03f));
    m.layers.push_back(linear(m, 5, 10));
    seeds.push_back(m);
  }
  {  // the smallest: one classifier over a 3-channel input
    Model m;
    m.mean = {0.5f, 0.4f, 0.3f};
    m.inv_std = {4.0f, 4.0f, 4.0f};
    m.tensors = {tensor(3, 2, 2, 0.03f, 0), tensor(4, 1, 1, 1.0f, 0)};
    m.layers.push_back(linear(m, 0, 4));
    seeds.push_back(m);
  }
  {  // strided, padded windows: conv 5x5 stride 2 pad 2, maxpool 3 stride 2 pad 1, x + x, flatten
    Model m;
    m.mean = {0.1f, 0.2f};
    m.inv_std = {3.0f, 5.0f};
    m.tensors = {tensor(2, 9, 7, 0.02f, 5), tensor(3, 5, 4, 0.07f, -20),  tensor(3, 3, 2, 0.07f, -20),
                 tensor(3, 3, 2, 0.1f, 0),  tensor(3, 2, 1, 0.02f, -128), tensor(5, 1, 1, 1.0f, 0)};
    m.layers.push_back(conv("stem", m, 0, 3, 5, 2, 2, 0.07f));
    m.layers.back().act_min = -60, m.layers.back().act_max = 90;
    m.layers.push_back(pool("pool", 1, 3, 2, 1));
    m.layers.push_back(add(m, 2, 2, 0.1f));
    m.layers.push_back(conv("head", m, 3, 3, 2, 1, 0, 0.02f));
    m.layers.push_back(linear(m, 4, 5));
    seeds.push_back(m);
  }
  {  // a gain above 1 (positive shifts) and all-zero weights
    Model m;
    m.mean = {0.0f};
    m.inv_std = {1.0f};
    m.tensors = {tensor(1, 4, 4, 1.0f / 255, -128), tensor(2, 4, 4, 1e-6f, 0), tensor(2, 1, 1, 1e-6f, 0),
                 tensor(3, 1, 1, 1.0f, 0)};
    m.layers.push_back(conv("amp", m, 0, 2, 1, 1, 0, 1e-6f));
    std::fill(m.layers.back().weight.begin() + 1, m.layers.back().weight.end(), int8_t{0});
    m.layers.push_back(gap(m, 1, 1e-6f));
    m.layers.push_back(linear(m, 2, 3));
    seeds.push_back(m);
  }
  return seeds;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  // `qdm_fuzz --write-seeds DIR`: libFuzzer calls this before it reads its own flags.
  if (*argc == 3 && std::strcmp((*argv)[1], "--write-seeds") == 0) {
    const std::string dir = (*argv)[2];
    const std::vector<Model> seeds = seed_models();
    for (size_t i = 0; i < seeds.size(); ++i) {
      const std::string path = dir + "/seed" + std::to_string(i) + ".qdm";
      save_qdm(seeds[i], path);  // validates; throws (and aborts) on a broken seed
      const Model back = load_qdm(path);
      std::printf("%s: %zu layers, %d classes\n", path.c_str(), back.layers.size(), back.num_classes());
      const std::string graph_path = dir + "/seed" + std::to_string(i) + ".v2.qdm";
      save_graph(to_graph(seeds[i]), graph_path);
      std::printf("%s: %zu nodes (version 2)\n", graph_path.c_str(), load_graph(graph_path).nodes.size());
    }
    const std::string text_path = dir + "/seed_text.v2.qdm";
    save_graph(every_text_op_graph(), text_path);
    std::printf("%s: %zu nodes (version 2, every text op)\n", text_path.c_str(), load_graph(text_path).nodes.size());
    std::exit(0);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  check(data, size);
  check_graph(data, size);
  if (size >= kHeaderBytes) {
    std::vector<uint8_t> sealed(data, data + size);
    const uint64_t payload = size - kHeaderBytes;
    const uint32_t crc = crc32(sealed.data() + kHeaderBytes, size - kHeaderBytes);
    for (int k = 0; k < 8; ++k) sealed[24 + static_cast<size_t>(k)] = static_cast<uint8_t>(payload >> (8 * k));
    for (int k = 0; k < 4; ++k) sealed[32 + static_cast<size_t>(k)] = static_cast<uint8_t>(crc >> (8 * k));
    if (std::memcmp(sealed.data(), data, size) != 0) {
      check(sealed.data(), sealed.size());
      check_graph(sealed.data(), sealed.size());
    }
  }
  return 0;
}
