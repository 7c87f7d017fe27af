// specbench's bf16 decoder-layer operations for CPU decoding (see fused_layers.py).
//
// A decoding step of a 1.5B model is 28 layers of a few linear layers (bf16_gemm.cpp) and,
// between them, a few dozen small torch operators per layer (norms, rotary embedding, cache
// writes, attention, activation): at a few microseconds each, 10 ms of a 72 ms step on two
// cores. Each function here is one of those groups as one call.
//
// Numerics: every element is rounded to bf16 where transformers' eager layer rounds it (the
// elementwise functions give its results bit for bit), and every reduction runs in one fixed
// order per row (the sum of squares of a norm, a query's scores, softmax's sum, the weighted
// sum of values), whatever the number of rows, heads or threads: a row's result never depends
// on the rows beside it. Attention visits each query's visible keys in slot order and counts
// them from zero, so a token-tree node (siblings masked between its ancestors) gets the
// result of the same token decoded in turn.
//
// The vectorised row work (bf16_decode_rows.h) is compiled twice, for AVX-512 BF16 and for
// AVX2 + FMA, and runs on the path the linear product takes (set_isa). The paths differ only
// in their sums' grouping (16 or 8 lanes; pair products on AVX-512): the elementwise results
// (exp included) are the same on both.
#include <ATen/Parallel.h>
#include <immintrin.h>

#include "bf16_ops.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

