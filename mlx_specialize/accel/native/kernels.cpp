// Float32 CPU kernels for the element-wise parts of a small LM's training step, as MLX
// primitives (so they work under mx.compile and autograd):
//
//   cross_entropy(logits [N, V], targets [N] int32) -> loss [N]   (nats; log-sum-exp kept
//       for the backward, which writes softmax - onehot in one pass)
//   swiglu(gate, up) -> silu(gate) * up                          (any shape, one pass)
//   gelu(x) -> x Phi(x) = x (1 + erf(x / sqrt 2)) / 2            (any shape, one pass; BERT's)
//   nearest(products [m, k], norms [k]) -> argmin_j (norms_j - 2 products_ij), its value
//       (k-means' assignment from x c^T and ||c||^2; no gradient)
//   cluster_sums(x [n, d], labels [n] int32, k) -> sums [k, d], counts [k]
//       (k-means' update: the rows of each cluster added up; no gradient)
//   rms_norm(x [..., D], weight [D], eps) -> x / rms(x) * weight  (backward: dx and dweight)
//   layer_norm(x [..., D], weight [D], bias [D], eps) -> (x - mean) / std * weight + bias
//       (BERT's; backward: dx, and dweight with dbias)
//   attention(q [B, H, L, Dh], k, v [B, Hkv, S, Dh], scale, causal, block) -> [B, L, H, Dh]
//       softmax(scale q k^T + mask) v, forward and backward fused around BLAS products
//
// Why: on x86 MLX's CPU SIMD layer is scalar, so its exp (and softmax, sigmoid) runs one
// float at a time, and each op is a pass over memory. fastmath.py writes them from ops
// MLX's compiler vectorizes, but they stay several passes with broadcasts between them,
// and attention is dozens of small ops around its products. Here each is one or two
// passes per row, with an exp the C++ compiler vectorizes
// (-fopenmp-simd, -march=native): the same polynomial as fastmath.py and MLX's own CPU
// exp (Cephes, relative error < 4e-7 on [-87, 0]).
//
// Built at first use by mlx_specialize/native/__init__.py, for this machine only.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "common.h"

#include <nanobind/nanobind.h>
#include <nanobind/stl/variant.h>
#include <nanobind/stl/vector.h>

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

// erf(x) for float x: a rational approximation on [-4, 4] (Eigen's and XLA's float erf;
// beyond it erf is +-1 in float32), max error ~4e-7, as MLX's own erf. Branch-free.
inline float fast_erf(float x) {
  x = x < -4.0f ? -4.0f : x;
  x = x > 4.0f ? 4.0f : x;
  const float x2 = x * x;
  float p = -2.72614225801306e-10f;
  p = p * x2 + 2.77068142495902e-08f;
  p = p * x2 + -2.10102402082508e-06f;
  p = p * x2 + -5.69250639462346e-05f;
  p = p * x2 + -7.34990630326855e-04f;
  p = p * x2 + -2.95459980854025e-03f;
  p = p * x2 + -1.60960333262415e-02f;
  float q = -1.45660718464996e-05f;
  q = q * x2 + -2.13374055278905e-04f;
  q = q * x2 + -1.68282697438203e-03f;
  q = q * x2 + -7.37332916720468e-03f;
  q = q * x2 + -1.42647390514189e-02f;
  return x * p / q;
}

constexpr float kInvSqrt2 = 0.70710678118654752f;
constexpr float kInvSqrt2Pi = 0.39894228040143268f;

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
// equal when their parameters are. The forward ones define their vjp; the gradient ones
// (…Grad) have none
class CpuPrimitive : public mx::Primitive {
 public:
  using mx::Primitive::Primitive;
  std::vector<mx::array> vjp(const std::vector<mx::array>&, const std::vector<mx::array>&, const std::vector<int>&,
                             const std::vector<mx::array>&) override {
    throw std::invalid_argument(std::string(name()) + " has no derivative here (no second derivatives)");
  }
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

// ---------------------------------------------------------------- GELU (exact, erf)

class GeluGrad : public CpuPrimitive {
 public:
  using CpuPrimitive::CpuPrimitive;
  const char* name() const override { return "GeluGrad"; }

