// qdistill-run: inference of an exported student (.qdm) without LibTorch or Python:
//   images (--idx): integer-only int8 inference on IDX images, accuracy (given labels), latency;
//   sentence embeddings (--embed FILE): one L2-normalised embedding per input line, the
//     WordPiece tokenizer inside the file;
//   generation (--prompt TEXT): greedy or sampled decoding with a KV cache, the byte-level BPE
//     tokenizer inside the file, tokens per second for the prompt and for generation.
// Links the runtime, the tokenizers (qd_text: utf8proc, nlohmann-json), zlib (for .gz files) and
// the header-only CLI11.
#include <CLI/CLI.hpp>
#include <sys/resource.h>
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>
#include <random>

#include "common/error.h"
#include "runtime/executor.h"
#include "runtime/interpreter.h"
#include "runtime/qdm.h"
#include "runtime/thread_pool.h"
#include "text/bpe.h"
#include "text/wordpiece.h"

namespace {

struct InputError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// An IDX file (raw or gzip, zlib reads both): big-endian magic 0x000008DD (8: unsigned bytes,
// DD: dimensions), the dimensions, then the bytes.
struct Idx {
  std::vector<int64_t> dims;
  std::vector<uint8_t> data;
};

Idx read_idx(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (!f) throw InputError(path + ": cannot open (" + std::strerror(errno) + ")");
  auto read = [&](void* dst, size_t n, const char* what) {
    const int got = gzread(f, dst, static_cast<unsigned>(n));
    if (got != static_cast<int>(n)) {
      gzclose(f);
      throw InputError(path + ": truncated IDX file (reading " + what + "); expected an IDX file such as "
                       "t10k-images-idx3-ubyte.gz");
    }
  };
  unsigned char magic[4];
  read(magic, 4, "the magic number");
  if (magic[0] != 0 || magic[1] != 0 || magic[2] != 0x08 || magic[3] < 1 || magic[3] > 4) {
    gzclose(f);
    throw InputError(path + ": not an IDX file of unsigned bytes (magic must be 00 00 08 0N)");
  }
  Idx idx;
  int64_t total = 1;
  for (int d = 0; d < magic[3]; ++d) {
    unsigned char b[4];
    read(b, 4, "the dimensions");
    const int64_t v = (int64_t{b[0]} << 24) | (int64_t{b[1]} << 16) | (int64_t{b[2]} << 8) | b[3];
    if (v <= 0 || v > (1 << 24)) {
      gzclose(f);
      throw InputError(path + ": dimension " + std::to_string(d) + " is " + std::to_string(v));
    }
    idx.dims.push_back(v);
    total *= v;
    if (total > (int64_t{1} << 31)) {
      gzclose(f);
      throw InputError(path + ": more than 2 GiB of data");
    }
  }
  idx.data.resize(static_cast<size_t>(total));
  read(idx.data.data(), idx.data.size(), "the data");
  gzclose(f);
  return idx;
}

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0.0;
  const size_t k = std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())));
  std::nth_element(v.begin(), v.begin() + static_cast<long>(k), v.end());
  return v[k];
}

using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Peak resident memory of this process so far, in MiB.
// This process's peak resident memory: VmHWM of /proc/self/status (Linux), which starts afresh at
// exec. getrusage's ru_maxrss does not: it keeps the launching process's peak (a Python benchmark
// with torch loaded would read as ~760 MB), so it is only the fallback elsewhere.
double peak_rss_mb() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::strtod(line.c_str() + 6, nullptr) / 1024.0;  // "VmHWM:   26468 kB"
  struct rusage u {};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;
}


const std::string& metadata(const qd::rt::Graph& g, const std::string& key, const std::string& path, const char* mode) {
  const auto it = g.metadata.find(key);
  if (it == g.metadata.end())
    throw InputError(path + ": has no \"" + key + "\" metadata; " + mode + " needs a student exported by `qdistill export` "
                     "from a transformer run");
  return it->second;
}

void expect_task(const qd::rt::Graph& g, const std::string& path, const std::string& task, const char* mode) {
  const auto it = g.metadata.find("task");
  const std::string have = it == g.metadata.end() ? "image_classification" : it->second;
  if (have != task)
    throw InputError(path + ": is a " + have + " model; " + mode + " needs a " + task + " model" +
                     (task == "sentence_embedding" ? " (a bert student)" : " (a llama student)"));
}

