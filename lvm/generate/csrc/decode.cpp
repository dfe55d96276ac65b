// CPU kernels for decoding (lvm/generate/kernels.py builds this once per machine; lvm/generate/layers.py uses it).
//
// Decoding is memory-bound: every weight matrix and the whole KV cache are read once per forward pass.
// PyTorch's CPU paths for these shapes (oneDNN bf16 one-row products, fp32 SDPA) stay well below the memory
// bandwidth and its bf16 attention for one query is slower still (`lvm bench generate` shows both); these loops stream bf16 or fp32 weights
// and caches with fp32 arithmetic and approach the memory bandwidth. Plain C++ written for the compiler's
// auto-vectoriser (-O3 and -march for the ISA torch dispatches to): portable across AVX2 / AVX-512 / NEON,
// no intrinsics. Each kernel is a template on the stored element type (uint16_t = bf16 bits, or float).
//
// Both kernels are batch-invariant: a row's result has the same bits whatever other rows (or queries) come
// with it, so a k-token verification pass of speculative decoding scores each token exactly as a one-token
// step would, and greedy speculative decoding equals plain greedy decoding token for token.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace {

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

template <typename W>
const W* data_as(const torch::Tensor& t);
template <>
const uint16_t* data_as<uint16_t>(const torch::Tensor& t) {
  return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>());
}
template <>
const float* data_as<float>(const torch::Tensor& t) { return t.data_ptr<float>(); }

bool stored_type(const torch::Tensor& t) {
  return t.scalar_type() == torch::kBFloat16 || t.scalar_type() == torch::kFloat32;
}

// softmax(q k^T * scale) v for one query over the first T positions of one kv head, with fp32 scores and an
// online (running-max) softmax in one pass. The same code serves every query of every call, so a query's
// result does not depend on the other queries it comes with.
template <typename C>
void attend_one(const float* qh, const C* kh, const C* vh, int64_t st, int64_t T, int64_t D, float scale,
                float* qs, float* acc, float* p, float* oh) {
  constexpr int64_t kChunk = 128;  // keys scored before their values are accumulated
  for (int64_t d = 0; d < D; ++d) qs[d] = qh[d] * scale;
  std::fill(acc, acc + D, 0.f);
  // Finite start values: the file is built with -ffast-math (vectorised exp), which assumes no infs.
  float m = -1e30f, l = 0.f;
  for (int64_t c0 = 0; c0 < T; c0 += kChunk) {
    const int64_t n = std::min(kChunk, T - c0);
    for (int64_t t = 0; t < n; ++t) {
      const C* kt = kh + (c0 + t) * st;
      float s = 0.f;
#pragma omp simd reduction(+ : s)
      for (int64_t d = 0; d < D; ++d) s += qs[d] * to_float(kt[d]);
      p[t] = s;
    }
    float m_new = m;
    for (int64_t t = 0; t < n; ++t) m_new = std::max(m_new, p[t]);
    float psum = 0.f;
#pragma omp simd reduction(+ : psum)
    for (int64_t t = 0; t < n; ++t) {
      p[t] = std::exp(p[t] - m_new);
      psum += p[t];
    }
    const float corr = std::exp(m - m_new);
    l = l * corr + psum;
    for (int64_t d = 0; d < D; ++d) acc[d] *= corr;
    for (int64_t t = 0; t < n; ++t) {
      const float e = p[t];
      const C* vt = vh + (c0 + t) * st;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) acc[d] += e * to_float(vt[d]);
    }
    m = m_new;
  }
  const float inv = 1.f / l;
  for (int64_t d = 0; d < D; ++d) oh[d] = acc[d] * inv;
}

