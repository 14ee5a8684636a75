// Dropout masks drawn without a generator's serial state, and Add & Norm, LayerNorm(x + dropout(y)), in one
// pass, forward and backward.

#include "common.h"

namespace star_fused {

at::Tensor keep_mask(at::IntArrayRef shape, double p, int64_t seed, at::ScalarType dtype) {
  const KeepDraw draw(p, seed);
  auto out = new_tensor(shape, dtype);
  AT_DISPATCH_FLOATING_TYPES(dtype, "keep_mask", [&] {
    scalar_t* __restrict__ data = out.data_ptr<scalar_t>();
    const auto kept = static_cast<scalar_t>(1.0 / (1.0 - p));
    at::parallel_for(0, out.numel(), 1 << 16, [&](int64_t first, int64_t last) {
      draw.each(first, last, kept, [&](int64_t i, scalar_t multiplier) { data[i] = multiplier; });
    });
  });
  return out;
}

// x times keep_mask(x.shape, p, seed) in one pass, the mask never written: dropout's forward, and with the
// output's gradient for x its backward (the same multipliers). x * m, not a select, so that a dropped NaN
// stays NaN and a dropped negative is -0, as the product with a written mask gives.
at::Tensor apply_keep_mask(const at::Tensor& x, double p, int64_t seed) {
  TORCH_CHECK(x.device().is_cpu(), "x must be on the CPU");
  const KeepDraw draw(p, seed);
  const auto input = x.contiguous();
  auto out = new_like(input);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "apply_keep_mask", [&] {
    const scalar_t* __restrict__ in = input.data_ptr<scalar_t>();
    scalar_t* __restrict__ data = out.data_ptr<scalar_t>();
    const auto kept = static_cast<scalar_t>(1.0 / (1.0 - p));
    at::parallel_for(0, out.numel(), 1 << 16, [&](int64_t first, int64_t last) {
      draw.each(first, last, kept, [&](int64_t i, scalar_t multiplier) { data[i] = in[i] * multiplier; });
    });
  });
  return out;
}

namespace {

// Add & Norm, LayerNorm(x + dropout(y)), one row of C values at a time in the cache: the sum, its moments and
// the output in one pass over x and y, the dropout multipliers drawn as in apply_keep_mask (element i of y
// kept iff hash(seed, i) >= p 2^32). The rows are split into a fixed number of chunks, so that the backward
// pass's sums over rows (the weight's and the bias's gradients) add up in the same order on any number of
// threads.
constexpr int64_t kNormChunks = 64;

struct NormRows {
  int64_t rows, c;
};

NormRows check_norm(const at::Tensor& x, const at::Tensor& y, const at::Tensor& weight, const at::Tensor& bias) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() >= 1 && x.is_contiguous(), "x must be a contiguous CPU tensor");
  TORCH_CHECK(y.sizes() == x.sizes() && y.is_contiguous() && y.scalar_type() == x.scalar_type(),
              "y must be contiguous and of x's shape and dtype, got ", y.sizes());
  const int64_t c = x.size(-1);
  for (const auto& [t, name] : {std::pair{weight, "weight"}, std::pair{bias, "bias"}})
    TORCH_CHECK(t.dim() == 1 && t.size(0) == c && t.is_contiguous() && t.scalar_type() == x.scalar_type(), name,
                " must be (", c, ") in x's dtype");
  return {c == 0 ? 0 : x.numel() / c, c};
}

// rows first..last of the call, as chunks of the whole
template <typename Run>
void over_norm_chunks(int64_t rows, const Run& run) {
  const int64_t chunks = std::min<int64_t>(kNormChunks, rows), size = chunks ? (rows + chunks - 1) / chunks : 0;
  at::parallel_for(0, chunks, 1, [&](int64_t first, int64_t last) {
    for (int64_t chunk = first; chunk < last; ++chunk) run(chunk, chunk * size, std::min(rows, (chunk + 1) * size));
  });
}

}  // namespace

