#include "trainer/task.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>
#include <sstream>
#include <unordered_set>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/log.h"
#include "common/progress.h"
#include "data/augment.h"
#include "data/sampler.h"
#include "models/text_model.h"
#include "parallel/communicator.h"
#include "trainer/trainer.h"

namespace qd {

namespace fs = std::filesystem;
namespace F = torch::nn::functional;

namespace {

torch::Tensor f64_scalar(torch::Device d) { return torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat64).device(d)); }

// ---------------------------------------------------------------------------------------------
// image_classification: today's behaviour, the same operations in the same order.
class ImageTask : public Task {
 public:
  ImageTask(const ExperimentConfig& cfg, const DataBundle& data)
      : cfg_(cfg), data_(data), ce_(F::CrossEntropyFuncOptions().label_smoothing(cfg.trainer.label_smoothing)) {}
  std::string name() const override { return "image_classification"; }
  int64_t train_size() const override { return data_.train.size(); }
  std::string describe() const override {
    return concat(data_.train.size(), " train / ", data_.test.size(), " ", data_.test.name, " images");
  }

  void load_batch(TrainState& st, const std::vector<int64_t>& indices, int64_t first, int64_t last) override {
    Batch b = gather_batch(data_.train, indices, first, last);
    std::vector<uint64_t> seeds;
    const uint64_t seed = static_cast<uint64_t>(cfg_.experiment.seed);
    if (cfg_.data.augment.any())
      for (int64_t idx : st.sample_indices) seeds.push_back(augment_seed(cfg_.data.augment, seed, st.epoch, idx));
    torch::Tensor x = augment_batch(b.inputs, cfg_.data.augment, seeds).to(st.device, /*non_blocking=*/true);
    st.inputs = cfg_.trainer.channels_last ? x.contiguous(torch::MemoryFormat::ChannelsLast) : x;
    st.targets = b.targets.to(st.device, /*non_blocking=*/true);
    st.mask = torch::Tensor();
  }
  torch::Tensor forward_loss(Model& model, TrainState& st) override {
    // Float logits whatever trainer.precision computed them in: the loss and its softmax stay in float.
    st.logits = model.forward(st.inputs).to(torch::kFloat32);  // [B, classes]
    return F::cross_entropy(st.logits, st.targets, ce_);
  }
  void accumulate(const TrainState& st, const torch::Tensor& loss, torch::Tensor& sums) const override {
    const double micro = static_cast<double>(st.targets.size(0));
    sums[0] += loss.to(torch::kFloat64) * micro;
    sums[1] += st.logits.detach().argmax(1).eq(st.targets).sum().to(torch::kFloat64);
    sums[2] += micro;
  }
  std::map<std::string, double> train_metrics(const torch::Tensor& sums) const override {
    const torch::Tensor s = sums.cpu();
    const double n = s[2].item<double>();
    return {{"train_loss", s[0].item<double>() / n}, {"train_accuracy", 100.0 * s[1].item<double>() / n}};
  }
  TaskMetrics evaluate(Model& model, torch::Device device, Communicator* comm, bool) override {
    const EvalResult ev = qd::evaluate(model, data_.test, cfg_.data.eval_batch_size, device, cfg_.trainer.channels_last, comm);
    TaskMetrics m;
    m.values = {{"test_loss", ev.loss}, {"test_accuracy", ev.accuracy}};
    m.score = ev.accuracy;
    m.samples = ev.samples;
    m.split = data_.test.name;
    m.line = concat(data_.test.name, " loss ", ev.loss, ", ", data_.test.name, " acc ", ev.accuracy, "%");
    return m;
  }
  double no_score() const override { return -1.0; }
  void add_best(nlohmann::json& rec, double best) const override { rec["best_test_accuracy"] = best; }

 private:
  ExperimentConfig cfg_;
  const DataBundle& data_;
  F::CrossEntropyFuncOptions ce_;
};

// Token ids of `text` cut to `max_tokens` (a BERT sequence keeps its final [SEP]).
std::vector<int32_t> encode_cut(const TextTokenizer& tok, const std::string& text, int64_t max_tokens) {
  std::vector<int32_t> ids = tok.encode(text);
  if (static_cast<int64_t>(ids.size()) > max_tokens) {
    const bool bert = tok.kind() == "wordpiece";
    ids.resize(static_cast<size_t>(bert ? max_tokens - 1 : max_tokens));
    if (bert) ids.push_back(tok.eos_id());
  }
  return ids;
}

