// A bf16 matrix product for MLX on x86 CPUs: C = A @ B with A, B bfloat16 arrays (the
// caller rounds float32 ones with `to_bf16`, once per array however many products read
// it), products summed in float32, C float32 (what `torch.autocast` does for a linear
// layer on CPU, except that C stays float32).
//
// Why: MLX's own bf16 matmul on x86 runs a scalar loop (~5 GFLOP/s), so MLX trains in
// float32 there. Intel MKL's `cblas_gemm_bf16bf16f32` uses AMX or AVX512-BF16 where the
// CPU has them: 1.6-3.2x MLX's float32 matmul on a small LM's shapes, one core of a Xeon
// with AMX (docs/bf16-training.md). The BLAS is the one mlx_specialize.backend loaded with
// RTLD_GLOBAL, found with dlsym; without MKL, `emulated` products widen the same bf16
// values to float32 and multiply them with `cblas_sgemm` (float32 speed: for tests).
//
// Built at first use by mlx_specialize/native/__init__.py (CMake + nanobind, against the
// installed MLX), for this machine only (-march=native).
#include <dlfcn.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

#include "common.h"

#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/variant.h>

#include "mlx/backend/common/utils.h"
#include "mlx/ops.h"
#include "mlx/primitives.h"
#include "mlx/utils.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace mlxspec {
namespace {

// cblas_gemm_bf16bf16f32 (MKL): (layout, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
using Bf16Gemm = void (*)(int, int, int, int, int, int, float, const uint16_t*, int,
                          const uint16_t*, int, float, float*, int);

struct Gemms {
  Bf16Gemm bf16 = nullptr;
  Sgemm f32 = nullptr;
};

const Gemms& gemms() {
  static Gemms found = [] {
    Gemms g;
    g.bf16 = reinterpret_cast<Bf16Gemm>(dlsym(RTLD_DEFAULT, "cblas_gemm_bf16bf16f32"));
    g.f32 = loaded_sgemm();
    return g;
  }();
  return found;
}

bool emulated_allowed = false;  // set_emulation(true): products by sgemm on the same bf16 values

// float32 -> bfloat16 bits, round to nearest even (as MLX's astype); NaN stays NaN
inline uint16_t round_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return uint16_t((u >> 16) | 0x40u);
  return uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

// n contiguous floats to bf16: 32 at a time with AVX512-BF16 (the same rounding, but
// denormal inputs become zero), one at a time otherwise
void round_span(const float* x, uint16_t* out, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512BF16__)
  for (; i + 32 <= n; i += 32) {
    __m512bh packed = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(x + i));
    _mm512_storeu_si512(reinterpret_cast<void*>(out + i), reinterpret_cast<__m512i>(packed));
  }
#endif
  for (; i < n; ++i) out[i] = round_bf16(x[i]);
}

