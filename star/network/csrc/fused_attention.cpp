// STAR's two attentions as single CPU kernels, forward and backward, and dropout masks drawn without a
// generator's serial state (star.network.fused builds and loads them).
//
// Sparse attention (Eq. 2-3) on joint planes: q, k, v are (V, d, M), each joint's (d, M) plane contiguous
// (the joints may lie apart, one joint stride shared by q, k and v), M = heads x rows innermost. Threads split
// M into column blocks; within a block every query joint's scores, softmax and weighted sum run over
// block-sized rows that stay in the L1 cache, so each key and value plane is read from memory once per block,
// not once per edge. Columns never interact, so
// the backward pass adds into the key and value gradients of its own block without races.
//
// Segmented linear attention (Eq. 6) on (G, d, N) matrices, time innermost, G = joints x heads: one task per
// (g, clip) applies phi to its rows of the raw projections, forms U = phi(K) V^T and Z over the clip's rows as
// d x d dot products along time, then every output row; the backward pass recomputes phi, U, Z and the
// normaliser instead of keeping them.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <bit>
#include <vector>

namespace {

constexpr int64_t kBlock = 64;  // columns of a sparse-attention block

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

void check_planes(const at::Tensor& t, const char* name, const at::Tensor& like) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be on the CPU");
  TORCH_CHECK(t.sizes() == like.sizes(), name, " must be (V, d, M) like q, got ", t.sizes());
  TORCH_CHECK(t.stride(2) == 1 && t.stride(1) == t.size(2), name, "'s joint planes must be contiguous");
  TORCH_CHECK(t.stride(0) == like.stride(0), "q, k and v must share a joint stride");
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), "q, k and v must share a dtype");
}

// the planes of one column block: joint i's row c starts at plane(i) + c * m
template <typename T>
struct Planes {
  const T* data;
  int64_t joint_stride, m;
  const T* at(int64_t joint, int64_t c0) const { return data + joint * joint_stride + c0; }
};

template <typename T>
Planes<T> planes_of(const at::Tensor& t) {
  return {t.data_ptr<T>(), t.stride(0), t.size(2)};
}

// block(c0, width, buffer) for every column block of M, threads splitting the blocks; `buffer` holds
// degree x kBlock values, one per thread
template <typename T, typename Block>
void over_blocks(int64_t m, int64_t degree, const Block& block) {
  at::parallel_for(0, (m + kBlock - 1) / kBlock, 1, [&](int64_t first, int64_t last) {
    std::vector<T> buffer(degree * kBlock);
    for (int64_t index = first; index < last; ++index) {
      const int64_t c0 = index * kBlock;
      block(c0, std::min(kBlock, m - c0), buffer.data());
    }
  });
}

