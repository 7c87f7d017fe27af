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
#include <ATen/Parallel.h>
#include <immintrin.h>

#include "bf16_ops.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

#define SPECBENCH_AVX512_BF16 __attribute__((target("avx512f,avx512bf16,avx512bw,avx512vl")))

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

SPECBENCH_AVX512_BF16 inline __mmask16 lanes16(int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
}

SPECBENCH_AVX512_BF16 inline __m512 load_bf16(const uint16_t* p, __mmask16 mask) {
  const __m512i raw = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(raw, 16));
}

SPECBENCH_AVX512_BF16 inline __m256i to_bf16(__m512 v) { return (__m256i)_mm512_cvtneps_pbh(v); }

// v rounded to bf16 (nearest even) and widened back.
SPECBENCH_AVX512_BF16 inline __m512 round_bf16_ps(__m512 v) {
  const __m512i raw = _mm512_cvtepu16_epi32(to_bf16(v));
  return _mm512_castsi512_ps(_mm512_slli_epi32(raw, 16));
}

// exp(x) to about one float ulp: x = n ln2 + r, Cephes' polynomial for exp(r), times 2^n.
SPECBENCH_AVX512_BF16 inline __m512 exp_ps(__m512 x) {
  x = _mm512_min_ps(x, _mm512_set1_ps(88.3762626647949f));
  x = _mm512_max_ps(x, _mm512_set1_ps(-103.972084045410f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 y = _mm512_add_ps(_mm512_fmadd_ps(p, _mm512_mul_ps(r, r), r), _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(y, n);
}

// Sum of squares of one row in a fixed order: 16 float lanes over the row, then a fixed tree.
SPECBENCH_AVX512_BF16 float sum_of_squares(const uint16_t* x, int64_t n) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __m512 v = load_bf16(x + i, lanes16(n - i));
    acc = _mm512_fmadd_ps(v, v, acc);
  }
  return _mm512_reduce_add_ps(acc);
}

// transformers' RMSNorm of one row: weight * bf16(x * rsqrt(mean(x^2) + eps)).
SPECBENCH_AVX512_BF16 void norm_row(const uint16_t* x, const uint16_t* w, int64_t n, float eps,
                                    uint16_t* out) {
  const float mean = sum_of_squares(x, n) / static_cast<float>(n);
  const __m512 scale = _mm512_set1_ps(1.0f / std::sqrt(mean + eps));
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 mask = lanes16(n - i);
    const __m512 normed = round_bf16_ps(_mm512_mul_ps(load_bf16(x + i, mask), scale));
    _mm256_mask_storeu_epi16(out + i, mask,
                             to_bf16(_mm512_mul_ps(load_bf16(w + i, mask), normed)));
  }
}

// x + y of bf16 rows, rounded as torch adds.
SPECBENCH_AVX512_BF16 void add_row(const uint16_t* x, const uint16_t* y, int64_t n,
                                   uint16_t* out) {
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 mask = lanes16(n - i);
    _mm256_mask_storeu_epi16(out + i, mask,
                             to_bf16(_mm512_add_ps(load_bf16(x + i, mask), load_bf16(y + i, mask))));
  }
}

// bf16(bf16(silu(g)) * u) for n elements (torch's silu, then its product).
SPECBENCH_AVX512_BF16 void silu_mul_span(const uint16_t* g, const uint16_t* u, int64_t n,
                                         uint16_t* out) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 mask = lanes16(n - i);
    const __m512 x = load_bf16(g + i, mask);
    const __m512 e = exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), x));
    const __m512 act = round_bf16_ps(_mm512_div_ps(x, _mm512_add_ps(one, e)));
    _mm256_mask_storeu_epi16(out + i, mask, to_bf16(_mm512_mul_ps(act, load_bf16(u + i, mask))));
  }
}

// exp(x - best) of n scores in place (any order: each element alone).
SPECBENCH_AVX512_BF16 void exp_shifted(float* x, int64_t n, float best) {
  const __m512 shift = _mm512_set1_ps(best);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 mask = lanes16(n - i);
    const __m512 v = _mm512_maskz_loadu_ps(mask, x + i);
    _mm512_mask_storeu_ps(x + i, mask, exp_ps(_mm512_sub_ps(v, shift)));
  }
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

// One query's attention over the visible slots of one key/value head (see the file comment).
SPECBENCH_AVX512_BF16 void attend_row(const uint16_t* q, const uint16_t* keys, int64_t key_stride,
                                      const uint16_t* values, int64_t value_stride,
                                      const int64_t* slots, int64_t count, int64_t dim,
                                      float scaling, float* scores, float* acc, uint16_t* out) {
  float best = -INFINITY;
  for (int64_t t = 0; t < count; ++t) {
    const uint16_t* k = keys + slots[t] * key_stride;
    __m512 sum = _mm512_setzero_ps();
    for (int64_t d = 0; d < dim; d += 32) {
      const __mmask32 mask = dim - d >= 32 ? static_cast<__mmask32>(0xFFFFFFFFu)
                                           : static_cast<__mmask32>((1u << (dim - d)) - 1);
      const __m512i qv = _mm512_maskz_loadu_epi16(mask, q + d);
      const __m512i kv = _mm512_maskz_loadu_epi16(mask, k + d);
      sum = _mm512_dpbf16_ps(sum, (__m512bh)qv, (__m512bh)kv);
    }
    // Rounded where eager attention rounds: the bf16 product, then its scaling.
    const float score = round_bf16(round_bf16(_mm512_reduce_add_ps(sum)) * scaling);
    scores[t] = score;
    best = score > best ? score : best;
  }
  exp_shifted(scores, count, best);
  float total = 0.0f;
  for (int64_t t = 0; t < count; ++t) total += scores[t];  // in slot order
  for (int64_t d = 0; d < dim; ++d) acc[d] = 0.0f;
  for (int64_t t = 0; t < count; ++t) {
    const __m512 p = _mm512_set1_ps(round_bf16(scores[t] / total));  // weights in bf16
    const uint16_t* v = values + slots[t] * value_stride;
    for (int64_t d = 0; d < dim; d += 16) {
      const __mmask16 mask = lanes16(dim - d);
      _mm512_mask_storeu_ps(acc + d, mask,
                            _mm512_fmadd_ps(p, load_bf16(v + d, mask),
                                            _mm512_maskz_loadu_ps(mask, acc + d)));
    }
  }
  for (int64_t d = 0; d < dim; ++d) out[d] = float_to_bf16(acc[d]);
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
    norm_row(xp + r * n, wp, n, static_cast<float>(eps), op + r * n);
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
    add_row(ap + r * n, bp + r * n, n, sp + r * n);
    norm_row(sp + r * n, wp, n, static_cast<float>(eps), op + r * n);
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
      silu_mul_span(gp + r * width + i0, gp + r * width + n + i0, std::min(kSpan, n - i0),
                    op + r * n + i0);
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
      attend_row(qp + b * q.stride(0) + h * q.stride(1) + i * q.stride(2),
                 kp + b * k.stride(0) + g * k.stride(1), k.stride(2),
                 vp + b * v.stride(0) + g * v.stride(1), v.stride(2), slots.data(), count, D,
                 static_cast<float>(scaling), scores.data(), acc.data(),
                 op + ((b * M + i) * H + h) * D);
    }
  });
  return out;
}
