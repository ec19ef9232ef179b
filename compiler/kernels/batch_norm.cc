// netc's BatchNorm kernels, called from XLA programs through the XLA FFI (jax.ffi): the batch
// statistics (BatchNormStats), and the backward of BatchNorm + Scale (+ clamp); activations in
// float32 or bfloat16, computed in float32. Built with onednn_conv.cc into one library by
// compiler/kernels/onednn.py; used by compiler/layers/norm.py batch_norm_affine.
//
// The chain y = clamp(gamma·(x − mean)·inv + beta, lo, hi) per channel (axis 1 of N×C×spatial),
// with mean and inv = 1/sqrt(var + eps) the batch's statistics (lo, hi: ±inf for no bound),
// has the gradient
//
//   g = dy where lo < z < hi,  dbeta = Σ g,  dgamma = Σ g·x̂,
//   dx = gamma·inv · (g − dbeta/M − x̂·dgamma/M)            (x̂ = (x − mean)·inv, M = N·spatial)
//
// XLA computes the two sums with YNNPACK reductions, which take materialised operands: the
// masked g and x̂ are written out and read back. Here each channel is two passes over its
// values (the sums: each row's in SIMD lanes, rows added in double; then dx), x̂ and the mask recomputed from x on the fly. Channels
// are spread over OpenMP threads (GNU OpenMP, as oneDNN's).
#include <algorithm>
#include <cstdint>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// dy where the clamp passed, else +0: a bit mask, not a branch or a product (a branch keeps the
// loop from vectorising — random masks ran it 10x slower — and 0·inf would be NaN)
inline float Masked(float dy, bool pass) {
  return __builtin_bit_cast(float, __builtin_bit_cast(uint32_t, dy) & (0u - uint32_t(pass)));
}

// The activations (x, dy, dx) are float32 or bfloat16 (`precision: bfloat16`: read as they are,
// computed in float32, dx rounded to nearest even); statistics and parameters are float32.
struct Bf16 {
  uint16_t bits;
};
inline float F(float v) { return v; }
inline float F(Bf16 v) { return __builtin_bit_cast(float, uint32_t(v.bits) << 16); }
template <typename T>
inline T To(float v);
template <>
inline float To<float>(float v) {
  return v;
}
template <>
inline Bf16 To<Bf16>(float v) {
  const uint32_t u = __builtin_bit_cast(uint32_t, v);
  const uint32_t nan = (u & 0x7fffffffu) > 0x7f800000u;
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return Bf16{static_cast<uint16_t>(nan ? ((u >> 16) | 0x40u) : rounded)};
}

// x as N × C × S (S: the spatial axes' product); false for fewer than 2 axes.
template <typename D>
bool Layout(const D& d, int64_t& n, int64_t& c, int64_t& s) {
  if (d.size() < 2) return false;
  n = d[0], c = d[1], s = 1;
  for (size_t i = 2; i < d.size(); ++i) s *= d[i];
  return true;
}

