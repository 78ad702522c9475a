#include "trainer/cli.h"

#include <CLI/CLI.hpp>
#include <c10/util/Exception.h>

#include <cstdio>
#include <iostream>

#include "common/error.h"
#include "models/registry.h"
#include "models/text_model.h"
#include "qat/module_qat.h"
#include "parallel/launch.h"
#include "trainer/experiment.h"
#include "trainer/experiment_config.h"
#include "trainer/export_command.h"
#include "trainer/inspect_command.h"

namespace qd {

namespace {

constexpr const char* kDescription =
    "qdistill: train a teacher, distill it into a small student, and prepare it for int8 edge devices.\n"
    "\n"
    "Examples:\n"
    "  qdistill train configs/fmnist_teacher.yaml\n"
    "  qdistill train configs/fmnist_teacher.yaml --set trainer.epochs=2 --set experiment.name=quick\n"
    "  qdistill train configs/fmnist_teacher.yaml --resume        # continue from checkpoints/last.pt\n"
    "  qdistill eval runs/fmnist_teacher                          # accuracy of the best checkpoint\n"
    "  qdistill eval configs/smollm2_teacher.yaml --json          # a pretrained teacher's held-out perplexity\n"
    "  qdistill embed configs/minilm_teacher.yaml --input s.txt   # one sentence embedding per line\n"
    "  qdistill export runs/fmnist_student_full                   # int8 student -> export/student.{qdm,int8.onnx}\n"
    "  qdistill keys                                              # every config key, its default and meaning\n"
    "  qdistill layers configs/fmnist_student_kd.yaml             # layer names for feature distillation\n"
    "  qdistill inspect model.gguf                                # a .gguf / .safetensors file's metadata and tensors\n"
    "  mpirun -np 4 qdistill train CONFIG --set trainer.threads=1 # data parallel (see README)\n"
    "\n"
    "Exit codes: 0 success, 2 bad input (config, data, arguments), 1 anything else.";

void print_keys() {
  size_t width = 0;
  const auto keys = list_config_keys();
  for (const auto& k : keys) width = std::max(width, k.path.size());
  std::string section;
  for (const auto& k : keys) {
    const std::string top = k.path.substr(0, k.path.find('.'));
    if (top != section) std::printf("%s%s:\n", section.empty() ? "" : "\n", top.c_str()), section = top;
    std::printf("  %-*s  %s\n  %-*s  default %s; %s\n", static_cast<int>(width), k.path.c_str(), k.help.c_str(),
                static_cast<int>(width), "", k.default_value.c_str(), k.expected.c_str());
  }
}

// One clear line, then the exit code. Under mpirun with several ranks the message names the
// rank and MPI_Abort takes every rank down, so no peer waits forever in a collective.
int fail(int code, const std::string& message) {
  const LaunchInfo li = detect_launch();
  if (li.under_mpirun && li.world_size > 1) abort_job(code, message);
  std::fprintf(stderr, "qdistill: error: %s\n", message.c_str());
  return code;
}

// The groups structured pruning may cut (prune.exclude / prune.layer_targets take their names).
void print_prune_groups(const std::vector<PruneGroup>& groups, const char* order) {
  std::printf("prunable groups (prune.exclude / prune.layer_targets names; %s):\n", order);
  for (const auto& grp : groups) {
    std::string layers, readers;
    for (const auto& l : grp.layers) layers += (layers.empty() ? "" : ", ") + l;
    for (const auto& c : grp.readers) readers += (readers.empty() ? "" : ", ") + c;
    std::printf("  %-22s %5lld %-8s produced by %s; read by %s\n", grp.name.c_str(), static_cast<long long>(grp.units),
                grp.axis.c_str(), layers.c_str(), readers.c_str());
  }
}

// A transformer's layers: what qat.layers patterns match, and how many hidden states
// distill.hidden_* may name.
int print_text_layers(const ExperimentConfig& cfg) {
  const std::shared_ptr<TextModel> model = make_text_model(cfg.model);
  const std::vector<QuantizableLayer> layers = quantizable_layers(*model);
  std::printf("%s (%lld parameters), %lld transformer layers (hidden states 0..%lld for distill.hidden_*); "
              "linear and embedding layers (qat.layers patterns match these names):\n",
              model->kind().c_str(), static_cast<long long>(count_params(*model)),
              static_cast<long long>(model->num_layers()), static_cast<long long>(model->num_layers()));
  for (const auto& l : layers)
    std::printf("  %-28s %-9s [%lld, %lld]\n", l.name.c_str(), l.kind.c_str(), static_cast<long long>(l.out),
                static_cast<long long>(l.in));
  try {
    print_prune_groups(model->prune_groups(), "forward order");
    if (!cfg.model.pretrained.empty())
      std::printf("  %-22s %5lld %-8s whole layers: prune.drop_layers (with prune.remove: start) drops those of least "
                  "block importance\n", "(depth)", static_cast<long long>(model->num_layers()), "layers");
    if (model->kind() == "bert")
      std::printf("  %-22s %5lld %-8s word-embedding rows: prune.vocabulary (with prune.remove: start) keeps the tokens "
                  "the training texts use, every special token and single character; the tokenizer follows\n",
                  "(vocabulary)", static_cast<long long>(model->tokenizer().vocab_size()), "tokens");
  } catch (const UserError&) {
    // no structured pruning for this model yet
  }
  return 0;
}

int print_layers(const TrainCommand& cmd) {
  const ExperimentConfig cfg = load_experiment_config(cmd.config_path, cmd.overrides);
  if (cfg.model.is_text()) return print_text_layers(cfg);
  auto model = make_model(cfg.model, InputSpec{});
  model->eval();
  torch::NoGradGuard g;
  model->set_capture(model->feature_names());
  model->forward(torch::zeros({1, 1, 28, 28}));
  std::printf("%s (%lld parameters), feature layers in forward order:\n", model->kind().c_str(),
              static_cast<long long>(count_params(*model)));
  for (const auto& name : model->feature_names()) {
    const auto shape = model->captured().at(name).sizes().slice(1);
    std::string s;
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? " x " : "") + std::to_string(shape[i]);
    std::printf("  %-16s [%s]\n", name.c_str(), s.c_str());
  }
  try {  // what qat.layers patterns match: the conv units, the classifier, the activation points
    auto twin = make_model(cfg.model, InputSpec{});
    std::string names;
    for (const auto& n : cnn_quantization_points(*twin)) names += (names.empty() ? "" : ", ") + n;
    std::printf("quantization points (qat.layers patterns match these names):\n  %s\n", names.c_str());
  } catch (const UserError&) {
    // no QAT for this model (mlp)
  }
  std::vector<PruneGroup> groups;
  try {
    groups = model->prune_groups();
  } catch (const UserError&) {
    return 0;  // no structured pruning for this model
  }
  print_prune_groups(groups, "model.channels order");
  return 0;
}

}  // namespace

