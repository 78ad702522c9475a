#include "models/registry.h"

#include <functional>
#include <map>

#include "models/text_model.h"
#include "models/zoo.h"

namespace qd {

namespace {
using Factory = std::function<std::shared_ptr<Model>(const ModelConfig&, const InputSpec&)>;

const std::map<ModelKind, std::pair<std::string, Factory>>& registry() {
  static const std::map<ModelKind, std::pair<std::string, Factory>> r = {
      {ModelKind::kMlp, {"mlp", [](const ModelConfig& c, const InputSpec& i) { return std::make_shared<Mlp>(c, i); }}},
      {ModelKind::kConvNet, {"convnet", [](const ModelConfig& c, const InputSpec& i) { return std::make_shared<ConvNet>(c, i); }}},
      {ModelKind::kResNet, {"resnet", [](const ModelConfig& c, const InputSpec& i) { return std::make_shared<ResNet>(c, i); }}},
      // Transformers read tokens, not InputSpec's images; their shape comes from the config or the pretrained files.
      {ModelKind::kBert, {"bert", [](const ModelConfig& c, const InputSpec&) -> std::shared_ptr<Model> { return make_text_model(c); }}},
      {ModelKind::kLlama, {"llama", [](const ModelConfig& c, const InputSpec&) -> std::shared_ptr<Model> { return make_text_model(c); }}},
  };
  return r;
}
}  // namespace

std::shared_ptr<Model> make_model(const ModelConfig& cfg, const InputSpec& in) {
  return registry().at(cfg.name).second(cfg, in);
}

std::vector<std::string> model_names() {
  std::vector<std::string> names;
  for (const auto& [kind, entry] : registry()) names.push_back(entry.first);
  return names;
}

}  // namespace qd
