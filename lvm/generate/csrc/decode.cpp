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

// Accumulators per output and row: with MO outputs and NB rows at once there are enough independent FMA chains
// that their latency does not bound the loop. Fixed for every row count, so that a row's sum is formed in the
// same order in every batch (batch invariance); two add in one order whatever the compiler does with them.
constexpr int kU = 2;
// Outputs (weight rows) and input rows sharing one pass over the inputs: each loaded weight vector serves NB
// rows and each input vector MO outputs; MO * NB * kU accumulators stay in registers (16 on AVX2, 32 on AVX-512).
// MO = 2 only for several rows against a small fp32 matrix (loads bound that loop, and the cache holds such a
// model's weights between passes); matrices streamed from memory read faster one row at a time (measured: two at
// once read 100m's bf16 matrices at half the bandwidth, 1 or 2 input rows alike).
constexpr int64_t kTwoRowsMaxBytes = 3 << 19;  // 1.5 MB: every matrix of lvm-small in fp32
constexpr int kMaxNB = kLanes == 16 ? 4 : 2;

// How a tile forms its products. Fp32Math: fp32 inputs against bf16 or fp32 weights widened to fp32, E = kLanes
// inputs a vector.
struct Fp32Math {
  static constexpr int E = kLanes;
  typedef float X;
  typedef vfl Acc;
  typedef vfl WV;
  static Acc zero() { return vfl{}; }
  template <typename W>
  static WV load_w(const W* p) { return load_lanes(p); }
  static vfl load_x(const float* p) { return load_lanes(p); }
  static Acc fma(Acc a, WV w, vfl x) { return a + w * x; }
  static vfl sum(Acc a, Acc b) { return a + b; }
};

#if defined(__AVX512BF16__)
// Bf16Math: bf16 weights on CPUs with bf16 dot products, the inputs rounded to bf16 (as a bf16 model's products
// take them, PyTorch's included), E = 32 inputs an instruction and no widening of the weights.
struct Bf16Math {
  static constexpr int E = 32;
  typedef uint16_t X;
  typedef __m512 Acc;
  typedef vbh WV;
  static Acc zero() { return _mm512_setzero_ps(); }
  static WV load_w(const uint16_t* p) { return (vbh)_mm512_loadu_si512(p); }
  static vbh load_x(const uint16_t* p) { return (vbh)_mm512_loadu_si512(p); }
  static Acc fma(Acc a, WV w, vbh x) { return _mm512_dpbf16_ps(a, w, x); }
  static vfl sum(Acc a, Acc b) { return (vfl)_mm512_add_ps(a, b); }
};
#endif

// The products of NB input rows with weight rows j .. j + MO - 1 of a tile (`ldw` apart from `wr`) over the
// first IV inputs, each output's accumulators added into one vector: each weight vector is loaded once for all
// NB inputs and each input vector once for all MO outputs. Row b's output j + m goes to
// part[b * kLanes + kRev[j + m]], where the tile's shuffle tree sums it into lane j + m.
template <class M, int MO, int NB, typename W>
void tile(const typename M::X* x, int64_t ldx, const W* wr, int64_t ldw, int64_t IV, vfl* part, int64_t j) {
  typename M::Acc acc[MO][NB][kU];
  for (int m = 0; m < MO; ++m)
    for (int b = 0; b < NB; ++b)
      for (int u = 0; u < kU; ++u) acc[m][b][u] = M::zero();
  auto step = [&](int64_t i, int u) {
    typename M::WV wv[MO];
    for (int m = 0; m < MO; ++m) wv[m] = M::load_w(wr + m * ldw + i);
    for (int b = 0; b < NB; ++b) {
      const auto xv = M::load_x(x + b * ldx + i);
      for (int m = 0; m < MO; ++m) acc[m][b][u] = M::fma(acc[m][b][u], wv[m], xv);
    }
  };
  int64_t i = 0;
  for (; i + M::E * kU <= IV; i += M::E * kU)
    for (int u = 0; u < kU; ++u) step(i + u * M::E, u);
  if (i < IV) step(i, 0);
  for (int m = 0; m < MO; ++m)
    for (int b = 0; b < NB; ++b) part[b * kLanes + kRev[j + m]] = M::sum(acc[m][b][0], acc[m][b][1]);
}

#if defined(__AVX512BF16__)
// Rows of fp32 x rounded to bf16 (the first IV values of each: a multiple of 32).
std::vector<uint16_t> to_bf16_rows(const float* x, int64_t ldx, int64_t B, int64_t IV) {
  std::vector<uint16_t> out(B * IV);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t i = 0; i < IV; i += 32)
      _mm512_storeu_si512(out.data() + b * IV + i, (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + b * ldx + i + 16),
                                                                               _mm512_loadu_ps(x + b * ldx + i)));
  return out;
}
#endif