// Rows of ids padded at the end: ids [B, T] int64 (pad id), mask [B, T] int64.
std::pair<torch::Tensor, torch::Tensor> pad_batch(const std::vector<const std::vector<int32_t>*>& rows, int32_t pad) {
  size_t t = 1;
  for (const auto* r : rows) t = std::max(t, r->size());
  const int64_t b = static_cast<int64_t>(rows.size());
  torch::Tensor ids = torch::full({b, static_cast<int64_t>(t)}, pad, torch::kLong);
  torch::Tensor mask = torch::zeros({b, static_cast<int64_t>(t)}, torch::kLong);
  auto ia = ids.accessor<int64_t, 2>();
  auto ma = mask.accessor<int64_t, 2>();
  for (int64_t i = 0; i < b; ++i)
    for (size_t j = 0; j < rows[static_cast<size_t>(i)]->size(); ++j) {
      ia[i][static_cast<int64_t>(j)] = (*rows[static_cast<size_t>(i)])[j];
      ma[i][static_cast<int64_t>(j)] = 1;
    }
  return {ids, mask};
}

// ---------------------------------------------------------------------------------------------
class CausalLmTask : public Task {
 public:
  CausalLmTask(const ExperimentConfig& cfg, std::shared_ptr<const TextTokenizer> tok, int64_t vocab)
      : cfg_(cfg), tok_(std::move(tok)), vocab_(vocab), len_(cfg.data.seq_len) {
    train_ = read(TextSplit::kTrain);
    chunks_ = (static_cast<int64_t>(train_.ids.size()) - 1) / len_;  // only full sequences train
    if (cfg.data.train_subset > 0) chunks_ = std::min(chunks_, cfg.data.train_subset);
    QD_CHECK(chunks_ > 0, DataError, cfg.data.text_folder(), ": the training split has ", train_.ids.size(),
             " tokens, not one sequence of data.seq_len ", len_, " + 1");
  }
  std::string name() const override { return "causal_lm"; }
  int64_t train_size() const override { return chunks_; }
  torch::Tensor training_sequences() const override {
    const torch::Tensor stream = torch::tensor(std::vector<int64_t>(train_.ids.begin(), train_.ids.begin() + chunks_ * len_),
                                               torch::kLong);
    return stream.view({chunks_, len_});
  }
  int64_t units_per_example() const override { return len_; }
  std::string describe() const override {
    return concat(chunks_, " train sequences of ", len_, " tokens (", train_.documents, " documents, ", train_.ids.size(),
                  " tokens)");
  }

  void load_batch(TrainState& st, const std::vector<int64_t>& indices, int64_t first, int64_t last) override {
    const int64_t b = last - first;
    torch::Tensor ids = torch::empty({b, len_}, torch::kLong), tgt = torch::empty({b, len_}, torch::kLong);
    auto ia = ids.accessor<int64_t, 2>();
    auto ta = tgt.accessor<int64_t, 2>();
    for (int64_t i = 0; i < b; ++i) {
      const int64_t start = indices[static_cast<size_t>(first + i)] * len_;
      for (int64_t j = 0; j < len_; ++j) {
        ia[i][j] = train_.ids[static_cast<size_t>(start + j)];
        ta[i][j] = train_.ids[static_cast<size_t>(start + j + 1)];
      }
    }
    st.inputs = ids.to(st.device);
    st.targets = tgt.to(st.device);
    st.mask = torch::ones({b, len_}, torch::TensorOptions().dtype(torch::kLong).device(st.device));
  }
  torch::Tensor forward_loss(Model& model, TrainState& st) override {
    st.logits = static_cast<TextModel&>(model).forward_text(st.inputs, st.mask).to(torch::kFloat32);  // [B, T, V]
    return causal_lm_loss(st.logits, st.targets);
  }
  void accumulate(const TrainState& st, const torch::Tensor& loss, torch::Tensor& sums) const override {
    const torch::Tensor valid = st.targets.ne(-100);
    const torch::Tensor units = valid.sum().to(torch::kFloat64);
    // The next-token cross-entropy itself (its perplexity means something), not the loss that
    // distillation terms were added to.
    const auto ce = st.loss_terms.find("ce");
    sums[0] += (ce != st.loss_terms.end() ? ce->second : loss).detach().to(torch::kFloat64) * units;
    sums[1] += (st.logits.detach().argmax(-1).eq(st.targets) & valid).sum().to(torch::kFloat64);
    sums[2] += units;
  }
  std::map<std::string, double> train_metrics(const torch::Tensor& sums) const override {
    const torch::Tensor s = sums.cpu();
    const double n = std::max(1.0, s[2].item<double>()), loss = s[0].item<double>() / n;
    return {{"train_loss", loss}, {"train_perplexity", std::exp(loss)}, {"train_token_accuracy", 100.0 * s[1].item<double>() / n}};
  }

