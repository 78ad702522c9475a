// Builds a zoo model from its YAML name.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "models/model.h"
#include "models/model_config.h"

namespace qd {

std::shared_ptr<Model> make_model(const ModelConfig& cfg, const InputSpec& in);
std::vector<std::string> model_names();

}  // namespace qd
