#include "distill/teacher_cache.h"

#include <cstring>
#include <filesystem>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/log.h"
#include "common/progress.h"
#include "data/augment.h"
#include "distill/cache_io.h"
#include "distill/teacher.h"
#include "parallel/communicator.h"

namespace qd {

namespace {
constexpr char kMagic[4] = {'Q', 'D', 'T', 'C'};
constexpr uint32_t kVersion = 1;
using cache_io::crc_of;
using cache_io::get;
using cache_io::put;
}  // namespace

std::string teacher_cache_key(const std::string& teacher_fingerprint, const ImageDataset& train, int64_t views,
                              const AugmentConfig& a, uint64_t seed) {
  const torch::Tensor img = train.images.contiguous(), lbl = train.labels.contiguous();
  const std::string data_fp = fingerprint_bytes(img.data_ptr(), static_cast<size_t>(img.numel())) + "/" +
                              fingerprint_bytes(lbl.data_ptr(), static_cast<size_t>(lbl.numel() * 8));
  std::string key = concat("teacher=", teacher_fingerprint, ";data=", data_fp, ";views=", views);
  if (a.any()) key += concat(";crop=", a.random_crop, ";pad=", a.crop_padding, ";flip=", a.hflip, ";seed=", seed);
  return key;
}

void TeacherCache::save(const std::string& path, const std::string& key) const {
  const torch::Tensor t = table.contiguous();
  std::string out(kMagic, 4);
  put<uint32_t>(out, kVersion);
  put<uint32_t>(out, static_cast<uint32_t>(key.size()));
  out += key;
  put<uint64_t>(out, static_cast<uint64_t>(t.size(0)));
  put<uint32_t>(out, static_cast<uint32_t>(t.size(1)));
  put<uint32_t>(out, static_cast<uint32_t>(t.size(2)));
  const size_t bytes = static_cast<size_t>(t.numel()) * 2;
  put<uint32_t>(out, crc_of(t.data_ptr(), bytes));
  out.append(static_cast<const char*>(t.data_ptr()), bytes);
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  write_file_atomic(path, out);
}

bool TeacherCache::try_load(const TeacherCacheSpec& spec, int64_t samples, int64_t classes, TeacherCache& out,
                            std::string& reason) {
  if (!std::filesystem::exists(spec.path)) return reason = "no cache file yet", false;
  const std::string in = read_file(spec.path);
  size_t pos = 0;
  uint32_t version = 0, key_len = 0, v = 0, k = 0, crc = 0;
  uint64_t n = 0;
  if (in.size() < 4 || std::memcmp(in.data(), kMagic, 4) != 0) return reason = "not a teacher cache file (bad magic)", false;
  pos = 4;
  if (!get(in, pos, version) || version != kVersion) return reason = "unsupported cache version", false;
  if (!get(in, pos, key_len) || pos + key_len > in.size()) return reason = "truncated header", false;
  const std::string key = in.substr(pos, key_len);
  pos += key_len;
  if (key != spec.key) return reason = "stale: made for another teacher, dataset or augmentation", false;
  if (!get(in, pos, n) || !get(in, pos, v) || !get(in, pos, k) || !get(in, pos, crc)) return reason = "truncated header", false;
  if (static_cast<int64_t>(n) != samples || static_cast<int64_t>(v) != spec.views || static_cast<int64_t>(k) != classes)
    return reason = "shape mismatch", false;
  const size_t bytes = static_cast<size_t>(n) * v * k * 2;
  if (in.size() - pos != bytes) return reason = "truncated or oversized payload", false;
  if (crc_of(in.data() + pos, bytes) != crc) return reason = "corrupt: CRC mismatch", false;
  out.table = torch::empty({static_cast<int64_t>(n), static_cast<int64_t>(v), static_cast<int64_t>(k)}, torch::kFloat16);
  std::memcpy(out.table.data_ptr(), in.data() + pos, bytes);
  return true;
}

TeacherCache TeacherCache::load_or_build(const TeacherCacheSpec& spec, Model& teacher, const ImageDataset& train,
                                         torch::Device device, Communicator* comm) {
  const int64_t n = train.size(), classes = train.num_classes;
  TeacherCache cache;
  // Every rank decides alike: rank 0 checks the file and broadcasts the verdict.
  const int world = comm ? comm->world_size() : 1, rank = comm ? comm->rank() : 0;
  torch::Tensor ok = torch::zeros({1}, torch::kInt64);
  std::string reason;
  if (rank == 0 && try_load(spec, n, classes, cache, reason)) ok[0] = 1;
  if (world > 1) comm->broadcast(ok, 0);
  if (ok[0].item<int64_t>() == 1) {
    if (world > 1) {
      if (rank != 0) cache.table = torch::empty({n, spec.views, classes}, torch::kFloat16);
      comm->broadcast(cache.table, 0);  // CPU tensor: bytes over MPI
    }
    log_info("teacher cache: using ", spec.path);
    return cache;
  }
  cache.rebuild_reason = reason;
  log_info("teacher cache: building ", spec.path, " (", reason, "): ", n, " samples x ", spec.views, " view(s)");

  torch::NoGradGuard no_grad;
  teacher.eval();
  torch::Tensor table = torch::zeros({n, spec.views, classes}, torch::kFloat32);  // [N, V, K]
  const int64_t lo = n * rank / world, hi = n * (rank + 1) / world;
  const int64_t total = (hi - lo + spec.batch_size - 1) / spec.batch_size * spec.views;
  ProgressBar bar("teacher cache", total, rank == 0, std::max<int64_t>(1, total / 5));
  int64_t done = 0;
  for (int64_t begin = lo; begin < hi; begin += spec.batch_size) {
    const int64_t end = std::min(hi, begin + spec.batch_size);
    const Batch b = slice_batch(train, begin, end);
    for (int64_t v = 0; v < spec.views; ++v) {
      torch::Tensor x = b.inputs;
      if (spec.augment.any()) {
        std::vector<uint64_t> seeds;
        for (int64_t i = begin; i < end; ++i) seeds.push_back(augment_view_seed(spec.seed, i, v));
        x = augment_batch(x, spec.augment, seeds);
      }
      x = x.to(device);
      if (spec.channels_last) x = x.contiguous(torch::MemoryFormat::ChannelsLast);
      table.narrow(0, begin, end - begin).select(1, v).copy_(teacher.forward(x).to(torch::kFloat32).cpu());
      ++done;
      bar.update(done, done * spec.batch_size, "");
    }
  }
  bar.finish("");
  if (world > 1) all_reduce_now(*comm, table, ReduceOp::kSum);  // each row comes from exactly one rank
  cache.table = table.to(torch::kFloat16);
  cache.built = true;
  if (rank == 0) cache.save(spec.path, spec.key);
  return cache;
}

torch::Tensor TeacherCache::lookup(const std::vector<int64_t>& indices, const std::vector<int64_t>& views,
                                   torch::Device device) const {
  const int64_t b = static_cast<int64_t>(indices.size());
  torch::Tensor idx = torch::tensor(indices, torch::kInt64);
  torch::Tensor rows = table.index_select(0, idx);  // [B, V, K]
  torch::Tensor v = views.empty() ? torch::zeros({b}, torch::kInt64) : torch::tensor(views, torch::kInt64);
  torch::Tensor picked = rows.gather(1, v.view({b, 1, 1}).expand({b, 1, rows.size(2)})).squeeze(1);  // [B, K]
  return picked.to(device, torch::kFloat32);
}

}  // namespace qd
