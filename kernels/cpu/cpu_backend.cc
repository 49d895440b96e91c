// CpuBackend: validates every call (shapes, dtypes, devices, ids) and dispatches to the templated kernels in
// cpu_ops.h for float or double. Kernels never validate, so every check that can throw lives here and runs
// before any output is touched.
#include "kernels/cpu/cpu_backend.h"

#include "kernels/cpu/cpu_ops.h"

namespace loom {

namespace {

// Validation helpers for one op; every failure names the op and the offending tensors. Messages are built
// only on failure (tensor descriptions allocate strings).
struct OpCheck {
  const char* op;

  template <typename... Args>
  [[noreturn]] void fail_with(Args&&... args) const {
    fail(op, ": ", std::forward<Args>(args)...);
  }
  void on_cpu(const char* name, const Tensor& t) const {
    if (!t.defined()) fail_with(name, " is undefined");
    if (!t.device().is_cpu()) fail_with(name, " ", t.str(), " is not on the CPU");
  }
  // A defined CPU tensor of dtype F32 or F64.
  void real(const char* name, const Tensor& t) const {
    on_cpu(name, t);
    if (!(t.dtype() == DType::F32 || t.dtype() == DType::F64)) fail_with(name, " ", t.str(), " must be f32 or f64");
  }
  // A defined CPU tensor of any float dtype (F32, F64, BF16, F16).
  void floating(const char* name, const Tensor& t) const {
    on_cpu(name, t);
    if (!is_floating(t.dtype())) fail_with(name, " ", t.str(), " must be a float tensor");
  }
  void ints(const char* name, const Tensor& t) const {
    on_cpu(name, t);
    if (t.dtype() != DType::I32) fail_with(name, " ", t.str(), " must be i32");
  }
  // `t` is F32/F64 with the dtype of `ref`.
  void like(const char* name, const Tensor& t, const char* ref_name, const Tensor& ref) const {
    real(name, t);
    if (t.dtype() != ref.dtype()) fail_with(name, " ", t.str(), " must have the dtype of ", ref_name, " ", ref.str());
  }
  void shape(const char* name, const Tensor& t, const Shape& expected) const {
    if (t.shape() != expected) fail_with(name, " ", t.str(), " must have shape ", shape_str(expected));
  }
  void same_shape(const char* name, const Tensor& t, const char* ref_name, const Tensor& ref) const {
    if (t.shape() != ref.shape()) fail_with(name, " ", t.str(), " must have the shape of ", ref_name, " ", ref.str());
  }
  // `t` holds `rows` rows of width `width`: last dimension `width` and rows·width elements.
  void rows(const char* name, const Tensor& t, int64_t rows, int64_t width) const {
    if (!(t.ndim() >= 1 && t.dim(-1) == width && t.numel() == rows * width))
      fail_with(name, " ", t.str(), " must be ", rows, " rows of width ", width);
  }
  // ids in [0, limit) (targets additionally admit -1 when allow_ignore).
  void ids_in_range(const char* name, const Tensor& ids, int64_t limit, bool allow_ignore) const {
    const int32_t* p = ids.data<int32_t>();
    for (int64_t i = 0; i < ids.numel(); ++i) {
      const bool ok = (p[i] >= 0 && p[i] < limit) || (allow_ignore && p[i] == -1);
      if (!ok)
        fail_with(name, " ", ids.str(), " element ", i, " is ", p[i], ", outside [", allow_ignore ? -1 : 0, ", ", limit,
                  ")");
    }
  }
};

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

void CpuBackend::zero(Tensor& x) {
  OpCheck{"zero"}.on_cpu("x", x);
  x.zero_();
}

void CpuBackend::add(Tensor& out, const Tensor& a, const Tensor& b) {
  const OpCheck check{"add"};
  check.real("a", a);
  check.like("b", b, "a", a);
  check.like("out", out, "a", a);
  check.same_shape("b", b, "a", a);
  check.same_shape("out", out, "a", a);
  dispatch(a.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::add(out.data<T>(), a.data<T>(), b.data<T>(), a.numel());
  });
}

void CpuBackend::accumulate(Tensor& dst, const Tensor& src) {
  const OpCheck check{"accumulate"};
  check.real("dst", dst);
  check.like("src", src, "dst", dst);
  check.same_shape("src", src, "dst", dst);
  dispatch(dst.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::accumulate(dst.data<T>(), src.data<T>(), dst.numel());
  });
}

