// Config parsing: every malformed input gives one message with file, line, key path and the
// expectation; overrides take the type of the key they set.
#include <gtest/gtest.h>

#include <filesystem>
#include <cctype>
#include <fstream>

#include "common/config.h"
#include "trainer/experiment_config.h"

namespace qd {
namespace {

const char* kValid = R"(experiment:
  name: t
model:
  name: convnet
  width: 8
trainer:
  epochs: 3
)";

// Parses `yaml` as "x.yaml" and returns the ConfigError message ("" if it parsed).
std::string error_of(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  try {
    parse_experiment_config(yaml, "x.yaml", overrides);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

struct Malformed {
  const char* what;
  std::string yaml;
  std::string location;  // "x.yaml:LINE"
  std::string key;
  std::string fragment;
};

class MalformedConfig : public ::testing::TestWithParam<Malformed> {};

TEST_P(MalformedConfig, NamesFileLineKeyAndExpectation) {
  const Malformed& m = GetParam();
  const std::string msg = error_of(m.yaml);
  ASSERT_FALSE(msg.empty()) << m.what << ": expected a ConfigError";
  EXPECT_EQ(msg.rfind(m.location + ": ", 0), 0u) << m.what << ": " << msg;
  EXPECT_NE(msg.find(": " + m.key + ": "), std::string::npos) << m.what << ": " << msg;
  EXPECT_NE(msg.find(m.fragment), std::string::npos) << m.what << ": " << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << "one line: " << msg;
}

const std::string kHead = "experiment:\n  name: t\nmodel:\n  name: convnet\n";  // lines 1-4

INSTANTIATE_TEST_SUITE_P(
    Cases, MalformedConfig,
    ::testing::Values(
        Malformed{"unknown key", kHead + "trainer:\n  epoch: 3\n", "x.yaml:6", "trainer.epoch",
                  "unknown key (did you mean 'epochs'?)"},
        Malformed{"unknown section", kHead + "trainr:\n  epochs: 3\n", "x.yaml:5", "trainr",
                  "did you mean 'trainer'?"},
        Malformed{"int gets text", kHead + "trainer:\n  epochs: abc\n", "x.yaml:6", "trainer.epochs",
                  "expected an integer in [1, 100000], got 'abc'"},
        Malformed{"int gets float", kHead + "trainer:\n  epochs: 2.5\n", "x.yaml:6", "trainer.epochs",
                  "expected an integer"},
        Malformed{"int out of range", kHead + "trainer:\n  epochs: 0\n", "x.yaml:6", "trainer.epochs",
                  "in [1, 100000], got '0'"},
        Malformed{"double out of range", kHead + "optimizer:\n  lr: -0.1\n", "x.yaml:6", "optimizer.lr",
                  "expected a number in (0.0, 100.0]"},
        Malformed{"double gets text", kHead + "optimizer:\n  momentum: fast\n", "x.yaml:6", "optimizer.momentum",
                  "expected a number"},
        Malformed{"bool gets text", kHead + "trainer:\n  resume: maybe\n", "x.yaml:6", "trainer.resume",
                  "expected true or false, got 'maybe'"},
        Malformed{"bad enum", kHead + "optimizer:\n  name: adam\n", "x.yaml:6", "optimizer.name",
                  "expected one of: sgd, adamw, got 'adam'"},
        Malformed{"missing required key", "experiment:\n  seed: 1\nmodel:\n  name: mlp\n", "x.yaml:2",
                  "experiment.name", "missing required key; expected a string"},
        Malformed{"missing required section", "experiment:\n  name: t\n", "x.yaml:1", "model",
                  "missing required section"},
        Malformed{"section is a scalar", kHead + "trainer: 5\n", "x.yaml:5", "trainer",
                  "expected a mapping of keys, got '5'"},
        Malformed{"list expected", kHead + "schedule:\n  name: step\n  milestones: 10\n", "x.yaml:7",
                  "schedule.milestones", "expected a list of integers"},
        Malformed{"empty value", kHead + "trainer:\n  epochs:\n", "x.yaml:6", "trainer.epochs",
                  "got nothing (empty value)"},
        Malformed{"duplicate key", kHead + "trainer:\n  epochs: 3\n  epochs: 4\n", "x.yaml:7",
                  "trainer.epochs", "duplicate key"},
        Malformed{"half-open range", kHead + "  dropout: 1.0\n", "x.yaml:5", "model.dropout",
                  "expected a number in [0.0, 1.0), got '1.0'"},
        Malformed{"cross-field rule", kHead + "optimizer:\n  momentum: 0\n  nesterov: true\n", "x.yaml:7",
                  "optimizer.nesterov", "Nesterov momentum needs optimizer.momentum > 0"},
        Malformed{"resnet depth rule", "experiment:\n  name: t\nmodel:\n  name: resnet\n  depth: 9\n", "x.yaml:5",
                  "model.depth", "6n+2"},
        Malformed{"step schedule without milestones", kHead + "schedule:\n  name: step\n", "x.yaml:6",
                  "schedule.milestones", "needs milestones"},
        Malformed{"negative batch", kHead + "data:\n  batch_size: -5\n", "x.yaml:6", "data.batch_size",
                  "in [1, 65536], got '-5'"},
        Malformed{"list element wrong type", kHead + "data:\n  mean: [0.5, x]\n", "x.yaml:6", "data.mean",
                  "expected a list of numbers"},
        Malformed{"nested unknown key", kHead + "data:\n  augment:\n    rotate: true\n", "x.yaml:7",
                  "data.augment.rotate", "valid keys in data.augment: random_crop, crop_padding, hflip"},
        Malformed{"top level is a list", "- a\n- b\n", "x.yaml:1", "(top level)", "expected a mapping of sections"}));

// The YAML syntax case has no key path; its own test checks the one-line shape.
TEST(Config, SyntaxErrorNamesLine) {
  const std::string msg = error_of("experiment:\n  name: t\n model: [\n");
  EXPECT_EQ(msg.rfind("x.yaml:3: YAML syntax error", 0), 0u) << msg;
}

TEST(Config, ValidParsesWithDefaults) {
  const ExperimentConfig c = parse_experiment_config(kValid, "x.yaml");
  EXPECT_EQ(c.experiment.name, "t");
  EXPECT_EQ(c.model.name, ModelKind::kConvNet);
  EXPECT_EQ(c.model.width, 8);
  EXPECT_EQ(c.trainer.epochs, 3);
  EXPECT_EQ(c.data.batch_size, 128);  // default
  EXPECT_EQ(c.optimizer.name, OptimizerKind::kSgd);
}

TEST(Config, OverridesTakeTheTypeOfTheKey) {
  const ExperimentConfig c = parse_experiment_config(
      kValid, "x.yaml",
      {"trainer.epochs=7", "optimizer.lr=0.05", "trainer.resume=true", "optimizer.name=adamw",
       "schedule.milestones=[3, 6]", "experiment.name=other", "data.augment.hflip=true"});
  EXPECT_EQ(c.trainer.epochs, 7);
  EXPECT_DOUBLE_EQ(c.optimizer.lr, 0.05);
  EXPECT_TRUE(c.trainer.resume);
  EXPECT_EQ(c.optimizer.name, OptimizerKind::kAdamW);
  EXPECT_EQ(c.schedule.milestones, (std::vector<int>{3, 6}));
  EXPECT_EQ(c.experiment.name, "other");
  EXPECT_TRUE(c.data.augment.hflip);  // creates the missing sections
}

TEST(Config, OverrideErrorsNameTheOverride) {
  std::string msg = error_of(kValid, {"trainer.epochs=abc"});
  EXPECT_EQ(msg, "--set trainer.epochs=abc: trainer.epochs: expected an integer in [1, 100000], got 'abc'");
  msg = error_of(kValid, {"trainer.epoch=3"});
  EXPECT_NE(msg.find("--set trainer.epoch=3: trainer.epoch: unknown key (did you mean 'epochs'?)"), std::string::npos)
      << msg;
  msg = error_of(kValid, {"trainer.epochs"});
  EXPECT_NE(msg.find("expected key.path=value"), std::string::npos) << msg;
  msg = error_of(kValid, {"trainer..epochs=3"});
  EXPECT_NE(msg.find("empty key segment"), std::string::npos) << msg;
  msg = error_of(kValid, {"trainer.epochs.x=3"});
  EXPECT_NE(msg.find("trainer.epochs holds a value, not a section"), std::string::npos) << msg;
  msg = error_of(kValid, {"trainer.resume=1"});
  EXPECT_NE(msg.find("expected true or false, got '1'"), std::string::npos) << msg;
}

TEST(Config, LaterOverrideWins) {
  const ExperimentConfig c = parse_experiment_config(kValid, "x.yaml", {"trainer.epochs=4", "trainer.epochs=5"});
  EXPECT_EQ(c.trainer.epochs, 5);
}

TEST(Config, ResolvedConfigRoundTrips) {
  const ExperimentConfig a = parse_experiment_config(
      kValid, "x.yaml", {"optimizer.lr=0.1", "optimizer.weight_decay=5e-4", "schedule.milestones=[2,4]", "data.mean=[0.3]", "data.std=[0.25]"});
  const std::string yaml = to_yaml(a);
  const ExperimentConfig b = parse_experiment_config(yaml, "resolved.yaml");
  EXPECT_EQ(to_yaml(b), yaml);
  EXPECT_EQ(b.optimizer.lr, 0.1);  // exact: shortest round-trip formatting
  EXPECT_EQ(b.optimizer.weight_decay, 5e-4);
  EXPECT_EQ(b.schedule.milestones, (std::vector<int>{2, 4}));
  EXPECT_EQ(b.data.mean, (std::vector<double>{0.3}));
}

TEST(Config, MissingFileIsAConfigError) {
  try {
    load_experiment_config("/nonexistent/x.yaml");
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/x.yaml: cannot open config file"), std::string::npos);
  }
}

TEST(Config, EveryKeyIsListedWithHelp) {
  const auto keys = list_config_keys();
  ASSERT_GT(keys.size(), 30u);
  bool saw_epochs = false;
  for (const auto& k : keys) {
    EXPECT_FALSE(k.help.empty()) << k.path;
    if (k.path == "trainer.epochs") {
      saw_epochs = true;
      EXPECT_EQ(k.default_value, "10");
    }
  }
  EXPECT_TRUE(saw_epochs);
}

TEST(Config, ShippedConfigsParse) {
  for (const auto& entry : std::filesystem::directory_iterator(std::string(QD_SOURCE_DIR) + "/configs")) {
    if (entry.path().extension() != ".yaml") continue;
    EXPECT_NO_THROW(load_experiment_config(entry.path().string())) << entry.path();
  }
}

}  // namespace
}  // namespace qd
