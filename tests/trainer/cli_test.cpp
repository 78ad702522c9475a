// The qdistill executable: exit codes, one-line messages, and nothing clobbered on bad input.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "common/atomic_file.h"
#include "tests/formats/format_builders.h"
#include "tests/test_util.h"

namespace qd {
namespace {

namespace fs = std::filesystem;

using test::ProcResult;

ProcResult qdistill(const std::string& args) {
  return test::run_command(std::string(QD_BINARY_DIR) + "/qdistill " + args + " 2>&1");
}

std::string write_config(const test::TempDir& dir, const std::string& body) {
  const std::string path = dir.file("exp.yaml");
  write_file_atomic(path, "experiment:\n  name: cli\n  output_dir: " + dir.path().string() + "/runs\n" + body);
  return path;
}

const char* kTiny =
    "model: {name: mlp, width: 8, depth: 1}\n"
    "data: {train_subset: 256, test_subset: 100, batch_size: 64}\n"
    "trainer: {epochs: 1, threads: 1}\n";

TEST(Cli, HelpTeachesAndExitsZero) {
  const ProcResult r = qdistill("--help");
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.output.find("qdistill train configs/fmnist_teacher.yaml"), std::string::npos);
  EXPECT_NE(r.output.find("Exit codes"), std::string::npos);
}

TEST(Cli, BadArgumentsExitTwo) {
  EXPECT_EQ(qdistill("").code, 2);
  EXPECT_EQ(qdistill("frobnicate").code, 2);
  EXPECT_EQ(qdistill("train").code, 2);
}

TEST(Cli, ConfigErrorExitsTwoWithOneLineAndNoRunDir) {
  test::TempDir dir;
  const std::string cfg = write_config(dir, std::string(kTiny) + "optimizer:\n  lr: fast\n");
  const ProcResult r = qdistill("train " + cfg);
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_EQ(r.output, "qdistill: error: " + cfg + ":8: optimizer.lr: expected a number in (0.0, 100.0], got 'fast'\n");
  EXPECT_FALSE(fs::exists(dir.path() / "runs")) << "bad input must not leave a run directory";
}

TEST(Cli, BadOverrideExitsTwo) {
  test::TempDir dir;
  const ProcResult r = qdistill("train " + write_config(dir, kTiny) + " --set trainer.epochs=many");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.output.find("--set trainer.epochs=many: trainer.epochs: expected an integer"), std::string::npos) << r.output;
}

TEST(Cli, MissingDataExitsTwoNamingTheFolder) {
  test::TempDir dir;
  const ProcResult r = qdistill("train " + write_config(dir, kTiny) + " --set data.root=/nonexistent/fm");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.output.find("/nonexistent/fm: dataset folder not found; set data.root"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir.path() / "runs"));
}

// `qdistill layers` lists a CNN's quantization points, the names qat.layers patterns match; a
// pattern that matches none of them is a config error (exit 2) naming qat.layers.
TEST(Cli, LayersListsCnnQuantizationPointsAndATypoPatternExitsTwo) {
  test::TempDir dir;
  const std::string cfg = write_config(dir, "model: {name: resnet, width: 4, depth: 8}\n"
                                            "data: {train_subset: 64, test_subset: 64, batch_size: 32}\n"
                                            "trainer: {epochs: 1, threads: 1}\n");
  const ProcResult ls = qdistill("layers " + cfg);
  ASSERT_EQ(ls.code, 0) << ls.output;
  for (const char* name : {"input_quant, stem, stage1_block0.conv1", "stage3_block0.shortcut", "head_quant, fc\n"})
    EXPECT_NE(ls.output.find(name), std::string::npos) << name << " missing from:\n" << ls.output;
  const std::string bad = write_config(dir, "model: {name: resnet, width: 4, depth: 8}\n"
                                            "data: {train_subset: 64, test_subset: 64, batch_size: 32}\n"
                                            "trainer: {epochs: 1, threads: 1}\n"
                                            "qat:\n  enabled: true\n  layers:\n    \"stage9*\": {weight: {bits: 4}}\n");
  const ProcResult typo = qdistill("train " + bad);
  EXPECT_EQ(typo.code, 2) << typo.output;
  EXPECT_NE(typo.output.find("qat.layers"), std::string::npos) << typo.output;
  EXPECT_NE(typo.output.find("\"stage9*\" matches no layer"), std::string::npos) << typo.output;
  EXPECT_FALSE(fs::exists(dir.path() / "runs" / "cli" / "checkpoints")) << typo.output;
}