template <typename T>
ffi::Error BatchNormBackwardT(ffi::AnyBuffer dy, ffi::AnyBuffer x,
                             ffi::Buffer<ffi::F32> mean, ffi::Buffer<ffi::F32> inv,
                             ffi::Buffer<ffi::F32> gamma, ffi::Buffer<ffi::F32> beta,
                             ffi::Result<ffi::AnyBuffer> dx, ffi::ResultBuffer<ffi::F32> dgamma,
                             ffi::ResultBuffer<ffi::F32> dbeta, float lo, float hi) {
  int64_t n_, c_, s_;
  if (!Layout(x.dimensions(), n_, c_, s_)) {
    return ffi::Error::InvalidArgument("batch_norm: x needs 2 or more axes");
  }
  const T* X = static_cast<const T*>(x.untyped_data());
  const T* DY = static_cast<const T*>(dy.untyped_data());
  T* DX = static_cast<T*>(dx->untyped_data());
  const float *MU = mean.typed_data(), *IV = inv.typed_data();
  const float *GA = gamma.typed_data(), *BE = beta.typed_data();
  float *DG = dgamma->typed_data(), *DB = dbeta->typed_data();
  const double m = static_cast<double>(n_) * static_cast<double>(s_);
  const bool threads = n_ * c_ * s_ >= (1 << 15);  // small tensors: no team to wake

#pragma omp parallel for schedule(static) if (threads)
  for (int64_t c = 0; c < c_; ++c) {
    const float mu = MU[c], iv = IV[c], ga = GA[c], be = BE[c];
    double sum_g = 0.0, sum_gx = 0.0;
    for (int64_t n = 0; n < n_; ++n) {
      const T* xp = X + (n * c_ + c) * s_;
      const T* dp = DY + (n * c_ + c) * s_;
      float row_g = 0.0f, row_gx = 0.0f;  // one row's sums in SIMD lanes, then into double
#pragma omp simd reduction(+ : row_g, row_gx)
      for (int64_t s = 0; s < s_; ++s) {
        const float xh = (F(xp[s]) - mu) * iv;
        const float z = xh * ga + be;
        const float g = Masked(F(dp[s]), (z > lo) & (z < hi));
        row_g += g;
        row_gx += g * xh;
      }
      sum_g += row_g;
      sum_gx += row_gx;
    }
    DB[c] = static_cast<float>(sum_g);
    DG[c] = static_cast<float>(sum_gx);
    const float k = ga * iv;
    const float a = static_cast<float>(sum_g / m), b = static_cast<float>(sum_gx / m);
    for (int64_t n = 0; n < n_; ++n) {
      const T* xp = X + (n * c_ + c) * s_;
      const T* dp = DY + (n * c_ + c) * s_;
      T* op = DX + (n * c_ + c) * s_;
#pragma omp simd
      for (int64_t s = 0; s < s_; ++s) {
        const float xh = (F(xp[s]) - mu) * iv;
        const float z = xh * ga + be;
        const float g = Masked(F(dp[s]), (z > lo) & (z < hi));
        op[s] = To<T>(k * (g - a - xh * b));
      }
    }
  }
  return ffi::Error::Success();
}

// The batch's mean and biased variance per channel in one pass over x: each row (one sample's
// channel, contiguous) is summed, then its squared deviations from its own mean while it is in
// cache, both in double; rows are combined with Chan et al.'s pairwise update, so a large mean
// costs no precision (as a Σx² − M·mean² formula would).
template <typename T>
ffi::Error BatchNormStatsT(ffi::AnyBuffer x, ffi::ResultBuffer<ffi::F32> mean,
                          ffi::ResultBuffer<ffi::F32> var) {
  int64_t n_, c_, s_;
  if (!Layout(x.dimensions(), n_, c_, s_)) {
    return ffi::Error::InvalidArgument("batch_norm: x needs 2 or more axes");
  }
  const T* X = static_cast<const T*>(x.untyped_data());
  float *MU = mean->typed_data(), *VA = var->typed_data();
  const bool threads = n_ * c_ * s_ >= (1 << 15);

#pragma omp parallel for schedule(static) if (threads)
  for (int64_t c = 0; c < c_; ++c) {
    double count = 0.0, mu = 0.0, m2 = 0.0;
    for (int64_t n = 0; n < n_; ++n) {
      const T* xp = X + (n * c_ + c) * s_;
      double sum = 0.0;
#pragma omp simd reduction(+ : sum)
      for (int64_t s = 0; s < s_; ++s) sum += F(xp[s]);
      const double row_mu = sum / static_cast<double>(s_);
      double row_m2 = 0.0;
#pragma omp simd reduction(+ : row_m2)
      for (int64_t s = 0; s < s_; ++s) {
        const double dev = F(xp[s]) - row_mu;
        row_m2 += dev * dev;
      }
      const double rows = static_cast<double>(s_), total = count + rows;
      const double delta = row_mu - mu;
      mu += delta * rows / total;
      m2 += row_m2 + delta * delta * count * rows / total;
      count = total;
    }
    MU[c] = static_cast<float>(mu);
    VA[c] = static_cast<float>(m2 / count);
  }
  return ffi::Error::Success();
}