void CpuBackend::scale(Tensor& x, double s) {
  OpCheck{"scale"}.real("x", x);
  dispatch(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::scale(x.data<T>(), s, x.numel());
  });
}

void CpuBackend::convert(Tensor& dst, const Tensor& src) {
  const OpCheck check{"convert"};
  check.floating("dst", dst);
  check.floating("src", src);
  if (dst.numel() != src.numel()) check.fail_with("dst ", dst.str(), " and src ", src.str(), " differ in size");
  cpu::convert(dst.raw(), dst.dtype(), src.raw(), src.dtype(), src.numel());
}

void CpuBackend::embedding_forward(Tensor& out, const Tensor& ids, const Tensor& table) {
  const OpCheck check{"embedding_forward"};
  check.ints("ids", ids);
  check.real("table", table);
  if (table.ndim() != 2) check.fail_with("table ", table.str(), " must be [V, C]");
  check.like("out", out, "table", table);
  const int64_t N = ids.numel(), C = table.dim(1);
  check.rows("out", out, N, C);
  check.ids_in_range("ids", ids, table.dim(0), false);
  dispatch(table.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::embedding_forward(out.data<T>(), ids.data<int32_t>(), table.data<T>(), N, C);
  });
}

void CpuBackend::embedding_backward(Tensor& dtable, const Tensor& dout, const Tensor& ids) {
  const OpCheck check{"embedding_backward"};
  check.ints("ids", ids);
  check.real("dtable", dtable);
  if (dtable.ndim() != 2) check.fail_with("dtable ", dtable.str(), " must be [V, C]");
  check.like("dout", dout, "dtable", dtable);
  const int64_t N = ids.numel(), C = dtable.dim(1);
  check.rows("dout", dout, N, C);
  check.ids_in_range("ids", ids, dtable.dim(0), false);
  dispatch(dtable.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::embedding_backward(dtable.data<T>(), dout.data<T>(), ids.data<int32_t>(), N, C);
  });
}

void CpuBackend::add_position_forward(Tensor& x, const Tensor& pos) {
  const OpCheck check{"add_position_forward"};
  check.real("x", x);
  check.like("pos", pos, "x", x);
  if (x.ndim() != 3) check.fail_with("x ", x.str(), " must be [B, T, C]");
  if (!(pos.ndim() == 2 && pos.dim(0) >= x.dim(1) && pos.dim(1) == x.dim(2)))
    check.fail_with("pos ", pos.str(), " must be [P >= T, C] for x ", x.str());
  dispatch(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::add_position_forward(x.data<T>(), pos.data<T>(), x.dim(0), x.dim(1), x.dim(2));
  });
}

void CpuBackend::add_position_backward(Tensor& dpos, const Tensor& dx) {
  const OpCheck check{"add_position_backward"};
  check.real("dx", dx);
  check.like("dpos", dpos, "dx", dx);
  if (dx.ndim() != 3) check.fail_with("dx ", dx.str(), " must be [B, T, C]");
  if (!(dpos.ndim() == 2 && dpos.dim(0) >= dx.dim(1) && dpos.dim(1) == dx.dim(2)))
    check.fail_with("dpos ", dpos.str(), " must be [P >= T, C] for dx ", dx.str());
  dispatch(dx.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::add_position_backward(dpos.data<T>(), dx.data<T>(), dx.dim(0), dx.dim(1), dx.dim(2));
  });
}