  // inputs: x, d out -> d x = d out (Phi(x) + x phi(x))
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    auto& encoder = encoder_for(stream(), inputs, outputs);
    encoder.dispatch([x = row_major(inputs[0], encoder).data<float>(), d = row_major(inputs[1], encoder).data<float>(),
                      dx = outputs[0].data<float>(), n = int64_t(inputs[0].size())]() {
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) {
        const float cdf = 0.5f * (1.0f + fast_erf(x[i] * kInvSqrt2));
        dx[i] = d[i] * (cdf + x[i] * kInvSqrt2Pi * fast_exp(-0.5f * x[i] * x[i]));
      }
    });
  }
};

class Gelu : public CpuPrimitive {
 public:
  using CpuPrimitive::CpuPrimitive;
  const char* name() const override { return "Gelu"; }

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    auto& encoder = encoder_for(stream(), inputs, outputs);
    encoder.dispatch([x = row_major(inputs[0], encoder).data<float>(), out = outputs[0].data<float>(),
                      n = int64_t(inputs[0].size())]() {
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) out[i] = 0.5f * x[i] * (1.0f + fast_erf(x[i] * kInvSqrt2));
    });
  }

  std::vector<mx::array> vjp(const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
                             const std::vector<int>&, const std::vector<mx::array>&) override {
    return {mx::array(primals[0].shape(), mx::float32, std::make_shared<GeluGrad>(stream()),
                      {primals[0], cotangents[0]})};
  }
};

mx::array gelu(const mx::array& x, mx::StreamOrDevice s = {}) {
  auto stream = mx::to_stream(s);
  check_cpu(stream, "gelu");
  check_float32(x, "gelu");
  return mx::array(x.shape(), mx::float32, std::make_shared<Gelu>(stream), {x});
}

// ---------------------------------------------------------------- nearest centre

class Nearest : public CpuPrimitive {
 public:
  using CpuPrimitive::CpuPrimitive;
  const char* name() const override { return "Nearest"; }

  // inputs: products [m, k], norms [k] -> index [m] int32, value [m] of the smallest
  // norms_j - 2 products_ij in each row (the first index on ties, as argmin)
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    auto& encoder = encoder_for(stream(), inputs, outputs);
    encoder.dispatch([p = row_major(inputs[0], encoder).data<float>(), c = row_major(inputs[1], encoder).data<float>(),
                      index = outputs[0].data<int32_t>(), value = outputs[1].data<float>(),
                      m = int64_t(inputs[0].shape(0)), k = int64_t(inputs[0].shape(1))]() {
      std::vector<float> d(k);  // one row's values, stored: the search compares the very floats the min saw
      for (int64_t r = 0; r < m; ++r) {
        const float* row = p + r * k;
        float best = std::numeric_limits<float>::infinity();
#pragma omp simd reduction(min : best)
        for (int64_t j = 0; j < k; ++j) {
          d[j] = c[j] - 2.0f * row[j];
          best = std::min(best, d[j]);
        }
        int64_t at = 0;
        while (at < k - 1 && !(d[at] <= best)) ++at;  // NaN rows end at k - 1
        index[r] = int32_t(at);
        value[r] = best;
      }
    });
  }

  std::vector<mx::array> vjp(const std::vector<mx::array>&, const std::vector<mx::array>&, const std::vector<int>&,
                             const std::vector<mx::array>&) override {
    throw std::invalid_argument("nearest has no gradient");
  }
};

