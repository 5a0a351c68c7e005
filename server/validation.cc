#include "server/validation.h"
#include "server/train_validation.h"

#include <utf8.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/job_types.h"
#include "server/mechanism_validation.h"
#include "common/status_macros.h"

namespace sinkscope {
namespace server {

bool IsValidUtf8(std::string_view text) {
  // UTF8-CPP (Debian libutfcpp-dev): rejects overlong forms, surrogates,
  // code points above U+10FFFF and truncated sequences.
  return utf8::is_valid(text.begin(), text.end());
}

v1::JobType JobTypeOf(const v1::JobRequest& request) {
  const JobTypeDescriptor* job = JobTypeOfRequest(request);
  return job != nullptr ? job->type : v1::JOB_TYPE_UNSPECIFIED;
}

namespace {

absl::Status Invalid(const std::string& message) { return absl::InvalidArgumentError(message); }

bool FiniteNonNegative(double v) { return std::isfinite(v) && v >= 0; }

/// Abs/rel thresholds (and the step fraction) of a spike rule under `prefix`.
absl::Status CheckThresholds(const std::string& prefix, bool has_abs, double abs, bool has_rel,
                             double rel, bool has_step = false, double step = 0.5) {
  if (has_abs && !FiniteNonNegative(abs)) {
    return Invalid(absl::StrCat(prefix, ".abs_threshold must be a finite number >= 0, got ", abs));
  }
  if (has_rel && !FiniteNonNegative(rel)) {
    return Invalid(absl::StrCat(prefix, ".rel_threshold must be a finite number >= 0, got ", rel));
  }
  if (has_step && !(step > 0 && step <= 1)) {
    return Invalid(absl::StrCat(prefix, ".step_fraction must be in (0, 1], got ", step));
  }
  return absl::OkStatus();
}

/// Layer indices against the model (n_layers 0 = unknown: not checked).
absl::Status CheckLayers(const std::string& field,
                         const google::protobuf::RepeatedField<int32_t>& layers,
                         const CatalogEntry& model) {
  for (int i = 0; i < layers.size(); ++i) {
    if (layers[i] < 0 || (model.n_layers > 0 && layers[i] >= model.n_layers)) {
      return Invalid(absl::StrCat(field, ": layer ", layers[i], " does not exist: model ",
                                  model.name, " has layers 0..", model.n_layers - 1));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckTokenId(const std::string& what, int64_t id, const CatalogEntry& model) {
  if (id < 0 || (model.vocab_size > 0 && id >= model.vocab_size)) {
    return Invalid(absl::StrCat(what, ": token id ", id, " is outside [0, ", model.vocab_size,
                                ") of model ", model.name));
  }
  return absl::OkStatus();
}

/// Sequences (`label` names them in messages); adds their token estimate.
absl::Status CheckSequences(const std::string& label,
                            const google::protobuf::RepeatedPtrField<v1::Sequence>& sequences,
                            const CatalogEntry& model, int64_t min_ids, int64_t* total_tokens) {
  for (int i = 0; i < sequences.size(); ++i) {
    const v1::Sequence& seq = sequences[i];
    const std::string name = absl::StrCat(label, " ", i);
    switch (seq.input_case()) {
      case v1::Sequence::kText: {
        if (seq.text().empty()) return Invalid(absl::StrCat(name, " is empty text"));
        if (model.tokenizer_path.empty()) {
          return Invalid(absl::StrCat(name, " is text but model ", model.name,
                                      " has no tokenizer; send token ids"));
        }
        if (!IsValidUtf8(seq.text())) return Invalid(absl::StrCat(name, " is not valid UTF-8"));
        // Text counts its bytes + 2 tokens: an upper bound (every piece of
        // the llama2.c and SentencePiece tokenizers covers >= 1 byte; plus
        // BOS and the dummy-prefix piece), so that a request too large is
        // refused here, with the same code whatever its size.
        *total_tokens += static_cast<int64_t>(seq.text().size()) + 2;
        break;
      }
      case v1::Sequence::kIds: {
        const auto& ids = seq.ids().ids();
        if (ids.empty()) return Invalid(absl::StrCat(name, " has no token ids"));
        if (model.n_ctx > 0 && ids.size() > model.n_ctx) {
          return Invalid(absl::StrCat(name, " has ", ids.size(),
                                      " tokens, more than the context of model ", model.name,
                                      " (", model.n_ctx, ")"));
        }
        if (ids.size() < min_ids) {
          return Invalid(absl::StrCat(name, " has ", ids.size(), " token(s); this job needs >= ",
                                      min_ids));
        }
        for (int k = 0; k < ids.size(); ++k) {
          if (ids[k] < 0 || (model.vocab_size > 0 && ids[k] >= model.vocab_size)) {
            return Invalid(absl::StrCat(name, " position ", k, ": token id ", ids[k],
                                        " is outside [0, ", model.vocab_size, ") of model ",
                                        model.name));
          }
        }
        *total_tokens += ids.size();
        break;
      }
      default:
        return Invalid(absl::StrCat(name, " is empty: set text or ids"));
    }
  }
  return absl::OkStatus();
}


/// RESOURCE_EXHAUSTED when a list has more than `limit` entries.
absl::Status CheckCount(const std::string& field, int64_t n, int64_t limit,
                        const char* limit_name) {
  if (n <= limit) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat(field, " has ", n, " entries, more than the limit of ",
                                                   limit, " (", limit_name, ")"));
}

/// INVALID_ARGUMENT naming the first value that appears twice.
template <typename Values>
absl::Status CheckNoDuplicates(const std::string& field, const Values& values) {
  std::set<typename Values::value_type> seen;
  for (const auto& v : values) {
    if (!seen.insert(v).second) {
      return Invalid(absl::StrCat(field, ": ", v, " appears more than once (give each once)"));
    }
  }
  return absl::OkStatus();
}

/// Every repeated field of `request` against `limits` (counts, duplicates,
/// text bytes), before any per-entry check.
absl::Status CheckRepeatedBounds(const v1::JobRequest& request, const CatalogEntry& model,
                                 const RequestLimits& limits) {
  const int64_t L = limits.max_list_entries;
  int64_t n_sequences = request.sequences_size();
  int64_t text_bytes = 0;
  auto add_text = [&](const google::protobuf::RepeatedPtrField<v1::Sequence>& seqs) {
    for (const v1::Sequence& seq : seqs) {
      if (seq.has_text()) text_bytes += static_cast<int64_t>(seq.text().size());
    }
  };
  add_text(request.sequences());
  auto interventions = [&](const std::string& field,
                           const v1::InterventionRequest& r) -> absl::Status {
    RETURN_IF_ERROR(CheckCount(absl::StrCat(field, ".interventions"), r.interventions_size(), limits.max_interventions, "max_interventions"));
    for (int i = 0; i < r.interventions_size(); ++i) {
      const v1::InterventionSpec& spec = r.interventions(i);
      const std::string where = absl::StrCat(field, ".interventions[", i, "]");
      if (spec.has_substitution()) {
        const v1::ConstantSubstitution& sub = spec.substitution();
        for (const auto& [name, list] :
             {std::pair<const char*, const google::protobuf::RepeatedField<int32_t>*>{
                  ".substitution.channels", &sub.channels()},
              {".substitution.positions", &sub.positions()}}) {
          RETURN_IF_ERROR(CheckCount(where + name, list->size(), L, "max_list_entries"));
          RETURN_IF_ERROR(CheckNoDuplicates(where + name, *list));
        }
        const int64_t width_cap = std::max<int64_t>(L, model.d_model);
        RETURN_IF_ERROR(CheckCount(where + ".substitution.constant", sub.constant_size(), width_cap, "d_model"));
      } else if (spec.has_ablation()) {
        const v1::SinkAblation& a = spec.ablation();
        RETURN_IF_ERROR(CheckCount(where + ".ablation.heads", a.heads_size(), L, "max_list_entries"));
        std::vector<std::string> heads;
        for (const v1::HeadRef& h : a.heads()) heads.push_back(absl::StrCat("layer ", h.layer(), " head ", h.head()));
        RETURN_IF_ERROR(CheckNoDuplicates(where + ".ablation.heads", heads));
        RETURN_IF_ERROR(CheckCount(where + ".ablation.sink_positions", a.sink_positions_size(), L, "max_list_entries"));
        RETURN_IF_ERROR(CheckNoDuplicates(where + ".ablation.sink_positions", a.sink_positions()));
      }
    }
    n_sequences += r.calibration_size();
    add_text(r.calibration());
    return absl::OkStatus();
  };
  absl::Status s = absl::OkStatus();
  switch (request.params_case()) {
    case v1::JobRequest::kSinks:
      // Repeated layers are analysed once (folded), but still counted.
      s = CheckCount("sinks.layers", request.sinks().layers_size(), L, "max_list_entries");
      break;
    case v1::JobRequest::kSelfAttentionProfile: {
      const v1::SelfAttentionProfileRequest& r = request.self_attention_profile();
      s = CheckCount("self_attention_profile.layers", r.layers_size(), L, "max_list_entries");
      if (s.ok()) s = CheckCount("self_attention_profile.delimiter_ids", r.delimiter_ids_size(), L, "max_list_entries");
      if (s.ok()) s = CheckNoDuplicates("self_attention_profile.delimiter_ids", r.delimiter_ids());
      if (s.ok()) s = CheckCount("self_attention_profile.delimiters", r.delimiters_size(), L, "max_list_entries");
      if (s.ok()) {
        std::vector<std::string> shown;
        for (const std::string& d : r.delimiters()) shown.push_back(absl::StrCat("\"", d.substr(0, 64), "\""));
        s = CheckNoDuplicates("self_attention_profile.delimiters", shown);
      }
      break;
    }
    case v1::JobRequest::kFirstTokenProbe: {
      const v1::FirstTokenProbeRequest& r = request.first_token_probe();
      s = CheckCount("first_token_probe.token_ids", r.token_ids_size(), limits.max_probe_ids, "max_probe_ids");
      if (s.ok()) s = CheckNoDuplicates("first_token_probe.token_ids", r.token_ids());
      if (s.ok() && r.token_ids().empty()) {
        const int64_t begin = r.has_range_begin() ? r.range_begin() : 0;
        const int64_t end = r.has_range_end() ? r.range_end() : model.vocab_size;
        if (end - begin > limits.max_probe_ids) {
          s = absl::ResourceExhaustedError(absl::StrCat(
              "first_token_probe range [", begin, ", ", end, ") probes ", end - begin,
              " tokens, more than the limit of ", limits.max_probe_ids, " (max_probe_ids)"));
        }
      }
      if (s.ok()) s = CheckCount("first_token_probe.prefix", r.prefix_size(), L, "max_list_entries");
      if (s.ok() && r.has_max_listed_exceptions() && r.max_listed_exceptions() > limits.max_listed_exceptions) {
        s = absl::ResourceExhaustedError(absl::StrCat(
            "first_token_probe.max_listed_exceptions = ", r.max_listed_exceptions(),
            " is more than the limit of ", limits.max_listed_exceptions, " (max_listed_exceptions)"));
      }
      break;
    }
    case v1::JobRequest::kActivations: {
      // Repeated hooks are read once (folded), but still counted.
      const v1::ActivationsRequest& r = request.activations();
      s = CheckCount("activations.hooks", r.hooks_size(), L, "max_list_entries");
      for (const auto& [name, list] :
           {std::pair<const char*, const google::protobuf::RepeatedField<int32_t>*>{
                "activations.sequences", &r.sequences()},
            {"activations.positions", &r.positions()},
            {"activations.channels", &r.channels()},
            {"activations.heads", &r.heads()}}) {
        if (s.ok()) s = CheckCount(name, list->size(), L, "max_list_entries");
        if (s.ok()) s = CheckNoDuplicates(name, *list);
      }
      break;
    }
    case v1::JobRequest::kProfile:
      s = CheckCount("profile.sink_layers", request.profile().sink_layers_size(), L, "max_list_entries");
      if (s.ok()) s = CheckNoDuplicates("profile.sink_layers", request.profile().sink_layers());
      break;
    case v1::JobRequest::kConstantSubstitution:
      s = interventions("constant_substitution", request.constant_substitution());
      break;
    case v1::JobRequest::kSinkAblation:
      s = interventions("sink_ablation", request.sink_ablation());
      break;
    default:
      break;
  }
  if (!s.ok()) return s;
  if (n_sequences > limits.max_sequences) {
    return absl::ResourceExhaustedError(absl::StrCat("too many sequences: ", n_sequences, " > ",
                                                     limits.max_sequences, " (max_sequences)"));
  }
  if (text_bytes > limits.max_text_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "request too large: ", text_bytes, " bytes of text > ", limits.max_text_bytes,
        " (max_text_bytes)"));
  }
  return absl::OkStatus();
}

absl::Status ValidateSinks(const v1::SinksRequest& r, const CatalogEntry& model) {
  if (r.has_window() && r.window() < 2) {
    return Invalid(absl::StrCat("sinks.window (T) must be >= 2, got ", r.window()));
  }
  if (r.has_window() && model.n_ctx > 0 && r.window() > model.n_ctx) {
    return Invalid(absl::StrCat("sinks.window (T) = ", r.window(), " exceeds the context of model ",
                                model.name, " (", model.n_ctx, ")"));
  }
  if (r.has_epsilon() && !(r.epsilon() > 0 && r.epsilon() < 1)) {
    return Invalid(absl::StrCat("sinks.epsilon must be in (0, 1), got ", r.epsilon()));
  }
  return CheckLayers("sinks.layers", r.layers(), model);
}

absl::Status ValidateFirstToken(const v1::FirstTokenProbeRequest& r, const CatalogEntry& model) {
  for (int32_t id : r.token_ids()) {
    RETURN_IF_ERROR(CheckTokenId("first_token_probe.token_ids", id, model));
  }
  if (r.token_ids().empty()) {
    const int64_t begin = r.has_range_begin() ? r.range_begin() : 0;
    const int64_t end = r.has_range_end() ? r.range_end() : model.vocab_size;
    if (begin < 0 || (model.vocab_size > 0 && end > model.vocab_size) || begin >= end) {
      return Invalid(absl::StrCat("first_token_probe.range_begin/range_end: the vocabulary range [",
                                  begin, ", ", end, ") is empty or outside [0, ", model.vocab_size,
                                  ") of model ", model.name));
    }
  } else if (r.has_range_begin() || r.has_range_end()) {
    return Invalid("first_token_probe: give --tokens (token_ids) or a range --range-begin/--range-end "
                   "(range_begin/range_end), not both");
  }
  for (int32_t id : r.prefix()) {
    RETURN_IF_ERROR(CheckTokenId("first_token_probe.prefix", id, model));
  }
  if (model.n_ctx > 0 && r.prefix_size() + 1 > model.n_ctx) {
    return Invalid(absl::StrCat("first_token_probe.prefix has ", r.prefix_size(),
                                " tokens; with the probed token that exceeds the context of model ",
                                model.name, " (", model.n_ctx, ")"));
  }
  RETURN_IF_ERROR(CheckThresholds("first_token_probe", r.has_abs_threshold(), r.abs_threshold(), r.has_rel_threshold(), r.rel_threshold()));
  if (r.has_batch_size() && (r.batch_size() < 1 || r.batch_size() > 65536)) {
    return Invalid(absl::StrCat("first_token_probe.batch_size must be in 1..65536, got ",
                                r.batch_size()));
  }
  if (r.has_max_listed_exceptions() && r.max_listed_exceptions() < 0) {
    return Invalid(absl::StrCat("first_token_probe.max_listed_exceptions must be >= 0, got ",
                                r.max_listed_exceptions()));
  }
  return absl::OkStatus();
}

absl::Status ValidateSpikeSimilarity(const v1::SpikeSimilarityRequest& r,
                                     const CatalogEntry& model) {
  RETURN_IF_ERROR(CheckThresholds("spike_similarity", r.has_abs_threshold(), r.abs_threshold(), r.has_rel_threshold(), r.rel_threshold(), r.has_step_fraction(), r.step_fraction()));
  if (r.step_up_block() < 0 || (model.n_layers > 0 && r.step_up_block() > 2 * model.n_layers)) {
    return Invalid(absl::StrCat("spike_similarity.step_up_block: block ", r.step_up_block(),
                                " does not exist: model ", model.name, " has blocks 1..",
                                2 * model.n_layers));
  }
  return absl::OkStatus();
}

absl::Status ValidateSelfAttention(const v1::SelfAttentionProfileRequest& r,
                                   const CatalogEntry& model) {
  RETURN_IF_ERROR(CheckLayers("self_attention_profile.layers", r.layers(), model));
  for (int32_t id : r.delimiter_ids()) {
    RETURN_IF_ERROR(CheckTokenId("self_attention_profile.delimiter_ids", id, model));
  }
  for (const std::string& d : r.delimiters()) {
    if (model.tokenizer_path.empty()) {
      return Invalid(absl::StrCat("self_attention_profile.delimiters: model ", model.name,
                                  " has no tokenizer; give --delimiter-ids (delimiter_ids)"));
    }
    if (d.empty() || d.size() > 64 || !IsValidUtf8(d)) {
      return Invalid("self_attention_profile.delimiters: each must be 1..64 bytes of UTF-8");
    }
  }
  return absl::OkStatus();
}

/// The evaluation input of a perplexity / intervention job.
absl::Status ValidateEval(const std::string& field, const v1::EvalCorpus& eval,
                          const v1::JobRequest& request, const ModelCatalog& catalog,
                          const CatalogEntry& model) {
  if (!eval.corpus().empty()) {
    const CorpusEntry* corpus = catalog.FindCorpus(eval.corpus());
    if (corpus == nullptr) {
      std::string names;
      for (const CorpusEntry& c : catalog.corpora()) absl::StrAppend(&names, names.empty() ? "" : ", ", c.name);
      return absl::NotFoundError(absl::StrCat(field, ".corpus: \"", eval.corpus().substr(0, 128),
                                              "\" is not a corpus of the catalog (",
                                              names.empty() ? "it has none" : names,
                                              "); see ListModels"));
    }
    if (!corpus->available) {
      return absl::FailedPreconditionError(absl::StrCat("corpus ", corpus->name,
                                                        " is not available on this server: ",
                                                        corpus->unavailable_reason));
    }
    if (absl::Status s = CheckCorpusTokenizer(model, *corpus); !s.ok()) {
      return Invalid(absl::StrCat(field, ".corpus (--corpus): ", s.message()));
    }
    if (request.sequences_size() > 0) {
      return Invalid(absl::StrCat(field, ": give a catalog corpus or sequences, not both"));
    }
  } else if (request.sequences_size() == 0) {
    return Invalid(absl::StrCat("empty corpus: name a catalog corpus in ", field,
                                ".corpus or send the text / token ids as sequences"));
  }
  if (eval.corpus().empty()) {
    // Token ids only: the stream's length is known; scoring needs 2 tokens.
    int64_t n_ids = 0;
    bool all_ids = true;
    for (const v1::Sequence& seq : request.sequences()) {
      if (!seq.has_ids()) all_ids = false;
      n_ids += seq.ids().ids_size();
    }
    if (all_ids && n_ids == 1) {
      return Invalid(absl::StrCat(field, ": the corpus has 1 token; at least 2 are needed"));
    }
  }
  if (eval.has_chunk_length() &&
      (eval.chunk_length() < 2 || (model.n_ctx > 0 && eval.chunk_length() > model.n_ctx))) {
    return Invalid(absl::StrCat(field, ".chunk_length must be in 2..", model.n_ctx,
                                " (the context of model ", model.name, "), got ",
                                eval.chunk_length()));
  }
  if (eval.has_token_budget() && eval.token_budget() < 2) {
    return Invalid(absl::StrCat(field, ".token_budget must be >= 2 tokens (or unset for the whole corpus), got ",
                                eval.token_budget()));
  }
  return absl::OkStatus();
}

absl::Status ValidateIntervention(const std::string& field, const v1::InterventionRequest& r,
                                  const v1::JobRequest& request, const ModelCatalog& catalog,
                                  const CatalogEntry& model, int64_t* total_tokens) {
  RETURN_IF_ERROR(ValidateEval(absl::StrCat(field, ".eval"), r.eval(), request, catalog, model));
  RETURN_IF_ERROR(CheckThresholds(field, r.has_abs_threshold(), r.abs_threshold(), r.has_rel_threshold(), r.rel_threshold(), r.has_step_fraction(), r.step_fraction()));
  const int64_t chunk = r.eval().has_chunk_length() ? r.eval().chunk_length() : 128;
  const int64_t n_blocks = 2 * model.n_layers;
  int n_sub = 0, n_abl = 0;
  for (int i = 0; i < r.interventions_size(); ++i) {
    const v1::InterventionSpec& spec = r.interventions(i);
    const std::string where = absl::StrCat(field, ".interventions[", i, "]");
    if (spec.has_substitution()) {
      ++n_sub;
      const v1::ConstantSubstitution& s = spec.substitution();
      const std::string& mode = s.mode();
      if (!mode.empty() && mode != "mean" && mode != "constant" && mode != "zero") {
        return Invalid(absl::StrCat(where, ".substitution.mode: unknown mode \"", mode.substr(0, 64),
                                    "\" (mean, constant or zero)"));
      }
      if (s.block() < 0 || (n_blocks > 0 && s.block() > n_blocks)) {
        return Invalid(absl::StrCat(where, ".substitution.block: block ", s.block(),
                                    " does not exist: model ", model.name, " has blocks 1..",
                                    n_blocks, " (0 = the detected step-up block)"));
      }
      for (int32_t c : s.channels()) {
        if (c < 0 || (model.d_model > 0 && c >= model.d_model)) {
          return Invalid(absl::StrCat(where, ".substitution.channels: channel ", c,
                                      " is outside [0, ", model.d_model, ") of model ", model.name));
        }
      }
      if (!s.channels().empty() && !s.channels_only()) {
        return Invalid(absl::StrCat(where, ".substitution.channels needs channels_only"));
      }
      for (int32_t p : s.positions()) {
        if (p < 0 || p >= chunk) {
          return Invalid(absl::StrCat(where, ".substitution.positions: position ", p,
                                      " is outside a chunk of ", chunk, " tokens"));
        }
      }
      if (mode == "constant") {
        const int64_t width = s.channels_only() ? s.channels_size() : model.d_model;
        if (s.constant().empty()) {
          return Invalid(absl::StrCat(where, ".substitution.constant is empty; mode constant needs ",
                                      s.channels_only() ? "one value per channel"
                                                        : absl::StrCat("d_model = ", model.d_model, " values")));
        }
        if (width > 0 && s.constant_size() != width) {
          return Invalid(absl::StrCat(
              where, ".substitution.constant has width ", s.constant_size(), " but needs ", width,
              s.channels_only() ? " (one value per channel)"
                                : absl::StrCat(" (d_model of model ", model.name, ")")));
        }
        for (float v : s.constant()) {
          if (!std::isfinite(v)) return Invalid(absl::StrCat(where, ".substitution.constant is not finite"));
        }
      } else if (!s.constant().empty()) {
        return Invalid(absl::StrCat(where, ".substitution.constant is only used with mode constant"));
      }
    } else if (spec.has_ablation()) {
      ++n_abl;
      const v1::SinkAblation& a = spec.ablation();
      const std::string& method = a.method();
      if (!method.empty() && method != "mask" && method != "zero-prob" && method != "zero-value") {
        return Invalid(absl::StrCat(where, ".ablation.method: unknown method \"",
                                    method.substr(0, 64), "\" (mask, zero-prob or zero-value)"));
      }
      for (const v1::HeadRef& h : a.heads()) {
        if (h.layer() < 0 || (model.n_layers > 0 && h.layer() >= model.n_layers)) {
          return Invalid(absl::StrCat(where, ".ablation.heads: layer ", h.layer(),
                                      " does not exist: model ", model.name, " has layers 0..",
                                      model.n_layers - 1));
        }
        if (h.head() < 0 || (model.n_heads > 0 && h.head() >= model.n_heads)) {
          return Invalid(absl::StrCat(where, ".ablation.heads: head index ", h.head(),
                                      " is out of range: model ", model.name, " has heads 0..",
                                      model.n_heads - 1));
        }
      }
      for (int32_t p : a.sink_positions()) {
        if (p < 0 || p >= chunk) {
          return Invalid(absl::StrCat(where, ".ablation.sink_positions: position ", p,
                                      " is outside a chunk of ", chunk, " tokens"));
        }
      }
    } else {
      return Invalid(absl::StrCat(where, " is empty: set substitution or ablation"));
    }
  }
  if (request.params_case() == v1::JobRequest::kConstantSubstitution && r.interventions_size() > 0 &&
      n_sub == 0) {
    return Invalid("constant_substitution.interventions has no substitution (use sink_ablation)");
  }
  if (request.params_case() == v1::JobRequest::kSinkAblation && r.interventions_size() > 0 &&
      n_abl == 0) {
    return Invalid("sink_ablation.interventions has no ablation (use constant_substitution)");
  }
  return CheckSequences(absl::StrCat(field, ".calibration sequence"), r.calibration(), model, 1,
                        total_tokens);
}

}  // namespace

/// Most models one profile compares (ProfileRequest.compare_models).
constexpr int kMaxCompareModels = 64;

/// A profile's own parameters against `model` (the job's model or one it
/// compares): the evaluation (corpus and tokenizer), the sink window and
/// layers, epsilon. `field` prefixes messages ("profile").
absl::Status ValidateProfileFor(const v1::ProfileRequest& r, const v1::JobRequest& request,
                                const ModelCatalog& catalog, const CatalogEntry& model) {
  RETURN_IF_ERROR(ValidateEval("profile.eval", r.eval(), request, catalog, model));
  if (r.has_sink_window() && r.sink_window() < 2) {
    return Invalid(absl::StrCat("profile.sink_window (T; --sink-window) must be >= 2, got ",
                                r.sink_window()));
  }
  if (r.has_sink_window() && model.n_ctx > 0 && r.sink_window() > model.n_ctx) {
    return Invalid(absl::StrCat("profile.sink_window (T; --sink-window) = ", r.sink_window(),
                                " exceeds the context of model ", model.name, " (", model.n_ctx, ")"));
  }
  return CheckLayers("profile.sink_layers", r.sink_layers(), model);
}

absl::Status ValidateProfile(const v1::ProfileRequest& r, const v1::JobRequest& request,
                             const ModelCatalog& catalog, const CatalogEntry& model,
                             const RequestLimits& limits) {
  RETURN_IF_ERROR(ValidateProfileFor(r, request, catalog, model));
  if (r.has_epsilon() && !(r.epsilon() > 0 && r.epsilon() < 1)) {
    return Invalid(absl::StrCat("profile.epsilon (--epsilon) must be in (0, 1), got ", r.epsilon()));
  }
  RETURN_IF_ERROR(ValidateScanRequest(r.thresholds(), "profile.thresholds"));
  if (r.compare_models_size() > kMaxCompareModels) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "profile.compare_models lists ", r.compare_models_size(), " models, more than ",
        kMaxCompareModels));
  }
  std::set<std::string> seen = {request.model()};
  for (const std::string& pattern : r.compare_models()) {
    if (!seen.insert(pattern).second) {
      return Invalid(absl::StrCat("profile.compare_models (--compare): model ", pattern.substr(0, 128),
                                  " is listed twice (the job's model counts)"));
    }
    // A model the catalog lacks or holds as unavailable gets its failed row
    // (the comparison goes on); one it holds must take these parameters.
    // "RUN@*" stands for RUN's checkpoints (checked as they are now).
    for (const std::string& name : ExpandCheckpoints(catalog, pattern)) {
      const CatalogEntry* other = catalog.Find(name);
      if (other == nullptr || !other->available) continue;
      if (absl::Status s = ValidateProfileFor(r, request, catalog, *other); !s.ok()) {
        return absl::Status(s.code(),
                            absl::StrCat("compared model ", other->name, ": ", s.message()));
      }
    }
  }
  (void)limits;
  return absl::OkStatus();
}

