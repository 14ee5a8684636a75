// Products of rows by the register-blocked tile products (tile_product.h), and two kernels for inference only
// (eval mode, no gradient asked for).
//
// x W^T + b, a tile of rows at a time (the full spatial attention's query, key and value projection in inference;
// in training star.network.fused.linear's forward and input gradient).
//
// The rest of an encoder layer after its attention: h = LayerNorm1(x + y), then
// LayerNorm2(h + W2 act(W1 h + b1) + b2), for a tile of rows at a time in the cache, and of several layers on
// the same x (an ST-block's two encoders) their sum. The unfused layers write
// and read back four activations of the layer's size between them (h, the first product, the activation, the
// second product); here each tile's go through buffers a thread keeps, and only the output leaves them. No
// dropout: in eval mode every dropout is the identity.
//
// The context pooling (Eq. 7) of each clip's rows: two passes over them, the sums and the weighted sums, where
// star.network.pooling.ContextPooling writes and reads back three temporaries of the activations' size.

#include <string>
#include <string_view>

#include "tile_product.h"

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

constexpr int64_t kTile = 96;  // rows per tile: a multiple of kRows; three (96, 128) float buffers fit in L2

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

// One encoder layer's tail: its two norms' weights and biases and epsilons, its feed-forward's weights in panels
// and biases
template <typename T>
struct Tail {
  const T *norm1_weight, *norm1_bias, *bias1, *bias2, *norm2_weight, *norm2_bias;
  std::vector<T> weight1, weight2;
  T eps1, eps2;
};

// out = the sum over layers of tail_i(x, y_i), a tile of rows at a time: each layer's tail through the thread's
// buffers, the first written to the output's rows and the others added to them while they are in the cache
template <typename T, int64_t C>
void encoder_tails_rows(const T* xs, const std::vector<const T*>& ys, const std::vector<Tail<T>>& tails,
                        Activation kind, int64_t rows, int64_t c, T* outs) {
  const KeepDraw none(0.0, 0);
  over_tiles<T>(rows, [&](int64_t start, int64_t count, int64_t blocked, std::vector<std::vector<T>>& buffers) {
    // h, the first product, the second, a row's sum, another layer's output; the rows past a last, partial tile
    // take part in the products (whole register blocks, zero until a tile fills them) and are not written
    if (buffers.empty())
      buffers = {std::vector<T>(kTile * c), std::vector<T>(kTile * c), std::vector<T>(kTile * c), std::vector<T>(c),
                 std::vector<T>(tails.size() > 1 ? kTile * c : 0)};
    T *h = buffers[0].data(), *a = buffers[1].data(), *f = buffers[2].data(), *sums = buffers[3].data();
    T* __restrict__ out = outs + start * c;
    for (size_t i = 0; i < tails.size(); ++i) {
      const Tail<T>& tail = tails[i];
      T* o = i == 0 ? out : buffers[4].data();
      add_norm_rows<T, C>(xs + start * c, ys[i] + start * c, tail.norm1_weight, tail.norm1_bias, none, 0.0,
                          tail.eps1, c, 0, count, sums, false, h, nullptr, nullptr);
      tile_product<T, C, C>(h, tail.weight1.data(), tail.bias1, a, blocked, c, c);
      activate(kind, a, count * c);
      tile_product<T, C, C>(a, tail.weight2.data(), tail.bias2, f, blocked, c, c);
      add_norm_rows<T, C>(h, f, tail.norm2_weight, tail.norm2_bias, none, 0.0, tail.eps2, c, 0, count, sums, false,
                          o, nullptr, nullptr);
      if (i > 0) {
#pragma omp simd
        for (int64_t j = 0; j < count * c; ++j) out[j] += o[j];
      }
    }
  });
}

// x W^T + b, a tile of x's rows at a time. Whole tiles are read from x and written to the output in place; the
// last, partial one goes through buffers padded to whole register blocks.
template <typename T, int64_t K>
void product_rows(const T* xs, const at::Tensor& weight, const T* bias, T* out, int64_t rows, int64_t k) {
  const int64_t n = weight.size(0);
  with_output<K>(n, [&](auto width) {
    constexpr int64_t N = decltype(width)::value, KN = N > 0 ? K : 0;
    const std::vector<T> packed = packed_weight<T, KN, N>(weight);
    over_tiles<T>(rows, [&](int64_t start, int64_t count, int64_t blocked, std::vector<std::vector<T>>& buffers) {
      const T* tile_in = xs + start * k;
      T* tile_out = out + start * n;
      if (blocked == count) return tile_product<T, KN, N>(tile_in, packed.data(), bias, tile_out, blocked, k, n);
      if (buffers.empty()) buffers.resize(2);  // a partial tile's input and output
      auto &in = buffers[0], &padded = buffers[1];
      in.assign(blocked * k, T(0));
      std::copy_n(tile_in, count * k, in.data());
      padded.resize(blocked * n);
      tile_product<T, KN, N>(in.data(), packed.data(), bias, padded.data(), blocked, k, n);
      std::copy_n(padded.data(), count * n, tile_out);
    });
  });
}

