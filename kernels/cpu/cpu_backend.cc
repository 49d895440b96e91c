// CpuBackend: checks every call against the ops' shared contract (kernels/op_contract.h: shapes, dtypes,
// devices, ids) and dispatches to the templated kernels in cpu_ops.h for float or double. Kernels never
// validate, so every check that can throw runs before any output is touched.
#include "kernels/cpu/cpu_backend.h"

#include "kernels/cpu/cpu_ops.h"

namespace loom {

namespace {

// Calls fn(T{}) with T = float or double according to `dtype` (already checked to be F32 or F64).
template <typename Fn>
void dispatch(DType dtype, Fn&& fn) {
  if (dtype == DType::F64)
    fn(double{});
  else
    fn(float{});
}

// Null for an undefined (absent) tensor.
template <typename T>
T* data_or_null(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}

}  // namespace

const BackendDtypes& CpuBackend::dtypes() {
  static const BackendDtypes kDtypes{{DType::F32, DType::F64},
                                     {DType::F32, DType::F64, DType::BF16, DType::F16},
                                     {DType::F32, DType::F64},
                                     {DType::F32, DType::F64},
                                     /*stats_follow_input=*/true,
                                     /*ids_checked_on_host=*/true,
                                     /*f32_residual=*/false};
  return kDtypes;
}

void CpuBackend::zero(Tensor& x) {
  op_check("zero").on_device("x", x);
  x.zero_();
}

void CpuBackend::add(Tensor& out, const Tensor& a, const Tensor& b) {
  op_contract::add(op_check("add"), out, a, b);
  dispatch(a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::add(out.data<T>(), a.data<T>(), b.data<T>(), a.numel());
  });
}

void CpuBackend::accumulate(Tensor& dst, const Tensor& src) {
  op_contract::elementwise(op_check("accumulate"), {{"dst", &dst}, {"src", &src}});
  dispatch(dst.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::accumulate(dst.data<T>(), src.data<T>(), dst.numel());
  });
}

void CpuBackend::scale(Tensor& x, double s) {
  op_contract::elementwise(op_check("scale"), {{"x", &x}});
  dispatch(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::scale(x.data<T>(), s, x.numel());
  });
}

void CpuBackend::convert(Tensor& dst, const Tensor& src) {
  op_contract::convert(op_check("convert"), dst, src);
  cpu::convert(dst.raw(), dst.dtype(), src.raw(), src.dtype(), src.numel());
}

void CpuBackend::embedding_forward(Tensor& out, const Tensor& ids, const Tensor& table) {
  const int64_t N = op_contract::embedding(op_check("embedding_forward"), "out", out, ids, "table", table);
  const int64_t C = table.dim(1);
  dispatch(table.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::embedding_forward(out.data<T>(), ids.data<int32_t>(), table.data<T>(), N, C);
  });
}

void CpuBackend::embedding_backward(Tensor& dtable, const Tensor& dout, const Tensor& ids) {
  const int64_t N = op_contract::embedding(op_check("embedding_backward"), "dout", dout, ids, "dtable", dtable);
  const int64_t C = dtable.dim(1);
  dispatch(dtable.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::embedding_backward(dtable.data<T>(), dout.data<T>(), ids.data<int32_t>(), N, C);
  });
}

void CpuBackend::add_position_forward(Tensor& x, const Tensor& pos) {
  op_contract::add_position(op_check("add_position_forward"), "x", x, "pos", pos);
  dispatch(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::add_position_forward(x.data<T>(), pos.data<T>(), x.dim(0), x.dim(1), x.dim(2));
  });
}

void CpuBackend::add_position_backward(Tensor& dpos, const Tensor& dx) {
  op_contract::add_position(op_check("add_position_backward"), "dx", dx, "dpos", dpos);
  dispatch(dx.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::add_position_backward(dpos.data<T>(), dx.data<T>(), dx.dim(0), dx.dim(1), dx.dim(2));
  });
}

void CpuBackend::copy_tokens(Tensor& dst, int64_t dst_start, const Tensor& src, int64_t src_start, int64_t count,
                             bool accumulate) {
  op_contract::copy_tokens(op_check("copy_tokens"), dst, dst_start, src, src_start, count);
  dispatch(src.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::copy_tokens(dst.data<T>(), dst.dim(1), dst_start, src.data<T>(), src.dim(1), src_start, src.dim(0), count,
                     src.dim(2), accumulate);
  });
}

void CpuBackend::layernorm_forward(Tensor& out, Tensor& mean, Tensor& rstd, const Tensor& x, const Tensor& w,
                                   const Tensor& b, double eps, int64_t channels) {
  const auto dims =
      op_contract::layernorm_forward(op_check("layernorm_forward"), out, mean, rstd, x, w, b, eps, channels);
  const int64_t N = dims.N, C = dims.C, K = dims.K;
  dispatch(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::layernorm_forward(out.data<T>(), mean.data<T>(), rstd.data<T>(), x.data<T>(), w.data<T>(), data_or_null<T>(b),
                           N, C, eps, K);
  });
}