std::vector<mx::array> nearest(const mx::array& products, const mx::array& norms, mx::StreamOrDevice s = {}) {
  auto stream = mx::to_stream(s);
  check_cpu(stream, "nearest");
  check_float32(products, "nearest");
  check_float32(norms, "nearest");
  if (products.ndim() != 2 || norms.ndim() != 1 || norms.shape(0) != products.shape(1) || products.shape(1) < 1)
    throw std::invalid_argument("nearest takes products [m, k] and norms [k], k >= 1");
  return mx::array::make_arrays({{products.shape(0)}, {products.shape(0)}}, {mx::int32, mx::float32},
                                std::make_shared<Nearest>(stream), {products, norms});
}

class ClusterSums : public CpuPrimitive {
 public:
  ClusterSums(mx::Stream stream, int k) : CpuPrimitive(stream), k_(k) {}
  const char* name() const override { return "ClusterSums"; }
  std::vector<double> params() const override { return {double(k_)}; }

  // inputs: x [n, d], labels [n] -> sums [k, d], counts [k] (labels outside [0, k) skipped)
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    auto& encoder = encoder_for(stream(), inputs, outputs);
    encoder.dispatch([x = row_major(inputs[0], encoder).data<float>(), l = row_major(inputs[1], encoder).data<int32_t>(),
                      sums = outputs[0].data<float>(), counts = outputs[1].data<float>(), n = int64_t(inputs[0].shape(0)),
                      d = int64_t(inputs[0].shape(1)), k = int64_t(k_)]() {
      std::fill(sums, sums + k * d, 0.0f);
      std::fill(counts, counts + k, 0.0f);
      for (int64_t i = 0; i < n; ++i) {
        const int64_t c = l[i];
        if (c < 0 || c >= k) continue;
        float* to = sums + c * d;
        const float* row = x + i * d;
#pragma omp simd
        for (int64_t j = 0; j < d; ++j) to[j] += row[j];
        counts[c] += 1.0f;
      }
    });
  }

  std::vector<mx::array> vjp(const std::vector<mx::array>&, const std::vector<mx::array>&, const std::vector<int>&,
                             const std::vector<mx::array>&) override {
    throw std::invalid_argument("cluster_sums has no gradient");
  }

 private:
  int k_;
};

std::vector<mx::array> cluster_sums(const mx::array& x, const mx::array& labels, int k, mx::StreamOrDevice s = {}) {
  auto stream = mx::to_stream(s);
  check_cpu(stream, "cluster_sums");
  check_float32(x, "cluster_sums");
  if (x.ndim() != 2 || labels.ndim() != 1 || labels.shape(0) != x.shape(0) || k < 1)
    throw std::invalid_argument("cluster_sums takes x [n, d], labels [n] and k >= 1");
  auto l = labels.dtype() == mx::int32 ? labels : mx::astype(labels, mx::int32, stream);
  return mx::array::make_arrays({{k, x.shape(1)}, {k}}, {mx::float32, mx::float32},
                                std::make_shared<ClusterSums>(stream, k), {x, l});
}

// ---------------------------------------------------------------- RMSNorm

// The RMSNorm primitives' parameter: eps
class WithEps : public CpuPrimitive {
 public:
  WithEps(mx::Stream stream, float eps) : CpuPrimitive(stream), eps_(eps) {}
  std::vector<double> params() const override { return {eps_}; }

 protected:
  float eps_;
};
// No second output for 1 / rms: the backward recomputes it (one dot product per row)

// 1 / sqrt(mean(x^2) + eps) of one row
inline float inverse_rms(const float* x, int64_t d, float eps) {
  float squares = 0.0f;
#pragma omp simd reduction(+ : squares)
  for (int64_t i = 0; i < d; ++i) squares += x[i] * x[i];
  return 1.0f / std::sqrt(squares / float(d) + eps);
}

class RmsNormGrad : public WithEps {
 public:
  using WithEps::WithEps;
  const char* name() const override { return "RmsNormGrad"; }

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
};

// The weight's gradient, a primitive of its own: computed only when asked for, and the
// input's gradient does not wait for it
class RmsNormWeightGrad : public WithEps {
 public:
  using WithEps::WithEps;
  const char* name() const override { return "RmsNormWeightGrad"; }
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
};