// Channels-last x (N×spatial×C in memory: R = N·spatial rows of C channels, contiguous; what the
// convolutions exchange by default, compiler/kernels/onednn.py channels_last): the rows are cut
// into blocks of kRows, each block's per-channel sums run in float SIMD lanes across the channels
// in one pass (statistics: of x less the block's first row, so no mean is lost to cancellation;
// backward: of g and g·x̂), and blocks are combined per channel in block order (double; the
// statistics by Chan et al.'s update), so the result does not depend on the number of threads.
constexpr int64_t kRows = 64;

template <typename D>
bool RowsLast(const D& d, int64_t& r, int64_t& c) {
  if (d.size() < 2) return false;
  c = d[1], r = d[0];
  for (size_t i = 2; i < d.size(); ++i) r *= d[i];
  return true;
}

// Each block of kRows rows (the last may be shorter) through body(r0, r1, acc0, acc1), which
// adds into two float accumulators of C values zeroed for it, then finish(r0, r1, acc0, acc1,
// out0, out1), which writes the block's two results (C doubles each, at out0/out1 = block · C);
// blocks are spread over OpenMP threads, for the caller to combine in block order.
template <typename Body, typename Finish>
void EachBlock(int64_t r_, int64_t c_, std::vector<double>& out0, std::vector<double>& out1,
               Body body, Finish finish) {
  const int64_t blocks = (r_ + kRows - 1) / kRows;
  out0.assign(blocks * c_, 0.0);
  out1.assign(blocks * c_, 0.0);
#pragma omp parallel if (r_ * c_ >= (1 << 15))
  {
    std::vector<float> a0(c_), a1(c_);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t r0 = b * kRows, r1 = std::min(r_, (b + 1) * kRows);
      std::fill(a0.begin(), a0.end(), 0.0f);
      std::fill(a1.begin(), a1.end(), 0.0f);
      body(r0, r1, a0.data(), a1.data());
      finish(r0, r1, a0.data(), a1.data(), out0.data() + b * c_, out1.data() + b * c_);
    }
  }
}

template <typename T>
ffi::Error BatchNormStatsLastT(ffi::AnyBuffer x, ffi::ResultBuffer<ffi::F32> mean,
                              ffi::ResultBuffer<ffi::F32> var) {
  int64_t r_, c_;
  if (!RowsLast(x.dimensions(), r_, c_)) {
    return ffi::Error::InvalidArgument("batch_norm: x needs 2 or more axes");
  }
  const T* X = static_cast<const T*>(x.untyped_data());
  float *MU = mean->typed_data(), *VA = var->typed_data();
  const int64_t blocks = (r_ + kRows - 1) / kRows;
  const bool threads = r_ * c_ >= (1 << 15);
  std::vector<double> bmu, bm2;
  // one pass per block, in float SIMD lanes: the sums of d = x − k and d² with k the block's
  // first row (a value of the same channel, so d is of the spread's size whatever the mean);
  // then in double the block's mean k + Σd/n and squared deviations Σd² − (Σd)²/n
  EachBlock(
      r_, c_, bmu, bm2,
      [&](int64_t r0, int64_t r1, float* s1, float* s2) {
        const T* kp = X + r0 * c_;
        for (int64_t r = r0 + 1; r < r1; ++r) {
          const T* xp = X + r * c_;
#pragma omp simd
          for (int64_t c = 0; c < c_; ++c) {
            const float d = F(xp[c]) - F(kp[c]);
            s1[c] += d;
            s2[c] += d * d;
          }
        }
      },
      [&](int64_t r0, int64_t r1, const float* s1, const float* s2, double* mu, double* m2) {
        const T* kp = X + r0 * c_;
        const double n = static_cast<double>(r1 - r0);
        for (int64_t c = 0; c < c_; ++c) {
          mu[c] = F(kp[c]) + s1[c] / n;
          m2[c] = std::max(0.0, static_cast<double>(s2[c]) - double(s1[c]) * s1[c] / n);
        }
      });
#pragma omp parallel for schedule(static) if (threads)
  for (int64_t c = 0; c < c_; ++c) {
    double count = 0.0, mu = 0.0, m2 = 0.0;
    for (int64_t b = 0; b < blocks; ++b) {
      const double rows = static_cast<double>(std::min(r_, (b + 1) * kRows) - b * kRows);
      const double total = count + rows, delta = bmu[b * c_ + c] - mu;
      mu += delta * rows / total;
      m2 += bm2[b * c_ + c] + delta * delta * count * rows / total;
      count = total;
    }
    MU[c] = static_cast<float>(mu);
    VA[c] = static_cast<float>(m2 / count);
  }
  return ffi::Error::Success();
}

