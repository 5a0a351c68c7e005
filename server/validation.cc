#include "server/validation.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace sinkscope {
namespace server {

bool IsValidUtf8(std::string_view text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    uint32_t cp;
    if ((c & 0xE0) == 0xC0) {
      len = 2;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + len > n) return false;
    for (size_t k = 1; k < len; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000)) {
      return false;  // overlong
    }
    if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += len;
  }
  return true;
}

v1::JobType JobTypeOf(const v1::JobRequest& request) {
  switch (request.params_case()) {
    case v1::JobRequest::kScan:
      return v1::JOB_TYPE_ACTIVATION_SCAN;
    default:
      return v1::JOB_TYPE_UNSPECIFIED;
  }
}

absl::Status ValidateScanRequest(const v1::ActivationScanRequest& scan) {
  if (scan.has_top_k() && (scan.top_k() < 1 || scan.top_k() > 64)) {
    return absl::InvalidArgumentError(
        absl::StrCat("scan.top_k must be in 1..64, got ", scan.top_k()));
  }
  if (scan.has_abs_threshold() && !(scan.abs_threshold() >= 0 && std::isfinite(scan.abs_threshold()))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "scan.abs_threshold must be a finite number >= 0, got ", scan.abs_threshold()));
  }
  if (scan.has_rel_threshold() && !(scan.rel_threshold() >= 0 && std::isfinite(scan.rel_threshold()))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "scan.rel_threshold must be a finite number >= 0, got ", scan.rel_threshold()));
  }
  if (scan.has_step_fraction() && !(scan.step_fraction() > 0 && scan.step_fraction() <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("scan.step_fraction must be in (0, 1], got ", scan.step_fraction()));
  }
  return absl::OkStatus();
}

absl::Status ValidateJobRequest(const v1::JobRequest& request, const ModelCatalog& catalog,
                                const RequestLimits& limits) {
  if (request.model().empty()) return absl::InvalidArgumentError("model is not set; see ListModels");
  const CatalogEntry* model = catalog.Find(request.model());
  if (model == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("model \"", request.model().substr(0, 128), "\" is not in the catalog; see ListModels"));
  }
  if (!model->available) {
    return absl::FailedPreconditionError(absl::StrCat(
        "model ", model->name, " is not available on this server: ", model->unavailable_reason));
  }
  switch (request.dtype()) {
    case v1::DTYPE_UNSPECIFIED:
    case v1::DTYPE_FLOAT32:
    case v1::DTYPE_BFLOAT16:
    case v1::DTYPE_FLOAT16:
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("unknown dtype value ", request.dtype()));
  }
  switch (request.params_case()) {
    case v1::JobRequest::kScan: {
      absl::Status s = ValidateScanRequest(request.scan());
      if (!s.ok()) return s;
      break;
    }
    case v1::JobRequest::PARAMS_NOT_SET:
      return absl::InvalidArgumentError("no job parameters: set one of the params (e.g. scan)");
    default:
      return absl::UnimplementedError("this job type is not implemented yet");
  }
  if (request.sequences_size() == 0) {
    return absl::InvalidArgumentError("no input: give at least one sequence (text or token ids)");
  }
  if (request.sequences_size() > limits.max_sequences) {
    return absl::ResourceExhaustedError(absl::StrCat("too many sequences: ", request.sequences_size(),
                                                     " > ", limits.max_sequences));
  }
  int64_t total_tokens = 0;
  for (int i = 0; i < request.sequences_size(); ++i) {
    const v1::Sequence& seq = request.sequences(i);
    switch (seq.input_case()) {
      case v1::Sequence::kText: {
        if (seq.text().empty()) {
          return absl::InvalidArgumentError(absl::StrCat("sequence ", i, " is empty text"));
        }
        if (model->tokenizer_path.empty()) {
          return absl::InvalidArgumentError(absl::StrCat(
              "sequence ", i, " is text but model ", model->name,
              " has no tokenizer; send token ids"));
        }
        if (!IsValidUtf8(seq.text())) {
          return absl::InvalidArgumentError(absl::StrCat("sequence ", i, " is not valid UTF-8"));
        }
        // A token covers at least one byte; + BOS.
        total_tokens += static_cast<int64_t>(seq.text().size()) + 1;
        break;
      }
      case v1::Sequence::kIds: {
        const auto& ids = seq.ids().ids();
        if (ids.empty()) {
          return absl::InvalidArgumentError(absl::StrCat("sequence ", i, " has no token ids"));
        }
        if (model->n_ctx > 0 && ids.size() > model->n_ctx) {
          return absl::InvalidArgumentError(
              absl::StrCat("sequence ", i, " has ", ids.size(), " tokens, more than the context of model ",
                           model->name, " (", model->n_ctx, ")"));
        }
        for (int k = 0; k < ids.size(); ++k) {
          if (ids[k] < 0 || (model->vocab_size > 0 && ids[k] >= model->vocab_size)) {
            return absl::InvalidArgumentError(absl::StrCat(
                "sequence ", i, " position ", k, ": token id ", ids[k], " is outside [0, ",
                model->vocab_size, ") of model ", model->name));
          }
        }
        total_tokens += ids.size();
        break;
      }
      default:
        return absl::InvalidArgumentError(
            absl::StrCat("sequence ", i, " is empty: set text or ids"));
    }
  }
  if (total_tokens > limits.max_total_tokens) {
    return absl::ResourceExhaustedError(absl::StrCat("request too large: up to ", total_tokens,
                                                     " tokens > ", limits.max_total_tokens));
  }
  return absl::OkStatus();
}

}  // namespace server
}  // namespace sinkscope