template <typename T, int64_t W>
void sparse_forward_block(Planes<T> q, Planes<T> k, Planes<T> v, int64_t d, const int64_t* rowptr,
                          const int64_t* keys, int64_t joints, const T* keep, T* out, T* alpha, T scale,
                          int64_t c0, int64_t width, T* scores) {
  const int64_t m = q.m, w = W > 0 ? W : width;
  for (int64_t i = 0; i < joints; ++i) {
    const int64_t start = rowptr[i], degree = rowptr[i + 1] - rowptr[i];
    const T* __restrict__ qi = q.at(i, c0);
    for (int64_t e = 0; e < degree; ++e) {  // scores q_i . k_j / sqrt(d)
      const T* __restrict__ kj = k.at(keys[start + e], c0);
      T* __restrict__ s = scores + e * kBlock;
      for (int64_t x = 0; x < w; ++x) s[x] = 0;
      for (int64_t c = 0; c < d; ++c)
        for (int64_t x = 0; x < w; ++x) s[x] += qi[c * m + x] * kj[c * m + x];
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
    T* __restrict__ oi = out + i * d * m + c0;
    for (int64_t c = 0; c < d; ++c)
      for (int64_t x = 0; x < w; ++x) oi[c * m + x] = 0;
    for (int64_t e = 0; e < degree; ++e) {  // v'_i = sum_j alpha_ij (times the dropout mask) v_j
      T* __restrict__ s = scores + e * kBlock;
      for (int64_t x = 0; x < w; ++x) s[x] *= total[x];
      if (alpha) {  // kept for the backward pass only
        T* __restrict__ a = alpha + (start + e) * m + c0;
        for (int64_t x = 0; x < w; ++x) a[x] = s[x];
      }
      if (keep) {
        const T* __restrict__ mask = keep + (start + e) * m + c0;
        for (int64_t x = 0; x < w; ++x) s[x] *= mask[x];
      }
      const T* __restrict__ vj = v.at(keys[start + e], c0);
      for (int64_t c = 0; c < d; ++c)
        for (int64_t x = 0; x < w; ++x) oi[c * m + x] += s[x] * vj[c * m + x];
    }
  }
}

void check_keep(const std::optional<at::Tensor>& keep, int64_t edges, const at::Tensor& q) {
  TORCH_CHECK(!keep.has_value() || (keep->sizes() == at::IntArrayRef{edges, q.size(2)} &&
                                    keep->scalar_type() == q.scalar_type() && keep->device().is_cpu()),
              "keep must be (E, M) = (", edges, ", ", q.size(2), ") in q's dtype, got ",
              keep.has_value() ? keep->sizes() : at::IntArrayRef{}, " ", keep.has_value() ? keep->dtype() : q.dtype());
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

std::tuple<at::Tensor, at::Tensor> sparse_attention_forward(const at::Tensor& q, const at::Tensor& k,
                                                            const at::Tensor& v, const at::Tensor& rowptr,
                                                            const at::Tensor& keys,
                                                            const std::optional<at::Tensor>& keep, double scale,
                                                            bool weights) {
  TORCH_CHECK(q.dim() == 3, "q must be (V, d, M), got ", q.sizes());
  check_planes(q, "q", q);
  check_planes(k, "k", q);
  check_planes(v, "v", q);
  const int64_t joints = q.size(0), d = q.size(1), m = q.size(2), degree = check_graph(rowptr, keys, joints);
  auto out = at::empty({joints, d, m}, q.options());
  // the attention weights (E, M), for the backward pass; without one, (0, M) and never written
  auto alpha = at::empty({weights ? keys.size(0) : 0, m}, q.options());
  check_keep(keep, keys.size(0), q);
  at::Tensor mask = keep.has_value() ? keep->contiguous() : at::Tensor();
  const int64_t* ptr = rowptr.data_ptr<int64_t>();
  const int64_t* key = keys.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "sparse_attention_forward", [&] {
    const scalar_t* keep_data = mask.defined() ? mask.data_ptr<scalar_t>() : nullptr;
    over_blocks<scalar_t>(m, degree, [&](int64_t c0, int64_t width, scalar_t* scores) {
      auto run = width == kBlock ? sparse_forward_block<scalar_t, kBlock> : sparse_forward_block<scalar_t, 0>;
      run(planes_of<scalar_t>(q), planes_of<scalar_t>(k), planes_of<scalar_t>(v), d, ptr, key, joints, keep_data,
          out.data_ptr<scalar_t>(), weights ? alpha.data_ptr<scalar_t>() : nullptr, static_cast<scalar_t>(scale), c0,
          width, scores);
    });
  });
  return {out, alpha};
}

template <typename T, int64_t W>
void sparse_backward_block(Planes<T> q, Planes<T> k, Planes<T> v, int64_t d, const int64_t* rowptr,
                           const int64_t* keys, int64_t joints, const T* keep, const T* alpha, const T* grad_out,
                           T* grad_q, T* grad_k, T* grad_v, int64_t grad_stride, T scale, int64_t c0, int64_t width,
                           T* grad_weights) {
  const int64_t m = q.m, w = W > 0 ? W : width;
  for (int64_t i = 0; i < joints; ++i) {
    const int64_t start = rowptr[i], degree = rowptr[i + 1] - rowptr[i];
    const T* __restrict__ go = grad_out + i * d * m + c0;
    T dot[kBlock], kept[kBlock];
    for (int64_t x = 0; x < w; ++x) dot[x] = 0;
    for (int64_t e = 0; e < degree; ++e) {
      const int64_t j = keys[start + e];
      const T* __restrict__ vj = v.at(j, c0);
      T* __restrict__ gvj = grad_v + j * grad_stride + c0;
      const T* __restrict__ a = alpha + (start + e) * m + c0;
      const T* __restrict__ mask = keep ? keep + (start + e) * m + c0 : nullptr;
      T* __restrict__ gw = grad_weights + e * kBlock;
      for (int64_t x = 0; x < w; ++x) {
        gw[x] = 0;
        kept[x] = mask ? a[x] * mask[x] : a[x];
      }
      for (int64_t c = 0; c < d; ++c)
        for (int64_t x = 0; x < w; ++x) {
          gw[x] += go[c * m + x] * vj[c * m + x];
          gvj[c * m + x] += kept[x] * go[c * m + x];
        }
      if (mask)
        for (int64_t x = 0; x < w; ++x) gw[x] *= mask[x];
      for (int64_t x = 0; x < w; ++x) dot[x] += gw[x] * a[x];
    }
    // softmax backward with the score scale: dS = scale * A * (dA - sum_e dA_e A_e), written over dA
    for (int64_t e = 0; e < degree; ++e) {
      const T* __restrict__ a = alpha + (start + e) * m + c0;
      T* __restrict__ g = grad_weights + e * kBlock;
      for (int64_t x = 0; x < w; ++x) g[x] = a[x] * (g[x] - dot[x]) * scale;
    }
    const T* __restrict__ qi = q.at(i, c0);
    T* __restrict__ gqi = grad_q + i * grad_stride + c0;
    for (int64_t c = 0; c < d; ++c)
      for (int64_t x = 0; x < w; ++x) gqi[c * m + x] = 0;
    for (int64_t e = 0; e < degree; ++e) {
      const int64_t j = keys[start + e];
      const T* __restrict__ kj = k.at(j, c0);
      T* __restrict__ gkj = grad_k + j * grad_stride + c0;
      const T* __restrict__ gs = grad_weights + e * kBlock;
      for (int64_t c = 0; c < d; ++c)
        for (int64_t x = 0; x < w; ++x) {
          gqi[c * m + x] += gs[x] * kj[c * m + x];
          gkj[c * m + x] += gs[x] * qi[c * m + x];
        }
    }
  }
}

// The gradients of q, k and v as one (V, 3, d, M) tensor, the layout the three come from in the model (views of
// one projection), so that autograd hands it back whole instead of stacking three.
at::Tensor sparse_attention_backward(
    const at::Tensor& grad_out_in, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& alpha, const at::Tensor& rowptr, const at::Tensor& keys,
    const std::optional<at::Tensor>& keep, double scale) {
  const int64_t joints = q.size(0), d = q.size(1), m = q.size(2), degree = check_graph(rowptr, keys, joints);
  auto grad_out = grad_out_in.contiguous();
  auto grad = at::empty({joints, 3, d, m}, q.options());  // q's planes are all written, k's and v's added to
  grad.select(1, 1).zero_();
  grad.select(1, 2).zero_();
  at::Tensor mask = keep.has_value() ? keep->contiguous() : at::Tensor();
  const int64_t* ptr = rowptr.data_ptr<int64_t>();
  const int64_t* key = keys.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "sparse_attention_backward", [&] {
    const scalar_t* keep_data = mask.defined() ? mask.data_ptr<scalar_t>() : nullptr;
    over_blocks<scalar_t>(m, degree, [&](int64_t c0, int64_t width, scalar_t* grad_weights) {
      auto run = width == kBlock ? sparse_backward_block<scalar_t, kBlock> : sparse_backward_block<scalar_t, 0>;
      run(planes_of<scalar_t>(q), planes_of<scalar_t>(k), planes_of<scalar_t>(v), d, ptr, key, joints, keep_data,
          alpha.data_ptr<scalar_t>(), grad_out.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(),
          grad.data_ptr<scalar_t>() + d * m, grad.data_ptr<scalar_t>() + 2 * d * m, 3 * d * m,
          static_cast<scalar_t>(scale), c0, width, grad_weights);
    });
  });
  return grad;
}

