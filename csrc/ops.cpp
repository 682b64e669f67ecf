// Operator schemas of the lmkan library, declared here once. Each op family has its folder
// (lmkan2d/, lmkan1d/, regularizers/): host code, kernels, the CUDA implementations
// (TORCH_LIBRARY_IMPL(lmkan, CUDA, m)) and the autograd (autograd.cpp); common/ holds the
// primitives they share. The CPU path is the pure-PyTorch reference in lmKAN/_reference.py,
// so no CPU kernels are registered.
//
// Shapes (G = num_grids):
//   2D layer:  x [N_in, B] (batch_last) or [B, N_in]; params [G+1, G+1, N_out, N_in/2];
//              borders [G+1]; y [N_out, B] or [B, N_out].
//   1D layer:  x as above; params [G+1, N_out, N_in]; borders [G+1]
//              (uniform_grid: borders are equally spaced and cells use the uniform formula).
//   Regularisers return a 0-dim tensor R; their backward takes dL/dR as a 0-dim tensor on
//   the device (no host synchronisation) and returns dL/dparams.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(lmkan, m) {
  // The differentiable layer op: the forward kernel's arguments, then the backward's
  // settings, which its autograd (lmkan2d/autograd.cpp) saves for lmkan2d_backward.
  // deterministic: the backward uses no float atomics (partials reduced in a fixed order),
  // so two runs give bitwise equal gradients. params may be float32, float16 or bfloat16
  // (x and borders are float32); table_dtype: the dtype the table's values are rounded
  // to before the kernels read them (None: params' own), the same in the forward and the
  // backward; a 16-bit table is read as such by the forward. grad_params has params' dtype
  // (accumulated in float32). out_dtype: y's dtype (None: float32); a 16-bit y's gradient
  // reaches lmkan2d_backward in 16 bits, as the layers' output under autocast.
  m.def("lmkan2d(Tensor x, Tensor params, Tensor borders, bool batch_last, int tile_size, "
        "int block_size, int backward_tile_size, int backward_block_size, "
        "bool backward_fast_mode, bool deterministic=False, ScalarType? table_dtype=None, "
        "ScalarType? out_dtype=None) -> Tensor");
  // The forward kernel and the backward kernels, each with only the arguments it uses.
  // lmkan2d_backward's grad_y may be float16 or bfloat16 (the gradient of a 16-bit y).
  m.def("lmkan2d_forward(Tensor x, Tensor params, Tensor borders, bool batch_last, "
        "int tile_size, int block_size, ScalarType? table_dtype=None) -> Tensor");
  m.def("lmkan2d_backward(Tensor grad_y, Tensor x, Tensor params, Tensor borders, "
        "bool batch_last, int tile_size, int block_size, bool fast_mode, "
        "bool deterministic=False, ScalarType? table_dtype=None, bool grad_params=True) "
        "-> (Tensor, Tensor)");
  // The pieces of lmkan2d_backward's own derivatives (its autograd: lmkan2d/autograd.cpp),
  // for weights like x: d<weights, grad_x>/d grad_y (y = sum_p weights . grad f_p), its x
  // part (the pairs' mixed second derivatives) and its parameter part (docs/spec.md,
  // "Second derivatives"). One launch configuration (tile 8), not tuned.
  m.def("lmkan2d_slope_forward(Tensor x, Tensor weights, Tensor params, Tensor borders, "
        "bool batch_last, ScalarType? table_dtype=None) -> Tensor");
  m.def("lmkan2d_slope_grad_x(Tensor grad_y, Tensor x, Tensor weights, Tensor params, "
        "Tensor borders, bool batch_last, ScalarType? table_dtype=None) -> Tensor");
  m.def("lmkan2d_slope_grad_params(Tensor grad_y, Tensor x, Tensor weights, Tensor params, "
        "Tensor borders, bool batch_last, bool deterministic=False) -> Tensor");
  // Largest num_grids that a tile size serves at full speed on a device, for "forward",
  // "backward", "backward_fast" or "backward_deterministic"; table_dtype: the forward's table
  // (float16/bfloat16 tables stage half the bytes; None: float32). The backward kernels read
  // a float32 table whatever the table dtype. output_dim: a layer of at most 8 outputs gets
  // the limits of the few-outputs kernels that serve it; None or more outputs, those of the
  // kernels of wider layers.
  m.def("lmkan2d_max_num_grids(int tile_size, str mode, int device_index, "
        "ScalarType? table_dtype=None, int? output_dim=None) -> int");

  // The differentiable layer op (autograd: lmkan1d/autograd.cpp). deterministic:
  // bitwise-reproducible backward (fixed-order reductions instead of atomics); the forward
  // kernel is deterministic either way and does not take it. table_dtype: as lmkan2d's
  // (the forward reads a 16-bit table; dx reads float32 slopes of the rounded values).
  m.def("lmkan1d(Tensor x, Tensor params, Tensor borders, bool uniform_grid, "
        "bool batch_last, bool deterministic=False, ScalarType? table_dtype=None) -> Tensor");
  m.def("lmkan1d_forward(Tensor x, Tensor params, Tensor borders, bool uniform_grid, "
        "bool batch_last, ScalarType? table_dtype=None) -> Tensor");
  // Largest num_grids the 1D kernels support on a device (forward and backward alike).
  m.def("lmkan1d_max_num_grids(int device_index) -> int");
  // grad_params=False: grad_x alone (the second output is empty, shape [0]): the first
  // backward of a force loss, and grad_x of the forward on a table in second derivatives.
  m.def("lmkan1d_backward(Tensor grad_y, Tensor x, Tensor params, Tensor borders, "
        "bool uniform_grid, bool batch_last, bool deterministic=False, "
        "ScalarType? table_dtype=None, bool grad_params=True) -> (Tensor, Tensor)");
  // The pieces of lmkan1d_backward's own derivatives (its autograd: lmkan1d/autograd.cpp):
  // y = sum_i weights[s, i] slope[k, o, i], and the parameter gradient with node weights
  // (-w/h_k, w/h_k) (docs/spec.md, "Second derivatives").
  m.def("lmkan1d_slope_forward(Tensor x, Tensor weights, Tensor params, Tensor borders, "
        "bool uniform_grid, bool batch_last, ScalarType? table_dtype=None) -> Tensor");
  m.def("lmkan1d_slope_grad_params(Tensor grad_y, Tensor x, Tensor weights, Tensor params, "
        "Tensor borders, bool uniform_grid, bool batch_last, bool deterministic=False) -> Tensor");

  m.def("hessian2d(Tensor params, Tensor borders) -> Tensor");
  m.def("hessian2d_backward(Tensor grad_r, Tensor params, Tensor borders) -> Tensor");
  // The sum of hessian2d over lists of tables (a model's 2D layers) in one launch per 8
  // tables: lmKAN.hessian_regularization's call.
  m.def("hessian2d_sum(Tensor[] params, Tensor[] borders, float weight=1.0) -> Tensor");
  m.def("hessian2d_sum_backward(Tensor grad_r, Tensor[] params, Tensor[] borders, "
        "float weight=1.0) -> Tensor[]");
  m.def("second_diff1d(Tensor params, Tensor borders) -> Tensor");
  m.def("second_diff1d_backward(Tensor grad_r, Tensor params, Tensor borders) -> Tensor");
}

// Importing lmKAN._C loads this library and so registers the ops above; the module
// itself only reports what it was built against, so lmKAN can refuse a stale build.
static PyModuleDef lmkan_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* module = PyModule_Create(&lmkan_module);
  if (module == nullptr) return nullptr;
  PyModule_AddStringConstant(module, "torch_version", LMKAN_TORCH_VERSION);
  PyModule_AddStringConstant(module, "cuda_version", LMKAN_CUDA_VERSION);
  return module;
}