template <typename T>
ffi::Error BatchNormBackwardLastT(ffi::AnyBuffer dy, ffi::AnyBuffer x,
                                 ffi::Buffer<ffi::F32> mean, ffi::Buffer<ffi::F32> inv,
                                 ffi::Buffer<ffi::F32> gamma, ffi::Buffer<ffi::F32> beta,
                                 ffi::Result<ffi::AnyBuffer> dx,
                                 ffi::ResultBuffer<ffi::F32> dgamma,
                                 ffi::ResultBuffer<ffi::F32> dbeta, float lo, float hi) {
  int64_t r_, c_;
  if (!RowsLast(x.dimensions(), r_, c_)) {
    return ffi::Error::InvalidArgument("batch_norm: x needs 2 or more axes");
  }
  const T* X = static_cast<const T*>(x.untyped_data());
  const T* DY = static_cast<const T*>(dy.untyped_data());
  T* DX = static_cast<T*>(dx->untyped_data());
  const float *MU = mean.typed_data(), *IV = inv.typed_data();
  const float *GA = gamma.typed_data(), *BE = beta.typed_data();
  float *DG = dgamma->typed_data(), *DB = dbeta->typed_data();
  const int64_t blocks = (r_ + kRows - 1) / kRows;
  std::vector<float> k(c_), a(c_), bb(c_);
  const double m = static_cast<double>(r_);
  const bool threads = r_ * c_ >= (1 << 15);
  std::vector<double> bg, bgx;
  EachBlock(
      r_, c_, bg, bgx,
      [&](int64_t r0, int64_t r1, float* sg, float* sgx) {
        for (int64_t r = r0; r < r1; ++r) {
          const T* xp = X + r * c_;
          const T* dp = DY + r * c_;
#pragma omp simd
          for (int64_t c = 0; c < c_; ++c) {
            const float xh = (F(xp[c]) - MU[c]) * IV[c];
            const float z = xh * GA[c] + BE[c];
            const float g = Masked(F(dp[c]), (z > lo) & (z < hi));
            sg[c] += g;
            sgx[c] += g * xh;
          }
        }
      },
      [&](int64_t, int64_t, const float* sg, const float* sgx, double* og, double* ogx) {
        for (int64_t c = 0; c < c_; ++c) og[c] = sg[c], ogx[c] = sgx[c];
      });
  for (int64_t c = 0; c < c_; ++c) {
    double sum_g = 0.0, sum_gx = 0.0;
    for (int64_t b = 0; b < blocks; ++b) sum_g += bg[b * c_ + c], sum_gx += bgx[b * c_ + c];
    DB[c] = static_cast<float>(sum_g);
    DG[c] = static_cast<float>(sum_gx);
    k[c] = GA[c] * IV[c];
    a[c] = static_cast<float>(sum_g / m);
    bb[c] = static_cast<float>(sum_gx / m);
  }
#pragma omp parallel for schedule(static) if (threads)
  for (int64_t r = 0; r < r_; ++r) {
    const T* xp = X + r * c_;
    const T* dp = DY + r * c_;
    T* op = DX + r * c_;
#pragma omp simd
    for (int64_t c = 0; c < c_; ++c) {
      const float xh = (F(xp[c]) - MU[c]) * IV[c];
      const float z = xh * GA[c] + BE[c];
      const float g = Masked(F(dp[c]), (z > lo) & (z < hi));
      op[c] = To<T>(k[c] * (g - a[c] - xh * bb[c]));
    }
  }
  return ffi::Error::Success();
}