inline float bf16_to_float(uint16_t v) {
  uint32_t bits = static_cast<uint32_t>(v) << 16;
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

// Round to nearest even, as torch rounds fp32 to bf16 (NaN kept a NaN).
inline uint16_t float_to_bf16(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

inline float round_bf16(float v) { return bf16_to_float(float_to_bf16(v)); }

const uint16_t* u16(const torch::Tensor& t) {
  return reinterpret_cast<const uint16_t*>(t.data_ptr());
}
uint16_t* u16_mut(torch::Tensor& t) { return reinterpret_cast<uint16_t*>(t.data_ptr()); }

void check_bf16(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kBFloat16, name,
              " must be a bf16 CPU tensor");
}

// ---- AVX-512 BF16 ------------------------------------------------------------------
namespace avx512 {

#define SPECBENCH_TARGET __attribute__((target("avx512f,avx512bf16,avx512bw,avx512vl")))

using Vec = __m512;
constexpr int64_t kLanes = 16;

SPECBENCH_TARGET inline __mmask16 lanes(int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
}
SPECBENCH_TARGET inline Vec widen(__m256i bf16) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bf16), 16));
}
SPECBENCH_TARGET inline Vec load_bf16(const uint16_t* p, int64_t left) {
  return widen(_mm256_maskz_loadu_epi16(lanes(left), p));
}
SPECBENCH_TARGET inline void store_bf16(uint16_t* p, Vec v, int64_t left) {
  _mm256_mask_storeu_epi16(p, lanes(left), (__m256i)_mm512_cvtneps_pbh(v));
}
SPECBENCH_TARGET inline Vec load_f32(const float* p, int64_t left) {
  return _mm512_maskz_loadu_ps(lanes(left), p);
}
SPECBENCH_TARGET inline void store_f32(float* p, Vec v, int64_t left) {
  _mm512_mask_storeu_ps(p, lanes(left), v);
}
SPECBENCH_TARGET inline Vec set1(float v) { return _mm512_set1_ps(v); }
SPECBENCH_TARGET inline Vec zero() { return _mm512_setzero_ps(); }
SPECBENCH_TARGET inline Vec add(Vec a, Vec b) { return _mm512_add_ps(a, b); }
SPECBENCH_TARGET inline Vec sub(Vec a, Vec b) { return _mm512_sub_ps(a, b); }
SPECBENCH_TARGET inline Vec mul(Vec a, Vec b) { return _mm512_mul_ps(a, b); }
SPECBENCH_TARGET inline Vec div(Vec a, Vec b) { return _mm512_div_ps(a, b); }
SPECBENCH_TARGET inline Vec fmadd(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
SPECBENCH_TARGET inline Vec fnmadd(Vec a, Vec b, Vec c) { return _mm512_fnmadd_ps(a, b, c); }
SPECBENCH_TARGET inline Vec vmin(Vec a, Vec b) { return _mm512_min_ps(a, b); }
SPECBENCH_TARGET inline Vec vmax(Vec a, Vec b) { return _mm512_max_ps(a, b); }
SPECBENCH_TARGET inline Vec round_nearest(Vec v) {
  return _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
SPECBENCH_TARGET inline Vec scale_pow2(Vec y, Vec n) { return _mm512_scalef_ps(y, n); }
SPECBENCH_TARGET inline float reduce_add(Vec v) { return _mm512_reduce_add_ps(v); }
SPECBENCH_TARGET inline Vec round_bf16_vec(Vec v) {
  return widen((__m256i)_mm512_cvtneps_pbh(v));
}
// Pair dot products, 32 elements per instruction.
SPECBENCH_TARGET inline float dot_bf16(const uint16_t* q, const uint16_t* k, int64_t dim) {
  __m512 sum = _mm512_setzero_ps();
  for (int64_t d = 0; d < dim; d += 32) {
    const __mmask32 mask = dim - d >= 32 ? static_cast<__mmask32>(0xFFFFFFFFu)
                                         : static_cast<__mmask32>((1u << (dim - d)) - 1);
    const __m512i qv = _mm512_maskz_loadu_epi16(mask, q + d);
    const __m512i kv = _mm512_maskz_loadu_epi16(mask, k + d);
    sum = _mm512_dpbf16_ps(sum, (__m512bh)qv, (__m512bh)kv);
  }
  return _mm512_reduce_add_ps(sum);
}

#include "bf16_decode_rows.h"
#undef SPECBENCH_TARGET

}  // namespace avx512

// ---- AVX2 + FMA ----------------------------------------------------------------------
namespace avx2 {

#define SPECBENCH_TARGET __attribute__((target("avx2,fma")))

using Vec = __m256;
constexpr int64_t kLanes = 8;

SPECBENCH_TARGET inline Vec widen(__m128i bf16) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bf16), 16));
}
// Eight bf16 (nearest even, a NaN quieted as float_to_bf16 does) of eight floats.
SPECBENCH_TARGET inline __m128i narrow(Vec v) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  const __m256i bump = _mm256_add_epi32(odd, _mm256_set1_epi32(0x7FFF));
  const __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(bits, bump), 16);
  const __m256i quiet = _mm256_or_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(0x40));
  const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  const __m256i out = _mm256_blendv_epi8(rounded, quiet, nan);
  return _mm_packus_epi32(_mm256_castsi256_si128(out), _mm256_extracti128_si256(out, 1));
}
SPECBENCH_TARGET inline Vec load_bf16(const uint16_t* p, int64_t left) {
  if (left >= 8) return widen(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  uint16_t part[8] = {};
  std::memcpy(part, p, left * sizeof(uint16_t));
  return widen(_mm_loadu_si128(reinterpret_cast<const __m128i*>(part)));
}
SPECBENCH_TARGET inline void store_bf16(uint16_t* p, Vec v, int64_t left) {
  if (left >= 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), narrow(v));
    return;
  }
  uint16_t part[8];
  _mm_storeu_si128(reinterpret_cast<__m128i*>(part), narrow(v));
  std::memcpy(p, part, left * sizeof(uint16_t));
}
SPECBENCH_TARGET inline Vec load_f32(const float* p, int64_t left) {
  if (left >= 8) return _mm256_loadu_ps(p);
  float part[8] = {};
  std::memcpy(part, p, left * sizeof(float));
  return _mm256_loadu_ps(part);
}
SPECBENCH_TARGET inline void store_f32(float* p, Vec v, int64_t left) {
  if (left >= 8) {
    _mm256_storeu_ps(p, v);
    return;
  }
  float part[8];
  _mm256_storeu_ps(part, v);
  std::memcpy(p, part, left * sizeof(float));
}
SPECBENCH_TARGET inline Vec set1(float v) { return _mm256_set1_ps(v); }
SPECBENCH_TARGET inline Vec zero() { return _mm256_setzero_ps(); }
SPECBENCH_TARGET inline Vec add(Vec a, Vec b) { return _mm256_add_ps(a, b); }
SPECBENCH_TARGET inline Vec sub(Vec a, Vec b) { return _mm256_sub_ps(a, b); }
SPECBENCH_TARGET inline Vec mul(Vec a, Vec b) { return _mm256_mul_ps(a, b); }
SPECBENCH_TARGET inline Vec div(Vec a, Vec b) { return _mm256_div_ps(a, b); }
SPECBENCH_TARGET inline Vec fmadd(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
SPECBENCH_TARGET inline Vec fnmadd(Vec a, Vec b, Vec c) { return _mm256_fnmadd_ps(a, b, c); }
SPECBENCH_TARGET inline Vec vmin(Vec a, Vec b) { return _mm256_min_ps(a, b); }
SPECBENCH_TARGET inline Vec vmax(Vec a, Vec b) { return _mm256_max_ps(a, b); }
SPECBENCH_TARGET inline Vec round_nearest(Vec v) {
  return _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
// y 2^n for integral n in [-150, 128] (exp_vec's range) with one rounding, as AVX-512's
// scalef: two exact powers of two, each a normal float, the second product the only inexact
// one (y is near 1, so y 2^(n/2) is normal and exact).
SPECBENCH_TARGET inline Vec scale_pow2(Vec y, Vec n) {
  const __m256i whole = _mm256_cvtps_epi32(n);
  const __m256i first = _mm256_srai_epi32(whole, 1);
  const __m256i second = _mm256_sub_epi32(whole, first);
  const __m256i bias = _mm256_set1_epi32(127);
  const Vec a = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(first, bias), 23));
  const Vec b = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(second, bias), 23));
  return _mm256_mul_ps(_mm256_mul_ps(y, a), b);
}
SPECBENCH_TARGET inline float reduce_add(Vec v) {
  __m128 sum = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  sum = _mm_add_ps(sum, _mm_movehl_ps(sum, sum));
  sum = _mm_add_ss(sum, _mm_movehdup_ps(sum));
  return _mm_cvtss_f32(sum);
}
SPECBENCH_TARGET inline Vec round_bf16_vec(Vec v) { return widen(narrow(v)); }
// Two accumulators over 8-element chunks (even and odd chunks), then their sum.
SPECBENCH_TARGET inline float dot_bf16(const uint16_t* q, const uint16_t* k, int64_t dim) {
  Vec even = zero(), odd = zero();
  for (int64_t d = 0; d < dim; d += 16) {
    even = fmadd(load_bf16(q + d, dim - d), load_bf16(k + d, dim - d), even);
    if (d + 8 < dim)
      odd = fmadd(load_bf16(q + d + 8, dim - d - 8), load_bf16(k + d + 8, dim - d - 8), odd);
  }
  return reduce_add(add(even, odd));
}

