// STAR's two attentions as single CPU kernels, forward and backward, and dropout masks drawn without a
// generator's serial state (star.network.fused builds and loads them).
//
// Both take the query, key and value projections as one F.linear writes them, rows of tokens (N, V, 3, ., .),
// and give their output and gradients back as rows, so the projection before them and the layers after them
// are plain matrix products and no layout is copied between them.
//
// Sparse attention (Eq. 2-3) on qkv (N, V, 3, d, H): threads split the rows into blocks of kBlock / H rows and
// gather each block into joint planes (V, 3, d, kBlock), columns (row, head) innermost, H contiguous values of
// each row at a time. Within a block every query joint's scores, softmax and weighted sum run along the
// columns in the cache, so each key and value plane is read once per block, not once per edge; the output
// planes go back to rows (N, V, H, d). Blocks never interact, so the backward pass adds into its own block's
// key and value gradients without races.
//
// Segmented linear attention (Eq. 6) on qkv (N, V, 3, H, d): one task per clip and group of joints walks the
// clip's rows in memory order, sums U_h = phi(K_h)^T V_h and Z_h for each of its joints and heads, then
// every output row; the backward pass recomputes phi, U and Z instead of keeping them. The sums over rows run
// a tile of rows at a time with each 8 x 8 block of the sum in registers, and the rows a task will read next
// are prefetched, since it reads a few tokens of each row and jumps a row ahead.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <bit>
#include <vector>

