#include "trainer/trainer.h"

#include <chrono>
#include <filesystem>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/log.h"
#include "common/progress.h"
#include "data/augment.h"
#include "data/sampler.h"
#include "trainer/checkpoint.h"

namespace qd {

namespace fs = std::filesystem;
namespace F = torch::nn::functional;

namespace {
torch::Device device_for(const TrainerConfig& t) {
  if (t.device == DeviceKind::kCuda) {
    QD_CHECK(torch::cuda::is_available(), UserError,
             "trainer.device: cuda, but no CUDA device is visible (torch::cuda::is_available() is false); "
             "use --set trainer.device=cpu or run on a GPU machine");
    return torch::Device(torch::kCUDA, 0);
  }
  return torch::kCPU;
}

torch::Tensor prepare(torch::Tensor x, torch::Device device, bool channels_last) {
  x = x.to(device, /*non_blocking=*/true);
  return channels_last ? x.contiguous(torch::MemoryFormat::ChannelsLast) : x;
}
}  // namespace

EvalResult evaluate(Model& model, const ImageDataset& ds, int64_t batch_size, torch::Device device,
                    bool channels_last) {
  torch::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  torch::Tensor loss_sum = torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat64).device(device));
  torch::Tensor correct = torch::zeros({}, torch::TensorOptions().dtype(torch::kInt64).device(device));
  for (int64_t begin = 0; begin < ds.size(); begin += batch_size) {
    const int64_t end = std::min(ds.size(), begin + batch_size);
    Batch b = slice_batch(ds, begin, end);
    torch::Tensor x = prepare(b.inputs, device, channels_last);
    torch::Tensor y = b.targets.to(device);
    torch::Tensor logits = model.forward(x);  // [B, classes]
    loss_sum += F::cross_entropy(logits, y, F::CrossEntropyFuncOptions().reduction(torch::kSum)).to(torch::kFloat64);
    correct += logits.argmax(1).eq(y).sum();
  }
  model.train(was_training);
  EvalResult r;
  r.samples = ds.size();
  r.loss = loss_sum.item<double>() / std::max<int64_t>(1, r.samples);
  r.accuracy = 100.0 * static_cast<double>(correct.item<int64_t>()) / std::max<int64_t>(1, r.samples);
  return r;
}

Trainer::Trainer(ExperimentConfig cfg, std::shared_ptr<Model> model, const DataBundle& data, std::string run_dir)
    : cfg_(std::move(cfg)),
      model_(std::move(model)),
      data_(data),
      run_dir_(std::move(run_dir)),
      device_(device_for(cfg_.trainer)) {
  model_->to(device_);
  if (cfg_.trainer.channels_last) to_channels_last(*model_);
  optimizer_ = make_optimizer(cfg_.optimizer, *model_);
}

std::string Trainer::last_checkpoint() const { return (fs::path(run_dir_) / "checkpoints" / "last.pt").string(); }
std::string Trainer::best_checkpoint() const { return (fs::path(run_dir_) / "checkpoints" / "best.pt").string(); }

