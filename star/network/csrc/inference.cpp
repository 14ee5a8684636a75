// Two kernels for inference only (eval mode, no gradient asked for), which keep nothing for a backward pass.
//
// The query, key and value projections of both encoders of an ST-block, each x W^T of the same x: one pass
// over x, a tile of rows at a time, instead of one product each.
//
// The rest of an encoder layer after its attention: h = LayerNorm1(x + y), then
// LayerNorm2(h + W2 act(W1 h + b1) + b2), for a tile of rows at a time in the cache. The unfused layers write
// and read back four activations of the layer's size between them (h, the first product, the activation, the
// second product); here each tile's go through buffers a thread keeps, and only the output leaves them. No
// dropout: in eval mode every dropout is the identity.

#include <string_view>

#include "common.h"

namespace star_fused {

namespace {

enum class Activation { relu, silu, gelu };

Activation activation_of(std::string_view name) {
  if (name == "relu") return Activation::relu;
  if (name == "silu") return Activation::silu;
  TORCH_CHECK(name == "gelu", "activation must be relu, silu or gelu, got ", name);
  return Activation::gelu;
}

// erf by Abramowitz and Stegun's 7.1.26 (absolute error under 1.5e-7 in exact arithmetic), which vectorises
// where std::erf does not; double keeps std::erf (the equality checks use double)
template <typename T>
inline T erf_of(T x) {
  return std::erf(x);
}

template <>
inline float erf_of<float>(float x) {
  const float a = std::fabs(x), t = 1.0f / (1.0f + 0.3275911f * a);
  const float poly =
      t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
  return std::copysign(1.0f - poly * exp_of(-a * a), x);
}

template <typename T>
void activate(Activation kind, T* a, int64_t n) {
  switch (kind) {
    case Activation::relu:
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) a[i] = a[i] < T(0) ? T(0) : a[i];  // NaN stays NaN, as torch's
      break;
    case Activation::silu:
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) a[i] = a[i] / (T(1) + exp_of(-a[i]));
      break;
    case Activation::gelu:  // nn.GELU's exact form: x Phi(x)
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) a[i] = T(0.5) * a[i] * (T(1) + erf_of(a[i] * T(0.70710678118654752440)));
      break;
  }
}

// Register blocking of the tile product: kRows rows of kColumnVectors vector registers of accumulators, which
// with the weights' row and the broadcast input stay in the 32 registers of AVX-512 (24 accumulators) or the
// 16 of AVX2 (12) or of SSE (12 of 16 bytes)
constexpr int64_t kColumnVectors = kVectorBytes == 64 ? 4 : 2;
constexpr int64_t kRows = 6;
constexpr int64_t kTile = 96;  // rows per tile: a multiple of kRows; three (96, 128) float buffers fit in L2