// Context pooling (Eq. 7) of one clip's rows x (L, V, D), into out (V, D): c_v = tanh(mean_t(x_tv) W), then
// a_tv = sigmoid(x_tv . c_v) (per joint) or sigmoid(sum_v x_tv . c_v) (per frame), out_v = sum_t a_tv x_tv, over
// L for the mean; `work` (2 V D) the sums and the context
template <typename T>
void pool_clip(const T* __restrict__ x, int64_t length, int64_t joints, int64_t d, const T* __restrict__ w,
               bool per_joint, bool mean, T* __restrict__ out, std::vector<T>& work) {
  const int64_t size = joints * d;
  work.assign(2 * size, T(0));
  T *sums = work.data(), *context = sums + size;
  for (int64_t t = 0; t < length; ++t)
#pragma omp simd
    for (int64_t i = 0; i < size; ++i) sums[i] += x[t * size + i];
  for (int64_t v = 0; v < joints; ++v) {
    T* __restrict__ c = context + v * d;
    for (int64_t i = 0; i < d; ++i) {
      const T m = sums[v * d + i] / static_cast<T>(length);
#pragma omp simd
      for (int64_t j = 0; j < d; ++j) c[j] += m * w[i * d + j];
    }
    for (int64_t j = 0; j < d; ++j) c[j] = std::tanh(c[j]);
  }
  std::fill(out, out + size, T(0));
  for (int64_t t = 0; t < length; ++t) {
    const T* __restrict__ row = x + t * size;
    T total = 0, weight = 0;
    for (int64_t v = 0; v < joints; ++v) {
      T dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int64_t j = 0; j < d; ++j) dot += row[v * d + j] * context[v * d + j];
      if (per_joint) {
        weight = T(1) / (T(1) + exp_of(-dot));
#pragma omp simd
        for (int64_t j = 0; j < d; ++j) out[v * d + j] += weight * row[v * d + j];
      } else {
        total += dot;
      }
    }
    if (!per_joint) {
      weight = T(1) / (T(1) + exp_of(-total));
#pragma omp simd
      for (int64_t i = 0; i < size; ++i) out[i] += weight * row[i];
    }
  }
  if (mean)
    for (int64_t i = 0; i < size; ++i) out[i] /= static_cast<T>(length);
}

}  // namespace

at::Tensor context_pooling_forward(const at::Tensor& x, at::IntArrayRef bounds, const at::Tensor& weight,
                                   bool per_joint, bool mean) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 3 && x.is_contiguous(), "x must be a contiguous (N, V, D) CPU tensor");
  const int64_t rows = x.size(0), joints = x.size(1), d = x.size(2), clips = static_cast<int64_t>(bounds.size()) - 1;
  check_bounds(bounds, rows);
  TORCH_CHECK(weight.device().is_cpu() && weight.sizes() == at::IntArrayRef({d, d}) && weight.is_contiguous() &&
                  weight.scalar_type() == x.scalar_type(),
              "weight must be a contiguous (", d, ", ", d, ") CPU matrix in x's dtype (", x.scalar_type(), "), got ",
              weight.sizes(), " ", weight.scalar_type());
  auto out = new_tensor({clips, joints, d}, x.scalar_type());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "context_pooling_forward", [&] {
    const scalar_t *xs = x.data_ptr<scalar_t>(), *w = weight.data_ptr<scalar_t>();
    scalar_t* outs = out.data_ptr<scalar_t>();
    at::parallel_for(0, clips, 1, [&](int64_t first, int64_t last) {
      std::vector<scalar_t> work;
      for (int64_t m = first; m < last; ++m)
        pool_clip(xs + bounds[m] * joints * d, bounds[m + 1] - bounds[m], joints, d, w, per_joint, mean,
                  outs + m * joints * d, work);
    });
  });
  return out;
}