class RmsNorm : public WithEps {
 public:
  using WithEps::WithEps;
  const char* name() const override { return "RmsNorm"; }
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

// ---------------------------------------------------------------- layer norm
// y = (x - mean) / sqrt(var + eps) * weight + bias per row (BERT's LayerNorm): mean and
// variance in two passes over the row, as MLX's own (no cancellation in E[x^2] - mean^2).
// No saved statistics: the backward recomputes them (two short passes per row)

struct RowStats {
  float mean, inverse_std;
};

inline RowStats row_stats(const float* x, int64_t d, float eps) {
  float total = 0.0f;
#pragma omp simd reduction(+ : total)
  for (int64_t i = 0; i < d; ++i) total += x[i];
  const float mean = total / float(d);
  float squares = 0.0f;
#pragma omp simd reduction(+ : squares)
  for (int64_t i = 0; i < d; ++i) squares += (x[i] - mean) * (x[i] - mean);
  return {mean, 1.0f / std::sqrt(squares / float(d) + eps)};
}

class LayerNormGrad : public WithEps {
 public:
  using WithEps::WithEps;
  const char* name() const override { return "LayerNormGrad"; }

  // inputs: x [N, D], weight [D], d y [N, D] -> d x [N, D]
  //   = (w dy - mean(w dy) - xhat mean(w dy xhat)) / std, xhat = (x - mean) / std
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
        const auto [mean, k] = row_stats(xr, d, eps);
        float g_sum = 0.0f, gx_sum = 0.0f;  // sums of w dy and of w dy xhat
#pragma omp simd reduction(+ : g_sum, gx_sum)
        for (int64_t i = 0; i < d; ++i) {
          const float g = w[i] * dyr[i];
          g_sum += g;
          gx_sum += g * (xr[i] - mean) * k;
        }
        const float g_mean = g_sum / float(d), gx_mean = gx_sum / float(d);
#pragma omp simd
        for (int64_t i = 0; i < d; ++i) dxr[i] = k * (w[i] * dyr[i] - g_mean - (xr[i] - mean) * k * gx_mean);
      }
    });
  }
};

// The weight's and the bias's gradients (one primitive, two outputs), computed only
// when asked for: d weight = sum over rows of dy xhat, d bias = sum of dy
class LayerNormParamGrad : public WithEps {
 public:
  using WithEps::WithEps;
  const char* name() const override { return "LayerNormParamGrad"; }
  // inputs: x [N, D], d y [N, D] -> d weight [D], d bias [D]
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    auto& encoder = encoder_for(stream(), inputs, outputs);
    const int64_t d = outputs[0].size(), n = inputs[0].size() / d;
    encoder.dispatch([x = row_major(inputs[0], encoder).data<float>(),
                      dy = row_major(inputs[1], encoder).data<float>(), dw = outputs[0].data<float>(),
                      db = outputs[1].data<float>(), n, d, eps = eps_]() {
      std::fill(dw, dw + d, 0.0f);
      std::fill(db, db + d, 0.0f);
      for (int64_t r = 0; r < n; ++r) {
        const float *xr = x + r * d, *dyr = dy + r * d;
        const auto [mean, k] = row_stats(xr, d, eps);
#pragma omp simd
        for (int64_t i = 0; i < d; ++i) {
          dw[i] += dyr[i] * (xr[i] - mean) * k;
          db[i] += dyr[i];
        }
      }
    });
  }
};