#include "bf16_decode_rows.h"
#undef SPECBENCH_TARGET

}  // namespace avx2

// The row functions of the path the linear product takes (set_isa): one path per process.
struct RowFunctions {
  void (*norm)(const uint16_t*, const uint16_t*, int64_t, float, uint16_t*);
  void (*add)(const uint16_t*, const uint16_t*, int64_t, uint16_t*);
  void (*silu_mul)(const uint16_t*, const uint16_t*, int64_t, uint16_t*);
  void (*attend)(const uint16_t*, const uint16_t*, int64_t, const uint16_t*, int64_t,
                 const int64_t*, int64_t, int64_t, float, float*, float*, uint16_t*);
};

const RowFunctions& row_functions() {
  static const RowFunctions kAvx512{avx512::norm_row, avx512::add_row, avx512::silu_mul_span,
                                    avx512::attend_row};
  static const RowFunctions kAvx2{avx2::norm_row, avx2::add_row, avx2::silu_mul_span,
                                  avx2::attend_row};
  return isa_is_avx512_bf16() ? kAvx512 : kAvx2;
}

// transformers' q * cos + rotate_half(q) * sin for one head: each product and the sum
// rounded to bf16, as torch computes them.
void rotate(const uint16_t* x, const uint16_t* cos, const uint16_t* sin, int64_t dim,
            uint16_t* out) {
  const int64_t half = dim / 2;
  for (int64_t d = 0; d < dim; ++d) {
    const float turned = d < half ? -bf16_to_float(x[d + half]) : bf16_to_float(x[d - half]);
    const float a = round_bf16(bf16_to_float(x[d]) * bf16_to_float(cos[d]));
    const float b = round_bf16(turned * bf16_to_float(sin[d]));
    out[d] = float_to_bf16(a + b);
  }
}