void CpuBackend::copy_tokens(Tensor& dst, int64_t dst_start, const Tensor& src, int64_t src_start, int64_t count,
                             bool accumulate) {
  const OpCheck check{"copy_tokens"};
  check.real("src", src);
  check.like("dst", dst, "src", src);
  if (dst.ndim() != 3 || src.ndim() != 3 || dst.dim(0) != src.dim(0) || dst.dim(2) != src.dim(2))
    check.fail_with("dst ", dst.str(), " and src ", src.str(), " must be [B, T, C] with equal B and C");
  if (count < 0 || dst_start < 0 || src_start < 0 || dst_start + count > dst.dim(1) || src_start + count > src.dim(1))
    check.fail_with("token range: ", count, " tokens from ", src_start, " of ", src.str(), " to ", dst_start, " of ",
                    dst.str());
  dispatch(src.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::copy_tokens(dst.data<T>(), dst.dim(1), dst_start, src.data<T>(), src.dim(1), src_start, src.dim(0), count,
                     src.dim(2), accumulate);
  });
}

void CpuBackend::layernorm_forward(Tensor& out, Tensor& mean, Tensor& rstd, const Tensor& x, const Tensor& w,
                                   const Tensor& b, double eps, int64_t channels) {
  const OpCheck check{"layernorm_forward"};
  check.real("x", x);
  if (!(x.ndim() >= 1 && x.dim(-1) > 0)) check.fail_with("x ", x.str(), " must have a non-empty last dimension");
  const int64_t C = x.dim(-1), N = x.numel() / C;
  check.like("out", out, "x", x);
  check.same_shape("out", out, "x", x);
  check.like("w", w, "x", x);
  check.shape("w", w, {C});
  if (b.defined()) {
    check.like("b", b, "x", x);
    check.shape("b", b, {C});
  }
  check.like("mean", mean, "x", x);
  check.like("rstd", rstd, "x", x);
  if (!(mean.numel() == N && rstd.numel() == N))
    check.fail_with("mean ", mean.str(), " and rstd ", rstd.str(), " must hold ", N, " rows of x ", x.str());
  if (!(eps >= 0)) check.fail_with("eps ", eps, " is negative");
  if (!(channels >= 0 && channels <= C)) check.fail_with("channels ", channels, " must be in [1, ", C, "] (0: all)");
  dispatch(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::layernorm_forward(out.data<T>(), mean.data<T>(), rstd.data<T>(), x.data<T>(), w.data<T>(), data_or_null<T>(b),
                           N, C, eps, channels == 0 ? C : channels);
  });
}

void CpuBackend::layernorm_backward(Tensor& dx, Tensor& dw, Tensor& db, const Tensor& dout, const Tensor& x,
                                    const Tensor& w, const Tensor& mean, const Tensor& rstd, int64_t channels) {
  const OpCheck check{"layernorm_backward"};
  check.real("x", x);
  if (!(x.ndim() >= 1 && x.dim(-1) > 0)) check.fail_with("x ", x.str(), " must have a non-empty last dimension");
  const int64_t C = x.dim(-1), N = x.numel() / C;
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"dx", &dx}, {"dout", &dout}}) {
    check.like(name, *t, "x", x);
    check.same_shape(name, *t, "x", x);
  }
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"w", &w}, {"dw", &dw}}) {
    check.like(name, *t, "x", x);
    check.shape(name, *t, {C});
  }
  if (db.defined()) {
    check.like("db", db, "x", x);
    check.shape("db", db, {C});
  }
  check.like("mean", mean, "x", x);
  check.like("rstd", rstd, "x", x);
  if (!(mean.numel() == N && rstd.numel() == N))
    check.fail_with("mean ", mean.str(), " and rstd ", rstd.str(), " must hold ", N, " rows of x ", x.str());
  if (!(channels >= 0 && channels <= C)) check.fail_with("channels ", channels, " must be in [1, ", C, "] (0: all)");
  dispatch(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::layernorm_backward(dx.data<T>(), dw.data<T>(), data_or_null<T>(db), dout.data<T>(), x.data<T>(), w.data<T>(),
                            mean.data<T>(), rstd.data<T>(), N, C, channels == 0 ? C : channels);
  });
}

