// Segmented linear attention (Eq. 6) on qkv (N, V, 3, H, d), forward and backward: one task per clip and group
// of joints walks the clip's rows in memory order, sums U_h = phi(K_h)^T V_h and Z_h for each of its joints and
// heads, then every output row; the backward pass recomputes phi, U and Z instead of keeping them. The sums
// over rows run a tile of rows at a time with each block of the sum (8 x 8, or 16 x 16 at depth 16 with AVX-512)
// in registers, and the rows a task will read next are prefetched, since it reads a few tokens of each row and
// jumps a row ahead.

#include "tile_product.h"

namespace star_fused {

namespace {

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

// The lanes of the register pieces that the sums over a head's d values are kept in: a whole AVX-512 register
// of float (16) where d is a multiple of it, else 8
template <typename T, int64_t D>
constexpr int64_t kPiece = kVectorBytes / static_cast<int64_t>(sizeof(T)) >= 16 && D % 16 == 0 ? 16 : 8;

// M[0:L, 0:L] += sum_r x_r[0:L] y_r[0:L]^T over `count` tokens (M's rows `m_stride` apart): the L x L block
// stays in registers across the tokens, so each token costs one load of y_r and L multiply-adds, where the
// per-token update (add_outer) loads and stores every row of M again
template <int64_t L, typename T>
inline void add_outer_block(int64_t count, const T* __restrict__ x, int64_t x_stride, const T* __restrict__ y,
                            int64_t y_stride, T* __restrict__ m, int64_t m_stride) {
  typedef T Row __attribute__((vector_size(L * sizeof(T))));
  Row block[L];
  for (int a = 0; a < L; ++a) __builtin_memcpy(&block[a], m + a * m_stride, sizeof(Row));
  for (int64_t r = 0; r < count; ++r) {
    Row yr;
    __builtin_memcpy(&yr, y + r * y_stride, sizeof(Row));
    const T* __restrict__ xr = x + r * x_stride;
#pragma GCC unroll 16
    for (int a = 0; a < L; ++a) block[a] += xr[a] * yr;
  }
  for (int a = 0; a < L; ++a) __builtin_memcpy(m + a * m_stride, &block[a], sizeof(Row));
}

// M_h += sum_r x_{r,h} y_{r,h}^T for every head, over `count` tokens x + r x_stride and y + r y_stride (H d
// values each): in blocks of kPiece x kPiece where d is a multiple of 8 known when compiled, token by token
// elsewhere
template <typename T, int64_t H, int64_t D>
inline void add_outer_tokens(Shape<H, D> shape, int64_t count, const T* x, int64_t x_stride, const T* y,
                             int64_t y_stride, T* m) {
  if constexpr (D > 0 && D % 8 == 0) {
    constexpr int64_t L = kPiece<T, D>;
    for (int64_t h = 0; h < shape.heads(); ++h)
      for (int64_t a = 0; a < D; a += L)
        for (int64_t b = 0; b < D; b += L)
          add_outer_block<L>(count, x + h * D + a, x_stride, y + h * D + b, y_stride, m + (h * D + a) * D + b, D);
  } else {
    for (int64_t r = 0; r < count; ++r) add_outer(shape, x + r * x_stride, y + r * y_stride, m);
  }
}

// out_h += sum_b x_hb M_h[b, :] for every head: a vector-matrix product per head (M: H d x d matrices)
template <typename T, int64_t H, int64_t D>
inline void add_rows(Shape<H, D> shape, const T* __restrict__ x, const T* __restrict__ m, T* __restrict__ out) {
  if constexpr (H > 0 && D > 0 && D % 8 == 0) {
    // out in H d / L pieces of L across the sum, in registers where they fit (float with AVX-512: 8 of 32;
    // with AVX2 STAR-128's 16 pieces take all 16 and some spill, which measured no slower than two passes)
    constexpr int64_t L = kPiece<T, D>, kPieces = D / L;
    typedef T Piece __attribute__((vector_size(L * sizeof(T))));
    Piece acc[H * kPieces];
    for (int64_t i = 0; i < H * kPieces; ++i) __builtin_memcpy(&acc[i], out + i * L, sizeof(Piece));
    for (int64_t b = 0; b < D; ++b)
#pragma GCC unroll 16
      for (int64_t h = 0; h < H; ++h)
#pragma GCC unroll 2
        for (int64_t piece = 0; piece < kPieces; ++piece) {
          Piece row;
          __builtin_memcpy(&row, m + (h * D + b) * D + piece * L, sizeof(Piece));
          acc[h * kPieces + piece] += x[h * D + b] * row;
        }
    for (int64_t i = 0; i < H * kPieces; ++i) __builtin_memcpy(out + i * L, &acc[i], sizeof(Piece));
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

// The normalisers den_h = phi_h^T Z_h + eps of every head
template <typename T, int64_t H, int64_t D>
inline void normalisers(Shape<H, D> shape, const T* __restrict__ phi, const T* __restrict__ z, T eps,
                        T* __restrict__ den) {
  const int64_t heads = shape.heads(), d = shape.d();
  if constexpr (H > 0 && D > 0 && (D & (D - 1)) == 0) {  // each head's sum as a tree of halvings (tree_sum)
    T products[H * D];
#pragma omp simd
    for (int64_t c = 0; c < H * D; ++c) products[c] = phi[c] * z[c];
    for (int64_t h = 0; h < H; ++h) den[h] = eps + tree_sum<T, D>(products + h * D);
  } else {
    for (int64_t h = 0; h < heads; ++h) {
      T total = eps;
      for (int64_t a = 0; a < d; ++a) total += phi[h * d + a] * z[h * d + a];
      den[h] = total;
    }
  }
}

// num_h = U_h^T phi_h (every head) and the normalisers den_h = phi_h^T Z_h + eps
template <typename T, int64_t H, int64_t D>
inline void query_products(Shape<H, D> shape, const T* __restrict__ phi, const T* __restrict__ u,
                           const T* __restrict__ z, T eps, T* __restrict__ num, T* __restrict__ den) {
  normalisers(shape, phi, z, eps, den);
  std::fill(num, num + shape.heads() * shape.d(), T(0));
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

// out = phi(q)^T U / (phi(q)^T Z + eps) of one token's raw queries q (H d), every head; phi, num (H d) and den
// (H) the caller's scratch
template <typename T, int64_t H, int64_t D>
inline void query_output(Shape<H, D> shape, const T* q, T s, const T* u, const T* z, T eps, T* phi, T* num, T* den,
                         T* __restrict__ out) {
  const int64_t heads = shape.heads(), d = shape.d();
  feature_map(q, s, heads * d, phi);
  query_products(shape, phi, u, z, eps, num, den);
  for (int64_t h = 0; h < heads; ++h) {
    const T inverse = T(1) / den[h];
#pragma omp simd
    for (int64_t b = 0; b < d; ++b) out[h * d + b] = num[h * d + b] * inverse;
  }
}

// The query tokens whose outputs query_outputs computes together, so that each row of U_h it loads serves all
// of them: their sums over a head are tokens x d / kPiece pieces, 8 pieces (float: 8 of AVX-512's 32 registers,
// or of AVX2's 16)
template <typename T, int64_t D>
constexpr int64_t kQueryTokens = D > 0 && D / kPiece<T, D> == 1 ? 8 : 4;

// query_output of `count` tokens, raw queries q_stride apart, outputs out_stride apart, kQueryTokens at a time
// where H and d are compile-time (the same sums in the same order: each token's bits as query_output's), the
// rest one by one; phi and num (kQueryTokens, H d) and den (kQueryTokens, H) the caller's scratch
template <typename T, int64_t H, int64_t D>
void query_outputs(Shape<H, D> shape, int64_t count, const T* q, int64_t q_stride, T s, const T* u, const T* z,
                   T eps, T* phi, T* num, T* den, T* out, int64_t out_stride) {
  int64_t first = 0;
  if constexpr (H > 0 && D > 0 && D % 8 == 0) {
    constexpr int64_t C = H * D, L = kPiece<T, D>, kPieces = D / L, R = kQueryTokens<T, D>;
    typedef T Piece __attribute__((vector_size(L * sizeof(T))));
    for (; first + R <= count; first += R) {
      for (int64_t r = 0; r < R; ++r) {
        feature_map(q + (first + r) * q_stride, s, C, phi + r * C);
        normalisers(shape, phi + r * C, z, eps, den + r * H);
      }
      for (int64_t h = 0; h < H; ++h) {  // num_h = U_h^T phi_h of every token, a row of U_h at a time
        Piece acc[R][kPieces] = {};
        for (int64_t b = 0; b < D; ++b) {
          Piece row[kPieces];
          for (int64_t piece = 0; piece < kPieces; ++piece)
            __builtin_memcpy(&row[piece], u + (h * D + b) * D + piece * L, sizeof(Piece));
#pragma GCC unroll 8
          for (int64_t r = 0; r < R; ++r)
            for (int64_t piece = 0; piece < kPieces; ++piece) acc[r][piece] += phi[r * C + h * D + b] * row[piece];
        }
        for (int64_t r = 0; r < R; ++r)
          for (int64_t piece = 0; piece < kPieces; ++piece)
            __builtin_memcpy(num + r * C + h * D + piece * L, &acc[r][piece], sizeof(Piece));
      }
      for (int64_t r = 0; r < R; ++r) {
        T inverse[H];
#pragma omp simd
        for (int64_t h = 0; h < H; ++h) inverse[h] = T(1) / den[r * H + h];
        T* __restrict__ o = out + (first + r) * out_stride;
        for (int64_t h = 0; h < H; ++h)
#pragma omp simd
          for (int64_t b = 0; b < D; ++b) o[h * D + b] = num[r * C + h * D + b] * inverse[h];
      }
    }
  }
  for (; first < count; ++first)
    query_output(shape, q + first * q_stride, s, u, z, eps, phi, num, den, out + first * out_stride);
}

template <typename T, int64_t H, int64_t D>
void linear_forward_task(Shape<H, D> shape, const T* qkv, const RowLayout& l, const Task& task, T s, T eps,
                         T* out, std::vector<T>& buffer) {
  constexpr int64_t R = kQueryTokens<T, D>;
  const int64_t heads = shape.heads(), d = shape.d(), c_all = heads * d, joints = task.j1 - task.j0;
  buffer.resize(joints * (c_all * d + c_all) + std::max(kTile * joints, R) * c_all + R * (c_all + heads));
  T *u = buffer.data(), *z = u + joints * c_all * d, *phi = z + joints * c_all;
  T *num = phi + std::max(kTile * joints, R) * c_all, *den = num + R * c_all;
  key_sums(shape, qkv, l, task, s, u, z, phi);
  for (int64_t t = task.t0; t < task.t1; t += R) {
    const int64_t count = std::min(R, task.t1 - t);
    for (int64_t r = t + R; r < std::min(t + 2 * R, task.t1); ++r) {  // the next tokens' queries, and outputs
      prefetch(qkv + r * l.row_stride() + task.j0 * l.token(), c_all, l.token(), joints);
      prefetch<true>(out + (r * l.joints + task.j0) * c_all, joints * c_all);
    }
    for (int64_t j = task.j0; j < task.j1; ++j)
      query_outputs(shape, count, qkv + t * l.row_stride() + j * l.token(), l.row_stride(), s,
                    u + (j - task.j0) * c_all * d, z + (j - task.j0) * c_all, eps, phi, num, den,
                    out + (t * l.joints + j) * c_all, l.joints * c_all);
  }
}

// every task of a call, each clip's joints in groups of kJointGroup, threads splitting them into runs of about
// equal work. One joint a task: its U and Z (8 KB at H = 8, d = 16) stay in the L1 cache while the clip's rows
// go by, which measured faster than groups of 2 or 5 joints, forward and backward. A task costs its clip's rows
// times its joints, and parallel_for's runs of equal numbers of tasks would leave one thread the longer clips;
// a task's index fixes what it writes, so the split changes no result.
constexpr int64_t kJointGroup = 1;

template <typename T, typename Run>
void over_tasks(at::IntArrayRef bounds, int64_t joints, const Run& run) {
  const int64_t clips = static_cast<int64_t>(bounds.size()) - 1, groups = (joints + kJointGroup - 1) / kJointGroup;
  const int64_t tasks = clips * groups;
  const auto task = [&](int64_t index) {
    const int64_t m = index / groups, j0 = index % groups * kJointGroup;
    return Task{bounds[m], bounds[m + 1], j0, std::min(joints, j0 + kJointGroup)};
  };
  std::vector<int64_t> begins(tasks + 1, 0);  // the work before each task, and in all
  for (int64_t index = 0; index < tasks; ++index) {
    const Task t = task(index);
    begins[index + 1] = begins[index] + (t.t1 - t.t0) * (t.j1 - t.j0);
  }
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), tasks));
  const auto first_task = [&](int64_t part) {  // the first task whose work begins in the part's share or later
    if (part == parts) return tasks;
    const int64_t share = begins[tasks] * part / parts;
    return static_cast<int64_t>(std::lower_bound(begins.begin(), begins.begin() + tasks, share) - begins.begin());
  };
  at::parallel_for(0, parts, 1, [&](int64_t first, int64_t last) {
    std::vector<T> buffer;
    for (int64_t index = first_task(first); index < first_task(last); ++index) run(task(index), buffer);
  });
}

// The projected form (inference): a task's rows of its joint in x (N, V, C) multiplied by the projection's
// weight where they lie, into a buffer that the rest of the task reads as linear_forward_task reads qkv, so that
// q, k and v are never written out and read back. Every product and sum is the one that the projection's tile
// product (inference.cpp) and linear_forward_task compute, in the same order.
template <int64_t C, typename T, int64_t H, int64_t D>
void projected_forward_task(Shape<H, D> shape, const T* x, int64_t rows, int64_t joints, const std::vector<T>& weight,
                            const Task& task, T s, T eps, T* out, std::vector<T>& buffer) {
  const int64_t heads = shape.heads(), d = shape.d(), c = heads * d, length = task.t1 - task.t0;
  const int64_t blocked = (length + kRows - 1) / kRows * kRows;  // the tile product's rows
  // the task's q, k and v (blocked, 3C), a copy of x's rows where the product would read past x's end, U, Z,
  // phi of a tile's keys or queries, the queries' num and den
  constexpr int64_t R = kQueryTokens<T, D>;
  buffer.resize(blocked * 4 * c + c * d + c + std::max(kTile, R) * c + R * (c + heads));
  T *qkv = buffer.data(), *copy = qkv + blocked * 3 * c, *u = copy + blocked * c, *z = u + c * d;
  T *phi = z + c, *num = phi + std::max(kTile, R) * c, *den = num + R * c;
  const RowLayout projected{length, 1, heads, d};
  for (int64_t j = task.j0; j < task.j1; ++j) {
    const T* first = x + (task.t0 * joints + j) * c;  // the rows past the task's are other clips' (or copied 0)
    const bool past_end = task.t0 + blocked > rows;
    if (past_end) {
      std::fill(copy, copy + blocked * c, T(0));
      for (int64_t t = 0; t < length; ++t) std::copy_n(first + t * joints * c, c, copy + t * c);
    }
    tile_product<T, C, 3 * C>(past_end ? copy : first, weight.data(), nullptr, qkv, blocked, c, 3 * c,
                              past_end ? c : joints * c);  // (blocked, 3C)
    key_sums(shape, qkv, projected, Task{0, length, 0, 1}, s, u, z, phi);
    query_outputs(shape, length, qkv, 3 * c, s, u, z, eps, phi, num, den, out + (task.t0 * joints + j) * c,
                  joints * c);
  }
}

}  // namespace

at::Tensor linear_attention_projected_forward(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef bounds,
                                              int64_t heads, double scale, double eps) {
  const RowLayout l = check_projected(x, weight, heads);
  check_bounds(bounds, l.rows);
  auto out = new_tensor({l.rows, l.joints, l.heads, l.d}, x.scalar_type());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "linear_attention_projected_forward", [&] {
    const scalar_t s = static_cast<scalar_t>(scale), e = static_cast<scalar_t>(eps);
    with_projected_shape(l, [&](auto shape, auto channels) {
      constexpr int64_t C = decltype(channels)::value;
      const auto w = packed_weight<scalar_t, C, 3 * C>(weight);
      over_tasks<scalar_t>(bounds, l.joints, [&](const Task& task, auto& buffer) {
        projected_forward_task<C>(shape, x.data_ptr<scalar_t>(), l.rows, l.joints, w, task, s, e,
                                  out.data_ptr<scalar_t>(), buffer);
      });
    });
  });
  return out;
}

at::Tensor linear_attention_forward(const at::Tensor& qkv, at::IntArrayRef bounds, double scale, double eps) {
  const RowLayout l = check_rows(qkv, false);
  check_bounds(bounds, l.rows);
  auto out = new_tensor({l.rows, l.joints, l.heads, l.d}, qkv.scalar_type());
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

namespace {

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

}  // namespace

// The gradients of q, k and v as one (N, V, 3, H, d) tensor, the layout of qkv.
at::Tensor linear_attention_backward(const at::Tensor& grad_out_in, const at::Tensor& qkv, at::IntArrayRef bounds,
                                     double scale, double eps) {
  const RowLayout l = check_rows(qkv, false);
  check_bounds(bounds, l.rows);
  auto grad_out = grad_out_in.contiguous();
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({l.rows, l.joints, l.heads, l.d}), "grad_out must be (N, V, H, d)");
  auto grad = new_like(qkv);
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

}  // namespace star_fused
