// What the kernels of STAR's fused CPU operators share: the rows layout of the query, key and value
// projections, the compile-time head shapes, a vectorisable exp, the dropout multipliers' hash, Add & Norm of
// a run of rows, and the operators' declarations (library.cpp registers them). star.network.fused builds this folder's sources into one extension, each file its own
// translation unit, so that its build runs on every core.
//
// Only the ATen headers the kernels use: ATen/ATen.h (every operator's declaration) takes longer to parse
// than a kernel file takes to compile.

#pragma once

#include <ATen/Dispatch.h>
#include <ATen/EmptyTensor.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

namespace star_fused {

// New, uninitialised, contiguous CPU tensors: at::empty without ATen/ops/empty.h (which would add about 2 s
// of parsing to each file's build) and without a trip through the dispatcher
inline at::Tensor new_tensor(at::IntArrayRef size, at::ScalarType dtype) {
  return at::Tensor(at::detail::empty_cpu(size, dtype));
}

inline at::Tensor new_like(const at::Tensor& x) {
  return new_tensor(x.sizes(), x.scalar_type());
}

// exp that the compiler vectorises: Cephes' expf (range reduction by ln 2, degree-6 polynomial, within 2 ulp
// of std::exp on [-87.3, 88], to which it clamps: the softmax feeds it scores minus their maximum, <= 0, so a
// score 87 below the maximum weighs 1e-38 instead of 0); double keeps std::exp (the gradient checks use double).
// n = round(x / ln 2) comes from adding 1.5 2^23 + 127, which leaves n + 127 in the sum's low bits, whence 2^n
// by a shift: no conversion to an integer, whose result a NaN would leave undefined, so a NaN needs no test of
// its own; it stays NaN through the clamps (comparisons with it are false) and the polynomial. The sum minus
// the shift must stay two roundings (fused.py compiles without -ffast-math, which could fold them away).
template <typename T>
inline T exp_of(T x) {
  return std::exp(x);
}

template <>
inline float exp_of<float>(float x) {
  constexpr float kShift = 12582912.0f + 127.0f;  // 1.5 2^23 + 127: a sum in [2^23, 2^24) rounds to an integer
  x = x < -87.3f ? -87.3f : x;                     // 2^n stays a normal float: n + 127 in [1, 254]
  x = x > 88.0f ? 88.0f : x;
  const float shifted = x * 1.44269504088896341f + kShift;
  const float n = shifted - kShift;
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  return y * std::bit_cast<float>(std::bit_cast<uint32_t>(shifted) << 23);
}

// The width of a vector register in bytes, for the kernels that block their sums in registers
#if defined(__AVX512F__)
constexpr int64_t kVectorBytes = 64;
#elif defined(__AVX2__)
constexpr int64_t kVectorBytes = 32;
#else
constexpr int64_t kVectorBytes = 16;
#endif

// The clips' row bounds of a call on n rows: from 0 to n, every clip a row or more
inline void check_bounds(at::IntArrayRef bounds, int64_t n) {
  TORCH_CHECK(bounds.size() >= 2 && bounds.front() == 0 && bounds.back() == n, "bounds must run from 0 to ", n);
  for (size_t m = 1; m < bounds.size(); ++m) TORCH_CHECK(bounds[m] > bounds[m - 1], "every clip needs a row");
}

// The rows of the query, key and value projections as F.linear writes them, (N, V, 3, H, d) or (N, V, 3, d, H),
// contiguous: one token of 3 H d values per joint of a row.
struct RowLayout {
  int64_t rows, joints, heads, d;
  int64_t token() const { return 3 * heads * d; }
  int64_t row_stride() const { return joints * token(); }
};

inline RowLayout check_rows(const at::Tensor& qkv, bool heads_last) {
  TORCH_CHECK(qkv.device().is_cpu(), "qkv must be on the CPU");
  TORCH_CHECK(qkv.dim() == 5 && qkv.size(2) == 3, "qkv must be (N, V, 3, ", heads_last ? "d, H" : "H, d",
              "), got ", qkv.sizes());
  TORCH_CHECK(qkv.is_contiguous(), "qkv must be contiguous, as F.linear writes it");
  TORCH_CHECK(qkv.size(3) > 0 && qkv.size(4) > 0, "qkv needs at least one head of depth one, got ", qkv.sizes());
  return heads_last ? RowLayout{qkv.size(0), qkv.size(1), qkv.size(4), qkv.size(3)}
                    : RowLayout{qkv.size(0), qkv.size(1), qkv.size(3), qkv.size(4)};
}

// The heads H and depth d of a call, compile-time constants where the kernels are specialised (H = 8 and
// d = 8 or 16, STAR-64 and STAR-128) and read at run time elsewhere (H = D = 0), so that the loops over them
// unroll into whole-register moves and products. The linear attention's per-token steps loop over heads
// inside the sum's index, so the H sums of a step are independent and run side by side instead of waiting
// on each other's additions.
template <int64_t H, int64_t D>
struct Shape {
  static constexpr int64_t depth = D;      // 0: read at run time
  static constexpr int64_t width = H * D;  // the channels of q, of k and of v: 0 at run time
  int64_t heads_runtime, d_runtime;
  int64_t heads() const { return H > 0 ? H : heads_runtime; }
  int64_t d() const { return D > 0 ? D : d_runtime; }
};

// run(shape) with the shape's compile-time form where there is one
template <typename Run>
void with_shape(const RowLayout& l, const Run& run) {
  if (l.heads == 8 && l.d == 8)
    run(Shape<8, 8>{8, 8});
  else if (l.heads == 8 && l.d == 16)
    run(Shape<8, 16>{8, 16});
  else
    run(Shape<0, 0>{l.heads, l.d});
}

// Inverted-dropout multipliers from a counter-based hash: element i is kept iff hash(seed, i) >= p 2^32, so
// every element is an independent draw that any thread computes alone (no generator state to advance), and
// the same seed gives the same mask. The hash is two rounds of MurmurHash3's 32-bit finaliser, a bijection
// of 32 bits with full avalanche; it is no cryptographic generator, which a dropout mask does not need.
inline uint32_t mix32(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85ebca6bu;
  h ^= h >> 13;
  h *= 0xc2b2ae35u;
  h ^= h >> 16;
  return h;
}

// The multiplier of element i: kept (1 / (1 - p)) where hash(seed, i) >= threshold (p 2^32), else 0.
struct KeepDraw {
  uint32_t low, high, threshold;

