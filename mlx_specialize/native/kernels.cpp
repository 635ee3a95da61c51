// Float32 CPU kernels for the element-wise parts of a small LM's training step, as MLX
// primitives (so they work under mx.compile and autograd):
//
//   cross_entropy(logits [N, V], targets [N] int32) -> loss [N]   (nats; log-sum-exp kept
//       for the backward, which writes softmax - onehot in one pass)
//   swiglu(gate, up) -> silu(gate) * up                          (any shape, one pass)
//   rms_norm(x [..., D], weight [D], eps) -> x / rms(x) * weight  (backward: dx and dweight)
//   attention_exp(scores [..., R, K], scale, start, rows, causal) -> e [..., R, K]
//       e = exp(scale * (s - max)) over the keys row r may see, 0 over the others; row r
//       is the query at position start + r % rows (rows of several heads are stacked).
//       No gradient: it is the inside of fastmath.attention's custom function.
//
// Why: on x86 MLX's CPU SIMD layer is scalar, so its exp (and softmax, sigmoid) runs one
// float at a time, and each op is a pass over memory. fastmath.py writes them from ops
// MLX's compiler vectorizes, but they stay several passes with broadcasts between them.
// Here each is one or two passes per row, with an exp the C++ compiler vectorizes
// (-fopenmp-simd, -march=native): the same polynomial as fastmath.py and MLX's own CPU
// exp (Cephes, relative error < 4e-7 on [-87, 0]).
//
// Built at first use by mlx_specialize/native/__init__.py, for this machine only.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

#include "common.h"

#include <nanobind/nanobind.h>
#include <nanobind/stl/variant.h>

#include "mlx/ops.h"
#include "mlx/primitives.h"
#include "mlx/utils.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace mlxspec {
namespace {

constexpr float kLog2e = 1.44269504088896341f;
constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: (t + kRound) - kRound rounds t to an integer

// exp(x) for float x: inputs are clamped to [-87.5, 88] (exp(-87.5) ~ 1e-38 stands for
// 0); NaN stays NaN. Branch-free and call-free, so loops of it vectorize.
inline float fast_exp(float x) {
  x = x < -87.5f ? -87.5f : x;
  x = x > 88.0f ? 88.0f : x;
  const float t = x * kLog2e;
  const float k = (t + kRound) - kRound;
  const float f = t - k, f2 = f * f;
  // 2^f on [-1/2, 1/2] (Cephes expf's coefficients), Estrin's scheme
  const float p = ((1.0f + 6.931472028550421e-1f * f) + f2 * (2.402264791363012e-1f + 5.550332471162809e-2f * f)) +
                  (f2 * f2) * ((9.618437357674640e-3f + 1.339887440266574e-3f * f) + f2 * 1.535336188319500e-4f);
  const int32_t bits = (int32_t(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, 4);
  return p * scale;
}

// sigmoid(g) from one exp of -|g|: 1 / (1 + z) for g >= 0, z / (1 + z) below
inline float fast_sigmoid(float g) {
  const float z = fast_exp(-std::fabs(g));
  const float r = 1.0f / (1.0f + z);
  return g >= 0.0f ? r : z * r;
}

float row_max(const float* x, int64_t n) {
  float m = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t i = 0; i < n; ++i) m = x[i] > m ? x[i] : m;
  return m;
}

void check_cpu(const mx::Stream& stream, const char* op) {
  if (stream.device != mx::Device::cpu) throw std::invalid_argument(std::string(op) + " runs on the CPU only");
}

void check_float32(const mx::array& x, const char* op) {
  if (x.dtype() != mx::float32) throw std::invalid_argument(std::string(op) + " takes float32 arrays");
}

// The common parts of the primitives here: CPU only, no forward-mode derivative, and
// equal when their parameters are
class CpuPrimitive : public mx::Primitive {
 public:
  using mx::Primitive::Primitive;
  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error(std::string(name()) + " runs on the CPU only");
  }
  std::vector<mx::array> jvp(const std::vector<mx::array>&, const std::vector<mx::array>&,
                             const std::vector<int>&) override {
    throw std::invalid_argument(std::string(name()) + " has no forward-mode derivative");
  }
  bool is_equivalent(const mx::Primitive& other) const override {
    return std::string(other.name()) == name() && params() == static_cast<const CpuPrimitive&>(other).params();
  }
  virtual std::vector<double> params() const { return {}; }
};