class LayerNorm : public WithEps {
 public:
  using WithEps::WithEps;
  const char* name() const override { return "LayerNorm"; }
  // inputs: x [N, D], weight [D], bias [D] -> y [N, D]
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    auto& encoder = encoder_for(stream(), inputs, outputs);
    const int64_t d = inputs[1].size(), n = inputs[0].size() / d;
    encoder.dispatch([x = row_major(inputs[0], encoder).data<float>(),
                      w = row_major(inputs[1], encoder).data<float>(),
                      b = row_major(inputs[2], encoder).data<float>(), y = outputs[0].data<float>(), n, d,
                      eps = eps_]() {
      for (int64_t r = 0; r < n; ++r) {
        const float* xr = x + r * d;
        float* yr = y + r * d;
        const auto [mean, k] = row_stats(xr, d, eps);
#pragma omp simd
        for (int64_t i = 0; i < d; ++i) yr[i] = (xr[i] - mean) * k * w[i] + b[i];
      }
    });
  }

  std::vector<mx::array> vjp(const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
                             const std::vector<int>& argnums, const std::vector<mx::array>& outputs) override {
    std::vector<mx::array> grads, params;
    for (int arg : argnums) {
      if (arg == 0) {
        grads.push_back(mx::array(primals[0].shape(), mx::float32, std::make_shared<LayerNormGrad>(stream(), eps_),
                                  {primals[0], primals[1], cotangents[0]}));
        continue;
      }
      if (params.empty())
        params = mx::array::make_arrays({primals[1].shape(), primals[2].shape()}, {mx::float32, mx::float32},
                                        std::make_shared<LayerNormParamGrad>(stream(), eps_),
                                        {primals[0], cotangents[0]});
      grads.push_back(params[arg - 1]);
    }
    return grads;
  }
};

mx::array layer_norm(const mx::array& x, const mx::array& weight, const mx::array& bias, float eps,
                     mx::StreamOrDevice s = {}) {
  auto stream = mx::to_stream(s);
  check_cpu(stream, "layer_norm");
  for (auto* a : {&x, &weight, &bias}) check_float32(*a, "layer_norm");
  if (x.ndim() < 1 || weight.ndim() != 1 || weight.shape(0) != x.shape(-1) || bias.shape() != weight.shape())
    throw std::invalid_argument("layer_norm takes x [..., D], weight [D] and bias [D]");
  return mx::array(x.shape(), mx::float32, std::make_shared<LayerNorm>(stream, eps), {x, weight, bias});
}

// ---------------------------------------------------------------- fused attention
// softmax(scale q k^T + causal mask) v for q [B, H, L, Dh], k and v [B, Hkv, S, Dh]
// (H = groups x Hkv), in query blocks of `block` rows that see only the keys up to the
// block's end. The products go to the loaded BLAS (cblas_sgemm, found with dlsym, one
// call per head and block, operands read in place: the last axis must have stride 1, else
// the input is copied); the exp, the row sums and every scaling are loops over rows.
// Forward outputs: the attention [B, L, H, Dh] (row-major, so its transpose to the
// caller's [B, H, L, Dh] and back to [B, L, H * Dh] is free), the exps E [B, H, L, S]
// (0 where masked) and 1 / row sum [B, H, L], which the backward reuses.

Sgemm sgemm() {
  const Sgemm found = loaded_sgemm();
  if (found == nullptr) throw std::runtime_error("attention: no cblas_sgemm loaded");
  return found;
}

// C [m, n] = alpha op(A) op(B) + beta C, row-major, leading dimensions given
inline void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b,
                 int64_t ldb, float beta, float* c, int64_t ldc) {
  sgemm()(kRowMajor, ta ? kTrans : kNoTrans, tb ? kTrans : kNoTrans, int(m), int(n), int(k), 1.0f, a, int(lda), b,
          int(ldb), beta, c, int(ldc));
}

// An input whose last axis has stride 1 (the GEMM reads it in place), or a row-major copy
inline mx::array unit_last(const mx::array& x, mx::cpu::CommandEncoder& encoder) {
  return x.strides().back() == 1 || x.shape().back() == 1 ? x : row_major(x, encoder);
}

struct Heads {  // the shapes of one attention call
  int64_t batch, heads, kv_heads, length, keys, dim, block;
  bool causal;
  float scale;
  int64_t groups() const { return heads / kv_heads; }
  int64_t visible(int64_t row) const { return causal ? std::min(keys, row + 1) : keys; }
  int64_t block_keys(int64_t end) const { return causal ? std::min(keys, end) : keys; }
};

