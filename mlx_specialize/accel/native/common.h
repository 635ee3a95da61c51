// What the C++ pieces share: a primitive's CPU set-up, and the functions each file
// registers in the `_native` module (module.cpp).
#pragma once

#include <dlfcn.h>

#include <atomic>
#include <cstdint>
#include <vector>

#include <nanobind/nanobind.h>

#include "mlx/allocator.h"
#include "mlx/array.h"
#include "mlx/backend/common/utils.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/stream.h"

namespace mlxspec {

namespace mx = mlx::core;

// A primitive's CPU evaluation set-up: allocate `outputs`, register `inputs` and them with
// the stream's command encoder (which keeps them alive until the kernel has run)
inline mx::cpu::CommandEncoder& encoder_for(mx::Stream stream, const std::vector<mx::array>& inputs,
                                            std::vector<mx::array>& outputs) {
  for (auto& out : outputs) out.set_data(mx::allocator::malloc(out.nbytes()));
  auto& encoder = mx::cpu::get_command_encoder(stream);
  for (auto& x : inputs) encoder.set_input_array(x);
  for (auto& out : outputs) encoder.set_output_array(out);
  return encoder;
}

// A 4-byte-element input `x` row-major: itself, or a copy the stream makes before the
// kernel runs (kept alive until it has). Done here, when the layout is known, rather
// than with mx::contiguous in the graph: no extra node per input, and a copy only for
// the inputs that need one (the training step's need none; tests count them).
inline std::atomic<int64_t> row_major_copies{0};  // how many inputs were copied (tests, benchmarks)

inline mx::array row_major(const mx::array& x, mx::cpu::CommandEncoder& encoder) {
  if (x.flags().row_contiguous) return x;
  row_major_copies++;
  mx::array copy(x.shape(), x.dtype(), nullptr, {});
  copy.set_data(mx::allocator::malloc(copy.nbytes()));
  encoder.add_temporary(copy);
  encoder.dispatch([src = x.data<uint32_t>(), dst = copy.data<uint32_t>(), n = int64_t(x.size()), shape = x.shape(),
                    strides = x.strides()]() {
    // row by row of the last axis: one index computation per row, then its stride (0
    // for a broadcast, e.g. the cotangent of a sum)
    const int64_t inner = shape.empty() ? 1 : shape.back(), step = strides.empty() ? 0 : strides.back();
    for (int64_t row = 0; inner > 0 && row < n / inner; ++row) {
      const uint32_t* from = src + mx::elem_to_loc(row * inner, shape, strides);
      uint32_t* to = dst + row * inner;
      for (int64_t i = 0; i < inner; ++i) to[i] = from[i * step];
    }
  });
  return copy;
}

// The CBLAS float32 GEMM of the BLAS mlx_specialize.backend loaded with RTLD_GLOBAL
// (the one MLX calls), found once with dlsym; null if none is loaded
enum { kRowMajor = 101, kNoTrans = 111, kTrans = 112 };
using Sgemm = void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int, float, float*, int);

inline Sgemm loaded_sgemm() {
  static const Sgemm found = reinterpret_cast<Sgemm>(dlsym(RTLD_DEFAULT, "cblas_sgemm"));
  return found;
}

void register_bf16(nanobind::module_& m);     // bf16_matmul.cpp
void register_kernels(nanobind::module_& m);  // kernels.cpp

}  // namespace mlxspec
