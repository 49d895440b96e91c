#include "kernels/op_contract.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "kernels/backend.h"

namespace loom {

void OpCheck::on_device(const char* name, const Tensor& t) const {
  require(t.defined(), name, " is undefined");
  require(t.device() == device_, name, " ", t.str(), " is not on ", device_.str());
}

void OpCheck::one_of(const char* name, const Tensor& t, const std::vector<DType>& allowed) const {
  on_device(name, t);
  if (std::find(allowed.begin(), allowed.end(), t.dtype()) != allowed.end()) return;
  std::string names;
  for (size_t i = 0; i < allowed.size(); ++i)
    names += (i == 0 ? "" : i + 1 == allowed.size() ? " or " : ", ") + std::string(dtype_name(allowed[i]));
  fail_with(name, " ", t.str(), " must be ", names);
}

void OpCheck::like(const char* name, const Tensor& t, const char* ref_name, const Tensor& ref) const {
  compute(name, t);
  require(t.dtype() == ref.dtype(), name, " ", t.str(), " must have the dtype of ", ref_name, " ", ref.str());
}

void OpCheck::residual(const char* name, const Tensor& t, const char* ref_name, const Tensor& ref) const {
  on_device(name, t);
  if (dtypes_.f32_residual && t.dtype() == DType::F32) return;
  require(t.dtype() == ref.dtype(), name, " ", t.str(), " must have the dtype of ", ref_name, " ", ref.str(),
          dtypes_.f32_residual ? " or be f32 (a residual stream kept in f32)" : "");
}

void OpCheck::statistic(const char* name, const Tensor& t, const char* ref_name, const Tensor& ref) const {
  if (dtypes_.stats_follow_input)
    like(name, t, ref_name, ref);
  else
    f32(name, t);
}

void OpCheck::shape(const char* name, const Tensor& t, const Shape& expected) const {
  require(t.shape() == expected, name, " ", t.str(), " must have shape ", shape_str(expected));
}

void OpCheck::same_shape(const char* name, const Tensor& t, const char* ref_name, const Tensor& ref) const {
  require(t.shape() == ref.shape(), name, " ", t.str(), " must have the shape of ", ref_name, " ", ref.str());
}

void OpCheck::rows(const char* name, const Tensor& t, int64_t rows, int64_t width) const {
  require(t.ndim() >= 1 && t.dim(-1) == width && t.numel() == rows * width, name, " ", t.str(), " must be ", rows,
          " rows of width ", width);
}

void OpCheck::ids_in_range(const char* name, const Tensor& ids, int64_t limit, bool allow_ignore) const {
  if (!dtypes_.ids_checked_on_host) return;
  const int32_t* p = ids.data<int32_t>();
  for (int64_t i = 0; i < ids.numel(); ++i) {
    const bool ok = (p[i] >= 0 && p[i] < limit) || (allow_ignore && p[i] == -1);
    require(ok, name, " ", ids.str(), " element ", i, " is ", p[i], ", outside [", allow_ignore ? -1 : 0, ", ", limit,
            ")");
  }
}

namespace op_contract {

namespace {

// x [.., C] with C > 0; returns {N, C}.
Rows rows_of(const OpCheck& check, const char* name, const Tensor& x) {
  check.require(x.ndim() >= 1 && x.dim(-1) > 0, name, " ", x.str(), " must have a non-empty last dimension");
  return {x.numel() / x.dim(-1), x.dim(-1), 0};
}

// The channels LayerNorm's statistics count: 0 means all C.
int64_t counted_channels(const OpCheck& check, int64_t channels, int64_t C) {
  check.require(channels >= 0 && channels <= C, "channels ", channels, " must be in [1, ", C, "] (0: all)");
  return channels == 0 ? C : channels;
}

void optional_vector(const OpCheck& check, const char* name, const Tensor& t, const Tensor& x, int64_t n) {
  if (!t.defined()) return;
  check.like(name, t, "x", x);
  check.shape(name, t, {n});
}

// x [.., I] and w [O, I], I > 0.
Linear linear_of(const OpCheck& check, const Tensor& x, const Tensor& w) {
  check.compute("x", x);
  check.like("w", w, "x", x);
  check.require(w.ndim() == 2 && x.ndim() >= 1 && x.dim(-1) == w.dim(1), "w ", w.str(),
                " must be [O, I] with I the last dimension of x ", x.str());
  const int64_t O = w.dim(0), I = w.dim(1);
  check.require(I > 0, "x ", x.str(), " has an empty inner dimension");
  return {x.numel() / I, I, O};
}

// The parameter gradients of a linear layer: dw like w, dbias [O] (only with dw).
void parameter_grads(const OpCheck& check, const Tensor& dw, const Tensor& dbias, const Tensor& x, const Tensor& w,
                     int64_t O) {
  if (dw.defined()) {
    check.like("dw", dw, "x", x);
    check.same_shape("dw", dw, "w", w);
  } else {
    check.require(!dbias.defined(), "dbias ", dbias.str(), " needs dw (an undefined dw skips the parameter gradients)");
  }
  optional_vector(check, "dbias", dbias, x, O);
}

void attention_shape(const OpCheck& check, const AttentionShape& s) {
  check.require(s.batch > 0 && s.seq > 0 && s.heads > 0 && s.qk_dim > 0 && s.v_dim > 0, "attention shape batch=",
                s.batch, " seq=", s.seq, " heads=", s.heads, " qk_dim=", s.qk_dim, " v_dim=", s.v_dim,
                " must be positive");
}

void attention_saved(const OpCheck& check, const Tensor& saved, const Shape& saved_shape, DType saved_dtype) {
  check.on_device("saved", saved);
  check.require(saved.dtype() == saved_dtype, "saved ", saved.str(), " must be ", dtype_name(saved_dtype));
  check.shape("saved", saved, saved_shape);
}

void label_smoothing_in_range(const OpCheck& check, double label_smoothing) {
  check.require(label_smoothing >= 0 && label_smoothing <= 1, "label smoothing ", label_smoothing,
                " must be in [0, 1]");
}

// The arguments the vocabulary-parallel pair shares: logits_local [N, Vr], the first global column, the
// vocabulary and one target in [-1, vocab) per row. Returns N.
int64_t vocab_split(const OpCheck& check, const Tensor& logits_local, const Tensor& targets, int64_t vocab_begin,
                    int64_t vocab) {
  check.compute("logits_local", logits_local);
  check.require(logits_local.ndim() >= 1 && logits_local.dim(-1) > 0, "logits_local ", logits_local.str(),
                " must be [N, Vr]");
  const int64_t N = logits_local.numel() / logits_local.dim(-1);
  check.require(vocab_begin >= 0, "vocab_begin ", vocab_begin, " must not be negative");
  check.require(vocab >= 1, "vocab ", vocab, " must be positive");
  check.ints("targets", targets);
  check.require(targets.numel() == N, "targets ", targets.str(), " must hold one target per row of logits_local ",
                logits_local.str());
  check.ids_in_range("targets", targets, vocab, true);
  return N;
}

}  // namespace

void elementwise(const OpCheck& check, std::initializer_list<std::pair<const char*, const Tensor*>> tensors) {
  const auto& [ref_name, ref] = *tensors.begin();
  check.compute(ref_name, *ref);
  for (const auto& [name, t] : tensors) {
    check.like(name, *t, ref_name, *ref);
    check.same_shape(name, *t, ref_name, *ref);
  }
}

void add(const OpCheck& check, const Tensor& out, const Tensor& a, const Tensor& b) {
  check.compute("b", b);
  check.residual("a", a, "b", b);
  check.same_shape("b", b, "a", a);
  check.on_device("out", out);
  check.require(out.dtype() == a.dtype(), "out ", out.str(), " must have the dtype of a ", a.str());
  check.same_shape("out", out, "a", a);
}

void convert(const OpCheck& check, const Tensor& dst, const Tensor& src) {
  check.storage("dst", dst);
  check.storage("src", src);
  check.require(dst.numel() == src.numel(), "dst ", dst.str(), " and src ", src.str(), " differ in size");
}

int64_t embedding(const OpCheck& check, const char* rows_name, const Tensor& rows, const Tensor& ids,
                  const char* table_name, const Tensor& table) {
  check.ints("ids", ids);
  check.compute(table_name, table);
  check.require(table.ndim() == 2, table_name, " ", table.str(), " must be [V, C]");
  check.like(rows_name, rows, table_name, table);
  const int64_t N = ids.numel();
  check.rows(rows_name, rows, N, table.dim(1));
  check.ids_in_range("ids", ids, table.dim(0), false);
  return N;
}

void add_position(const OpCheck& check, const char* x_name, const Tensor& x, const char* pos_name, const Tensor& pos) {
  check.compute(x_name, x);
  check.like(pos_name, pos, x_name, x);
  check.require(x.ndim() == 3, x_name, " ", x.str(), " must be [B, T, C]");
  check.require(pos.ndim() == 2 && pos.dim(0) >= x.dim(1) && pos.dim(1) == x.dim(2), pos_name, " ", pos.str(),
                " must be [P >= T, C] for ", x_name, " ", x.str());
}

void copy_tokens(const OpCheck& check, const Tensor& dst, int64_t dst_start, const Tensor& src, int64_t src_start,
                 int64_t count) {
  check.compute("src", src);
  check.like("dst", dst, "src", src);
  check.require(dst.ndim() == 3 && src.ndim() == 3 && dst.dim(0) == src.dim(0) && dst.dim(2) == src.dim(2), "dst ",
                dst.str(), " and src ", src.str(), " must be [B, T, C] with equal B and C");
  check.require(count >= 0 && dst_start >= 0 && src_start >= 0 && dst_start + count <= dst.dim(1) &&
                    src_start + count <= src.dim(1),
                "token range: ", count, " tokens from ", src_start, " of ", src.str(), " to ", dst_start, " of ",
                dst.str());
}

Rows layernorm_forward(const OpCheck& check, const Tensor& out, const Tensor& mean, const Tensor& rstd,
                       const Tensor& x, const Tensor& w, const Tensor& b, double eps, int64_t channels) {
  check.compute("out", out);
  check.residual("x", x, "out", out);
  Rows r = rows_of(check, "x", x);
  check.same_shape("out", out, "x", x);
  check.like("w", w, "out", out);
  check.shape("w", w, {r.C});
  optional_vector(check, "b", b, out, r.C);
  check.statistic("mean", mean, "x", x);
  check.statistic("rstd", rstd, "x", x);
  check.require(mean.numel() == r.N && rstd.numel() == r.N, "mean ", mean.str(), " and rstd ", rstd.str(),
                " must hold ", r.N, " rows of x ", x.str());
  check.require(eps >= 0, "eps ", eps, " is negative");
  r.K = counted_channels(check, channels, r.C);
  return r;
}

Rows layernorm_backward(const OpCheck& check, const Tensor& dx, const Tensor& dw, const Tensor& db,
                        const Tensor& dout, const Tensor& x, const Tensor& w, const Tensor& mean, const Tensor& rstd,
                        int64_t channels) {
  check.compute("dout", dout);
  check.residual("x", x, "dout", dout);
  Rows r = rows_of(check, "x", x);
  check.same_shape("dout", dout, "x", x);
  check.on_device("dx", dx);
  check.require(dx.dtype() == x.dtype(), "dx ", dx.str(), " must have the dtype of x ", x.str());
  check.same_shape("dx", dx, "x", x);
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"w", &w}, {"dw", &dw}}) {
    check.like(name, *t, "dout", dout);
    check.shape(name, *t, {r.C});
  }
  optional_vector(check, "db", db, dout, r.C);
  check.statistic("mean", mean, "x", x);
  check.statistic("rstd", rstd, "x", x);
  check.require(mean.numel() == r.N && rstd.numel() == r.N, "mean ", mean.str(), " and rstd ", rstd.str(),
                " must hold ", r.N, " rows of x ", x.str());
  r.K = counted_channels(check, channels, r.C);
  return r;
}