inline float from_bf16(uint16_t b) {
  uint32_t u = uint32_t(b) << 16;
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

// A 2-D bfloat16 operand as the gemm reads it: memory holding the matrix row-major, or
// its transpose row-major (a transposed view), or anything else (copied row-major).
struct Operand {
  const uint16_t* data;
  int64_t rows, cols, row_stride, col_stride;
  bool row_major() const { return col_stride == 1 && (row_stride == cols || rows == 1); }
  bool transposed() const { return !row_major() && row_stride == 1 && (col_stride == rows || cols == 1); }
  bool direct() const { return row_major() || transposed(); }
  int ld() const { return int(transposed() ? rows : cols); }
};

// the first matrix of `a` [..., rows, cols] as an operand
Operand operand(const mx::array& a) {
  const int nd = a.ndim();
  return {reinterpret_cast<const uint16_t*>(a.data<mx::bfloat16_t>()), a.shape(nd - 2), a.shape(nd - 1),
          int64_t(a.strides()[nd - 2]), int64_t(a.strides()[nd - 1])};
}

// The operand's values, as bf16 or as float32, in its own order (direct) or row-major
template <typename T>
void unpack(const Operand& x, T* out) {
  auto cast = [](uint16_t v) -> T {
    if constexpr (std::is_same_v<T, float>) return from_bf16(v);
    else return v;
  };
  if (x.direct()) {
    const int64_t n = x.rows * x.cols;
    for (int64_t i = 0; i < n; ++i) out[i] = cast(x.data[i]);
    return;
  }
  for (int64_t r = 0; r < x.rows; ++r)
    for (int64_t c = 0; c < x.cols; ++c) out[r * x.cols + c] = cast(x.data[r * x.row_stride + c * x.col_stride]);
}

// C [m, n] float32 = A [m, k] @ B [k, n], A and B bfloat16
void bf16_product(const Operand& a, const Operand& b, float* c) {
  const int m = int(a.rows), k = int(a.cols), n = int(b.cols);
  const auto& g = gemms();
  const bool ta = a.transposed(), tb = b.transposed();
  const int lda = a.direct() ? a.ld() : k, ldb = b.direct() ? b.ld() : n;
  if (g.bf16 != nullptr && !emulated_allowed) {
    // an operand the GEMM cannot read in place is copied row-major into `copy` first
    auto in_place = [](const Operand& x, mx::allocator::Data& copy) -> const uint16_t* {
      if (x.direct()) return x.data;
      auto* out = static_cast<uint16_t*>(copy.buffer().raw_ptr());
      unpack(x, out);
      return out;
    };
    mx::allocator::Data acopy = mx::allocator::malloc(a.direct() ? 0 : size_t(m) * k * 2);
    mx::allocator::Data bcopy = mx::allocator::malloc(b.direct() ? 0 : size_t(k) * n * 2);
    g.bf16(kRowMajor, ta ? kTrans : kNoTrans, tb ? kTrans : kNoTrans, m, n, k, 1.0f, in_place(a, acopy), lda,
           in_place(b, bcopy), ldb, 0.0f, c, n);
    return;
  }
  if (g.f32 == nullptr) throw std::runtime_error("bf16_matmul: no cblas_sgemm loaded");
  auto abuf = mx::allocator::malloc(size_t(m) * k * 4), bbuf = mx::allocator::malloc(size_t(k) * n * 4);
  auto* a32 = static_cast<float*>(abuf.buffer().raw_ptr());
  auto* b32 = static_cast<float*>(bbuf.buffer().raw_ptr());
  unpack(a, a32);
  unpack(b, b32);
  g.f32(kRowMajor, ta ? kTrans : kNoTrans, tb ? kTrans : kNoTrans, m, n, k, 1.0f, a32, lda, b32, ldb, 0.0f, c, n);
}

mx::array bf16_matmul(const mx::array& a, const mx::array& b, mx::StreamOrDevice s = {});

// x float32 -> bfloat16 (row-major), with a gradient that is not rounded: the cotangent
// is passed back as float32 (MLX's astype requires a bfloat16 cotangent and would round
// every weight gradient to bfloat16)
class ToBf16 : public mx::Primitive {
 public:
  explicit ToBf16(mx::Stream stream) : mx::Primitive(stream) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    auto& x = inputs[0];
    auto& out = outputs[0];
    auto& encoder = encoder_for(stream(), inputs, outputs);
    auto* dst = reinterpret_cast<uint16_t*>(out.data<mx::bfloat16_t>());
    if (x.flags().row_contiguous) {
      encoder.dispatch([src = x.data<float>(), dst, n = int64_t(x.size())]() { round_span(src, dst, n); });
    } else {
      encoder.dispatch([src = x.data<float>(), dst, n = int64_t(x.size()), shape = x.shape(), strides = x.strides()]() {
        for (int64_t i = 0; i < n; ++i) dst[i] = round_bf16(src[mx::elem_to_loc(i, shape, strides)]);
      });
    }
  }

  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("to_bf16 runs on the CPU only");
  }

  std::vector<mx::array> vjp(const std::vector<mx::array>&, const std::vector<mx::array>& cotangents,
                             const std::vector<int>&, const std::vector<mx::array>&) override {
    return {mx::astype(cotangents[0], mx::float32, stream())};
  }

  std::vector<mx::array> jvp(const std::vector<mx::array>&, const std::vector<mx::array>& tangents,
                             const std::vector<int>&) override {
    return {to_bf16(tangents[0], stream())};
  }

  const char* name() const override { return "ToBf16"; }
  bool is_equivalent(const mx::Primitive&) const override { return true; }

  static mx::array to_bf16(const mx::array& x, mx::StreamOrDevice s) {
    if (x.dtype() != mx::float32) throw std::invalid_argument("to_bf16 takes a float32 array");
    auto stream = mx::to_stream(s);
    if (stream.device != mx::Device::cpu) throw std::invalid_argument("to_bf16 runs on the CPU only");
    return mx::array(x.shape(), mx::bfloat16, std::make_shared<ToBf16>(stream), {x});
  }
};

mx::array to_bf16(const mx::array& x, mx::StreamOrDevice s = {}) { return ToBf16::to_bf16(x, s); }