absl::Status ValidateScanRequest(const v1::ActivationScanRequest& scan, const std::string& field) {
  if (scan.has_top_k() && (scan.top_k() < 1 || scan.top_k() > 64)) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ".top_k must be in 1..64, got ", scan.top_k()));
  }
  if (scan.has_abs_threshold() && !(scan.abs_threshold() >= 0 && std::isfinite(scan.abs_threshold()))) {
    return absl::InvalidArgumentError(absl::StrCat(
        field + ".abs_threshold must be a finite number >= 0, got ", scan.abs_threshold()));
  }
  if (scan.has_rel_threshold() && !(scan.rel_threshold() >= 0 && std::isfinite(scan.rel_threshold()))) {
    return absl::InvalidArgumentError(absl::StrCat(
        field + ".rel_threshold must be a finite number >= 0, got ", scan.rel_threshold()));
  }
  if (scan.has_step_fraction() && !(scan.step_fraction() > 0 && scan.step_fraction() <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ".step_fraction must be in (0, 1], got ", scan.step_fraction()));
  }
  if (scan.has_step_share() && !(scan.step_share() > 0 && scan.step_share() <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ".step_share must be in (0, 1], got ", scan.step_share()));
  }
  if (scan.has_step_rule() && scan.step_rule() != "share" && scan.step_rule() != "single-block") {
    return absl::InvalidArgumentError(absl::StrCat(
        field + ".step_rule must be \"share\" or \"single-block\", got \"", scan.step_rule().substr(0, 64), "\""));
  }
  return absl::OkStatus();
}

