// Declares the soft-DTW ops once (kernels register per dispatch key in cpu/ and
// cuda/), and makes the library importable as the Python module tap_fast._C.
//
//   soft_dtw_forward(cost [B,N,M], gamma, variant) -> (values [B], R)
//       R is the padded DP grid ([B, N+1, M+1] standard, [B, N, M+2] otam), saved
//       for the backward.
//   soft_dtw_backward(grad [B], cost, R, gamma, variant) -> grad_cost [B,N,M]
//
// The autograd formula is attached in Python (kernels/soft_dtw.py,
// torch.library.register_autograd), as are the fake (meta) kernels for torch.compile.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// Importing tap_fast._C runs the static TORCH_LIBRARY registrations below and in the
// kernel files; the module itself holds nothing.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "tap_fast soft-DTW ops (torch.ops.tap_fast)", -1, nullptr,
  };
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(tap_fast, m) {
  m.def("soft_dtw_forward(Tensor cost, float gamma, str variant) -> (Tensor, Tensor)");
  m.def(
      "soft_dtw_backward(Tensor grad, Tensor cost, Tensor R, float gamma, str variant) -> Tensor");
}
