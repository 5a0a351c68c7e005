#include "worker/analysis_jobs.h"

#include <algorithm>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/job_types.h"
#include "worker/analysis_convert.h"
#include "worker/mechanism_jobs.h"
#include "worker/engine/experiments.h"
#include "worker/engine/model.h"
#include "worker/engine/sinks.h"
#include "worker/engine/spikes.h"
#include "common/status_macros.h"
#include "worker/engine/tokenizer.h"

namespace sinkscope {
namespace worker {
namespace {

// ---- sinks ----

absl::Status RunSinks(const JobContext& ctx, const std::vector<std::vector<int64_t>>& sequences) {
  const Model& model = *ctx.cached.model;
  const SinkParams params = SinkParamsFromProto(ctx.run.request().sinks());
  Emitter emitter(ctx);
  absl::StatusOr<SinkSummary> summary = RunSinkAnalysis(
      model, sequences, params,
      [&](const LayerSinkRecord& rec) {
        v1::ResultRecord r;
        *r.mutable_sink_layer() = ToProto(rec);
        emitter.Record(r);
      },
      emitter.Progress(), ctx.cancel);
  if (!summary.ok()) return emitter.Finish(summary.status());
  v1::ResultRecord r;
  v1::SinkSummary* out = r.mutable_sink_summary();
  *out = ToProto(*summary, params);
  *out->mutable_provenance() = MakeProvenance(ctx.cached, sequences);
  return emitter.FinishWith(r);
}

// ---- first-token probe ----

absl::Status RunFirstToken(const JobContext& ctx) {
  const Model& model = *ctx.cached.model;
  const ModelConfig& c = model.config();
  FirstTokenParams params = FirstTokenParamsFromProto(ctx.run.request().first_token_probe());
  Emitter emitter(ctx);
  absl::StatusOr<FirstTokenResult> result =
      RunFirstTokenProbe(model, params, emitter.Progress(), ctx.cancel);
  if (!result.ok()) return emitter.Finish(result.status());
  // The defaults the engine applied.
  if (params.prefix.empty()) params.prefix = {c.bos_token_id};
  if (params.range_end < 0) params.range_end = c.d_vocab;
  v1::ResultRecord r;
  v1::FirstTokenProbeResult* out = r.mutable_first_token_probe();
  *out = ToProto(*result, params);
  const int64_t len = static_cast<int64_t>(params.prefix.size()) + 1;
  *out->mutable_provenance() = MakeProvenance(ctx.cached, 2 * result->n_tokens * len, 2 * result->n_tokens);
  return emitter.FinishWith(r);
}

// ---- spike similarity ----

absl::Status RunSpikeSim(const JobContext& ctx,
                         const std::vector<std::vector<int64_t>>& sequences) {
  const SpikeSimilarityParams params =
      SpikeSimilarityParamsFromProto(ctx.run.request().spike_similarity());
  Emitter emitter(ctx);
  absl::StatusOr<SpikeSimilarityResult> result =
      RunSpikeSimilarity(*ctx.cached.model, sequences, params, emitter.Progress(), ctx.cancel);
  if (!result.ok()) return emitter.Finish(result.status());
  v1::ResultRecord r;
  v1::SpikeSimilaritySummary* out = r.mutable_spike_similarity();
  *out = ToProto(*result, params);
  *out->mutable_provenance() = MakeProvenance(ctx.cached, sequences);
  return emitter.FinishWith(r);
}

// ---- self-attention profile ----

absl::Status RunSelfAttention(const JobContext& ctx,
                              const std::vector<std::vector<int64_t>>& sequences) {
  const v1::SelfAttentionProfileRequest& req = ctx.run.request().self_attention_profile();
  const Model& model = *ctx.cached.model;
  SelfAttentionParams params;
  params.layers.assign(req.layers().begin(), req.layers().end());
  std::set<int64_t> delimiters(req.delimiter_ids().begin(), req.delimiter_ids().end());
  std::vector<v1::ResolvedDelimiter> resolved;
  if (!req.delimiters().empty()) {
    if (!ctx.cached.tokenizer_error.empty()) {
      return absl::FailedPreconditionError(ctx.cached.tokenizer_error);
    }
    if (!ctx.cached.tokenizer) {
      return absl::InvalidArgumentError(absl::StrCat(
          "self_attention_profile.delimiters: model ", ctx.cached.key.name,
          " has no tokenizer; give --delimiter-ids (delimiter_ids)"));
    }
    const Tokenizer& tok = *ctx.cached.tokenizer;
    const int64_t vocab = std::min(tok.vocab_size(), model.config().d_vocab);
    for (const std::string& text : req.delimiters()) {
      v1::ResolvedDelimiter d;
      d.set_text(text);
      for (int64_t id = 0; id < vocab; ++id) {
        if (tok.DecodeToken(id) == text) {
          d.add_ids(static_cast<int32_t>(id));
          delimiters.insert(id);
        }
      }
      if (d.ids().empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat("self_attention_profile.delimiters: \"", text,
                         "\" is not a piece of the vocabulary of model ", ctx.cached.key.name,
                         "; give --delimiter-ids (delimiter_ids)"));
      }
      resolved.push_back(std::move(d));
    }
  }
  params.delimiter_ids.assign(delimiters.begin(), delimiters.end());
  Emitter emitter(ctx);
  absl::StatusOr<SelfAttentionProfile> profile = RunSelfAttentionProfile(
      model, sequences, params,
      [&](const SelfAttentionLayer& layer) {
        v1::ResultRecord r;
        *r.mutable_self_attention_layer() = ToProto(layer);
        emitter.Record(r);
      },
      emitter.Progress(), ctx.cancel);
  if (!profile.ok()) return emitter.Finish(profile.status());
  v1::ResultRecord r;
  v1::SelfAttentionSummary* out = r.mutable_self_attention_summary();
  for (int64_t l : profile->profiled_layers) out->add_layers(static_cast<int32_t>(l));
  for (int64_t id : params.delimiter_ids) out->add_delimiter_ids(static_cast<int32_t>(id));
  for (auto& d : resolved) *out->add_resolved_delimiters() = std::move(d);
  *out->mutable_provenance() = MakeProvenance(ctx.cached, sequences);
  return emitter.FinishWith(r);
}

// ---- evaluation streams ----

/// Tokenized catalog corpora, kept between jobs (key: path, tokenizer, file
/// stamp, BOS): tokenizing a megabyte of text costs more than a small model's
/// evaluation.
struct CorpusCache {
  std::mutex mu;
  std::map<std::string, std::shared_ptr<const std::vector<int64_t>>> entries;
};
CorpusCache& GetCorpusCache() {
  static CorpusCache* cache = new CorpusCache;
  return *cache;
}

absl::StatusOr<std::shared_ptr<const std::vector<int64_t>>> LoadCorpus(
    const JobContext& ctx, const v1::ResolvedCorpus& corpus, bool add_bos) {
  const CachedModel& cached = ctx.cached;
  if (!cached.tokenizer_error.empty()) return absl::FailedPreconditionError(cached.tokenizer_error);
  const std::string tokenizer_path =
      cached.tokenizer ? cached.key.tokenizer_path : corpus.tokenizer_path();
  if (tokenizer_path.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("model ", cached.key.name,
                                                   " has no tokenizer and corpus ", corpus.name(),
                                                   " brings none; send token ids"));
  }
  const std::string key = absl::StrCat(corpus.path(), "|", FileStamp(corpus.path()), "|",
                                       tokenizer_path, "|", cached.model->config().d_vocab, "|",
                                       add_bos);
  CorpusCache& cache = GetCorpusCache();
  {
    std::lock_guard<std::mutex> lock(cache.mu);
    auto it = cache.entries.find(key);
    if (it != cache.entries.end()) return it->second;
  }
  std::ifstream in(corpus.path(), std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("corpus ", corpus.name(), ": cannot open ", corpus.path()));
  std::stringstream text;
  text << in.rdbuf();
  std::shared_ptr<const Tokenizer> tokenizer = cached.tokenizer;
  if (!tokenizer) {
    // The corpus's tokenizer must index this model's embedding exactly: read
    // through a tokenizer of another size, the ids would be garbage.
    absl::StatusOr<std::unique_ptr<Tokenizer>> loaded =
        LoadTokenizer(tokenizer_path, cached.model->config().d_vocab);
    if (!loaded.ok()) {
      return Annotate(loaded.status(), absl::StrCat("corpus ", corpus.name(), "'s tokenizer for model ",
                                                    cached.key.name));
    }
    RETURN_IF_ERROR(CheckTokenizerVocab(
        **loaded, cached.model->config().d_vocab, /*allow_padding=*/false,
        absl::StrCat("corpus ", corpus.name(), "'s tokenizer (for model ", cached.key.name, ")")));
    tokenizer = *std::move(loaded);
  }
  absl::StatusOr<std::vector<int64_t>> ids = tokenizer->Encode(text.str(), add_bos);
  if (!ids.ok()) return Annotate(ids.status(), absl::StrCat("corpus ", corpus.name()));
  auto shared = std::make_shared<const std::vector<int64_t>>(*std::move(ids));
  std::lock_guard<std::mutex> lock(cache.mu);
  if (cache.entries.size() >= 4) cache.entries.clear();
  cache.entries[key] = shared;
  return shared;
}

absl::Status TooFewTokens(size_t n) {
  return absl::InvalidArgumentError(absl::StrCat("the corpus has ", n, n == 1 ? " token" : " tokens",
                                                 "; at least 2 are needed"));
}

absl::Status RunPerplexityJob(const JobContext& ctx,
                              const std::vector<std::vector<int64_t>>& sequences) {
  const v1::EvalCorpus& eval = ctx.run.request().perplexity().eval();
  ASSIGN_OR_RETURN(std::shared_ptr<const std::vector<int64_t>> stream,
                   EvalStream(ctx, eval, sequences));
  const EvalParams params = EvalParamsFromProto(eval);
  Emitter emitter(ctx);
  absl::StatusOr<PerplexityResult> result = RunPerplexity(
      *ctx.cached.model, *stream, params,
      [&](const ChunkRecord& c) {
        v1::ResultRecord r;
        *r.mutable_perplexity_chunk() = ToPerplexityChunk(c);
        emitter.Record(r);
      },
      emitter.Progress(), ctx.cancel);
  if (!result.ok()) return emitter.Finish(result.status());
  v1::ResultRecord r;
  v1::PerplexitySummary* out = r.mutable_perplexity_summary();
  *out = ToProto(*result);
  *out->mutable_eval() =
      EvalUsedToProto(params, eval.corpus(), static_cast<int64_t>(stream->size()));
  *out->mutable_provenance() =
      MakeProvenance(ctx.cached, result->n_tokens, static_cast<int64_t>(result->chunks.size()));
  return emitter.FinishWith(r);
}

absl::Status RunIntervention(const JobContext& ctx,
                             const std::vector<std::vector<int64_t>>& sequences) {
  const v1::JobRequest& request = ctx.run.request();
  const bool ablation = request.params_case() == v1::JobRequest::kSinkAblation;
  const v1::InterventionRequest& req =
      ablation ? request.sink_ablation() : request.constant_substitution();
  ASSIGN_OR_RETURN(std::shared_ptr<const std::vector<int64_t>> stream,
                   EvalStream(ctx, req.eval(), sequences));
  ASSIGN_OR_RETURN(
      ExperimentParams params,
      ExperimentParamsFromProto(req, ablation ? v1::JOB_TYPE_SINK_ABLATION
                                              : v1::JOB_TYPE_CONSTANT_SUBSTITUTION));
  const bool add_bos = request.has_add_bos() ? request.add_bos() : true;
  ASSIGN_OR_RETURN(params.calibration,
                   TokenizeSequences(req.calibration(), add_bos, ctx.cached,
                                     "calibration sequence", /*check_ctx=*/true));
  Emitter emitter(ctx);
  absl::StatusOr<ExperimentResult> result = RunInterventionExperiment(
      *ctx.cached.model, *stream, params,
      [&](const ChunkRecord& c) {
        v1::ResultRecord r;
        *r.mutable_intervention_chunk() = ToInterventionChunk(c);
        emitter.Record(r);
      },
      emitter.Progress(), ctx.cancel);
  if (!result.ok()) return emitter.Finish(result.status());
  v1::ResultRecord r;
  v1::InterventionSummary* out = r.mutable_intervention_summary();
  *out = ToProto(*result, params);
  *out->mutable_eval() =
      EvalUsedToProto(params.eval, req.eval().corpus(), static_cast<int64_t>(stream->size()));
  int64_t fed = 0;
  for (const ChunkRecord& c : result->chunks) fed += c.n_scored + 1;
  *out->mutable_provenance() =
      MakeProvenance(ctx.cached, fed, static_cast<int64_t>(result->chunks.size()));
  return emitter.FinishWith(r);
}

}  // namespace