// The attention primitives' parameters: the shapes, which follow from the inputs, and
// the block, the mask and the scale, which make two calls different
class WithHeads : public CpuPrimitive {
 public:
  WithHeads(mx::Stream stream, Heads shape) : CpuPrimitive(stream), s_(shape) {}
  std::vector<double> params() const override { return {double(s_.block), double(s_.causal), s_.scale}; }

 protected:
  Heads s_;
};

class AttentionGrad : public WithHeads {
 public:
  using WithHeads::WithHeads;
  const char* name() const override { return "AttentionGrad"; }

  // inputs: q, k, v, out [B, L, H, Dh], E, 1 / l, d out [B, L, H, Dh] -> d q, d k, d v
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    auto& encoder = encoder_for(stream(), inputs, outputs);
    auto q = unit_last(inputs[0], encoder), k = unit_last(inputs[1], encoder), v = unit_last(inputs[2], encoder);
    auto d_out = unit_last(inputs[6], encoder);
    encoder.dispatch([s = s_, q = q.data<float>(), qs = q.strides(), k = k.data<float>(), ks = k.strides(),
                      v = v.data<float>(), vs = v.strides(), o = inputs[3].data<float>(),
                      e = inputs[4].data<float>(), inv = inputs[5].data<float>(), g = d_out.data<float>(),
                      gs = d_out.strides(), dq = outputs[0].data<float>(), dk = outputs[1].data<float>(),
                      dv = outputs[2].data<float>()]() {
      const int64_t L = s.length, S = s.keys, Dh = s.dim, H = s.heads;
      std::fill(dk, dk + s.batch * s.kv_heads * S * Dh, 0.0f);
      std::fill(dv, dv + s.batch * s.kv_heads * S * Dh, 0.0f);
      std::vector<float> work(static_cast<size_t>(s.block * S)), scaled_g(static_cast<size_t>(s.block * Dh)),
          centre(static_cast<size_t>(L));
      for (int64_t b = 0; b < s.batch; ++b) {
        for (int64_t h = 0; h < H; ++h) {
          const int64_t kvh = h / s.groups(), bh = b * H + h;
          const float* qh = q + b * qs[0] + h * qs[1];
          const float* kh = k + b * ks[0] + kvh * ks[1];
          const float* vh = v + b * vs[0] + kvh * vs[1];
          const float* oh = o + b * L * H * Dh + h * Dh;
          const float* gh = g + b * gs[0] + h * gs[2];
          const float *eh = e + bh * L * S, *invh = inv + bh * L;
          float* dqh = dq + bh * L * Dh;
          float* dkh = dk + (b * s.kv_heads + kvh) * S * Dh;
          float* dvh = dv + (b * s.kv_heads + kvh) * S * Dh;
          for (int64_t i = 0; i < L; ++i) {  // rowsum(dO o)
            const float *gi = gh + i * gs[1], *oi = oh + i * H * Dh;
            float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
            for (int64_t d = 0; d < Dh; ++d) dot += gi[d] * oi[d];
            centre[i] = dot;
          }
          for (int64_t a = 0; a < L; a += s.block) {
            const int64_t m = std::min(s.block, L - a), n = s.block_keys(a + m);
            // dV[:n] += E^T (dO / l): the row scaling moved onto the small side
            for (int64_t r = 0; r < m; ++r) {
              const float *gi = gh + (a + r) * gs[1], f = invh[a + r];
#pragma omp simd
              for (int64_t d = 0; d < Dh; ++d) scaled_g[r * Dh + d] = gi[d] * f;
            }
            gemm(true, false, n, Dh, m, eh + a * S, S, scaled_g.data(), Dh, 1.0f, dvh, Dh);
            // dP = dO V^T, then dS = p (dP - rowsum(dO o)) scale, p = E / l
            gemm(false, true, m, n, Dh, gh + a * gs[1], gs[1], vh, vs[2], 0.0f, work.data(), S);
            for (int64_t r = 0; r < m; ++r) {
              float* w = work.data() + r * S;
              const float* er = eh + (a + r) * S;
              const float f = invh[a + r] * s.scale, c = centre[a + r];
#pragma omp simd
              for (int64_t j = 0; j < n; ++j) w[j] = er[j] * f * (w[j] - c);
            }
            gemm(false, false, m, Dh, n, work.data(), S, kh, ks[2], 0.0f, dqh + a * Dh, Dh);  // dQ = dS K
            gemm(true, false, n, Dh, m, work.data(), S, qh + a * qs[2], qs[2], 1.0f, dkh, Dh);  // dK += dS^T Q
          }
        }
      }
    });
  }

};

