#include "server/mechanism_validation.h"

#include <cmath>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/hook_layout.h"
#include "common/status_macros.h"

namespace sinkscope {
namespace server {
namespace {

absl::Status Invalid(const std::string& m) { return absl::InvalidArgumentError(m); }

/// Bytes of one activations record besides its values (hook, shape, dims,
/// framing): an allowance, so that the estimate stays above what is stored.
constexpr int64_t kRecordOverheadBytes = 1024;

absl::Status CheckMlpBlock(const std::string& field, int64_t b, const CatalogEntry& m) {
  const int64_t n_blocks = 2 * m.n_layers;
  if (b < 1 || b > n_blocks) {
    return Invalid(absl::StrCat(field, ": block ", b, " does not exist: model ", m.name,
                                " has blocks 1..", n_blocks));
  }
  if (b % 2 != 0) {
    return Invalid(absl::StrCat(field, ": block ", b, " is an attention block (layer ", (b - 1) / 2,
                                " attn); an MLP block (even number) is needed"));
  }
  return absl::OkStatus();
}

absl::Status CheckThreshold(const std::string& field, bool has, double v) {
  if (has && !(std::isfinite(v) && v >= 0)) {
    return Invalid(absl::StrCat(field, " must be a finite number >= 0, got ", v));
  }
  return absl::OkStatus();
}

absl::Status ValidateFfn(const v1::FfnQuadraticRequest& r, const CatalogEntry& m) {
  for (int32_t b : r.blocks()) {
    RETURN_IF_ERROR(CheckMlpBlock("ffn_quadratic.blocks", b, m));
  }
  if (r.has_top_channels() && (r.top_channels() < 1 || r.top_channels() > m.d_model)) {
    return Invalid(absl::StrCat("ffn_quadratic.top_channels must be in 1..d_model (", m.d_model,
                                "), got ", r.top_channels()));
  }
  if (r.has_sample_channels() && (r.sample_channels() < 0 || r.sample_channels() > m.d_model)) {
    return Invalid(absl::StrCat("ffn_quadratic.sample_channels must be in 0..d_model (", m.d_model,
                                "), got ", r.sample_channels()));
  }
  if (r.has_n_eigenvalues() && (r.n_eigenvalues() < 1 || r.n_eigenvalues() > 64)) {
    return Invalid(absl::StrCat("ffn_quadratic.n_eigenvalues must be in 1..64, got ", r.n_eigenvalues()));
  }
  if (r.has_top_rows() && (r.top_rows() < 1 || r.top_rows() > 256)) {
    return Invalid(absl::StrCat("ffn_quadratic.top_rows must be in 1..256, got ", r.top_rows()));
  }
  if (r.has_outlier_factor() && !(std::isfinite(r.outlier_factor()) && r.outlier_factor() > 1)) {
    return Invalid(absl::StrCat("ffn_quadratic.outlier_factor must be a finite number > 1, got ",
                                r.outlier_factor()));
  }
  return absl::OkStatus();
}

absl::Status ValidateSilu(const v1::SiluRegimeRequest& r, const CatalogEntry& m) {
  for (int32_t b : r.blocks()) {
    RETURN_IF_ERROR(CheckMlpBlock("silu_regime.blocks", b, m));
  }
  if (r.has_channel() && (r.channel() < 0 || r.channel() >= m.d_model)) {
    return Invalid(absl::StrCat("silu_regime.channel ", r.channel(), " is out of range 0..",
                                m.d_model - 1));
  }
  RETURN_IF_ERROR(CheckThreshold("silu_regime.abs_threshold", r.has_abs_threshold(), r.abs_threshold()));
  return CheckThreshold("silu_regime.rel_threshold", r.has_rel_threshold(), r.rel_threshold());
}

absl::Status ValidateVo(const v1::VoCircuitRequest& r, const CatalogEntry& m) {
  for (int32_t id : r.token_ids()) {
    if (id < 0 || id >= m.vocab_size) {
      return Invalid(absl::StrCat("vo_circuit.token_ids: token id ", id, " is out of range [0, ",
                                  m.vocab_size, ")"));
    }
  }
  if (r.has_vocab_sample() && (r.vocab_sample() < 0 || r.vocab_sample() > m.vocab_size)) {
    return Invalid(absl::StrCat("vo_circuit.vocab_sample must be in 0..", m.vocab_size, ", got ",
                                r.vocab_sample()));
  }
  if (r.token_ids().empty() && r.has_vocab_sample() && r.vocab_sample() == 0) {
    return Invalid("vo_circuit: give --tokens (vo_circuit.token_ids) or --vocab-sample N > 0 (vocab_sample)");
  }
  if (r.has_step_up_block()) return CheckMlpBlock("vo_circuit.step_up_block", r.step_up_block(), m);
  return absl::OkStatus();
}

absl::Status ValidateActivations(const v1::JobRequest& request, const CatalogEntry& m,
                                 int64_t max_result_bytes) {
  const v1::ActivationsRequest& r = request.activations();
  if (r.hooks().empty()) return Invalid("activations.hooks is empty: name at least one hook point");
  HookDims dims;
  dims.n_layers = m.n_layers;
  dims.d_model = m.d_model;
  dims.d_ffn = m.d_ffn;
  dims.d_vocab = m.vocab_size;
  dims.n_heads = m.n_heads;
  dims.n_kv_heads = m.n_kv_heads;
  dims.d_head = m.d_head;
  std::vector<int64_t> selected(r.sequences().begin(), r.sequences().end());
  for (int64_t s : selected) {
    if (s < 0 || s >= request.sequences_size()) {
      return Invalid(absl::StrCat("activations.sequences: index ", s, " is out of range (",
                                  request.sequences_size(), " sequences)"));
    }
  }
  if (selected.empty()) {
    for (int i = 0; i < request.sequences_size(); ++i) selected.push_back(i);
  }
  HookSlices slices;
  slices.positions.assign(r.positions().begin(), r.positions().end());
  slices.channels.assign(r.channels().begin(), r.channels().end());
  slices.heads.assign(r.heads().begin(), r.heads().end());
  const bool add_bos = request.has_add_bos() ? request.add_bos() : true;
  int64_t bytes = 0;
  for (const std::string& hook : r.hooks()) {
    absl::StatusOr<HookLayout> layout = HookLayoutOf(hook, dims);
    if (!layout.ok()) return Invalid(absl::StrCat("activations.hooks: ", layout.status().message()));
    for (int64_t s : selected) {
      const v1::Sequence& seq = request.sequences(static_cast<int>(s));
      // Token ids: exact; text: an upper bound of one token per byte (+ BOS).
      const bool exact = seq.has_ids();
      const int64_t T = exact ? seq.ids().ids_size()
                              : static_cast<int64_t>(seq.text().size()) + (add_bos ? 1 : 0);
      if (exact) {
        if (absl::Status st = CheckSlices(hook, *layout, T, slices); !st.ok()) return st;
      }
      int64_t n = 1;
      for (int64_t x : SlicedShape(*layout, T, slices)) n *= x;
      // float32 values plus the record's hook name, shape and dims.
      bytes += 4 * n + kRecordOverheadBytes;
    }
  }
  // The engine's cap, or the server's max_result_bytes where that is lower:
  // a job refused here instead of failing once it has computed everything.
  const bool result_cap = max_result_bytes < kDefaultMaxActivationsBytes;
  const int64_t limit = result_cap ? max_result_bytes : kDefaultMaxActivationsBytes;
  if (bytes > limit) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "activations: the result would be about ", bytes, " bytes (float32; text counted at one "
        "token per byte), over the per-job limit of ", limit, " bytes (",
        result_cap ? "the server's max_result_bytes" : "the engine's activations cap",
        "); slice positions/channels/heads, select fewer sequences or name fewer hooks"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateMechanismRequest(const v1::JobRequest& request, const CatalogEntry& model,
                                      int64_t max_result_bytes) {
  switch (request.params_case()) {
    case v1::JobRequest::kFfnQuadratic:
      return ValidateFfn(request.ffn_quadratic(), model);
    case v1::JobRequest::kSiluRegime:
      return ValidateSilu(request.silu_regime(), model);
    case v1::JobRequest::kVoCircuit:
      return ValidateVo(request.vo_circuit(), model);
    case v1::JobRequest::kActivations:
      return ValidateActivations(request, model, max_result_bytes);
    default:
      return absl::UnimplementedError("not a mechanism job");
  }
}

}  // namespace server
}  // namespace sinkscope