Linear matmul_forward(const OpCheck& check, const Tensor& out, const Tensor& x, const Tensor& w, const Tensor& bias) {
  const Linear l = linear_of(check, x, w);
  check.like("out", out, "x", x);
  check.rows("out", out, l.N, l.O);
  optional_vector(check, "bias", bias, x, l.O);
  return l;
}

Linear matmul_backward(const OpCheck& check, const Tensor& dx, const Tensor& dw, const Tensor& dbias,
                       const Tensor& dout, const Tensor& x, const Tensor& w) {
  const Linear l = linear_of(check, x, w);
  check.like("dout", dout, "x", x);
  check.rows("dout", dout, l.N, l.O);
  parameter_grads(check, dw, dbias, x, w, l.O);
  if (dx.defined()) {
    check.like("dx", dx, "x", x);
    check.same_shape("dx", dx, "x", x);
  }
  return l;
}

Linear matmul_residual_forward(const OpCheck& check, const Tensor& out, const Tensor& x, const Tensor& w,
                               const Tensor& bias, const Tensor& residual) {
  const Linear l = matmul_forward(check, out, x, w, bias);
  check.like("residual", residual, "out", out);
  check.same_shape("residual", residual, "out", out);
  check.require(out.numel() == 0 || residual.raw() != out.raw(), "residual ", residual.str(), " and out ", out.str(),
                " must be distinct buffers");
  return l;
}