// out, and where `keep_sum` the sum x + dropout(y) and each row's mean and 1 / std for the backward pass
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_norm_forward(
    const at::Tensor& x, const at::Tensor& y, const at::Tensor& weight, const at::Tensor& bias, double p,
    int64_t seed, double eps, bool keep_sum) {
  const auto [rows, c] = check_norm(x, y, weight, bias);
  const KeepDraw draw(p, seed);
  auto out = new_like(x);
  auto total = keep_sum ? new_like(x) : new_tensor({0}, x.scalar_type());
  auto mean = new_tensor({keep_sum ? rows : 0}, x.scalar_type());
  auto rstd = new_tensor({keep_sum ? rows : 0}, x.scalar_type());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "add_norm_forward", [&] {
    over_norm_chunks(rows, [&](int64_t, int64_t first, int64_t last) {
      std::vector<scalar_t> row(keep_sum ? 0 : c);
      add_norm_rows<scalar_t>(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), weight.data_ptr<scalar_t>(),
                              bias.data_ptr<scalar_t>(), draw, p, static_cast<scalar_t>(eps), c, first, last,
                              keep_sum ? total.data_ptr<scalar_t>() : row.data(), keep_sum,
                              out.data_ptr<scalar_t>(), keep_sum ? mean.data_ptr<scalar_t>() : nullptr,
                              keep_sum ? rstd.data_ptr<scalar_t>() : nullptr);
    });
  });
  return {out, total, mean, rstd};
}

namespace {

// rows first..last of the backward pass: grad_x (the sum's gradient), grad_y (it times the multipliers), and
// this chunk's weight and bias gradients added into gw and gb
template <typename T>
void add_norm_backward_rows(const T* g, const T* s, const T* mean, const T* rstd, const T* w, const KeepDraw& draw,
                            double p, int64_t c, int64_t first, int64_t last, T* grad_x, T* grad_y, T* gw, T* gb,
                            T* xhat) {
  const T kept = static_cast<T>(1.0 / (1.0 - p));
  for (int64_t r = first; r < last; ++r) {
    const T* __restrict__ gr = g + r * c;
    const T* __restrict__ sr = s + r * c;
    const T mu = mean[r], inverse = rstd[r];
    T mean_g = 0, mean_gx = 0;
#pragma omp simd reduction(+ : mean_g, mean_gx)
    for (int64_t i = 0; i < c; ++i) {
      xhat[i] = (sr[i] - mu) * inverse;
      mean_g += gr[i] * w[i];
      mean_gx += gr[i] * w[i] * xhat[i];
      gw[i] += gr[i] * xhat[i];
      gb[i] += gr[i];
    }
    mean_g /= c;
    mean_gx /= c;
    T* __restrict__ gxr = grad_x + r * c;
#pragma omp simd
    for (int64_t i = 0; i < c; ++i) gxr[i] = inverse * (gr[i] * w[i] - mean_g - xhat[i] * mean_gx);
    T* __restrict__ gyr = grad_y + r * c;
    if (p > 0)
      draw.each(r * c, (r + 1) * c, kept, [&](int64_t i, T m) { gyr[i - r * c] = gxr[i - r * c] * m; });
    else
      std::copy_n(gxr, c, gyr);
  }
}

}  // namespace

// grad_x (= the sum's gradient), grad_y (the sum's gradient times the same multipliers), grad_weight, grad_bias
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_norm_backward(
    const at::Tensor& grad_out_in, const at::Tensor& total, const at::Tensor& mean, const at::Tensor& rstd,
    const at::Tensor& weight, double p, int64_t seed) {
  const auto grad_out = grad_out_in.contiguous();
  const auto [rows, c] = check_norm(total, grad_out, weight, weight);
  TORCH_CHECK(mean.numel() == rows && rstd.numel() == rows, "mean and rstd must have one value per row");
  const KeepDraw draw(p, seed);
  auto grad_x = new_like(total), grad_y = new_like(total);
  // each chunk's weight and bias gradients
  auto partial = new_tensor({kNormChunks, 2, c}, total.scalar_type());
  partial.zero_();
  AT_DISPATCH_FLOATING_TYPES(total.scalar_type(), "add_norm_backward", [&] {
    over_norm_chunks(rows, [&](int64_t chunk, int64_t first, int64_t last) {
      std::vector<scalar_t> xhat(c);
      scalar_t* gw = partial.data_ptr<scalar_t>() + chunk * 2 * c;
      add_norm_backward_rows<scalar_t>(grad_out.data_ptr<scalar_t>(), total.data_ptr<scalar_t>(),
                                       mean.data_ptr<scalar_t>(), rstd.data_ptr<scalar_t>(),
                                       weight.data_ptr<scalar_t>(), draw, p, c, first, last,
                                       grad_x.data_ptr<scalar_t>(), grad_y.data_ptr<scalar_t>(), gw, gw + c,
                                       xhat.data());
    });
  });
  const auto sums = partial.sum(0);  // (2, C), chunk by chunk in a fixed order
  return {grad_x, grad_y, sums[0], sums[1]};
}

}  // namespace star_fused
