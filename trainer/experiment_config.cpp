#include "trainer/experiment_config.h"

#include <filesystem>

namespace qd {

namespace {
// The task, the data and the model must fit together.
void check_task(const ExperimentConfig& c) {
  switch (c.task.name) {
    case TaskKind::kImageClassification:
      if (c.data.is_text())
        c.fail("data.dataset", "is a text corpus but task.name is image_classification; set task.name: causal_lm "
                               "(fortunes) or sentence_embedding (wordnet)");
      if (c.model.is_text())
        c.fail("model.name", "bert and llama read text: set task.name: sentence_embedding (bert) or causal_lm (llama)");
      if (c.distill.feature_kd())
        c.fail(c.distill.hidden_student.empty() ? "distill.attention_student" : "distill.hidden_student",
               "hidden-state and attention-relation KD are for bert/llama; CNNs use distill.hint_student");
      return;
    case TaskKind::kCausalLm:
      if (c.data.dataset != DatasetKind::kFortunes) c.fail("data.dataset", "task causal_lm reads the fortunes corpus: data.dataset: fortunes");
      if (c.model.name != ModelKind::kLlama) c.fail("model.name", "task causal_lm trains a decoder: model.name: llama");
      break;
    case TaskKind::kSentenceEmbedding:
      if (c.data.dataset != DatasetKind::kWordNet) c.fail("data.dataset", "task sentence_embedding reads WordNet: data.dataset: wordnet");
      if (c.model.name != ModelKind::kBert) c.fail("model.name", "task sentence_embedding trains an encoder: model.name: bert");
      break;
  }
  if (c.distill.enabled() && c.task.name == TaskKind::kSentenceEmbedding && !c.distill.feature_kd())
    c.fail("distill.teacher", "a sentence_embedding student learns its teacher's embeddings through task.teacher; the "
                              "distill section adds hidden-state KD (distill.hidden_student / hidden_teacher) or "
                              "attention-relation KD (distill.attention_student / attention_teacher): set one");
  if (c.distill.enabled() && !c.distill.hint_student.empty())
    c.fail("distill.hint_student", "hint KD names CNN layers; transformers use distill.hidden_student / hidden_teacher "
                                   "(hidden-state numbers, 0 = embeddings)");
}

ExperimentConfig read(ConfigDoc doc, const std::vector<std::string>& overrides) {
  for (const auto& o : overrides) doc.set(o);
  ExperimentConfig cfg;
  ConfigReader::read(doc, cfg);
  cfg.locations = doc.locations();
  check_task(cfg);
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
