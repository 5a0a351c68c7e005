// The job-type table (common/job_types.h) against the proto: every
// JobRequest.params oneof case and every JobType has exactly one row, so a new
// proto case without a descriptor fails here; and the traits the server,
// worker and client used to switch on, written out by hand from those switches.

#include "common/job_types.h"

#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"

namespace sinkscope {
namespace {

using R = v1::JobRequest;

TEST(JobTypesTest, EveryParamsCaseHasExactlyOneDescriptor) {
  const google::protobuf::OneofDescriptor* oneof = R::descriptor()->FindOneofByName("params");
  ASSERT_NE(oneof, nullptr);
  ASSERT_GT(oneof->field_count(), 0);
  std::set<int> oneof_numbers;
  for (int i = 0; i < oneof->field_count(); ++i) {
    const google::protobuf::FieldDescriptor* field = oneof->field(i);
    oneof_numbers.insert(field->number());
    int rows = 0;
    for (const JobTypeDescriptor& d : JobTypes()) rows += d.params_case == field->number();
    EXPECT_EQ(rows, 1) << "params." << field->name() << " (field " << field->number()
                       << ") needs exactly one row in common/job_types.cc";
    const JobTypeDescriptor* d = FindJobType(static_cast<R::ParamsCase>(field->number()));
    ASSERT_NE(d, nullptr) << field->name();
    EXPECT_EQ(static_cast<int>(d->params_case), field->number());
  }
  // No row for a case the oneof lacks (PARAMS_NOT_SET included).
  for (const JobTypeDescriptor& d : JobTypes()) {
    EXPECT_EQ(oneof_numbers.count(d.params_case), 1u) << d.cli_name;
  }
  EXPECT_EQ(FindJobType(R::PARAMS_NOT_SET), nullptr);
}

TEST(JobTypesTest, JobTypesNamesAndLabelsAreDistinct) {
  std::set<int> types;
  std::set<std::string> names, labels;
  for (const JobTypeDescriptor& d : JobTypes()) {
    EXPECT_NE(d.type, v1::JOB_TYPE_UNSPECIFIED) << d.cli_name;
    EXPECT_TRUE(v1::JobType_IsValid(d.type)) << d.cli_name;
    EXPECT_TRUE(types.insert(d.type).second) << "JobType " << d.type << " twice";
    EXPECT_TRUE(names.insert(d.cli_name).second) << "name " << d.cli_name << " twice";
    EXPECT_TRUE(labels.insert(d.metrics_label).second) << "label " << d.metrics_label << " twice";
    EXPECT_FALSE(std::string(d.cli_name).empty());
  }
  // Every JobType but UNSPECIFIED has a row, and FindJobType returns it.
  const google::protobuf::EnumDescriptor* e = v1::JobType_descriptor();
  for (int i = 0; i < e->value_count(); ++i) {
    const auto type = static_cast<v1::JobType>(e->value(i)->number());
    if (type == v1::JOB_TYPE_UNSPECIFIED) {
      EXPECT_EQ(FindJobType(type), nullptr);
      continue;
    }
    const JobTypeDescriptor* d = FindJobType(type);
    ASSERT_NE(d, nullptr) << e->value(i)->name() << " has no row";
    EXPECT_EQ(d->type, type);
    // The metrics label is the enum name, lower case, without JOB_TYPE_.
    std::string name = e->value(i)->name();
    ASSERT_TRUE(absl::StartsWith(name, "JOB_TYPE_"));
    EXPECT_EQ(d->metrics_label, absl::AsciiStrToLower(name.substr(9)));
  }
}

TEST(JobTypesTest, ParamsCaseMapsToTheJobTypeOfItsFieldComment) {
  // analysis.proto: `ActivationScanRequest scan = 10;  // JOB_TYPE_ACTIVATION_SCAN`, ...
  const std::map<R::ParamsCase, v1::JobType> expected = {
      {R::kScan, v1::JOB_TYPE_ACTIVATION_SCAN},
      {R::kSinks, v1::JOB_TYPE_SINKS},
      {R::kFirstTokenProbe, v1::JOB_TYPE_FIRST_TOKEN_PROBE},
      {R::kSpikeSimilarity, v1::JOB_TYPE_SPIKE_SIMILARITY},
      {R::kPerplexity, v1::JOB_TYPE_PERPLEXITY},
      {R::kConstantSubstitution, v1::JOB_TYPE_CONSTANT_SUBSTITUTION},
      {R::kSinkAblation, v1::JOB_TYPE_SINK_ABLATION},
      {R::kSelfAttentionProfile, v1::JOB_TYPE_SELF_ATTENTION_PROFILE},
      {R::kFfnQuadratic, v1::JOB_TYPE_FFN_QUADRATIC},
      {R::kSiluRegime, v1::JOB_TYPE_SILU_REGIME},
      {R::kVoCircuit, v1::JOB_TYPE_VO_CIRCUIT},
      {R::kActivations, v1::JOB_TYPE_ACTIVATIONS},
  };
  for (const auto& [c, type] : expected) {
    const JobTypeDescriptor* d = FindJobType(c);
    ASSERT_NE(d, nullptr) << c;
    EXPECT_EQ(d->type, type) << d->cli_name;
  }
}

TEST(JobTypesTest, CliNamesAreTheClientCommands) {
  std::ifstream in(std::string(SINKSCOPE_SOURCE_DIR) + "/client/main.cc");
  ASSERT_TRUE(in) << "client/main.cc";
  std::stringstream text;
  text << in.rdbuf();
  const std::string source = text.str();
  for (const JobTypeDescriptor& d : JobTypes()) {
    const std::regex command(std::string("add_subcommand\\(\\s*\"") + d.cli_name + "\"");
    EXPECT_TRUE(std::regex_search(source, command)) << d.cli_name << " is no client command";
    const JobTypeDescriptor* by_name = FindJobTypeByName(d.cli_name);
    ASSERT_NE(by_name, nullptr);
    EXPECT_EQ(by_name->type, d.type);
  }
  EXPECT_EQ(FindJobTypeByName("watch"), nullptr);
  EXPECT_EQ(FindJobTypeByName(""), nullptr);
}

// The traits as the switches of server/validation.cc, mechanism_validation.cc,
// memory_estimate.cc, worker_pool.cc, worker/worker_service.cc and
// client/render.cc had them before the table.
TEST(JobTypesTest, TraitsOfTheFormerSwitches) {
  // The train job (issue 26) reads its own corpus field (TrainRequest.corpus).
  const std::set<R::ParamsCase> forbidden = {R::kFirstTokenProbe, R::kFfnQuadratic, R::kVoCircuit,
                                             R::kTrain};
  // The profile (added after the table) reads a corpus like the perplexity
  // job but streams one record per model, not per chunk.
  const std::set<R::ParamsCase> optional = {R::kPerplexity, R::kConstantSubstitution,
                                            R::kSinkAblation, R::kProfile};
  const std::set<R::ParamsCase> per_chunk = {R::kPerplexity, R::kConstantSubstitution,
                                             R::kSinkAblation};
  const std::set<R::ParamsCase> beyond_ctx = {R::kSinks, R::kPerplexity, R::kConstantSubstitution,
                                              R::kSinkAblation, R::kProfile};
  const std::set<R::ParamsCase> fold = {R::kFfnQuadratic, R::kSiluRegime, R::kVoCircuit};
  const std::set<R::ParamsCase> mechanism = {R::kFfnQuadratic, R::kSiluRegime, R::kVoCircuit,
                                             R::kActivations};
  const std::set<R::ParamsCase> slow_start = {R::kFirstTokenProbe, R::kConstantSubstitution,
                                              R::kSinkAblation, R::kTrain};
  for (const JobTypeDescriptor& d : JobTypes()) {
    const R::ParamsCase c = d.params_case;
    SCOPED_TRACE(d.cli_name);
    const SequenceInput want = forbidden.count(c)  ? SequenceInput::kForbidden
                               : optional.count(c) ? SequenceInput::kOptional
                                                   : SequenceInput::kRequired;
    EXPECT_EQ(d.sequences, want);
    EXPECT_EQ(std::string(d.sequences_forbidden_message).empty(),
              want != SequenceInput::kForbidden);
    EXPECT_EQ(d.min_ids_per_sequence, c == R::kSinks ? 2 : 1);
    EXPECT_EQ(d.may_exceed_context, beyond_ctx.count(c) == 1);
    EXPECT_EQ(d.streams_per_chunk, per_chunk.count(c) == 1);
    // The sink analysis and the self-attention profile compute their
    // statistics from query chunks (O(T)): no pattern is materialised.
    const bool chunked = c == R::kSinks || c == R::kSelfAttentionProfile || c == R::kProfile;
    // The train job runs no analysis forward pass (its trainer uses the fused path).
    EXPECT_EQ(d.needs_attention_patterns, c != R::kScan && c != R::kTrain && !chunked);
    EXPECT_EQ(d.reads_corpus(), optional.count(c) == 1);
    EXPECT_EQ(d.memory_estimate, fold.count(c) ? MemoryEstimateKind::kForwardFfnFold
                                 : chunked     ? MemoryEstimateKind::kAttentionStatistics
                                               : MemoryEstimateKind::kForward);
    EXPECT_EQ(d.mechanism, mechanism.count(c) == 1);
    EXPECT_EQ(d.progress_base_seconds, slow_start.count(c) ? 300 : 120);
    EXPECT_STREQ(d.progress_unit, c == R::kScan              ? "blocks"
                                  : c == R::kFirstTokenProbe ? "tokens"
                                  : c == R::kProfile         ? "chunks"
                                  : c == R::kTrain           ? "steps"
                                                             : "units");
  }
}

TEST(JobTypesTest, EvalCorpusPointsIntoTheRequestsParams) {
  R perplexity;
  perplexity.mutable_perplexity()->mutable_eval()->set_corpus("ppl-corpus");
  R substitution;
  substitution.mutable_constant_substitution()->mutable_eval()->set_corpus("cs-corpus");
  R ablation;
  ablation.mutable_sink_ablation()->mutable_eval()->set_corpus("sa-corpus");
  for (const auto& [request, corpus] : {std::pair<const R*, const char*>{&perplexity, "ppl-corpus"},
                                        {&substitution, "cs-corpus"},
                                        {&ablation, "sa-corpus"}}) {
    const JobTypeDescriptor* d = JobTypeOfRequest(*request);
    ASSERT_NE(d, nullptr);
    ASSERT_TRUE(d->reads_corpus());
    EXPECT_EQ(d->eval_corpus(*request)->corpus(), corpus);
  }
  EXPECT_EQ(JobTypeOfRequest(R()), nullptr);
}

}  // namespace
}  // namespace sinkscope