// ---------------------------------------------------------------- cross-entropy

class CrossEntropyGrad : public CpuPrimitive {
 public:
  using CpuPrimitive::CpuPrimitive;
  const char* name() const override { return "CrossEntropyGrad"; }

  // inputs: logits [N, V], targets [N], lse [N], cotangent [N] -> d logits [N, V]
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    auto& encoder = encoder_for(stream(), inputs, outputs);
    const int64_t v = inputs[0].shape(1), n = inputs[0].shape(0);
    encoder.dispatch([x = row_major(inputs[0], encoder).data<float>(),
                      t = inputs[1].data<int32_t>(), ts = inputs[1].strides()[0], lse = inputs[2].data<float>(),
                      g = inputs[3].data<float>(), gs = inputs[3].strides()[0], out = outputs[0].data<float>(), n,
                      v]() {
      for (int64_t r = 0; r < n; ++r) {
        const float* row = x + r * v;
        float* grad = out + r * v;
        const float shift = lse[r], scale = g[r * gs];  // g: often a broadcast (stride 0)
        const int64_t target = t[r * ts];
#pragma omp simd
        for (int64_t i = 0; i < v; ++i) grad[i] = fast_exp(row[i] - shift) * scale;
        if (target >= 0 && target < v) grad[target] -= scale;
      }
    });
  }

  std::vector<mx::array> vjp(const std::vector<mx::array>&, const std::vector<mx::array>&, const std::vector<int>&,
                             const std::vector<mx::array>&) override {
    throw std::invalid_argument("cross_entropy has no second derivative here");
  }
};

class CrossEntropy : public CpuPrimitive {
 public:
  using CpuPrimitive::CpuPrimitive;
  const char* name() const override { return "CrossEntropy"; }

  // inputs: logits [N, V], targets [N] -> loss [N], log-sum-exp [N]; a target outside
  // [0, V) gives a NaN loss
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    auto& encoder = encoder_for(stream(), inputs, outputs);
    const int64_t v = inputs[0].shape(1), n = inputs[0].shape(0);
    encoder.dispatch([x = row_major(inputs[0], encoder).data<float>(),
                      t = inputs[1].data<int32_t>(), ts = inputs[1].strides()[0], loss = outputs[0].data<float>(),
                      lse = outputs[1].data<float>(), n, v]() {
      for (int64_t r = 0; r < n; ++r) {
        const float* row = x + r * v;
        const float m = row_max(row, v);
        float total = 0.0f;
#pragma omp simd reduction(+ : total)
        for (int64_t i = 0; i < v; ++i) total += fast_exp(row[i] - m);
        lse[r] = m + std::log(total);
        const int64_t target = t[r * ts];  // 1-D: any layout is a stride
        loss[r] = target >= 0 && target < v ? lse[r] - row[target] : std::numeric_limits<float>::quiet_NaN();
      }
    });
  }

  std::vector<mx::array> vjp(const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
                             const std::vector<int>& argnums, const std::vector<mx::array>& outputs) override {
    std::vector<mx::array> grads;
    for (int arg : argnums) {
      if (arg == 0) {
        grads.push_back(mx::array(primals[0].shape(), mx::float32, std::make_shared<CrossEntropyGrad>(stream()),
                                  {primals[0], primals[1], outputs[1], cotangents[0]}));
      } else {
        grads.push_back(mx::zeros_like(primals[1], stream()));
      }
    }
    return grads;
  }
};

mx::array cross_entropy(const mx::array& logits, const mx::array& targets, mx::StreamOrDevice s = {}) {
  auto stream = mx::to_stream(s);
  check_cpu(stream, "cross_entropy");
  check_float32(logits, "cross_entropy");
  if (logits.ndim() != 2 || targets.ndim() != 1 || targets.shape(0) != logits.shape(0))
    throw std::invalid_argument("cross_entropy takes logits [N, V] and targets [N]");
  auto t = targets.dtype() == mx::int32 ? targets : mx::astype(targets, mx::int32, stream);
  return mx::array::make_arrays({{logits.shape(0)}, {logits.shape(0)}}, {mx::float32, mx::float32},
                                std::make_shared<CrossEntropy>(stream), {logits, t})[0];
}