Linear matmul_gelu_forward(const OpCheck& check, const Tensor& out, const Tensor& pre, const Tensor& x,
                           const Tensor& w, const Tensor& bias) {
  const Linear l = linear_of(check, x, w);
  check.like("pre", pre, "x", x);
  check.rows("pre", pre, l.N, l.O);
  check.like("out", out, "x", x);
  check.same_shape("out", out, "pre", pre);
  check.require(pre.numel() == 0 || (out.raw() != pre.raw() && out.raw() != x.raw() && pre.raw() != x.raw()), "out ",
                out.str(), ", pre ", pre.str(), " and x ", x.str(), " must be distinct buffers");
  optional_vector(check, "bias", bias, x, l.O);
  return l;
}

Linear matmul_backward_gelu(const OpCheck& check, const Tensor& dpre, const Tensor& dw, const Tensor& dbias,
                            const Tensor& dout, const Tensor& x, const Tensor& w, const Tensor& pre) {
  const Linear l = linear_of(check, x, w);
  check.like("dout", dout, "x", x);
  check.rows("dout", dout, l.N, l.O);
  check.require(dw.defined(), "dw is undefined");
  parameter_grads(check, dw, dbias, x, w, l.O);
  elementwise(check, {{"x", &x}, {"pre", &pre}, {"dpre", &dpre}});
  check.require(x.numel() == 0 || (dpre.raw() != pre.raw() && dpre.raw() != x.raw() && dpre.raw() != dout.raw()),
                "dpre ", dpre.str(), " must not alias pre, x or dout");
  return l;
}