at::Tensor encoder_tails_forward(const at::Tensor& x, at::TensorList ys, at::TensorList params,
                                 at::ArrayRef<double> eps, c10::string_view activation) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() >= 1 && x.is_contiguous(), "x must be a contiguous CPU tensor");
  const int64_t layers = static_cast<int64_t>(ys.size());
  TORCH_CHECK(layers >= 1 && static_cast<int64_t>(params.size()) == 8 * layers &&
                  static_cast<int64_t>(eps.size()) == 2 * layers,
              "need a y, eight parameters and two epsilons per layer, got ", ys.size(), " y, ", params.size(),
              " parameters and ", eps.size(), " epsilons");
  for (const auto& y : ys)
    TORCH_CHECK(y.device().is_cpu() && y.sizes() == x.sizes() && y.is_contiguous() &&
                    y.scalar_type() == x.scalar_type(),
                "each y must be a contiguous CPU tensor of x's shape and dtype, got ", y.sizes());
  const int64_t c = x.size(-1), rows = c == 0 ? 0 : x.numel() / c;
  // per layer: norm1 weight and bias, weight1, bias1, weight2, bias2, norm2 weight and bias
  static constexpr const char* kNames[] = {"norm1_weight", "norm1_bias", "weight1",      "bias1",
                                           "weight2",      "bias2",      "norm2_weight", "norm2_bias"};
  for (int64_t i = 0; i < 8 * layers; ++i) {
    const auto& t = params[i];
    const bool matrix = i % 8 == 2 || i % 8 == 4;
    TORCH_CHECK(t.device().is_cpu() && t.dim() == (matrix ? 2 : 1) && t.size(0) == c &&
                    (!matrix || t.size(1) == c) && t.is_contiguous() && t.scalar_type() == x.scalar_type(),
                "layer ", i / 8, "'s ", kNames[i % 8], " must be a contiguous (", c, matrix ? ", " : "",
                matrix ? std::to_string(c) : "", ") CPU tensor in x's dtype, got ", t.sizes());
  }
  const Activation kind = activation_of(std::string_view(activation.data(), activation.size()));
  auto out = new_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "encoder_tails_forward", [&] {
    using T = scalar_t;
    with_width(c, [&](auto width) {
      constexpr int64_t C = decltype(width)::value;
      std::vector<const T*> inputs;
      std::vector<Tail<T>> tails;
      for (int64_t l = 0; l < layers; ++l) {
        const auto p = [&](int64_t i) { return params[8 * l + i].data_ptr<T>(); };
        inputs.push_back(ys[l].data_ptr<T>());
        tails.push_back(Tail<T>{p(0), p(1), p(3), p(5), p(6), p(7), packed_weight<T, C, C>(params[8 * l + 2]),
                                packed_weight<T, C, C>(params[8 * l + 4]), static_cast<T>(eps[2 * l]),
                                static_cast<T>(eps[2 * l + 1])});
      }
      encoder_tails_rows<T, C>(x.data_ptr<T>(), inputs, tails, kind, rows, c, out.data_ptr<T>());
    });
  });
  return out;
}

at::Tensor linear_forward(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 2 && x.is_contiguous(), "x must be a contiguous (rows, C) CPU tensor");
  const int64_t rows = x.size(0), k = x.size(1);
  TORCH_CHECK(weight.device().is_cpu() && weight.dim() == 2 && weight.size(1) == k && weight.is_contiguous() &&
                  weight.scalar_type() == x.scalar_type(),
              "weight must be a contiguous (out, ", k, ") CPU matrix in x's dtype (", x.scalar_type(), "), got ",
              weight.sizes(), " ", weight.scalar_type());
  TORCH_CHECK(!bias.has_value() || (bias->device().is_cpu() && bias->dim() == 1 && bias->size(0) == weight.size(0) &&
                                    bias->is_contiguous() && bias->scalar_type() == x.scalar_type()),
              "bias must be a contiguous (", weight.size(0), ") CPU tensor in x's dtype");
  at::Tensor out = new_tensor({rows, weight.size(0)}, x.scalar_type());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "linear_forward", [&] {
    const scalar_t* b = bias.has_value() ? bias->data_ptr<scalar_t>() : nullptr;
    // the input widths with compiled tile products (with_output): STAR's widths and their projections' 3 x
    with_constant<64, 128, 192, 384>(k, [&](auto inputs) {
      product_rows<scalar_t, decltype(inputs)::value>(x.data_ptr<scalar_t>(), weight, b, out.data_ptr<scalar_t>(),
                                                        rows, k);
    });
  });
  return out;
}

}  // namespace star_fused