  TaskMetrics evaluate(Model& model, torch::Device device, Communicator* comm, bool held_out_test) override {
    const TextSplit split = held_out_test ? TextSplit::kTest : TextSplit::kValidation;
    if (!held_out(split).ids.size()) held_out(split) = read(split);
    const TokenStream& s = held_out(split);
    torch::NoGradGuard no_grad;
    const bool was_training = model.is_training();
    model.eval();
    // Every position but the first is predicted once: chunk c reads ids [cL, cL + L) and predicts
    // [cL + 1, cL + L + 1); the last chunk is shorter, padded and masked.
    const int64_t n = static_cast<int64_t>(s.ids.size()), chunks = (n - 2) / len_ + 1;
    const int world = comm ? comm->world_size() : 1, rank = comm ? comm->rank() : 0;
    const int64_t lo = chunks * rank / world, hi = chunks * (rank + 1) / world;
    // Logits [B, T, vocab] in float32: at most 2^26 values (256 MiB) per batch.
    const int64_t batch = std::max<int64_t>(1, std::min<int64_t>(cfg_.data.eval_batch_size, (int64_t{1} << 26) / (len_ * vocab_)));
    torch::Tensor nll = f64_scalar(device), count = f64_scalar(device);
    ProgressBar bar(concat("eval ", split_name(split)), hi - lo, cfg_.trainer.progress && rank == 0 && hi - lo > 8 * batch,
                    std::max<int64_t>(1, (hi - lo) / batch / 5));
    for (int64_t c0 = lo; c0 < hi; c0 += batch) {
      const int64_t b = std::min(batch, hi - c0);
      torch::Tensor ids = torch::full({b, len_}, tok_->pad_id(), torch::kLong), tgt = torch::full({b, len_}, -100, torch::kLong);
      torch::Tensor mask = torch::zeros({b, len_}, torch::kLong);
      auto ia = ids.accessor<int64_t, 2>(), ta = tgt.accessor<int64_t, 2>(), ma = mask.accessor<int64_t, 2>();
      int64_t longest = 1;
      for (int64_t i = 0; i < b; ++i) {
        const int64_t start = (c0 + i) * len_, m = std::min(len_, n - 1 - start);
        longest = std::max(longest, m);
        for (int64_t j = 0; j < m; ++j) {
          ia[i][j] = s.ids[static_cast<size_t>(start + j)];
          ta[i][j] = s.ids[static_cast<size_t>(start + j + 1)];
          ma[i][j] = 1;
        }
      }
      ids = ids.narrow(1, 0, longest).to(device), tgt = tgt.narrow(1, 0, longest).to(device), mask = mask.narrow(1, 0, longest).to(device);
      const torch::Tensor logits = static_cast<TextModel&>(model).forward_text(ids, mask);
      nll += F::cross_entropy(logits.reshape({-1, logits.size(-1)}).to(torch::kFloat32), tgt.reshape({-1}),
                              F::CrossEntropyFuncOptions().ignore_index(-100).reduction(torch::kSum))
                 .to(torch::kFloat64);
      count += tgt.ne(-100).sum().to(torch::kFloat64);
      bar.update(c0 + b - lo, c0 + b - lo, "");  // samples: sequences of data.seq_len tokens
    }
    bar.finish("");
    torch::Tensor sums = torch::stack({nll, count});
    if (world > 1) all_reduce_now(*comm, sums);
    sums = sums.cpu();
    model.train(was_training);
    const double total = sums[0].item<double>(), tokens = sums[1].item<double>();
    const double loss = total / std::max(1.0, tokens);
    TaskMetrics m;
    m.values = {{"loss", loss},
                {"perplexity", std::exp(loss)},
                {"bits_per_byte", total / std::log(2.0) / static_cast<double>(std::max<int64_t>(1, s.bytes))},
                {"tokens", tokens},
                {"bytes", static_cast<double>(s.bytes)}};
    m.score = -loss;
    m.samples = static_cast<int64_t>(tokens);
    m.split = split_name(split);
    m.line = concat(m.split, " perplexity ", m.values["perplexity"], ", ", m.values["bits_per_byte"], " bits/byte over ",
                    static_cast<int64_t>(tokens), " tokens");
    return m;
  }
  void add_best(nlohmann::json& rec, double best) const override {
    if (std::isfinite(best)) rec["best_perplexity"] = std::exp(-best);
  }