void attention_forward(const OpCheck& check, const Tensor& out, const Tensor& saved, const Tensor& qkv,
                       const AttentionShape& s, const Shape& saved_shape, DType saved_dtype) {
  attention_shape(check, s);
  check.compute("qkv", qkv);
  check.rows("qkv", qkv, s.batch * s.seq, s.qkv_width());
  check.like("out", out, "qkv", qkv);
  check.rows("out", out, s.batch * s.seq, s.out_width());
  attention_saved(check, saved, saved_shape, saved_dtype);
}

void attention_backward(const OpCheck& check, const Tensor& dqkv, const Tensor& dout, const Tensor& qkv,
                        const Tensor& out, const Tensor& saved, const AttentionShape& s, const Shape& saved_shape,
                        DType saved_dtype) {
  attention_shape(check, s);
  check.compute("qkv", qkv);
  check.rows("qkv", qkv, s.batch * s.seq, s.qkv_width());
  check.like("dqkv", dqkv, "qkv", qkv);
  check.same_shape("dqkv", dqkv, "qkv", qkv);
  check.like("out", out, "qkv", qkv);
  check.rows("out", out, s.batch * s.seq, s.out_width());
  check.like("dout", dout, "qkv", qkv);
  check.same_shape("dout", dout, "out", out);
  attention_saved(check, saved, saved_shape, saved_dtype);
}