void CpuBackend::matmul_forward(Tensor& out, const Tensor& x, const Tensor& w, const Tensor& bias) {
  const OpCheck check{"matmul_forward"};
  check.real("x", x);
  check.like("w", w, "x", x);
  if (!(w.ndim() == 2 && x.ndim() >= 1 && x.dim(-1) == w.dim(1)))
    check.fail_with("w ", w.str(), " must be [O, I] with I the last dimension of x ", x.str());
  const int64_t O = w.dim(0), I = w.dim(1), N = I ? x.numel() / I : 0;
  check.like("out", out, "x", x);
  check.rows("out", out, N, O);
  if (bias.defined()) {
    check.like("bias", bias, "x", x);
    check.shape("bias", bias, {O});
  }
  dispatch(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::matmul_forward(out.data<T>(), x.data<T>(), w.data<T>(), data_or_null<T>(bias), N, I, O);
  });
}

void CpuBackend::matmul_backward(Tensor& dx, Tensor& dw, Tensor& dbias, const Tensor& dout, const Tensor& x,
                                 const Tensor& w) {
  const OpCheck check{"matmul_backward"};
  check.real("x", x);
  check.like("w", w, "x", x);
  if (!(w.ndim() == 2 && x.ndim() >= 1 && x.dim(-1) == w.dim(1)))
    check.fail_with("w ", w.str(), " must be [O, I] with I the last dimension of x ", x.str());
  const int64_t O = w.dim(0), I = w.dim(1), N = I ? x.numel() / I : 0;
  check.like("dout", dout, "x", x);
  check.rows("dout", dout, N, O);
  if (dw.defined()) {
    check.like("dw", dw, "x", x);
    check.same_shape("dw", dw, "w", w);
  } else if (dbias.defined()) {
    check.fail_with("dbias ", dbias.str(), " needs dw (an undefined dw skips the parameter gradients)");
  }
  if (dx.defined()) {
    check.like("dx", dx, "x", x);
    check.same_shape("dx", dx, "x", x);
  }
  if (dbias.defined()) {
    check.like("dbias", dbias, "x", x);
    check.shape("dbias", dbias, {O});
  }
  dispatch(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::matmul_backward(data_or_null<T>(dx), data_or_null<T>(dw), data_or_null<T>(dbias), dout.data<T>(),
                         x.data<T>(), w.data<T>(), N, I, O);
  });
}

void CpuBackend::gelu_forward(Tensor& out, const Tensor& x, GeluKind kind) {
  const OpCheck check{"gelu_forward"};
  check.real("x", x);
  check.like("out", out, "x", x);
  check.same_shape("out", out, "x", x);
  dispatch(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::gelu_forward(out.data<T>(), x.data<T>(), x.numel(), kind == GeluKind::Tanh);
  });
}

void CpuBackend::gelu_backward(Tensor& dx, const Tensor& dout, const Tensor& x, GeluKind kind) {
  const OpCheck check{"gelu_backward"};
  check.real("x", x);
  check.like("dx", dx, "x", x);
  check.like("dout", dout, "x", x);
  check.same_shape("dx", dx, "x", x);
  check.same_shape("dout", dout, "x", x);
  dispatch(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::gelu_backward(dx.data<T>(), dout.data<T>(), x.data<T>(), x.numel(), kind == GeluKind::Tanh);
  });
}

Shape CpuBackend::attention_saved_shape(const AttentionShape& s) const { return {s.batch, s.heads, s.seq, s.seq}; }

