// Attention of decoding queries over the KV cache (lvm/generate/kernels.py builds it with decode.cpp): one
// query per row in a plain step, a row's drafted tokens in a verification pass, with the same arithmetic
// for every query, so a query's result has the same bits whatever queries come with it.

#include "vec.h"

namespace lvm_kernels {
namespace {

constexpr int64_t kChunk = 64;  // keys per block, scored, then their values accumulated: K and V blocks stay in L1

// One query's online (running-max) softmax state: its accumulated values and the scores' max and sum.
struct QueryState {
  float m = -1e30f;  // finite: the file is built with -ffast-math (vectorised exp), which assumes no infs
  float l = 0.f;
};

// A query as the scores of keys of type C take it: fp32 vectors, or bf16 pairs (kDotBf16 with a bf16 cache).
template <typename C, int NV>
struct Query {
  static constexpr bool bf16 = kDotBf16 && std::is_same<C, uint16_t>::value && NV % 2 == 0;
  vfl f[NV];
  vbh h[NV / 2 > 0 ? NV / 2 : 1];
};

// The lane products of q and one key of type CK (bf16 dot products where the query holds bf16 pairs and the
// key is bf16; fp32 otherwise).
template <typename CK, typename C, int NV>
inline vfl dot_lanes(const Query<C, NV>& q, const CK* kt) {
  if constexpr (Query<C, NV>::bf16 && std::is_same<CK, uint16_t>::value) {
#if defined(__AVX512BF16__)
    __m512 x = _mm512_dpbf16_ps(_mm512_setzero_ps(), q.h[0], (vbh)_mm512_loadu_si512(kt));
    for (int u = 1; u < NV / 2; ++u) x = _mm512_dpbf16_ps(x, q.h[u], (vbh)_mm512_loadu_si512(kt + 32 * u));
    return (vfl)x;
#endif
  }
  vfl x = q.f[0] * load_lanes(kt);
  for (int u = 1; u < NV; ++u) x += q.f[u] * load_lanes(kt + u * kLanes);
  return x;
}

// Scores q.k of n keys (rows `st` apart, NV * kLanes values stored as CK) into p.
template <typename CK, typename C, int NV>
void score_block(const Query<C, NV>& q, const CK* kc, int64_t st, int64_t n, float* p) {
  int64_t t = 0;
  for (; t + kLanes <= n; t += kLanes) {
    vfl part[kLanes];
    for (int i = 0; i < kLanes; ++i) part[i] = dot_lanes(q, kc + (t + kRev[i]) * st);
    const vfl sums = sum_lanes(part);
    std::memcpy(p + t, &sums, sizeof sums);
  }
  for (; t < n; ++t) {
    const vfl x = dot_lanes(q, kc + t * st);
    float y = 0.f;
    for (int j = 0; j < kLanes; ++j) y += x[j];
    p[t] = y;
  }
}

// softmax(q k^T * scale) v for one query, over one block of n keys and values: the block's scores `p` (from
// score_block) and the values (rows of NV * kLanes values, `st` apart, stored as C) folded into the query's
// state (`acc`, NV * kLanes values). Every query of every call runs this code over the same blocks, so its
// result does not depend on the queries it comes with.
template <typename C, int NV>
void fold_block(const C* vc, int64_t st, int64_t n, float* p, float* acc, QueryState& qs) {
  float m_new = qs.m;
  for (int64_t i = 0; i < n; ++i) m_new = std::max(m_new, p[i]);
  float psum = 0.f;
#pragma omp simd reduction(+ : psum)
  for (int64_t i = 0; i < n; ++i) {
    p[i] = std::exp(p[i] - m_new);
    psum += p[i];
  }
  const float corr = std::exp(qs.m - m_new);
  qs.l = qs.l * corr + psum;
  qs.m = m_new;
  // Few vectors a head: even and odd keys' values in two sets of accumulators, since NV chains alone would
  // each wait on its FMA's latency (4 cycles) at every key. More vectors keep the FMA units busy with one
  // set (and two would not fit in AVX2's 16 registers).
  constexpr int64_t kStep = NV <= 4 ? 2 : 1;
  vfl o[NV], o2[NV];
  for (int u = 0; u < NV; ++u) {
    o[u] = load_lanes(acc + u * kLanes) * corr;
    o2[u] = vfl{};
  }
  int64_t i = 0;
  for (; i + kStep <= n; i += kStep) {
    for (int u = 0; u < NV; ++u) o[u] += p[i] * load_lanes(vc + i * st + u * kLanes);
    if (kStep == 2)
      for (int u = 0; u < NV; ++u) o2[u] += p[i + 1] * load_lanes(vc + (i + 1) * st + u * kLanes);
  }
  if (i < n)
    for (int u = 0; u < NV; ++u) o[u] += p[i] * load_lanes(vc + i * st + u * kLanes);
  for (int u = 0; u < NV; ++u) o[u] += o2[u];
  std::memcpy(acc, o, sizeof o);
}

#if defined(__AVX512BF16__)
// Values for bf16 dot products: keys 2r and 2r + 1 of a block interleaved, 32 bf16 [v(2r)[d], v(2r+1)[d]] for 16
// dims d a vector, NV vectors (D = 16 NV values) a pair (zeros for a key past n - 1), so that one instruction
// adds two keys' weighted values to 16 lanes.
template <int NV>
void pair_rows(const uint16_t* src, int64_t st, int64_t n, uint16_t* dst) {
  for (int64_t r = 0; 2 * r < n; ++r) {
    const uint16_t* a = src + 2 * r * st;
    const bool odd = 2 * r + 1 < n;
    for (int u = 0; u < NV; ++u) {
      const __m512i lo = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + 16 * u)));
      const __m512i hi = odd ? _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(
                                                     reinterpret_cast<const __m256i*>(a + st + 16 * u))), 16)
                             : _mm512_setzero_si512();
      _mm512_storeu_si512(dst + (r * NV + u) * 32, _mm512_or_si512(lo, hi));
    }
  }
}