int64_t cross_entropy(const OpCheck& check, const Tensor& losses, const Tensor& dlogits, const Tensor& logits,
                      const Tensor& targets, int64_t vocab, double label_smoothing) {
  check.compute("logits", logits);
  check.require(logits.ndim() >= 1 && logits.dim(-1) > 0, "logits ", logits.str(), " must be [N, Vp]");
  const int64_t Vp = logits.dim(-1), N = logits.numel() / Vp;
  check.require(vocab >= 1 && vocab <= Vp, "vocab ", vocab, " must be in [1, ", Vp, "] for logits ", logits.str());
  label_smoothing_in_range(check, label_smoothing);
  check.ints("targets", targets);
  check.require(targets.numel() == N, "targets ", targets.str(), " must hold one target per row of logits ",
                logits.str());
  check.reduction("losses", losses);
  check.require(losses.numel() == N, "losses ", losses.str(), " must hold one loss per row of logits ", logits.str());
  if (dlogits.defined()) {
    check.like("dlogits", dlogits, "logits", logits);
    check.same_shape("dlogits", dlogits, "logits", logits);
  }
  check.ids_in_range("targets", targets, vocab, true);
  return N;
}

int64_t cross_entropy_partials(const OpCheck& check, const Tensor& partials, const Tensor& logits_local,
                               const Tensor& targets, int64_t vocab_begin, int64_t vocab) {
  const int64_t N = vocab_split(check, logits_local, targets, vocab_begin, vocab);
  check.reduction("partials", partials);
  check.rows("partials", partials, N, 4);
  return N;
}

int64_t cross_entropy_from_partials(const OpCheck& check, const Tensor& losses, const Tensor& dlogits_local,
                                    const Tensor& gathered, const Tensor& logits_local, const Tensor& targets,
                                    int64_t vocab_begin, int64_t vocab, double label_smoothing) {
  const int64_t N = vocab_split(check, logits_local, targets, vocab_begin, vocab);
  label_smoothing_in_range(check, label_smoothing);
  check.reduction("gathered", gathered);
  check.require(gathered.ndim() == 3 && gathered.dim(0) >= 1 && gathered.dim(1) == N && gathered.dim(2) == 4,
                "gathered ", gathered.str(), " must be [R, ", N, ", 4] (every rank's partials)");
  check.reduction("losses", losses);
  check.require(losses.dtype() == gathered.dtype(), "losses ", losses.str(), " must have the dtype of gathered ",
                gathered.str());
  check.require(losses.numel() == N, "losses ", losses.str(), " must hold one loss per row of logits_local ",
                logits_local.str());
  if (dlogits_local.defined()) {
    check.like("dlogits_local", dlogits_local, "logits_local", logits_local);
    check.same_shape("dlogits_local", dlogits_local, "logits_local", logits_local);
  }
  return N;
}

void float_list(const OpCheck& check, const std::vector<Tensor>& tensors) {
  for (size_t i = 0; i < tensors.size(); ++i) check.storage(("tensor " + std::to_string(i)).c_str(), tensors[i]);
}

void scalar_total(const OpCheck& check, const Tensor& total) {
  check.on_device("total", total);
  check.require(total.dtype() == DType::F64 && total.numel() == 1, "total ", total.str(), " must be one f64 element");
}

void accumulate_sum(const OpCheck& check, const Tensor& total, const Tensor& x, double count) {
  scalar_total(check, total);
  check.reduction("x", x);
  check.require(count > 0, "count ", count, " must be positive");
}

