#include "trainer/trainer.h"

#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "common/atomic_file.h"
#include "common/error.h"
#include "common/log.h"
#include "common/progress.h"
#include "data/augment.h"
#include "data/sampler.h"
#include "common/checkpoint.h"
#include "trainer/precision.h"

namespace qd {

namespace fs = std::filesystem;
namespace F = torch::nn::functional;

namespace {
torch::Tensor prepare(torch::Tensor x, torch::Device device, bool channels_last) {
  x = x.to(device, /*non_blocking=*/true);
  return channels_last ? x.contiguous(torch::MemoryFormat::ChannelsLast) : x;
}

torch::Tensor scalar(torch::ScalarType t, torch::Device d) { return torch::zeros({}, torch::TensorOptions().dtype(t).device(d)); }

// The 2-norm of all gradients together, computed as clip_grad_norm_ does, left on their device.
torch::Tensor gradient_norm(const std::vector<torch::Tensor>& params) {
  std::vector<torch::Tensor> norms;
  for (const auto& p : params)
    if (p.grad().defined()) norms.push_back(p.grad().detach().norm(2));
  if (norms.empty()) return torch::zeros({}, torch::kFloat32);
  return norms.size() == 1 ? norms[0] : torch::stack(norms).norm(2);
}

// clip_grad_norm_'s scaling, given the norm above: the same bits, without its host sync.
void clip_gradients(const std::vector<torch::Tensor>& params, const torch::Tensor& norm, double max_norm) {
  torch::NoGradGuard no_grad;
  const torch::Tensor coef = torch::clamp(max_norm / (norm + 1e-6), std::nullopt, 1.0);
  for (const auto& p : params)
    if (p.grad().defined()) p.grad().mul_(coef);
}
}  // namespace

torch::Device select_device(const TrainerConfig& cfg, const LaunchInfo& launch) {
  if (cfg.device == DeviceKind::kCpu) return torch::kCPU;
  QD_CHECK(torch::cuda::is_available(), UserError,
           "trainer.device: cuda, but no CUDA device is visible (torch::cuda::is_available() is false); "
           "use --set trainer.device=cpu or run on a GPU machine");
  const int gpus = static_cast<int>(torch::cuda::device_count());
  QD_CHECK(launch.local_size <= gpus, UserError, "mpirun started ", launch.local_size,
           " ranks on this node but it has only ", gpus, " GPU(s); start at most ", gpus,
           " ranks per node (mpirun -npernode ", gpus, ")");
  return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(launch.local_rank));
}

EvalResult evaluate(Model& model, const ImageDataset& ds, int64_t batch_size, torch::Device device,
                    bool channels_last, Communicator* comm) {
  torch::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  const int world = comm ? comm->world_size() : 1, rank = comm ? comm->rank() : 0;
  const int64_t lo = ds.size() * rank / world, hi = ds.size() * (rank + 1) / world;  // this rank's shard
  torch::Tensor loss_sum = scalar(torch::kFloat64, device);
  torch::Tensor correct = scalar(torch::kFloat64, device);
  for (int64_t begin = lo; begin < hi; begin += batch_size) {
    const int64_t end = std::min(hi, begin + batch_size);
    Batch b = slice_batch(ds, begin, end);
    torch::Tensor x = prepare(b.inputs, device, channels_last);
    torch::Tensor y = b.targets.to(device);
    torch::Tensor logits = model.forward(x);  // [B, classes]
    loss_sum += F::cross_entropy(logits, y, F::CrossEntropyFuncOptions().reduction(torch::kSum)).to(torch::kFloat64);
    correct += logits.argmax(1).eq(y).sum().to(torch::kFloat64);
  }
  torch::Tensor sums = torch::stack({loss_sum, correct});  // [2]
  if (world > 1) all_reduce_now(*comm, sums);
  sums = sums.cpu();
  model.train(was_training);
  EvalResult r;
  r.samples = ds.size();
  r.loss = sums[0].item<double>() / std::max<int64_t>(1, r.samples);
  r.accuracy = 100.0 * sums[1].item<double>() / std::max<int64_t>(1, r.samples);
  return r;
}

Trainer::Trainer(ExperimentConfig cfg, std::shared_ptr<Model> model, const DataBundle& data, std::string run_dir,
                 std::shared_ptr<Communicator> comm)
    : Trainer(cfg, std::move(model), make_image_task(cfg, data), std::move(run_dir), std::move(comm)) {}