TEST(Cli, TrainWritesRunDirThenRefusesToClobberThenResumesAndEvals) {
  test::TempDir dir;
  const std::string cfg = write_config(dir, kTiny);
  ProcResult r = qdistill("train " + cfg);
  ASSERT_EQ(r.code, 0) << r.output;
  const fs::path run = dir.path() / "runs" / "cli";
  for (const char* f : {"config.resolved.yaml", "metrics.jsonl", "summary.json", "checkpoints/last.pt", "checkpoints/best.pt"})
    EXPECT_TRUE(fs::exists(run / f)) << f;
  const auto summary = nlohmann::json::parse(read_file((run / "summary.json").string()));
  for (const char* k : {"name", "role", "world_size", "epochs", "test_accuracy", "params", "nonzero_params",
                        "fp32_bytes", "train_samples_per_second", "wall_seconds"})
    EXPECT_TRUE(summary.contains(k)) << k;
  EXPECT_EQ(summary["params"], 784 * 8 + 8 + 16 + 8 * 10 + 10);

  const std::string before = read_file((run / "checkpoints/last.pt").string());
  r = qdistill("train " + cfg);
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.output.find("already holds a run"), std::string::npos) << r.output;
  EXPECT_EQ(read_file((run / "checkpoints/last.pt").string()), before) << "checkpoint untouched";

  r = qdistill("train " + cfg + " --resume --set trainer.epochs=2");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(nlohmann::json::parse(read_file((run / "summary.json").string()))["epochs"], 2);

  r = qdistill("eval " + run.string() + " --json");
  ASSERT_EQ(r.code, 0) << r.output;
  const auto ev = nlohmann::json::parse(r.output.substr(r.output.find('{')));
  EXPECT_GT(ev["test_accuracy"].template get<double>(), 30.0);

  EXPECT_EQ(qdistill("eval " + dir.path().string() + "/nope").code, 2);
}

// The divergence guard from the command line (issue 17's example: a learning rate of 90 ran to
// the end with losses of 1e13 and wrote a summary): exit code 1, one message naming the step and
// what to try, the last good checkpoint byte for byte as it was, and no summary.json.
TEST(Cli, DivergedTrainingStopsWithExitOneAndKeepsTheCheckpoint) {
  test::TempDir dir;
  const std::string cfg = write_config(dir,
                                       "model: {name: mlp, width: 8, depth: 1}\n"
                                       "data: {train_subset: 4096, test_subset: 100, batch_size: 32}\n"
                                       "trainer: {epochs: 1, threads: 1}\n");
  ProcResult r = qdistill("train " + cfg);
  ASSERT_EQ(r.code, 0) << r.output;
  const fs::path run = dir.path() / "runs" / "cli";
  const std::string before = read_file((run / "checkpoints/last.pt").string());
  r = qdistill("train " + cfg + " --resume --set trainer.epochs=2 --set optimizer.lr=90");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("training diverged at step"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("optimizer.lr"), std::string::npos) << r.output;
  EXPECT_TRUE(read_file((run / "checkpoints/last.pt").string()) == before) << "the last good checkpoint is untouched";
  EXPECT_FALSE(fs::exists(run / "summary.json")) << "a diverged run is not a finished run";

  // skip_step: the broken model diverges step after step; the run stops after 25 in a row.
  r = qdistill("train " + cfg + " --resume --set trainer.epochs=2 --set optimizer.lr=90 --set trainer.on_divergence=skip_step");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_NE(r.output.find("25th step in a row"), std::string::npos) << r.output.substr(0, 4000);
  EXPECT_NE(r.output.find("skipped (trainer.on_divergence: skip_step)"), std::string::npos);
  EXPECT_TRUE(read_file((run / "checkpoints/last.pt").string()) == before);
}