namespace {

constexpr int64_t kBlock = 64;  // columns (row, head) of a sparse-attention block

// exp that the compiler vectorises: Cephes' expf (range reduction by ln 2, degree-6 polynomial, within 2 ulp
// of std::exp on [-87.3, 88], to which it clamps: the softmax feeds it scores minus their maximum, <= 0, so a
// score 87 below the maximum weighs 1e-38 instead of 0); double keeps std::exp (the gradient checks use double)
template <typename T>
inline T exp_of(T x) {
  return std::exp(x);
}

template <>
inline float exp_of<float>(float x) {
  const float input = x;
  x = x < -87.3f ? -87.3f : (x > 88.0f ? 88.0f : x);  // 2^n stays a normal float: n in [-126, 127]
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const float value = y * std::bit_cast<float>((static_cast<int32_t>(n == n ? n : 0.0f) + 127) << 23);
  return input == input ? value : input;  // NaN stays NaN
}

// The rows of the query, key and value projections as F.linear writes them, (N, V, 3, H, d) or (N, V, 3, d, H),
// contiguous: one token of 3 H d values per joint of a row.
struct RowLayout {
  int64_t rows, joints, heads, d;
  int64_t token() const { return 3 * heads * d; }
  int64_t row_stride() const { return joints * token(); }
};

RowLayout check_rows(const at::Tensor& qkv, bool heads_last) {
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

// A block of the sparse attention: rows n0..n0+count, laid out as joint planes with kBlock columns (row, head)
// innermost. Each row's qkv is one token of (3, d, H) values per joint, so a plane row gathers H contiguous
// values from each of the block's rows.
struct Block {
  int64_t n0, count;
};

int64_t block_rows(const RowLayout& l) {
  TORCH_CHECK(l.heads <= kBlock, "the sparse attention takes at most ", kBlock, " heads, got ", l.heads);
  return kBlock / l.heads;
}

// rows <-> planes, a block's rows at a time: each joint's token of `lines` x H values to and from planes of
// `lines` x kBlock, value (line, h) of row r in column r H + h. A token is qkv's (3 d lines, H) (the
// projections gathered, their gradient written back) or, heads first, the output's (H, d lines) (the
// attention's output and its gradient, heads concatenated as the model's channels are).
template <typename T, bool ToPlanes, bool HeadsFirst, int64_t H, int64_t D>
void move_block(Shape<H, D> shape, T* rows, const RowLayout& l, const Block& b, T* planes) {
  const int64_t heads = shape.heads(), lines = (HeadsFirst ? 1 : 3) * shape.d(), token = lines * heads;
  for (int64_t r = 0; r < b.count; ++r)
    for (int64_t j = 0; j < l.joints; ++j) {
      T* __restrict__ values = rows + ((b.n0 + r) * l.joints + j) * token;
      T* __restrict__ plane = planes + j * lines * kBlock + r * heads;
      for (int64_t line = 0; line < lines; ++line)
        for (int64_t h = 0; h < heads; ++h) {
          T& value = values[HeadsFirst ? h * lines + line : line * heads + h];
          if constexpr (ToPlanes)
            plane[line * kBlock + h] = value;
          else
            value = plane[line * kBlock + h];
        }
    }
}

// block(b, buffer) for every block of rows, threads splitting them; `buffer` is one thread's, reused
template <typename T, typename Run>
void over_row_blocks(const RowLayout& l, const Run& run) {
  const int64_t rows = block_rows(l);
  at::parallel_for(0, (l.rows + rows - 1) / rows, 1, [&](int64_t first, int64_t last) {
    std::vector<T> buffer;
    for (int64_t index = first; index < last; ++index)
      run(Block{index * rows, std::min(rows, l.rows - index * rows)}, buffer);
  });
}

// One block's attention on its planes (V, 3, d, kBlock) (q, k, v of joint i at plane + i 3 d kBlock, then d kBlock
// and 2 d kBlock further), columns 0..width; the output into planes (V, d, kBlock). The weights (and the dropout
// mask) are (E, M) in edge order, this block's columns from c0 on, one edge a row of `edge_stride`.
template <typename T, int64_t W>
void sparse_forward_block(const T* planes, int64_t d, const int64_t* rowptr, const int64_t* keys, int64_t joints,
                          const T* keep, T* alpha, int64_t edge_stride, int64_t c0, T scale, int64_t width,
                          T* out, T* scores) {
  const int64_t w = W > 0 ? W : width, joint_stride = 3 * d * kBlock;
  for (int64_t i = 0; i < joints; ++i) {
    const int64_t start = rowptr[i], degree = rowptr[i + 1] - rowptr[i];
    const T* __restrict__ qi = planes + i * joint_stride;
    for (int64_t e = 0; e < degree; ++e) {  // scores q_i . k_j / sqrt(d)
      const T* __restrict__ kj = planes + keys[start + e] * joint_stride + d * kBlock;
      T* __restrict__ s = scores + e * kBlock;
      for (int64_t x = 0; x < w; ++x) s[x] = 0;
      for (int64_t c = 0; c < d; ++c)
        for (int64_t x = 0; x < w; ++x) s[x] += qi[c * kBlock + x] * kj[c * kBlock + x];
    }
    T top[kBlock], total[kBlock];  // softmax over the row's edges, column by column
    for (int64_t x = 0; x < w; ++x) top[x] = scores[x];
    for (int64_t e = 1; e < degree; ++e)
      for (int64_t x = 0; x < w; ++x) top[x] = scores[e * kBlock + x] > top[x] ? scores[e * kBlock + x] : top[x];
    for (int64_t x = 0; x < w; ++x) total[x] = 0;
    for (int64_t e = 0; e < degree; ++e) {
      T* __restrict__ s = scores + e * kBlock;
#pragma omp simd
      for (int64_t x = 0; x < w; ++x) {
        const T weight = exp_of<T>((s[x] - top[x]) * scale);
        s[x] = weight;
        total[x] += weight;
      }
    }
    for (int64_t x = 0; x < w; ++x) total[x] = T(1) / total[x];
    T* __restrict__ oi = out + i * d * kBlock;
    for (int64_t c = 0; c < d; ++c)
      for (int64_t x = 0; x < w; ++x) oi[c * kBlock + x] = 0;
    for (int64_t e = 0; e < degree; ++e) {  // v'_i = sum_j alpha_ij (times the dropout mask) v_j
      T* __restrict__ s = scores + e * kBlock;
      for (int64_t x = 0; x < w; ++x) s[x] *= total[x];
      if (alpha) {  // kept for the backward pass only
        T* __restrict__ a = alpha + (start + e) * edge_stride + c0;
        for (int64_t x = 0; x < w; ++x) a[x] = s[x];
      }
      if (keep) {
        const T* __restrict__ mask = keep + (start + e) * edge_stride + c0;
        for (int64_t x = 0; x < w; ++x) s[x] *= mask[x];
      }
      const T* __restrict__ vj = planes + keys[start + e] * joint_stride + 2 * d * kBlock;
      for (int64_t c = 0; c < d; ++c)
        for (int64_t x = 0; x < w; ++x) oi[c * kBlock + x] += s[x] * vj[c * kBlock + x];
    }
  }
}

void check_keep(const std::optional<at::Tensor>& keep, int64_t edges, int64_t columns, const at::Tensor& qkv) {
  TORCH_CHECK(!keep.has_value() || (keep->sizes() == at::IntArrayRef{edges, columns} &&
                                    keep->scalar_type() == qkv.scalar_type() && keep->device().is_cpu()),
              "keep must be (E, N H) = (", edges, ", ", columns, ") in qkv's dtype, got ",
              keep.has_value() ? keep->sizes() : at::IntArrayRef{}, " ",
              keep.has_value() ? keep->dtype() : qkv.dtype());
}

// the neighbourhood as CSR over the V joints: rowptr (V + 1) from 0 to E, keys (E) in [0, V); its largest degree
int64_t check_graph(const at::Tensor& rowptr, const at::Tensor& keys, int64_t joints) {
  for (const auto& [t, name] : {std::pair{rowptr, "rowptr"}, std::pair{keys, "keys"}})
    TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kLong && t.dim() == 1 && t.is_contiguous(), name,
                " must be a contiguous 1-D int64 CPU tensor");
  TORCH_CHECK(rowptr.numel() == joints + 1, "rowptr must have V + 1 = ", joints + 1, " entries");
  const auto degrees = rowptr.diff();
  TORCH_CHECK(rowptr[0].item<int64_t>() == 0 && rowptr[joints].item<int64_t>() == keys.numel() &&
                  (degrees >= 0).all().item<bool>(),
              "rowptr must rise from 0 to the ", keys.numel(), " keys");
  TORCH_CHECK(keys.numel() == 0 || (keys.min().item<int64_t>() >= 0 && keys.max().item<int64_t>() < joints),
              "keys must be joints in [0, ", joints, ")");
  return std::max<int64_t>(degrees.max().item<int64_t>(), 1);  // 1: a row of no edges still gets a buffer
}

// Eq. 2-3 on qkv (N, V, 3, d, H) -> the output (N, V, H, d) and, where `weights`, the attention weights (E, N H)
// for the backward pass (else (0, N H), never written); `keep` the dropout mask on the weights, (E, N H)
std::tuple<at::Tensor, at::Tensor> sparse_attention_forward(const at::Tensor& qkv, const at::Tensor& rowptr,
                                                            const at::Tensor& keys,
                                                            const std::optional<at::Tensor>& keep, double scale,
                                                            bool weights) {
  const RowLayout l = check_rows(qkv, true);
  const int64_t degree = check_graph(rowptr, keys, l.joints), columns = l.rows * l.heads;
  check_keep(keep, keys.size(0), columns, qkv);
  auto out = at::empty({l.rows, l.joints, l.heads, l.d}, qkv.options());
  auto alpha = at::empty({weights ? keys.size(0) : 0, columns}, qkv.options());
  at::Tensor mask = keep.has_value() ? keep->contiguous() : at::Tensor();
  const int64_t* ptr = rowptr.data_ptr<int64_t>();
  const int64_t* key = keys.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(qkv.scalar_type(), "sparse_attention_forward", [&] {
    const scalar_t* keep_data = mask.defined() ? mask.data_ptr<scalar_t>() : nullptr;
    scalar_t* alpha_data = weights ? alpha.data_ptr<scalar_t>() : nullptr;
    const int64_t plane_size = l.joints * l.d * kBlock;
    with_shape(l, [&](auto shape) {
      over_row_blocks<scalar_t>(l, [&](const Block& b, std::vector<scalar_t>& buffer) {
        buffer.resize(4 * plane_size + degree * kBlock);  // q, k, v planes, the output's, the scores
        scalar_t *planes = buffer.data(), *out_planes = planes + 3 * plane_size, *scores = out_planes + plane_size;
        const int64_t width = b.count * l.heads;
        move_block<scalar_t, true, false>(shape, qkv.data_ptr<scalar_t>(), l, b, planes);
        auto run = width == kBlock ? sparse_forward_block<scalar_t, kBlock> : sparse_forward_block<scalar_t, 0>;
        run(planes, l.d, ptr, key, l.joints, keep_data, alpha_data, columns, b.n0 * l.heads,
            static_cast<scalar_t>(scale), width, out_planes, scores);
        move_block<scalar_t, false, true>(shape, out.data_ptr<scalar_t>(), l, b, out_planes);
      });
    });
  });
  return {out, alpha};
}

// One block's gradients: grad_out planes (V, d, kBlock) in, q's planes written and k's and v's added to in
// `grads` (V, 3, d, kBlock), zero on entry; the rest as sparse_forward_block
template <typename T, int64_t W>
void sparse_backward_block(const T* planes, int64_t d, const int64_t* rowptr, const int64_t* keys, int64_t joints,
                           const T* keep, const T* alpha, int64_t edge_stride, int64_t c0, T scale, int64_t width,
                           const T* grad_out, T* grads, T* grad_weights) {
  const int64_t w = W > 0 ? W : width, joint_stride = 3 * d * kBlock;
  for (int64_t i = 0; i < joints; ++i) {
    const int64_t start = rowptr[i], degree = rowptr[i + 1] - rowptr[i];
    const T* __restrict__ go = grad_out + i * d * kBlock;
    T dot[kBlock], kept[kBlock];
    for (int64_t x = 0; x < w; ++x) dot[x] = 0;
    for (int64_t e = 0; e < degree; ++e) {
      const int64_t j = keys[start + e];
      const T* __restrict__ vj = planes + j * joint_stride + 2 * d * kBlock;
      T* __restrict__ gvj = grads + j * joint_stride + 2 * d * kBlock;
      const T* __restrict__ a = alpha + (start + e) * edge_stride + c0;
      const T* __restrict__ mask = keep ? keep + (start + e) * edge_stride + c0 : nullptr;
      T* __restrict__ gw = grad_weights + e * kBlock;
      for (int64_t x = 0; x < w; ++x) {
        gw[x] = 0;
        kept[x] = mask ? a[x] * mask[x] : a[x];
      }
      for (int64_t c = 0; c < d; ++c)
        for (int64_t x = 0; x < w; ++x) {
          gw[x] += go[c * kBlock + x] * vj[c * kBlock + x];
          gvj[c * kBlock + x] += kept[x] * go[c * kBlock + x];
        }
      if (mask)
        for (int64_t x = 0; x < w; ++x) gw[x] *= mask[x];
      for (int64_t x = 0; x < w; ++x) dot[x] += gw[x] * a[x];
    }
    // softmax backward with the score scale: dS = scale * A * (dA - sum_e dA_e A_e), written over dA
    for (int64_t e = 0; e < degree; ++e) {
      const T* __restrict__ a = alpha + (start + e) * edge_stride + c0;
      T* __restrict__ g = grad_weights + e * kBlock;
      for (int64_t x = 0; x < w; ++x) g[x] = a[x] * (g[x] - dot[x]) * scale;
    }
    const T* __restrict__ qi = planes + i * joint_stride;
    T* __restrict__ gqi = grads + i * joint_stride;
    for (int64_t e = 0; e < degree; ++e) {
      const int64_t j = keys[start + e];
      const T* __restrict__ kj = planes + j * joint_stride + d * kBlock;
      T* __restrict__ gkj = grads + j * joint_stride + d * kBlock;
      const T* __restrict__ gs = grad_weights + e * kBlock;
      for (int64_t c = 0; c < d; ++c)
        for (int64_t x = 0; x < w; ++x) {
          gqi[c * kBlock + x] += gs[x] * kj[c * kBlock + x];
          gkj[c * kBlock + x] += gs[x] * qi[c * kBlock + x];
        }
    }
  }
}

// The gradient of qkv, in its layout (N, V, 3, d, H), so that the projection's backward pass is two plain
// matrix products.
at::Tensor sparse_attention_backward(const at::Tensor& grad_out_in, const at::Tensor& qkv, const at::Tensor& alpha,
                                     const at::Tensor& rowptr, const at::Tensor& keys,
                                     const std::optional<at::Tensor>& keep, double scale) {
  const RowLayout l = check_rows(qkv, true);
  const int64_t degree = check_graph(rowptr, keys, l.joints), columns = l.rows * l.heads;
  auto grad_out = grad_out_in.contiguous();
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({l.rows, l.joints, l.heads, l.d}), "grad_out must be (N, V, H, d)");
  TORCH_CHECK(alpha.sizes() == at::IntArrayRef({keys.size(0), columns}) && alpha.is_contiguous(),
              "alpha must be the forward pass's (E, N H) weights");
  check_keep(keep, keys.size(0), columns, qkv);
  auto grad = at::empty_like(qkv);
  at::Tensor mask = keep.has_value() ? keep->contiguous() : at::Tensor();
  const int64_t* ptr = rowptr.data_ptr<int64_t>();
  const int64_t* key = keys.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(qkv.scalar_type(), "sparse_attention_backward", [&] {
    const scalar_t* keep_data = mask.defined() ? mask.data_ptr<scalar_t>() : nullptr;
    const int64_t plane_size = l.joints * l.d * kBlock;
    with_shape(l, [&](auto shape) {
      over_row_blocks<scalar_t>(l, [&](const Block& b, std::vector<scalar_t>& buffer) {
        buffer.resize(7 * plane_size + degree * kBlock);  // q, k, v planes, their gradients, grad_out's, dA
        scalar_t *planes = buffer.data(), *grads = planes + 3 * plane_size, *go = grads + 3 * plane_size;
        const int64_t width = b.count * l.heads;
        move_block<scalar_t, true, false>(shape, qkv.data_ptr<scalar_t>(), l, b, planes);
        move_block<scalar_t, true, true>(shape, grad_out.data_ptr<scalar_t>(), l, b, go);
        std::fill(grads, grads + 3 * plane_size, scalar_t(0));
        auto run = width == kBlock ? sparse_backward_block<scalar_t, kBlock> : sparse_backward_block<scalar_t, 0>;
        run(planes, l.d, ptr, key, l.joints, keep_data, alpha.data_ptr<scalar_t>(), columns, b.n0 * l.heads,
            static_cast<scalar_t>(scale), width, go, grads, go + plane_size);
        move_block<scalar_t, false, false>(shape, grad.data_ptr<scalar_t>(), l, b, grads);
      });
    });
  });
  return grad;
}