TrainResult Trainer::fit() {
  const int64_t batch = cfg_.data.batch_size;
  ShardedSampler sampler(data_.train.size(), /*shuffle=*/true, static_cast<uint64_t>(cfg_.experiment.seed));
  const int64_t steps_per_epoch = sampler.per_rank() / batch;  // drop the last partial batch
  QD_CHECK(steps_per_epoch > 0, UserError, "data.batch_size: ", batch, " is larger than the training set (",
           sampler.per_rank(), " samples); lower it or use more data");

  TrainState state;
  state.model = model_.get();
  state.optimizer = optimizer_.get();
  state.device = device_;
  state.epochs = cfg_.trainer.epochs;
  state.steps_per_epoch = steps_per_epoch;

  int64_t start_epoch = 0;
  const bool writes = !run_dir_.empty();
  bool resumed = false;
  if (writes) fs::create_directories(fs::path(run_dir_) / "checkpoints");
  if (writes && cfg_.trainer.resume && fs::exists(last_checkpoint())) {
    const CheckpointMeta meta = load_checkpoint(last_checkpoint(), *model_, optimizer_.get(), hooks_);
    if (cfg_.trainer.channels_last) to_channels_last(*model_);
    start_epoch = meta.epoch;
    state.global_step = meta.global_step;
    best_accuracy_ = meta.best_accuracy;
    resumed = true;
    last_accuracy_ = meta.test_accuracy;
    log_info("resuming from ", last_checkpoint(), " after epoch ", meta.epoch, " (step ", meta.global_step,
             ", best test accuracy ", meta.best_accuracy, "%)");
  }
  if (writes) metrics_ = MetricsLog((fs::path(run_dir_) / "metrics.jsonl").string(), resumed, start_epoch);

  for (auto& h : hooks_) h->on_train_begin(state);
  TrainResult result;
  result.best_accuracy = std::max(0.0, best_accuracy_);
  double samples_seen = 0.0, train_seconds = 0.0;
  for (int64_t epoch = start_epoch; epoch < cfg_.trainer.epochs; ++epoch) {
    state.epoch = epoch;
    state.epoch_metrics.clear();
    for (auto& h : hooks_) h->on_epoch_begin(state);
    double epoch_samples = 0.0, epoch_seconds = 0.0;
    train_epoch(state, epoch_samples, epoch_seconds);
    samples_seen += epoch_samples;
    train_seconds += epoch_seconds;

    const EvalResult ev = evaluate(*model_, data_.test, cfg_.data.eval_batch_size, device_, cfg_.trainer.channels_last);
    for (auto& h : hooks_) h->on_epoch_end(state);
    const bool best = ev.accuracy > best_accuracy_;
    if (best) best_accuracy_ = ev.accuracy;

    nlohmann::json rec = {{"type", "epoch"},
                          {"epoch", epoch + 1},
                          {"step", state.global_step},
                          {"test_loss", ev.loss},
                          {"test_accuracy", ev.accuracy},
                          {"best_test_accuracy", best_accuracy_},
                          {"train_samples_per_second", epoch_samples / std::max(1e-9, epoch_seconds)},
                          {"epoch_seconds", epoch_seconds}};
    for (const auto& [k, v] : state.epoch_metrics) rec[k] = v;
    for (const auto& [k, v] : last_epoch_train_) rec[k] = v;
    metrics_.write(rec);
    log_info("epoch ", epoch + 1, "/", cfg_.trainer.epochs, ": train loss ", last_epoch_train_["train_loss"],
             ", train acc ", last_epoch_train_["train_accuracy"], "%, test loss ", ev.loss, ", test acc ",
             ev.accuracy, "%", best ? " (best)" : "");
    if (writes) checkpoint(state, ev.accuracy, best);
    result.final_accuracy = ev.accuracy;
    result.epochs_completed = epoch + 1;
  }
  result.best_accuracy = std::max(0.0, best_accuracy_);
  result.train_seconds = train_seconds;
  result.samples_per_second = samples_seen / std::max(1e-9, train_seconds);
  if (result.epochs_completed == 0) {  // resumed a finished run: nothing left to train
    result.epochs_completed = start_epoch;
    result.final_accuracy = last_accuracy_;
  }
  return result;
}