// ---------------------------------------------------------------- SwiGLU

class SwigluGrad : public CpuPrimitive {
 public:
  using CpuPrimitive::CpuPrimitive;
  const char* name() const override { return "SwigluGrad"; }

  // inputs: gate, up, d out -> d gate, d up (all of one shape)
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    auto& encoder = encoder_for(stream(), inputs, outputs);
    encoder.dispatch([g = row_major(inputs[0], encoder).data<float>(),
                      u = row_major(inputs[1], encoder).data<float>(),
                      d = row_major(inputs[2], encoder).data<float>(),
                      dg = outputs[0].data<float>(), du = outputs[1].data<float>(), n = int64_t(inputs[0].size())]() {
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        const float s = fast_sigmoid(g[i]);
        dg[i] = d[i] * u[i] * s * (1.0f + g[i] * (1.0f - s));
        du[i] = d[i] * g[i] * s;
      }
    });
  }

  std::vector<mx::array> vjp(const std::vector<mx::array>&, const std::vector<mx::array>&, const std::vector<int>&,
                             const std::vector<mx::array>&) override {
    throw std::invalid_argument("swiglu has no second derivative here");
  }
};

class Swiglu : public CpuPrimitive {
 public:
  using CpuPrimitive::CpuPrimitive;
  const char* name() const override { return "Swiglu"; }

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    auto& encoder = encoder_for(stream(), inputs, outputs);
    encoder.dispatch([g = row_major(inputs[0], encoder).data<float>(),
                      u = row_major(inputs[1], encoder).data<float>(), out = outputs[0].data<float>(),
                      n = int64_t(inputs[0].size())]() {
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) out[i] = g[i] * fast_sigmoid(g[i]) * u[i];
    });
  }

  std::vector<mx::array> vjp(const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
                             const std::vector<int>& argnums, const std::vector<mx::array>&) override {
    auto both = mx::array::make_arrays({primals[0].shape(), primals[0].shape()}, {mx::float32, mx::float32},
                                       std::make_shared<SwigluGrad>(stream()), {primals[0], primals[1], cotangents[0]});
    std::vector<mx::array> grads;
    for (int arg : argnums) grads.push_back(both[arg]);
    return grads;
  }
};

mx::array swiglu(const mx::array& gate, const mx::array& up, mx::StreamOrDevice s = {}) {
  auto stream = mx::to_stream(s);
  check_cpu(stream, "swiglu");
  check_float32(gate, "swiglu");
  check_float32(up, "swiglu");
  if (gate.shape() != up.shape()) throw std::invalid_argument("swiglu takes gate and up of one shape");
  return mx::array(gate.shape(), mx::float32, std::make_shared<Swiglu>(stream), {gate, up});
}

// ---------------------------------------------------------------- RMSNorm
// No second output for 1 / rms: the backward recomputes it (one dot product per row)

// 1 / sqrt(mean(x^2) + eps) of one row
inline float inverse_rms(const float* x, int64_t d, float eps) {
  float squares = 0.0f;
#pragma omp simd reduction(+ : squares)
  for (int64_t i = 0; i < d; ++i) squares += x[i] * x[i];
  return 1.0f / std::sqrt(squares / float(d) + eps);
}

class RmsNormGrad : public CpuPrimitive {
 public:
  using CpuPrimitive::CpuPrimitive;
  const char* name() const override { return "RmsNormGrad"; }

  RmsNormGrad(mx::Stream stream, float eps) : CpuPrimitive(stream), eps_(eps) {}
  std::vector<double> params() const override { return {eps_}; }

