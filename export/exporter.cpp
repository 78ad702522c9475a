#include "export/exporter.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "common/error.h"
#include "common/progress.h"
#include "qat/conv_bn.h"
#include "qat/fake_quantize.h"
#include "runtime/interpreter.h"
#include "runtime/qdm.h"

namespace qd {

namespace {

struct ActQuant {
  float scale = 1.0f;
  int32_t zero_point = 0;
  int32_t qmin = -128, qmax = 127;
  bool relu = false;
};

// The activation quantizer's trained parameters; what the integer runtime can express.
ActQuant activation(const TensorQuantizer* q, const std::string& where) {
  QD_CHECK(q != nullptr, UserError, "export: ", where, " has no quantizer: the model was not prepared for QAT");
  const auto* fq = dynamic_cast<const FakeQuantizeImpl*>(q);
  QD_CHECK(fq != nullptr, UserError, "export: the quantizer of ", where, " is not a static int8 quantizer");
  QD_CHECK(fq->initialized() && fq->enabled(), UserError, "export: the quantizer of ", where,
           " never ran (QAT did not start before this checkpoint); export a checkpoint from a QAT epoch");
  const QuantSpec& s = fq->options().spec;
  QD_CHECK(!s.per_channel, UserError, "export: ", where, ": qat.activation.per_channel is true; the integer runtime "
           "and ONNX QDQ need per-tensor activations: retrain with qat.activation.per_channel=false");
  QD_CHECK(s.bits == 8, UserError, "export: ", where, ": qat.activation.bits is ", s.bits,
           "; int8 export needs 8-bit activations (weights may use fewer bits)");
  ActQuant a;
  a.scale = fq->effective_scale().to(torch::kCPU)[0].item<float>();
  a.zero_point = fq->zero_point.to(torch::kCPU)[0].item<int32_t>();
  a.qmin = static_cast<int32_t>(fq->quant_min());
  a.qmax = static_cast<int32_t>(fq->quant_max());
  a.relu = fq->options().relu;
  QD_CHECK(std::isfinite(a.scale) && a.scale > 0.0f, UserError, "export: ", where, ": the trained scale is ", a.scale,
           "; the checkpoint is damaged or the quantizer saw no data");
  return a;
}

// Decomposes a real multiplier; factors too small for the fixed-point form become 0 (the output
// is then the zero point, which is what the real factor gives after rounding).
rt::QuantizedMultiplier multiplier(double real) {
  rt::QuantizedMultiplier q = rt::quantize_multiplier(real);
  if (q.shift < -31) q = {};
  QD_CHECK(q.shift <= 30, UserError, "export: a requantization factor of ", real,
           " is too large for int8 (a scale collapsed to ~0 in training)");
  return q;
}

// The weights as the simulation quantizes them: q = fq(w) / scale, exactly integers.
struct QuantWeights {
  std::vector<int8_t> q;
  std::vector<float> scale;
};
QuantWeights quantize_weights(TensorQuantizer& quantizer, const torch::Tensor& w, const std::string& where) {
  auto* p = dynamic_cast<FakeQuantizeImpl*>(&quantizer);
  QD_CHECK(p != nullptr, UserError, "export: the weight quantizer of ", where, " is not a per-channel int8 quantizer");
  FakeQuantizeImpl& fq = *p;
  QD_CHECK(fq.enabled(), UserError, "export: the weight quantizer of ", where,
           " is off (QAT did not start before this checkpoint); export a checkpoint from a QAT epoch");
  const QuantSpec& s = fq.options().spec;
  QD_CHECK(s.symmetric && s.per_channel && s.axis == 0, UserError, "export: ", where,
           ": int8 export needs symmetric per-output-channel weights (qat.weight.symmetric=true, "
           "qat.weight.per_channel=true, axis 0), as TensorRT does");
  torch::NoGradGuard g;
  const torch::Tensor fqw = fq.forward(w).to(torch::kCPU).contiguous();
  const torch::Tensor scale = fq.effective_scale().to(torch::kCPU).contiguous();
  std::vector<int64_t> shape(static_cast<size_t>(w.dim()), 1);
  shape[0] = -1;
  const torch::Tensor q = torch::round(fqw / scale.view(shape)).contiguous();
  QuantWeights out;
  const float* qp = q.data_ptr<float>();
  out.q.resize(static_cast<size_t>(q.numel()));
  for (int64_t i = 0; i < q.numel(); ++i) {
    QD_CHECK(std::abs(qp[i]) <= 127.0f, Error, "export: ", where, ": quantized weight ", qp[i], " outside int8");
    out.q[static_cast<size_t>(i)] = static_cast<int8_t>(qp[i]);
  }
  out.scale.assign(scale.data_ptr<float>(), scale.data_ptr<float>() + scale.numel());
  for (float v : out.scale)
    QD_CHECK(std::isfinite(v) && v > 0.0f, UserError, "export: ", where, ": a trained weight scale is ", v);
  return out;
}

std::vector<float> to_vector(const torch::Tensor& t) {
  const torch::Tensor c = t.detach().to(torch::kCPU, torch::kFloat32).contiguous();
  return std::vector<float>(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
}

// The simulation's own rounding of the bias (bias_integers), so the integers are identical.
std::vector<int32_t> quantize_bias(const torch::Tensor& bias, float in_scale, const std::vector<float>& w_scale) {
  const torch::Tensor q = bias_integers(bias.to(torch::kCPU), torch::tensor({in_scale}), torch::tensor(w_scale)).contiguous();
  std::vector<int32_t> out(static_cast<size_t>(q.numel()));
  for (int64_t i = 0; i < q.numel(); ++i) out[static_cast<size_t>(i)] = static_cast<int32_t>(q.data_ptr<float>()[i]);
  return out;
}

}  // namespace

rt::Model build_int_model(Model& model, const InputSpec& in) {
  torch::NoGradGuard no_grad;
  const ExportGraph g = model.export_graph();
  QD_CHECK(g.norm != nullptr, Error, "export: the model has no input normalization");
  rt::Model m;
  m.mean = to_vector(g.norm->mean);
  m.inv_std = to_vector(g.norm->inv_std);
  const ActQuant iq = activation(g.input_quant, "the input");
  rt::TensorInfo t0;
  t0.c = static_cast<int32_t>(in.channels), t0.h = static_cast<int32_t>(in.height), t0.w = static_cast<int32_t>(in.width);
  t0.scale = iq.scale, t0.zero_point = iq.zero_point;
  m.tensors.push_back(t0);

  for (const ExportNode& n : g.nodes) {
    const rt::TensorInfo ti = m.tensors.at(static_cast<size_t>(n.input));
    rt::Layer l;
    l.name = n.name;
    l.input = n.input;
    rt::TensorInfo to;
    switch (n.kind) {
      case ExportNode::kConvBn: {
        ConvBnReluImpl& c = *n.conv;
        auto* cq = dynamic_cast<ConvBnQatImpl*>(c.qat.get());
        QD_CHECK(cq && c.out_quant, UserError, "export: ", n.name, " was not prepared for QAT");
        // Exactly the folding of ConvBnQat's deployed forward (conv_bn.cpp), so the weights fed to
        // the quantizer, hence the integers, are the simulation's.
        const BatchNormImpl& bn = *c.bn;
        const torch::Tensor factor = bn.weight * torch::rsqrt(bn.running_var + bn.eps);
        const torch::Tensor w = c.conv->weight;
        const torch::Tensor wf = w * factor.view({-1, 1, 1, 1});
        const torch::Tensor bf = bn.bias - bn.running_mean * factor;
        QuantWeights qw = quantize_weights(*cq->weight_quant, wf, n.name);
        const ActQuant oq = activation(c.out_quant.get(), n.name);
        const auto& opt = c.conv->options;
        QD_CHECK(opt.groups() == 1 && w.size(2) == w.size(3), UserError, "export: ", n.name,
                 ": grouped or non-square convolutions are not supported");
        l.kind = rt::OpKind::kConv2d;
        l.kernel = static_cast<int32_t>(w.size(2));
        l.stride = static_cast<int32_t>((*opt.stride())[0]);
        l.pad = static_cast<int32_t>((*std::get<torch::ExpandingArray<2>>(opt.padding()))[0]);
        l.out_c = static_cast<int32_t>(w.size(0));
        l.in_c = static_cast<int32_t>(w.size(1));
        QD_CHECK(l.in_c == ti.c, Error, "export: ", n.name, " reads ", l.in_c, " channels, its input has ", ti.c);
        l.weight = std::move(qw.q);
        l.weight_scale = qw.scale;
        l.float_weight = to_vector(wf);
        l.float_bias = to_vector(bf);
        l.bias = quantize_bias(bf, ti.scale, l.weight_scale);
        for (int32_t o = 0; o < l.out_c; ++o)
          l.multiplier.push_back(multiplier(static_cast<double>(ti.scale) * l.weight_scale[static_cast<size_t>(o)] /
                                            oq.scale));
        // A fused ReLU clamps at the real 0; symmetric quantizers apply it before quantizing.
        l.act_min = oq.relu ? std::max(oq.qmin, oq.zero_point) : oq.qmin;
        l.act_max = oq.qmax;
        to.c = l.out_c;
        to.h = (ti.h + 2 * l.pad - l.kernel) / l.stride + 1;
        to.w = (ti.w + 2 * l.pad - l.kernel) / l.stride + 1;
        to.scale = oq.scale, to.zero_point = oq.zero_point;
        break;
      }
      case ExportNode::kMaxPool: {
        l.kind = rt::OpKind::kMaxPool2d;
        l.kernel = n.kernel, l.stride = n.stride, l.pad = n.pad;
        to = ti;
        to.h = (ti.h + 2 * l.pad - l.kernel) / l.stride + 1;
        to.w = (ti.w + 2 * l.pad - l.kernel) / l.stride + 1;
        break;
      }
      case ExportNode::kAdd: {
        const rt::TensorInfo t2 = m.tensors.at(static_cast<size_t>(n.input2));
        const ActQuant oq = activation(n.out_quant, n.name);
        l.kind = rt::OpKind::kAdd;
        l.input2 = n.input2;
        // TFLite's scheme: both operands at 2^-20 of twice the coarser scale, an exact int32 sum.
        l.left_shift = 20;
        const double twice_max = 2.0 * std::max(ti.scale, t2.scale);
        l.input_multiplier = multiplier(ti.scale / twice_max);
        l.input2_multiplier = multiplier(t2.scale / twice_max);
        l.output_multiplier = multiplier(twice_max / (static_cast<double>(1 << l.left_shift) * oq.scale));
        l.act_min = oq.relu ? std::max(oq.qmin, oq.zero_point) : oq.qmin;
        l.act_max = oq.qmax;
        to = ti;
        to.scale = oq.scale, to.zero_point = oq.zero_point;
        break;
      }
      case ExportNode::kMeanPool: {
        const ActQuant oq = activation(n.out_quant, n.name);
        l.kind = rt::OpKind::kGlobalAvgPool;
        l.multiplier.push_back(multiplier(static_cast<double>(ti.scale) / (static_cast<double>(oq.scale) * ti.h * ti.w)));
        to.c = ti.c, to.h = 1, to.w = 1;
        to.scale = oq.scale, to.zero_point = oq.zero_point;
        break;
      }
      case ExportNode::kLinear: {
        torch::nn::LinearImpl& fc = *n.linear;
        QD_CHECK(n.weight_quant != nullptr, UserError, "export: ", n.name, " was not prepared for QAT");
        QuantWeights qw = quantize_weights(*n.weight_quant, fc.weight, n.name);
        l.kind = rt::OpKind::kLinear;
        l.out_c = static_cast<int32_t>(fc.weight.size(0));
        l.in_c = static_cast<int32_t>(fc.weight.size(1));
        QD_CHECK(l.in_c == ti.numel(), Error, "export: ", n.name, " reads ", l.in_c, " features, its input has ",
                 ti.numel());
        l.weight = std::move(qw.q);
        l.weight_scale = qw.scale;
        l.float_weight = to_vector(fc.weight);
        l.float_bias = fc.bias.defined() ? to_vector(fc.bias) : std::vector<float>(static_cast<size_t>(l.out_c), 0.0f);
        l.bias = quantize_bias(fc.bias.defined() ? fc.bias : torch::zeros({l.out_c}), ti.scale, l.weight_scale);
        for (float s : l.weight_scale) l.output_scale.push_back(ti.scale * s);
        to.c = l.out_c, to.h = 1, to.w = 1;
        break;
      }
    }
    m.layers.push_back(std::move(l));
    m.tensors.push_back(to);
  }
  const std::string err = rt::validate(m);
  QD_CHECK(err.empty(), Error, "export: the integer model is inconsistent (a bug): ", err);
  return m;
}

Agreement compare_with_simulation(Model& model, const rt::Model& int_model, const torch::Tensor& images,
                                  const torch::Tensor& labels, bool progress, std::vector<float>* sim_logits) {
  torch::NoGradGuard no_grad;
  model.eval();
  rt::Interpreter interp(int_model);
  Agreement a;
  // Layers whose simulated output the model can capture, with their tensor ids.
  std::map<std::string, int> captured;
  for (const std::string& f : model.feature_names())
    for (size_t i = 0; i < int_model.layers.size(); ++i)
      if (int_model.layers[i].name == f && int_model.layers[i].kind != rt::OpKind::kLinear)
        captured[f] = static_cast<int>(i) + 1;
  std::vector<std::string> names;
  for (const auto& kv : captured) names.push_back(kv.first);
  model.set_capture(names);
  for (size_t i = 0; i < int_model.layers.size(); ++i)
    if (captured.count(int_model.layers[i].name)) {
      LayerAgreement la;
      la.name = int_model.layers[i].name;
      a.layers.push_back(la);
    }

  const int64_t n = images.size(0), classes = int_model.num_classes(), batch = 500;
  ProgressBar bar("verify", (n + batch - 1) / batch, progress, 0);
  std::vector<float> logits(static_cast<size_t>(classes));
  for (int64_t b0 = 0; b0 < n; b0 += batch) {
    const int64_t bn = std::min(batch, n - b0);
    const torch::Tensor x = images.narrow(0, b0, bn).to(torch::kFloat32).div_(255.0f).contiguous();
    const torch::Tensor sim = model.forward(x).contiguous();
    if (sim_logits) sim_logits->insert(sim_logits->end(), sim.data_ptr<float>(), sim.data_ptr<float>() + sim.numel());
    std::map<std::string, torch::Tensor> caps;
    for (const auto& kv : model.captured()) caps[kv.first] = kv.second.contiguous();
    const float* xp = x.data_ptr<float>();
    const int64_t per_image = x[0].numel();
    for (int64_t i = 0; i < bn; ++i) {
      // The simulation's int8 values of tensor `id` for this image: (q - zero_point) * scale
      // divided by the scale recovers q exactly.
      auto sim_q = [&](const LayerAgreement& la, int64_t e) {
        const rt::TensorInfo& t = int_model.tensors[static_cast<size_t>(captured[la.name])];
        const float v = caps.at(la.name).data_ptr<float>()[i * t.numel() + e];
        return static_cast<int32_t>(std::nearbyint(v * (1.0f / t.scale))) + t.zero_point;
      };
      auto compare = [&](bool local) {
        return [&, local](int id, std::vector<int8_t>& q) {
          for (LayerAgreement& la : a.layers) {
            if (captured[la.name] != id) continue;
            Diff& d = local ? la.local : la.end_to_end;
            for (size_t e = 0; e < q.size(); ++e) {
              const int32_t s = sim_q(la, static_cast<int64_t>(e));
              d.add(std::abs(s - static_cast<int32_t>(q[e])));
              if (local) q[e] = static_cast<int8_t>(s);  // continue from the simulation's values
            }
          }
        };
      };
      interp.run(xp + i * per_image, logits.data(), compare(true));
      interp.run(xp + i * per_image, logits.data(), compare(false));
      const float* sl = sim.data_ptr<float>() + i * classes;
      const int64_t label = labels[b0 + i].item<int64_t>();
      const int64_t rt_arg = std::max_element(logits.begin(), logits.end()) - logits.begin();
      const int64_t sim_arg = std::max_element(sl, sl + classes) - sl;
      a.argmax_equal += rt_arg == sim_arg;
      a.runtime_correct += rt_arg == label;
      a.simulation_correct += sim_arg == label;
      for (int64_t c = 0; c < classes; ++c)
        a.max_logit_diff = std::max(a.max_logit_diff, static_cast<double>(std::abs(logits[static_cast<size_t>(c)] - sl[c])));
    }
    a.samples += bn;
    bar.update(b0 / batch + 1, a.samples, "");
  }
  bar.finish("");
  model.set_capture({});
  return a;
}

}  // namespace qd