// C [..., m, n] = A [..., m, k] @ B [..., k, n], the same batch shape (no broadcasting):
// one GEMM per matrix, each operand read in place when row- or column-major
class Bf16Matmul : public mx::Primitive {
 public:
  explicit Bf16Matmul(mx::Stream stream) : mx::Primitive(stream) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    auto& a = inputs[0];
    auto& b = inputs[1];
    auto& out = outputs[0];
    auto& encoder = encoder_for(stream(), inputs, outputs);
    const int nd = a.ndim();
    const int64_t m = a.shape(nd - 2), k = a.shape(nd - 1), n = b.shape(nd - 1);
    encoder.dispatch([a0 = operand(a), b0 = operand(b), c = out.data<float>(), m, k, n,
                      batch = int64_t(out.size() / (m * n)), a_shape = a.shape(), a_strides = a.strides(),
                      b_shape = b.shape(), b_strides = b.strides()]() {
      for (int64_t i = 0; i < batch; ++i) {
        Operand ai = a0, bi = b0;
        ai.data += mx::elem_to_loc(i * m * k, a_shape, a_strides);
        bi.data += mx::elem_to_loc(i * k * n, b_shape, b_strides);
        bf16_product(ai, bi, c + i * m * n);
      }
    });
  }

  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("bf16_matmul runs on the CPU only");
  }

  // C = A B: dA = dC B^T, dB = A^T dC, with dC rounded to bf16 once for both; the
  // gradients are float32 (what to_bf16 passes back)
  std::vector<mx::array> vjp(const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
                             const std::vector<int>& argnums, const std::vector<mx::array>&) override {
    auto grad = to_bf16(cotangents[0], stream());
    std::vector<mx::array> grads;
    for (int arg : argnums) {
      if (arg == 0)
        grads.push_back(bf16_matmul(grad, mx::swapaxes(primals[1], -1, -2, stream()), stream()));
      else
        grads.push_back(bf16_matmul(mx::swapaxes(primals[0], -1, -2, stream()), grad, stream()));
    }
    return grads;
  }

  std::vector<mx::array> jvp(const std::vector<mx::array>& primals, const std::vector<mx::array>& tangents,
                             const std::vector<int>& argnums) override {
    std::vector<mx::array> parts;
    for (size_t i = 0; i < argnums.size(); ++i) {
      auto t = to_bf16(tangents[i], stream());
      parts.push_back(argnums[i] == 0 ? bf16_matmul(t, primals[1], stream()) : bf16_matmul(primals[0], t, stream()));
    }
    return {parts.size() == 1 ? parts[0] : mx::add(parts[0], parts[1], stream())};
  }

  const char* name() const override { return "Bf16Matmul"; }
  bool is_equivalent(const mx::Primitive&) const override { return true; }
};

mx::array bf16_matmul(const mx::array& a, const mx::array& b, mx::StreamOrDevice s) {
  const int nd = a.ndim();
  bool batch_equal = nd >= 2 && b.ndim() == nd;
  for (int i = 0; batch_equal && i < nd - 2; ++i) batch_equal = a.shape(i) == b.shape(i);
  if (!batch_equal || a.shape(nd - 1) != b.shape(nd - 2))
    throw std::invalid_argument("bf16_matmul takes [..., m, k] and [..., k, n] arrays of one batch shape");
  if (a.dtype() != mx::bfloat16 || b.dtype() != mx::bfloat16)
    throw std::invalid_argument("bf16_matmul takes bfloat16 arrays");
  auto stream = mx::to_stream(s);
  if (stream.device != mx::Device::cpu) throw std::invalid_argument("bf16_matmul runs on the CPU only");
  auto shape = a.shape();
  shape.back() = b.shape(nd - 1);
  return mx::array(shape, mx::float32, std::make_shared<Bf16Matmul>(stream), {a, b});
}

std::string gemm_name() {
  const auto& g = gemms();
  if (g.bf16 != nullptr && !emulated_allowed) return "cblas_gemm_bf16bf16f32";
  return g.f32 != nullptr ? "emulated (cblas_sgemm on the bf16 values)" : "";
}

}  // namespace

void register_bf16(nb::module_& m) {
  m.def("bf16_matmul", &bf16_matmul, "a"_a, "b"_a, nb::kw_only(), "stream"_a = nb::none(),
        "a [..., m, k] @ b [..., k, n] (one batch shape): bfloat16 in, float32 out, float32 sums");
  m.def("to_bf16", &to_bf16, "x"_a, nb::kw_only(), "stream"_a = nb::none(),
        "float32 -> bfloat16, rounded to nearest even; its gradient stays float32");
  m.def("gemm", &gemm_name, "The product used: MKL's bf16 GEMM, emulated, or '' (none found)");
  m.def("has_bf16_gemm", [] { return gemms().bf16 != nullptr; }, "Whether MKL's bf16 GEMM is loaded");
  m.def("set_emulation", [](bool on) { emulated_allowed = on; }, "on",
        "Use the emulated product even where the bf16 GEMM exists (tests)");
}

}  // namespace mlxspec