// The handlers: float32 or bfloat16 activations, all alike.
template <typename... B>
bool Same(ffi::DataType t, const B&... b) {
  return ((b.element_type() == t) && ...);
}
const char kTypes[] = "batch_norm: x, dy and dx must all be float32 or all bfloat16";

ffi::Error BatchNormStats(ffi::AnyBuffer x, ffi::ResultBuffer<ffi::F32> mean,
                          ffi::ResultBuffer<ffi::F32> var) {
  if (Same(ffi::DataType::F32, x)) return BatchNormStatsT<float>(x, mean, var);
  if (Same(ffi::DataType::BF16, x)) return BatchNormStatsT<Bf16>(x, mean, var);
  return ffi::Error::InvalidArgument(kTypes);
}

ffi::Error BatchNormStatsLast(ffi::AnyBuffer x, ffi::ResultBuffer<ffi::F32> mean,
                              ffi::ResultBuffer<ffi::F32> var) {
  if (Same(ffi::DataType::F32, x)) return BatchNormStatsLastT<float>(x, mean, var);
  if (Same(ffi::DataType::BF16, x)) return BatchNormStatsLastT<Bf16>(x, mean, var);
  return ffi::Error::InvalidArgument(kTypes);
}

#define NETC_BN_BACKWARD(Name)                                                                \
  ffi::Error Name(ffi::AnyBuffer dy, ffi::AnyBuffer x, ffi::Buffer<ffi::F32> mean,            \
                  ffi::Buffer<ffi::F32> inv, ffi::Buffer<ffi::F32> gamma,                     \
                  ffi::Buffer<ffi::F32> beta, ffi::Result<ffi::AnyBuffer> dx,                 \
                  ffi::ResultBuffer<ffi::F32> dgamma, ffi::ResultBuffer<ffi::F32> dbeta,      \
                  float lo, float hi) {                                                       \
    if (Same(ffi::DataType::F32, dy, x, *dx))                                                 \
      return Name##T<float>(dy, x, mean, inv, gamma, beta, dx, dgamma, dbeta, lo, hi);        \
    if (Same(ffi::DataType::BF16, dy, x, *dx))                                                \
      return Name##T<Bf16>(dy, x, mean, inv, gamma, beta, dx, dgamma, dbeta, lo, hi);         \
    return ffi::Error::InvalidArgument(kTypes);                                               \
  }
NETC_BN_BACKWARD(BatchNormBackward)
NETC_BN_BACKWARD(BatchNormBackwardLast)

}  // namespace

// x (N×C×spatial, or channels-last for the *Last handlers) → mean, biased variance (C)
#define NETC_BN_STATS_BIND                 \
  ffi::Ffi::Bind()                         \
      .Arg<ffi::AnyBuffer>()               \
      .Ret<ffi::Buffer<ffi::F32>>()        \
      .Ret<ffi::Buffer<ffi::F32>>()

// dy, x, mean, inv = 1/sqrt(var + eps), gamma, beta (C each) → dx, dgamma, dbeta; lo, hi
#define NETC_BN_BACKWARD_BIND              \
  ffi::Ffi::Bind()                         \
      .Arg<ffi::AnyBuffer>()               \
      .Arg<ffi::AnyBuffer>()               \
      .Arg<ffi::Buffer<ffi::F32>>()        \
      .Arg<ffi::Buffer<ffi::F32>>()        \
      .Arg<ffi::Buffer<ffi::F32>>()        \
      .Arg<ffi::Buffer<ffi::F32>>()        \
      .Ret<ffi::AnyBuffer>()               \
      .Ret<ffi::Buffer<ffi::F32>>()        \
      .Ret<ffi::Buffer<ffi::F32>>()        \
      .Attr<float>("lo")                   \
      .Attr<float>("hi")

XLA_FFI_DEFINE_HANDLER_SYMBOL(NetcBatchNormStats, BatchNormStats, NETC_BN_STATS_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(NetcBatchNormStatsLast, BatchNormStatsLast, NETC_BN_STATS_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(NetcBatchNormBackward, BatchNormBackward, NETC_BN_BACKWARD_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(NetcBatchNormBackwardLast, BatchNormBackwardLast,
                              NETC_BN_BACKWARD_BIND);
