// Sparse attention (Eq. 2-3) on qkv (N, V, 3, d, H), forward and backward. The forward pass walks each row's
// tokens where they lie, the H heads of a line side by side as vector lanes. The backward pass splits the rows
// into blocks of kBlock / H rows and gathers each block into joint planes (V, 3, d, kBlock), columns (row, head)
// innermost; within a block every query joint's gradients run along the columns in the cache, so each key and
// value plane is read once per block, not once per edge. Blocks never interact, so the backward pass adds into
// its own block's key and value gradients without races.

#include "tile_product.h"

namespace star_fused {

namespace {

constexpr int64_t kBlock = 64;  // columns (row, head) of a sparse-attention block
constexpr int64_t kAheadRows = 1;  // the forward pass prefetches the next row

// A block of the sparse attention: rows n0..n0+count, laid out as joint planes with kBlock columns (row, head)
// innermost. Each row's qkv is one token of (3, d, H) values per joint, so a plane row gathers H contiguous
// values from each of the block's rows.
struct Block {
  int64_t n0, count;
};

void check_heads(const RowLayout& l) {
  TORCH_CHECK(l.heads <= kBlock, "the sparse attention takes at most ", kBlock, " heads, got ", l.heads);
}

int64_t block_rows(const RowLayout& l) {
  check_heads(l);
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

// One row's attention on its tokens as qkv holds them, (V, 3, d, H), the H heads side by side: every step runs
// along a line of H contiguous values, a head in each vector lane, so the forward pass reads qkv where it lies
// (the backward pass gathers blocks into planes). The output (V, H, d) of the row is written heads first from
// the (d, H) sums. The weights (and the dropout mask) are (E, M) in edge order, this row's H columns from c0
// on, one edge a row of `edge_stride`. `scores` holds (largest degree, H) values, `sums` (d, H).
template <typename T, int64_t H, int64_t D>
void sparse_forward_row(Shape<H, D> shape, const T* __restrict__ tokens, const int64_t* rowptr,
                        const int64_t* keys, int64_t joints, const T* keep, T* alpha, int64_t edge_stride, int64_t c0,
                        T scale, T* __restrict__ out, T* __restrict__ scores, T* __restrict__ sums,
                        const T* ahead) {
  const int64_t heads = shape.heads(), d = shape.d(), line = heads, token = 3 * d * line;
  constexpr int64_t kLineValues = 64 / static_cast<int64_t>(sizeof(T));  // a cache line's
  // with H and d compile-time, a line of H values is one vector-extension value, and q_i's lines (or the sums)
  // stay in registers across a joint's edges where d of them fit (float: d 8 and 16 with AVX-512's 32
  // registers, 8 with AVX2's 16), a line taking as many registers as its bytes need
  constexpr int64_t registers = kVectorBytes == 64 ? 32 : 16;
  constexpr int64_t line_bytes = H * static_cast<int64_t>(sizeof(T));
  constexpr bool kLines = H > 0 && D > 0 && std::has_single_bit(static_cast<uint64_t>(line_bytes)) &&
                          line_bytes >= 16 && D * ((line_bytes + kVectorBytes - 1) / kVectorBytes) + 4 <= registers;
  typedef T Line __attribute__((vector_size(kLines ? H * sizeof(T) : sizeof(T))));
  T top[kBlock], total[kBlock];
  for (int64_t i = 0; i < joints; ++i) {
    const int64_t start = rowptr[i], degree = rowptr[i + 1] - rowptr[i];
    const T* __restrict__ q = tokens + i * token;
    if (ahead)  // joint i's token of a later row, so that the row is in the cache when its turn comes
      for (int64_t at = 0; at < token; at += kLineValues) __builtin_prefetch(ahead + i * token + at);
    if constexpr (kLines) {  // scores q_i . k_j, per head: q_i's d lines held in registers across the edges
      Line qi[D];
      for (int64_t c = 0; c < D; ++c) __builtin_memcpy(&qi[c], q + c * line, sizeof(Line));
      for (int64_t e = 0; e < degree; ++e) {
        const T* __restrict__ k = tokens + keys[start + e] * token + d * line;
        Line sum{}, kc;
        for (int64_t c = 0; c < D; ++c) {
          __builtin_memcpy(&kc, k + c * line, sizeof(Line));
          sum += qi[c] * kc;
        }
        __builtin_memcpy(scores + e * line, &sum, sizeof(Line));
      }
    } else {
      for (int64_t e = 0; e < degree; ++e) {
        const T* __restrict__ k = tokens + keys[start + e] * token + d * line;
        T* __restrict__ s = scores + e * line;
        for (int64_t h = 0; h < heads; ++h) s[h] = 0;
        for (int64_t c = 0; c < d; ++c)
          for (int64_t h = 0; h < heads; ++h) s[h] += q[c * line + h] * k[c * line + h];
      }
    }
    // softmax over the row's edges, head by head
#pragma omp simd
    for (int64_t h = 0; h < heads; ++h) top[h] = degree > 0 ? scores[h] : T(0);
    for (int64_t e = 1; e < degree; ++e)
#pragma omp simd
      for (int64_t h = 0; h < heads; ++h) top[h] = scores[e * line + h] > top[h] ? scores[e * line + h] : top[h];
#pragma omp simd
    for (int64_t h = 0; h < heads; ++h) total[h] = 0;
    for (int64_t e = 0; e < degree; ++e) {
      T* __restrict__ s = scores + e * line;
#pragma omp simd
      for (int64_t h = 0; h < heads; ++h) {
        const T weight = exp_of<T>((s[h] - top[h]) * scale);
        s[h] = weight;
        total[h] += weight;
      }
    }
#pragma omp simd
    for (int64_t h = 0; h < heads; ++h) total[h] = T(1) / total[h];
    for (int64_t e = 0; e < degree; ++e) {  // alpha_ij (times the dropout mask)
      T* __restrict__ s = scores + e * line;
#pragma omp simd
      for (int64_t h = 0; h < heads; ++h) s[h] *= total[h];
      if (alpha) {  // kept for the backward pass only
        T* __restrict__ a = alpha + (start + e) * edge_stride + c0;
#pragma omp simd
        for (int64_t h = 0; h < heads; ++h) a[h] = s[h];
      }
      if (keep) {
        const T* __restrict__ mask = keep + (start + e) * edge_stride + c0;
#pragma omp simd
        for (int64_t h = 0; h < heads; ++h) s[h] *= mask[h];
      }
    }
    // v'_i = sum_j alpha_ij v_j as (d, H) sums, then written heads first
    if constexpr (kLines) {  // the d sums held in registers across the edges
      Line sum[D] = {};
      for (int64_t e = 0; e < degree; ++e) {
        const T* __restrict__ v = tokens + keys[start + e] * token + 2 * d * line;
        Line weight, vc;
        __builtin_memcpy(&weight, scores + e * line, sizeof(Line));
        for (int64_t c = 0; c < D; ++c) {
          __builtin_memcpy(&vc, v + c * line, sizeof(Line));
          sum[c] += weight * vc;
        }
      }
      for (int64_t c = 0; c < D; ++c) __builtin_memcpy(sums + c * line, &sum[c], sizeof(Line));
    } else {
      for (int64_t c = 0; c < d; ++c)
        for (int64_t h = 0; h < heads; ++h) sums[c * line + h] = 0;
      for (int64_t e = 0; e < degree; ++e) {
        const T* __restrict__ s = scores + e * line;
        const T* __restrict__ v = tokens + keys[start + e] * token + 2 * d * line;
        for (int64_t c = 0; c < d; ++c)
          for (int64_t h = 0; h < heads; ++h) sums[c * line + h] += s[h] * v[c * line + h];
      }
    }
    T* __restrict__ o = out + i * heads * d;
    for (int64_t h = 0; h < heads; ++h)
#pragma omp simd
      for (int64_t c = 0; c < d; ++c) o[h * d + c] = sums[c * line + h];
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
  check_heads(l);
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
    const scalar_t* tokens = qkv.data_ptr<scalar_t>();
    scalar_t* outs = out.data_ptr<scalar_t>();
    with_shape(l, [&](auto shape) {
      at::parallel_for(0, l.rows, 1, [&](int64_t first, int64_t last) {
        std::vector<scalar_t> buffer((degree + l.d) * l.heads);  // the scores, the sums
        for (int64_t r = first; r < last; ++r)
          sparse_forward_row(shape, tokens + r * l.row_stride(), ptr, key, l.joints, keep_data, alpha_data, columns,
                             r * l.heads, static_cast<scalar_t>(scale), outs + r * l.joints * l.heads * l.d,
                             buffer.data(), buffer.data() + degree * l.heads,
                             r + kAheadRows < last ? tokens + (r + kAheadRows) * l.row_stride() : nullptr);
      });
    });
  });
  return {out, alpha};
}

// The projected form (inference): Eq. 2-3 on x (N, V, C) and the projection's weight (3C, C), output rows
// (3, d, H): kProjectedRows rows of x at a time multiplied by the weight in the cache, each of those rows'
// attention on the products there, so that q, k and v are never written out and read back. The same products
// and sums as the projection's tile product (inference.cpp) then sparse_attention_forward, in the same order.
constexpr int64_t kProjectedRows = 4;  // 100 tokens of 25 joints; their (100, 3 x 128) float products fit in L2

at::Tensor sparse_attention_projected_forward(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& rowptr,
                                              const at::Tensor& keys, int64_t heads, double scale) {
  const RowLayout l = check_projected(x, weight, heads);
  const int64_t c = l.heads * l.d;
  check_heads(l);
  const int64_t degree = check_graph(rowptr, keys, l.joints), tokens = l.rows * l.joints;
  auto out = new_tensor({l.rows, l.joints, l.heads, l.d}, x.scalar_type());
  const int64_t* ptr = rowptr.data_ptr<int64_t>();
  const int64_t* key = keys.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "sparse_attention_projected_forward", [&] {
    using T = scalar_t;
    const T* xs = x.data_ptr<T>();
    T* outs = out.data_ptr<T>();
    with_projected_shape(l, [&](auto shape, auto channels) {
      constexpr int64_t C = decltype(channels)::value;
      const auto w = packed_weight<T, C, 3 * C>(weight);
      const int64_t groups = (l.rows + kProjectedRows - 1) / kProjectedRows;
      at::parallel_for(0, groups, 1, [&](int64_t first, int64_t last) {
        // the group's tokens as whole register blocks, their q, k and v, a copy of the last group's tokens (the
        // product reads past x's end otherwise), the scores, the sums
        const int64_t blocked = (kProjectedRows * l.joints + kRows - 1) / kRows * kRows;
        std::vector<T> qkv(blocked * 3 * c), copy, scores((degree + l.d) * l.heads);
        for (int64_t group = first; group < last; ++group) {
          const int64_t n0 = group * kProjectedRows, count = std::min(kProjectedRows, l.rows - n0);
          const T* in = xs + n0 * l.joints * c;
          if (n0 * l.joints + blocked > tokens) {
            copy.assign(blocked * c, T(0));
            std::copy_n(in, count * l.joints * c, copy.data());
            in = copy.data();
          }
          tile_product<T, C, 3 * C>(in, w.data(), nullptr, qkv.data(), blocked, c, 3 * c);  // (tokens, 3C)
          for (int64_t r = 0; r < count; ++r)
            sparse_forward_row<T>(shape, qkv.data() + r * l.row_stride(), ptr, key, l.joints, nullptr, nullptr, 0, 0,
                                  static_cast<T>(scale), outs + (n0 + r) * l.joints * c, scores.data(),
                                  scores.data() + degree * l.heads, nullptr);
        }
      });
    });
  });
  return out;
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
