// Observer synchronisation on 2 MPI ranks: each rank sees different activations, and after the
// per-step all-reduce both ranks hold identical scales, equal to those of the union of the data.
#include <gtest/gtest.h>

#include "parallel/mpi_communicator.h"
#include "qat/fake_quantize.h"
#include "models/llama.h"
#include "qat/module_qat.h"
#include "qat/qat_hook.h"

namespace qd {
namespace {

std::shared_ptr<MpiCommunicator> comm() {
  static auto c = std::make_shared<MpiCommunicator>(60.0);
  return c;
}

FakeQuantize make(ObserverKind kind, bool per_channel) {
  FakeQuantizeOptions o;
  o.spec.symmetric = false;
  o.spec.per_channel = per_channel;
  o.spec.axis = 1;
  o.spec.observer = kind;
  o.spec.momentum = 0.5;
  o.channels = 3;
  FakeQuantize fq(o);
  fq->set_enabled(true);
  fq->set_observing(true);
  fq->train();
  return fq;
}

// Both ranks' copies of `t` are equal.
bool same_on_all_ranks(const torch::Tensor& t) {
  torch::Tensor hi = t.to(torch::kFloat64).clone(), lo = -t.to(torch::kFloat64);
  all_reduce_now(*comm(), hi, ReduceOp::kMax);
  all_reduce_now(*comm(), lo, ReduceOp::kMax);
  return torch::equal(hi, -lo);
}

TEST(QatSync, RanksGetIdenticalScalesFromTheUnionOfTheirData) {
  auto c = comm();
  ASSERT_EQ(c->world_size(), 2) << "run under mpiexec -n 2";
  const int r = c->rank();
  std::vector<FakeQuantize> fqs = {make(ObserverKind::kMinMax, false), make(ObserverKind::kMovingAverage, false),
                                   make(ObserverKind::kMovingAverage, true), make(ObserverKind::kPercentile, false)};
  // Rank 0 sees [-1, 2], rank 1 sees [-3, 1] (per channel c: scaled by c + 1).
  for (int step = 0; step < 3; ++step) {
    torch::manual_seed(100 * step + r);
    torch::Tensor x = torch::rand({8, 3, 4, 4}) * (r == 0 ? 3.0 : 4.0) - (r == 0 ? 1.0 : 3.0);
    x = x * torch::tensor({1.0f, 2.0f, 3.0f}).view({1, 3, 1, 1});
    for (auto& f : fqs) f(x);
    QatHook::sync_observers(fqs, c.get(), c->world_size());
    for (size_t i = 0; i < fqs.size(); ++i) {
      ASSERT_TRUE(fqs[i]->initialized());
      EXPECT_TRUE(same_on_all_ranks(fqs[i]->scale)) << "quantizer " << i << " step " << step;
      EXPECT_TRUE(same_on_all_ranks(fqs[i]->zero_point)) << "quantizer " << i << " step " << step;
      EXPECT_TRUE(same_on_all_ranks(fqs[i]->running_min)) << "quantizer " << i << " step " << step;
    }
  }
  // Min-max over both ranks: the union's extremes (rank 1's min, rank 0's max).
  EXPECT_LT(fqs[0]->running_min.item<float>(), -2.5f * 3);
  EXPECT_GT(fqs[0]->running_max.item<float>(), 1.5f * 3);
  // Without the sync each rank would have only its own range.
  FakeQuantize local = make(ObserverKind::kMinMax, false);
  torch::manual_seed(r);
  local(torch::rand({8, 3, 4, 4}) * (r == 0 ? 3.0 : 4.0) - (r == 0 ? 1.0 : 3.0));
  QatHook::sync_observers({local}, nullptr, 1);
  EXPECT_FALSE(same_on_all_ranks(local->scale));
}

// The twins that QAT attaches to a transformer's Linear layers carry their static input observers
// as FakeQuantize modules: QatHook's one collective per step covers them like the CNN's, so two
// ranks fed different tokens end with identical input scales on every layer.
TEST(QatSync, TransformerLayerTwinsShareTheirInputScales) {
  auto c = comm();
  ASSERT_EQ(c->world_size(), 2) << "run under mpiexec -n 2";
  LlamaOptions o;
  o.vocab = 64, o.hidden = 32, o.layers = 1, o.heads = 4, o.kv_heads = 2, o.ffn = 64, o.max_positions = 16;
  torch::manual_seed(5);  // the same weights on both ranks
  Llama m(o);
  QatConfig cfg;
  cfg.enabled = true;
  ASSERT_EQ(attach_qat(*m, cfg), 8);
  std::vector<FakeQuantize> fqs = fake_quantizers(*m);
  for (auto& f : fqs) f->set_enabled(true), f->set_observing(true);
  for (auto& t : layer_qats(*m)) t->set_enabled(true);
  m->train();
  int64_t inputs = 0;
  for (int step = 0; step < 2; ++step) {
    torch::manual_seed(10 * step + c->rank() + 1);  // different tokens per rank
    m->forward(torch::randint(0, 64, {2, 8}), torch::ones({2, 8}, torch::kLong));
    QatHook::sync_observers(fqs, c.get(), c->world_size());
  }
  for (auto& f : fqs) {
    if (f->options().weight) continue;
    ++inputs;
    ASSERT_TRUE(f->initialized());
    EXPECT_TRUE(same_on_all_ranks(f->scale));
    EXPECT_TRUE(same_on_all_ranks(f->running_max));
  }
  EXPECT_EQ(inputs, 8) << "one static input quantizer per linear, and the tied head's";
}

}  // namespace
}  // namespace qd
