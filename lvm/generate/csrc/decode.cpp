// CPU kernels for one-token decoding (lvm/kernels.py builds this once per machine; lvm/generate.py uses it).
//
// Decoding one token is memory-bound: every weight matrix and the whole KV cache are read once per step.
// PyTorch's CPU paths for these shapes reach ~11-15 GB/s on a Zen4 core pair (oneDNN bf16 one-row products,
// fp32 SDPA) and its bf16 attention for one query is far slower; these loops stream bf16 or fp32 weights
// and caches with fp32 arithmetic and approach the memory bandwidth. Plain C++ written for the compiler's
// auto-vectoriser (-O3 and -march for the ISA torch dispatches to): portable across AVX2 / AVX-512 / NEON,
// no intrinsics. Each kernel is a template on the stored element type (uint16_t = bf16 bits, or float).

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

// One register of kLanes fp32 values (GCC/Clang vector extensions: the accumulators stay in registers,
// which arrays of floats did not on AVX2, where the fp32 body then ran ~10x slower than the bf16 one).
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

// y[b, o] = sum_i x[b, i] * w[o, i] for NB rows of x at once: each weight row is streamed once for all NB
// inputs (one row per step keeps one sequential stream per thread, which the prefetcher likes best). Few
// rows get U independent accumulators each, so the FMA latency does not bound the loop.
template <int NB, typename W>
void linear_row(const float* x, int64_t ldx, const W* wr, int64_t I, float* y, int64_t ldy) {
  constexpr int U = NB == 1 ? 4 : NB == 2 ? 2 : 1;
  vfl acc[NB][U];
  for (int b = 0; b < NB; ++b)
    for (int u = 0; u < U; ++u) acc[b][u] = vfl{};
  const int64_t IU = I - I % (kLanes * U), I16 = I - I % kLanes;
  for (int64_t i = 0; i < IU; i += kLanes * U) {
    for (int u = 0; u < U; ++u) {
      const vfl wv = load_lanes(wr + i + u * kLanes);
      for (int b = 0; b < NB; ++b) acc[b][u] += wv * load_lanes(x + b * ldx + i + u * kLanes);
    }
  }
  for (int64_t i = IU; i < I16; i += kLanes) {
    const vfl wv = load_lanes(wr + i);
    for (int b = 0; b < NB; ++b) acc[b][0] += wv * load_lanes(x + b * ldx + i);
  }
  for (int b = 0; b < NB; ++b) {
    vfl t = acc[b][0];
    for (int u = 1; u < U; ++u) t += acc[b][u];
    float s = 0.f;
    for (int j = 0; j < kLanes; ++j) s += t[j];
    for (int64_t i = I16; i < I; ++i) s += to_float(wr[i]) * x[b * ldx + i];
    y[b * ldy] = s;
  }
}

template <int NB, typename W>
void linear_rows(const float* x, int64_t ldx, const W* w, int64_t O, int64_t I, float* y, int64_t ldy) {
  at::parallel_for(0, O, 16, [&](int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; ++o) linear_row<NB, W>(x, ldx, w + o * I, I, y + o, ldy);
  });
}

template <typename W>
void linear_dispatch(const float* x, int64_t ldx, int64_t B, const W* w, int64_t O, int64_t I, float* y,
                     int64_t ldy) {
  int64_t b = 0;
  for (; b + 8 <= B; b += 8) linear_rows<8, W>(x + b * ldx, ldx, w, O, I, y + b * ldy, ldy);
  if (B - b >= 4) { linear_rows<4, W>(x + b * ldx, ldx, w, O, I, y + b * ldy, ldy); b += 4; }
  if (B - b >= 2) { linear_rows<2, W>(x + b * ldx, ldx, w, O, I, y + b * ldy, ldy); b += 2; }
  if (B - b >= 1) { linear_rows<1, W>(x + b * ldx, ldx, w, O, I, y + b * ldy, ldy); }
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

// One query per (row, head) against the first T cached positions.
// q: float32 (B, H, D) contiguous; k, v: bfloat16 or float32 (B, Hkv, Tmax, D) with unit stride in D (a view into the
// cache); H a multiple of Hkv (grouped-query heads share their kv head). Returns float32 (B, H, D):
// softmax(q k^T * scale) v with fp32 scores and an online (running-max) softmax, one pass over the cache.
template <typename C>
void attend_impl(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, int64_t T, double scale,
                 torch::Tensor& out) {
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2), Hkv = k.size(1);
  const int64_t group = H / Hkv;
  const int64_t sb = k.stride(0), sh = k.stride(1), st = k.stride(2);
  const float* qp = q.data_ptr<float>();
  const C* kp = data_as<C>(k);
  const C* vp = data_as<C>(v);
  float* op = out.data_ptr<float>();
  constexpr int64_t kChunk = 128;  // keys scored before their values are accumulated
  at::parallel_for(0, B * H, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> qs(D), acc(D), p(kChunk);
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t b = task / H, h = task % H;
      const float* qh = qp + (b * H + h) * D;
      const C* kh = kp + b * sb + (h / group) * sh;
      const C* vh = vp + b * sb + (h / group) * sh;
      for (int64_t d = 0; d < D; ++d) qs[d] = qh[d] * static_cast<float>(scale);
      std::fill(acc.begin(), acc.end(), 0.f);
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
      float* oh = op + (b * H + h) * D;
      const float inv = 1.f / l;
      for (int64_t d = 0; d < D; ++d) oh[d] = acc[d] * inv;
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

torch::Tensor attend(torch::Tensor q, torch::Tensor k, torch::Tensor v, int64_t T, double scale) {
  TORCH_CHECK(q.dim() == 3 && q.scalar_type() == torch::kFloat32 && q.is_contiguous(), "q: float32 (B, H, D)");
  TORCH_CHECK(k.dim() == 4 && stored_type(k) && k.stride(3) == 1, "k: bfloat16 or float32 (B, Hkv, T, D)");
  TORCH_CHECK(v.sizes() == k.sizes() && v.strides() == k.strides() && v.scalar_type() == k.scalar_type(),
              "v must match k");
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2), Hkv = k.size(1);
  TORCH_CHECK(k.size(0) == B && k.size(3) == D && H % Hkv == 0, "q and the cache disagree in shape");
  TORCH_CHECK(T >= 1 && T <= k.size(2), "T out of range");
  auto out = torch::empty({B, H, D}, q.options());
  if (k.scalar_type() == torch::kBFloat16)
    attend_impl<uint16_t>(q, k, v, T, scale, out);
  else
    attend_impl<float>(q, k, v, T, scale, out);
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("linear", &linear, "x (B, I) fp32 @ w (O, I) bf16|fp32 ^T -> (B, O) fp32");
  m.def("attend", &attend, "one-query attention over a bf16|fp32 KV cache, fp32 math");
}