namespace {
void check_attention_shape(const OpCheck& check, const AttentionShape& s) {
  if (!(s.batch > 0 && s.seq > 0 && s.heads > 0 && s.qk_dim > 0 && s.v_dim > 0))
    check.fail_with("attention shape batch=", s.batch, " seq=", s.seq, " heads=", s.heads, " qk_dim=", s.qk_dim,
                    " v_dim=", s.v_dim, " must be positive");
}
cpu::AttentionDims attention_dims(const AttentionShape& s) {
  return {s.batch, s.seq, s.heads, s.qk_dim, s.v_dim, s.causal, s.scale};
}
}  // namespace

void CpuBackend::attention_forward(Tensor& out, Tensor& saved, const Tensor& qkv, const AttentionShape& s) {
  const OpCheck check{"attention_forward"};
  check_attention_shape(check, s);
  check.real("qkv", qkv);
  check.rows("qkv", qkv, s.batch * s.seq, s.qkv_width());
  check.like("out", out, "qkv", qkv);
  check.rows("out", out, s.batch * s.seq, s.out_width());
  check.like("saved", saved, "qkv", qkv);
  check.shape("saved", saved, attention_saved_shape(s));
  dispatch(qkv.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::attention_forward(out.data<T>(), saved.data<T>(), qkv.data<T>(), attention_dims(s));
  });
}

void CpuBackend::attention_backward(Tensor& dqkv, const Tensor& dout, const Tensor& qkv, const Tensor& out,
                                    const Tensor& saved, const AttentionShape& s) {
  const OpCheck check{"attention_backward"};
  check_attention_shape(check, s);
  check.real("qkv", qkv);
  check.rows("qkv", qkv, s.batch * s.seq, s.qkv_width());
  check.like("dqkv", dqkv, "qkv", qkv);
  check.same_shape("dqkv", dqkv, "qkv", qkv);
  check.like("out", out, "qkv", qkv);
  check.rows("out", out, s.batch * s.seq, s.out_width());
  check.like("dout", dout, "qkv", qkv);
  check.same_shape("dout", dout, "out", out);
  check.like("saved", saved, "qkv", qkv);
  check.shape("saved", saved, attention_saved_shape(s));
  dispatch(qkv.dtype(), [&](auto tag) {
    using T = decltype(tag);
    cpu::attention_backward(dqkv.data<T>(), dout.data<T>(), qkv.data<T>(), saved.data<T>(), attention_dims(s));
  });
}

void CpuBackend::cross_entropy(Tensor& losses, Tensor& dlogits, const Tensor& logits, const Tensor& targets,
                               int64_t vocab, double dloss, double label_smoothing) {
  const OpCheck check{"cross_entropy"};
  check.real("logits", logits);
  if (!(logits.ndim() >= 1 && logits.dim(-1) > 0)) check.fail_with("logits ", logits.str(), " must be [N, Vp]");
  const int64_t Vp = logits.dim(-1), N = logits.numel() / Vp;
  if (!(vocab >= 1 && vocab <= Vp))
    check.fail_with("vocab ", vocab, " must be in [1, ", Vp, "] for logits ", logits.str());
  if (!(label_smoothing >= 0 && label_smoothing <= 1))
    check.fail_with("label smoothing ", label_smoothing, " must be in [0, 1]");
  check.ints("targets", targets);
  if (targets.numel() != N)
    check.fail_with("targets ", targets.str(), " must hold one target per row of logits ", logits.str());
  check.real("losses", losses);
  if (losses.numel() != N)
    check.fail_with("losses ", losses.str(), " must hold one loss per row of logits ", logits.str());
  if (dlogits.defined()) {
    check.like("dlogits", dlogits, "logits", logits);
    check.same_shape("dlogits", dlogits, "logits", logits);
  }
  check.ids_in_range("targets", targets, vocab, true);
  dispatch(logits.dtype(), [&](auto logit_tag) {
    using T = decltype(logit_tag);
    dispatch(losses.dtype(), [&](auto loss_tag) {
      using L = decltype(loss_tag);
      cpu::cross_entropy(losses.data<L>(), data_or_null<T>(dlogits), logits.data<T>(), targets.data<int32_t>(), N, Vp,
                         vocab, dloss, label_smoothing);
    });
  });
}