void check_bounds(at::IntArrayRef bounds, int64_t n) {
  TORCH_CHECK(bounds.size() >= 2 && bounds.front() == 0 && bounds.back() == n, "bounds must run from 0 to ", n);
  for (size_t m = 1; m < bounds.size(); ++m) TORCH_CHECK(bounds[m] > bounds[m - 1], "every clip needs a row");
}

// phi(s x) = elu(s x) + 1 of `count` values: a token's H heads at once
template <typename T>
inline void feature_map(const T* __restrict__ raw, T s, int64_t count, T* __restrict__ phi) {
#pragma omp simd
  for (int64_t c = 0; c < count; ++c) {
    const T y = raw[c] * s;
    phi[c] = y > 0 ? y + 1 : exp_of<T>(y);
  }
}

// A task: one clip's rows t0..t1 and a group of joints j0..j1, every head, walked row by row so that it reads
// its part of each row of qkv in memory order. Its sums are kept per (joint, head), at (j - j0) H + h: U
// (d x d, key channel first), Z (d).
struct Task {
  int64_t t0, t1, j0, j1;
};

// M_h += x_h y_h^T for every head (M: H d x d matrices, row index from x)
template <typename T, int64_t H, int64_t D>
inline void add_outer(Shape<H, D> shape, const T* __restrict__ x, const T* __restrict__ y, T* __restrict__ m) {
  const int64_t heads = shape.heads(), d = shape.d();
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t a = 0; a < d; ++a) {
      const T weight = x[h * d + a];
#pragma omp simd
      for (int64_t b = 0; b < d; ++b) m[(h * d + a) * d + b] += weight * y[h * d + b];
    }
}