  // inputs: x [N, D], weight [D], d y [N, D] -> d x [N, D]
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    auto& encoder = encoder_for(stream(), inputs, outputs);
    const int64_t d = inputs[1].size(), n = inputs[0].size() / d;
    encoder.dispatch([x = row_major(inputs[0], encoder).data<float>(),
                      w = row_major(inputs[1], encoder).data<float>(),
                      dy = row_major(inputs[2], encoder).data<float>(), dx = outputs[0].data<float>(), n, d,
                      eps = eps_]() {
      for (int64_t r = 0; r < n; ++r) {
        const float *xr = x + r * d, *dyr = dy + r * d;
        float* dxr = dx + r * d;
        const float k = inverse_rms(xr, d, eps);
        float dot = 0.0f;  // sum of w dy x
#pragma omp simd reduction(+ : dot)
        for (int64_t i = 0; i < d; ++i) dot += w[i] * dyr[i] * xr[i];
        const float c = dot * k * k * k / float(d);
#pragma omp simd
        for (int64_t i = 0; i < d; ++i) dxr[i] = k * w[i] * dyr[i] - c * xr[i];
      }
    });
  }

  std::vector<mx::array> vjp(const std::vector<mx::array>&, const std::vector<mx::array>&, const std::vector<int>&,
                             const std::vector<mx::array>&) override {
    throw std::invalid_argument("rms_norm has no second derivative here");
  }

 private:
  float eps_;
};

// The weight's gradient, a primitive of its own: as a second output of RmsNormGrad (read
// by the sum over streams of the weight's gradient) it made two streams wait on each
// other (2,700 -> 1,950 tok/s on the 9M model)
class RmsNormWeightGrad : public CpuPrimitive {
 public:
  RmsNormWeightGrad(mx::Stream stream, float eps) : CpuPrimitive(stream), eps_(eps) {}
  const char* name() const override { return "RmsNormWeightGrad"; }
  std::vector<double> params() const override { return {eps_}; }

  // inputs: x [N, D], d y [N, D] -> d weight [D] = sum over rows of dy x / rms(x)
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    auto& encoder = encoder_for(stream(), inputs, outputs);
    const int64_t d = outputs[0].size(), n = inputs[0].size() / d;
    encoder.dispatch([x = row_major(inputs[0], encoder).data<float>(),
                      dy = row_major(inputs[1], encoder).data<float>(), dw = outputs[0].data<float>(), n, d,
                      eps = eps_]() {
      std::fill(dw, dw + d, 0.0f);
      for (int64_t r = 0; r < n; ++r) {
        const float *xr = x + r * d, *dyr = dy + r * d, k = inverse_rms(xr, d, eps);
#pragma omp simd
        for (int64_t i = 0; i < d; ++i) dw[i] += dyr[i] * xr[i] * k;
      }
    });
  }

  std::vector<mx::array> vjp(const std::vector<mx::array>&, const std::vector<mx::array>&, const std::vector<int>&,
                             const std::vector<mx::array>&) override {
    throw std::invalid_argument("rms_norm has no second derivative here");
  }

 private:
  float eps_;
};

class RmsNorm : public CpuPrimitive {
 public:
  RmsNorm(mx::Stream stream, float eps) : CpuPrimitive(stream), eps_(eps) {}
  const char* name() const override { return "RmsNorm"; }
  std::vector<double> params() const override { return {eps_}; }

  // inputs: x [N, D], weight [D] -> y [N, D]
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    auto& encoder = encoder_for(stream(), inputs, outputs);
    const int64_t d = inputs[1].size(), n = inputs[0].size() / d;
    encoder.dispatch([x = row_major(inputs[0], encoder).data<float>(),
                      w = row_major(inputs[1], encoder).data<float>(), y = outputs[0].data<float>(), n, d,
                      eps = eps_]() {
      for (int64_t r = 0; r < n; ++r) {
        const float* xr = x + r * d;
        float* yr = y + r * d;
        const float k = inverse_rms(xr, d, eps);
#pragma omp simd
        for (int64_t i = 0; i < d; ++i) yr[i] = xr[i] * k * w[i];
      }
    });
  }

  std::vector<mx::array> vjp(const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
                             const std::vector<int>& argnums, const std::vector<mx::array>& outputs) override {
    std::vector<mx::array> grads;
    for (int arg : argnums) {
      if (arg == 0)
        grads.push_back(mx::array(primals[0].shape(), mx::float32, std::make_shared<RmsNormGrad>(stream(), eps_),
                                  {primals[0], primals[1], cotangents[0]}));
      else
        grads.push_back(mx::array(primals[1].shape(), mx::float32,
                                  std::make_shared<RmsNormWeightGrad>(stream(), eps_), {primals[0], cotangents[0]}));
    }
    return grads;
  }

 private:
  float eps_;
};