void CpuBackend::layernorm_backward(Tensor& dx, Tensor& dw, Tensor& db, const Tensor& dout, const Tensor& x,
                                    const Tensor& w, const Tensor& mean, const Tensor& rstd, int64_t channels) {
  const auto dims = op_contract::layernorm_backward(op_check("layernorm_backward"), dx, dw, db, dout, x, w,
                                                         mean, rstd, channels);
  const int64_t N = dims.N, C = dims.C, K = dims.K;
  dispatch(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::layernorm_backward(dx.data<T>(), dw.data<T>(), data_or_null<T>(db), dout.data<T>(), x.data<T>(), w.data<T>(),
                            mean.data<T>(), rstd.data<T>(), N, C, K);
  });
}

void CpuBackend::matmul_forward(Tensor& out, const Tensor& x, const Tensor& w, const Tensor& bias) {
  const auto dims = op_contract::matmul_forward(op_check("matmul_forward"), out, x, w, bias);
  const int64_t N = dims.N, I = dims.I, O = dims.O;
  dispatch(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::matmul_forward(out.data<T>(), x.data<T>(), w.data<T>(), data_or_null<T>(bias), N, I, O);
  });
}

void CpuBackend::matmul_backward(Tensor& dx, Tensor& dw, Tensor& dbias, const Tensor& dout, const Tensor& x,
                                 const Tensor& w) {
  const auto dims = op_contract::matmul_backward(op_check("matmul_backward"), dx, dw, dbias, dout, x, w);
  const int64_t N = dims.N, I = dims.I, O = dims.O;
  dispatch(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::matmul_backward(data_or_null<T>(dx), data_or_null<T>(dw), data_or_null<T>(dbias), dout.data<T>(),
                         x.data<T>(), w.data<T>(), N, I, O);
  });
}

void CpuBackend::gelu_forward(Tensor& out, const Tensor& x, GeluKind kind) {
  op_contract::elementwise(op_check("gelu_forward"), {{"x", &x}, {"out", &out}});
  dispatch(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::gelu_forward(out.data<T>(), x.data<T>(), x.numel(), kind == GeluKind::Tanh);
  });
}

void CpuBackend::gelu_backward(Tensor& dx, const Tensor& dout, const Tensor& x, GeluKind kind) {
  op_contract::elementwise(op_check("gelu_backward"), {{"x", &x}, {"dx", &dx}, {"dout", &dout}});
  dispatch(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::gelu_backward(dx.data<T>(), dout.data<T>(), x.data<T>(), x.numel(), kind == GeluKind::Tanh);
  });
}

Shape CpuBackend::attention_saved_shape(const AttentionShape& s) const { return {s.batch, s.heads, s.seq, s.seq}; }

namespace {
cpu::AttentionDims attention_dims(const AttentionShape& s) {
  return {s.batch, s.seq, s.heads, s.qk_dim, s.v_dim, s.causal, s.scale};
}
}  // namespace

void CpuBackend::attention_forward(Tensor& out, Tensor& saved, const Tensor& qkv, const AttentionShape& s) {
  op_contract::attention_forward(op_check("attention_forward"), out, saved, qkv, s, attention_saved_shape(s),
                                 qkv.dtype());
  dispatch(qkv.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::attention_forward(out.data<T>(), saved.data<T>(), qkv.data<T>(), attention_dims(s));
  });
}

void CpuBackend::attention_backward(Tensor& dqkv, const Tensor& dout, const Tensor& qkv, const Tensor& out,
                                    const Tensor& saved, const AttentionShape& s) {
  op_contract::attention_backward(op_check("attention_backward"), dqkv, dout, qkv, out, saved, s,
                                  attention_saved_shape(s), qkv.dtype());
  dispatch(qkv.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::attention_backward(dqkv.data<T>(), dout.data<T>(), qkv.data<T>(), saved.data<T>(), attention_dims(s));
  });
}

void CpuBackend::cross_entropy(Tensor& losses, Tensor& dlogits, const Tensor& logits, const Tensor& targets,
                               int64_t vocab, double dloss, double label_smoothing) {
  const int64_t N = op_contract::cross_entropy(op_check("cross_entropy"), losses, dlogits, logits, targets, vocab,
                                               label_smoothing);
  const int64_t Vp = logits.dim(-1);
  dispatch(logits.dtype(), [&](auto logit_tag) {
    using T = decltype(logit_tag);
    dispatch(losses.dtype(), [&](auto loss_tag) {
      using L = decltype(loss_tag);
      cpu::cross_entropy(losses.data<L>(), data_or_null<T>(dlogits), logits.data<T>(), targets.data<int32_t>(), N, Vp,
                         vocab, dloss, label_smoothing);
    });
  });
}

