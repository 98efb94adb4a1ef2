// Operator library `meranet` (torch.ops.meranet.*): schema of every operator, and the build query.
// Kernels register their implementations per dispatch key in csrc/cpu/ and csrc/cuda/.
#include <Python.h>
#include <torch/library.h>

#include <sstream>
#include <string>

#include "ops/meranet_fast.h"

// Importing meranet_fast._C only has to run the static registrations below: an empty module.
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}

namespace meranet {

std::string build_info() {
  std::ostringstream s;
  s << "torch=" << MERANET_TORCH_VERSION;
#ifdef _OPENMP
  s << " openmp=1";
#else
  s << " openmp=0";
#endif
#ifdef MERANET_WITH_CUDA
  s << " cuda=1 cuda_runtime=" << cuda_runtime_version();
#else
  s << " cuda=0";
#endif
#ifdef MERANET_SANITIZE
  s << " sanitize=" << MERANET_SANITIZE;
#endif
  return s.str();
}

}  // namespace meranet

TORCH_LIBRARY(meranet, m) {
  m.def("build_info() -> str", &meranet::build_info);
  // Fused spatio-temporal attention (csrc/ops/st_attention.h, docs/design.md §2.1).
  m.def("st_attention_fwd(Tensor x, Tensor weight, Tensor? bias) -> "
        "(Tensor out, Tensor attn, Tensor pooled, Tensor argmax)");
  m.def("st_attention_bwd(Tensor grad_out, Tensor x, Tensor weight, Tensor attn, Tensor pooled, "
        "Tensor argmax) -> (Tensor grad_x, Tensor grad_weight, Tensor grad_bias)");
  // Channel attention and the fused residual-attention tail (csrc/ops/channel_attention.h, csrc/ops/ra_tail.h):
  // kernel-level ops of every backend ("triton": the same schemas with a _triton suffix) ...
  m.def("ca_pool(Tensor y) -> (Tensor avg, Tensor max, Tensor argmax)");
  m.def("ca_scale(Tensor y, Tensor scale) -> Tensor");
  m.def("ca_scale_grad(Tensor grad, Tensor y, Tensor? attn, Tensor? grad_pooled, Tensor? sta_argmax) -> Tensor");
  m.def("ca_input_grad(Tensor grad, Tensor scale, Tensor grad_avg, Tensor grad_max, Tensor argmax, "
        "Tensor? attn, Tensor? grad_pooled, Tensor? sta_argmax) -> Tensor");
  m.def("ra_pool(Tensor y, Tensor scale) -> (Tensor pooled, Tensor argmax)");
  m.def("ra_attend(Tensor y, Tensor shortcut, Tensor scale, Tensor pooled, Tensor weight, Tensor? bias) -> "
        "(Tensor out, Tensor attn)");
  m.def("ra_attend_bwd(Tensor grad_out, Tensor out, Tensor y, Tensor scale, Tensor attn, Tensor pooled, "
        "Tensor weight) -> (Tensor grad_z, Tensor grad_pooled, Tensor grad_weight, Tensor grad_bias)");
  // ... and the public operators composed from them, with C++ autograd (csrc/composition/channel_attention_op.cpp,
  // csrc/composition/ra_tail_op.cpp); `backend` picks the kernels ("cpp", "cuda" or "triton").
  m.def("channel_attention(Tensor y, Tensor w_reduce, Tensor? b_reduce, Tensor w_expand, Tensor? b_expand, "
        "str backend) -> (Tensor out, Tensor a, Tensor avg, Tensor max, Tensor argmax)");
  m.def("channel_attention_backward(Tensor? grad_out, Tensor? grad_a, Tensor? grad_avg, Tensor? grad_max, "
        "Tensor y, Tensor w_reduce, Tensor? b_reduce, Tensor w_expand, Tensor? b_expand, Tensor a, Tensor avg, "
        "Tensor max, Tensor argmax, str backend) -> (Tensor grad_y, Tensor grad_w_reduce, Tensor grad_b_reduce, "
        "Tensor grad_w_expand, Tensor grad_b_expand)");
  m.def("ra_tail(Tensor y, Tensor shortcut, Tensor w_reduce, Tensor? b_reduce, Tensor w_expand, Tensor? b_expand, "
        "Tensor st_weight, Tensor? st_bias, str backend) -> (Tensor out, Tensor a, Tensor attn, Tensor pooled, "
        "Tensor sta_argmax, Tensor avg, Tensor max, Tensor ca_argmax)");
  m.def("ra_tail_backward(Tensor grad_out, Tensor out, Tensor y, Tensor w_reduce, Tensor? b_reduce, "
        "Tensor w_expand, Tensor? b_expand, Tensor st_weight, Tensor a, Tensor attn, Tensor pooled, "
        "Tensor sta_argmax, Tensor avg, Tensor max, Tensor ca_argmax, str backend) -> (Tensor grad_y, "
        "Tensor grad_shortcut, Tensor grad_w_reduce, Tensor grad_b_reduce, Tensor grad_w_expand, "
        "Tensor grad_b_expand, Tensor grad_st_weight, Tensor grad_st_bias)");
}