absl::Status ValidateJobRequest(const v1::JobRequest& request, const ModelCatalog& catalog,
                                const RequestLimits& limits, const std::string& owner) {
  if (request.has_train()) return ValidateTrainRequest(request, catalog, limits, owner);
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
  RETURN_IF_ERROR(CheckRepeatedBounds(request, *model, limits));
  int64_t total_tokens = 0;
  if (request.params_case() == v1::JobRequest::PARAMS_NOT_SET) {
    return absl::InvalidArgumentError(
        "no job parameters: set one of the params (e.g. scan, sinks, perplexity)");
  }
  const JobTypeDescriptor* job = JobTypeOfRequest(request);
  if (job == nullptr) return absl::UnimplementedError("this job type is not implemented by this server");
  if (job->sequences == SequenceInput::kForbidden && request.sequences_size() > 0) {
    return absl::InvalidArgumentError(job->sequences_forbidden_message);
  }
  // The job's own parameters (its traits come from the job-type table).
  absl::Status params = absl::OkStatus();
  switch (request.params_case()) {
    case v1::JobRequest::kScan:
      params = ValidateScanRequest(request.scan(), "scan");
      break;
    case v1::JobRequest::kSinks:
      params = ValidateSinks(request.sinks(), *model);
      break;
    case v1::JobRequest::kFirstTokenProbe:
      params = ValidateFirstToken(request.first_token_probe(), *model);
      break;
    case v1::JobRequest::kSpikeSimilarity:
      params = ValidateSpikeSimilarity(request.spike_similarity(), *model);
      break;
    case v1::JobRequest::kSelfAttentionProfile:
      params = ValidateSelfAttention(request.self_attention_profile(), *model);
      break;
    case v1::JobRequest::kPerplexity:
      params = ValidateEval("perplexity.eval", request.perplexity().eval(), request, catalog, *model);
      break;
    case v1::JobRequest::kConstantSubstitution:
      params = ValidateIntervention("constant_substitution", request.constant_substitution(),
                                    request, catalog, *model, &total_tokens);
      break;
    case v1::JobRequest::kSinkAblation:
      params = ValidateIntervention("sink_ablation", request.sink_ablation(), request, catalog,
                                    *model, &total_tokens);
      break;
    case v1::JobRequest::kProfile:
      params = ValidateProfile(request.profile(), request, catalog, *model, limits);
      break;
    default:
      if (!job->mechanism) return absl::UnimplementedError("this job type is not implemented by this server");
      params = ValidateMechanismRequest(request, *model, limits.max_result_bytes);
      break;
  }
  if (!params.ok()) return params;
  if (job->sequences == SequenceInput::kRequired && request.sequences_size() == 0) {
    return absl::InvalidArgumentError("no input: give at least one sequence (text or token ids)");
  }
  if (request.sequences_size() > limits.max_sequences) {
    return absl::ResourceExhaustedError(absl::StrCat("too many sequences: ", request.sequences_size(),
                                                     " > ", limits.max_sequences));
  }
  // Chunked (evaluation streams) and windowed (sinks) jobs: their sequences
  // may exceed the context.
  CatalogEntry for_sequences = *model;
  if (job->may_exceed_context) for_sequences.n_ctx = 0;
  RETURN_IF_ERROR(CheckSequences("sequence", request.sequences(), for_sequences, job->min_ids_per_sequence, &total_tokens));
  if (total_tokens > limits.max_total_tokens) {
    return absl::ResourceExhaustedError(absl::StrCat("request too large: up to ", total_tokens,
                                                     " tokens > ", limits.max_total_tokens,
                                                     " (max_total_tokens; text counts its bytes + 2)"));
  }
  const WorkEstimate work = EstimateJobWork(request, catalog);
  if (work.token_layers > limits.max_job_token_layers) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "job too large: its work is estimated at ", work.token_layers, " token-layers (",
        work.basis, "), more than the limit of ", limits.max_job_token_layers,
        " (max_job_token_layers); send fewer or shorter sequences, a smaller token_budget, "
        "fewer probed tokens or fewer layers"));
  }
  return absl::OkStatus();
}