 private:
  TokenStream read(TextSplit split) const {
    std::vector<std::string> docs = load_fortunes(cfg_.data.text_folder(), split);
    if (split != TextSplit::kTrain && cfg_.data.test_subset > 0 && static_cast<int64_t>(docs.size()) > cfg_.data.test_subset)
      docs.resize(static_cast<size_t>(cfg_.data.test_subset));
    const TextTokenizer& tok = *tok_;
    return pack_documents(docs, [&tok](std::string_view t) { return tok.encode(t); }, tok.eos_id());
  }
  TokenStream& held_out(TextSplit s) { return s == TextSplit::kTest ? test_ : valid_; }

  ExperimentConfig cfg_;
  std::shared_ptr<const TextTokenizer> tok_;
  int64_t vocab_, len_, chunks_ = 0;
  TokenStream train_, valid_, test_;  // held-out splits are read only when evaluated
};

// ---------------------------------------------------------------------------------------------
class SentenceEmbeddingTask : public Task {
 public:
  SentenceEmbeddingTask(const ExperimentConfig& cfg, const TextModel& model, torch::Device device, Communicator* comm,
                        bool for_training)
      : cfg_(cfg), tok_(model.tokenizer_ptr()) {
    if (!for_training) return;
    if (contrastive()) {
      if (!cfg.task.teacher.empty())
        cfg.fail("task.teacher", "task.loss: contrastive learns from definition/lemma-list pairs without a teacher (the "
                                 "no-KD baseline); remove task.teacher, or use task.loss: cosine or mse to learn its embeddings");
      // Training pairs: each train synset's definition and its lemma list.
      std::vector<Synset> synsets = load_wordnet(cfg.data.text_folder(), TextSplit::kTrain);
      if (cfg.data.train_subset > 0 && static_cast<int64_t>(synsets.size()) > cfg.data.train_subset)
        synsets.resize(static_cast<size_t>(cfg.data.train_subset));
      for (const auto& s : synsets) {
        ids_.push_back(encode_cut(*tok_, s.query, cfg.data.seq_len));
        docs_.push_back(encode_cut(*tok_, s.document, cfg.data.seq_len));
      }
      return;
    }
    if (cfg.task.teacher.empty())
      cfg.fail("task.teacher", "sentence_embedding training needs a teacher whose embeddings the student learns, e.g. "
                               "task.teacher: minilm-l6 (or task.loss: contrastive, which learns without one)");
    // Training texts: the train split's definitions and lemma lists, each once.
    std::vector<std::string> texts;
    std::unordered_set<std::string> seen;
    for (auto& s : load_wordnet(cfg.data.text_folder(), TextSplit::kTrain))
      for (std::string* t : {&s.query, &s.document})
        if (seen.insert(*t).second) texts.push_back(std::move(*t));
    if (cfg.data.train_subset > 0 && static_cast<int64_t>(texts.size()) > cfg.data.train_subset)
      texts.resize(static_cast<size_t>(cfg.data.train_subset));
    for (const auto& t : texts) ids_.push_back(encode_cut(*tok_, t, cfg.data.seq_len));
    targets_ = teacher_embeddings(texts, device, comm);
    if (targets_.size(1) != model.embedding_dim())
      cfg.fail(cfg.model.embedding_dim > 0 ? "model.embedding_dim" : "model.hidden",
               concat("the student's embedding has ", model.embedding_dim(), " dimensions, the teacher's (", cfg.task.teacher,
                      ") ", targets_.size(1), "; give the student embedding_dim: ", targets_.size(1),
                      " (a projection of its pooled hidden states) or hidden: ", targets_.size(1)));
  }
  std::string name() const override { return "sentence_embedding"; }
  int64_t train_size() const override { return static_cast<int64_t>(ids_.size()); }
  std::string describe() const override {
    if (contrastive()) return concat(ids_.size(), " train pairs (WordNet definition -> lemma list), in-batch contrastive");
    return concat(ids_.size(), " train texts (WordNet definitions and lemma lists) with ", cfg_.task.teacher, "'s embeddings (",
                  cfg_.task.loss == EmbeddingLoss::kMse ? "mse" : "cosine", ")");
  }
  void load_batch(TrainState& st, const std::vector<int64_t>& indices, int64_t first, int64_t last) override {
    std::vector<const std::vector<int32_t>*> rows;
    std::vector<int64_t> which;
    for (int64_t i = first; i < last; ++i) {
      rows.push_back(&ids_[static_cast<size_t>(indices[static_cast<size_t>(i)])]);
      which.push_back(indices[static_cast<size_t>(i)]);
    }
    // Contrastive: the B definitions, then their B lemma lists, in one padded batch.
    if (contrastive())
      for (int64_t i : which) rows.push_back(&docs_[static_cast<size_t>(i)]);
    auto [ids, mask] = pad_batch(rows, tok_->pad_id());
    st.inputs = ids.to(st.device);
    st.mask = mask.to(st.device);
    if (contrastive())
      st.targets = torch::arange(static_cast<int64_t>(which.size()), torch::kLong).to(st.device);  // [B]: pair i is row i
    else
      st.targets = targets_.index_select(0, torch::tensor(which, torch::kLong)).to(st.device);  // [B, D]
  }
  torch::Tensor forward_loss(Model& model, TrainState& st) override {
    const torch::Tensor e = static_cast<TextModel&>(model).embed(st.inputs, st.mask).to(torch::kFloat32);  // L2-normalized
    if (contrastive()) {
      const int64_t b = st.targets.size(0);
      st.logits = e.narrow(0, 0, b);                                                   // [B, D] definitions
      const torch::Tensor sims = torch::matmul(st.logits, e.narrow(0, b, b).t()).to(torch::kFloat32) * 20.0;  // [B, B]
      return torch::nn::functional::cross_entropy(sims, st.targets);
    }
    st.logits = e;  // [B, D]
    if (cfg_.task.loss == EmbeddingLoss::kMse) return (st.logits - st.targets).pow(2).mean();
    return (1.0 - (st.logits * st.targets).sum(1)).mean();
  }
  void accumulate(const TrainState& st, const torch::Tensor& loss, torch::Tensor& sums) const override {
    const double b = static_cast<double>(st.targets.size(0));
    // The task's own term (the trainer records it before hooks add feature-KD terms).
    const auto own = st.loss_terms.find("ce");
    sums[0] += (own != st.loss_terms.end() ? own->second : loss).detach().to(torch::kFloat64) * b;
    if (!contrastive()) sums[1] += (st.logits * st.targets).sum().detach().to(torch::kFloat64);
    sums[2] += b;
  }
  std::map<std::string, double> train_metrics(const torch::Tensor& sums) const override {
    const torch::Tensor s = sums.cpu();
    const double n = std::max(1.0, s[2].item<double>());
    if (contrastive()) return {{"train_loss", s[0].item<double>() / n}};
    return {{"train_loss", s[0].item<double>() / n}, {"train_cosine", s[1].item<double>() / n}};
  }
  TaskMetrics evaluate(Model& model, torch::Device device, Communicator* comm, bool held_out_test) override {
    const TextSplit split = held_out_test ? TextSplit::kTest : TextSplit::kValidation;
    std::vector<Synset> synsets = load_wordnet(cfg_.data.text_folder(), split);
    if (cfg_.data.test_subset > 0 && static_cast<int64_t>(synsets.size()) > cfg_.data.test_subset)
      synsets.resize(static_cast<size_t>(cfg_.data.test_subset));
    // Identical lemma lists are one document; a query is answered by its synset's document.
    std::vector<std::string> queries, docs;
    std::map<std::string, int64_t> doc_index;
    std::vector<int64_t> answer;
    for (const auto& s : synsets) {
      auto [it, fresh] = doc_index.emplace(s.document, static_cast<int64_t>(docs.size()));
      if (fresh) docs.push_back(s.document);
      queries.push_back(s.query);
      answer.push_back(it->second);
    }
    auto& tm = static_cast<TextModel&>(model);
    const int64_t batch = std::min<int64_t>(cfg_.data.eval_batch_size, 256);
    int64_t query_tokens = 0, doc_tokens = 0;
    const torch::Tensor q = embed_texts(tm, queries, cfg_.data.seq_len, batch, device, comm, false, &query_tokens);
    const torch::Tensor d = embed_texts(tm, docs, cfg_.data.seq_len, batch, device, comm, false, &doc_tokens);
    const auto [r1, r10] = recall_at_1_and_10(q, d, answer);
    TaskMetrics m;
    m.values = {{"recall_at_1", r1}, {"recall_at_10", r10}, {"queries", static_cast<double>(queries.size())},
                {"documents", static_cast<double>(docs.size())},
                {"tokens", static_cast<double>(query_tokens + doc_tokens)}};
    m.score = r1;
    m.samples = static_cast<int64_t>(queries.size());
    m.split = split_name(split);
    m.line = concat(m.split, " recall@1 ", r1, ", recall@10 ", r10, " (", queries.size(), " definitions -> ", docs.size(),
                    " lemma lists)");
    return m;
  }
  void add_best(nlohmann::json& rec, double best) const override {
    if (std::isfinite(best)) rec["best_recall_at_1"] = best;
  }