void CpuBackend::cross_entropy_partials(Tensor& partials, const Tensor& logits_local, const Tensor& targets,
                                        int64_t vocab_begin, int64_t vocab) {
  const int64_t N = op_contract::cross_entropy_partials(op_check("cross_entropy_partials"), partials, logits_local,
                                                        targets, vocab_begin, vocab);
  const int64_t Vr = logits_local.dim(-1);
  dispatch(logits_local.dtype(), [&](auto logit_tag) {
    using T = decltype(logit_tag);
    dispatch(partials.dtype(), [&](auto partial_tag) {
      using P = decltype(partial_tag);
      cpu::cross_entropy_partials(partials.data<P>(), logits_local.data<T>(), targets.data<int32_t>(), N, Vr,
                                  vocab_begin, vocab);
    });
  });
}

void CpuBackend::cross_entropy_from_partials(Tensor& losses, Tensor& dlogits_local, const Tensor& gathered,
                                             const Tensor& logits_local, const Tensor& targets, int64_t vocab_begin,
                                             int64_t vocab, double dloss, double label_smoothing) {
  const int64_t N =
      op_contract::cross_entropy_from_partials(op_check("cross_entropy_from_partials"), losses, dlogits_local,
                                               gathered, logits_local, targets, vocab_begin, vocab, label_smoothing);
  const int64_t Vr = logits_local.dim(-1);
  dispatch(logits_local.dtype(), [&](auto logit_tag) {
    using T = decltype(logit_tag);
    dispatch(gathered.dtype(), [&](auto partial_tag) {
      using P = decltype(partial_tag);
      cpu::cross_entropy_from_partials(losses.data<P>(), data_or_null<T>(dlogits_local), gathered.data<P>(),
                                       logits_local.data<T>(), targets.data<int32_t>(), gathered.dim(0), N, Vr,
                                       vocab_begin, vocab, dloss, label_smoothing);
    });
  });
}

void CpuBackend::accumulate_sum(Tensor& total, const Tensor& x, double weight, double count) {
  op_contract::accumulate_sum(op_check("accumulate_sum"), total, x, count);
  double sum = 0;
  dispatch(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T* v = x.data<T>();
    for (int64_t i = 0; i < x.numel(); ++i) sum += v[i];
  });
  total.data<double>()[0] += (weight * sum) / count;
}

void CpuBackend::accumulate_sum_squares(Tensor& total, const std::vector<Tensor>& tensors) {
  const OpCheck check = op_check("sum_squares");
  op_contract::scalar_total(check, total);
  op_contract::float_list(check, tensors);
  if (tensors.empty()) return;
  double sum = 0;
  for (const Tensor& t : tensors) sum += cpu::sum_squares(t.raw(), t.dtype(), t.numel());
  total.data<double>()[0] += sum;
}

namespace {
// Calls fn(Elem<G>{}) for the gradient's storage dtype G (already checked to be a float dtype).
template <typename Fn>
void dispatch_grad(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::F64:
      return fn(cpu::Elem<DType::F64>{});
    case DType::BF16:
      return fn(cpu::Elem<DType::BF16>{});
    case DType::F16:
      return fn(cpu::Elem<DType::F16>{});
    default:
      return fn(cpu::Elem<DType::F32>{});
  }
}
}  // namespace

void CpuBackend::adamw_update(Tensor& param, Tensor& m, Tensor& v, const Tensor& grad, Tensor& compute_copy,
                              const AdamWHyper& hp, double weight_decay) {
  op_contract::adamw_update(op_check("adamw_update"), param, m, v, grad, compute_copy, hp);
  double grad_scale = hp.grad_scale;
  // The CPU twin of the CUDA kernels' device-side decision (kernels/step_stats.h): no update at all when the
  // step's loss or gradient norm is not finite.
  if (hp.step_stats.defined() &&
      !step_update_scale(hp.step_stats.data<double>(), hp.max_grad_norm, hp.grad_scale, &grad_scale))
    return;
  const cpu::AdamWStep step{hp.lr, hp.beta1, hp.beta2, hp.eps, grad_scale, weight_decay, hp.step};
  dispatch(param.dtype(), [&](auto tag) {
    using T = decltype(tag);
    dispatch_grad(grad.dtype(), [&](auto grad_elem) {
      constexpr DType G = decltype(grad_elem)::dtype;
      cpu::adamw<T, G>(param.data<T>(), m.data<T>(), v.data<T>(),
                       static_cast<const typename cpu::Elem<G>::type*>(grad.raw()), param.numel(), step);
    });
  });
  if (compute_copy.defined()) convert(compute_copy, param);
}

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

}  // namespace loom
