// The Python module of specbench's bf16 CPU operations (declared in bf16_ops.h).
#include "bf16_ops.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("pack", &pack, "pack a [N, K] bf16 weight", pybind11::arg("weight"),
             pybind11::arg("few_rows") = false);
  module.def("linear", &linear, "x @ W.T + bias with a packed W");
  module.def("set_isa", &set_isa, "the linear product's path: AVX-512 BF16 (true) or AVX2");
  module.def("rms_norm", &rms_norm, "transformers' RMSNorm");
  module.def("add_rms_norm", &add_rms_norm, "a residual sum and its RMSNorm");
  module.def("silu_mul", &silu_mul, "silu(gate) * up of a fused gate/up projection");
  module.def("rotary_write", &rotary_write, "rotary queries; rotated keys and values cached");
  module.def("rotary_split", &rotary_split, "rotary queries and keys, and the values");
  module.def("attend", &attend, "grouped attention over each query's visible keys");
}