// out = in wt + bias on `rows` rows (a multiple of kRows): in (rows, K), wt (K, N) the weight transposed, out
// (rows, N), bias (N) or none. K and N compile-time where they are (the widths 64 and 128 and their
// projections' 3 x), so that the accumulators of a block stay in registers; otherwise (K = N = 0) read at
// run time, each row a loop over the columns.
template <typename T, int64_t K, int64_t N>
void tile_product(const T* __restrict__ in, const T* __restrict__ wt, const T* __restrict__ bias,
                  T* __restrict__ out, int64_t rows, int64_t k_runtime, int64_t n_runtime) {
  if constexpr (K == 0) {
    const int64_t k_size = k_runtime, n_size = n_runtime;
    for (int64_t r = 0; r < rows; ++r) {
      T* __restrict__ o = out + r * n_size;
      for (int64_t n = 0; n < n_size; ++n) o[n] = bias ? bias[n] : T(0);
      for (int64_t k = 0; k < k_size; ++k) {
        const T a = in[r * k_size + k];
#pragma omp simd
        for (int64_t n = 0; n < n_size; ++n) o[n] += a * wt[k * n_size + n];
      }
    }
  } else {
    // the accumulators as vector-extension values, so that they are registers from the bias to the store
    typedef T Vec __attribute__((vector_size(kVectorBytes)));
    constexpr int64_t lanes = kVectorBytes / static_cast<int64_t>(sizeof(T));
    constexpr int64_t vectors = std::min<int64_t>(N / lanes, kColumnVectors), cols = vectors * lanes;
    static_assert(N % lanes == 0 && N % cols == 0, "the output width must be a multiple of a block's columns");
    for (int64_t r0 = 0; r0 < rows; r0 += kRows) {
      for (int64_t n0 = 0; n0 < N; n0 += cols) {
        Vec acc[kRows][vectors];
        for (int64_t v = 0; v < vectors; ++v) {
          Vec start{};
          if (bias) __builtin_memcpy(&start, bias + n0 + v * lanes, sizeof(Vec));
          for (int64_t r = 0; r < kRows; ++r) acc[r][v] = start;
        }
#pragma GCC unroll 4
        for (int64_t k = 0; k < K; ++k) {
          Vec w[vectors];
          for (int64_t v = 0; v < vectors; ++v) __builtin_memcpy(&w[v], wt + k * N + n0 + v * lanes, sizeof(Vec));
#pragma GCC unroll 8
          for (int64_t r = 0; r < kRows; ++r) {
            const T a = in[(r0 + r) * K + k];
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

// (out, in) nn.Linear weight -> (in, out), so that a tile product reads one row of it per input column
template <typename T>
std::vector<T> transposed(const at::Tensor& weight) {
  const int64_t outputs = weight.size(0), inputs = weight.size(1);
  const T* w = weight.data_ptr<T>();
  std::vector<T> wt(outputs * inputs);
  for (int64_t o = 0; o < outputs; ++o)
    for (int64_t i = 0; i < inputs; ++i) wt[i * outputs + o] = w[o * inputs + i];
  return wt;
}

// run(std::integral_constant<int64_t, w>) with w = c where the kernels are compiled for that width, else 0
template <typename Run>
void with_width(int64_t c, const Run& run) {
  if (c == 64)
    run(std::integral_constant<int64_t, 64>{});
  else if (c == 128)
    run(std::integral_constant<int64_t, 128>{});
  else
    run(std::integral_constant<int64_t, 0>{});
}

// run(start, count, blocked, buffers) for every tile of `rows` rows, threads splitting them: the tile's first row
// and its row count, that count rounded up to whole register blocks, and `buffers`, one thread's, kept from
// tile to tile
template <typename T, typename Run>
void over_tiles(int64_t rows, const Run& run) {
  at::parallel_for(0, (rows + kTile - 1) / kTile, 1, [&](int64_t first, int64_t last) {
    std::vector<std::vector<T>> buffers;
    for (int64_t tile = first; tile < last; ++tile) {
      const int64_t start = tile * kTile, count = std::min(kTile, rows - start);
      run(start, count, (count + kRows - 1) / kRows * kRows, buffers);
    }
  });
}

template <typename T, int64_t C>
void encoder_tail_rows(const at::Tensor& x, const at::Tensor& y, const std::vector<const T*>& norm1,
                       const std::vector<T>& w1t, const T* b1, const std::vector<T>& w2t, const T* b2,
                       const std::vector<const T*>& norm2, T eps1, T eps2, Activation kind, int64_t rows, int64_t c,
                       at::Tensor& out) {
  const KeepDraw none(0.0, 0);
  const T *xs = x.data_ptr<T>(), *ys = y.data_ptr<T>();
  T* outs = out.data_ptr<T>();
  over_tiles<T>(rows, [&](int64_t start, int64_t count, int64_t blocked, std::vector<std::vector<T>>& buffers) {
    // h, the first product, the second, a row's sum; the rows past a last, partial tile take part in the
    // products (whole register blocks, zero until a tile fills them) and are not written
    if (buffers.empty()) buffers = {std::vector<T>(kTile * c), std::vector<T>(kTile * c), std::vector<T>(kTile * c),
                                    std::vector<T>(c)};
    T *h = buffers[0].data(), *a = buffers[1].data(), *f = buffers[2].data(), *sums = buffers[3].data();
    add_norm_rows<T>(xs + start * c, ys + start * c, norm1[0], norm1[1], none, 0.0, eps1, c, 0, count, sums, false,
                     h, nullptr, nullptr);
    tile_product<T, C, C>(h, w1t.data(), b1, a, blocked, c, c);
    activate(kind, a, count * c);
    tile_product<T, C, C>(a, w2t.data(), b2, f, blocked, c, c);
    add_norm_rows<T>(h, f, norm2[0], norm2[1], none, 0.0, eps2, c, 0, count, sums, false, outs + start * c, nullptr,
                     nullptr);
  });
}

// x W_i^T for each weight, a tile of x's rows at a time: read once, multiplied by every weight while in the
// cache. Whole tiles are read from x and written to the outputs in place; the last, partial one goes through
// buffers padded to whole register blocks.
template <typename T, int64_t K>
void projection_rows(const T* xs, const std::vector<std::vector<T>>& transposes, std::vector<at::Tensor>& outs,
                     int64_t rows, int64_t k) {
  over_tiles<T>(rows, [&](int64_t start, int64_t count, int64_t blocked, std::vector<std::vector<T>>& buffers) {
    if (buffers.empty()) buffers.resize(2);  // a partial tile's input and output
    auto &in = buffers[0], &out = buffers[1];
    const T* tile_in = xs + start * k;
    if (blocked != count) {
      in.assign(blocked * k, T(0));
      std::copy_n(tile_in, count * k, in.data());
      tile_in = in.data();
    }
    for (size_t i = 0; i < outs.size(); ++i) {
      const int64_t n = outs[i].size(1);
      T* tile_out = outs[i].data_ptr<T>() + start * n;
      T* target = blocked != count ? (out.resize(blocked * n), out.data()) : tile_out;
      const T* wt = transposes[i].data();
      if (K > 0 && n == 3 * K)  // a query, key and value projection of a compiled-in width
        tile_product<T, K, 3 * K>(tile_in, wt, nullptr, target, blocked, k, n);
      else
        tile_product<T, 0, 0>(tile_in, wt, nullptr, target, blocked, k, n);
      if (target != tile_out) std::copy_n(target, count * n, tile_out);
    }
  });
}

}  // namespace

at::Tensor encoder_tail_forward(const at::Tensor& x, const at::Tensor& y, const at::Tensor& norm1_weight,
                                const at::Tensor& norm1_bias, double eps1, const at::Tensor& weight1,
                                const at::Tensor& bias1, const at::Tensor& weight2, const at::Tensor& bias2,
                                const at::Tensor& norm2_weight, const at::Tensor& norm2_bias, double eps2,
                                c10::string_view activation) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() >= 1 && x.is_contiguous(), "x must be a contiguous CPU tensor");
  TORCH_CHECK(y.sizes() == x.sizes() && y.is_contiguous() && y.scalar_type() == x.scalar_type(),
              "y must be contiguous and of x's shape and dtype, got ", y.sizes());
  const int64_t c = x.size(-1), rows = c == 0 ? 0 : x.numel() / c;
  for (const auto& [t, name] : {std::pair{norm1_weight, "norm1_weight"}, std::pair{norm1_bias, "norm1_bias"},
                                std::pair{bias1, "bias1"}, std::pair{bias2, "bias2"},
                                std::pair{norm2_weight, "norm2_weight"}, std::pair{norm2_bias, "norm2_bias"}})
    TORCH_CHECK(t.device().is_cpu() && t.dim() == 1 && t.size(0) == c && t.is_contiguous() &&
                    t.scalar_type() == x.scalar_type(),
                name, " must be a contiguous (", c, ") CPU tensor in x's dtype");
  for (const auto& [t, name] : {std::pair{weight1, "weight1"}, std::pair{weight2, "weight2"}})
    TORCH_CHECK(t.device().is_cpu() && t.dim() == 2 && t.size(0) == c && t.size(1) == c && t.is_contiguous() &&
                    t.scalar_type() == x.scalar_type(),
                name, " must be a contiguous (", c, ", ", c, ") CPU tensor in x's dtype");
  const Activation kind = activation_of(std::string_view(activation.data(), activation.size()));
  auto out = new_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "encoder_tail_forward", [&] {
    using T = scalar_t;
    const auto w1t = transposed<T>(weight1), w2t = transposed<T>(weight2);
    const std::vector<const T*> norm1{norm1_weight.data_ptr<T>(), norm1_bias.data_ptr<T>()},
        norm2{norm2_weight.data_ptr<T>(), norm2_bias.data_ptr<T>()};
    const auto run = [&](auto width) {
      encoder_tail_rows<T, decltype(width)::value>(x, y, norm1, w1t, bias1.data_ptr<T>(), w2t, bias2.data_ptr<T>(),
                                                    norm2, static_cast<T>(eps1), static_cast<T>(eps2), kind, rows, c,
                                                    out);
    };
    with_width(c, run);
  });
  return out;
}

std::vector<at::Tensor> projections_forward(const at::Tensor& x, at::TensorList weights) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.is_contiguous(), "x must be a contiguous (rows, C) CPU tensor");
  const int64_t rows = x.size(0), k = x.size(1);
  std::vector<at::Tensor> outs;
  for (const auto& weight : weights) {
    TORCH_CHECK(weight.device().is_cpu() && weight.dim() == 2 && weight.size(1) == k && weight.is_contiguous() &&
                    weight.scalar_type() == x.scalar_type(),
                "each weight must be a contiguous (out, ", k, ") CPU matrix in x's dtype, got ", weight.sizes());
    outs.push_back(new_tensor({rows, weight.size(0)}, x.scalar_type()));
  }
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "projections_forward", [&] {
    std::vector<std::vector<scalar_t>> transposes;
    for (const auto& weight : weights) transposes.push_back(transposed<scalar_t>(weight));
    with_width(k, [&](auto width) {
      projection_rows<scalar_t, decltype(width)::value>(x.data_ptr<scalar_t>(), transposes, outs, rows, k);
    });
  });
  return outs;
}

}  // namespace star_fused
