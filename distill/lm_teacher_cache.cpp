#include "distill/lm_teacher_cache.h"

#include <cstring>
#include <filesystem>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/log.h"
#include "common/progress.h"
#include "distill/cache_io.h"
#include "distill/teacher.h"
#include "models/text_model.h"
#include "parallel/communicator.h"

namespace qd {

namespace {
constexpr char kMagic[4] = {'Q', 'D', 'L', 'C'};
constexpr uint32_t kVersion = 1;

// Payload sizes in bytes: ids int32, logits fp16 ([N, L, k] each), rest float32 ([N, L]).
size_t payload_bytes(uint64_t n, uint64_t len, uint64_t k) { return n * len * k * (4 + 2) + n * len * 4; }
}  // namespace

std::string lm_cache_key(const std::string& teacher_fingerprint, const torch::Tensor& sequences, int64_t top_k,
                         double temperature) {
  const torch::Tensor s = sequences.to(torch::kInt64).contiguous();
  return concat("teacher=", teacher_fingerprint, ";sequences=",
                fingerprint_bytes(s.data_ptr(), static_cast<size_t>(s.numel()) * 8), ";shape=", s.size(0), "x",
                s.size(1), ";top_k=", top_k, ";T=", temperature);
}

void LmTeacherCache::save(const std::string& path, const std::string& key) const {
  const torch::Tensor i = ids.contiguous(), l = logits.contiguous(), r = rest_lse.contiguous();
  const size_t ib = static_cast<size_t>(i.numel()) * 4, lb = static_cast<size_t>(l.numel()) * 2,
               rb = static_cast<size_t>(r.numel()) * 4;
  std::string payload;
  payload.reserve(ib + lb + rb);
  payload.append(static_cast<const char*>(i.data_ptr()), ib);
  payload.append(static_cast<const char*>(l.data_ptr()), lb);
  payload.append(static_cast<const char*>(r.data_ptr()), rb);
  std::string out(kMagic, 4);
  cache_io::put<uint32_t>(out, kVersion);
  cache_io::put<uint32_t>(out, static_cast<uint32_t>(key.size()));
  out += key;
  cache_io::put<uint64_t>(out, static_cast<uint64_t>(i.size(0)));
  cache_io::put<uint32_t>(out, static_cast<uint32_t>(i.size(1)));
  cache_io::put<uint32_t>(out, static_cast<uint32_t>(i.size(2)));
  cache_io::put<double>(out, temperature);
  cache_io::put<uint32_t>(out, cache_io::crc_of(payload.data(), payload.size()));
  out += payload;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  write_file_atomic(path, out);
}

bool LmTeacherCache::try_load(const LmCacheSpec& spec, int64_t sequences, int64_t length, LmTeacherCache& out,
                              std::string& reason) {
  if (!std::filesystem::exists(spec.path)) return reason = "no cache file yet", false;
  const std::string in = read_file(spec.path);
  size_t pos = 4;
  uint32_t version = 0, key_len = 0, len = 0, k = 0, crc = 0;
  uint64_t n = 0;
  double t = 0.0;
  if (in.size() < 4 || std::memcmp(in.data(), kMagic, 4) != 0) return reason = "not a language-model teacher cache (bad magic)", false;
  if (!cache_io::get(in, pos, version) || version != kVersion) return reason = "unsupported cache version", false;
  if (!cache_io::get(in, pos, key_len) || key_len > in.size() - pos) return reason = "truncated header", false;
  if (in.compare(pos, key_len, spec.key) != 0 || key_len != spec.key.size())
    return reason = "stale: made for another teacher, corpus, top_k or temperature", false;
  pos += key_len;
  if (!cache_io::get(in, pos, n) || !cache_io::get(in, pos, len) || !cache_io::get(in, pos, k) || !cache_io::get(in, pos, t) ||
      !cache_io::get(in, pos, crc))
    return reason = "truncated header", false;
  if (static_cast<int64_t>(n) != sequences || static_cast<int64_t>(len) != length || static_cast<int64_t>(k) != spec.top_k ||
      t != spec.temperature)
    return reason = "shape mismatch", false;
  const size_t bytes = payload_bytes(n, len, k);
  if (in.size() - pos != bytes) return reason = "truncated or oversized payload", false;
  if (cache_io::crc_of(in.data() + pos, bytes) != crc) return reason = "corrupt: CRC mismatch", false;
  const int64_t ni = static_cast<int64_t>(n), li = static_cast<int64_t>(len), ki = static_cast<int64_t>(k);
  out.ids = torch::empty({ni, li, ki}, torch::kInt32);
  out.logits = torch::empty({ni, li, ki}, torch::kFloat16);
  out.rest_lse = torch::empty({ni, li}, torch::kFloat32);
  for (torch::Tensor* dst : {&out.ids, &out.logits, &out.rest_lse}) {
    const size_t b = static_cast<size_t>(dst->numel() * dst->element_size());
    std::memcpy(dst->data_ptr(), in.data() + pos, b);
    pos += b;
  }
  out.temperature = t;
  return true;
}

LmTeacherCache LmTeacherCache::load_or_build(const LmCacheSpec& spec, TextModel& teacher, const torch::Tensor& sequences,
                                             torch::Device device, Communicator* comm) {
  const int64_t n = sequences.size(0), len = sequences.size(1), k = spec.top_k;
  LmTeacherCache cache;
  const int world = comm ? comm->world_size() : 1, rank = comm ? comm->rank() : 0;
  // Rank 0 judges the file; every rank follows its verdict and receives its tables.
  std::string reason;
  torch::Tensor usable = torch::tensor({static_cast<int64_t>(rank == 0 && try_load(spec, n, len, cache, reason))});
  if (world > 1) comm->broadcast(usable, 0);
  if (usable.item<int64_t>() == 1) {
    if (world > 1) {
      if (rank != 0) {
        cache.ids = torch::empty({n, len, k}, torch::kInt32);
        cache.logits = torch::empty({n, len, k}, torch::kFloat16);
        cache.rest_lse = torch::empty({n, len}, torch::kFloat32);
        cache.temperature = spec.temperature;
      }
      for (torch::Tensor* t : {&cache.ids, &cache.logits, &cache.rest_lse}) comm->broadcast(*t, 0);
    }
    log_info("language-model teacher cache: using ", spec.path);
    return cache;
  }
  cache.rebuild_reason = reason;
  log_info("language-model teacher cache: building ", spec.path, " (", reason, "): ", n, " sequences x ", len,
           " tokens, top ", k, " logits at T = ", spec.temperature);
  torch::NoGradGuard no_grad;
  teacher.eval();
  // Assembled in float32 (ids < 2^24 are exact) so that one summing all-reduce joins the shards.
  torch::Tensor ids = torch::zeros({n, len, k}), logits = torch::zeros({n, len, k}), rest = torch::zeros({n, len});
  const int64_t lo = n * rank / world, hi = n * (rank + 1) / world;
  ProgressBar bar("teacher top-k", hi - lo, spec.progress && rank == 0, std::max<int64_t>(1, (hi - lo) / spec.batch_size / 5));
  for (int64_t b0 = lo; b0 < hi; b0 += spec.batch_size) {
    const int64_t b = std::min(spec.batch_size, hi - b0);
    const torch::Tensor x = sequences.narrow(0, b0, b).to(device, torch::kInt64);
    const torch::Tensor z = teacher.forward_text(x, torch::ones_like(x)).to(torch::kFloat32);  // [b, L, V]
    QD_CHECK(z.size(-1) < (int64_t{1} << 24) && k <= z.size(-1), Error, "language-model teacher cache: top_k ", k,
             " for a vocabulary of ", z.size(-1));
    const TopKTarget t = make_topk_target(z.reshape({b * len, z.size(-1)}), k, spec.temperature);
    ids.narrow(0, b0, b).copy_(t.ids.view({b, len, k}).to(torch::kFloat32).cpu());
    logits.narrow(0, b0, b).copy_(t.logits.view({b, len, k}).cpu());
    rest.narrow(0, b0, b).copy_(t.rest_lse.view({b, len}).cpu());
    bar.update(b0 + b - lo, (b0 + b - lo) * len, "");
  }
  bar.finish("");
  if (world > 1)
    for (torch::Tensor* t : {&ids, &logits, &rest}) all_reduce_now(*comm, *t, ReduceOp::kSum);  // one rank per row
  cache.ids = ids.to(torch::kInt32);
  cache.logits = logits.to(torch::kFloat16);
  cache.rest_lse = rest;
  cache.temperature = spec.temperature;
  cache.built = true;
  if (rank == 0) cache.save(spec.path, spec.key);
  return cache;
}

TopKTarget LmTeacherCache::lookup(const std::vector<int64_t>& indices, torch::Device device) const {
  const torch::Tensor idx = torch::tensor(indices, torch::kInt64);
  const int64_t rows = static_cast<int64_t>(indices.size()) * ids.size(1), k = ids.size(2);
  TopKTarget t;
  t.ids = ids.index_select(0, idx).reshape({rows, k}).to(device, torch::kInt64);
  t.logits = logits.index_select(0, idx).reshape({rows, k}).to(device, torch::kFloat32);
  t.rest_lse = rest_lse.index_select(0, idx).reshape({rows}).to(device);
  t.temperature = temperature;
  return t;
}

}  // namespace qd
