// CPU kernels for decoding (lvm/generate/kernels.py builds this once per machine; lvm/generate/layers.py uses it).
//
// Decoding is memory-bound: every weight matrix and the whole KV cache are read once per forward pass.
// PyTorch's CPU paths for these shapes (oneDNN bf16 one-row products, fp32 SDPA) stay well below the memory
// bandwidth and its bf16 attention for one query is slower still (`lvm bench generate` shows both); these loops stream bf16 or fp32 weights
// and caches with fp32 arithmetic and approach the memory bandwidth. Plain C++ written for the compiler's
// auto-vectoriser (-O3 and -march for the ISA torch dispatches to): portable across AVX2 / AVX-512 / NEON,
// no intrinsics but the bf16 dot products of CPUs that have them (vec.h). Each kernel is a template on the
// stored element type (uint16_t = bf16 bits, or float); attention is in attend.cpp.
//
// The kernels are batch-invariant: a row's result has the same bits whatever other rows (or queries) come
// with it, so a k-token verification pass of speculative decoding scores each token exactly as a one-token
// step would, and greedy speculative decoding equals plain greedy decoding token for token.

#include "vec.h"

namespace lvm_kernels {
namespace {

// Accumulators per row: enough independent FMA chains that their latency does not bound the loop. Fixed for
// every row count, so that a row's sum is formed in the same order in every batch (batch invariance).
constexpr int kU = 4;
// Rows sharing one pass over a weight row: NB * kU accumulators must stay in registers (16 on AVX2, 32 on AVX-512).
constexpr int kMaxNB = kLanes == 16 ? 4 : 2;

// The horizontal sum of a row's accumulators, out of line: one instance of code for every NB, so the
// compiler cannot reassociate it differently per NB under -ffast-math.
template <typename W>
__attribute__((noinline)) float finish_row(const vfl* acc, const W* wr, const float* x, int64_t I16, int64_t I) {
  vfl t = acc[0];
  for (int u = 1; u < kU; ++u) t += acc[u];
  float s = 0.f;
  for (int j = 0; j < kLanes; ++j) s += t[j];
  for (int64_t i = I16; i < I; ++i) s += to_float(wr[i]) * x[i];
  return s;
}

// y[b, o] = sum_i x[b, i] * w[o, i] for NB rows of x at once: the weight row is loaded once for all NB inputs.
template <int NB, typename W>
void linear_row(const float* x, int64_t ldx, const W* wr, int64_t I, float* y, int64_t ldy) {
  vfl acc[NB][kU];
  for (int b = 0; b < NB; ++b)
    for (int u = 0; u < kU; ++u) acc[b][u] = vfl{};
  const int64_t IU = I - I % (kLanes * kU), I16 = I - I % kLanes;
  for (int64_t i = 0; i < IU; i += kLanes * kU) {
    for (int u = 0; u < kU; ++u) {
      const vfl wv = load_lanes(wr + i + u * kLanes);
      for (int b = 0; b < NB; ++b) acc[b][u] += wv * load_lanes(x + b * ldx + i + u * kLanes);
    }
  }
  for (int64_t i = IU; i < I16; i += kLanes) {
    const vfl wv = load_lanes(wr + i);
    for (int b = 0; b < NB; ++b) acc[b][0] += wv * load_lanes(x + b * ldx + i);
  }
  for (int b = 0; b < NB; ++b) y[b * ldy] = finish_row<W>(acc[b], wr, x + b * ldx, I16, I);
}

// Each thread streams its weight rows from memory once; the groups of input rows after the first read the
// weight row again from L1.
template <typename W>
void linear_dispatch(const float* x, int64_t ldx, int64_t B, const W* w, int64_t O, int64_t I, float* y,
                     int64_t ldy) {
  at::parallel_for(0, O, 16, [&](int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; ++o) {
      const W* wr = w + o * I;
      int64_t b = 0;
      for (; b + kMaxNB <= B; b += kMaxNB) linear_row<kMaxNB, W>(x + b * ldx, ldx, wr, I, y + b * ldy + o, ldy);
      for (; b + 2 <= B; b += 2) linear_row<2, W>(x + b * ldx, ldx, wr, I, y + b * ldy + o, ldy);
      for (; b < B; ++b) linear_row<1, W>(x + b * ldx, ldx, wr, I, y + b * ldy + o, ldy);
    }
  });
}

}  // namespace

// x: float32 (B, I), rows contiguous; w: bfloat16 or float32 (O, I) contiguous. Returns float32 (B, O).
torch::Tensor linear(torch::Tensor x, torch::Tensor w) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32 && x.stride(1) == 1, "x: float32 (B, I)");
  TORCH_CHECK(w.dim() == 2 && stored_type(w) && w.is_contiguous(), "w: bfloat16 or float32 (O, I)");
  TORCH_CHECK(x.size(1) == w.size(1), "x and w disagree on the input size");
  const int64_t B = x.size(0), O = w.size(0), I = w.size(1);
  auto y = torch::empty({B, O}, x.options());
  if (w.scalar_type() == torch::kBFloat16)
    linear_dispatch(x.data_ptr<float>(), x.stride(0), B, data_as<uint16_t>(w), O, I, y.data_ptr<float>(), O);
  else
    linear_dispatch(x.data_ptr<float>(), x.stride(0), B, data_as<float>(w), O, I, y.data_ptr<float>(), O);
  return y;
}