Trainer::Trainer(ExperimentConfig cfg, std::shared_ptr<Model> model, std::shared_ptr<Task> task, std::string run_dir,
                 std::shared_ptr<Communicator> comm)
    : cfg_(std::move(cfg)),
      model_(std::move(model)),
      task_(std::move(task)),
      run_dir_(std::move(run_dir)),
      comm_(comm ? std::move(comm) : std::make_shared<LocalCommunicator>()),
      device_(select_device(cfg_.trainer, comm_->world_size() > 1 ? mpi_runtime() : LaunchInfo{})) {
  model_->to(device_);
  if (cfg_.trainer.channels_last) to_channels_last(*model_);
  broadcast_parameters(model_->parameters(), model_->buffers());
  if (comm_->world_size() > 1 && cfg_.parallel.sync_bn) {
    std::shared_ptr<Communicator> c = comm_;
    const int layers = set_batchnorm_all_reduce(*model_, [c](torch::Tensor& t) { all_reduce_now(*c, t); });
    log_info("sync_bn: ", layers, " BatchNorm layers reduce batch statistics over ", c->world_size(), " ranks");
  }
  best_accuracy_ = task_->no_score();
}

// Every rank starts from rank 0's values.
void Trainer::broadcast_parameters(const std::vector<torch::Tensor>& params, const std::vector<torch::Tensor>& buffers) {
  if (comm_->world_size() == 1) return;
  torch::NoGradGuard no_grad;
  for (const auto* list : {&params, &buffers}) {
    for (const auto& t : *list) {
      torch::Tensor flat = t.detach().contiguous();
      comm_->broadcast(flat, 0);
      if (flat.data_ptr() != t.data_ptr()) t.detach().copy_(flat);
    }
  }
}

// The optimizer and the gradient reducer cover the model and the hooks' own parameters, so
// they are built once the hooks have set up (on_train_begin).
void Trainer::build_optimizer() {
  std::vector<torch::Tensor> params = model_->parameters();
  std::vector<torch::Tensor> hook_params;
  for (auto& h : hooks_)
    for (auto& p : h->parameters()) hook_params.push_back(p);
  broadcast_parameters(hook_params, {});
  params.insert(params.end(), hook_params.begin(), hook_params.end());
  optimizer_ = make_optimizer(cfg_.optimizer, params);
  if (comm_->world_size() > 1) {
    GradReducerOptions ro;
    ro.bucket_bytes = static_cast<int64_t>(cfg_.parallel.bucket_mb * (1 << 20));
    ro.first_bucket_bytes = static_cast<int64_t>(cfg_.parallel.first_bucket_mb * (1 << 20));
    reducer_ = std::make_unique<GradReducer>(params, comm_, ro);
  }
}

std::string Trainer::last_checkpoint() const { return (fs::path(run_dir_) / "checkpoints" / "last.pt").string(); }
std::string Trainer::best_checkpoint() const { return (fs::path(run_dir_) / "checkpoints" / "best.pt").string(); }

// Rank 0 reads last.pt and broadcasts its bytes, so ranks on other nodes need no shared
// filesystem. Returns whether a checkpoint was loaded.
bool Trainer::resume_from_checkpoint(TrainState& state) {
  if (run_dir_.empty() || !cfg_.trainer.resume) return false;
  std::string bytes;
  torch::Tensor size = torch::zeros({1}, torch::kInt64);
  if (comm_->rank() == 0 && fs::exists(last_checkpoint())) {
    bytes = read_file(last_checkpoint());
    size[0] = static_cast<int64_t>(bytes.size());
  }
  comm_->broadcast(size, 0);
  const int64_t n = size[0].item<int64_t>();
  if (n == 0) return false;
  torch::Tensor buf = torch::empty({n}, torch::kUInt8);
  if (comm_->rank() == 0) std::memcpy(buf.data_ptr(), bytes.data(), static_cast<size_t>(n));
  comm_->broadcast(buf, 0);
  const CheckpointMeta meta =
      load_checkpoint_bytes(reinterpret_cast<const char*>(buf.data_ptr()), static_cast<size_t>(n), last_checkpoint(),
                            *model_, optimizer_.get(), hooks_);
  state.global_step = meta.global_step;
  best_accuracy_ = meta.best_accuracy;
  last_accuracy_ = meta.test_accuracy;
  resume_step_ = meta.step_in_epoch;
  resume_sums_ = meta.epoch_sums;
  const bool has_best = meta.best_accuracy > task_->no_score();
  if (resume_step_ > 0)
    log_info("resuming from ", last_checkpoint(), " inside epoch ", meta.epoch + 1, " after step ", resume_step_,
             " of it (global step ", meta.global_step, ")");
  else
    log_info("resuming from ", last_checkpoint(), " after epoch ", meta.epoch, " (step ", meta.global_step,
             has_best ? concat(", best score ", meta.best_accuracy, ")") : std::string(", no epoch eligible for best.pt yet)"));
  state.epoch = meta.epoch;
  return true;
}