// M[0:8, 0:8] += sum_r x_r[0:8] y_r[0:8]^T over `count` tokens (M's rows `m_stride` apart): the 8 x 8 block
// stays in registers across the tokens, so each token costs one load of y_r and 8 multiply-adds, where the
// per-token update (add_outer) loads and stores every row of M again
template <typename T>
inline void add_outer_block(int64_t count, const T* __restrict__ x, int64_t x_stride, const T* __restrict__ y,
                            int64_t y_stride, T* __restrict__ m, int64_t m_stride) {
  typedef T Row __attribute__((vector_size(8 * sizeof(T))));  // 8 values: one AVX2 register for float
  Row block[8];
  for (int a = 0; a < 8; ++a) __builtin_memcpy(&block[a], m + a * m_stride, sizeof(Row));
  for (int64_t r = 0; r < count; ++r) {
    Row yr;
    __builtin_memcpy(&yr, y + r * y_stride, sizeof(Row));
    const T* __restrict__ xr = x + r * x_stride;
#pragma GCC unroll 8
    for (int a = 0; a < 8; ++a) block[a] += xr[a] * yr;
  }
  for (int a = 0; a < 8; ++a) __builtin_memcpy(m + a * m_stride, &block[a], sizeof(Row));
}

// M_h += sum_r x_{r,h} y_{r,h}^T for every head, over `count` tokens x + r x_stride and y + r y_stride (H d
// values each): in 8 x 8 blocks where d is a multiple of 8 known when compiled, token by token elsewhere
template <typename T, int64_t H, int64_t D>
inline void add_outer_tokens(Shape<H, D> shape, int64_t count, const T* x, int64_t x_stride, const T* y,
                             int64_t y_stride, T* m) {
  if constexpr (D > 0 && D % 8 == 0) {
    for (int64_t h = 0; h < shape.heads(); ++h)
      for (int64_t a = 0; a < D; a += 8)
        for (int64_t b = 0; b < D; b += 8)
          add_outer_block(count, x + h * D + a, x_stride, y + h * D + b, y_stride, m + (h * D + a) * D + b, D);
  } else {
    for (int64_t r = 0; r < count; ++r) add_outer(shape, x + r * x_stride, y + r * y_stride, m);
  }
}

