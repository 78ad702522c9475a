#include "parallel/grad_reducer.h"

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include "common/error.h"

namespace qd {

namespace {
// Runs after AccumulateGrad has added this backward's gradient into param.grad.
class ReadyHook : public torch::autograd::FunctionPostHook {
 public:
  ReadyHook(std::function<void()> fn) : fn_(std::move(fn)) {}
  torch::autograd::variable_list operator()(const torch::autograd::variable_list& outputs,
                                            const torch::autograd::variable_list&) override {
    fn_();
    return outputs;
  }

 private:
  std::function<void()> fn_;
};
}  // namespace

GradReducer::GradReducer(std::vector<torch::Tensor> params, std::shared_ptr<Communicator> comm,
                         GradReducerOptions opts)
    : comm_(std::move(comm)) {
  for (auto& p : params)
    if (p.requires_grad()) params_.push_back(p);
  bucket_of_.assign(params_.size(), 0);
  ready_.assign(params_.size(), 0);

  // Reverse registration order: the classifier's gradients come first in backward.
  Bucket cur;
  int64_t cur_bytes = 0, cur_numel = 0;
  auto close = [&] {
    if (cur.params.empty()) return;
    const auto& p0 = params_[cur.params.front()];
    cur.flat = torch::zeros({cur_numel}, p0.options());
    buckets_.push_back(std::move(cur));
    cur = Bucket{};
    cur_bytes = cur_numel = 0;
  };
  for (size_t k = params_.size(); k-- > 0;) {
    const auto& p = params_[k];
    const int64_t cap = buckets_.empty() ? opts.first_bucket_bytes : opts.bucket_bytes;
    const bool type_change = !cur.params.empty() && (params_[cur.params.front()].dtype() != p.dtype() ||
                                                     params_[cur.params.front()].device() != p.device());
    if (type_change || (!cur.params.empty() && cur_bytes + p.numel() * p.element_size() > cap)) close();
    cur.params.push_back(k);
    cur.offsets.push_back(cur_numel);
    bucket_of_[k] = buckets_.size();
    cur_numel += p.numel();
    cur_bytes += p.numel() * static_cast<int64_t>(p.element_size());
  }
  close();

  attach_grad_views();
  for (size_t k = 0; k < params_.size(); ++k) {
    auto acc = torch::autograd::impl::grad_accumulator(params_[k]);
    hook_keys_.push_back(acc->add_post_hook(std::make_unique<ReadyHook>([this, k] { on_grad_ready(k); })));
    accumulators_.push_back(std::move(acc));  // the autograd meta only holds a weak reference
  }
}

GradReducer::~GradReducer() {
  for (size_t k = 0; k < accumulators_.size(); ++k) accumulators_[k]->del_post_hook(hook_keys_[k]);
  for (auto& b : buckets_)
    if (b.work) b.work->wait();
}

void GradReducer::attach_grad_views() {
  for (auto& b : buckets_) {
    for (size_t i = 0; i < b.params.size(); ++i) {
      torch::Tensor& p = params_[b.params[i]];
      // Same strides as the parameter (channels-last weights get channels-last gradients), so
      // the accumulation into the view needs no layout conversion.
      torch::Tensor view = p.is_non_overlapping_and_dense()
                               ? b.flat.as_strided(p.sizes(), p.strides(), b.offsets[i])
                               : b.flat.narrow(0, b.offsets[i], p.numel()).view(p.sizes());
      const auto& g = p.grad();
      if (!g.defined() || g.data_ptr() != view.data_ptr()) p.mutable_grad() = view;
    }
  }
}

void GradReducer::zero_grad() {
  for (auto& b : buckets_) {
    if (b.work) b.work->wait(), b.work.reset();
    b.flat.zero_();
  }
  attach_grad_views();  // someone may have set .grad to None (Optimizer::zero_grad does)
}

void GradReducer::prepare(bool sync) {
  std::lock_guard<std::mutex> lock(mu_);
  attach_grad_views();
  sync_ = sync && comm_->world_size() > 1;
  std::fill(ready_.begin(), ready_.end(), 0);
  for (auto& b : buckets_) b.pending = b.params.size();
  next_launch_ = 0;
  launched_in_backward_ = 0;
  prepared_ = true;
}

void GradReducer::on_grad_ready(size_t k) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!prepared_ || ready_[k]) return;
  ready_[k] = 1;
  Bucket& b = buckets_[bucket_of_[k]];
  if (--b.pending == 0 && sync_) launch_ready_buckets(false);
  // Drive MPI progress of earlier buckets while backward runs.
  for (size_t i = 0; i < next_launch_; ++i)
    if (buckets_[i].work) buckets_[i].work->test();
}

void GradReducer::launch_ready_buckets(bool all) {
  while (next_launch_ < buckets_.size() && (all || buckets_[next_launch_].pending == 0)) {
    Bucket& b = buckets_[next_launch_++];
    b.work = comm_->all_reduce(b.flat, ReduceOp::kSum);
    if (!all) ++launched_in_backward_;
  }
}

void GradReducer::finalize() {
  std::unique_lock<std::mutex> lock(mu_);
  QD_CHECK(prepared_, Error, "GradReducer::finalize() without prepare()");
  prepared_ = false;
  if (!sync_) return;
  // Parameters that got no gradient this step (unused branches) still take part, with zeros,
  // so every rank launches every bucket.
  launch_ready_buckets(true);
  lock.unlock();
  const double inv = 1.0 / comm_->world_size();
  for (auto& b : buckets_) {
    b.work->wait();
    b.work.reset();
    b.flat.mul_(inv);
  }
}

}  // namespace qd
