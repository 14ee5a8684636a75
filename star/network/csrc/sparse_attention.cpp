// Sparse attention (Eq. 2-3) on qkv (N, V, 3, d, H), forward and backward: threads split the rows into blocks
// of kBlock / H rows and gather each block into joint planes (V, 3, d, kBlock), columns (row, head) innermost,
// H contiguous values of each row at a time. Within a block every query joint's scores, softmax and weighted
// sum run along the columns in the cache, so each key and value plane is read once per block, not once per
// edge; the output planes go back to rows (N, V, H, d). Blocks never interact, so the backward pass adds into
// its own block's key and value gradients without races.

#include "common.h"

namespace star_fused {

namespace {

constexpr int64_t kBlock = 64;  // columns (row, head) of a sparse-attention block

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
// With the block's width W and the depth D compile-time, and D vectors fitting in the registers, the scores
// and the weighted sum run a vector register's width of columns at a time, q_i's D values (and the output's D
// sums) held in registers across the row's edges, so that each product loads one value instead of three;
// otherwise column by column.
template <typename T, int64_t W, int64_t D>
void sparse_forward_block(const T* planes, int64_t d_runtime, const int64_t* rowptr, const int64_t* keys,
                          int64_t joints, const T* keep, T* alpha, int64_t edge_stride, int64_t c0, T scale,
                          int64_t width, T* out, T* scores) {
  constexpr int64_t registers = kVectorBytes == 64 ? 32 : 16;  // AVX-512's, else AVX2's or SSE's
  constexpr bool in_registers = W > 0 && D > 0 && D + 4 <= registers;  // D sums, and room for the loads
  constexpr int64_t lanes = kVectorBytes / static_cast<int64_t>(sizeof(T));
  const int64_t w = W > 0 ? W : width, d = D > 0 ? D : d_runtime, joint_stride = 3 * d * kBlock;
  for (int64_t i = 0; i < joints; ++i) {
    const int64_t start = rowptr[i], degree = rowptr[i + 1] - rowptr[i];
    const T* __restrict__ qi = planes + i * joint_stride;
    if constexpr (in_registers) {  // scores q_i . k_j / sqrt(d)
      for (int64_t x0 = 0; x0 < W; x0 += lanes) {
        T q[D][lanes];
        for (int64_t c = 0; c < D; ++c)
#pragma omp simd
          for (int64_t x = 0; x < lanes; ++x) q[c][x] = qi[c * kBlock + x0 + x];
        for (int64_t e = 0; e < degree; ++e) {
          const T* __restrict__ kj = planes + keys[start + e] * joint_stride + D * kBlock + x0;
          T sum[lanes] = {};
          for (int64_t c = 0; c < D; ++c)
#pragma omp simd
            for (int64_t x = 0; x < lanes; ++x) sum[x] += q[c][x] * kj[c * kBlock + x];
#pragma omp simd
          for (int64_t x = 0; x < lanes; ++x) scores[e * kBlock + x0 + x] = sum[x];
        }
      }
    } else {
      for (int64_t e = 0; e < degree; ++e) {
        const T* __restrict__ kj = planes + keys[start + e] * joint_stride + d * kBlock;
        T* __restrict__ s = scores + e * kBlock;
        for (int64_t x = 0; x < w; ++x) s[x] = 0;
        for (int64_t c = 0; c < d; ++c)
          for (int64_t x = 0; x < w; ++x) s[x] += qi[c * kBlock + x] * kj[c * kBlock + x];
      }
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
    for (int64_t e = 0; e < degree; ++e) {  // alpha_ij (times the dropout mask)
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
    }
    if constexpr (in_registers) {  // v'_i = sum_j alpha_ij v_j
      for (int64_t x0 = 0; x0 < W; x0 += lanes) {
        T sum[D][lanes] = {};
        for (int64_t e = 0; e < degree; ++e) {
          const T* __restrict__ s = scores + e * kBlock + x0;
          const T* __restrict__ vj = planes + keys[start + e] * joint_stride + 2 * D * kBlock + x0;
          for (int64_t c = 0; c < D; ++c)
#pragma omp simd
            for (int64_t x = 0; x < lanes; ++x) sum[c][x] += s[x] * vj[c * kBlock + x];
        }
        for (int64_t c = 0; c < D; ++c)
#pragma omp simd
          for (int64_t x = 0; x < lanes; ++x) oi[c * kBlock + x0 + x] = sum[c][x];
      }
    } else {
      for (int64_t c = 0; c < d; ++c)
        for (int64_t x = 0; x < w; ++x) oi[c * kBlock + x] = 0;
      for (int64_t e = 0; e < degree; ++e) {
        const T* __restrict__ s = scores + e * kBlock;
        const T* __restrict__ vj = planes + keys[start + e] * joint_stride + 2 * d * kBlock;
        for (int64_t c = 0; c < d; ++c)
          for (int64_t x = 0; x < w; ++x) oi[c * kBlock + x] += s[x] * vj[c * kBlock + x];
      }
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
  const int64_t *ptr = rowptr.data_ptr<int64_t>(), *key = keys.data_ptr<int64_t>(), edges = keys.numel();
  bool rising = ptr[0] == 0 && ptr[joints] == edges;
  int64_t degree = 1;  // 1: a row of no edges still gets a buffer
  for (int64_t i = 0; i < joints; ++i) {
    rising = rising && ptr[i + 1] >= ptr[i];
    degree = std::max(degree, ptr[i + 1] - ptr[i]);
  }
  TORCH_CHECK(rising, "rowptr must rise from 0 to the ", edges, " keys");
  TORCH_CHECK(std::all_of(key, key + edges, [&](int64_t k) { return k >= 0 && k < joints; }),
              "keys must be joints in [0, ", joints, ")");
  return degree;
}

}  // namespace

// Eq. 2-3 on qkv (N, V, 3, d, H) -> the output (N, V, H, d) and, where `weights`, the attention weights (E, N H)
// for the backward pass (else (0, N H), never written); `keep` the dropout mask on the weights, (E, N H)
std::tuple<at::Tensor, at::Tensor> sparse_attention_forward(const at::Tensor& qkv, const at::Tensor& rowptr,
                                                            const at::Tensor& keys,
                                                            const std::optional<at::Tensor>& keep, double scale,
                                                            bool weights) {
  const RowLayout l = check_rows(qkv, true);
  const int64_t degree = check_graph(rowptr, keys, l.joints), columns = l.rows * l.heads;
  check_keep(keep, keys.size(0), columns, qkv);
  auto out = new_tensor({l.rows, l.joints, l.heads, l.d}, qkv.scalar_type());
  auto alpha = new_tensor({weights ? keys.size(0) : 0, columns}, qkv.scalar_type());
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
        constexpr int64_t D = decltype(shape)::depth;
        auto run = width == kBlock ? sparse_forward_block<scalar_t, kBlock, D> : sparse_forward_block<scalar_t, 0, D>;
        run(planes, l.d, ptr, key, l.joints, keep_data, alpha_data, columns, b.n0 * l.heads,
            static_cast<scalar_t>(scale), width, out_planes, scores);
        move_block<scalar_t, false, true>(shape, out.data_ptr<scalar_t>(), l, b, out_planes);
      });
    });
  });
  return {out, alpha};
}

namespace {

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

}  // namespace

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
  auto grad = new_like(qkv);
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

}  // namespace star_fused