// out_h += sum_b x_hb M_h[b, :] for every head: a vector-matrix product per head (M: H d x d matrices)
template <typename T, int64_t H, int64_t D>
inline void add_rows(Shape<H, D> shape, const T* __restrict__ x, const T* __restrict__ m, T* __restrict__ out) {
  if constexpr (H > 0 && D > 0 && D % 8 == 0) {
    // out in H d / 8 pieces of 8 across the sum, in registers where they fit (float with AVX-512: 16 of 32;
    // with AVX2 STAR-128's 16 pieces take all 16 and some spill, which measured no slower than two passes)
    typedef T Piece __attribute__((vector_size(8 * sizeof(T))));
    constexpr int64_t kPieces = D / 8;
    Piece acc[H * kPieces];
    for (int64_t i = 0; i < H * kPieces; ++i) __builtin_memcpy(&acc[i], out + i * 8, sizeof(Piece));
    for (int64_t b = 0; b < D; ++b)
#pragma GCC unroll 16
      for (int64_t h = 0; h < H; ++h)
#pragma GCC unroll 2
        for (int64_t piece = 0; piece < kPieces; ++piece) {
          Piece row;
          __builtin_memcpy(&row, m + (h * D + b) * D + piece * 8, sizeof(Piece));
          acc[h * kPieces + piece] += x[h * D + b] * row;
        }
    for (int64_t i = 0; i < H * kPieces; ++i) __builtin_memcpy(out + i * 8, &acc[i], sizeof(Piece));
  } else {
    const int64_t heads = shape.heads(), d = shape.d();
    for (int64_t b = 0; b < d; ++b)
      for (int64_t h = 0; h < heads; ++h) {
        const T weight = x[h * d + b];
#pragma omp simd
        for (int64_t a = 0; a < d; ++a) out[h * d + a] += weight * m[(h * d + b) * d + a];
      }
  }
}

// num_h = U_h^T phi_h (every head) and the normalisers den_h = phi_h^T Z_h + eps
template <typename T, int64_t H, int64_t D>
inline void query_products(Shape<H, D> shape, const T* __restrict__ phi, const T* __restrict__ u,
                           const T* __restrict__ z, T eps, T* __restrict__ num, T* __restrict__ den) {
  const int64_t heads = shape.heads(), d = shape.d();
  for (int64_t h = 0; h < heads; ++h) {
    T total = eps;
    for (int64_t a = 0; a < d; ++a) total += phi[h * d + a] * z[h * d + a];
    den[h] = total;
  }
  std::fill(num, num + heads * d, T(0));
  add_rows(shape, phi, u, num);
}

// A task reads a few tokens of each row and then jumps a whole row ahead, which the hardware prefetchers do not
// follow (a row of STAR-64's qkv is 19 kB, past the page they stay within): the spans that the row kAhead rows
// further on will need are prefetched while this one is worked on, reads and writes alike.
constexpr int64_t kAhead = 2;

template <bool Write = false, typename T>
inline void prefetch(const T* first, int64_t count, int64_t stride = 0, int64_t spans = 1) {
  for (int64_t span = 0; span < spans; ++span) {  // every 64-byte line the span touches
    const uintptr_t begin = reinterpret_cast<uintptr_t>(first + span * stride) & ~uintptr_t(63);
    const uintptr_t end = reinterpret_cast<uintptr_t>(first + span * stride + count);
    for (uintptr_t line = begin; line < end; line += 64) __builtin_prefetch(reinterpret_cast<const void*>(line), Write);
  }
}

// rows of a task taken kTile at a time: their phi (and in the backward pass the output's gradient over den) are
// kept in a (kTile, joints, H d) buffer, so that the sums over rows run over a tile with the sums in registers
constexpr int64_t kTile = 8;

// U and Z of every (joint, head) of the task; phi: a (kTile, joints, H d) buffer
template <typename T, int64_t H, int64_t D>
void key_sums(Shape<H, D> shape, const T* qkv, const RowLayout& l, const Task& task, T s, T* u, T* z, T* phi) {
  const int64_t c_all = shape.heads() * shape.d(), per_joint = c_all * shape.d(), joints = task.j1 - task.j0;
  std::fill(u, u + joints * per_joint, T(0));
  std::fill(z, z + joints * c_all, T(0));
  for (int64_t t = task.t0; t < task.t1; t += kTile) {
    const int64_t count = std::min(kTile, task.t1 - t);
    for (int64_t r = 0; r < count; ++r) {
      if (t + r + kAhead < task.t1)  // its keys and values
        prefetch(qkv + (t + r + kAhead) * l.row_stride() + task.j0 * l.token() + c_all, 2 * c_all, l.token(), joints);
      for (int64_t at = 0; at < joints; ++at) {
        T* __restrict__ p = phi + (r * joints + at) * c_all;
        feature_map(qkv + (t + r) * l.row_stride() + (task.j0 + at) * l.token() + c_all, s, c_all, p);
        T* __restrict__ zj = z + at * c_all;
#pragma omp simd
        for (int64_t c = 0; c < c_all; ++c) zj[c] += p[c];
      }
    }
    for (int64_t at = 0; at < joints; ++at)  // U += phi(k) v^T over the tile's rows
      add_outer_tokens(shape, count, phi + at * c_all, joints * c_all,
                       qkv + t * l.row_stride() + (task.j0 + at) * l.token() + 2 * c_all, l.row_stride(),
                       u + at * per_joint);
  }
}