int64_t positions_of(const qd::rt::Graph& g) {
  const auto it = g.metadata.find("max_positions");
  if (it == g.metadata.end()) return 512;
  try {
    const long long v = std::stoll(it->second);
    return v > 0 ? v : 512;
  } catch (const std::exception&) {
    return 512;
  }
}

void run_ids(qd::rt::Executor& ex, const int32_t* ids, int64_t n) {
  qd::rt::Buffer& in = ex.input(0);
  in.resize({n});
  std::copy(ids, ids + n, in.data<int32_t>());
  ex.run();
}

// --embed: one line of floats per input line (or, with --bench, latency statistics).
int run_embed(const std::string& model_path, const std::string& input, bool bench, int repeat, bool json) {
  qd::rt::Graph g = qd::rt::load_graph(model_path);
  expect_task(g, model_path, "sentence_embedding", "--embed");
  const qd::text::WordPieceTokenizer tok = qd::text::WordPieceTokenizer::from_json(
      nlohmann::json::parse(metadata(g, "tokenizer.json", model_path, "--embed"), nullptr, false), model_path + " (tokenizer.json)");
  const size_t max_tokens = static_cast<size_t>(positions_of(g));
  std::ifstream in_file;
  if (input != "-") {
    in_file.open(input, std::ios::binary);
    if (!in_file) throw InputError(input + ": cannot read (" + std::strerror(errno) + "); expected a text file, one sentence per line");
  }
  std::istream& in = input == "-" ? std::cin : in_file;
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(std::move(line));
  }
  qd::rt::Executor ex(std::move(g));
  std::vector<double> us;
  int64_t tokens = 0;
  std::string row;
  for (int r = 0; r < (bench ? repeat : 1); ++r)
    for (const std::string& line : lines) {
      std::vector<int32_t> ids = tok.encode(line);
      if (ids.size() > max_tokens) ids.resize(max_tokens);
      const auto t0 = Clock::now();
      run_ids(ex, ids.data(), static_cast<int64_t>(ids.size()));
      us.push_back(1e6 * seconds_since(t0));
      if (r == 0) tokens += static_cast<int64_t>(ids.size());
      if (bench) continue;
      const qd::rt::Buffer& e = ex.output(0);
      row.clear();
      char buf[32];
      for (int64_t j = 0; j < e.numel(); ++j) {
        std::snprintf(buf, sizeof buf, j ? " %.9g" : "%.9g", static_cast<double>(e.data<float>()[j]));
        row += buf;
      }
      std::printf("%s\n", row.c_str());
    }
  if (bench) {
    const double median = percentile(us, 0.5), p90 = percentile(us, 0.9);
    const double mean_tokens = lines.empty() ? 0.0 : static_cast<double>(tokens) / static_cast<double>(lines.size());
    if (json)
      std::printf("{\"model\": \"%s\", \"sentences\": %zu, \"mean_tokens\": %.2f, \"latency_us_median\": %.3f, "
                  "\"latency_us_p90\": %.3f, \"runs\": %zu, \"threads\": %d, \"peak_rss_mb\": %.1f}\n",
                  model_path.c_str(), lines.size(), mean_tokens, median, p90, us.size(), qd::rt::threads(), peak_rss_mb());
    else
      std::printf("%s: %zu sentences (%.1f tokens on average), batch-1 latency median %.1f us, p90 %.1f us (%zu runs, %d threads)\n",
                  model_path.c_str(), lines.size(), mean_tokens, median, p90, us.size(), qd::rt::threads());
  }
  return 0;
}