namespace {
// The arguments cross_entropy_partials and cross_entropy_from_partials share: logits_local [N, Vr], the first
// global column and the vocabulary, and one target in [-1, vocab) per row. Returns N.
int64_t check_vocab_split(const OpCheck& check, const Tensor& logits_local, const Tensor& targets,
                          int64_t vocab_begin, int64_t vocab) {
  check.real("logits_local", logits_local);
  if (!(logits_local.ndim() >= 1 && logits_local.dim(-1) > 0))
    check.fail_with("logits_local ", logits_local.str(), " must be [N, Vr]");
  const int64_t N = logits_local.numel() / logits_local.dim(-1);
  if (vocab_begin < 0) check.fail_with("vocab_begin ", vocab_begin, " must not be negative");
  if (vocab < 1) check.fail_with("vocab ", vocab, " must be positive");
  check.ints("targets", targets);
  if (targets.numel() != N)
    check.fail_with("targets ", targets.str(), " must hold one target per row of logits_local ", logits_local.str());
  check.ids_in_range("targets", targets, vocab, true);
  return N;
}
}  // namespace

void CpuBackend::cross_entropy_partials(Tensor& partials, const Tensor& logits_local, const Tensor& targets,
                                        int64_t vocab_begin, int64_t vocab) {
  const OpCheck check{"cross_entropy_partials"};
  const int64_t N = check_vocab_split(check, logits_local, targets, vocab_begin, vocab);
  check.real("partials", partials);
  check.rows("partials", partials, N, 4);
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
  const OpCheck check{"cross_entropy_from_partials"};
  const int64_t N = check_vocab_split(check, logits_local, targets, vocab_begin, vocab);
  if (!(label_smoothing >= 0 && label_smoothing <= 1))
    check.fail_with("label smoothing ", label_smoothing, " must be in [0, 1]");
  check.real("gathered", gathered);
  if (!(gathered.ndim() == 3 && gathered.dim(0) >= 1 && gathered.dim(1) == N && gathered.dim(2) == 4))
    check.fail_with("gathered ", gathered.str(), " must be [R, ", N, ", 4] (every rank's partials)");
  check.like("losses", losses, "gathered", gathered);
  if (losses.numel() != N)
    check.fail_with("losses ", losses.str(), " must hold one loss per row of logits_local ", logits_local.str());
  if (dlogits_local.defined()) {
    check.like("dlogits_local", dlogits_local, "logits_local", logits_local);
    check.same_shape("dlogits_local", dlogits_local, "logits_local", logits_local);
  }
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

double CpuBackend::sum_squares(const std::vector<Tensor>& tensors) {
  const OpCheck check{"sum_squares"};
  double sum = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    check.floating(("tensor " + std::to_string(i)).c_str(), tensors[i]);
    sum += cpu::sum_squares(tensors[i].raw(), tensors[i].dtype(), tensors[i].numel());
  }
  return sum;
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
  const OpCheck check{"adamw_update"};
  check.real("param", param);
  check.like("m", m, "param", param);
  check.like("v", v, "param", param);
  check.floating("grad", grad);
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"m", &m}, {"v", &v}, {"grad", &grad}})
    if (t->numel() != param.numel()) check.fail_with(name, " ", t->str(), " must match param ", param.str());
  if (compute_copy.defined()) {
    check.floating("compute_copy", compute_copy);
    if (compute_copy.numel() != param.numel())
      check.fail_with("compute_copy ", compute_copy.str(), " must match param ", param.str());
  }
  if (!(hp.step >= 1)) check.fail_with("step ", hp.step, " must be >= 1 (bias correction is 1-based)");
  const cpu::AdamWStep step{hp.lr, hp.beta1, hp.beta2, hp.eps, hp.grad_scale, weight_decay, hp.step};
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
