// What the CPU decode kernels share (decode.cpp: products, elementwise steps, the module; attend.cpp:
// attention): fp32 vectors of the ISA's width over bf16 or fp32 storage.

#pragma once

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

namespace lvm_kernels {

#if defined(__AVX512F__)
constexpr int kLanes = 16;  // fp32 lanes of one native vector register (512-bit)
#else
constexpr int kLanes = 8;  // 256-bit (AVX2); on 128-bit ISAs the compiler splits it in two
#endif

inline float to_float(uint16_t b) {  // bf16 bits -> fp32: the upper half of the fp32 pattern
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline float to_float(float f) { return f; }

// One register of kLanes fp32 values (GCC/Clang vector extensions): the accumulators stay in registers,
// where plain arrays of floats are spilled to memory by the auto-vectoriser on AVX2.
typedef float vfl __attribute__((vector_size(4 * kLanes)));
typedef uint16_t vbf __attribute__((vector_size(2 * kLanes)));
typedef uint32_t vu32 __attribute__((vector_size(4 * kLanes)));

inline vfl load_lanes(const float* p) {
  vfl v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline vfl load_lanes(const uint16_t* p) {  // kLanes bf16 -> fp32
  vbf b;
  std::memcpy(&b, p, sizeof b);
  const vu32 u = __builtin_convertvector(b, vu32) << 16;
  vfl f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

#if defined(__AVX512BF16__)
// A bf16 cache is scored with the CPU's bf16 dot products (16 lanes of 2-term sums per instruction) against the
// query rounded to bf16, as a bf16 model's attention does (PyTorch's included): half the arithmetic of
// widening the keys to fp32.
constexpr bool kDotBf16 = true;
typedef __m512bh vbh;  // 32 bf16 values
#else
constexpr bool kDotBf16 = false;
typedef vfl vbh;  // unused
#endif

// The storage of a bf16 (as uint16_t bits) or fp32 tensor.
template <typename W>
const W* data_as(const torch::Tensor& t);
template <>
inline const uint16_t* data_as<uint16_t>(const torch::Tensor& t) {
  return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>());
}
template <>
inline const float* data_as<float>(const torch::Tensor& t) { return t.data_ptr<float>(); }

inline bool stored_type(const torch::Tensor& t) {
  return t.scalar_type() == torch::kBFloat16 || t.scalar_type() == torch::kFloat32;
}

torch::Tensor attend_rows(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor lengths, double scale);
torch::Tensor attend(torch::Tensor q, torch::Tensor k, torch::Tensor v, int64_t T, double scale);

}  // namespace lvm_kernels