// The next token from the last row of logits: greedy (top_k 1 or temperature 0), else top-k then
// top-p (nucleus) sampling at `temperature`.
int32_t pick(const float* logits, int64_t vocab, int top_k, double top_p, double temperature, std::mt19937_64& rng) {
  if (top_k == 1 || temperature <= 0.0) return static_cast<int32_t>(std::max_element(logits, logits + vocab) - logits);
  std::vector<int32_t> order(static_cast<size_t>(vocab));
  for (int64_t i = 0; i < vocab; ++i) order[static_cast<size_t>(i)] = static_cast<int32_t>(i);
  const size_t k = top_k > 0 ? std::min<size_t>(static_cast<size_t>(top_k), order.size()) : order.size();
  std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(k), order.end(),
                    [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  order.resize(k);
  std::vector<double> p(k);
  double sum = 0.0;
  for (size_t i = 0; i < k; ++i) sum += p[i] = std::exp((logits[order[i]] - logits[order[0]]) / temperature);
  double kept = 0.0;
  size_t n = 0;
  while (n < k && (n == 0 || kept < top_p * sum)) kept += p[n++];
  std::uniform_real_distribution<double> u(0.0, kept);
  double x = u(rng);
  for (size_t i = 0; i < n; ++i)
    if ((x -= p[i]) <= 0.0) return order[i];
  return order[n - 1];
}

int run_generate(const std::string& model_path, const std::string& prompt, int64_t max_tokens, int64_t max_prompt_tokens,
                 bool ignore_eos, int top_k, double top_p, double temperature, uint64_t seed, bool json) {
  qd::rt::Graph g = qd::rt::load_graph(model_path);
  expect_task(g, model_path, "causal_lm", "--prompt");
  const qd::text::BpeTokenizer tok = qd::text::BpeTokenizer::from_json(
      nlohmann::json::parse(metadata(g, "tokenizer.bpe", model_path, "--prompt"), nullptr, false), model_path + " (tokenizer.bpe)");
  const int64_t positions = positions_of(g);
  std::vector<int32_t> ids = tok.encode(prompt, /*parse_special=*/true, /*add_bos=*/true);
  if (max_prompt_tokens > 0 && static_cast<int64_t>(ids.size()) > max_prompt_tokens) ids.resize(static_cast<size_t>(max_prompt_tokens));
  if (ids.empty()) throw InputError("--prompt: the prompt is empty; give some text to continue");
  if (static_cast<int64_t>(ids.size()) >= positions)
    throw InputError("--prompt: " + std::to_string(ids.size()) + " tokens, but the model has " + std::to_string(positions) +
                     " positions; shorten the prompt");
  max_tokens = std::min<int64_t>(max_tokens, positions - static_cast<int64_t>(ids.size()));
  // Generation reads the last token's logits only: the head runs on one row, not the prompt's.
  qd::rt::Executor ex(qd::rt::last_token_output(std::move(g)));
  std::mt19937_64 rng(seed);
  const auto t0 = Clock::now();
  run_ids(ex, ids.data(), static_cast<int64_t>(ids.size()));
  const double prompt_s = seconds_since(t0);
  std::vector<int32_t> out;
  const auto t1 = Clock::now();
  for (int64_t i = 0; i < max_tokens; ++i) {
    const qd::rt::Buffer& logits = ex.output(0);
    const int64_t vocab = logits.shape[1];
    const int32_t next = pick(logits.data<float>() + (logits.shape[0] - 1) * vocab, vocab, top_k, top_p, temperature, rng);
    out.push_back(next);
    if ((next == tok.eos_id() && !ignore_eos) || i + 1 == max_tokens) break;
    run_ids(ex, &next, 1);
  }
  const double gen_s = seconds_since(t1);
  // The decode steps that ran: one per generated token but the last.
  const double gen_steps = static_cast<double>(std::max<size_t>(out.size(), 1) - 1);
  const double prompt_tps = static_cast<double>(ids.size()) / std::max(prompt_s, 1e-9);
  const double gen_tps = gen_steps > 0 ? gen_steps / std::max(gen_s, 1e-9) : 0.0;
  const std::string text = tok.decode(out);
  if (json) {
    const nlohmann::json j = {{"model", model_path},           {"prompt_tokens", ids.size()},
                              {"generated_tokens", out.size()}, {"prompt_ids", ids},
                              {"generated_ids", out},           {"text", text},
                              {"prompt_tokens_per_s", prompt_tps}, {"generation_tokens_per_s", gen_tps},
                              {"prompt_seconds", prompt_s},     {"generation_seconds", gen_s},
                              {"threads", qd::rt::threads()},   {"peak_rss_mb", peak_rss_mb()}};
    std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  } else {
    std::printf("%s\n", text.c_str());
    std::fprintf(stderr, "prompt: %zu tokens, %.1f tokens/s; generation: %zu tokens, %.1f tokens/s (%d threads)\n", ids.size(),
                 prompt_tps, out.size(), gen_tps, qd::rt::threads());
  }
  return 0;
}

int run(int argc, char** argv) {
  CLI::App app{
      "qdistill-run: integer-only int8 inference of an exported student (.qdm), without LibTorch.\n"
      "\n"
      "Examples:\n"
      "  qdistill-run runs/fmnist_student_full/export/student.qdm \\\n"
      "      --idx /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz \\\n"
      "      --labels /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz\n"
      "  qdistill-run student.qdm --idx images.gz --limit 100 --logits out.f32   # raw float32 [N, classes]\n"
      "  qdistill-run runs/minilm_student_full/export/student.qdm --embed sentences.txt   # one embedding per line\n"
      "  qdistill-run student.qdm --embed sentences.txt --bench --repeat 5 --json         # batch-1 latency\n"
      "  qdistill-run runs/smollm2_student_full/export/student.qdm --prompt \"Once upon a time\" --max-tokens 64\n"
      "  qdistill-run student.qdm --prompt \"...\" --top-k 40 --top-p 0.9 --temperature 0.8 --seed 1 --json\n"
      "\n"
      "Images: pixels are read as bytes and scaled to [0, 1]; the model holds its own normalization.\n"
      "Text: the tokenizer is inside the .qdm; --embed - reads standard input.\n"
      "Exit codes: 0 success, 2 bad input (model file, images, arguments), 1 anything else."};
  std::string model_path, images_path, labels_path, logits_path, embed_path, prompt;
  int64_t limit = 0, max_tokens = 64, max_prompt_tokens = 0;
  int repeat = 1, top_k = 1;
  double top_p = 1.0, temperature = 1.0;
  uint64_t seed = 0;
  bool json = false, bench = false, ignore_eos = false;
  int threads = 0;
  app.add_option("model", model_path, "the .qdm file written by `qdistill export`")->required();
  app.add_option("--idx", images_path, "IDX images (uint8 [N, H, W] or [N, C, H, W]), .gz or raw");
  app.add_option("--embed", embed_path, "sentence embeddings of a bert student: a text file, one sentence per line (- : stdin)");
  app.add_flag("--bench", bench, "with --embed: print batch-1 latency statistics instead of the embeddings");
  app.add_option("--prompt", prompt, "generation with a llama student: the text to continue (control tokens such as "
                 "<|im_start|> are parsed)");
  app.add_option("--max-tokens", max_tokens, "with --prompt: tokens to generate at most (stops at end-of-text)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  app.add_option("--max-prompt-tokens", max_prompt_tokens, "with --prompt: keep only the first N tokens of the prompt (0: all)")
      ->check(CLI::NonNegativeNumber);
  app.add_flag("--ignore-eos", ignore_eos, "with --prompt: keep generating past end-of-text (benchmarks)");
  app.add_option("--top-k", top_k, "with --prompt: sample among the k likeliest tokens (1: greedy, 0: all)")
      ->check(CLI::Range(0, 1 << 24));
  app.add_option("--top-p", top_p, "with --prompt: keep the likeliest tokens up to this probability mass")->check(CLI::Range(1e-6, 1.0));
  app.add_option("--temperature", temperature, "with --prompt: sampling temperature (0: greedy)")->check(CLI::Range(0.0, 100.0));
  app.add_option("--seed", seed, "with --prompt: the sampler's seed");
  app.add_option("--labels", labels_path, "IDX labels (uint8 [N]): prints accuracy");
  app.add_option("--limit", limit, "use only the first N images (0: all)")->check(CLI::NonNegativeNumber);
  app.add_option("--repeat", repeat, "run the images (or --bench sentences) this many times (latency statistics)")
      ->check(CLI::PositiveNumber);
  app.add_option("--logits", logits_path, "write the logits here as raw little-endian float32 [N, classes]");
  app.add_flag("--json", json, "print one JSON object instead of text");
  app.add_option("--threads", threads, "with --embed or --prompt: threads for the linear layers and attention (0: one per CPU); "
                                       "the results are the same bit for bit whatever the count")
      ->check(CLI::Range(0, 256));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : 2;
  }
  const int modes = !images_path.empty() + !embed_path.empty() + !prompt.empty();
  if (modes != 1) {
    std::fprintf(stderr, "qdistill-run: error: give exactly one of --idx (images), --embed (sentences) or --prompt "
                         "(generation); see --help\n");
    return 2;
  }
  qd::rt::set_threads(threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  if (!embed_path.empty()) return run_embed(model_path, embed_path, bench, repeat, json);
  if (!prompt.empty())
    return run_generate(model_path, prompt, max_tokens, max_prompt_tokens, ignore_eos, top_k, top_p, temperature, seed, json);

  qd::rt::Interpreter interp(qd::rt::load_qdm(model_path));
  const qd::rt::Model& m = interp.model();
  const qd::rt::TensorInfo& in = m.tensors[0];
  const Idx images = read_idx(images_path);
  // [N, H, W] is one channel; [N, C, H, W] is explicit.
  const std::vector<int64_t>& d = images.dims;
  const bool shape_ok = (d.size() == 3 && in.c == 1 && d[1] == in.h && d[2] == in.w) ||
                        (d.size() == 4 && d[1] == in.c && d[2] == in.h && d[3] == in.w);
  if (!shape_ok) {
    std::string got;
    for (size_t i = 1; i < d.size(); ++i) got += (i > 1 ? "x" : "") + std::to_string(d[i]);
    throw InputError(images_path + ": images are " + got + ", the model takes " + std::to_string(in.c) + "x" +
                     std::to_string(in.h) + "x" + std::to_string(in.w) + " (CxHxW)");
  }
  int64_t n = d[0];
  if (limit > 0) n = std::min(n, limit);
  std::vector<uint8_t> labels;
  if (!labels_path.empty()) {
    Idx l = read_idx(labels_path);
    if (l.dims.size() != 1 || l.dims[0] < n)
      throw InputError(labels_path + ": expected IDX labels [N] with N >= " + std::to_string(n) + " images");
    labels = std::move(l.data);
  }

  const int64_t per = in.numel(), classes = m.num_classes();
  std::vector<float> pixels(static_cast<size_t>(per));
  std::vector<float> logits(static_cast<size_t>(n * classes));
  std::vector<double> us;
  us.reserve(static_cast<size_t>(n * repeat));
  int64_t correct = 0;
  for (int r = 0; r < repeat; ++r)
    for (int64_t i = 0; i < n; ++i) {
      const uint8_t* src = images.data.data() + i * per;
      // As training converts pixels: float(byte) / 255.
      for (int64_t k = 0; k < per; ++k) pixels[static_cast<size_t>(k)] = static_cast<float>(src[k]) / 255.0f;
      float* out = logits.data() + i * classes;
      const auto t0 = std::chrono::steady_clock::now();
      interp.run(pixels.data(), out);
      const auto t1 = std::chrono::steady_clock::now();
      us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
      if (r == 0 && !labels.empty())
        correct += (std::max_element(out, out + classes) - out) == labels[static_cast<size_t>(i)];
    }
  if (!logits_path.empty()) {
    std::ofstream f(logits_path, std::ios::binary);
    f.write(reinterpret_cast<const char*>(logits.data()), static_cast<std::streamsize>(logits.size() * sizeof(float)));
    if (!f) throw std::runtime_error(logits_path + ": cannot write the logits");
  }
  const double median = percentile(us, 0.5), p90 = percentile(us, 0.9);
  const double accuracy = labels.empty() ? -1.0 : 100.0 * static_cast<double>(correct) / static_cast<double>(n);
  if (json) {
    std::printf("{\"model\": \"%s\", \"images\": %lld, \"latency_us_median\": %.3f, \"latency_us_p90\": %.3f",
                model_path.c_str(), static_cast<long long>(n), median, p90);
    if (accuracy >= 0) std::printf(", \"accuracy\": %.4f", accuracy);
    std::printf("}\n");
  } else {
    std::printf("%s: %lld images, batch-1 latency median %.1f us, p90 %.1f us (%lld runs, 1 thread)\n",
                model_path.c_str(), static_cast<long long>(n), median, p90, static_cast<long long>(us.size()));
    if (accuracy >= 0) std::printf("accuracy %.2f%% (%lld / %lld)\n", accuracy, static_cast<long long>(correct),
                                   static_cast<long long>(n));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const qd::rt::QdmError& e) {
    std::fprintf(stderr, "qdistill-run: error: %s\n", e.what());
    return 2;
  } catch (const InputError& e) {
    std::fprintf(stderr, "qdistill-run: error: %s\n", e.what());
    return 2;
  } catch (const qd::UserError& e) {  // a tokenizer inside the file that does not validate
    std::fprintf(stderr, "qdistill-run: error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "qdistill-run: error: %s\n", e.what());
    return 1;
  }
}
