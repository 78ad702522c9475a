#include "runtime/ops.h"

namespace qd::rt {

namespace {

const std::vector<OpSpec>& table() {
  static const std::vector<OpSpec> ops = [] {
    std::vector<OpSpec> all;
    for (auto family : {image_ops, text_ops})
      for (OpSpec& op : family()) all.push_back(std::move(op));
    return all;
  }();
  return ops;
}

}  // namespace

const std::vector<const OpSpec*>& all_ops() {
  static const std::vector<const OpSpec*> ptrs = [] {
    std::vector<const OpSpec*> p;
    for (const OpSpec& op : table()) p.push_back(&op);
    return p;
  }();
  return ptrs;
}

const OpSpec* find_op(const std::string& name) {
  for (const OpSpec* op : all_ops())
    if (name == op->name) return op;
  return nullptr;
}

}  // namespace qd::rt