 private:
  // The teacher's embeddings of the training texts, cached under task.cache_dir by a key of the
  // teacher's file, the texts and the cut length (so a changed teacher or corpus is recomputed).
  torch::Tensor teacher_embeddings(const std::vector<std::string>& texts, torch::Device device, Communicator* comm) {
    const std::string teacher_path = resolve_pretrained(cfg_.task.teacher);
    std::error_code ec;
    const fs::path weights = fs::is_directory(teacher_path) ? fs::path(teacher_path) / "model.safetensors" : fs::path(teacher_path);
    uint64_t key = fnv1a64(fs::absolute(teacher_path).string());
    key = mix_seed(key, fs::file_size(weights, ec));
    key = mix_seed(key, static_cast<uint64_t>(cfg_.data.seq_len));
    for (const auto& t : texts) key = mix_seed(key, fnv1a64(t));
    const fs::path dir = cfg_.task.cache_dir.empty() ? fs::path(cfg_.experiment.output_dir) / "teacher_cache" : fs::path(cfg_.task.cache_dir);
    char name[64];
    std::snprintf(name, sizeof name, "embeddings-%016llx.pt", static_cast<unsigned long long>(key));
    const fs::path file = dir / name;
    if (fs::is_regular_file(file)) {
      try {
        torch::Tensor t;
        torch::load(t, file.string());
        if (t.dim() == 2 && t.size(0) == static_cast<int64_t>(texts.size())) {
          log_info("sentence_embedding: teacher embeddings from ", file.string());
          return t;
        }
      } catch (const c10::Error&) {
      }
      log_info("sentence_embedding: ", file.string(), " is not a valid cache; recomputing it");
    }
    ModelConfig tc;
    tc.name = ModelKind::kBert;
    tc.pretrained = cfg_.task.teacher;
    std::shared_ptr<TextModel> teacher = make_text_model(tc);
    teacher->to(device);
    log_info("sentence_embedding: computing ", cfg_.task.teacher, "'s embeddings of ", texts.size(), " training texts once");
    torch::Tensor t = embed_texts(*teacher, texts, cfg_.data.seq_len, 128, device, comm, cfg_.trainer.progress).cpu();
    if (!comm || comm->rank() == 0) {
      fs::create_directories(dir);
      std::ostringstream bytes;
      torch::save(t, bytes);
      write_file_atomic(file.string(), bytes.str());
    }
    return t;
  }
  bool contrastive() const { return cfg_.task.loss == EmbeddingLoss::kContrastive; }
  ExperimentConfig cfg_;
  std::shared_ptr<const TextTokenizer> tok_;
  std::vector<std::vector<int32_t>> ids_;   // training texts (contrastive: the definitions)
  std::vector<std::vector<int32_t>> docs_;  // contrastive: each definition's lemma list
  torch::Tensor targets_;  // [N, D] float32 on CPU
};

}  // namespace

