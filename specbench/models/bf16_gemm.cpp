// specbench's bf16 matrix product for CPU linear layers (see bf16_kernels.py).
//
// y[m, n] = sum_k x[m, k] * w[n, k] (+ bias[n]), bf16 in and out, fp32 accumulation.
// The weight is packed once as [N/64][K/2][64][2]: a block of 64 outputs streams as one
// contiguous run. Two instruction paths read the same layout:
// - AVX-512 BF16: one broadcast of x[k:k+2] times one zmm register of the block gives 16
//   outputs' pair sums (the dot-product instruction);
// - AVX2 + FMA (CPUs without AVX-512 BF16): a ymm register of the block holds 8 outputs'
//   pairs; shifting and masking widen each half to fp32, and two FMAs add x[k] w[k] and then
//   x[k + 1] w[k + 1].
// On either path every output element is accumulated in the same order (k ascending, in one
// fp32 lane) whatever the number of rows, the row tile or the thread that computes it, so a
// row's result never depends on the other rows of the call: batch invariance by
// construction. The two paths round differently from each other; a process uses one.
#include "bf16_ops.h"

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

constexpr int64_t kBlock = 64;   // outputs per packed block (4 zmm of fp32)
// k per pass when a call has several row tiles: every tile reads the same 32 KiB of one
// block's weight from L1 before the next k range is loaded. A call of one tile streams each
// block in one pass (passes cost a 1-row call 5-50% of its streaming rate, measured).
constexpr int64_t kKStep = 256;
constexpr int64_t kMaxRows = 6;  // rows per tile: 24 accumulators, 4 weights, 1 broadcast

#define SPECBENCH_AVX512_BF16 __attribute__((target("avx512f,avx512bf16,avx512bw,avx512vl")))

template <int Rows>
SPECBENCH_AVX512_BF16 __attribute__((always_inline)) inline void pass(
    const uint16_t* x, int64_t ldx, const uint16_t* block, int64_t k0, int64_t k1, float* acc_io,
    bool first) {
  __m512 acc[Rows][4];
  for (int r = 0; r < Rows; ++r)
    for (int j = 0; j < 4; ++j)
      acc[r][j] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(acc_io + r * kBlock + j * 16);
  for (int64_t k = k0; k < k1; k += 2) {
    const uint16_t* w = block + k * kBlock;  // k / 2 pairs of 64 outputs * 2
    // Four KiB ahead (16 iterations): the stream of one block is long and linear, and
    // runs on into the next block (blocks lie one after another).
    _mm_prefetch(reinterpret_cast<const char*>(w) + 4096, _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(w) + 4096 + 64, _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(w) + 4096 + 128, _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(w) + 4096 + 192, _MM_HINT_T0);
    const __m512i w0 = _mm512_loadu_si512(w), w1 = _mm512_loadu_si512(w + 32),
                  w2 = _mm512_loadu_si512(w + 64), w3 = _mm512_loadu_si512(w + 96);
    for (int r = 0; r < Rows; ++r) {
      int32_t pair;
      __builtin_memcpy(&pair, x + r * ldx + k, sizeof(pair));
      const __m512bh xb = (__m512bh)_mm512_set1_epi32(pair);
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], xb, (__m512bh)w0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], xb, (__m512bh)w1);
      acc[r][2] = _mm512_dpbf16_ps(acc[r][2], xb, (__m512bh)w2);
      acc[r][3] = _mm512_dpbf16_ps(acc[r][3], xb, (__m512bh)w3);
    }
  }
  for (int r = 0; r < Rows; ++r)
    for (int j = 0; j < 4; ++j) _mm512_storeu_ps(acc_io + r * kBlock + j * 16, acc[r][j]);
}

template <int Rows>
SPECBENCH_AVX512_BF16 void run_pass(const uint16_t* x, int64_t ldx, const uint16_t* block,
                                    int64_t k0, int64_t k1, float* acc, bool first) {
  pass<Rows>(x, ldx, block, k0, k1, acc, first);
}

SPECBENCH_AVX512_BF16 void store(const float* acc, int64_t rows, const uint16_t* bias, int64_t n0,
                                 int64_t N, uint16_t* y) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < 4; ++j) {
      const int64_t n = n0 + j * 16;
      if (n >= N) break;
      const __mmask16 mask =
          N - n >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << (N - n)) - 1);
      __m512 v = _mm512_loadu_ps(acc + r * kBlock + j * 16);
      if (bias != nullptr) {
        const __m512i b = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, bias + n));
        v = _mm512_add_ps(v, _mm512_castsi512_ps(_mm512_slli_epi32(b, 16)));
      }
      // Round to nearest even, as torch rounds fp32 to bf16.
      _mm256_mask_storeu_epi16(y + r * N + n, mask, (__m256i)_mm512_cvtneps_pbh(v));
    }
}

