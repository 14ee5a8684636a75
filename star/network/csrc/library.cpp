// STAR's fused CPU operators, registered as torch.ops.star_fused (star.network.fused builds and loads them).
//
// Both attentions take the query, key and value projections as one F.linear writes them, rows of tokens
// (N, V, 3, ., .), and give their output and gradients back as rows, so the projection before them and the
// layers after them are plain matrix products and no layout is copied between them.

#include <torch/library.h>

#include "common.h"

TORCH_LIBRARY(star_fused, library) {
  library.def("sparse_attention_forward(Tensor qkv, Tensor rowptr, Tensor keys, Tensor? keep, float scale, "
              "bool weights) -> (Tensor, Tensor)");
  library.def("sparse_attention_projected_forward(Tensor x, Tensor weight, Tensor rowptr, Tensor keys, int heads, "
              "float scale) -> Tensor");
  library.def("sparse_attention_backward(Tensor grad_out, Tensor qkv, Tensor alpha, Tensor rowptr, Tensor keys, "
              "Tensor? keep, float scale) -> Tensor");
  // no tensor argument, hence no device to dispatch on: one kernel for every call
  library.def("keep_mask(int[] shape, float p, int seed, ScalarType dtype) -> Tensor", &star_fused::keep_mask);
  library.def("apply_keep_mask(Tensor x, float p, int seed) -> Tensor");
  library.def("add_norm_forward(Tensor x, Tensor y, Tensor weight, Tensor bias, float p, int seed, float eps, "
              "bool keep_sum) -> (Tensor, Tensor, Tensor, Tensor)");
  library.def("add_norm_backward(Tensor grad_out, Tensor total, Tensor mean, Tensor rstd, Tensor weight, float p, "
              "int seed) -> (Tensor, Tensor, Tensor, Tensor)");
  library.def("encoder_tails_forward(Tensor x, Tensor[] ys, Tensor[] params, float[] eps, str activation) -> Tensor");
  library.def("context_pooling_forward(Tensor x, int[] bounds, Tensor weight, bool per_joint, bool mean) -> Tensor");
  library.def("linear_forward(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  library.def("linear_attention_forward(Tensor qkv, int[] bounds, float scale, float eps) -> Tensor");
  library.def("linear_attention_projected_forward(Tensor x, Tensor weight, int[] bounds, int heads, float scale, "
              "float eps) -> Tensor");
  library.def("linear_attention_backward(Tensor grad_out, Tensor qkv, int[] bounds, float scale, float eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(star_fused, CPU, library) {
  library.impl("sparse_attention_forward", &star_fused::sparse_attention_forward);
  library.impl("sparse_attention_projected_forward", &star_fused::sparse_attention_projected_forward);
  library.impl("sparse_attention_backward", &star_fused::sparse_attention_backward);
  library.impl("linear_attention_forward", &star_fused::linear_attention_forward);
  library.impl("linear_attention_projected_forward", &star_fused::linear_attention_projected_forward);
  library.impl("linear_attention_backward", &star_fused::linear_attention_backward);
  library.impl("apply_keep_mask", &star_fused::apply_keep_mask);
  library.impl("add_norm_forward", &star_fused::add_norm_forward);
  library.impl("add_norm_backward", &star_fused::add_norm_backward);
  library.impl("encoder_tails_forward", &star_fused::encoder_tails_forward);
  library.impl("context_pooling_forward", &star_fused::context_pooling_forward);
  library.impl("linear_forward", &star_fused::linear_forward);
}
