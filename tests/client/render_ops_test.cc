// Issue 25.7: output defects of the client's renderers, fed hand-built
// proto messages (no server): KL class names, `get` inputs, `models` width,
// text in --json, one number per vo-circuit cell, no empty ffn-quadratic column.
#include "client/render.h"

#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace sinkscope {
namespace client {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// KL class "spike" holds the intervened positions, spike or not.
TEST(OpsRenderTest, KlClassIsTheIntervenedPositions) {
  std::vector<v1::ResultRecord> records(1);
  auto* s = records[0].mutable_intervention_summary();
  s->mutable_kl()->set_spike(0.25);
  s->mutable_kl()->set_n_spike(8);
  s->mutable_kl()->set_n_after_spike(8);
  auto* abl = s->add_interventions()->mutable_ablation();
  abl->set_method("mask");
  abl->add_sink_positions(0);
  const std::string t = RenderResults(records);
  EXPECT_THAT(t, HasSubstr("intervened positions 0.25 (8)"));
  EXPECT_THAT(t, HasSubstr("next position"));
  EXPECT_THAT(t, Not(HasSubstr("spike tokens 0.25")));
}

// `get` shows 8 inputs and how many more; -1 shows all.
TEST(OpsRenderTest, GetTruncatesInputsWithACount) {
  v1::Job job;
  job.set_id("j-1");
  for (int i = 0; i < 1024; ++i) job.mutable_request()->add_sequences()->mutable_ids()->add_ids(i);
  const std::string t = RenderJob(job, absl::UTCTimeZone());
  EXPECT_THAT(t, HasSubstr("inputs (1024)"));
  EXPECT_THAT(t, HasSubstr("[7] ids [7]"));
  EXPECT_THAT(t, Not(HasSubstr("[8] ids")));
  EXPECT_THAT(t, HasSubstr("... 1016 more (--all-inputs shows every one)"));
  const std::string all = RenderJob(job, absl::UTCTimeZone(), -1);
  EXPECT_THAT(all, HasSubstr("[1023] ids [1023]"));
  EXPECT_THAT(all, Not(HasSubstr("more (--all-inputs")));
}

// `models`: no line past ~100 characters, whatever the descriptions.
TEST(OpsRenderTest, ModelsLinesStayNarrow) {
  v1::ListModelsResponse r;
  auto* m = r.add_models();
  m->set_name("bytelm-demo");
  m->set_format("llama2c");
  std::string description;
  for (int i = 0; i < 60; ++i) absl::StrAppend(&description, "word", i, " ");
  m->set_description(description);
  auto* c = r.add_corpora();
  c->set_name("tinyshakespeare");
  c->set_description(description);
  const std::string t = RenderModels(r);
  for (absl::string_view line : absl::StrSplit(t, '\n')) EXPECT_LE(line.size(), 100u) << line;
  EXPECT_THAT(t, HasSubstr("word59"));
  EXPECT_THAT(t, HasSubstr("bytelm-demo  word0 word1"));
}

// --json shows text as text (protobuf JSON would print base64).
TEST(OpsRenderTest, JsonShowsTextAsText) {
  v1::Job job;
  job.mutable_request()->add_sequences()->set_text("First Citizen: caf\xc3\xa9");
  job.mutable_request()->add_sequences()->mutable_ids()->add_ids(5);
  absl::StatusOr<std::string> json = ToJson(job, true);
  ASSERT_TRUE(json.ok());
  EXPECT_THAT(*json, HasSubstr("\"text\": \"First Citizen: caf\xc3\xa9\""));
  EXPECT_THAT(*json, Not(HasSubstr("Rmlyc3Qg")));  // base64 of "First "
  EXPECT_LT(json->find("\"request\""), json->find("\"state\"")) << *json;  // field order kept
}

// vo-circuit: one number per cell, a column per token named by its id.
TEST(OpsRenderTest, VoCircuitOneNumberPerCell) {
  std::vector<v1::ResultRecord> records(2);
  auto* l = records[0].mutable_vo_circuit_layer();
  l->set_layer(0);
  for (double a : {0.617, 0.00982, 0.0138}) l->add_token_alignment(a);
  for (double q : {0.012, 0.0672, 0.148}) l->add_sample_quantiles(q);
  auto* s = records[1].mutable_vo_circuit_summary();
  s->set_step_up_block(2);
  for (int id : {256, 70, 84}) s->add_token_ids(id);
  const std::string t = RenderResults(records);
  EXPECT_THAT(t, HasSubstr("token 256  token 70  token 84"));
  EXPECT_THAT(t, Not(HasSubstr("0.617 0.00982")));
}

// ffn-quadratic: without top channels there is no "top rows" column.
TEST(OpsRenderTest, FfnQuadraticDropsTheEmptyColumn) {
  std::vector<v1::ResultRecord> records(1);
  auto* b = records[0].mutable_ffn_quadratic_block();
  b->set_block(2);
  b->set_sublayer("mlp");
  auto* c = b->add_channels();
  c->set_channel(19);
  c->add_eigenvalues(0.09);
  EXPECT_THAT(RenderResults(records), Not(HasSubstr("top rows")));
  auto* top = b->add_channels();
  top->set_channel(251);
  top->set_is_top(true);
  top->add_top_rows()->set_row(3);
  EXPECT_THAT(RenderResults(records), HasSubstr("top rows"));
}

}  // namespace
}  // namespace client
}  // namespace sinkscope
