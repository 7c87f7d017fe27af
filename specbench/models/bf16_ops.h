// specbench's bf16 CPU operations: the packed matrix product (bf16_gemm.cpp) and the
// decoder-layer operations around it (bf16_decode.cpp). Python sees them through
// bf16_bindings.cpp, loaded by bf16_kernels.py.
#pragma once

#include <torch/extension.h>

#include <vector>

// few_rows: on the AVX2 path, the layout for calls of one or two rows (see bf16_gemm.cpp).
torch::Tensor pack(const torch::Tensor& weight, bool few_rows);
// true: the AVX-512 BF16 path (the CPU must have it); false: AVX2 + FMA.
void set_isa(bool avx512_bf16);
bool isa_is_avx512_bf16();
torch::Tensor linear(const torch::Tensor& x, const torch::Tensor& packed, int64_t out_features,
                     const c10::optional<torch::Tensor>& bias);

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);
std::vector<torch::Tensor> add_rms_norm(const torch::Tensor& x, const torch::Tensor& delta,
                                        const torch::Tensor& weight, double eps);
torch::Tensor silu_mul(const torch::Tensor& gate_up);
torch::Tensor rotary_write(const torch::Tensor& qkv, const torch::Tensor& cos,
                           const torch::Tensor& sin, int64_t heads, int64_t kv_heads,
                           torch::Tensor& key_cache, torch::Tensor& value_cache, int64_t start);
std::vector<torch::Tensor> rotary_split(const torch::Tensor& qkv, const torch::Tensor& cos,
                                        const torch::Tensor& sin, int64_t heads,
                                        int64_t kv_heads);
torch::Tensor attend(const torch::Tensor& query, const torch::Tensor& key,
                     const torch::Tensor& value, const c10::optional<torch::Tensor>& visible,
                     double scaling);