int run_cli(int argc, char** argv) {
  CLI::App app{kDescription, "qdistill"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "qdistill 0.1.0");

  TrainCommand train;
  CLI::App* train_cmd = app.add_subcommand("train", "train a model from a YAML experiment");
  train_cmd->add_option("config", train.config_path, "experiment YAML, e.g. configs/fmnist_teacher.yaml")->required();
  train_cmd->add_option("--set", train.overrides,
                        "override a config key with a value of its type: --set trainer.epochs=5 (repeatable)")
      ->allow_extra_args(false)
      ->take_all();
  train_cmd->add_flag("--resume", train.resume, "continue from <run dir>/checkpoints/last.pt (trainer.resume=true)");

  EvalCommand eval;
  CLI::App* eval_cmd = app.add_subcommand(
      "eval", "the task's test metrics of a run's checkpoint: accuracy (images), perplexity and bits_per_byte "
              "(causal_lm), recall_at_1 and recall_at_10 (sentence_embedding)");
  eval_cmd->add_option("run_dir", eval.run_dir,
                       "run directory (e.g. runs/fmnist_teacher), or a config whose model is pretrained "
                       "(e.g. configs/smollm2_teacher.yaml); text tasks are measured on the held-out test split")
      ->required();
  eval_cmd->add_flag("--int8", eval.int8, "evaluate the int8 simulation (QAT runs)");
  eval_cmd->add_flag("--ptq", eval.ptq,
                     "a transformer config with a qat section: quantize its weights by round-to-nearest without "
                     "training (post-training quantization, the baseline QAT must beat) and evaluate that; its "
                     "activations must be dynamic (qat.activation.dynamic per_token or per_block)");
  eval_cmd->add_flag("--json", eval.json, "print one JSON object");
  eval_cmd->add_option("--checkpoint", eval.checkpoint, "which checkpoint")->check(CLI::IsMember({"best", "last"}));
  eval_cmd->add_option("--split", eval.split,
                       "text tasks: the held-out test split (reported figures), or the validation split (for choices "
                       "such as model.keep_layers, which must never be made on the test split)")
      ->check(CLI::IsMember({"test", "validation"}));
  eval_cmd->add_option("--set", eval.overrides,
                       "with a config file: override a key, e.g. --set 'model.keep_layers=[0,1,2,29]' (repeatable)")
      ->allow_extra_args(false)
      ->take_all();

  EmbedCommand embed;
  CLI::App* embed_cmd = app.add_subcommand(
      "embed", "write one L2-normalized sentence embedding per input line (space-separated floats), to compare "
               "with another implementation");
  embed_cmd->add_option("source", embed.source, "a sentence_embedding run directory, or a config with a pretrained "
                                                "bert (configs/minilm_teacher.yaml)")->required();
  embed_cmd->add_option("--input", embed.input, "text file, one sentence per line (UTF-8)")->required();
  embed_cmd->add_option("--output", embed.output, "write here instead of stdout");
  embed_cmd->add_option("--checkpoint", embed.checkpoint, "which checkpoint of a run")->check(CLI::IsMember({"best", "last"}));

  ExportCommand exp;
  CLI::App* export_cmd = app.add_subcommand(
      "export", "write a QAT run's int8 student as ONNX (QDQ) and .qdm (qdistill-run), and verify it against the "
                "simulation. CNN and BERT-class encoders: student.int8.onnx + student.fp32.onnx + student.qdm; "
                "llama decoders: student.gguf (llama.cpp) + student.qdm. Then `python3 scripts/onnx_parity.py RUN_DIR` "
                "checks an encoder's ONNX files in ONNX Runtime against the same simulation");
  export_cmd->add_option("run_dir", exp.run_dir, "run directory of a QAT run, e.g. runs/fmnist_student_full")->required();
  export_cmd->add_option("--format", exp.format, "onnx: student.int8.onnx + student.fp32.onnx (CNN, encoder); qdm: student.qdm (and a decoder's student.gguf); all (default)")
      ->check(CLI::IsMember({"onnx", "qdm", "all"}));
  export_cmd->add_option("--checkpoint", exp.checkpoint, "which checkpoint")->check(CLI::IsMember({"best", "last"}));
  export_cmd->add_flag("!--no-verify", exp.verify, "skip running the runtime next to the simulation on the test set");
  export_cmd->add_option("--simulation-logits", exp.simulation_logits,
                         "write the simulation's test-set logits here (raw float32 [N, classes]), to compare other "
                         "runtimes with");
  export_cmd->add_option("--verify-samples", exp.verify_samples,
                         "transformers: held-out sentences (bert, default 1000) or sequences of data.seq_len tokens "
                         "(llama, default 16) to verify the runtime on")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 30));

  CLI::App* keys_cmd = app.add_subcommand("keys", "list every config key with its default and meaning");

  TrainCommand layers;
  CLI::App* layers_cmd = app.add_subcommand("layers", "list a config's model layers (names for distill.hint_*, qat.layers) and prunable groups (prune.exclude, prune.layer_targets)");
  layers_cmd->add_option("config", layers.config_path, "experiment YAML")->required();
  layers_cmd->add_option("--set", layers.overrides, "override a config key (repeatable)")->take_all();

  InspectCommand inspect;
  CLI::App* inspect_cmd = app.add_subcommand(
      "inspect", "list a model file's metadata and tensors: a .gguf, a .safetensors, or a folder with model.safetensors");
  inspect_cmd->add_option("file", inspect.path, "e.g. SmolLM2-135M-Instruct.Q4_1.gguf")->required();
  inspect_cmd->add_flag("--json", inspect.json, "print one JSON object");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }

  try {
    if (train_cmd->parsed()) return run_train(train);
    if (eval_cmd->parsed()) return run_eval(eval);
    if (export_cmd->parsed()) return run_export(exp);
    if (embed_cmd->parsed()) return run_embed(embed);
    if (keys_cmd->parsed()) return print_keys(), 0;
    if (layers_cmd->parsed()) return print_layers(layers);
    if (inspect_cmd->parsed()) return run_inspect(inspect);
  } catch (const qd::Error& e) {
    return fail(exit_code_for(e), e.what());
  } catch (const c10::Error& e) {
    return fail(1, std::string("internal error: ") + e.what_without_backtrace());
  } catch (const std::exception& e) {
    return fail(1, e.what());
  }
  return 1;
}

}  // namespace qd