// Q queries per row and head against the row's cache: query j of row b sees its first lengths[b] + j
// positions (a verification pass: the row's tokens at consecutive positions, causal among themselves).
// q: float32 (B, Q, H, D) contiguous; k, v: bfloat16 or float32 (B, Hkv, Tmax, D) with unit stride in D (a
// view into the cache); H a multiple of Hkv (grouped-query heads share their kv head). One task per (row,
// head) runs its Q queries back to back, so the head's keys and values come from memory once.
template <typename C>
void attend_impl(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const int64_t* lengths,
                 double scale, torch::Tensor& out) {
  const int64_t B = q.size(0), Q = q.size(1), H = q.size(2), D = q.size(3), Hkv = k.size(1);
  const int64_t group = H / Hkv;
  const int64_t sb = k.stride(0), sh = k.stride(1), st = k.stride(2);
  const float* qp = q.data_ptr<float>();
  const C* kp = data_as<C>(k);
  const C* vp = data_as<C>(v);
  float* op = out.data_ptr<float>();
  at::parallel_for(0, B * H, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> qs(D), acc(D), p(128);
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t b = task / H, h = task % H;
      const C* kh = kp + b * sb + (h / group) * sh;
      const C* vh = vp + b * sb + (h / group) * sh;
      for (int64_t j = 0; j < Q; ++j) {
        const int64_t at = ((b * Q + j) * H + h) * D;
        attend_one<C>(qp + at, kh, vh, st, lengths[b] + j, D, static_cast<float>(scale), qs.data(), acc.data(),
                      p.data(), op + at);
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
  if (w.scalar_type() == torch::kBFloat16)
    linear_dispatch(x.data_ptr<float>(), x.stride(0), B, data_as<uint16_t>(w), O, I, y.data_ptr<float>(), O);
  else
    linear_dispatch(x.data_ptr<float>(), x.stride(0), B, data_as<float>(w), O, I, y.data_ptr<float>(), O);
  return y;
}

void check_cache(const torch::Tensor& k, const torch::Tensor& v) {
  TORCH_CHECK(k.dim() == 4 && stored_type(k) && k.stride(3) == 1, "k: bfloat16 or float32 (B, Hkv, T, D)");
  TORCH_CHECK(v.sizes() == k.sizes() && v.strides() == k.strides() && v.scalar_type() == k.scalar_type(),
              "v must match k");
}

torch::Tensor attend_rows(torch::Tensor q, torch::Tensor k, torch::Tensor v, torch::Tensor lengths, double scale) {
  TORCH_CHECK(q.dim() == 4 && q.scalar_type() == torch::kFloat32 && q.is_contiguous(), "q: float32 (B, Q, H, D)");
  check_cache(k, v);
  const int64_t B = q.size(0), Q = q.size(1), H = q.size(2), D = q.size(3), Hkv = k.size(1);
  TORCH_CHECK(k.size(0) == B && k.size(3) == D && H % Hkv == 0, "q and the cache disagree in shape");
  TORCH_CHECK(lengths.dim() == 1 && lengths.size(0) == B && lengths.scalar_type() == torch::kInt64 &&
              lengths.device().is_cpu() && lengths.is_contiguous(), "lengths: int64 (B,) on the CPU");
  const int64_t* len = lengths.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) TORCH_CHECK(len[b] >= 1 && len[b] + Q - 1 <= k.size(2), "T out of range");
  auto out = torch::empty({B, Q, H, D}, q.options());
  if (k.scalar_type() == torch::kBFloat16)
    attend_impl<uint16_t>(q, k, v, len, scale, out);
  else
    attend_impl<float>(q, k, v, len, scale, out);
  return out;
}

// One query per (row, head) against the first T cached positions: q float32 (B, H, D) -> (B, H, D).
torch::Tensor attend(torch::Tensor q, torch::Tensor k, torch::Tensor v, int64_t T, double scale) {
  TORCH_CHECK(q.dim() == 3 && q.scalar_type() == torch::kFloat32 && q.is_contiguous(), "q: float32 (B, H, D)");
  check_cache(k, v);
  auto lengths = torch::full({q.size(0)}, T, torch::dtype(torch::kInt64));
  return attend_rows(q.unsqueeze(1), k, v, lengths, scale).squeeze(1);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("linear", &linear, "x (B, I) fp32 @ w (O, I) bf16|fp32 ^T -> (B, O) fp32");
  m.def("attend", &attend, "one-query attention over a bf16|fp32 KV cache, fp32 math");
  m.def("attend_rows", &attend_rows, "Q causal queries per row at per-row cache lengths, fp32 math");
}