// fold_block for a bf16 cache with bf16 dot products: the block's weights exp(p - max) rounded to bf16 (as a bf16
// model's attention rounds them before the product with the values; the sum is of the rounded weights), two
// keys an instruction against `pair_rows`' values.
template <int NV>
void fold_block_bf16(const uint16_t* vpairs, int64_t n, float* p, float* acc, QueryState& qs) {
  float m_new = qs.m;
  for (int64_t i = 0; i < n; ++i) m_new = std::max(m_new, p[i]);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) p[i] = std::exp(p[i] - m_new);
  uint16_t pb[kChunk + 16];
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(pb + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(p + i)));
  for (; i < n; ++i) {  // round to nearest even, as the instruction does
    uint32_t u;
    std::memcpy(&u, p + i, sizeof u);
    pb[i] = static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
  pb[n] = 0;
  float psum = 0.f;
#pragma omp simd reduction(+ : psum)
  for (int64_t j = 0; j < n; ++j) psum += to_float(pb[j]);
  const float corr = std::exp(qs.m - m_new);
  qs.l = qs.l * corr + psum;
  qs.m = m_new;
  // Two sets of accumulators (even and odd pairs): NV chains alone would wait on the instruction's latency.
  __m512 o[NV], o2[NV];
  for (int u = 0; u < NV; ++u) {
    o[u] = _mm512_mul_ps(_mm512_loadu_ps(acc + u * 16), _mm512_set1_ps(corr));
    o2[u] = _mm512_setzero_ps();
  }
  const int64_t pairs = (n + 1) / 2;
  int64_t r = 0;
  for (; r + 2 <= pairs; r += 2) {
    uint32_t w0, w1;
    std::memcpy(&w0, pb + 2 * r, 4);
    std::memcpy(&w1, pb + 2 * r + 2, 4);
    const vbh p0 = (vbh)_mm512_set1_epi32(static_cast<int>(w0)), p1 = (vbh)_mm512_set1_epi32(static_cast<int>(w1));
    for (int u = 0; u < NV; ++u) {
      o[u] = _mm512_dpbf16_ps(o[u], p0, (vbh)_mm512_loadu_si512(vpairs + (r * NV + u) * 32));
      o2[u] = _mm512_dpbf16_ps(o2[u], p1, (vbh)_mm512_loadu_si512(vpairs + ((r + 1) * NV + u) * 32));
    }
  }
  if (r < pairs) {
    uint32_t w0;
    std::memcpy(&w0, pb + 2 * r, 4);
    const vbh p0 = (vbh)_mm512_set1_epi32(static_cast<int>(w0));
    for (int u = 0; u < NV; ++u) o[u] = _mm512_dpbf16_ps(o[u], p0, (vbh)_mm512_loadu_si512(vpairs + (r * NV + u) * 32));
  }
  for (int u = 0; u < NV; ++u) _mm512_storeu_ps(acc + u * 16, _mm512_add_ps(o[u], o2[u]));
}
#endif