  KeepDraw(double p, int64_t seed)
      : low(static_cast<uint32_t>(seed)),
        high(static_cast<uint32_t>(static_cast<uint64_t>(seed) >> 32)),
        threshold(threshold_of(p)) {}

  static uint32_t threshold_of(double p) {  // checked before the conversion, which p < 0 or NaN would make undefined
    TORCH_CHECK(p >= 0 && p < 1, "dropout probability must be in [0, 1), got ", p);
    return static_cast<uint32_t>(std::min(p * 4294967296.0, 4294967295.0));
  }

  // body(i, multiplier) for every i in [first, last): in runs within which i's high 32 bits stay the same, so
  // that the hash is 32-bit arithmetic on a 32-bit counter, which the compiler vectorises
  template <typename T, typename Body>
  void each(int64_t first, int64_t last, T kept, const Body& body) const {
    for (int64_t start = first; start < last;) {
      const int64_t stop = std::min(last, ((start >> 32) + 1) << 32);
      const uint32_t counter = static_cast<uint32_t>(start), added = high + static_cast<uint32_t>(start >> 32);
#pragma omp simd
      for (int64_t j = 0; j < stop - start; ++j) {
        const uint32_t h = mix32(mix32((counter + static_cast<uint32_t>(j)) ^ low) + added);
        body(start + j, h >= threshold ? kept : T(0));
      }
      start = stop;
    }
  }
};

// The sum of n values (n a power of two) as a tree: halves added lane by lane, which the compiler does a
// register's half at a time, instead of one long chain of additions
template <typename T, int64_t N>
inline T tree_sum(const T* values) {
  if constexpr (N == 1) {
    return values[0];
  } else {
    T half[N / 2];
#pragma omp simd
    for (int64_t i = 0; i < N / 2; ++i) half[i] = values[i] + values[i + N / 2];
    return tree_sum<T, N / 2>(half);
  }
}

// rows first..last: s = x + dropout(y) (into `sums`, row by row), out = LayerNorm(s); each row's mean and
// 1 / std into mean and rstd where given. C: the row's c values compile-time (0: read at run time), so that
// the loops over a row unroll into whole-register steps.
template <typename T, int64_t C = 0>
void add_norm_rows(const T* x, const T* y, const T* w, const T* b, const KeepDraw& draw, double p, T eps,
                   int64_t c_runtime, int64_t first, int64_t last, T* sums, bool sums_all_rows, T* out, T* mean,
                   T* rstd) {
  const int64_t c = C > 0 ? C : c_runtime;
  constexpr int64_t kLanes = kVectorBytes / static_cast<int64_t>(sizeof(T)), kChains = 4;
  const T kept = static_cast<T>(1.0 / (1.0 - p));
  for (int64_t r = first; r < last; ++r) {
    T* __restrict__ s = sums_all_rows ? sums + r * c : sums;
    const T* __restrict__ xr = x + r * c;
    const T* __restrict__ yr = y + r * c;
    if (p > 0)
      draw.each(r * c, (r + 1) * c, kept, [&](int64_t i, T m) { s[i - r * c] = xr[i - r * c] + yr[i - r * c] * m; });
    else
#pragma omp simd
      for (int64_t i = 0; i < c; ++i) s[i] = xr[i] + yr[i];
    // sum of f(s_i) over the row: with C compile-time a register's lanes at a time into kChains registers in
    // turn, so that the additions form kChains chains that run side by side, not one that waits on each, then
    // the chains' lanes as a tree
    const auto row_sum = [&](const auto& f) {
      T total = 0;
      if constexpr (C > 0 && C % (kChains * kLanes) == 0) {
        T lanes[kChains * kLanes] = {};
        for (int64_t i = 0; i < C; i += kChains * kLanes)
#pragma omp simd
          for (int64_t j = 0; j < kChains * kLanes; ++j) lanes[j] += f(s[i + j]);
        total = tree_sum<T, kChains * kLanes>(lanes);
      } else {
#pragma omp simd reduction(+ : total)
        for (int64_t i = 0; i < c; ++i) total += f(s[i]);
      }
      return total;
    };
    const T mu = row_sum([](T v) { return v; }) / c;
    const T squares = row_sum([mu](T v) { return (v - mu) * (v - mu); });
    const T inverse = T(1) / std::sqrt(squares / c + eps);
    T* __restrict__ o = out + r * c;
#pragma omp simd
    for (int64_t i = 0; i < c; ++i) o[i] = (s[i] - mu) * inverse * w[i] + b[i];
    if (mean) {
      mean[r] = mu;
      rstd[r] = inverse;
    }
  }
}

// The operators (sparse_attention.cpp, linear_attention.cpp, dropout_norm.cpp, inference.cpp)
std::tuple<at::Tensor, at::Tensor> sparse_attention_forward(const at::Tensor& qkv, const at::Tensor& rowptr,
                                                            const at::Tensor& keys,
                                                            const std::optional<at::Tensor>& keep, double scale,
                                                            bool weights);
at::Tensor sparse_attention_projected_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& rowptr,
                                              const at::Tensor& keys, int64_t heads, double scale);