void check_matrices(const at::Tensor& t, const char* name, const at::Tensor& like) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be on the CPU");
  TORCH_CHECK(t.dim() == 3 && t.sizes() == like.sizes(), name, " must be (G, d, N) like q, got ", t.sizes());
  TORCH_CHECK(t.stride(2) == 1, name, " must have time innermost");
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), "q, k and v must share a dtype");
}

// One (g, clip) task of the linear attention: where its rows of the raw projections lie, and the steps on them.
template <typename T>
struct Segment {
  const T *q, *k, *v;  // row a of each at q + a * stride, `length` values along time
  int64_t qs, ks, vs, d, length;
  T scale;

  // phi(scale x) = elu(scale x) + 1 of every row of `raw` into `phi` (d x length, contiguous)
  void feature_map(const T* raw, int64_t stride, T* __restrict__ phi) const {
    for (int64_t a = 0; a < d; ++a) {
      const T* __restrict__ row = raw + a * stride;
#pragma omp simd
      for (int64_t t = 0; t < length; ++t) {
        const T y = row[t] * scale;
        phi[a * length + t] = y > 0 ? y + 1 : exp_of<T>(y);
      }
    }
  }

  // U = phi(K) V^T (row a = key channel) and Z = phi(K) summed over time
  void sums(const T* __restrict__ kp, T* __restrict__ u, T* __restrict__ z) const {
    for (int64_t a = 0; a < d; ++a) {
      const T* __restrict__ ka = kp + a * length;
      T total = 0;
#pragma omp simd reduction(+ : total)
      for (int64_t t = 0; t < length; ++t) total += ka[t];
      z[a] = total;
      for (int64_t b = 0; b < d; ++b) {
        const T* __restrict__ vb = v + b * vs;
        T sum = 0;
#pragma omp simd reduction(+ : sum)
        for (int64_t t = 0; t < length; ++t) sum += ka[t] * vb[t];
        u[a * d + b] = sum;
      }
    }
  }

