#include "export/onnx_util.h"

#include "export/onnx_summary.h"

#include <onnx/checker.h>
#include <onnx/defs/schema.h>
#include <onnx/shape_inference/implementation.h>

#include <stdexcept>

namespace qd::onnx_util {

void fail(const std::string& msg) { throw std::runtime_error("ONNX export: " + msg); }

onnx::NodeProto* node(onnx::GraphProto* g, const std::string& op, const std::string& name, const std::vector<std::string>& inputs,
                      const std::string& output) {
  onnx::NodeProto* n = g->add_node();
  n->set_op_type(op);
  n->set_name(name);
  for (const std::string& in : inputs) n->add_input(in);
  n->add_output(output);
  return n;
}

void attr(onnx::NodeProto* n, const std::string& name, int64_t v) {
  onnx::AttributeProto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto_AttributeType_INT);
  a->set_i(v);
}

void attr(onnx::NodeProto* n, const std::string& name, const std::vector<int64_t>& v) {
  onnx::AttributeProto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto_AttributeType_INTS);
  for (int64_t x : v) a->add_ints(x);
}

void attr(onnx::NodeProto* n, const std::string& name, float v) {
  onnx::AttributeProto* a = n->add_attribute();
  a->set_name(name);
  a->set_type(onnx::AttributeProto_AttributeType_FLOAT);
  a->set_f(v);
}

onnx::ModelProto new_model(int64_t ir_version, int64_t opset, const std::vector<std::pair<std::string, std::string>>& metadata) {
  onnx::ModelProto model;
  model.set_ir_version(ir_version);
  model.set_producer_name("qdistill");
  model.set_producer_version("0.1.0");
  onnx::OperatorSetIdProto* o = model.add_opset_import();
  o->set_domain("");
  o->set_version(opset);
  for (const auto& [k, v] : metadata) {
    onnx::StringStringEntryProto* e = model.add_metadata_props();
    e->set_key(k);
    e->set_value(v);
  }
  return model;
}

void full_check(const onnx::ModelProto& model) {
  try {
    onnx::checker::check_model(model);
  } catch (const std::exception& e) {
    fail(std::string("ONNX checker rejected the model: ") + e.what());
  }
  onnx::ModelProto inferred = model;
  try {
    onnx::shape_inference::InferShapes(inferred, onnx::OpSchemaRegistry::Instance(),
                                       onnx::ShapeInferenceOptions(/*check_type=*/true, /*strict_mode=*/1));
  } catch (const std::exception& e) {
    fail(std::string("ONNX shape inference rejected the model: ") + e.what());
  }
}

std::string checked_bytes(const onnx::ModelProto& model) {
  full_check(model);
  std::string bytes;
  if (!model.SerializeToString(&bytes)) fail("protobuf serialization failed (model over 2 GiB?)");
  return bytes;
}

}  // namespace qd::onnx_util

namespace qd {

OnnxSummary summarize_onnx(const std::string& bytes) {
  onnx::ModelProto m;
  if (!m.ParseFromString(bytes)) throw std::runtime_error("not an ONNX model (protobuf parse failed)");
  OnnxSummary s;
  for (const onnx::OperatorSetIdProto& o : m.opset_import())
    if (o.domain().empty() || o.domain() == "ai.onnx") s.opset = o.version();
  for (const onnx::ValueInfoProto& v : m.graph().input()) s.inputs.push_back(v.name());
  for (const onnx::ValueInfoProto& v : m.graph().output()) {
    s.outputs.push_back(v.name());
    std::vector<int64_t> dims;
    for (const auto& d : v.type().tensor_type().shape().dim()) dims.push_back(d.has_dim_value() ? d.dim_value() : -1);
    s.output_dims.push_back(dims);
  }
  for (const onnx::NodeProto& n : m.graph().node()) ++s.ops[n.op_type()];
  for (const onnx::TensorProto& t : m.graph().initializer()) {
    int big = 0;
    for (int64_t d : t.dims()) big += d > 1;
    if (big >= 2) ++s.matrices[onnx::TensorProto_DataType_Name(static_cast<onnx::TensorProto_DataType>(t.data_type()))];
  }
  return s;
}

}  // namespace qd