template <typename Fn>
void for_rows(int64_t count, Fn fn) {
  // One row is one task; a few rows run on one thread (a fork costs more than a row).
  at::parallel_for(0, count, 8, [&](int64_t first, int64_t last) {
    for (int64_t r = first; r < last; ++r) fn(r);
  });
}

// Every head of m fused q/k/v rows: queries rotated into ``query`` [m, heads, dim], keys
// rotated and values copied to where ``key_at(i, g)`` and ``value_at(i, g)`` point.
template <typename KeyAt, typename ValueAt>
void rotate_heads(const uint16_t* qkv, const uint16_t* cos, const uint16_t* sin, int64_t m,
                  int64_t heads, int64_t kv_heads, int64_t dim, uint16_t* query, KeyAt key_at,
                  ValueAt value_at) {
  const int64_t width = (heads + 2 * kv_heads) * dim;
  for_rows(m * (heads + kv_heads), [&](int64_t task) {
    const int64_t i = task / (heads + kv_heads), h = task % (heads + kv_heads);
    const uint16_t* row = qkv + i * width;
    if (h < heads) {
      rotate(row + h * dim, cos + i * dim, sin + i * dim, dim, query + (i * heads + h) * dim);
    } else {
      const int64_t g = h - heads;
      rotate(row + (heads + g) * dim, cos + i * dim, sin + i * dim, dim, key_at(i, g));
      std::memcpy(value_at(i, g), row + (heads + kv_heads + g) * dim, dim * sizeof(uint16_t));
    }
  });
}

}  // namespace

// transformers' RMSNorm: x [..., n] and weight [n], bf16.
torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  check_bf16(x, "x");
  check_bf16(weight, "weight");
  const int64_t n = x.size(-1);
  TORCH_CHECK(weight.numel() == n, "the weight has ", weight.numel(), " elements, x ", n);
  const auto rows = x.reshape({-1, n}).contiguous();
  const auto w = weight.contiguous();
  auto out = torch::empty_like(rows);
  const uint16_t* xp = u16(rows);
  const uint16_t* wp = u16(w);
  uint16_t* op = u16_mut(out);
  for_rows(rows.size(0), [&](int64_t r) {
    row_functions().norm(xp + r * n, wp, n, static_cast<float>(eps), op + r * n);
  });
  return out.view(x.sizes());
}

// The residual sum x + delta (bf16, as torch adds) and its RMSNorm, in one pass.
std::vector<torch::Tensor> add_rms_norm(const torch::Tensor& x, const torch::Tensor& delta,
                                        const torch::Tensor& weight, double eps) {
  check_bf16(x, "x");
  check_bf16(delta, "delta");
  check_bf16(weight, "weight");
  TORCH_CHECK(x.sizes() == delta.sizes(), "x and delta differ in shape");
  const int64_t n = x.size(-1);
  TORCH_CHECK(weight.numel() == n, "the weight has ", weight.numel(), " elements, x ", n);
  const auto a = x.reshape({-1, n}).contiguous();
  const auto b = delta.reshape({-1, n}).contiguous();
  const auto w = weight.contiguous();
  auto sum = torch::empty_like(a);
  auto out = torch::empty_like(a);
  const uint16_t *ap = u16(a), *bp = u16(b), *wp = u16(w);
  uint16_t *sp = u16_mut(sum), *op = u16_mut(out);
  for_rows(a.size(0), [&](int64_t r) {
    row_functions().add(ap + r * n, bp + r * n, n, sp + r * n);
    row_functions().norm(sp + r * n, wp, n, static_cast<float>(eps), op + r * n);
  });
  return {sum.view(x.sizes()), out.view(x.sizes())};
}