  // den_t = phi(Q_t)^T Z + eps and num_t = phi(Q_t)^T U for every row (num: d rows of `length`, `stride` apart)
  void rows(const T* __restrict__ qp, const T* __restrict__ u, const T* __restrict__ z, T eps, T* __restrict__ den,
            T* __restrict__ num, int64_t stride) const {
    for (int64_t t = 0; t < length; ++t) den[t] = eps;
    for (int64_t a = 0; a < d; ++a)
      for (int64_t t = 0; t < length; ++t) den[t] += z[a] * qp[a * length + t];
    for (int64_t c = 0; c < d; ++c) {
      T* __restrict__ row = num + c * stride;
      for (int64_t t = 0; t < length; ++t) row[t] = 0;
      for (int64_t a = 0; a < d; ++a) {
        const T weight = u[a * d + c];
        const T* __restrict__ qa = qp + a * length;
        for (int64_t t = 0; t < length; ++t) row[t] += weight * qa[t];
      }
    }
  }
};

template <typename T>
Segment<T> segment_of(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t g, int64_t t0,
                      int64_t length, double scale) {
  return {q.data_ptr<T>() + g * q.stride(0) + t0, k.data_ptr<T>() + g * k.stride(0) + t0,
          v.data_ptr<T>() + g * v.stride(0) + t0, q.stride(1), k.stride(1), v.stride(1), q.size(1), length,
          static_cast<T>(scale)};
}

void check_bounds(at::IntArrayRef bounds, int64_t n) {
  TORCH_CHECK(bounds.size() >= 2 && bounds.front() == 0 && bounds.back() == n, "bounds must run from 0 to ", n);
  for (size_t m = 1; m < bounds.size(); ++m) TORCH_CHECK(bounds[m] > bounds[m - 1], "every clip needs a row");
}