at::Tensor sparse_attention_backward(const at::Tensor& grad_out_in, const at::Tensor& qkv, const at::Tensor& alpha,
                                     const at::Tensor& rowptr, const at::Tensor& keys,
                                     const std::optional<at::Tensor>& keep, double scale);
at::Tensor linear_attention_forward(const at::Tensor& qkv, at::IntArrayRef bounds, double scale, double eps);
at::Tensor linear_attention_projected_forward(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef bounds,
                                              int64_t heads, double scale, double eps);
at::Tensor linear_attention_backward(const at::Tensor& grad_out_in, const at::Tensor& qkv, at::IntArrayRef bounds,
                                     double scale, double eps);
at::Tensor keep_mask(at::IntArrayRef shape, double p, int64_t seed, at::ScalarType dtype);
at::Tensor apply_keep_mask(const at::Tensor& x, double p, int64_t seed);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_norm_forward(
    const at::Tensor& x, const at::Tensor& y, const at::Tensor& weight, const at::Tensor& bias, double p,
    int64_t seed, double eps, bool keep_sum);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_norm_backward(
    const at::Tensor& grad_out_in, const at::Tensor& total, const at::Tensor& mean, const at::Tensor& rstd,
    const at::Tensor& weight, double p, int64_t seed);
at::Tensor encoder_tails_forward(const at::Tensor& x, at::TensorList ys, at::TensorList params,
                                 at::ArrayRef<double> eps, c10::string_view activation);
at::Tensor context_pooling_forward(const at::Tensor& x, at::IntArrayRef bounds, const at::Tensor& weight,
                                   bool per_joint, bool mean);
at::Tensor linear_forward(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias);

}  // namespace star_fused