// Rows r0 .. r0 + n - 1 of a head (D values each, `st` apart) as fp32 rows of W >= D values, zero-padded.
template <typename C>
void widen_rows(const C* src, int64_t st, int64_t n, int64_t D, int64_t W, float* dst) {
  const int64_t DV = D - D % kLanes;
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t d = 0; d < DV; d += kLanes) {
      const vfl x = load_lanes(src + r * st + d);
      std::memcpy(dst + r * W + d, &x, sizeof x);
    }
    for (int64_t d = DV; d < D; ++d) dst[r * W + d] = to_float(src[r * st + d]);
    std::fill(dst + r * W + D, dst + (r + 1) * W, 0.f);
  }
}

// Q queries per row and head against the row's cache: query j of row b sees its first lengths[b] + j
// positions (a verification pass: the row's tokens at consecutive positions, causal among themselves).
// q: float32 (B, Q, H, D) contiguous; k, v: bfloat16 or float32 (B, Hkv, Tmax, D) with unit stride in D (a
// view into the cache); H a multiple of Hkv (grouped-query heads share their kv head). One task per (row,
// head) takes the keys block by block and runs every query over a block while it is in cache, so the head's
// keys and values are read from memory (and a bf16 cache widened to fp32) once however many queries there are.
template <typename C, int NV>
void attend_heads(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const int64_t* lengths,
                  float scale, torch::Tensor& out) {
  constexpr int64_t W = NV * kLanes;
  const int64_t B = q.size(0), Q = q.size(1), H = q.size(2), D = q.size(3), Hkv = k.size(1);
  const int64_t group = H / Hkv;
  const int64_t sb = k.stride(0), sh = k.stride(1), st = k.stride(2);
  // Rows that fill whole vectors are read in place where widening them once gains nothing: a fp32 cache, or
  // one or two queries; anything else goes through fp32 scratch.
  // A bf16 cache of whole vectors is scored with bf16 dot products (Query::bf16), keys read in place, and its
  // values are summed with them too, as `pair_rows`.
  const bool dot = Query<C, NV>::bf16 && D == W;
  const bool in_place = D == W && (std::is_same<C, float>::value || Q <= 2);
  const bool keys_in_place = in_place || dot;
  const float* qp = q.data_ptr<float>();
  const C* kp = data_as<C>(k);
  const C* vp = data_as<C>(v);
  float* op = out.data_ptr<float>();
  at::parallel_for(0, B * H, 1, [&](int64_t t0, int64_t t1) {
    std::vector<Query<C, NV>> qs(Q);
    std::vector<float> acc(Q * W), p(kChunk), row(W), kw(keys_in_place ? 0 : kChunk * W),
        vw(in_place || dot ? 0 : kChunk * W);
    std::vector<uint16_t> vp2(dot ? (kChunk + 1) * W : 0);
    std::vector<QueryState> state(Q);
    for (int64_t task = t0; task < t1; ++task) {
      const int64_t b = task / H, h = task % H;
      const C* kh = kp + b * sb + (h / group) * sh;
      const C* vh = vp + b * sb + (h / group) * sh;
      for (int64_t j = 0; j < Q; ++j) {
        widen_rows(qp + ((b * Q + j) * H + h) * D, D, 1, D, W, row.data());
        for (int u = 0; u < NV; ++u) qs[j].f[u] = load_lanes(row.data() + u * kLanes) * scale;
#if defined(__AVX512BF16__)
        if constexpr (Query<C, NV>::bf16)
          for (int u = 0; u < NV / 2; ++u)
            qs[j].h[u] = _mm512_cvtne2ps_pbh((__m512)qs[j].f[2 * u + 1], (__m512)qs[j].f[2 * u]);
#endif
        state[j] = QueryState{};
      }
      std::fill(acc.begin(), acc.end(), 0.f);
      const int64_t T_last = lengths[b] + Q - 1;
      for (int64_t c0 = 0; c0 < T_last; c0 += kChunk) {
        const int64_t n_max = std::min(kChunk, T_last - c0);
        if (!keys_in_place) widen_rows(kh + c0 * st, st, n_max, D, W, kw.data());
#if defined(__AVX512BF16__)
        if constexpr (Query<C, NV>::bf16)
          if (dot) pair_rows<NV>(reinterpret_cast<const uint16_t*>(vh + c0 * st), st, n_max, vp2.data());
#endif
        if (!in_place && !dot) widen_rows(vh + c0 * st, st, n_max, D, W, vw.data());
        for (int64_t j = 0; j < Q; ++j) {
          const int64_t n = std::min(kChunk, lengths[b] + j - c0);
          if (n <= 0) continue;
          if (keys_in_place)
            score_block(qs[j], kh + c0 * st, st, n, p.data());
          else
            score_block(qs[j], kw.data(), W, n, p.data());
#if defined(__AVX512BF16__)
          if constexpr (Query<C, NV>::bf16)
            if (dot) {
              fold_block_bf16<NV>(vp2.data(), n, p.data(), &acc[j * W], state[j]);
              continue;
            }
#endif
          if (in_place)
            fold_block<C, NV>(vh + c0 * st, st, n, p.data(), &acc[j * W], state[j]);
          else
            fold_block<float, NV>(vw.data(), W, n, p.data(), &acc[j * W], state[j]);
        }
      }
      for (int64_t j = 0; j < Q; ++j) {
        const float inv = 1.f / state[j].l;
        float* oh = op + ((b * Q + j) * H + h) * D;
        for (int64_t d = 0; d < D; ++d) oh[d] = acc[j * W + d] * inv;
      }
    }
  });
}

template <typename C>
void attend_impl(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const int64_t* lengths,
                 double scale, torch::Tensor& out) {
  // The head size in vectors, rounded up to a power of two (a few instances; unusual sizes pay some zeros).
  const int64_t nv = (q.size(3) + kLanes - 1) / kLanes;
  const float sc = static_cast<float>(scale);
  if (nv <= 1) attend_heads<C, 1>(q, k, v, lengths, sc, out);
  else if (nv <= 2) attend_heads<C, 2>(q, k, v, lengths, sc, out);
  else if (nv <= 4) attend_heads<C, 4>(q, k, v, lengths, sc, out);
  else if (nv <= 8) attend_heads<C, 8>(q, k, v, lengths, sc, out);
  else if (nv <= 16) attend_heads<C, 16>(q, k, v, lengths, sc, out);
  else TORCH_CHECK(false, "head size ", q.size(3), " is over the kernels' ", 16 * kLanes);
}

}  // namespace

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

}  // namespace lvm_kernels
