// The `_native` extension module: the bf16 matmul (bf16_matmul.cpp) and the float32 CPU
// kernels of the training step (kernels.cpp). Built by mlx_specialize/native/__init__.py.
#include "common.h"

NB_MODULE(_native, m) {
  m.doc() = "C++ pieces of mlx-specialize for x86 CPUs (bf16_matmul.cpp, kernels.cpp)";
  mlxspec::register_bf16(m);
  mlxspec::register_kernels(m);
}