mx::array rms_norm(const mx::array& x, const mx::array& weight, float eps, mx::StreamOrDevice s = {}) {
  auto stream = mx::to_stream(s);
  check_cpu(stream, "rms_norm");
  check_float32(x, "rms_norm");
  check_float32(weight, "rms_norm");
  if (x.ndim() < 1 || weight.ndim() != 1 || weight.shape(0) != x.shape(-1))
    throw std::invalid_argument("rms_norm takes x [..., D] and weight [D]");
  return mx::array(x.shape(), mx::float32, std::make_shared<RmsNorm>(stream, eps), {x, weight});
}

// ---------------------------------------------------------------- attention's exp

class AttentionExp : public CpuPrimitive {
 public:
  AttentionExp(mx::Stream stream, float scale, int start, int rows, bool causal)
      : CpuPrimitive(stream), scale_(scale), start_(start), rows_(rows), causal_(causal) {}
  const char* name() const override { return "AttentionExp"; }
  std::vector<double> params() const override { return {scale_, double(start_), double(rows_), double(causal_)}; }

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    auto& encoder = encoder_for(stream(), inputs, outputs);
    const auto& s = inputs[0];
    const int64_t keys = s.shape(-1), height = s.shape(-2), n = s.size() / keys;
    encoder.dispatch([x = row_major(s, encoder).data<float>(), e = outputs[0].data<float>(), keys, height, n,
                      scale = scale_,
                      start = start_, rows = rows_, causal = causal_]() {
      for (int64_t r = 0; r < n; ++r) {
        const float* xr = x + r * keys;
        float* er = e + r * keys;
        const int64_t seen = causal ? std::min<int64_t>(keys, start + (r % height) % rows + 1) : keys;
        const float m = row_max(xr, seen) * scale;
#pragma omp simd
        for (int64_t j = 0; j < seen; ++j) er[j] = fast_exp(xr[j] * scale - m);
        std::fill(er + seen, er + keys, 0.0f);
      }
    });
  }

  std::vector<mx::array> vjp(const std::vector<mx::array>&, const std::vector<mx::array>&, const std::vector<int>&,
                             const std::vector<mx::array>&) override {
    throw std::invalid_argument("attention_exp has no gradient: it is used inside a custom function");
  }

 private:
  float scale_;
  int start_, rows_;
  bool causal_;
};

mx::array attention_exp(const mx::array& scores, float scale, int start, int rows, bool causal,
                        mx::StreamOrDevice s = {}) {
  auto stream = mx::to_stream(s);
  check_cpu(stream, "attention_exp");
  check_float32(scores, "attention_exp");
  if (scores.ndim() < 2 || rows < 1 || scores.shape(-2) % rows || !(scale > 0.0f))
    throw std::invalid_argument("attention_exp takes scores [..., R, K] with R a multiple of rows, and scale > 0");
  return mx::array(scores.shape(), mx::float32, std::make_shared<AttentionExp>(stream, scale, start, rows, causal),
                   {scores});
}

}  // namespace

void register_kernels(nb::module_& m) {
  m.def("row_major_copies", [] { return int64_t(row_major_copies); },
        "How many inputs the kernels have copied row-major first (not being row-major) so far");
  m.def("cross_entropy", &cross_entropy, "logits"_a, "targets"_a, nb::kw_only(), "stream"_a = nb::none(),
        "logits [N, V] float32, targets [N] -> loss [N] in nats; backward: softmax - onehot, one pass");
  m.def("swiglu", &swiglu, "gate"_a, "up"_a, nb::kw_only(), "stream"_a = nb::none(),
        "silu(gate) * up for float32 arrays of one shape, one pass forward and backward");
  m.def("rms_norm", &rms_norm, "x"_a, "weight"_a, "eps"_a, nb::kw_only(), "stream"_a = nb::none(),
        "x [..., D] / sqrt(mean(x^2) + eps) * weight [D], float32");
  m.def("attention_exp", &attention_exp, "scores"_a, "scale"_a, "start"_a, "rows"_a, "causal"_a, nb::kw_only(),
        "stream"_a = nb::none(),
        "exp(scale (s - row max)) of scores [..., R, K] over the keys each row sees (causal: row r is query "
        "start + r % rows and sees keys <= it), 0 elsewhere; no gradient");
}

}  // namespace mlxspec
