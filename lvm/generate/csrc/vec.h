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

// The lane sums of kLanes vectors in one vector, `part[i]` summed into lane bitrev(i) = kRev[i] (its own
// inverse): a tree of halving shuffles and adds (about 2 operations a vector) where a horizontal sum per
// vector costs ~2 log2(kLanes). Each vector's lanes are added in the same order wherever it sits in `part`.
#if defined(__AVX512F__)
inline vfl sum_lanes(const vfl* part) {
  vfl a[8], b[4], c[2];
  for (int i = 0; i < 8; ++i)
    a[i] = __builtin_shufflevector(part[2 * i], part[2 * i + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22,
                                   23) +
           __builtin_shufflevector(part[2 * i], part[2 * i + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28,
                                   29, 30, 31);
  for (int i = 0; i < 4; ++i)
    b[i] = __builtin_shufflevector(a[2 * i], a[2 * i + 1], 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27) +
           __builtin_shufflevector(a[2 * i], a[2 * i + 1], 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31);
  for (int i = 0; i < 2; ++i)
    c[i] = __builtin_shufflevector(b[2 * i], b[2 * i + 1], 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29) +
           __builtin_shufflevector(b[2 * i], b[2 * i + 1], 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
  return __builtin_shufflevector(c[0], c[1], 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30) +
         __builtin_shufflevector(c[0], c[1], 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31);
}
constexpr int kRev[16] = {0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15};
#else
inline vfl sum_lanes(const vfl* part) {
  vfl a[4], b[2];
  for (int i = 0; i < 4; ++i)
    a[i] = __builtin_shufflevector(part[2 * i], part[2 * i + 1], 0, 1, 2, 3, 8, 9, 10, 11) +
           __builtin_shufflevector(part[2 * i], part[2 * i + 1], 4, 5, 6, 7, 12, 13, 14, 15);
  for (int i = 0; i < 2; ++i)
    b[i] = __builtin_shufflevector(a[2 * i], a[2 * i + 1], 0, 1, 8, 9, 4, 5, 12, 13) +
           __builtin_shufflevector(a[2 * i], a[2 * i + 1], 2, 3, 10, 11, 6, 7, 14, 15);
  return __builtin_shufflevector(b[0], b[1], 0, 8, 2, 10, 4, 12, 6, 14) +
         __builtin_shufflevector(b[0], b[1], 1, 9, 3, 11, 5, 13, 7, 15);
}
constexpr int kRev[8] = {0, 4, 2, 6, 1, 5, 3, 7};
#endif

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