torch::Tensor causal_lm_loss(const torch::Tensor& logits, const torch::Tensor& targets) {
  return F::cross_entropy(logits.reshape({-1, logits.size(-1)}), targets.reshape({-1}),
                          F::CrossEntropyFuncOptions().ignore_index(-100));
}

std::pair<double, double> recall_at_1_and_10(const torch::Tensor& queries, const torch::Tensor& docs,
                                             const std::vector<int64_t>& answer) {
  torch::NoGradGuard g;
  const int64_t nq = queries.size(0);
  if (nq == 0) return {0.0, 0.0};
  const torch::Tensor ans = torch::tensor(answer, torch::kLong).to(queries.device());
  int64_t hit1 = 0, hit10 = 0;
  for (int64_t q0 = 0; q0 < nq; q0 += 1024) {
    const int64_t b = std::min<int64_t>(1024, nq - q0);
    const torch::Tensor sims = torch::matmul(queries.narrow(0, q0, b), docs.t());  // [b, N]
    const torch::Tensor own = sims.gather(1, ans.narrow(0, q0, b).unsqueeze(1));  // [b, 1]
    const torch::Tensor rank = sims.ge(own).sum(1) - 1;                           // others at least as similar
    hit1 += rank.lt(1).sum().item<int64_t>();
    hit10 += rank.lt(10).sum().item<int64_t>();
  }
  return {static_cast<double>(hit1) / static_cast<double>(nq), static_cast<double>(hit10) / static_cast<double>(nq)};
}

