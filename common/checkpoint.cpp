#include "common/checkpoint.h"

#include <ATen/CPUGeneratorImpl.h>

#include <filesystem>
#include <mutex>
#include <set>

#include "common/atomic_file.h"
#include "common/error.h"

namespace qd {

namespace {
constexpr int64_t kFormatVersion = 1;

int64_t read_int(torch::serialize::InputArchive& a, const std::string& key) {
  c10::IValue v;
  a.read(key, v);
  return v.toInt();
}
double read_double(torch::serialize::InputArchive& a, const std::string& key) {
  c10::IValue v;
  a.read(key, v);
  return v.toDouble();
}
std::string shape_text(const torch::Tensor& t) {
  std::string s = "[";
  for (int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + "]";
}

// Module::load() would silently adopt tensors of another shape (Tensor::set_); a checkpoint
// from a different architecture must be an error that names the first tensor that differs.
void load_module_strict(torch::nn::Module& m, torch::serialize::InputArchive& a, const std::string& prefix,
                        bool weights_only) {
  torch::NoGradGuard no_grad;
  std::set<std::string> expected;
  auto load_tensor = [&](const std::string& key, torch::Tensor& dst, bool is_buffer) {
    expected.insert(key);
    torch::Tensor src;
    QD_CHECK(a.try_read(key, src, is_buffer), UserError, "model tensor ", prefix, key, " is missing");
    QD_CHECK(src.sizes() == dst.sizes(), UserError, "model tensor ", prefix, key, " has shape ", shape_text(src),
             " in the checkpoint but ", shape_text(dst), " in the model");
    dst.copy_(src);  // keeps the model's device and memory format
  };
  for (auto& p : m.named_parameters(/*recurse=*/false)) load_tensor(p.key(), p.value(), false);
  for (auto& b : m.named_buffers(/*recurse=*/false)) load_tensor(b.key(), b.value(), true);
  for (auto& c : m.named_children()) {
    expected.insert(c.key());
    torch::serialize::InputArchive sub;
    const bool found = a.try_read(c.key(), sub);
    // A module without tensors (a QuantPoint with nothing attached) may be newer than the file.
    if (!found && c.value()->parameters().empty() && c.value()->buffers().empty()) continue;
    QD_CHECK(found, UserError, "model module ", prefix, c.key(), " is missing");
    load_module_strict(*c.value(), sub, prefix + c.key() + ".", weights_only);
  }
  for (const auto& key : a.keys())
    QD_CHECK(expected.count(key) || (weights_only && key == "qat"), UserError, "the checkpoint has ", prefix, key, ", which the model lacks");
}

}  // namespace

void save_checkpoint(const std::string& path, const torch::nn::Module& model,
                     const torch::optim::Optimizer* optimizer, const CheckpointMeta& meta,
                     const std::vector<std::shared_ptr<TrainHook>>& hooks,
                     const std::function<void()>& before_commit) {
  torch::serialize::OutputArchive archive;
  archive.write("format_version", c10::IValue(kFormatVersion));
  archive.write("epoch", c10::IValue(meta.epoch));
  archive.write("global_step", c10::IValue(meta.global_step));
  archive.write("test_accuracy", c10::IValue(meta.test_accuracy));
  archive.write("best_accuracy", c10::IValue(meta.best_accuracy));
  archive.write("step_in_epoch", c10::IValue(meta.step_in_epoch));
  archive.write("epoch_sums", torch::tensor(meta.epoch_sums, torch::kFloat64), /*is_buffer=*/true);

  torch::serialize::OutputArchive model_archive;
  model.save(model_archive);
  archive.write("model", model_archive);
  if (optimizer != nullptr) {
    torch::serialize::OutputArchive opt_archive;
    optimizer->save(opt_archive);
    archive.write("optimizer", opt_archive);
  }
  {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    archive.write("rng_cpu", gen.get_state(), /*is_buffer=*/true);
  }
  for (const auto& h : hooks) {
    torch::serialize::OutputArchive hook_archive;
    h->save_state(hook_archive);
    archive.write("hook." + h->name(), hook_archive);
  }

  AtomicFile file(path);
  archive.save_to([&file](const void* data, size_t size) -> size_t {
    file.write(data, size);
    return size;
  });
  if (before_commit) before_commit();
  file.commit();
}

CheckpointMeta load_checkpoint(const std::string& path, torch::nn::Module& model,
                               torch::optim::Optimizer* optimizer,
                               const std::vector<std::shared_ptr<TrainHook>>& hooks, bool weights_only) {
  QD_CHECK(std::filesystem::is_regular_file(path), UserError, path, ": checkpoint not found");
  const std::string bytes = read_file(path);
  return load_checkpoint_bytes(bytes.data(), bytes.size(), path, model, optimizer, hooks, weights_only);
}

CheckpointMeta load_checkpoint_bytes(const char* data, size_t size, const std::string& path,
                                     torch::nn::Module& model, torch::optim::Optimizer* optimizer,
                                     const std::vector<std::shared_ptr<TrainHook>>& hooks, bool weights_only) {
  CheckpointMeta meta;
  std::optional<torch::Device> device;
  for (const auto& p : model.parameters()) {
    device = p.device();
    break;
  }
  try {
    torch::serialize::InputArchive archive;
    archive.load_from(data, size, device);
    const int64_t version = read_int(archive, "format_version");
    QD_CHECK(version == kFormatVersion, UserError, "checkpoint format version ", version,
             " is not supported (expected ", kFormatVersion, ")");
    meta.epoch = read_int(archive, "epoch");
    meta.global_step = read_int(archive, "global_step");
    meta.test_accuracy = read_double(archive, "test_accuracy");
    meta.best_accuracy = read_double(archive, "best_accuracy");
    c10::IValue step;  // absent in checkpoints written before mid-epoch checkpoints existed
    if (archive.try_read("step_in_epoch", step)) meta.step_in_epoch = step.toInt();
    torch::Tensor sums;
    if (archive.try_read("epoch_sums", sums, /*is_buffer=*/true) && sums.numel() > 0) {
      sums = sums.to(torch::kCPU, torch::kFloat64).contiguous();
      meta.epoch_sums.assign(sums.data_ptr<double>(), sums.data_ptr<double>() + sums.numel());
    }
    torch::serialize::InputArchive model_archive;
    archive.read("model", model_archive);
    load_module_strict(model, model_archive, "", weights_only);
    if (optimizer != nullptr) {
      torch::serialize::InputArchive opt_archive;
      archive.read("optimizer", opt_archive);
      optimizer->load(opt_archive);
    }
    torch::Tensor rng;
    archive.read("rng_cpu", rng, /*is_buffer=*/true);
    {
      auto gen = at::detail::getDefaultCPUGenerator();
      std::lock_guard<std::mutex> lock(gen.mutex());
      gen.set_state(rng.cpu());
    }
    for (const auto& h : hooks) {
      torch::serialize::InputArchive hook_archive;
      QD_CHECK(archive.try_read("hook." + h->name(), hook_archive), Error, "it holds no state of '", h->name(),
               "': it was written by a run with other settings (trainer.precision, distill, qat or prune); resume with "
               "the settings of the run's config.resolved.yaml");
      h->load_state(hook_archive);
    }
  } catch (const qd::Error& e) {
    throw UserError(detail::concat(path, ": cannot load checkpoint: ", e.what()));
  } catch (const std::exception& e) {
    std::string what = e.what();
    what = what.substr(0, what.find('\n'));
    throw UserError(detail::concat(path, ": cannot load checkpoint (", what,
                                   "); it is corrupt or from a different model/config"));
  }
  return meta;
}

}  // namespace qd
