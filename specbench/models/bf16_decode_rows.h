// The per-row work of bf16_decode.cpp, written once over a small vector interface and
// included once per instruction path (AVX-512 BF16, AVX2 + FMA), each inside its own
// namespace that defines first:
//   Vec, kLanes                    an fp32 vector of kLanes lanes
//   SPECBENCH_TARGET               the path's target attribute, on every function here
//   load_bf16(p, left), store_bf16(p, v, left), load_f32(p, left), store_f32(p, v, left)
//                                  min(kLanes, left) lanes from p (bf16 widened / rounded to
//                                  nearest even, as torch rounds), the rest read as zeros
//   set1, zero, add, sub, mul, div, fmadd(a, b, c) = a b + c, fnmadd(a, b, c) = c - a b,
//   vmin, vmax, round_nearest, scale_pow2(y, n) = y 2^n (one rounding), reduce_add (a fixed
//   order), round_bf16_vec(v) (v rounded to bf16 and widened back), dot_bf16(q, k, dim): the
//   fp32 sum of q[d] k[d] in a fixed order.
// No include guard: it is meant to be included more than once.

// exp(x) to about one float ulp: x = n ln2 + r, Cephes' polynomial for exp(r), times 2^n.
// Every path computes the same operations in the same order: the same results.
SPECBENCH_TARGET inline Vec exp_vec(Vec x) {
  x = vmin(x, set1(88.3762626647949f));
  x = vmax(x, set1(-103.972084045410f));
  const Vec n = round_nearest(mul(x, set1(1.44269504088896341f)));
  Vec r = fnmadd(n, set1(0.693359375f), x);
  r = fnmadd(n, set1(-2.12194440e-4f), r);
  Vec p = set1(1.9875691500e-4f);
  p = fmadd(p, r, set1(1.3981999507e-3f));
  p = fmadd(p, r, set1(8.3334519073e-3f));
  p = fmadd(p, r, set1(4.1665795894e-2f));
  p = fmadd(p, r, set1(1.6666665459e-1f));
  p = fmadd(p, r, set1(5.0000001201e-1f));
  const Vec y = add(fmadd(p, mul(r, r), r), set1(1.0f));
  return scale_pow2(y, n);
}

// Sum of squares of one row in a fixed order: kLanes float lanes over the row, then a fixed
// tree.
SPECBENCH_TARGET inline float sum_of_squares(const uint16_t* x, int64_t n) {
  Vec acc = zero();
  for (int64_t i = 0; i < n; i += kLanes) {
    const Vec v = load_bf16(x + i, n - i);
    acc = fmadd(v, v, acc);
  }
  return reduce_add(acc);
}

// transformers' RMSNorm of one row: weight * bf16(x * rsqrt(mean(x^2) + eps)).
SPECBENCH_TARGET void norm_row(const uint16_t* x, const uint16_t* w, int64_t n, float eps,
                               uint16_t* out) {
  const float mean = sum_of_squares(x, n) / static_cast<float>(n);
  const Vec scale = set1(1.0f / std::sqrt(mean + eps));
  for (int64_t i = 0; i < n; i += kLanes) {
    const Vec normed = round_bf16_vec(mul(load_bf16(x + i, n - i), scale));
    store_bf16(out + i, mul(load_bf16(w + i, n - i), normed), n - i);
  }
}

// x + y of bf16 rows, rounded as torch adds.
SPECBENCH_TARGET void add_row(const uint16_t* x, const uint16_t* y, int64_t n, uint16_t* out) {
  for (int64_t i = 0; i < n; i += kLanes)
    store_bf16(out + i, add(load_bf16(x + i, n - i), load_bf16(y + i, n - i)), n - i);
}

// bf16(bf16(silu(g)) * u) for n elements (torch's silu, then its product).
SPECBENCH_TARGET void silu_mul_span(const uint16_t* g, const uint16_t* u, int64_t n,
                                    uint16_t* out) {
  const Vec one = set1(1.0f);
  for (int64_t i = 0; i < n; i += kLanes) {
    const Vec x = load_bf16(g + i, n - i);
    const Vec act = round_bf16_vec(div(x, add(one, exp_vec(sub(zero(), x)))));
    store_bf16(out + i, mul(act, load_bf16(u + i, n - i)), n - i);
  }
}

// One query's attention over the visible slots of one key/value head (see bf16_decode.cpp).
SPECBENCH_TARGET void attend_row(const uint16_t* q, const uint16_t* keys, int64_t key_stride,
                                 const uint16_t* values, int64_t value_stride,
                                 const int64_t* slots, int64_t count, int64_t dim, float scaling,
                                 float* scores, float* acc, uint16_t* out) {
  float best = -INFINITY;
  for (int64_t t = 0; t < count; ++t) {
    // Rounded where eager attention rounds: the bf16 product, then its scaling.
    const float dot = dot_bf16(q, keys + slots[t] * key_stride, dim);
    const float score = round_bf16(round_bf16(dot) * scaling);
    scores[t] = score;
    best = score > best ? score : best;
  }
  const Vec shift = set1(best);
  for (int64_t t = 0; t < count; t += kLanes)  // each element alone: any order
    store_f32(scores + t, exp_vec(sub(load_f32(scores + t, count - t), shift)), count - t);
  float total = 0.0f;
  for (int64_t t = 0; t < count; ++t) total += scores[t];  // in slot order
  for (int64_t d = 0; d < dim; ++d) acc[d] = 0.0f;
  for (int64_t t = 0; t < count; ++t) {
    const Vec p = set1(round_bf16(scores[t] / total));  // weights in bf16
    const uint16_t* v = values + slots[t] * value_stride;
    for (int64_t d = 0; d < dim; d += kLanes)
      store_f32(acc + d, fmadd(p, load_bf16(v + d, dim - d), load_f32(acc + d, dim - d)), dim - d);
  }
  for (int64_t d = 0; d < dim; ++d) out[d] = float_to_bf16(acc[d]);
}
