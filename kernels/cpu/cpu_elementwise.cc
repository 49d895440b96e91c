// Elementwise kernels, embeddings, learned positions and GELU for the CPU backend (see cpu_ops.h).
#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/cpu_parallel.h"

namespace loom::cpu {

template <typename T>
void add(T* out, const T* a, const T* b, int64_t n) {
#pragma omp parallel for schedule(static) if (n > kParallelMinWork)
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

template <typename T>
void accumulate(T* dst, const T* src, int64_t n) {
#pragma omp parallel for schedule(static) if (n > kParallelMinWork)
  for (int64_t i = 0; i < n; ++i) dst[i] += src[i];
}

template <typename T>
void scale(T* x, double s, int64_t n) {
  const T factor = static_cast<T>(s);
#pragma omp parallel for schedule(static) if (n > kParallelMinWork)
  for (int64_t i = 0; i < n; ++i) x[i] *= factor;
}

namespace {
template <DType D, DType S>
void convert_typed(void* dst, const void* src, int64_t n) {
  auto* out = static_cast<typename Elem<D>::type*>(dst);
  const auto* in = static_cast<const typename Elem<S>::type*>(src);
#pragma omp parallel for schedule(static) if (n > kParallelMinWork)
  for (int64_t i = 0; i < n; ++i) out[i] = Elem<D>::store(Elem<S>::load(in[i]));
}

template <DType D>
void convert_from(void* dst, const void* src, DType src_type, int64_t n) {
  switch (src_type) {
    case DType::F32:
      return convert_typed<D, DType::F32>(dst, src, n);
    case DType::F64:
      return convert_typed<D, DType::F64>(dst, src, n);
    case DType::BF16:
      return convert_typed<D, DType::BF16>(dst, src, n);
    case DType::F16:
      return convert_typed<D, DType::F16>(dst, src, n);
    default:
      break;  // the backend admits float types only
  }
}

// Σ x² over [begin, end) in double, in index order.
template <DType D>
double sum_squares_range(const typename Elem<D>::type* x, int64_t begin, int64_t end) {
  double sum = 0;
  for (int64_t i = begin; i < end; ++i) {
    const double v = Elem<D>::load(x[i]);
    sum += v * v;
  }
  return sum;
}

// Chunks of fixed size, partial sums added in chunk order: the result does not depend on the thread count.
template <DType D>
double sum_squares_typed(const void* data, int64_t n) {
  constexpr int64_t kChunk = 1 << 14;
  const auto* x = static_cast<const typename Elem<D>::type*>(data);
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  if (chunks <= 1) return sum_squares_range<D>(x, 0, n);
  std::vector<double> partial(static_cast<size_t>(chunks));
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < chunks; ++c) partial[c] = sum_squares_range<D>(x, c * kChunk, std::min(n, (c + 1) * kChunk));
  double sum = 0;
  for (int64_t c = 0; c < chunks; ++c) sum += partial[c];
  return sum;
}
}  // namespace

void convert(void* dst, DType dst_type, const void* src, DType src_type, int64_t n) {
  switch (dst_type) {
    case DType::F32:
      return convert_from<DType::F32>(dst, src, src_type, n);
    case DType::F64:
      return convert_from<DType::F64>(dst, src, src_type, n);
    case DType::BF16:
      return convert_from<DType::BF16>(dst, src, src_type, n);
    case DType::F16:
      return convert_from<DType::F16>(dst, src, src_type, n);
    default:
      break;
  }
}

double sum_squares(const void* x, DType type, int64_t n) {
  switch (type) {
    case DType::F32:
      return sum_squares_typed<DType::F32>(x, n);
    case DType::F64:
      return sum_squares_typed<DType::F64>(x, n);
    case DType::BF16:
      return sum_squares_typed<DType::BF16>(x, n);
    case DType::F16:
      return sum_squares_typed<DType::F16>(x, n);
    default:
      return 0;
  }
}

template <typename T>
void embedding_forward(T* out, const int32_t* ids, const T* table, int64_t N, int64_t C) {
#pragma omp parallel for schedule(static) if (N * C > kParallelMinWork)
  for (int64_t n = 0; n < N; ++n) {
    const T* row = table + static_cast<int64_t>(ids[n]) * C;
    for (int64_t c = 0; c < C; ++c) out[n * C + c] = row[c];
  }
}

// Split over column blocks so that each table element is summed over n in ascending order by one thread.
template <typename T>
void embedding_backward(T* dtable, const T* dout, const int32_t* ids, int64_t N, int64_t C) {
#pragma omp parallel for schedule(static) if (N * C > kParallelMinWork)
  for (int64_t c0 = 0; c0 < C; c0 += kColumnBlock) {
    const int64_t c1 = std::min(C, c0 + kColumnBlock);
    for (int64_t n = 0; n < N; ++n) {
      T* row = dtable + static_cast<int64_t>(ids[n]) * C;
      for (int64_t c = c0; c < c1; ++c) row[c] += dout[n * C + c];
    }
  }
}

template <typename T>
void add_position_forward(T* x, const T* pos, int64_t B, int64_t Tn, int64_t C) {
#pragma omp parallel for schedule(static) if (B * Tn * C > kParallelMinWork)
  for (int64_t bt = 0; bt < B * Tn; ++bt) {
    const T* p = pos + (bt % Tn) * C;
    for (int64_t c = 0; c < C; ++c) x[bt * C + c] += p[c];
  }
}

template <typename T>
void add_position_backward(T* dpos, const T* dx, int64_t B, int64_t Tn, int64_t C) {
#pragma omp parallel for schedule(static) if (B * Tn * C > kParallelMinWork)
  for (int64_t t = 0; t < Tn; ++t) {
    for (int64_t b = 0; b < B; ++b) {
      const T* g = dx + (b * Tn + t) * C;
      for (int64_t c = 0; c < C; ++c) dpos[t * C + c] += g[c];
    }
  }
}

namespace {
constexpr double kSqrt2OverPi = 0.79788456080286535588;  // √(2/π)
constexpr double kInvSqrt2 = 0.70710678118654752440;     // 1/√2
constexpr double kInvSqrt2Pi = 0.39894228040143267794;   // 1/√(2π)
constexpr double kGeluCubic = 0.044715;
}  // namespace

template <typename T>
void gelu_forward(T* out, const T* x, int64_t n, bool tanh_approx) {
  if (tanh_approx) {
#pragma omp parallel for schedule(static) if (n > kParallelMinWork)
    for (int64_t i = 0; i < n; ++i) {
      const T v = x[i];
      const T u = T(kSqrt2OverPi) * (v + T(kGeluCubic) * v * v * v);
      out[i] = T(0.5) * v * (T(1) + std::tanh(u));
    }
  } else {
#pragma omp parallel for schedule(static) if (n > kParallelMinWork)
    for (int64_t i = 0; i < n; ++i) {
      const T v = x[i];
      out[i] = T(0.5) * v * (T(1) + std::erf(v * T(kInvSqrt2)));
    }
  }
}

// tanh form: gelu'(x) = ½(1 + tanh u) + ½x(1 - tanh² u)·√(2/π)(1 + 3·0.044715x²)
// erf form:  gelu'(x) = Φ(x) + x·φ(x) = ½(1 + erf(x/√2)) + x·exp(-x²/2)/√(2π)
template <typename T>
void gelu_backward(T* dx, const T* dout, const T* x, int64_t n, bool tanh_approx) {
  if (tanh_approx) {
#pragma omp parallel for schedule(static) if (n > kParallelMinWork)
    for (int64_t i = 0; i < n; ++i) {
      const T v = x[i];
      const T u = T(kSqrt2OverPi) * (v + T(kGeluCubic) * v * v * v);
      const T th = std::tanh(u);
      const T du = T(kSqrt2OverPi) * (T(1) + T(3 * kGeluCubic) * v * v);
      dx[i] = dout[i] * (T(0.5) * (T(1) + th) + T(0.5) * v * (T(1) - th * th) * du);
    }
  } else {
#pragma omp parallel for schedule(static) if (n > kParallelMinWork)
    for (int64_t i = 0; i < n; ++i) {
      const T v = x[i];
      const T cdf = T(0.5) * (T(1) + std::erf(v * T(kInvSqrt2)));
      const T pdf = T(kInvSqrt2Pi) * std::exp(T(-0.5) * v * v);
      dx[i] = dout[i] * (cdf + v * pdf);
    }
  }
}

#define LOOM_INSTANTIATE(T)                                                            \
  template void add<T>(T*, const T*, const T*, int64_t);                               \
  template void accumulate<T>(T*, const T*, int64_t);                                  \
  template void scale<T>(T*, double, int64_t);                                         \
  template void embedding_forward<T>(T*, const int32_t*, const T*, int64_t, int64_t);  \
  template void embedding_backward<T>(T*, const T*, const int32_t*, int64_t, int64_t); \
  template void add_position_forward<T>(T*, const T*, int64_t, int64_t, int64_t);      \
  template void add_position_backward<T>(T*, const T*, int64_t, int64_t, int64_t);     \
  template void gelu_forward<T>(T*, const T*, int64_t, bool);                          \
  template void gelu_backward<T>(T*, const T*, const T*, int64_t, bool);
LOOM_INSTANTIATE(float)
LOOM_INSTANTIATE(double)
#undef LOOM_INSTANTIATE

}  // namespace loom::cpu