using Pass = void (*)(const uint16_t*, int64_t, const uint16_t*, int64_t, int64_t, float*, bool);
constexpr Pass kPasses[kMaxRows + 1] = {
    nullptr, run_pass<1>, run_pass<2>, run_pass<3>, run_pass<4>, run_pass<5>, run_pass<6>};

// ---- AVX2 + FMA ----------------------------------------------------------------------
#define SPECBENCH_AVX2 __attribute__((target("avx2,fma")))

// k per pass when a call has several rows: a block's slice (16 KiB) stays in L1 while the
// row tiles and both halves of the block read it.
constexpr int64_t kKStepAvx2 = 128;
constexpr int64_t kMaxRowsAvx2 = 2;  // 2 rows x 4 ymm outputs: 8 accumulators of 16 registers

// Outputs [8 v0, 8 (v0 + Vecs)) of a block for `Rows` rows over k in [k0, k1).
template <int Rows, int Vecs>
SPECBENCH_AVX2 __attribute__((always_inline)) inline void pass_avx2(
    const uint16_t* x, int64_t ldx, const uint16_t* block, int64_t k0, int64_t k1, int64_t v0,
    float* acc_io, bool first) {
  __m256 acc[Rows][Vecs];
  for (int r = 0; r < Rows; ++r)
    for (int j = 0; j < Vecs; ++j)
      acc[r][j] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(acc_io + r * kBlock + (v0 + j) * 8);
  const __m256i high = _mm256_set1_epi32(static_cast<int32_t>(0xFFFF0000u));
  for (int64_t k = k0; k < k1; k += 2) {
    const uint16_t* w = block + k * kBlock + v0 * 16;
    if (Vecs == 8) {  // one row streaming whole blocks: fetch ahead as the AVX-512 path does
      _mm_prefetch(reinterpret_cast<const char*>(w) + 4096, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(w) + 4096 + 64, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(w) + 4096 + 128, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(w) + 4096 + 192, _MM_HINT_T0);
    }
    __m256 even[Rows], odd[Rows];
    for (int r = 0; r < Rows; ++r) {
      uint32_t pair;
      __builtin_memcpy(&pair, x + r * ldx + k, sizeof(pair));
      const uint32_t lo = pair << 16, hi = pair & 0xFFFF0000u;
      float fl, fh;
      __builtin_memcpy(&fl, &lo, sizeof(fl));
      __builtin_memcpy(&fh, &hi, sizeof(fh));
      even[r] = _mm256_set1_ps(fl);
      odd[r] = _mm256_set1_ps(fh);
    }
    for (int j = 0; j < Vecs; ++j) {
      const __m256i pairs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + j * 16));
      const __m256 w_even = _mm256_castsi256_ps(_mm256_slli_epi32(pairs, 16));
      const __m256 w_odd = _mm256_castsi256_ps(_mm256_and_si256(pairs, high));
      for (int r = 0; r < Rows; ++r) {
        acc[r][j] = _mm256_fmadd_ps(even[r], w_even, acc[r][j]);
        acc[r][j] = _mm256_fmadd_ps(odd[r], w_odd, acc[r][j]);
      }
    }
  }
  for (int r = 0; r < Rows; ++r)
    for (int j = 0; j < Vecs; ++j) _mm256_storeu_ps(acc_io + r * kBlock + (v0 + j) * 8, acc[r][j]);
}

template <int Rows, int Vecs>
SPECBENCH_AVX2 void run_pass_avx2(const uint16_t* x, int64_t ldx, const uint16_t* block,
                                  int64_t k0, int64_t k1, int64_t v0, float* acc, bool first) {
  pass_avx2<Rows, Vecs>(x, ldx, block, k0, k1, v0, acc, first);
}

// fp32 to bf16, rounding to nearest even as torch does (NaN stays a quiet NaN).
inline uint16_t to_bf16(float value) {
  uint32_t bits;
  __builtin_memcpy(&bits, &value, sizeof(bits));
  if (value != value) return 0x7FC0;
  bits += ((bits >> 16) & 1u) + 0x7FFFu;
  return static_cast<uint16_t>(bits >> 16);
}

inline float from_bf16(uint16_t value) {
  const uint32_t bits = static_cast<uint32_t>(value) << 16;
  float out;
  __builtin_memcpy(&out, &bits, sizeof(out));
  return out;
}

void store_scalar(const float* acc, int64_t rows, const uint16_t* bias, int64_t n0, int64_t N,
                  uint16_t* y) {
  const int64_t n1 = std::min(N, n0 + kBlock);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t n = n0; n < n1; ++n) {
      float v = acc[r * kBlock + (n - n0)];
      if (bias != nullptr) v += from_bf16(bias[n]);
      y[r * N + n] = to_bf16(v);
    }
}