namespace {

/// Tokens of `seqs` (text as bytes + 2, an upper bound); *max_len gets the longest.
int64_t CountTokens(const google::protobuf::RepeatedPtrField<v1::Sequence>& seqs,
                    int64_t* max_len = nullptr) {
  int64_t n = 0;
  for (const v1::Sequence& seq : seqs) {
    const int64_t len = seq.has_text() ? static_cast<int64_t>(seq.text().size()) + 2
                                       : seq.ids().ids_size();
    n += len;
    if (max_len != nullptr) *max_len = std::max(*max_len, len);
  }
  return n;
}

}  // namespace

WorkEstimate EstimateJobWork(const v1::JobRequest& request, const ModelCatalog& catalog) {
  if (request.has_train()) return EstimateTrainWork(request, catalog);
  WorkEstimate w;
  const CatalogEntry* model = catalog.Find(request.model());
  const int64_t L = model != nullptr && model->n_layers > 0 ? model->n_layers : 1;
  const int64_t n_ctx = model != nullptr && model->n_ctx > 0 ? model->n_ctx : 1 << 20;
  const int64_t seq_tokens = CountTokens(request.sequences());
  int64_t passes = 1, tokens_per_pass = seq_tokens;
  std::string what = "tokens";
  switch (request.params_case()) {
    case v1::JobRequest::kSinks: {
      const v1::SinksRequest& r = request.sinks();
      const int64_t T = r.has_window() ? r.window() : 64;
      if (!r.windowed()) {
        tokens_per_pass = 0;
        for (const v1::Sequence& seq : request.sequences()) {
          const int64_t len = seq.has_text() ? static_cast<int64_t>(seq.text().size()) + 2
                                             : seq.ids().ids_size();
          tokens_per_pass += std::min(len, T);
        }
      }
      break;
    }
    case v1::JobRequest::kFirstTokenProbe: {
      const v1::FirstTokenProbeRequest& r = request.first_token_probe();
      int64_t n = r.token_ids_size();
      if (n == 0) {
        const int64_t begin = r.has_range_begin() ? r.range_begin() : 0;
        const int64_t end = r.has_range_end() ? r.range_end()
                                              : (model != nullptr ? model->vocab_size : 0);
        n = std::max<int64_t>(0, end - begin);
      }
      const int64_t run_len = (r.prefix().empty() ? 1 : r.prefix_size()) + 1;
      passes = 2;  // at position 0 and the control
      tokens_per_pass = n * run_len;
      what = absl::StrCat("probed tokens x ", run_len, " positions");
      break;
    }
    case v1::JobRequest::kSpikeSimilarity:
    case v1::JobRequest::kSelfAttentionProfile:
      passes = 2;  // the scan that finds spike tokens / layers, then the analysis
      break;
    case v1::JobRequest::kPerplexity:
    case v1::JobRequest::kProfile:
    case v1::JobRequest::kConstantSubstitution:
    case v1::JobRequest::kSinkAblation: {
      const v1::EvalCorpus& eval = *FindJobType(request.params_case())->eval_corpus(request);
      int64_t stream = seq_tokens;
      if (!eval.corpus().empty()) {
        const CorpusEntry* corpus = catalog.FindCorpus(eval.corpus());
        stream = corpus != nullptr ? corpus->size_bytes + 2 : 0;
      }
      if (eval.has_token_budget()) stream = std::min(stream, eval.token_budget());
      tokens_per_pass = stream;
      what = "evaluation tokens";
      if (request.has_profile()) {
        // One pass per model (the attribution pass reads a few tokens).
        passes = 1;
        for (const std::string& pattern : request.profile().compare_models()) {
          passes += std::max<int64_t>(1, ExpandCheckpoints(catalog, pattern).size());
        }
        what = "evaluation tokens (one pass per model)";
      } else if (!request.has_perplexity()) {
        const v1::InterventionRequest& r = request.has_constant_substitution()
                                               ? request.constant_substitution()
                                               : request.sink_ablation();
        passes = 2;  // baseline and intervened
        // Calibration passes (one per substitution, plus a scan) and a sink
        // detection over one window per ablation.
        const int64_t calibration = CountTokens(r.calibration());
        int64_t extra = calibration * (1 + std::max(1, r.interventions_size()));
        extra += 64 * std::max(1, r.interventions_size());
        w.tokens = passes * tokens_per_pass + extra;
        w.token_layers = w.tokens * L;
        w.basis = absl::StrCat(passes, " passes x ", tokens_per_pass, " ", what, " + ", extra,
                               " calibration/detection tokens, x ", L, " layers");
        return w;
      }
      break;
    }
    default:
      break;
  }
  (void)n_ctx;
  w.tokens = passes * tokens_per_pass;
  w.token_layers = w.tokens * L;
  w.basis = absl::StrCat(passes, passes == 1 ? " pass" : " passes", " x ", tokens_per_pass, " ",
                         what, " x ", L, " layers");
  return w;
}

}  // namespace server
}  // namespace sinkscope
