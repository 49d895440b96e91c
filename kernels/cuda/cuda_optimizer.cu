// Optimizer kernels: the global squared norm for gradient clipping and a fused AdamW step.
#include <vector>

#include "kernels/cuda/cuda_ops.cuh"

namespace loom::cuda {

namespace {

constexpr int kThreads = 256;

// partials[blockIdx.x] = Σ x² over this block's grid-stride elements, in f32 (a block sums at most a few
// thousand elements per thread, so f32 loses little; the cross-block sum is in double).
__global__ void sum_squares_partials_kernel(float* partials, const void* x, Elem elem, int64_t n) {
  __shared__ float scratch[32];
  float sum = 0.f;
  LOOM_GRID_STRIDE(i, n) {
    const float v = load_elem(x, i, elem);
    sum += v * v;
  }
  sum = block_sum(sum, scratch);
  if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

// *out = Σ partials, in double, by one block: strided per-thread sums, then a fixed-order tree.
__global__ void sum_partials_double_kernel(double* out, const float* partials, int64_t n) {
  __shared__ double sums[kThreads];
  double sum = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) sum += partials[i];
  sums[threadIdx.x] = sum;
  __syncthreads();
  for (int half = blockDim.x / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) sums[threadIdx.x] += sums[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) *out = sums[0];
}

// Per element, in f32 (param, m, v are the f32 master copies):
//   g = grad·grad_scale;  m = β1 m + (1-β1) g;  v = β2 v + (1-β2) g²
//   param -= lr·( (m/(1-β1^step)) / (√(v/(1-β2^step)) + eps) + weight_decay·param )
//   compute_copy = param in its own dtype (if not null)
__global__ void adamw_kernel(float* param, float* m, float* v, const void* grad, Elem grad_elem,
                             void* compute_copy, Elem copy_elem, int64_t n, AdamWArgs a) {
  LOOM_GRID_STRIDE(i, n) {
    const float g = load_elem(grad, i, grad_elem) * a.grad_scale;
    const float mi = a.beta1 * m[i] + (1.f - a.beta1) * g;
    const float vi = a.beta2 * v[i] + (1.f - a.beta2) * g * g;
    const float p = param[i];
    const float update = (mi / a.bias_correction1) / (sqrtf(vi / a.bias_correction2) + a.eps);
    const float next = p - a.lr * (update + a.weight_decay * p);
    m[i] = mi;
    v[i] = vi;
    param[i] = next;
    if (compute_copy) store_elem(compute_copy, i, copy_elem, next);
  }
}

// Blocks for one tensor's partial sums: a function of n alone, so the result does not depend on the GPU.
int64_t sum_squares_blocks(int64_t n) {
  return std::clamp<int64_t>((n + kThreads * 16 - 1) / (kThreads * 16), 1, 1024);
}

}  // namespace

double sum_squares(const std::vector<SumSquaresInput>& inputs, cudaStream_t stream) {
  int64_t total_blocks = 0;
  for (const auto& in : inputs) total_blocks += sum_squares_blocks(in.n);
  if (total_blocks == 0) return 0.0;
  ScratchBuffer partials(static_cast<size_t>(total_blocks) * sizeof(float));
  float* part = partials.as<float>();
  int64_t offset = 0;
  for (const auto& in : inputs) {
    const int64_t blocks = sum_squares_blocks(in.n);
    sum_squares_partials_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(part + offset, in.data,
                                                                                        in.elem, in.n);
    LOOM_CUDA_LAUNCHED("sum_squares_partials_kernel");
    offset += blocks;
  }
  ScratchBuffer result(sizeof(double));
  sum_partials_double_kernel<<<1, kThreads, 0, stream>>>(result.as<double>(), part, total_blocks);
  LOOM_CUDA_LAUNCHED("sum_partials_double_kernel");
  double host = 0;
  LOOM_CUDA_CALL(cudaMemcpyAsync(&host, result.as<double>(), sizeof(double), cudaMemcpyDeviceToHost, stream));
  LOOM_CUDA_CALL(cudaStreamSynchronize(stream));
  return host;
}

void adamw(float* param, float* m, float* v, const void* grad, Elem grad_elem, void* compute_copy, Elem copy_elem,
           int64_t n, const AdamWArgs& args, cudaStream_t stream) {
  if (n == 0) return;
  adamw_kernel<<<grid_for(n), kThreads, 0, stream>>>(param, m, v, grad, grad_elem, compute_copy, copy_elem, n, args);
  LOOM_CUDA_LAUNCHED("adamw_kernel");
}

}  // namespace loom::cuda