at::Tensor linear_attention_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                    at::IntArrayRef bounds, double scale, double eps) {
  check_matrices(q, "q", q);
  check_matrices(k, "k", q);
  check_matrices(v, "v", q);
  const int64_t groups = q.size(0), d = q.size(1), n = q.size(2), clips = static_cast<int64_t>(bounds.size()) - 1;
  check_bounds(bounds, n);
  auto out = at::empty({groups, d, n}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "linear_attention_forward", [&] {
    at::parallel_for(0, groups * clips, 1, [&](int64_t first, int64_t last) {
      std::vector<scalar_t> u(d * d), z(d), den, qp, kp;
      for (int64_t task = first; task < last; ++task) {
        const int64_t g = task / clips, m = task % clips, t0 = bounds[m], length = bounds[m + 1] - t0;
        const auto seg = segment_of<scalar_t>(q, k, v, g, t0, length, scale);
        den.resize(length);
        qp.resize(d * length);
        kp.resize(d * length);
        seg.feature_map(seg.q, seg.qs, qp.data());
        seg.feature_map(seg.k, seg.ks, kp.data());
        seg.sums(kp.data(), u.data(), z.data());
        scalar_t* og = out.data_ptr<scalar_t>() + g * d * n + t0;
        seg.rows(qp.data(), u.data(), z.data(), static_cast<scalar_t>(eps), den.data(), og, n);
        for (int64_t t = 0; t < length; ++t) den[t] = scalar_t(1) / den[t];
        for (int64_t c = 0; c < d; ++c)
          for (int64_t t = 0; t < length; ++t) og[c * n + t] *= den[t];
      }
    });
  });
  return out;
}

// Buffers of one thread's linear-attention backward tasks, reused from task to task.
template <typename T>
struct BackwardBuffers {
  std::vector<T> u, z, grad_u, grad_z, den, grad_den, num, grad_num, qp, kp;
};

// The gradients of one (g, clip) task, written into grad_q, grad_k, grad_v at the segment's rows (stride n).
// U, Z and the normaliser are recomputed from the projections instead of being kept from the forward pass.
template <typename T>
void linear_backward_task(const Segment<T>& seg, const T* go, int64_t n, T eps, T* grad_q, T* grad_k, T* grad_v,
                          BackwardBuffers<T>& b) {
  const int64_t d = seg.d, length = seg.length;
  const T s = seg.scale;
  b.u.resize(d * d), b.z.resize(d), b.grad_u.resize(d * d), b.grad_z.resize(d);
  b.qp.resize(d * length), b.kp.resize(d * length), b.den.resize(length), b.num.resize(d * length);
  b.grad_num.resize(d * length), b.grad_den.assign(length, 0);
  seg.feature_map(seg.q, seg.qs, b.qp.data());
  seg.feature_map(seg.k, seg.ks, b.kp.data());
  seg.sums(b.kp.data(), b.u.data(), b.z.data());
  seg.rows(b.qp.data(), b.u.data(), b.z.data(), eps, b.den.data(), b.num.data(), length);
  T* __restrict__ inverse = b.den.data();
  T* __restrict__ gd = b.grad_den.data();
  for (int64_t t = 0; t < length; ++t) inverse[t] = T(1) / inverse[t];
  // out = num / den: grad_num = G / den, grad_den = -sum_c G_c num_c / den^2
  for (int64_t c = 0; c < d; ++c) {
    const T* __restrict__ goc = go + c * n;
    const T* __restrict__ numc = b.num.data() + c * length;
    T* __restrict__ gnc = b.grad_num.data() + c * length;
    for (int64_t t = 0; t < length; ++t) {
      const T gn = goc[t] * inverse[t];
      gnc[t] = gn;
      gd[t] -= gn * numc[t] * inverse[t];
    }
  }
  // grad_phi(q)_t = U grad_num_t + Z grad_den_t; grad_U = sum_t phi(q)_t grad_num_t^T; grad_Z likewise;
  // then through phi: d phi(s x) / dx = s where s x > 0, s phi(s x) elsewhere
  for (int64_t a = 0; a < d; ++a) {
    const T* __restrict__ qa = b.qp.data() + a * length;
    T* __restrict__ gqa = grad_q + a * n;
    const T za = b.z[a];
    T total = 0;
#pragma omp simd reduction(+ : total)
    for (int64_t t = 0; t < length; ++t) {
      gqa[t] = za * gd[t];
      total += qa[t] * gd[t];
    }
    b.grad_z[a] = total;
    for (int64_t c = 0; c < d; ++c) {
      const T weight = b.u[a * d + c];
      const T* __restrict__ gn = b.grad_num.data() + c * length;
      T sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t t = 0; t < length; ++t) {
        gqa[t] += weight * gn[t];
        sum += qa[t] * gn[t];
      }
      b.grad_u[a * d + c] = sum;
    }
    const T* __restrict__ raw = seg.q + a * seg.qs;
    for (int64_t t = 0; t < length; ++t) gqa[t] *= raw[t] * s > 0 ? s : s * qa[t];
  }
  // grad_phi(k)_t = grad_U v_t + grad_Z; grad_v_t = grad_U^T phi(k)_t
  for (int64_t a = 0; a < d; ++a) {
    T* __restrict__ gka = grad_k + a * n;
    T* __restrict__ gva = grad_v + a * n;
    const T gza = b.grad_z[a];
    for (int64_t t = 0; t < length; ++t) {
      gka[t] = gza;
      gva[t] = 0;
    }
    for (int64_t c = 0; c < d; ++c) {
      const T to_k = b.grad_u[a * d + c], to_v = b.grad_u[c * d + a];
      const T* __restrict__ vc = seg.v + c * seg.vs;
      const T* __restrict__ kc = b.kp.data() + c * length;
      for (int64_t t = 0; t < length; ++t) {
        gka[t] += to_k * vc[t];
        gva[t] += to_v * kc[t];
      }
    }
    const T* __restrict__ raw = seg.k + a * seg.ks;
    const T* __restrict__ ka = b.kp.data() + a * length;
    for (int64_t t = 0; t < length; ++t) gka[t] *= raw[t] * s > 0 ? s : s * ka[t];
  }
}