absl::StatusOr<std::shared_ptr<const std::vector<int64_t>>> EvalStream(
    const JobContext& ctx, const v1::EvalCorpus& eval,
    const std::vector<std::vector<int64_t>>& sequences) {
  const v1::JobRequest& request = ctx.run.request();
  const bool add_bos = request.has_add_bos() ? request.add_bos() : true;
  if (!eval.corpus().empty()) {
    if (!ctx.run.has_corpus() || ctx.run.corpus().name() != eval.corpus()) {
      return absl::FailedPreconditionError(
          absl::StrCat("corpus ", eval.corpus(), " was not resolved by the server"));
    }
    ASSIGN_OR_RETURN(std::shared_ptr<const std::vector<int64_t>> corpus,
                     LoadCorpus(ctx, ctx.run.corpus(), add_bos));
    if (corpus->size() < 2) return TooFewTokens(corpus->size());
    return corpus;
  }
  auto stream = std::make_shared<std::vector<int64_t>>();
  for (const auto& s : sequences) stream->insert(stream->end(), s.begin(), s.end());
  if (stream->empty()) return absl::InvalidArgumentError("the corpus is empty");
  // Scoring predicts each token from the ones before: 2 at least.
  if (stream->size() < 2) return TooFewTokens(stream->size());
  return std::shared_ptr<const std::vector<int64_t>>(std::move(stream));
}