// One block's outputs for all M rows on the AVX2 path, into acc (M x 64 floats).
SPECBENCH_AVX2 void block_avx2(const uint16_t* x, int64_t M, int64_t K, const uint16_t* block,
                               float* acc) {
  if (M == 1) {  // decoding: the whole block in one linear stream
    run_pass_avx2<1, 8>(x, K, block, 0, K, 0, acc, true);
    return;
  }
  for (int64_t k0 = 0; k0 < K; k0 += kKStepAvx2) {
    const int64_t k1 = std::min(K, k0 + kKStepAvx2);
    for (int64_t m0 = 0; m0 < M; m0 += kMaxRowsAvx2)
      for (int64_t v0 = 0; v0 < 8; v0 += 4) {
        float* out = acc + m0 * kBlock;
        if (M - m0 >= 2)
          run_pass_avx2<2, 4>(x + m0 * K, K, block, k0, k1, v0, out, k0 == 0);
        else
          run_pass_avx2<1, 4>(x + m0 * K, K, block, k0, k1, v0, out, k0 == 0);
      }
  }
}

// Which path `linear` takes: AVX-512 BF16 where the CPU has it, unless set_isa chose AVX2.
bool use_avx512_bf16 = false;

}  // namespace

void set_isa(bool avx512_bf16) { use_avx512_bf16 = avx512_bf16; }
bool isa_is_avx512_bf16() { return use_avx512_bf16; }

// The packed layout of ``weight`` [N, K] (K even; N padded to a multiple of 64 with zeros).
torch::Tensor pack(const torch::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == torch::kBFloat16, "a 2-d bf16 weight");
  const int64_t N = weight.size(0), K = weight.size(1);
  TORCH_CHECK(K % 2 == 0, "the input size must be even");
  const int64_t padded = (N + kBlock - 1) / kBlock * kBlock;
  auto full = torch::zeros({padded, K}, weight.options());
  full.narrow(0, 0, N).copy_(weight);
  return full.view({padded / kBlock, kBlock, K / 2, 2}).permute({0, 2, 1, 3}).contiguous();
}

// x [..., K] @ W.T (+ bias) with W packed by ``pack``; ``out_features`` is W's N.
torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& packed, int64_t out_features,
                     const c10::optional<torch::Tensor>& bias) {
  TORCH_CHECK(x.scalar_type() == torch::kBFloat16 && packed.scalar_type() == torch::kBFloat16,
              "bf16 inputs");
  const int64_t K = packed.size(1) * 2;
  TORCH_CHECK(x.size(-1) == K, "x has ", x.size(-1), " features, the weight ", K);
  const auto rows = x.reshape({-1, K}).contiguous();
  const int64_t M = rows.size(0), N = out_features;
  auto y = torch::empty({M, N}, x.options());
  torch::Tensor bias_bf16;
  const uint16_t* b = nullptr;
  if (bias.has_value() && bias->defined()) {
    bias_bf16 = bias->to(torch::kBFloat16).contiguous();
    b = reinterpret_cast<const uint16_t*>(bias_bf16.data_ptr());
  }
  const auto* xp = reinterpret_cast<const uint16_t*>(rows.data_ptr());
  const auto* wp = reinterpret_cast<const uint16_t*>(packed.data_ptr());
  auto* yp = reinterpret_cast<uint16_t*>(y.data_ptr());
  // Passes change where a sum is kept between k ranges (registers or this buffer, both exact
  // float32), never its order: a row's result is the same for any number of rows.
  const int64_t step = M > kMaxRows ? kKStep : K;
  const bool avx512 = use_avx512_bf16;
  if (M > 0) {
    at::parallel_for(0, packed.size(0), 1, [&](int64_t first, int64_t last) {
      std::vector<float> acc(M * kBlock);
      for (int64_t blk = first; blk < last; ++blk) {
        const uint16_t* block = wp + blk * kBlock * K;
        if (!avx512) {
          block_avx2(xp, M, K, block, acc.data());
          store_scalar(acc.data(), M, b, blk * kBlock, N, yp);
          continue;
        }
        for (int64_t k0 = 0; k0 < K; k0 += step) {
          const int64_t k1 = std::min(K, k0 + step);
          for (int64_t m0 = 0; m0 < M; m0 += kMaxRows) {
            const int64_t rows = std::min(kMaxRows, M - m0);
            kPasses[rows](xp + m0 * K, K, block, k0, k1, acc.data() + m0 * kBlock, k0 == 0);
          }
        }
        store(acc.data(), M, b, blk * kBlock, N, yp);
      }
    });
  }
  auto shape = x.sizes().vec();
  shape.back() = N;
  return y.view(shape);
}