// y[b, o0 + j] for j < n <= kLanes outputs of one tile: the lanes of part[i] summed (one shuffle tree for the
// whole tile, vec.h) plus the products of the inputs from IV on (fewer than a vector: fp32 arithmetic). Out of
// line: one instance of code for every NB, so the compiler cannot reassociate it differently per NB under
// -ffast-math.
template <typename W>
__attribute__((noinline)) void finish_tile(const vfl* part, const W* w, int64_t o0, int64_t n, const float* x,
                                           int64_t IV, int64_t I, float* y) {
  const vfl sums = sum_lanes(part);
  if (n == kLanes && IV == I) {  // a whole tile, no inputs left over
    std::memcpy(y, &sums, sizeof sums);
    return;
  }
  for (int64_t j = 0; j < n; ++j) {
    float s = sums[j];
    const W* wr = w + (o0 + j) * I;
    for (int64_t i = IV; i < I; ++i) s += to_float(wr[i]) * x[i];
    y[j] = s;
  }
}

template <class M, int NB, typename W>
void tile_rows(const typename M::X* x, int64_t ldx, const W* wr, int64_t ldw, int64_t IV, int64_t mo, vfl* part,
               int64_t j) {
  if (mo == 2) tile<M, 2, NB, W>(x, ldx, wr, ldw, IV, part, j);
  else tile<M, 1, NB, W>(x, ldx, wr, ldw, IV, part, j);
}

// Outputs in tiles of kLanes (one task each): per group of NB input rows, each output's products are summed into
// one vector and the tile's kLanes vectors by one shuffle tree, where a horizontal sum per output would cost
// more than the products themselves at small input sizes. The tile's weight rows are streamed from memory
// once; later groups read them from cache. `xt`: x as M takes it (`ldt` apart), x: as fp32.
template <class M, typename W>
void linear_dispatch(const typename M::X* xt, int64_t ldt, const float* x, int64_t ldx, int64_t B, const W* w,
                     int64_t O, int64_t I, float* y, int64_t ldy, int mo_many) {
  const int64_t IV = I - I % M::E;
  at::parallel_for(0, (O + kLanes - 1) / kLanes, 1, [&](int64_t t0, int64_t t1) {
    std::vector<vfl> part(kMaxNB * kLanes);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t o0 = t * kLanes, n = std::min<int64_t>(kLanes, O - o0);
      for (int64_t b = 0; b < B;) {
        const int nb = B - b >= kMaxNB ? kMaxNB : B - b >= 2 ? 2 : 1;
        if (n < kLanes) std::fill(part.begin(), part.end(), vfl{});
        for (int64_t j = 0, mo = 1; j < n; j += mo) {
          mo = nb >= 2 && n - j >= mo_many ? mo_many : 1;
          const W* wr = w + (o0 + j) * I;
          const auto* xb = xt + b * ldt;
          if (nb == kMaxNB) tile_rows<M, kMaxNB, W>(xb, ldt, wr, I, IV, mo, part.data(), j);
          else if (nb == 2) tile_rows<M, 2, W>(xb, ldt, wr, I, IV, mo, part.data(), j);
          else tile_rows<M, 1, W>(xb, ldt, wr, I, IV, mo, part.data(), j);
        }
        for (int g = 0; g < nb; ++g)
          finish_tile<W>(part.data() + g * kLanes, w, o0, n, x + (b + g) * ldx, IV, I, y + (b + g) * ldy + o0);
        b += nb;
      }
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
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  if (w.scalar_type() == torch::kFloat32) {
    const int mo = O * I * 4 <= kTwoRowsMaxBytes ? 2 : 1;
    linear_dispatch<Fp32Math>(xp, x.stride(0), xp, x.stride(0), B, data_as<float>(w), O, I, yp, O, mo);
  } else if (kDotBf16) {
#if defined(__AVX512BF16__)
    const int64_t IV = I - I % 32;
    const std::vector<uint16_t> xb = to_bf16_rows(xp, x.stride(0), B, IV);
    linear_dispatch<Bf16Math>(xb.data(), IV, xp, x.stride(0), B, data_as<uint16_t>(w), O, I, yp, O, 1);
#endif
  } else {
    linear_dispatch<Fp32Math>(xp, x.stride(0), xp, x.stride(0), B, data_as<uint16_t>(w), O, I, yp, O, 1);
  }
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