template <typename T, int64_t H, int64_t D>
void linear_forward_task(Shape<H, D> shape, const T* qkv, const RowLayout& l, const Task& task, T s, T eps,
                         T* out, std::vector<T>& buffer) {
  const int64_t heads = shape.heads(), d = shape.d(), c_all = heads * d, joints = task.j1 - task.j0;
  buffer.resize(joints * (c_all * d + c_all) + kTile * joints * c_all + c_all + heads);
  T *u = buffer.data(), *z = u + joints * c_all * d, *phi = z + joints * c_all, *num = phi + kTile * joints * c_all;
  T* den = num + c_all;
  key_sums(shape, qkv, l, task, s, u, z, phi);
  for (int64_t t = task.t0; t < task.t1; ++t) {
    if (t + kAhead < task.t1) {  // its queries, and its output
      prefetch(qkv + (t + kAhead) * l.row_stride() + task.j0 * l.token(), c_all, l.token(), joints);
      prefetch<true>(out + ((t + kAhead) * l.joints + task.j0) * c_all, joints * c_all);
    }
    for (int64_t j = task.j0; j < task.j1; ++j) {  // out = phi(q)^T U / (phi(q)^T Z + eps)
      feature_map(qkv + t * l.row_stride() + j * l.token(), s, c_all, phi);
      query_products(shape, phi, u + (j - task.j0) * c_all * d, z + (j - task.j0) * c_all, eps, num, den);
      T* __restrict__ o = out + (t * l.joints + j) * c_all;
      for (int64_t h = 0; h < heads; ++h) {
        const T inverse = T(1) / den[h];
#pragma omp simd
        for (int64_t b = 0; b < d; ++b) o[h * d + b] = num[h * d + b] * inverse;
      }
    }
  }
}

// every task of a call, threads splitting them: each clip's joints in groups of kJointGroup
constexpr int64_t kJointGroup = 5;

template <typename T, typename Run>
void over_tasks(at::IntArrayRef bounds, int64_t joints, const Run& run) {
  const int64_t clips = static_cast<int64_t>(bounds.size()) - 1, groups = (joints + kJointGroup - 1) / kJointGroup;
  at::parallel_for(0, clips * groups, 1, [&](int64_t first, int64_t last) {
    std::vector<T> buffer;
    for (int64_t index = first; index < last; ++index) {
      const int64_t m = index / groups, j0 = index % groups * kJointGroup;
      run(Task{bounds[m], bounds[m + 1], j0, std::min(joints, j0 + kJointGroup)}, buffer);
    }
  });
}

at::Tensor linear_attention_forward(const at::Tensor& qkv, at::IntArrayRef bounds, double scale, double eps) {
  const RowLayout l = check_rows(qkv, false);
  check_bounds(bounds, l.rows);
  auto out = at::empty({l.rows, l.joints, l.heads, l.d}, qkv.options());
  AT_DISPATCH_FLOATING_TYPES(qkv.scalar_type(), "linear_attention_forward", [&] {
    const scalar_t s = static_cast<scalar_t>(scale), e = static_cast<scalar_t>(eps);
    const scalar_t* data = qkv.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    with_shape(l, [&](auto shape) {
      over_tasks<scalar_t>(bounds, l.joints, [&](const Task& task, auto& buffer) {
        linear_forward_task(shape, data, l, task, s, e, o, buffer);
      });
    });
  });
  return out;
}

