// specbench's bf16 matrix product for CPU linear layers (see bf16_kernels.py).
//
// y[m, n] = sum_k x[m, k] * w[n, k] (+ bias[n]), bf16 in and out, fp32 accumulation.
// The weight is packed once, in the layout of the process's instruction path (`set_isa`):
// - AVX-512 BF16: [N/64][K/2][64][2], a block of 64 outputs as one contiguous run; one
//   broadcast of x[k:k+2] times one zmm register of the block gives 16 outputs' pair sums
//   (the dot-product instruction), each output summed in one fp32 lane, k ascending;
// - AVX2 + FMA (CPUs without AVX-512 BF16): tiles of 2 outputs (for calls of several rows)
//   or of 4 (`few_rows`: one or two), k in chunks of 16 (see "AVX2 + FMA" below); each
//   output summed in 8 fp32 lanes, then the lanes in a fixed tree, in either layout.
// On either path an output element is accumulated in the same order whatever the number of
// rows, the row tile or the thread that computes it, so a row's result never depends on the
// other rows of the call: batch invariance by construction. The two paths round differently
// from each other; a process uses one.
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

constexpr int64_t round_up(int64_t value, int64_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

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

// The AVX2 layouts: tiles of `Tile` outputs (2 or 4), each [Kp/16][Tile][16] (Kp: K rounded
// up to 16, the pad zero), 64 / Tile tiles to a block of 64 outputs (as on the AVX-512 path:
// the unit threads share out, and fused projections slice whole blocks). A group is 2
// outputs of a tile: per chunk of 16 k, 2 x 16 bf16, one cache line. A ymm register of a
// group holds 8 pairs (k, k + 1) of one output; shifting and masking widen them to the 8 even
// and the 8 odd k of the chunk. Each output is summed in 8 fp32 lanes (lane i: k = 16c + 2i,
// then 16c + 2i + 1, chunk c ascending), then the lanes in one fixed tree: the same order in
// both layouts, so they give the same results bit for bit; only the order of the weight
// stream differs. Tiles of 2 serve calls of several rows (a verification), tiles of 4 calls
// of one or two (a draft's steps); see block_avx2_rows and block_avx2_few.
//
// Why not the AVX-512 layout (64 outputs' pairs side by side, x broadcast): without a bf16
// dot-product instruction each weight costs two FMAs per row, so a call of several rows is
// bound by FMAs, and broadcast tiles keep too few independent sums for the FMA latency (a
// 4-row call cost 1.5 one-row calls). Here x is the vector operand, read from L1, and one
// pass over a group serves up to 4 rows: 2-4 rows cost about one row's weight stream
// (measured on a Zen 3 EPYC).
constexpr int64_t kGroup = 2;                     // outputs per group
constexpr int64_t kGroups = kBlock / kGroup;      // groups per block
constexpr int64_t kChunk = 16;                    // k per chunk (8 pairs)
constexpr int64_t kMaxRowsAvx2 = 4;               // rows per pass over a group

SPECBENCH_AVX2 inline float sum_lanes(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Outputs of groups g0 .. g0 + Groups of a block (laid out in tiles of `Tile` outputs, see
// `pack`) for `Rows` rows of widened x (see widen_avx2), into out[r * kBlock + output].
// XInRegisters: x's chunk is loaded once per chunk (few rows); otherwise read by every FMA
// from L1, which leaves registers for 12 sums.
template <int Tile, int Rows, int Groups, bool XInRegisters>
SPECBENCH_AVX2 void groups_avx2(const float* xw, int64_t Kp, const uint16_t* block, int64_t g0,
                                float* out) {
  constexpr int Outputs = Groups * kGroup;
  constexpr int64_t kTileGroups = Tile / kGroup;
  __m256 acc[Rows][Outputs];
  for (int r = 0; r < Rows; ++r)
    for (int o = 0; o < Outputs; ++o) acc[r][o] = _mm256_setzero_ps();
  const __m256i high = _mm256_set1_epi32(static_cast<int32_t>(0xFFFF0000u));
  const uint16_t* first[Groups];  // each group's chunk 0
  for (int g = 0; g < Groups; ++g)
    first[g] = block + (g0 + g) / kTileGroups * Tile * Kp +
               (g0 + g) % kTileGroups * kGroup * kChunk;
  for (int64_t c = 0; c < Kp / kChunk; ++c) {
    const float* xc = xw + c * kChunk;
    __m256 even[XInRegisters ? Rows : 1], odd[XInRegisters ? Rows : 1];
    if (XInRegisters)
      for (int r = 0; r < Rows; ++r) {
        even[r] = _mm256_loadu_ps(xc + r * Kp);
        odd[r] = _mm256_loadu_ps(xc + r * Kp + 8);
      }
    for (int g = 0; g < Groups; ++g) {
      const uint16_t* w = first[g] + c * Tile * kChunk;
      // A chunk of a group is one cache line: 1.5 KiB ahead in its tile's linear stream.
      _mm_prefetch(reinterpret_cast<const char*>(w) + 1536, _MM_HINT_T0);
      for (int o = 0; o < kGroup; ++o) {
        const __m256i pairs = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + o * 16));
        const __m256 w_even = _mm256_castsi256_ps(_mm256_slli_epi32(pairs, 16));
        const __m256 w_odd = _mm256_castsi256_ps(_mm256_and_si256(pairs, high));
        for (int r = 0; r < Rows; ++r) {
          __m256& sum = acc[r][g * kGroup + o];
          sum = _mm256_fmadd_ps(w_even, XInRegisters ? even[r] : _mm256_loadu_ps(xc + r * Kp), sum);
          sum = _mm256_fmadd_ps(w_odd, XInRegisters ? odd[r] : _mm256_loadu_ps(xc + r * Kp + 8),
                                sum);
        }
      }
    }
  }
  for (int r = 0; r < Rows; ++r)
    for (int o = 0; o < Outputs; ++o) out[r * kBlock + o] = sum_lanes(acc[r][o]);
}

// One block's 64 outputs for all M rows, into acc (M x 64 floats), in the layout of tiles of
// 2 outputs (for calls of several rows): tiles of up to 4 rows, each one pass over its
// groups; a 4-row pass reads one group, one linear stream (a group's slice stays in L1 or L2
// for the next tile). Every tile keeps at least 8 independent sums, the FMA latency times
// its throughput.
SPECBENCH_AVX2 void block_avx2_rows(const float* xw, int64_t M, int64_t Kp,
                                    const uint16_t* block, float* acc) {
  for (int64_t m0 = 0; m0 < M; m0 += kMaxRowsAvx2) {
    const float* x = xw + m0 * Kp;
    float* out = acc + m0 * kBlock;
    switch (std::min(kMaxRowsAvx2, M - m0)) {
      case 1:
        for (int64_t g = 0; g < kGroups; g += 4)
          groups_avx2<2, 1, 4, true>(x, Kp, block, g, out + g * kGroup);
        break;
      case 2:
        for (int64_t g = 0; g < kGroups; g += 2)
          groups_avx2<2, 2, 2, true>(x, Kp, block, g, out + g * kGroup);
        break;
      case 3:
        for (int64_t g = 0; g < kGroups; g += 2)
          groups_avx2<2, 3, 2, false>(x, Kp, block, g, out + g * kGroup);
        break;
      default:
        for (int64_t g = 0; g < kGroups; ++g)
          groups_avx2<2, 4, 1, false>(x, Kp, block, g, out + g * kGroup);
    }
  }
}

// The same in the layout of tiles of 4 outputs (for calls of one or two rows): a pass of 1
// row reads 2 tiles, of 2 or 3 rows one tile, each one linear stream, where the layout of
// 2 gives them 4 and 2 streams of a group each (short ones where K is small: 3.5 KiB at K =
// 896). 4 rows take a 3-row pass over each tile and a 1-row pass over the pair from cache:
// a 4-row pass over half a tile (every other line) streams far slower than over a group.
SPECBENCH_AVX2 void block_avx2_few(const float* xw, int64_t M, int64_t Kp, const uint16_t* block,
                                   float* acc) {
  for (int64_t g = 0; g < kGroups; g += 4) {  // two tiles
    for (int64_t m0 = 0; m0 < M; m0 += kMaxRowsAvx2) {
      const float* x = xw + m0 * Kp;
      float* out = acc + m0 * kBlock + g * kGroup;
      switch (std::min(kMaxRowsAvx2, M - m0)) {
        case 1:
          groups_avx2<4, 1, 4, true>(x, Kp, block, g, out);
          break;
        case 2:
          groups_avx2<4, 2, 2, true>(x, Kp, block, g, out);
          groups_avx2<4, 2, 2, true>(x, Kp, block, g + 2, out + 2 * kGroup);
          break;
        case 3:
          groups_avx2<4, 3, 2, false>(x, Kp, block, g, out);
          groups_avx2<4, 3, 2, false>(x, Kp, block, g + 2, out + 2 * kGroup);
          break;
        default:
          groups_avx2<4, 3, 2, false>(x, Kp, block, g, out);
          groups_avx2<4, 3, 2, false>(x, Kp, block, g + 2, out + 2 * kGroup);
          groups_avx2<4, 1, 4, true>(x + 3 * Kp, Kp, block, g, out + 3 * kBlock);
      }
    }
  }
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

// x's rows in fp32, each chunk of 16 as its 8 even k then its 8 odd k (the order of the
// AVX2 layout's widened weights), Kp per row, the pad zero. The buffer is the calling
// thread's, kept between calls (a fresh one of a long k, 4 x 8960 floats, comes from mmap
// with page faults on every call), and aligned to a cache line: the kernel's 32-byte loads
// of x then never straddle two lines (unaligned, a 4-row product inside a model cost
// 1.3-1.5 one-row products instead of about 1.05).
const float* widen_avx2(const uint16_t* x, int64_t M, int64_t K, int64_t Kp) {
  constexpr int64_t kLineFloats = 64 / sizeof(float);
  thread_local std::vector<float> buffer;
  // Grown, never cleared: every element the kernel reads is written below, the pad too.
  const auto size = static_cast<size_t>(M * Kp + kLineFloats);
  if (buffer.size() < size) buffer.resize(size);
  const auto address = reinterpret_cast<uintptr_t>(buffer.data());
  float* widened = buffer.data() + (64 - address % 64) % 64 / sizeof(float);
  for (int64_t r = 0; r < M; ++r)
    for (int64_t k = 0; k < Kp; ++k) {
      const int64_t i = k % kChunk;
      widened[r * Kp + k - i + (i % 2) * 8 + i / 2] = k < K ? from_bf16(x[r * K + k]) : 0.0f;
    }
  return widened;
}

// Which path `linear` takes: AVX-512 BF16 where the CPU has it, unless set_isa chose AVX2.
bool use_avx512_bf16 = false;

}  // namespace

void set_isa(bool avx512_bf16) { use_avx512_bf16 = avx512_bf16; }
bool isa_is_avx512_bf16() { return use_avx512_bf16; }

// ``weight`` [N, K] (K even) in the layout of the path `set_isa` chose, N padded to 64:
// AVX-512 BF16 [N/64][K/2][64][2], AVX2 [N/64][64/T][Kp/16][T][16] (K padded to 16) with
// tiles of T = 4 outputs for `few_rows` (calls of one or two rows), else 2; the pad zero.
// `linear` tells the paths apart by the number of dimensions, the AVX2 tiles by T.
// (The AVX-512 layout serves any number of rows: `few_rows` does not change it.)
torch::Tensor pack(const torch::Tensor& weight, bool few_rows) {
  TORCH_CHECK(weight.dim() == 2 && weight.scalar_type() == torch::kBFloat16, "a 2-d bf16 weight");
  const int64_t N = weight.size(0), K = weight.size(1);
  TORCH_CHECK(K % 2 == 0, "the input size must be even");
  const int64_t padded = round_up(N, kBlock);
  if (!use_avx512_bf16) {
    const int64_t Kp = round_up(K, kChunk);
    auto full = torch::zeros({padded, Kp}, weight.options());
    full.narrow(0, 0, N).narrow(1, 0, K).copy_(weight);
    const int64_t tile = few_rows ? 4 : 2;
    return full.view({padded / tile, tile, Kp / kChunk, kChunk})
        .permute({0, 2, 1, 3})
        .contiguous()
        .view({padded / kBlock, kBlock / tile, Kp / kChunk, tile, kChunk});
  }
  auto full = torch::zeros({padded, K}, weight.options());
  full.narrow(0, 0, N).copy_(weight);
  return full.view({padded / kBlock, kBlock, K / 2, 2}).permute({0, 2, 1, 3}).contiguous();
}

// x [..., K] @ W.T (+ bias) with W packed by ``pack``; ``out_features`` is W's N.
torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& packed, int64_t out_features,
                     const c10::optional<torch::Tensor>& bias) {
  TORCH_CHECK(x.scalar_type() == torch::kBFloat16 && packed.scalar_type() == torch::kBFloat16,
              "bf16 inputs");
  const bool avx2_layout = packed.dim() == 5;
  TORCH_CHECK(packed.dim() == 4 || (avx2_layout && (packed.size(3) == 2 || packed.size(3) == 4)),
              "a weight packed by pack()");
  // Each layout runs on its path only (the AVX-512 code would fault on an AVX2 CPU).
  TORCH_CHECK(avx2_layout != use_avx512_bf16, "the weight was packed for the ",
              avx2_layout ? "AVX2" : "AVX-512 BF16", " path but the kernels run on the ",
              use_avx512_bf16 ? "AVX-512 BF16" : "AVX2", " path: pack it under the same path");
  // The AVX2 layout keeps K rounded up to 16: x's K is the one that rounds to it.
  const int64_t Kp = avx2_layout ? packed.size(2) * kChunk : packed.size(1) * 2;
  const int64_t K = x.size(-1);
  const bool fits = avx2_layout ? K % 2 == 0 && round_up(K, kChunk) == Kp : K == Kp;
  TORCH_CHECK(fits, "x has ", K, " features, the weight ", Kp);
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
  auto shape = x.sizes().vec();
  shape.back() = N;
  if (M == 0) return y.view(shape);
  if (avx2_layout) {
    const float* xw = widen_avx2(xp, M, K, Kp);
    const auto block_avx2 = packed.size(3) == 4 ? block_avx2_few : block_avx2_rows;
    at::parallel_for(0, packed.size(0), 1, [&](int64_t first, int64_t last) {
      std::vector<float> acc(M * kBlock);
      for (int64_t blk = first; blk < last; ++blk) {
        block_avx2(xw, M, Kp, wp + blk * kBlock * Kp, acc.data());
        store_scalar(acc.data(), M, b, blk * kBlock, N, yp);
      }
    });
  } else {
    // Passes change where a sum is kept between k ranges (registers or this buffer, both
    // exact float32), never its order: a row's result is the same for any number of rows.
    const int64_t step = M > kMaxRows ? kKStep : K;
    at::parallel_for(0, packed.size(0), 1, [&](int64_t first, int64_t last) {
      std::vector<float> acc(M * kBlock);
      for (int64_t blk = first; blk < last; ++blk) {
        const uint16_t* block = wp + blk * kBlock * K;
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
  return y.view(shape);
}