absl::StatusOr<std::vector<std::vector<int64_t>>> TokenizeSequences(
    const google::protobuf::RepeatedPtrField<v1::Sequence>& sequences, bool add_bos,
    const CachedModel& cached, const std::string& label, bool check_ctx) {
  std::vector<std::vector<int64_t>> out;
  out.reserve(sequences.size());
  for (int i = 0; i < sequences.size(); ++i) {
    const v1::Sequence& seq = sequences[i];
    if (seq.has_ids()) {
      out.emplace_back(seq.ids().ids().begin(), seq.ids().ids().end());
    } else if (seq.input_case() == v1::Sequence::kText) {
      if (!cached.tokenizer_error.empty()) return absl::FailedPreconditionError(cached.tokenizer_error);
      if (!cached.tokenizer) {
        return absl::InvalidArgumentError(absl::StrCat(label, " ", i, " is text but model ",
                                                       cached.key.name,
                                                       " has no tokenizer; send token ids"));
      }
      absl::StatusOr<std::vector<int64_t>> ids = cached.tokenizer->Encode(seq.text(), add_bos);
      if (!ids.ok()) return Annotate(ids.status(), absl::StrCat(label, " ", i));
      out.push_back(*std::move(ids));
    } else {
      return absl::InvalidArgumentError(absl::StrCat(label, " ", i, " is empty"));
    }
    if (out.back().empty()) {
      return absl::InvalidArgumentError(absl::StrCat(label, " ", i, " has no tokens"));
    }
    const int64_t n_ctx = cached.model->config().n_ctx;
    if (check_ctx && static_cast<int64_t>(out.back().size()) > n_ctx) {
      return absl::InvalidArgumentError(absl::StrCat(label, " ", i, " has ", out.back().size(),
                                                     " tokens, more than the context of model ",
                                                     cached.key.name, " (", n_ctx, ")"));
    }
  }
  return out;
}

absl::Status RunAnalysisJob(const JobContext& ctx,
                            const std::vector<std::vector<int64_t>>& sequences) {
  switch (ctx.run.request().params_case()) {
    case v1::JobRequest::kSinks:
      return RunSinks(ctx, sequences);
    case v1::JobRequest::kFirstTokenProbe:
      return RunFirstToken(ctx);
    case v1::JobRequest::kSpikeSimilarity:
      return RunSpikeSim(ctx, sequences);
    case v1::JobRequest::kSelfAttentionProfile:
      return RunSelfAttention(ctx, sequences);
    case v1::JobRequest::kPerplexity:
      return RunPerplexityJob(ctx, sequences);
    case v1::JobRequest::kConstantSubstitution:
    case v1::JobRequest::kSinkAblation:
      return RunIntervention(ctx, sequences);
    default: {
      const JobTypeDescriptor* job = JobTypeOfRequest(ctx.run.request());
      if (job != nullptr && job->mechanism) return RunMechanismJob(ctx, sequences);
      return absl::UnimplementedError("this worker does not run this job type");
    }
  }
}

}  // namespace worker
}  // namespace sinkscope
