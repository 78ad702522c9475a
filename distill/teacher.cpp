#include "distill/teacher.h"

#include <ATen/CPUGeneratorImpl.h>
#include <zlib.h>

#include <cstdio>
#include <filesystem>

#include "common/atomic_file.h"
#include "common/checkpoint.h"
#include "common/config.h"
#include "common/error.h"
#include "models/registry.h"

namespace qd {

namespace fs = std::filesystem;

std::string fingerprint_bytes(const void* data, size_t size) {
  const auto* p = static_cast<const Bytef*>(data);
  uLong crc = crc32(0L, Z_NULL, 0), adl = adler32(0L, Z_NULL, 0);
  for (size_t off = 0; off < size; off += (1u << 30)) {
    const uInt n = static_cast<uInt>(std::min<size_t>(size - off, 1u << 30));
    crc = crc32(crc, p + off, n);
    adl = adler32(adl, p + off, n);
  }
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%08lx%08lx-%zx", crc, adl, size);
  return buf;
}

Teacher load_teacher(const DistillConfig& cfg, const InputSpec& in, DatasetKind student_dataset, torch::Device device,
                     bool channels_last) {
  Teacher t;
  const fs::path given = cfg.teacher;
  if (fs::is_directory(given)) {
    t.run_dir = given.string();
    t.checkpoint = (given / "checkpoints" / (cfg.teacher_checkpoint + ".pt")).string();
  } else if (fs::is_regular_file(given)) {
    t.checkpoint = given.string();
    t.run_dir = given.parent_path().parent_path().string();  // <run>/checkpoints/x.pt
  } else {
    throw UserError(concat(cfg.teacher,
                           ": no such teacher run directory or checkpoint; train the teacher first "
                           "(qdistill train configs/fmnist_teacher.yaml) or fix the path"));
  }
  const fs::path config_path = fs::path(t.run_dir) / "config.resolved.yaml";
  QD_CHECK(fs::is_regular_file(config_path), UserError, config_path.string(),
           " not found; the teacher must be a run directory written by `qdistill train`");
  QD_CHECK(fs::is_regular_file(t.checkpoint), UserError, t.checkpoint,
           " not found; has the teacher run finished an epoch?");

  // Only the teacher's `model` section matters (and which dataset it learned).
  const ConfigDoc doc = ConfigDoc::from_file(config_path.string());
  ModelConfig mc;
  ConfigReader model_reader(doc, doc.root()["model"], "model");
  mc.visit(model_reader);
  model_reader.finish();
  DataConfig teacher_data;
  ConfigReader data_reader(doc, doc.root()["data"], "data");
  teacher_data.visit(data_reader);
  QD_CHECK(teacher_data.dataset == student_dataset, UserError, t.run_dir,
           " was trained on another dataset than this student's data.dataset; distill from a teacher of the same data");

  // Building and loading the teacher must not disturb the student's random stream (the
  // checkpoint also carries the teacher run's RNG state).
  auto gen = at::detail::getDefaultCPUGenerator();
  const torch::Tensor rng_state = gen.get_state();
  t.model = make_model(mc, in);
  const std::string bytes = read_file(t.checkpoint);
  load_checkpoint_bytes(bytes.data(), bytes.size(), t.checkpoint, *t.model, nullptr, {});
  gen.set_state(rng_state);
  t.fingerprint = fingerprint_bytes(bytes.data(), bytes.size());
  t.model->to(device);
  if (channels_last) to_channels_last(*t.model);
  t.model->eval();
  for (auto& p : t.model->parameters()) p.set_requires_grad(false);
  return t;
}

}  // namespace qd