// silu(gate) * up for gate_up [..., 2 * n] (gate first), rounded as torch rounds each.
torch::Tensor silu_mul(const torch::Tensor& gate_up) {
  check_bf16(gate_up, "gate_up");
  const int64_t width = gate_up.size(-1);
  TORCH_CHECK(width % 2 == 0, "gate_up must have an even last dimension");
  const int64_t n = width / 2;
  const auto rows = gate_up.reshape({-1, width}).contiguous();
  auto shape = gate_up.sizes().vec();
  shape.back() = n;
  auto out = torch::empty({rows.size(0), n}, gate_up.options());
  const uint16_t* gp = u16(rows);
  uint16_t* op = u16_mut(out);
  // Spans of 1024 elements, so one row's activation runs on every thread.
  constexpr int64_t kSpan = 1024;
  const int64_t spans = (n + kSpan - 1) / kSpan;
  at::parallel_for(0, rows.size(0) * spans, 1, [&](int64_t first, int64_t last) {
    for (int64_t task = first; task < last; ++task) {
      const int64_t r = task / spans, i0 = (task % spans) * kSpan;
      row_functions().silu_mul(gp + r * width + i0, gp + r * width + n + i0,
                               std::min(kSpan, n - i0), op + r * n + i0);
    }
  });
  return out.view(shape);
}

// Rotary embedding of the query and key heads of fused projections, and the cache writes.
// qkv [m, (heads + 2 * kv_heads) * dim]; cos, sin [m, dim]; key_cache and value_cache
// [1, kv_heads, slots, dim] (slots contiguous rows). Writes the rotated keys and the values at
// slots [start, start + m) and returns the rotated queries [1, heads, m, dim] (a view).
torch::Tensor rotary_write(const torch::Tensor& qkv, const torch::Tensor& cos,
                           const torch::Tensor& sin, int64_t heads, int64_t kv_heads,
                           torch::Tensor& key_cache, torch::Tensor& value_cache, int64_t start) {
  check_bf16(qkv, "qkv");
  check_bf16(cos, "cos");
  check_bf16(sin, "sin");
  check_bf16(key_cache, "key_cache");
  check_bf16(value_cache, "value_cache");
  const int64_t dim = key_cache.size(3);
  const auto rows = qkv.reshape({-1, qkv.size(-1)}).contiguous();
  const int64_t m = rows.size(0);
  TORCH_CHECK(rows.size(1) == (heads + 2 * kv_heads) * dim, "qkv has the wrong width");
  TORCH_CHECK(start + m <= key_cache.size(2), "the cache has no room for the new rows");
  TORCH_CHECK(key_cache.stride(3) == 1 && value_cache.stride(3) == 1, "caches need unit stride");
  const auto c = cos.reshape({m, dim}).contiguous();
  const auto s = sin.reshape({m, dim}).contiguous();
  auto query = torch::empty({m, heads, dim}, qkv.options());
  const uint16_t *xp = u16(rows), *cp = u16(c), *sp = u16(s);
  uint16_t *qp = u16_mut(query), *kc = u16_mut(key_cache), *vc = u16_mut(value_cache);
  const int64_t k_head = key_cache.stride(1), k_slot = key_cache.stride(2);
  const int64_t v_head = value_cache.stride(1), v_slot = value_cache.stride(2);
  rotate_heads(xp, cp, sp, m, heads, kv_heads, dim, qp,
               [&](int64_t i, int64_t g) { return kc + g * k_head + (start + i) * k_slot; },
               [&](int64_t i, int64_t g) { return vc + g * v_head + (start + i) * v_slot; });
  return query.view({1, m, heads, dim}).transpose(1, 2);
}