class Attention : public WithHeads {
 public:
  using WithHeads::WithHeads;
  const char* name() const override { return "Attention"; }

  // inputs: q, k, v -> out [B, L, H, Dh], E [B, H, L, S], 1 / row sum [B, H, L]
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    auto& encoder = encoder_for(stream(), inputs, outputs);
    auto q = unit_last(inputs[0], encoder), k = unit_last(inputs[1], encoder), v = unit_last(inputs[2], encoder);
    encoder.dispatch([s = s_, q = q.data<float>(), qs = q.strides(), k = k.data<float>(), ks = k.strides(),
                      v = v.data<float>(), vs = v.strides(), o = outputs[0].data<float>(),
                      e = outputs[1].data<float>(), inv = outputs[2].data<float>()]() {
      const int64_t L = s.length, S = s.keys, Dh = s.dim, H = s.heads;
      for (int64_t b = 0; b < s.batch; ++b) {
        for (int64_t h = 0; h < H; ++h) {
          const int64_t kvh = h / s.groups(), bh = b * H + h;
          const float* qh = q + b * qs[0] + h * qs[1];
          const float* kh = k + b * ks[0] + kvh * ks[1];
          const float* vh = v + b * vs[0] + kvh * vs[1];
          float* oh = o + b * L * H * Dh + h * Dh;
          float *eh = e + bh * L * S, *invh = inv + bh * L;
          for (int64_t a = 0; a < L; a += s.block) {
            const int64_t m = std::min(s.block, L - a), n = s.block_keys(a + m);
            gemm(false, true, m, n, Dh, qh + a * qs[2], qs[2], kh, ks[2], 0.0f, eh + a * S, S);  // scores
            for (int64_t r = a; r < a + m; ++r) {
              float* er = eh + r * S;
              const int64_t seen = s.visible(r);
              const float peak = row_max(er, seen) * s.scale;
              float total = 0.0f;
#pragma omp simd reduction(+ : total)
              for (int64_t j = 0; j < seen; ++j) {
                er[j] = fast_exp(er[j] * s.scale - peak);
                total += er[j];
              }
              std::fill(er + seen, er + S, 0.0f);
              invh[r] = 1.0f / total;
            }
            gemm(false, false, m, Dh, n, eh + a * S, S, vh, vs[2], 0.0f, oh + a * H * Dh, H * Dh);  // E V
            for (int64_t r = a; r < a + m; ++r) {
              float* out = oh + r * H * Dh;
              const float f = invh[r];
#pragma omp simd
              for (int64_t d = 0; d < Dh; ++d) out[d] *= f;
            }
          }
        }
      }
    });
  }

  std::vector<mx::array> vjp(const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
                             const std::vector<int>& argnums, const std::vector<mx::array>& outputs) override {
    auto grads = mx::array::make_arrays(
        {primals[0].shape(), primals[1].shape(), primals[2].shape()}, {mx::float32, mx::float32, mx::float32},
        std::make_shared<AttentionGrad>(stream(), s_),
        {primals[0], primals[1], primals[2], outputs[0], outputs[1], outputs[2], cotangents[0]});
    std::vector<mx::array> chosen;
    for (int arg : argnums) chosen.push_back(grads[arg]);
    return chosen;
  }

};