// The elementwise steps of a decoding layer, one call each where PyTorch takes several small ops (a few
// microseconds apiece, which add up to a quarter of a 100m model's step). Each row runs the same loop
// whatever the number of rows, so these are batch-invariant too.

// x * rsqrt(mean(x^2) + eps) * w over the last dimension: x float32 (..., D) contiguous, w float32 (D).
torch::Tensor rms_norm(torch::Tensor x, torch::Tensor w, double eps) {
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 && x.is_contiguous(), "x: float32, contiguous");
  TORCH_CHECK(w.dim() == 1 && w.scalar_type() == torch::kFloat32 && w.size(0) == x.size(-1), "w: float32 (D,)");
  const int64_t D = x.size(-1), N = x.numel() / D;
  auto y = torch::empty_like(x);
  const float *xp = x.data_ptr<float>(), *wp = w.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  for (int64_t r = 0; r < N; ++r) {
    const float* xr = xp + r * D;
    float ss = 0.f;
#pragma omp simd reduction(+ : ss)
    for (int64_t d = 0; d < D; ++d) ss += xr[d] * xr[d];
    const float inv = 1.f / std::sqrt(ss / D + static_cast<float>(eps));
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) yp[r * D + d] = xr[d] * inv * wp[d];
  }
  return y;
}

// HF Llama's rotate-half rope: x float32 (B, Q, n, hd) with unit stride in hd (e.g. the q and k heads of a
// fused qkv product), cos/sin float32 (C, Q, hd) contiguous with C = 1 (shared positions) or B (per row).
// Returns a new contiguous (B, Q, n, hd).
torch::Tensor rope(torch::Tensor x, torch::Tensor cos, torch::Tensor sin) {
  TORCH_CHECK(x.dim() == 4 && x.scalar_type() == torch::kFloat32 && x.stride(3) == 1, "x: float32 (B, Q, n, hd)");
  const int64_t B = x.size(0), Q = x.size(1), n = x.size(2), hd = x.size(3), h = hd / 2;
  TORCH_CHECK(cos.dim() == 3 && cos.sizes() == sin.sizes() && cos.is_contiguous() && sin.is_contiguous() &&
              cos.scalar_type() == torch::kFloat32 && sin.scalar_type() == torch::kFloat32 &&
              (cos.size(0) == 1 || cos.size(0) == B) && cos.size(1) == Q && cos.size(2) == hd && hd % 2 == 0,
              "cos, sin: float32 (1 or B, Q, hd)");
  auto y = torch::empty({B, Q, n, hd}, x.options());
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t q = 0; q < Q; ++q) {
      const int64_t cb = cos.size(0) == 1 ? 0 : b;
      const float* c = cos.data_ptr<float>() + (cb * Q + q) * hd;
      const float* s = sin.data_ptr<float>() + (cb * Q + q) * hd;
      for (int64_t j = 0; j < n; ++j) {
        const float* xr = xp + b * x.stride(0) + q * x.stride(1) + j * x.stride(2);
        float* yr = yp + ((b * Q + q) * n + j) * hd;
#pragma omp simd
        for (int64_t d = 0; d < h; ++d) {
          yr[d] = xr[d] * c[d] - xr[d + h] * s[d];
          yr[d + h] = xr[d + h] * c[d + h] + xr[d] * s[d + h];
        }
      }
    }
  return y;
}

// silu(g) * u of gu = [g | u]: float32 (..., 2I) contiguous -> (..., I).
torch::Tensor silu_mul(torch::Tensor gu) {
  TORCH_CHECK(gu.scalar_type() == torch::kFloat32 && gu.is_contiguous() && gu.size(-1) % 2 == 0,
              "gu: float32 (..., 2I), contiguous");
  const int64_t I = gu.size(-1) / 2, N = gu.numel() / (2 * I);
  auto sizes = gu.sizes().vec();
  sizes.back() = I;
  auto y = torch::empty(sizes, gu.options());
  const float* gp = gu.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  for (int64_t r = 0; r < N; ++r) {
    const float *g = gp + r * 2 * I, *u = g + I;
#pragma omp simd
    for (int64_t i = 0; i < I; ++i) yp[r * I + i] = g[i] / (1.f + std::exp(-g[i])) * u[i];
  }
  return y;
}

}  // namespace lvm_kernels

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("linear", &lvm_kernels::linear, "x (B, I) fp32 @ w (O, I) bf16|fp32 ^T -> (B, O) fp32");
  m.def("attend", &lvm_kernels::attend, "one-query attention over a bf16|fp32 KV cache, fp32 math");
  m.def("attend_rows", &lvm_kernels::attend_rows, "Q causal queries per row at per-row cache lengths, fp32 math");
  m.def("rms_norm", &lvm_kernels::rms_norm, "RMS norm of fp32 rows times w");
  m.def("rope", &lvm_kernels::rope, "rotate-half rope of fp32 (B, Q, n, hd) heads");
  m.def("silu_mul", &lvm_kernels::silu_mul, "silu(g) * u of fp32 [g | u] rows");
  // Whether a bf16 cache's attention scores use bf16 dot products (the query rounded to bf16).
  m.attr("dot_bf16") = lvm_kernels::kDotBf16;
}