void adamw_update(const OpCheck& check, const Tensor& param, const Tensor& m, const Tensor& v, const Tensor& grad,
                  const Tensor& compute_copy, const AdamWHyper& hp) {
  if (hp.step_stats.defined()) {
    check.on_device("step_stats", hp.step_stats);
    check.require(hp.step_stats.dtype() == DType::F64 && hp.step_stats.numel() == kStepStatsSize, "step_stats ",
                  hp.step_stats.str(), " must be f64 [", static_cast<int>(kStepStatsSize), "]");
  }
  check.require(hp.max_grad_norm >= 0, "max_grad_norm ", hp.max_grad_norm, " must be >= 0 (0: no clipping)");
  check.master("param", param);
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"m", &m}, {"v", &v}}) {
    check.master(name, *t);
    check.require(t->dtype() == param.dtype(), name, " ", t->str(), " must have the dtype of param ", param.str());
  }
  check.storage("grad", grad);
  for (const auto& [name, t] : {std::pair<const char*, const Tensor*>{"m", &m}, {"v", &v}, {"grad", &grad}})
    check.require(t->numel() == param.numel(), name, " ", t->str(), " must match param ", param.str());
  if (compute_copy.defined()) {
    check.storage("compute_copy", compute_copy);
    check.require(compute_copy.numel() == param.numel(), "compute_copy ", compute_copy.str(), " must match param ",
                  param.str());
  }
  check.require(hp.step >= 1, "step ", hp.step, " must be >= 1 (bias correction is 1-based)");
}

Axis dot_along_axis(const OpCheck& check, const Tensor& out, const Tensor& a, const Tensor& b, int axis) {
  check.compute("a", a);
  check.like("b", b, "a", a);
  check.same_shape("b", b, "a", a);
  check.require(axis >= 0 && axis < a.ndim(), "axis ", axis, " is outside the ", a.ndim(), " dimensions of a ",
                a.str());
  Axis r;
  r.D = a.dim(axis);
  check.reduction("out", out);
  check.shape("out", out, {r.D});
  for (int d = 0; d < axis; ++d) r.outer *= a.dim(d);
  for (int d = axis + 1; d < a.ndim(); ++d) r.inner *= a.dim(d);
  return r;
}

void zero_deleted(const OpCheck& check, const Tensor& x, const std::vector<DimensionMask>& dims, const Tensor& keep) {
  check.storage("x", x);
  check.ints("keep", keep);
  for (size_t i = 0; i < dims.size(); ++i) {
    const DimensionMask& d = dims[i];
    check.require(d.size > 0 && d.inner > 0 && d.numel >= 0 && d.numel % (d.size * d.inner) == 0 &&
                      d.numel < (int64_t{1} << 31),
                  "dims[", i, "]: ", d.numel, " elements are not a whole number of [size ", d.size, ", inner ",
                  d.inner, "] slabs below 2^31");
    check.require(d.offset >= 0 && d.offset + d.numel <= x.numel(), "dims[", i, "]: elements [", d.offset, ", ",
                  d.offset + d.numel, ") are outside x ", x.str());
    check.require(d.flags_at >= 0 && d.flags_at + d.size <= keep.numel(), "dims[", i, "]: flags [", d.flags_at, ", ",
                  d.flags_at + d.size, ") are outside keep ", keep.str());
  }
}

int64_t distillation_loss(const OpCheck& check, const Tensor& losses, const Tensor& dstudent, const Tensor& student,
                          const Tensor& teacher, int64_t classes, double temperature) {
  check.compute("student", student);
  check.require(student.ndim() >= 1 && student.dim(-1) > 0, "student ", student.str(), " must be [N, Vp]");
  check.like("teacher", teacher, "student", student);
  check.same_shape("teacher", teacher, "student", student);
  const int64_t Vp = student.dim(-1), N = student.numel() / Vp;
  check.require(classes >= 1 && classes <= Vp, "classes ", classes, " must be in [1, ", Vp, "] for student ",
                student.str());
  check.require(temperature > 0 && std::isfinite(temperature), "temperature ", temperature,
                " must be positive and finite");
  check.reduction("losses", losses);
  check.require(losses.numel() == N, "losses ", losses.str(), " must hold one loss per row of student ",
                student.str());
  if (dstudent.defined()) {
    check.like("dstudent", dstudent, "student", student);
    check.same_shape("dstudent", dstudent, "student", student);
  }
  return N;
}

}  // namespace op_contract
}  // namespace loom
