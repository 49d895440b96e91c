// Elementwise kernels (add, accumulate, scale, convert, GELU, positions); column sums are in cuda_column_sums.cu.
// All are grid-stride loops computing in f32; 64-bit indices so tensors over 2^31 elements work.
#include "kernels/cuda/cuda_ops.cuh"

namespace loom::cuda {

namespace {
constexpr int kThreads = 256;

// out[i] = a[i] + b[i]   (out may alias a, or b when R = T: each element is read before it is written, by one
// thread). R is T, or f32 for a residual stream beside a bf16/f16 branch b. K elements per pack (load_pack).
template <int K, typename R, typename T>
__global__ void add_kernel(R* out, const R* a, const T* b, int64_t packs) {
  LOOM_GRID_STRIDE(i, packs) {
    float va[K], vb[K];
    load_pack<K>(va, a, i);
    load_pack<K>(vb, b, i);
#pragma unroll
    for (int e = 0; e < K; ++e) va[e] += vb[e];
    store_pack<K>(out, i, va);
  }
}

// dst[i] += src[i]
template <int K, typename T>
__global__ void accumulate_kernel(T* dst, const T* src, int64_t packs) {
  LOOM_GRID_STRIDE(i, packs) {
    float vd[K], vs[K];
    load_pack<K>(vd, dst, i);
    load_pack<K>(vs, src, i);
#pragma unroll
    for (int e = 0; e < K; ++e) vd[e] += vs[e];
    store_pack<K>(dst, i, vd);
  }
}

// x[i] *= s
template <typename T>
__global__ void scale_kernel(T* x, float s, int64_t n) {
  LOOM_GRID_STRIDE(i, n) x[i] = from_f32<T>(to_f32(x[i]) * s);
}

// dst[i] = src[i], converted through f32 (round to nearest even into 16-bit formats)
__global__ void convert_kernel(void* dst, Elem dst_elem, const void* src, Elem src_elem, int64_t n) {
  LOOM_GRID_STRIDE(i, n) store_elem(dst, i, dst_elem, load_elem(src, i, src_elem));
}

constexpr float kSqrt2OverPi = 0.7978845608028654f;  // √(2/π)
constexpr float kInvSqrt2 = 0.7071067811865476f;     // 1/√2
constexpr float kInvSqrt2Pi = 0.3989422804014327f;   // 1/√(2π)

// tanh form: gelu(x) = ½x(1 + tanh(u)), u = √(2/π)(x + 0.044715x³)   (GPT-2)
// erf form:  gelu(x) = ½x(1 + erf(x/√2))                              (ViT/DeiT)
__device__ __forceinline__ float gelu_value(float v, bool tanh_approx) {
  return tanh_approx ? 0.5f * v * (1.f + tanhf(kSqrt2OverPi * (v + 0.044715f * v * v * v)))
                     : 0.5f * v * (1.f + erff(v * kInvSqrt2));
}

template <int K, typename T>
__global__ void gelu_forward_kernel(T* out, const T* x, int64_t packs, bool tanh_approx) {
  LOOM_GRID_STRIDE(i, packs) {
    float v[K];
    load_pack<K>(v, x, i);
#pragma unroll
    for (int e = 0; e < K; ++e) v[e] = gelu_value(v[e], tanh_approx);
    store_pack<K>(out, i, v);
  }
}

// tanh form: gelu'(x) = ½(1 + tanh u) + ½x(1 - tanh²u)·√(2/π)(1 + 3·0.044715x²)
// erf form:  gelu'(x) = Φ(x) + x·φ(x) = ½(1 + erf(x/√2)) + x·exp(-x²/2)/√(2π)
__device__ __forceinline__ float gelu_derivative(float v, bool tanh_approx) {
  if (tanh_approx) {
    const float th = tanhf(kSqrt2OverPi * (v + 0.044715f * v * v * v));
    return 0.5f * (1.f + th) + 0.5f * v * (1.f - th * th) * kSqrt2OverPi * (1.f + 3.f * 0.044715f * v * v);
  }
  return 0.5f * (1.f + erff(v * kInvSqrt2)) + v * expf(-0.5f * v * v) * kInvSqrt2Pi;
}

// dx = dout · gelu'(x)   (dx may alias dout)
template <int K, typename T>
__global__ void gelu_backward_kernel(T* dx, const T* dout, const T* x, int64_t packs, bool tanh_approx) {
  LOOM_GRID_STRIDE(i, packs) {
    float v[K], d[K];
    load_pack<K>(v, x, i);
    load_pack<K>(d, dout, i);
#pragma unroll
    for (int e = 0; e < K; ++e) d[e] *= gelu_derivative(v[e], tanh_approx);
    store_pack<K>(dx, i, d);
  }
}

// x[b, t, c] += pos[t, c]   (i runs over B·T·C; the position row is (i / C) mod T)
template <typename T>
__global__ void add_position_kernel(T* x, const T* pos, int64_t TC, int64_t n) {
  LOOM_GRID_STRIDE(i, n) x[i] = from_f32<T>(to_f32(x[i]) + to_f32(pos[i % TC]));
}

// dst[b, dst_start + j, c] (=, or +=) src[b, src_start + j, c]; i runs over B·count·C.
template <typename T>
__global__ void copy_tokens_kernel(T* dst, int64_t Td, int64_t dst_start, const T* src, int64_t Ts,
                                   int64_t src_start, int64_t count, int64_t C, bool accumulate, int64_t n) {
  LOOM_GRID_STRIDE(i, n) {
    const int64_t c = i % C, j = (i / C) % count, b = i / (C * count);
    const int64_t d = (b * Td + dst_start + j) * C + c, s = (b * Ts + src_start + j) * C + c;
    dst[d] = accumulate ? from_f32<T>(to_f32(dst[d]) + to_f32(src[s])) : src[s];
  }
}

}  // namespace

template <typename R, typename T>
void add(R* out, const R* a, const T* b, int64_t n, cudaStream_t stream) {
  const bool aligned = is_aligned16(out) && is_aligned16(a) && is_aligned16(b);
  launch_in_packs<Pack16<T>::kSize>(n, aligned, [&](auto k, int64_t first, int64_t packs) {
    add_kernel<decltype(k)::value><<<grid_for(packs), kThreads, 0, stream>>>(out + first, a + first, b + first, packs);
    LOOM_CUDA_LAUNCHED("add_kernel");
  });
}

template <typename T>
void accumulate(T* dst, const T* src, int64_t n, cudaStream_t stream) {
  launch_in_packs<Pack16<T>::kSize>(n, is_aligned16(dst) && is_aligned16(src), [&](auto k, int64_t first, int64_t packs) {
    accumulate_kernel<decltype(k)::value><<<grid_for(packs), kThreads, 0, stream>>>(dst + first, src + first, packs);
    LOOM_CUDA_LAUNCHED("accumulate_kernel");
  });
}

template <typename T>
void scale(T* x, float s, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  scale_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, s, n);
  LOOM_CUDA_LAUNCHED("scale_kernel");
}

