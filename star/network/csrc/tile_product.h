// Register-blocked tile products, out = in W^T + b on a tile of rows, which the inference kernels
// (inference.cpp) and both attentions' projected forms (linear_attention.cpp, sparse_attention.cpp) run on rows
// they keep in the cache. Every output is the same sum, k = 0 .. K - 1 in order from the bias, however the rows are tiled and
// the columns blocked, so two kernels that run the same product give the same bits.

#pragma once

#include "common.h"

namespace star_fused {

// Register blocking of the tile product: kRows rows of kColumnVectors vector registers of accumulators, which
// with the weights' row and the broadcast input stay in the 32 registers of AVX-512 (24 accumulators) or the
// 16 of AVX2 (12) or of SSE (12 of 16 bytes)
constexpr int64_t kColumnVectors = kVectorBytes == 64 ? 4 : 2;
constexpr int64_t kRows = 6;

// The output columns of a register block of the tile product for an output width n compiled in
template <typename T>
constexpr int64_t block_columns(int64_t n) {
  constexpr int64_t lanes = kVectorBytes / static_cast<int64_t>(sizeof(T));
  return std::min<int64_t>(n / lanes, kColumnVectors) * lanes;
}

// out = in wt + bias on `rows` rows (a multiple of kRows): in (rows, K), its rows `in_stride` apart (0: K, packed),
// wt the weight as `panels` lays it out, out (rows, N), bias (N) or none. K and N compile-time where they are
// (the widths 64 and 128 and their projections' 3 x), so that the accumulators of a block stay in
// registers, and wt in panels of a block's columns; otherwise (K = N = 0) read at run time, each row a loop over
// the columns, and wt the weight transposed (K, N).
template <typename T, int64_t K, int64_t N>
void tile_product(const T* __restrict__ in, const T* __restrict__ wt, const T* __restrict__ bias,
                  T* __restrict__ out, int64_t rows, int64_t k_runtime, int64_t n_runtime, int64_t in_stride = 0) {
  const int64_t stride = in_stride > 0 ? in_stride : K > 0 ? K : k_runtime;
  if constexpr (K == 0) {
    const int64_t k_size = k_runtime, n_size = n_runtime;
    for (int64_t r = 0; r < rows; ++r) {
      T* __restrict__ o = out + r * n_size;
      for (int64_t n = 0; n < n_size; ++n) o[n] = bias ? bias[n] : T(0);
      for (int64_t k = 0; k < k_size; ++k) {
        const T a = in[r * stride + k];
#pragma omp simd
        for (int64_t n = 0; n < n_size; ++n) o[n] += a * wt[k * n_size + n];
      }
    }
  } else {
    // the accumulators as vector-extension values, so that they are registers from the bias to the store
    typedef T Vec __attribute__((vector_size(kVectorBytes)));
    constexpr int64_t lanes = kVectorBytes / static_cast<int64_t>(sizeof(T));
    constexpr int64_t cols = block_columns<T>(N), vectors = cols / lanes;
    static_assert(N % lanes == 0 && N % cols == 0, "the output width must be a multiple of a block's columns");
    // a panel of the weight (K x cols: 32 KB at K = 128 with AVX-512, 8 KB with AVX2) over every register block
    // of the tile's rows, so that the blocks reuse it from the nearest cache that holds it, where looping over
    // the panels inside each block read all of them again for every block
    for (int64_t n0 = 0; n0 < N; n0 += cols) {
      for (int64_t r0 = 0; r0 < rows; r0 += kRows) {
        Vec acc[kRows][vectors];
        for (int64_t v = 0; v < vectors; ++v) {
          Vec start{};
          if (bias) __builtin_memcpy(&start, bias + n0 + v * lanes, sizeof(Vec));
          for (int64_t r = 0; r < kRows; ++r) acc[r][v] = start;
        }
#pragma GCC unroll 4
        for (int64_t k = 0; k < K; ++k) {
          Vec w[vectors];
          for (int64_t v = 0; v < vectors; ++v)
            __builtin_memcpy(&w[v], wt + n0 * K + k * cols + v * lanes, sizeof(Vec));
#pragma GCC unroll 8
          for (int64_t r = 0; r < kRows; ++r) {
            const T a = in[(r0 + r) * stride + k];
            for (int64_t v = 0; v < vectors; ++v) acc[r][v] += a * w[v];
          }
        }
        for (int64_t r = 0; r < kRows; ++r)
          for (int64_t v = 0; v < vectors; ++v)
            __builtin_memcpy(out + (r0 + r) * N + n0 + v * lanes, &acc[r][v], sizeof(Vec));
      }
    }
  }
}

// rows first..first + outputs of an (out, in) nn.Linear weight -> panels of `cols` output columns one after the
// other, each (in, cols), so that a register block of the tile product reads its weights in memory order;
// cols = outputs gives those rows transposed
template <typename T>
std::vector<T> panels(const at::Tensor& weight, int64_t first, int64_t outputs, int64_t cols) {
  const int64_t inputs = weight.size(1);
  const T* w = weight.data_ptr<T>() + first * inputs;
  std::vector<T> wt(outputs * inputs);
  for (int64_t o = 0; o < outputs; ++o)
    for (int64_t i = 0; i < inputs; ++i) wt[o / cols * inputs * cols + i * cols + o % cols] = w[o * inputs + i];
  return wt;
}

// The weight's rows first..first + outputs (all of them by default) as tile_product<T, K, N> reads them: in
// panels of its register block's columns where K and N are compile-time, else transposed
template <typename T, int64_t K, int64_t N>
std::vector<T> packed_weight(const at::Tensor& weight, int64_t first = 0, int64_t outputs = -1) {
  if (outputs < 0) outputs = weight.size(0);
  return panels<T>(weight, first, outputs, K > 0 ? block_columns<T>(N) : outputs);
}

// run(std::integral_constant<int64_t, v>) with v = value where value is one of Values, else v = 0
template <int64_t... Values, typename Run>
void with_constant(int64_t value, const Run& run) {
  if (!((value == Values ? (run(std::integral_constant<int64_t, Values>{}), true) : false) || ...))
    run(std::integral_constant<int64_t, 0>{});
}

// run(std::integral_constant<int64_t, c>) with c one of the widths that the encoder tails and the projected
// attentions' products are compiled for (64, 128), else 0
template <typename Run>
void with_width(int64_t c, const Run& run) {
  with_constant<64, 128>(c, run);
}

// The projected attentions' x (N, V, C) and projection weight (3C, C), checked; the rows layout of their q, k, v
inline RowLayout check_projected(const at::Tensor& x, const at::Tensor& weight, int64_t heads) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 3 && x.is_contiguous(), "x must be a contiguous (N, V, C) CPU tensor");
  const int64_t c = x.size(2);
  TORCH_CHECK(heads > 0 && c > 0 && c % heads == 0, "x's ", c, " channels must split into ", heads, " heads");
  TORCH_CHECK(weight.device().is_cpu() && weight.sizes() == at::IntArrayRef({3 * c, c}) && weight.is_contiguous() &&
                  weight.scalar_type() == x.scalar_type(),
              "weight must be a contiguous (", 3 * c, ", ", c, ") CPU matrix in x's dtype (", x.scalar_type(), "), got ",
              weight.sizes(), " ", weight.scalar_type());
  return RowLayout{x.size(0), x.size(1), heads, c / heads};
}

// run(shape, std::integral_constant<int64_t, C>): the call's head shape as with_shape gives it, and C its
// channels where the tile products are compiled for them (H d of a compile-time shape, or 64 and 128 with the
// heads read at run time), else 0
template <typename Run>
void with_projected_shape(const RowLayout& l, const Run& run) {
  with_shape(l, [&](auto shape) {
    constexpr int64_t width = decltype(shape)::width;
    if constexpr (width > 0)
      run(shape, std::integral_constant<int64_t, width>{});
    else
      with_width(l.heads * l.d, [&](auto channels) { run(shape, channels); });
  });
}

// run(std::integral_constant<int64_t, n>) with n the output width where tile products from K inputs are
// compiled for it (STAR's widths 64 and 128 to themselves and to their query, key and value projections' 3 x,
// and back, as the gradient of those products asks), else 0
template <int64_t K, typename Run>
void with_output(int64_t n, const Run& run) {
  if constexpr (K == 64 || K == 128)
    with_constant<K, 3 * K>(n, run);
  else if constexpr (K == 192 || K == 384)
    with_constant<K / 3>(n, run);
  else
    run(std::integral_constant<int64_t, 0>{});
}

}  // namespace star_fused