// The same rotation without a cache: qkv [..., (heads + 2 * kv_heads) * dim] and cos, sin
// [..., dim] with the same leading shape. Returns the rotated queries [rows, heads, dim], the
// rotated keys and the values [rows, kv_heads, dim] (rows: qkv's leading elements).
std::vector<torch::Tensor> rotary_split(const torch::Tensor& qkv, const torch::Tensor& cos,
                                        const torch::Tensor& sin, int64_t heads,
                                        int64_t kv_heads) {
  check_bf16(qkv, "qkv");
  check_bf16(cos, "cos");
  check_bf16(sin, "sin");
  const int64_t dim = cos.size(-1);
  const auto rows = qkv.reshape({-1, qkv.size(-1)}).contiguous();
  const int64_t m = rows.size(0);
  TORCH_CHECK(rows.size(1) == (heads + 2 * kv_heads) * dim, "qkv has the wrong width");
  const auto c = cos.reshape({-1, dim}).contiguous();
  const auto s = sin.reshape({-1, dim}).contiguous();
  TORCH_CHECK(c.size(0) == m && s.size(0) == m, "cos and sin need one row per qkv row");
  auto query = torch::empty({m, heads, dim}, qkv.options());
  auto key = torch::empty({m, kv_heads, dim}, qkv.options());
  auto value = torch::empty({m, kv_heads, dim}, qkv.options());
  const uint16_t *xp = u16(rows), *cp = u16(c), *sp = u16(s);
  uint16_t *qp = u16_mut(query), *kp = u16_mut(key), *vp = u16_mut(value);
  rotate_heads(xp, cp, sp, m, heads, kv_heads, dim, qp,
               [&](int64_t i, int64_t g) { return kp + (i * kv_heads + g) * dim; },
               [&](int64_t i, int64_t g) { return vp + (i * kv_heads + g) * dim; });
  return {query, key, value};
}

// softmax(q k^T * scaling) v over grouped key/value heads: query [B, H, M, D], key and value
// [B, G, L, D] (H a multiple of G; last dimension contiguous), visible: an optional bool
// [B, M, L] (unset: every query sees every key). Returns [B, M, H, D].
torch::Tensor attend(const torch::Tensor& query, const torch::Tensor& key,
                     const torch::Tensor& value, const c10::optional<torch::Tensor>& visible,
                     double scaling) {
  check_bf16(query, "query");
  check_bf16(key, "key");
  check_bf16(value, "value");
  const int64_t B = query.size(0), H = query.size(1), M = query.size(2), D = query.size(3);
  const int64_t G = key.size(1), L = key.size(2);
  TORCH_CHECK(H % G == 0, "query heads must be a multiple of key/value heads");
  const auto q = query.stride(3) == 1 ? query : query.contiguous();
  const auto k = key.stride(3) == 1 ? key : key.contiguous();
  const auto v = value.stride(3) == 1 ? value : value.contiguous();
  torch::Tensor seen;
  if (visible.has_value() && visible->defined()) {
    seen = visible->to(torch::kBool).contiguous();
    TORCH_CHECK(seen.size(0) == B && seen.size(1) == M && seen.size(2) >= L,
                "visible must be [batch, queries, keys]");
  }
  const int64_t seen_width = seen.defined() ? seen.size(2) : 0;
  const bool* seen_p = seen.defined() ? seen.data_ptr<bool>() : nullptr;
  auto out = torch::empty({B, M, H, D}, query.options());
  const uint16_t *qp = u16(q), *kp = u16(k), *vp = u16(v);
  uint16_t* op = u16_mut(out);
  const int64_t per_group = H / G;
  const auto attend = row_functions().attend;
  // One task per (batch, query row): its visible slots once, then every head.
  at::parallel_for(0, B * M * H, 1, [&](int64_t first, int64_t last) {
    std::vector<int64_t> slots(L);
    std::vector<float> scores(L), acc(D);
    int64_t listed_for = -1, count = 0;
    for (int64_t task = first; task < last; ++task) {
      const int64_t b = task / (M * H), i = (task / H) % M, h = task % H;
      if (listed_for != b * M + i) {
        listed_for = b * M + i;
        count = 0;
        const bool* row = seen_p ? seen_p + (b * M + i) * seen_width : nullptr;
        for (int64_t j = 0; j < L; ++j)
          if (row == nullptr || row[j]) slots[count++] = j;
      }
      const int64_t g = h / per_group;
      attend(qp + b * q.stride(0) + h * q.stride(1) + i * q.stride(2),
             kp + b * k.stride(0) + g * k.stride(1), k.stride(2),
             vp + b * v.stride(0) + g * v.stride(1), v.stride(2), slots.data(), count, D,
             static_cast<float>(scaling), scores.data(), acc.data(),
             op + ((b * M + i) * H + h) * D);
    }
  });
  return out;
}
