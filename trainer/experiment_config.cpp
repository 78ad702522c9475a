#include "trainer/experiment_config.h"

#include <filesystem>

namespace qd {

namespace {
ExperimentConfig read(ConfigDoc doc, const std::vector<std::string>& overrides) {
  for (const auto& o : overrides) doc.set(o);
  ExperimentConfig cfg;
  ConfigReader::read(doc, cfg);
  cfg.locations = doc.locations();
  return cfg;
}
}  // namespace

void ExperimentConfig::fail(const std::string& key, const std::string& message) const {
  auto it = locations.find(key);
  throw_config_error(it != locations.end() ? it->second : "config", key, message);
}

std::string ExperimentConfig::run_dir() const {
  return (std::filesystem::path(experiment.output_dir) / experiment.name).string();
}

ExperimentConfig load_experiment_config(const std::string& path, const std::vector<std::string>& overrides) {
  return read(ConfigDoc::from_file(path), overrides);
}

ExperimentConfig load_run_config(const std::string& path) {
  ConfigDoc doc = ConfigDoc::from_file(path);
  const YAML::Node qat = doc.root()["qat"];
  if (qat.IsMap() && !qat["target"]) doc.set("qat.target=x86_vnni");
  return read(std::move(doc), {});
}

ExperimentConfig parse_experiment_config(const std::string& yaml, const std::string& name,
                                         const std::vector<std::string>& overrides) {
  return read(ConfigDoc::from_string(yaml, name), overrides);
}

std::string to_yaml(ExperimentConfig cfg) { return ConfigWriter::write(cfg); }

std::vector<ConfigKeyDoc> list_config_keys() {
  ExperimentConfig defaults;
  ConfigLister lister;
  defaults.visit(lister);
  return lister.keys();
}

}  // namespace qd