// The gradients of q, k and v as one (G, 3, d, N) tensor, as the sparse attention's.
at::Tensor linear_attention_backward(
    const at::Tensor& grad_out_in, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    at::IntArrayRef bounds, double scale, double eps) {
  const int64_t groups = q.size(0), d = q.size(1), n = q.size(2), clips = static_cast<int64_t>(bounds.size()) - 1;
  auto grad_out = grad_out_in.contiguous();
  auto grad = at::empty({groups, 3, d, n}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "linear_attention_backward", [&] {
    at::parallel_for(0, groups * clips, 1, [&](int64_t first, int64_t last) {
      BackwardBuffers<scalar_t> buffers;
      for (int64_t task = first; task < last; ++task) {
        const int64_t g = task / clips, m = task % clips, t0 = bounds[m], length = bounds[m + 1] - t0;
        scalar_t* gq = grad.data_ptr<scalar_t>() + g * 3 * d * n + t0;  // q's rows; k's and v's d n further
        linear_backward_task<scalar_t>(segment_of<scalar_t>(q, k, v, g, t0, length, scale),
                                       grad_out.data_ptr<scalar_t>() + g * d * n + t0, n, static_cast<scalar_t>(eps),
                                       gq, gq + d * n, gq + 2 * d * n, buffers);
      }
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

}  // namespace

TORCH_LIBRARY(star_fused, library) {
  library.def("sparse_attention_forward(Tensor q, Tensor k, Tensor v, Tensor rowptr, Tensor keys, Tensor? keep, "
              "float scale, bool weights) -> (Tensor, Tensor)");
  library.def("sparse_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor alpha, "
              "Tensor rowptr, Tensor keys, Tensor? keep, float scale) -> Tensor");
  // no tensor argument, hence no device to dispatch on: one kernel for every call
  library.def("keep_mask(int[] shape, float p, int seed, ScalarType dtype) -> Tensor", &keep_mask);
  library.def("apply_keep_mask(Tensor x, float p, int seed) -> Tensor");
  library.def("linear_attention_forward(Tensor q, Tensor k, Tensor v, int[] bounds, float scale, float eps) -> Tensor");
  library.def("linear_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, int[] bounds, "
              "float scale, float eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(star_fused, CPU, library) {
  library.impl("sparse_attention_forward", &sparse_attention_forward);
  library.impl("sparse_attention_backward", &sparse_attention_backward);
  library.impl("linear_attention_forward", &linear_attention_forward);
  library.impl("linear_attention_backward", &linear_attention_backward);
  library.impl("apply_keep_mask", &apply_keep_mask);
}