void Trainer::train_epoch(TrainState& state, double& samples_seen, double& seconds) {
  const int64_t batch = cfg_.data.batch_size;
  const uint64_t seed = static_cast<uint64_t>(cfg_.experiment.seed);
  ShardedSampler sampler(data_.train.size(), /*shuffle=*/true, seed, state.rank, state.world_size);
  const std::vector<int64_t> indices = sampler.indices(state.epoch);
  const LrSchedule schedule(cfg_.optimizer, cfg_.schedule, state.steps_per_epoch, cfg_.trainer.epochs);
  const auto ce_options = F::CrossEntropyFuncOptions().label_smoothing(cfg_.trainer.label_smoothing);

  model_->train();
  ProgressBar bar(detail::concat("epoch ", state.epoch + 1, "/", state.epochs), state.steps_per_epoch,
                  cfg_.trainer.progress && state.rank == 0, std::max<int64_t>(1, state.steps_per_epoch / 5));
  torch::Tensor loss_sum = torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat64).device(device_));
  torch::Tensor correct = torch::zeros({}, torch::TensorOptions().dtype(torch::kInt64).device(device_));
  std::map<std::string, torch::Tensor> window_terms;  // summed since the last step record
  int64_t window_steps = 0;
  const auto start = std::chrono::steady_clock::now();
  for (int64_t s = 0; s < state.steps_per_epoch; ++s) {
    state.step_in_epoch = s;
    Batch b = gather_batch(data_.train, indices, s * batch, (s + 1) * batch);
    const uint64_t aug_seed = mix_seed(mix_seed(seed, static_cast<uint64_t>(state.epoch)),
                                       static_cast<uint64_t>(s * state.world_size + state.rank));
    state.inputs = prepare(augment_batch(b.inputs, cfg_.data.augment, aug_seed), device_, cfg_.trainer.channels_last);
    state.targets = b.targets.to(device_, /*non_blocking=*/true);
    for (auto& h : hooks_) h->on_step_begin(state);

    const double lr = schedule.lr_at(state.global_step);
    set_lr(*optimizer_, lr);
    state.logits = model_->forward(state.inputs);  // [B, classes]
    state.loss = F::cross_entropy(state.logits, state.targets, ce_options);
    state.loss_terms.clear();
    state.loss_terms["ce"] = state.loss.detach();
    for (auto& h : hooks_) h->on_loss(state);

    optimizer_->zero_grad();
    state.loss.backward();
    for (auto& h : hooks_) h->on_after_backward(state);
    if (cfg_.trainer.grad_clip_norm > 0) torch::nn::utils::clip_grad_norm_(model_->parameters(), cfg_.trainer.grad_clip_norm);
    optimizer_->step();
    ++state.global_step;
    for (auto& h : hooks_) h->on_after_optimizer_step(state);

    const torch::Tensor loss = state.loss.detach();
    loss_sum += loss.to(torch::kFloat64) * static_cast<double>(b.size());
    correct += state.logits.detach().argmax(1).eq(state.targets).sum();
    window_terms["loss"] = window_terms.count("loss") ? window_terms["loss"] + loss : loss;
    for (const auto& [k, v] : state.loss_terms)
      window_terms["loss_" + k] = window_terms.count("loss_" + k) ? window_terms["loss_" + k] + v : v;
    ++window_steps;
    if (state.global_step % cfg_.trainer.log_every == 0) {
      nlohmann::json rec = {{"type", "step"}, {"epoch", state.epoch + 1}, {"step", state.global_step}, {"lr", lr}};
      for (const auto& [k, v] : window_terms) rec[k] = v.item<double>() / window_steps;
      metrics_.write(rec);
      window_terms.clear();
      window_steps = 0;
    }
    const int64_t done = s + 1;
    std::string extra;
    if (done % 20 == 0 || done == state.steps_per_epoch)
      extra = detail::concat("loss ", loss_sum.item<double>() / (done * batch));
    bar.update(done, done * batch * state.world_size, extra);
  }
  seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double n = static_cast<double>(state.steps_per_epoch * batch);
  samples_seen = n * state.world_size;
  last_epoch_train_["train_loss"] = loss_sum.item<double>() / n;
  last_epoch_train_["train_accuracy"] = 100.0 * static_cast<double>(correct.item<int64_t>()) / n;
  bar.finish(detail::concat("loss ", last_epoch_train_["train_loss"], " acc ", last_epoch_train_["train_accuracy"], "%"));
}

void Trainer::checkpoint(const TrainState& state, double accuracy, bool best) {
  CheckpointMeta meta;
  meta.epoch = state.epoch + 1;
  meta.global_step = state.global_step;
  meta.test_accuracy = accuracy;
  meta.best_accuracy = best_accuracy_;
  save_checkpoint(last_checkpoint(), *model_, optimizer_.get(), meta, hooks_);
  if (best) write_file_atomic(best_checkpoint(), read_file(last_checkpoint()));
}

}  // namespace qd