// The gradients of one task into grad (N, V, 3, H, d); U and Z recomputed. With g the output's gradient,
// n = U^T phi(q) and den = phi(q)^T Z + eps (out = n / den):
//   grad_n = g / den, grad_den = -(grad_n . n) / den, grad_phi(q) = U grad_n + Z grad_den,
//   grad_U = sum_t phi(q_t) grad_n_t^T, grad_Z = sum_t phi(q_t) grad_den_t,
//   grad_phi(k_t) = grad_U v_t + grad_Z, grad_v_t = grad_U^T phi(k_t),
// and through phi: d phi(s x) / dx = s where s x > 0, s phi(s x) elsewhere.
template <typename T, int64_t H, int64_t D>
void linear_backward_task(Shape<H, D> shape, const T* qkv, const T* grad_out, const RowLayout& l,
                          const Task& task, T s, T eps, T* grad, std::vector<T>& buffer) {
  const int64_t heads = shape.heads(), d = shape.d(), c_all = heads * d, per_joint = c_all * d;
  const int64_t joints = task.j1 - task.j0;
  const int64_t tile = kTile * joints * c_all;
  buffer.resize(joints * (4 * per_joint + 2 * c_all) + 2 * tile + 2 * c_all + heads);
  T *u = buffer.data(), *ut = u + joints * per_joint, *gu = ut + joints * per_joint;
  T *gut = gu + joints * per_joint, *z = gut + joints * per_joint, *gz = z + joints * c_all;
  T *phi = gz + joints * c_all, *gns = phi + tile, *num = gns + tile, *acc = num + c_all, *den = acc + c_all;
  const auto transpose = [&](const T* from, T* to) {  // every d x d matrix of the task
    for (int64_t p = 0; p < joints * heads; ++p)
      for (int64_t a = 0; a < d; ++a)
        for (int64_t b = 0; b < d; ++b) to[p * d * d + b * d + a] = from[p * d * d + a * d + b];
  };
  key_sums(shape, qkv, l, task, s, u, z, phi);
  transpose(u, ut);  // so that U grad_n is a sum of U^T's rows
  std::fill(gu, gu + joints * per_joint, T(0));
  std::fill(gz, gz + joints * c_all, T(0));
  for (int64_t t0 = task.t0; t0 < task.t1; t0 += kTile) {  // the queries: grad_q, and grad_U, grad_Z summed
    const int64_t count = std::min(kTile, task.t1 - t0);
    for (int64_t r = 0; r < count; ++r) {
      if (t0 + r + kAhead < task.t1) {  // its queries and their gradients, and the output's gradient
        const int64_t ahead = (t0 + r + kAhead) * l.joints + task.j0;
        prefetch(qkv + ahead * l.token(), c_all, l.token(), joints);
        prefetch<true>(grad + ahead * l.token(), c_all, l.token(), joints);
        prefetch(grad_out + ahead * c_all, joints * c_all);
      }
      for (int64_t at = 0; at < joints; ++at) {
        const int64_t token = (t0 + r) * l.joints + task.j0 + at;
        const T* __restrict__ raw = qkv + token * l.token();
        const T* __restrict__ g = grad_out + token * c_all;
        const T* __restrict__ zj = z + at * c_all;
        T* __restrict__ phi_q = phi + (r * joints + at) * c_all;
        T* __restrict__ gn = gns + (r * joints + at) * c_all;
        feature_map(raw, s, c_all, phi_q);
        query_products(shape, phi_q, u + at * per_joint, zj, eps, num, den);
        T* __restrict__ gzj = gz + at * c_all;
        for (int64_t h = 0; h < heads; ++h) {
          const T inverse = T(1) / den[h];
          T total = 0;
#pragma omp simd reduction(+ : total)
          for (int64_t b = 0; b < d; ++b) {
            gn[h * d + b] = g[h * d + b] * inverse;
            total += g[h * d + b] * num[h * d + b];
          }
          const T grad_den = -total * inverse * inverse;
#pragma omp simd
          for (int64_t a = 0; a < d; ++a) {
            acc[h * d + a] = zj[h * d + a] * grad_den;
            gzj[h * d + a] += phi_q[h * d + a] * grad_den;  // grad_Z
          }
        }
        add_rows(shape, gn, ut + at * per_joint, acc);  // grad_phi(q)
        T* __restrict__ gq = grad + token * l.token();
#pragma omp simd
        for (int64_t c = 0; c < c_all; ++c) gq[c] = acc[c] * (raw[c] * s > 0 ? s : s * phi_q[c]);
      }
    }
    for (int64_t at = 0; at < joints; ++at)  // grad_U += phi(q) grad_n^T over the tile's rows
      add_outer_tokens(shape, count, phi + at * c_all, joints * c_all, gns + at * c_all, joints * c_all,
                       gu + at * per_joint);
  }
  transpose(gu, gut);
  for (int64_t t = task.t0; t < task.t1; ++t) {  // the keys and values
    if (t + kAhead < task.t1) {  // they and their gradients
      const int64_t ahead = (t + kAhead) * l.joints + task.j0;
      prefetch(qkv + ahead * l.token() + c_all, 2 * c_all, l.token(), joints);
      prefetch<true>(grad + ahead * l.token() + c_all, 2 * c_all, l.token(), joints);
    }
    for (int64_t j = task.j0; j < task.j1; ++j) {
      const int64_t token = t * l.joints + j, at = j - task.j0;
      const T* __restrict__ raw = qkv + token * l.token() + c_all;
      const T* __restrict__ v = raw + c_all;
      feature_map(raw, s, c_all, phi);
      const T* __restrict__ gzj = gz + at * c_all;
      for (int64_t c = 0; c < c_all; ++c) acc[c] = gzj[c];
      add_rows(shape, v, gut + at * per_joint, acc);  // grad_phi(k) = grad_U v + grad_Z
      T* __restrict__ gk = grad + token * l.token() + c_all;
      T* __restrict__ gv = gk + c_all;
#pragma omp simd
      for (int64_t c = 0; c < c_all; ++c) gk[c] = acc[c] * (raw[c] * s > 0 ? s : s * phi[c]);
      for (int64_t c = 0; c < c_all; ++c) acc[c] = 0;
      add_rows(shape, phi, gu + at * per_joint, acc);  // grad_v = grad_U^T phi(k)
      for (int64_t c = 0; c < c_all; ++c) gv[c] = acc[c];
    }
  }
}

// The gradients of q, k and v as one (N, V, 3, H, d) tensor, the layout of qkv.
at::Tensor linear_attention_backward(const at::Tensor& grad_out_in, const at::Tensor& qkv, at::IntArrayRef bounds,
                                     double scale, double eps) {
  const RowLayout l = check_rows(qkv, false);
  check_bounds(bounds, l.rows);
  auto grad_out = grad_out_in.contiguous();
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({l.rows, l.joints, l.heads, l.d}), "grad_out must be (N, V, H, d)");
  auto grad = at::empty_like(qkv);
  AT_DISPATCH_FLOATING_TYPES(qkv.scalar_type(), "linear_attention_backward", [&] {
    const scalar_t s = static_cast<scalar_t>(scale), e = static_cast<scalar_t>(eps);
    const scalar_t *data = qkv.data_ptr<scalar_t>(), *go = grad_out.data_ptr<scalar_t>();
    scalar_t* gr = grad.data_ptr<scalar_t>();
    with_shape(l, [&](auto shape) {
      over_tasks<scalar_t>(bounds, l.joints, [&](const Task& task, auto& buffer) {
        linear_backward_task(shape, data, go, l, task, s, e, gr, buffer);
      });
    });
  });
  return grad;
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