// Mixed precision from the command line; a checkpoint without the fp16 loss scale is refused
// with the reason, not as "corrupt".
TEST(Cli, Fp16TrainsAndAResumeInAnotherPrecisionSaysWhyItCannot) {
  test::TempDir dir;
  const std::string cfg = write_config(dir, kTiny);
  ProcResult r = qdistill("train " + cfg + " --set trainer.precision=bf16");
  ASSERT_EQ(r.code, 0) << r.output;
  r = qdistill("train " + cfg + " --resume --set trainer.epochs=2 --set trainer.precision=fp16");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("holds no state of 'loss_scaler'"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("config.resolved.yaml"), std::string::npos) << r.output;
  r = qdistill("train " + cfg + " --set experiment.overwrite=true --set trainer.precision=fp16");
  ASSERT_EQ(r.code, 0) << r.output;
  const fs::path run = dir.path() / "runs" / "cli";
  std::ifstream in((run / "metrics.jsonl").string());
  bool scaled = false;
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j["type"] == "epoch") scaled = j.contains("loss_scale") && j.contains("amp_skipped_steps");
  }
  EXPECT_TRUE(scaled) << "fp16 epochs record the loss scale and the skipped steps";
  r = qdistill("train " + cfg + " --set trainer.precision=fp8");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.output.find("trainer.precision"), std::string::npos) << r.output;
}

TEST(Cli, InspectListsAModelFileAndRejectsADamagedOne) {
  test::TempDir dir;
  const std::string good = fmt::test_files::valid_gguf().build();
  write_file_atomic(dir.file("m.gguf"), good);
  ProcResult r = qdistill("inspect " + dir.file("m.gguf"));
  EXPECT_EQ(r.code, 0) << r.output;
  for (const char* s : {"GGUF v3", "5 tensors", "general.architecture", "\"llama\"", "q4_1", "[3 strings"})
    EXPECT_NE(r.output.find(s), std::string::npos) << s << "\n" << r.output;
  r = qdistill("inspect " + dir.file("m.gguf") + " --json");
  ASSERT_EQ(r.code, 0) << r.output;
  const nlohmann::json j = nlohmann::json::parse(r.output);
  EXPECT_EQ(j["tensors"].size(), 5u);
  EXPECT_EQ(j["metadata"]["t.i32"], -70000);

  write_file_atomic(dir.file("cut.gguf"), good.substr(0, good.size() - 10));
  r = qdistill("inspect " + dir.file("cut.gguf"));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("cut.gguf: tensor 'q4_1'"), std::string::npos) << r.output;
  r = qdistill("inspect " + dir.file("none.safetensors"));
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("none.safetensors: cannot open"), std::string::npos) << r.output;
}

// Resuming keeps the weight grid the checkpoints were trained on (qat.target), also for a run
// written before the key existed (read as x86_vnni); a mismatch is one message, exit 2, and the
// checkpoints stay as they were.
TEST(Cli, ResumeRefusesAnotherQatTarget) {
  test::TempDir dir;
  const std::string cfg = write_config(dir,
                                       "model: {name: convnet, width: 4, depth: 2}\n"
                                       "data: {train_subset: 256, test_subset: 100, batch_size: 64}\n"
                                       "trainer: {epochs: 1, threads: 1}\n"
                                       "qat: {enabled: true}\n");
  ProcResult r = qdistill("train " + cfg);
  ASSERT_EQ(r.code, 0) << r.output;
  const fs::path run = dir.path() / "runs" / "cli";
  const std::string before = read_file((run / "checkpoints/last.pt").string());
  r = qdistill("train " + cfg + " --resume --set qat.target=x86_vnni --set trainer.epochs=2");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("trained with qat.target portable"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("--set qat.target=portable"), std::string::npos) << r.output;
  EXPECT_EQ(read_file((run / "checkpoints/last.pt").string()), before) << "checkpoint untouched";

  // A run directory from before qat.target: its resolved config has no such key.
  const fs::path resolved = run / "config.resolved.yaml";
  std::string yaml = read_file(resolved.string());
  const size_t at = yaml.find("  target: portable\n");
  ASSERT_NE(at, std::string::npos) << yaml;
  write_file_atomic(resolved.string(), yaml.erase(at, std::string("  target: portable\n").size()));
  r = qdistill("train " + cfg + " --resume --set trainer.epochs=2");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_NE(r.output.find("trained with qat.target x86_vnni"), std::string::npos) << r.output;
  r = qdistill("train " + cfg + " --resume --set trainer.epochs=2 --set qat.target=x86_vnni");
  EXPECT_EQ(r.code, 0) << r.output;
}

}  // namespace
}  // namespace qd