torch::Tensor embed_texts(TextModel& model, const std::vector<std::string>& texts, int64_t max_tokens,
                          int64_t batch_size, torch::Device device, Communicator* comm, bool progress, int64_t* tokens) {
  torch::NoGradGuard g;
  const bool was_training = model.is_training();
  model.eval();
  const int64_t n = static_cast<int64_t>(texts.size());
  const int world = comm ? comm->world_size() : 1, rank = comm ? comm->rank() : 0;
  std::vector<std::vector<int32_t>> ids(texts.size());
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    ids[static_cast<size_t>(i)] = encode_cut(model.tokenizer(), texts[static_cast<size_t>(i)], max_tokens);
    count += static_cast<int64_t>(ids[static_cast<size_t>(i)].size());
  }
  if (tokens) *tokens = count;
  // Length-sorted batches waste little on padding; batch k goes to rank k % world.
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return ids[static_cast<size_t>(a)].size() < ids[static_cast<size_t>(b)].size(); });
  torch::Tensor out = torch::zeros({n, model.embedding_dim()}, torch::TensorOptions().dtype(torch::kFloat32).device(device));
  const int64_t batches = (n + batch_size - 1) / batch_size;
  ProgressBar bar("embed", n, progress && rank == 0, std::max<int64_t>(1, batches / 5));
  int64_t done = 0;
  for (int64_t k = rank; k < batches; k += world) {
    const int64_t lo = k * batch_size, hi = std::min(n, lo + batch_size);
    std::vector<const std::vector<int32_t>*> rows;
    std::vector<int64_t> which;
    for (int64_t i = lo; i < hi; ++i) {
      rows.push_back(&ids[static_cast<size_t>(order[static_cast<size_t>(i)])]);
      which.push_back(order[static_cast<size_t>(i)]);
    }
    auto [x, mask] = pad_batch(rows, model.tokenizer().pad_id());
    const torch::Tensor e = model.embed(x.to(device), mask.to(device)).to(torch::kFloat32);
    out.index_copy_(0, torch::tensor(which, torch::kLong).to(device), e);
    done += (hi - lo) * world;
    bar.update(std::min(done, n), std::min(done, n), "");
  }
  bar.finish("");
  if (world > 1) all_reduce_now(*comm, out);
  model.train(was_training);
  return out;
}

std::shared_ptr<Task> make_image_task(const ExperimentConfig& cfg, const DataBundle& data) {
  return std::make_shared<ImageTask>(cfg, data);
}

std::shared_ptr<Task> make_text_task(const ExperimentConfig& cfg, const TextModel& model, torch::Device device,
                                     Communicator* comm, bool for_training) {
  if (cfg.data.seq_len > model.max_positions())
    cfg.fail("data.seq_len", concat(cfg.data.seq_len, " is longer than the model's ", model.max_positions(), " positions"));
  if (cfg.task.name == TaskKind::kCausalLm) {
    if (!model.causal()) cfg.fail("task.name", "causal_lm needs a decoder (model.name: llama)");
    const auto* lm = dynamic_cast<const LlamaModel*>(&model);
    return std::make_shared<CausalLmTask>(cfg, model.tokenizer_ptr(), lm->lm->options().vocab);
  }
  if (cfg.task.name != TaskKind::kSentenceEmbedding) cfg.fail("task.name", "not a text task");
  return std::make_shared<SentenceEmbeddingTask>(cfg, model, device, comm, for_training);
}

}  // namespace qd