at::Tensor keep_mask(at::IntArrayRef shape, double p, int64_t seed, at::ScalarType dtype) {
  const KeepDraw draw(p, seed);
  auto out = at::empty(shape, at::TensorOptions().dtype(dtype));
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
  auto out = at::empty_like(input);
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

// rows first..last: s = x + dropout(y) (into `sums`, row by row), out = LayerNorm(s); each row's mean and
// 1 / std into mean and rstd where given
template <typename T>
void add_norm_rows(const T* x, const T* y, const T* w, const T* b, const KeepDraw& draw, double p, T eps,
                   int64_t c, int64_t first, int64_t last, T* sums, bool sums_all_rows, T* out, T* mean, T* rstd) {
  const T kept = static_cast<T>(1.0 / (1.0 - p));
  for (int64_t r = first; r < last; ++r) {
    T* __restrict__ s = sums_all_rows ? sums + r * c : sums;
    const T* __restrict__ xr = x + r * c;
    const T* __restrict__ yr = y + r * c;
    if (p > 0)
      draw.each(r * c, (r + 1) * c, kept, [&](int64_t i, T m) { s[i - r * c] = xr[i - r * c] + yr[i - r * c] * m; });
    else
      for (int64_t i = 0; i < c; ++i) s[i] = xr[i] + yr[i];
    T sum = 0, squares = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < c; ++i) sum += s[i];
    const T mu = sum / c;
#pragma omp simd reduction(+ : squares)
    for (int64_t i = 0; i < c; ++i) squares += (s[i] - mu) * (s[i] - mu);
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

// out, and where `keep_sum` the sum x + dropout(y) and each row's mean and 1 / std for the backward pass
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_norm_forward(
    const at::Tensor& x, const at::Tensor& y, const at::Tensor& weight, const at::Tensor& bias, double p,
    int64_t seed, double eps, bool keep_sum) {
  const auto [rows, c] = check_norm(x, y, weight, bias);
  const KeepDraw draw(p, seed);
  auto out = at::empty_like(x);
  auto total = keep_sum ? at::empty_like(x) : at::empty({0}, x.options());
  auto mean = at::empty({keep_sum ? rows : 0}, x.options()), rstd = at::empty({keep_sum ? rows : 0}, x.options());
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

// grad_x (= the sum's gradient), grad_y (the sum's gradient times the same multipliers), grad_weight, grad_bias
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> add_norm_backward(
    const at::Tensor& grad_out_in, const at::Tensor& total, const at::Tensor& mean, const at::Tensor& rstd,
    const at::Tensor& weight, double p, int64_t seed) {
  const auto grad_out = grad_out_in.contiguous();
  const auto [rows, c] = check_norm(total, grad_out, weight, weight);
  TORCH_CHECK(mean.numel() == rows && rstd.numel() == rows, "mean and rstd must have one value per row");
  const KeepDraw draw(p, seed);
  auto grad_x = at::empty_like(total), grad_y = at::empty_like(total);
  auto partial = at::zeros({kNormChunks, 2, c}, total.options());  // each chunk's weight and bias gradients
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

}  // namespace

TORCH_LIBRARY(star_fused, library) {
  library.def("sparse_attention_forward(Tensor qkv, Tensor rowptr, Tensor keys, Tensor? keep, float scale, "
              "bool weights) -> (Tensor, Tensor)");
  library.def("sparse_attention_backward(Tensor grad_out, Tensor qkv, Tensor alpha, Tensor rowptr, Tensor keys, "
              "Tensor? keep, float scale) -> Tensor");
  // no tensor argument, hence no device to dispatch on: one kernel for every call
  library.def("keep_mask(int[] shape, float p, int seed, ScalarType dtype) -> Tensor", &keep_mask);
  library.def("apply_keep_mask(Tensor x, float p, int seed) -> Tensor");
  library.def("add_norm_forward(Tensor x, Tensor y, Tensor weight, Tensor bias, float p, int seed, float eps, "
              "bool keep_sum) -> (Tensor, Tensor, Tensor, Tensor)");
  library.def("add_norm_backward(Tensor grad_out, Tensor total, Tensor mean, Tensor rstd, Tensor weight, float p, "
              "int seed) -> (Tensor, Tensor, Tensor, Tensor)");
  library.def("linear_attention_forward(Tensor qkv, int[] bounds, float scale, float eps) -> Tensor");
  library.def("linear_attention_backward(Tensor grad_out, Tensor qkv, int[] bounds, float scale, float eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(star_fused, CPU, library) {
  library.impl("sparse_attention_forward", &sparse_attention_forward);
  library.impl("sparse_attention_backward", &sparse_attention_backward);
  library.impl("linear_attention_forward", &linear_attention_forward);
  library.impl("linear_attention_backward", &linear_attention_backward);
  library.impl("apply_keep_mask", &apply_keep_mask);
  library.impl("add_norm_forward", &add_norm_forward);
  library.impl("add_norm_backward", &add_norm_backward);
}