mx::array attention(const mx::array& q, const mx::array& k, const mx::array& v, float scale, bool causal, int block,
                    mx::StreamOrDevice s = {}) {
  auto stream = mx::to_stream(s);
  check_cpu(stream, "attention");
  for (auto* x : {&q, &k, &v}) check_float32(*x, "attention");
  if (q.ndim() != 4 || k.ndim() != 4 || v.shape() != k.shape() || q.shape(0) != k.shape(0) ||
      q.shape(3) != k.shape(3) || k.shape(1) < 1 || q.shape(1) % k.shape(1) || block < 1 || !(scale > 0.0f))
    throw std::invalid_argument("attention takes q [B, H, L, Dh], k and v [B, Hkv, S, Dh] with H a multiple of Hkv");
  if (causal && q.shape(2) != k.shape(2)) throw std::invalid_argument("causal attention takes as many keys as queries");
  Heads shape{q.shape(0), q.shape(1), k.shape(1), q.shape(2), k.shape(2), q.shape(3), block, causal, scale};
  auto outs = mx::array::make_arrays(
      {{q.shape(0), q.shape(2), q.shape(1), q.shape(3)}, {q.shape(0), q.shape(1), q.shape(2), k.shape(2)},
       {q.shape(0), q.shape(1), q.shape(2)}},
      {mx::float32, mx::float32, mx::float32}, std::make_shared<Attention>(stream, shape), {q, k, v});
  return outs[0];
}

}  // namespace

void register_kernels(nb::module_& m) {
  m.def("row_major_copies", [] { return int64_t(row_major_copies); },
        "How many inputs the kernels have copied row-major first (not being row-major) so far");
  m.def("cross_entropy", &cross_entropy, "logits"_a, "targets"_a, nb::kw_only(), "stream"_a = nb::none(),
        "logits [N, V] float32, targets [N] -> loss [N] in nats; backward: softmax - onehot, one pass");
  m.def("swiglu", &swiglu, "gate"_a, "up"_a, nb::kw_only(), "stream"_a = nb::none(),
        "silu(gate) * up for float32 arrays of one shape, one pass forward and backward");
  m.def("gelu", &gelu, "x"_a, nb::kw_only(), "stream"_a = nb::none(),
        "x (1 + erf(x / sqrt 2)) / 2 for a float32 array (exact GELU, as BERT's), one pass forward and backward");
  m.def("nearest", &nearest, "products"_a, "norms"_a, nb::kw_only(), "stream"_a = nb::none(),
        "(index [m] int32, value [m]) of min_j norms_j - 2 products_ij for products [m, k], norms [k], float32");
  m.def("cluster_sums", &cluster_sums, "x"_a, "labels"_a, "k"_a, nb::kw_only(), "stream"_a = nb::none(),
        "(sums [k, d], counts [k]) of the rows of x [n, d] float32 in each cluster of labels [n]");
  m.def("rms_norm", &rms_norm, "x"_a, "weight"_a, "eps"_a, nb::kw_only(), "stream"_a = nb::none(),
        "x [..., D] / sqrt(mean(x^2) + eps) * weight [D], float32");
  m.def("layer_norm", &layer_norm, "x"_a, "weight"_a, "bias"_a, "eps"_a, nb::kw_only(), "stream"_a = nb::none(),
        "(x [..., D] - mean) / sqrt(var + eps) * weight [D] + bias [D], float32");
  m.def("attention", &attention, "q"_a, "k"_a, "v"_a, "scale"_a, "causal"_a, "block"_a, nb::kw_only(),
        "stream"_a = nb::none(),
        "softmax(scale q k^T (+ causal mask)) v for q [B, H, L, Dh], k, v [B, Hkv, S, Dh] -> [B, L, H, Dh]; "
        "query blocks of `block` rows; forward and backward fused");
}

}  // namespace mlxspec