TrainResult Trainer::fit() {
  fit_start_ = std::chrono::steady_clock::now();
  const int64_t micro = cfg_.data.batch_size;
  const int64_t accum = cfg_.trainer.accumulate_steps;
  ShardedSampler sampler(task_->train_size(), /*shuffle=*/true, static_cast<uint64_t>(cfg_.experiment.seed),
                         comm_->rank(), comm_->world_size());
  const int64_t steps_per_epoch = sampler.per_rank() / (micro * accum);  // drop the last partial step
  QD_CHECK(steps_per_epoch > 0, UserError, "data.batch_size ", micro, " x trainer.accumulate_steps ", accum,
           " is larger than this rank's share of the training set (", sampler.per_rank(),
           " samples); lower them or use more data");

  TrainState state;
  state.model = model_.get();
  state.device = device_;
  state.comm = comm_.get();
  state.rank = comm_->rank();
  state.world_size = comm_->world_size();
  state.epochs = cfg_.trainer.epochs;
  state.steps_per_epoch = steps_per_epoch;

  guard_ = DivergenceGuard(cfg_.trainer.divergence_factor);  // a resumed run averages afresh
  if (cfg_.trainer.precision == Precision::kFp16 && !scaler_) {
    // Its state is checkpointed with the hooks' (resume_from_checkpoint below reads it back).
    scaler_ = std::make_shared<LossScaler>(cfg_.trainer.loss_scale_growth_interval);
    hooks_.push_back(scaler_);
  }
  for (auto& h : hooks_) h->on_train_begin(state);
  build_optimizer();
  state.optimizer = optimizer_.get();

  if (is_writer()) fs::create_directories(fs::path(run_dir_) / "checkpoints");
  const bool resumed = resume_from_checkpoint(state);
  const int64_t start_epoch = resumed ? state.epoch : 0;
  QD_CHECK(resume_step_ < steps_per_epoch, UserError, last_checkpoint(), ": a checkpoint from step ", resume_step_,
           " of an epoch of ", steps_per_epoch, " steps: the data or batch settings changed since it was written; "
           "resume with the settings of config.resolved.yaml");
  if (is_writer())
    metrics_ = MetricsLog((fs::path(run_dir_) / "metrics.jsonl").string(), resumed, start_epoch,
                          resume_step_ > 0 ? state.global_step : -1);
  last_save_ = std::chrono::steady_clock::now();

  TrainResult result;
  double samples_seen = 0.0, train_seconds = 0.0;
  for (int64_t epoch = start_epoch; epoch < cfg_.trainer.epochs; ++epoch) {
    state.epoch = epoch;
    state.epoch_metrics.clear();
    for (auto& h : hooks_) h->on_epoch_begin(state);
    double epoch_samples = 0.0, epoch_seconds = 0.0;
    const int64_t first_step = epoch == start_epoch ? resume_step_ : 0;
    train_epoch(state, first_step, epoch_samples, epoch_seconds);
    samples_seen += epoch_samples;
    train_seconds += epoch_seconds;

    // BatchNorm running statistics are per rank; the model every rank evaluates (and rank 0
    // saves) uses rank 0's, as DDP's broadcast_buffers does.
    broadcast_parameters({}, model_->buffers());
    const TaskMetrics ev = task_->evaluate(*model_, device_, comm_.get(), /*held_out_test=*/false);
    for (auto& h : hooks_) h->on_epoch_end(state);
    const bool best = epoch >= state.best_from_epoch && ev.score > best_accuracy_;
    if (best) best_accuracy_ = ev.score;

    nlohmann::json rec = {{"type", "epoch"}, {"epoch", epoch + 1}, {"step", state.global_step}};
    for (const auto& [k, v] : ev.values) rec[k] = v;
    task_->add_best(rec, best_accuracy_);
    rec["train_samples_per_second"] = epoch_samples / std::max(1e-9, epoch_seconds);
    if (task_->units_per_example() > 1)
      rec["train_tokens_per_second"] = epoch_samples * task_->units_per_example() / std::max(1e-9, epoch_seconds);
    rec["epoch_seconds"] = epoch_seconds;
    rec["seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - fit_start_).count();
    rec["world_size"] = comm_->world_size();
    if (cfg_.trainer.on_divergence == OnDivergence::kSkipStep) rec["skipped_steps"] = skipped_steps_;
    skipped_steps_ = 0;
    if (scaler_) {
      rec["amp_skipped_steps"] = amp_skipped_steps_;
      rec["loss_scale"] = scaler_->scale();
    }
    amp_skipped_steps_ = 0;
    rec["eval_split"] = ev.split;
    for (const auto& [k, v] : state.epoch_metrics) rec[k] = v;
    for (const auto& [k, v] : last_epoch_train_) rec[k] = v;
    metrics_.write(rec);
    std::string train_line;
    for (const auto& [k, v] : last_epoch_train_) train_line += concat(train_line.empty() ? "" : ", ", k, " ", v);
    if (task_->name() == "image_classification")  // the line users of the image pipeline know
      train_line = concat("train loss ", last_epoch_train_["train_loss"], ", train acc ", last_epoch_train_["train_accuracy"], "%");
    log_info("epoch ", epoch + 1, "/", cfg_.trainer.epochs, ": ", train_line, ", ", ev.line, best ? " (best)" : "");
    if (is_writer()) checkpoint(state, ev.score, best);
    result.final_accuracy = ev.score;
    result.final_metrics = ev.values;
    result.epochs_completed = epoch + 1;
  }
  if (result.epochs_completed == 0) {  // resumed a finished run: nothing left to train
    result.epochs_completed = start_epoch;
    result.final_accuracy = last_accuracy_;
  }
  result.best_score = best_accuracy_;
  result.best_accuracy = std::max(0.0, best_accuracy_);
  result.train_seconds = train_seconds;
  result.samples_per_second = samples_seen / std::max(1e-9, train_seconds);
  return result;
}

torch::Tensor Trainer::mean_over_ranks(const TrainState& state, const torch::Tensor& step_loss) {
  torch::Tensor l = step_loss.detach().to(torch::kFloat64).reshape({1}).clone();
  if (state.world_size > 1) all_reduce_now(*comm_, l);  // every rank decides alike
  return l / static_cast<double>(state.world_size);
}

bool Trainer::step_is_sound(const TrainState& state, double loss, double grad_norm, double lr) {
  const std::string why = guard_.check(loss, grad_norm);
  if (why.empty()) {
    consecutive_skips_ = 0;
    return true;
  }
  const TrainerConfig& t = cfg_.trainer;
  const int64_t step = state.global_step + 1;
  const bool skip = t.on_divergence == OnDivergence::kSkipStep;
  if (skip && consecutive_skips_ + 1 < DivergenceGuard::kMaxConsecutiveSkips) {
    ++consecutive_skips_;
    ++skipped_steps_;
    log_warn("step ", step, ": ", why, "; skipped (trainer.on_divergence: skip_step)");
    return false;
  }
  std::string saved = "no checkpoint was written";
  if (!run_dir_.empty() && fs::exists(last_checkpoint()))
    saved = concat(last_checkpoint(), " is as it was before this step (resume from it with --resume after a change)");
  throw Error(concat("training diverged at step ", step, " (epoch ", state.epoch + 1, "): ", why,
                     skip ? concat(", the ", DivergenceGuard::kMaxConsecutiveSkips, "th step in a row") : std::string(),
                     "; the run stops and ", saved, ". Try a lower optimizer.lr (this step's: ", lr,
                     "), a gradient clip (trainer.grad_clip_norm: ",
                     t.grad_clip_norm > 0 ? concat(t.grad_clip_norm) : std::string("off; e.g. 1.0"), ")",
                     skip ? "" : ", or trainer.on_divergence: skip_step to skip such steps",
                     " (trainer.divergence_factor: 0 turns off the factor test)"));
}

void Trainer::train_epoch(TrainState& state, int64_t first_step, double& samples_seen, double& seconds) {
  const int64_t micro = cfg_.data.batch_size;
  const int64_t accum = cfg_.trainer.accumulate_steps;
  const uint64_t seed = static_cast<uint64_t>(cfg_.experiment.seed);
  const std::vector<int64_t> indices =
      ShardedSampler(task_->train_size(), /*shuffle=*/true, seed, state.rank, state.world_size).indices(state.epoch);
  const LrSchedule schedule(cfg_.optimizer, cfg_.schedule, state.steps_per_epoch, cfg_.trainer.epochs);
  const int64_t global_batch = micro * accum * state.world_size;

  model_->train();
  ProgressBar bar(concat("epoch ", state.epoch + 1, "/", state.epochs), state.steps_per_epoch,
                  cfg_.trainer.progress && state.rank == 0, std::max<int64_t>(1, state.steps_per_epoch / 5));
  // [loss * units, correct, units] over this rank's samples (trainer/task.h). A resumed epoch
  // starts from the statistics of its steps before the checkpoint (all ranks' sums, held by rank 0).
  torch::Tensor sums = torch::zeros({kTrainSums}, torch::TensorOptions().dtype(torch::kFloat64).device(device_));
  if (first_step > 0 && state.rank == 0 && resume_sums_.size() == static_cast<size_t>(kTrainSums))
    sums.copy_(torch::tensor(resume_sums_, torch::kFloat64));
  std::map<std::string, torch::Tensor> window;  // loss terms summed since the last step record
  int64_t window_micro = 0;
  const auto start = std::chrono::steady_clock::now();
  for (int64_t s = first_step; s < state.steps_per_epoch; ++s) {
    state.step_in_epoch = s;
    const double lr = schedule.lr_at(state.global_step);
    set_lr(*optimizer_, lr);
    if (reducer_) reducer_->zero_grad();
    else optimizer_->zero_grad();

    torch::Tensor step_loss;  // summed over this step's micro-batches
    for (int64_t m = 0; m < accum; ++m) {
      const int64_t first = (s * accum + m) * micro;
      state.sample_indices.assign(indices.begin() + first, indices.begin() + first + micro);
      task_->load_batch(state, indices, first, first + micro);
      {
        // The forward passes (the student's, the teacher's in KD hooks) and the losses under
        // trainer.precision; backward follows the types the forward chose.
        AutocastScope autocast(cfg_.trainer.precision, device_);
        for (auto& h : hooks_) h->on_step_begin(state);
        state.loss = task_->forward_loss(*model_, state);
        state.loss_terms.clear();
        state.loss_terms["ce"] = state.loss.detach();
        for (auto& h : hooks_) h->on_loss(state);
      }

      if (reducer_) reducer_->prepare(/*sync=*/m == accum - 1);
      torch::Tensor to_backward = accum > 1 ? state.loss / static_cast<double>(accum) : state.loss;
      if (scaler_) to_backward = to_backward * scaler_->scale();  // fp16: gradients above its underflow
      to_backward.backward();

      const torch::Tensor loss = state.loss.detach();
      step_loss = m == 0 ? loss.to(torch::kFloat64) : step_loss + loss.to(torch::kFloat64);
      task_->accumulate(state, loss, sums);
      window["loss"] = window.count("loss") ? window["loss"] + loss : loss;
      for (const auto& [k, v] : state.loss_terms)
        window["loss_" + k] = window.count("loss_" + k) ? window["loss_" + k] + v : v;
      ++window_micro;
    }
    if (reducer_) reducer_->finalize();
    for (auto& h : hooks_) h->on_after_backward(state);
    std::vector<torch::Tensor> all;
    for (auto& g : optimizer_->param_groups()) all.insert(all.end(), g.params().begin(), g.params().end());
    const torch::Tensor mean_loss = mean_over_ranks(state, step_loss / static_cast<double>(accum));
    // fp16: gradients back to their true size; an overflow skips the step and halves the scale (a
    // loss that is itself not finite is the divergence guard's, below).
    const bool overflow = scaler_ && !scaler_->unscale_and_update(all);
    // The global gradient norm (the same on every rank after the all-reduce), before clipping; it
    // and the loss reach the host in one copy, the step's only sync in fp32 and bf16.
    const torch::Tensor norm = gradient_norm(all);
    const torch::Tensor health = torch::cat({mean_loss, norm.to(torch::kFloat64).reshape({1})}).cpu();
    const double loss_value = health[0].item<double>(), grad_norm = health[1].item<double>();
    bool take_step = true;
    if (overflow && std::isfinite(loss_value)) {
      ++amp_skipped_steps_;
      take_step = false;
    } else {
      take_step = step_is_sound(state, loss_value, grad_norm, lr);
    }
    if (take_step && cfg_.trainer.grad_clip_norm > 0) clip_gradients(all, norm, cfg_.trainer.grad_clip_norm);
    if (take_step) optimizer_->step();
    ++state.global_step;
    for (auto& h : hooks_) h->on_after_optimizer_step(state);

    if (state.global_step % cfg_.trainer.log_every == 0) {
      nlohmann::json rec = {{"type", "step"}, {"epoch", state.epoch + 1}, {"step", state.global_step}, {"lr", lr}};
      for (const auto& [k, v] : window) rec[k] = v.item<double>() / window_micro;  // rank 0's view
      metrics_.write(rec);
      window.clear();
      window_micro = 0;
    }
    const int64_t done = s + 1;
    const int64_t every = cfg_.trainer.eval_every_steps;
    if (every > 0 && state.global_step % every == 0 && done < state.steps_per_epoch) {
      // A point of the learning curve; evaluation draws no random numbers, so training goes on as before.
      const TaskMetrics ev = task_->evaluate(*model_, device_, comm_.get(), /*held_out_test=*/false);
      model_->train();
      nlohmann::json rec = {{"type", "eval"}, {"epoch", state.epoch + 1}, {"step", state.global_step},
                            {"seconds", std::chrono::duration<double>(std::chrono::steady_clock::now() - fit_start_).count()},
                            {"eval_split", ev.split}};
      for (const auto& [k, v] : ev.values) rec[k] = v;
      metrics_.write(rec);
      log_info("step ", state.global_step, ": ", ev.line);
    }
    if (done < state.steps_per_epoch && mid_epoch_checkpoint_due(state)) checkpoint_mid_epoch(state, done, sums);
    std::string extra;
    if (state.rank == 0 && (done % 20 == 0 || done == state.steps_per_epoch))
      extra = concat("loss ", (sums[0] / sums[2]).item<double>());
    bar.update(done, done * global_batch, extra);
    if (after_step) after_step(state);
  }
  seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // Epoch training statistics over all ranks' samples.
  if (state.world_size > 1) all_reduce_now(*comm_, sums);
  samples_seen = static_cast<double>((state.steps_per_epoch - first_step) * global_batch);
  last_epoch_train_ = task_->train_metrics(sums);
  std::string line;
  for (const auto& [k, v] : last_epoch_train_) line += concat(line.empty() ? "" : " ", k.substr(k.find('_') + 1), " ", v);
  if (task_->name() == "image_classification")
    line = concat("loss ", last_epoch_train_["train_loss"], " acc ", last_epoch_train_["train_accuracy"], "%");
  bar.finish(line);
}

bool Trainer::mid_epoch_checkpoint_due(const TrainState& state) {
  if (run_dir_.empty()) return false;
  const TrainerConfig& t = cfg_.trainer;
  bool due = t.checkpoint_every_steps > 0 && state.global_step % t.checkpoint_every_steps == 0;
  if (t.checkpoint_every_minutes > 0) {
    // The clock is rank 0's: every rank must take the same decision (the statistics are all-reduced).
    const double minutes = std::chrono::duration<double>(std::chrono::steady_clock::now() - last_save_).count() / 60.0;
    torch::Tensor flag = torch::tensor({static_cast<int64_t>(minutes >= t.checkpoint_every_minutes)}, torch::kInt64);
    if (state.world_size > 1) comm_->broadcast(flag, 0);
    due = due || flag.item<int64_t>() != 0;
  }
  return due;
}

void Trainer::checkpoint_mid_epoch(const TrainState& state, int64_t done, const torch::Tensor& sums) {
  torch::Tensor all = sums.clone();
  if (state.world_size > 1) all_reduce_now(*comm_, all);
  last_save_ = std::chrono::steady_clock::now();
  if (!is_writer()) return;
  all = all.cpu().contiguous();
  CheckpointMeta meta;
  meta.epoch = state.epoch;  // whole epochs before this one
  meta.global_step = state.global_step;
  meta.test_accuracy = last_accuracy_;
  meta.best_accuracy = best_accuracy_;
  meta.step_in_epoch = done;
  meta.epoch_sums.assign(all.data_ptr<double>(), all.data_ptr<double>() + all.numel());
  save_checkpoint(last_checkpoint(), *model_, optimizer_.get(), meta, hooks_);
}

void Trainer::checkpoint(const TrainState& state, double accuracy, bool best) {
  CheckpointMeta meta;
  meta.epoch = state.epoch + 1;
  meta.global_step = state.global_step;
  meta.test_accuracy = accuracy;
  meta.best_accuracy = best_accuracy_;
  save_checkpoint(last_checkpoint(), *model_, optimizer_.get(), meta, hooks_);
  last_save_ = std::chrono::steady_clock::now();
  if (best) write_file_atomic(best_checkpoint(), read_file(last_checkpoint()));
}

}  // namespace qd
