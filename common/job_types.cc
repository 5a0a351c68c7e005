#include "common/job_types.h"

namespace sinkscope {
namespace {

using R = v1::JobRequest;

const v1::EvalCorpus* PerplexityEval(const R& r) { return &r.perplexity().eval(); }
const v1::EvalCorpus* SubstitutionEval(const R& r) { return &r.constant_substitution().eval(); }
const v1::EvalCorpus* AblationEval(const R& r) { return &r.sink_ablation().eval(); }
const v1::EvalCorpus* ProfileEval(const R& r) { return &r.profile().eval(); }

constexpr SequenceInput kReq = SequenceInput::kRequired;
constexpr SequenceInput kNone = SequenceInput::kForbidden;
constexpr SequenceInput kOpt = SequenceInput::kOptional;
constexpr MemoryEstimateKind kFwd = MemoryEstimateKind::kForward;
constexpr MemoryEstimateKind kFold = MemoryEstimateKind::kForwardFfnFold;
constexpr MemoryEstimateKind kAttn = MemoryEstimateKind::kAttentionStatistics;

}  // namespace

const std::vector<JobTypeDescriptor>& JobTypes() {
  // clang-format off
  // params case, type, cli name, metrics label,
  //   sequences, forbidden message, min ids, may exceed n_ctx, streams per chunk,
  //   attention patterns, eval corpus, memory, mechanism, progress base s, unit
  static const std::vector<JobTypeDescriptor> kTable = {
      {R::kScan, v1::JOB_TYPE_ACTIVATION_SCAN, "scan", "activation_scan",
       kReq, "", 1, false, false, false, nullptr, kFwd, false, 120, "blocks"},
      {R::kSinks, v1::JOB_TYPE_SINKS, "sinks", "sinks",
       kReq, "", 2, true, false, false, nullptr, kAttn, false, 120, "units"},
      {R::kFirstTokenProbe, v1::JOB_TYPE_FIRST_TOKEN_PROBE, "first-token-probe", "first_token_probe",
       kNone, "first_token_probe takes no sequences: give token_ids or a vocabulary range",
       1, false, false, true, nullptr, kFwd, false, 300, "tokens"},
      {R::kSpikeSimilarity, v1::JOB_TYPE_SPIKE_SIMILARITY, "spike-similarity", "spike_similarity",
       kReq, "", 1, false, false, true, nullptr, kFwd, false, 120, "units"},
      {R::kPerplexity, v1::JOB_TYPE_PERPLEXITY, "perplexity", "perplexity",
       kOpt, "", 1, true, true, true, &PerplexityEval, kFwd, false, 120, "units"},
      {R::kConstantSubstitution, v1::JOB_TYPE_CONSTANT_SUBSTITUTION, "constant-substitution",
       "constant_substitution",
       kOpt, "", 1, true, true, true, &SubstitutionEval, kFwd, false, 300, "units"},
      {R::kSinkAblation, v1::JOB_TYPE_SINK_ABLATION, "sink-ablation", "sink_ablation",
       kOpt, "", 1, true, true, true, &AblationEval, kFwd, false, 300, "units"},
      {R::kSelfAttentionProfile, v1::JOB_TYPE_SELF_ATTENTION_PROFILE, "self-attention-profile",
       "self_attention_profile",
       kReq, "", 1, false, false, false, nullptr, kAttn, false, 120, "units"},
      {R::kFfnQuadratic, v1::JOB_TYPE_FFN_QUADRATIC, "ffn-quadratic", "ffn_quadratic",
       kNone, "ffn_quadratic reads weights only: give no sequences",
       1, false, false, true, nullptr, kFold, true, 120, "units"},
      {R::kSiluRegime, v1::JOB_TYPE_SILU_REGIME, "silu-regime", "silu_regime",
       kReq, "", 1, false, false, true, nullptr, kFold, true, 120, "units"},
      {R::kVoCircuit, v1::JOB_TYPE_VO_CIRCUIT, "vo-circuit", "vo_circuit",
       kNone, "vo_circuit places its tokens at position 0 itself: give token_ids, no sequences",
       1, false, false, true, nullptr, kFold, true, 120, "units"},
      {R::kActivations, v1::JOB_TYPE_ACTIVATIONS, "activations", "activations",
       kReq, "", 1, false, false, true, nullptr, kFwd, true, 120, "units"},
      {R::kProfile, v1::JOB_TYPE_PROFILE, "profile", "profile",
       kOpt, "", 1, true, false, false, &ProfileEval, kAttn, false, 120, "chunks"},
      {R::kTrain, v1::JOB_TYPE_TRAIN, "train", "train",
       kNone, "train reads a catalog corpus (train.corpus): give no sequences",
       1, false, false, false, nullptr, kFwd, false, 300, "steps"},
  };
  // clang-format on
  return kTable;
}

const JobTypeDescriptor* FindJobType(v1::JobRequest::ParamsCase params_case) {
  for (const JobTypeDescriptor& d : JobTypes()) {
    if (d.params_case == params_case) return &d;
  }
  return nullptr;
}

const JobTypeDescriptor* FindJobType(v1::JobType type) {
  for (const JobTypeDescriptor& d : JobTypes()) {
    if (d.type == type) return &d;
  }
  return nullptr;
}

const JobTypeDescriptor* FindJobTypeByName(std::string_view name) {
  for (const JobTypeDescriptor& d : JobTypes()) {
    if (name == d.cli_name) return &d;
  }
  return nullptr;
}

}  // namespace sinkscope