void convert(void* dst, Elem dst_elem, const void* src, Elem src_elem, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  convert_kernel<<<grid_for(n), kThreads, 0, stream>>>(dst, dst_elem, src, src_elem, n);
  LOOM_CUDA_LAUNCHED("convert_kernel");
}

template <typename T>
void gelu_forward(T* out, const T* x, int64_t n, bool tanh_approx, cudaStream_t stream) {
  launch_in_packs<Pack16<T>::kSize>(n, is_aligned16(out) && is_aligned16(x), [&](auto k, int64_t first, int64_t packs) {
    gelu_forward_kernel<decltype(k)::value><<<grid_for(packs), kThreads, 0, stream>>>(out + first, x + first, packs, tanh_approx);
    LOOM_CUDA_LAUNCHED("gelu_forward_kernel");
  });
}

template <typename T>
void gelu_backward(T* dx, const T* dout, const T* x, int64_t n, bool tanh_approx, cudaStream_t stream) {
  const bool aligned = is_aligned16(dx) && is_aligned16(dout) && is_aligned16(x);
  launch_in_packs<Pack16<T>::kSize>(n, aligned, [&](auto k, int64_t first, int64_t packs) {
    gelu_backward_kernel<decltype(k)::value><<<grid_for(packs), kThreads, 0, stream>>>(dx + first, dout + first, x + first, packs,
                                                                            tanh_approx);
    LOOM_CUDA_LAUNCHED("gelu_backward_kernel");
  });
}

template <typename T>
void add_position_forward(T* x, const T* pos, int64_t B, int64_t Tn, int64_t C, cudaStream_t stream) {
  const int64_t n = B * Tn * C;
  if (n == 0) return;
  add_position_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, pos, Tn * C, n);
  LOOM_CUDA_LAUNCHED("add_position_kernel");
}

template <typename T>
void copy_tokens(T* dst, int64_t Td, int64_t dst_start, const T* src, int64_t Ts, int64_t src_start, int64_t B,
                 int64_t count, int64_t C, bool accumulate, cudaStream_t stream) {
  const int64_t n = B * count * C;
  if (n == 0) return;
  copy_tokens_kernel<<<grid_for(n), kThreads, 0, stream>>>(dst, Td, dst_start, src, Ts, src_start, count, C,
                                                           accumulate, n);
  LOOM_CUDA_LAUNCHED("copy_tokens_kernel");
}

#define LOOM_INSTANTIATE(T)                                                                              \
  template void add<T, T>(T*, const T*, const T*, int64_t, cudaStream_t);                                \
  template void accumulate<T>(T*, const T*, int64_t, cudaStream_t);                                      \
  template void scale<T>(T*, float, int64_t, cudaStream_t);                                              \
  template void gelu_forward<T>(T*, const T*, int64_t, bool, cudaStream_t);                              \
  template void gelu_backward<T>(T*, const T*, const T*, int64_t, bool, cudaStream_t);                   \
  template void add_position_forward<T>(T*, const T*, int64_t, int64_t, int64_t, cudaStream_t);          \
  template void copy_tokens<T>(T*, int64_t, int64_t, const T*, int64_t, int64_t, int64_t, int64_t, int64_t, bool, \
                               cudaStream_t);
LOOM_INSTANTIATE(float)
LOOM_INSTANTIATE(bf16)
LOOM_INSTANTIATE(f16)
#undef LOOM_INSTANTIATE
template void add<float, bf16>(float*, const float*, const bf16*, int64_t, cudaStream_t);  // f32 residual stream
template void add<float, f16>(float*, const float*, const f16*, int64_t, cudaStream_t);

}  // namespace loom::cuda
