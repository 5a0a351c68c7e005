// Renderers of the sinkscope client, fed hand-built proto messages.
#include "client/render.h"
#include "client/render_mechanism.h"
#include "client/render_profile.h"
#include "client/render_train.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <string>
#include <tuple>
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

v1::ActivationEntry Entry(float value, int seq, int pos, int ch) {
  v1::ActivationEntry e;
  e.set_value(value);
  e.set_sequence(seq);
  e.set_position(pos);
  e.set_channel(ch);
  return e;
}

v1::ScanBlock Block(int block, std::vector<v1::ActivationEntry> resid, float median,
                    v1::ActivationEntry output, int64_t n_massive) {
  v1::ScanBlock b;
  b.set_block(block);
  b.set_layer((block - 1) / 2);
  b.set_sublayer(block % 2 == 1 ? "attn" : "mlp");
  b.set_resid_hook(absl::StrCat("blocks.", (block - 1) / 2,
                                block % 2 == 1 ? ".hook_resid_mid" : ".hook_resid_post"));
  b.set_output_hook(absl::StrCat("blocks.", (block - 1) / 2,
                                 block % 2 == 1 ? ".hook_attn_out" : ".hook_mlp_out"));
  float max_abs = 0;
  for (const auto& e : resid) {
    *b.add_resid_top() = e;
    max_abs = std::max(max_abs, std::fabs(e.value()));
  }
  *b.add_output_top() = output;
  b.add_median_abs(median);
  b.set_max_abs(max_abs);
  b.set_n_massive(n_massive);
  return b;
}

v1::BlockRef Ref(int block) {
  v1::BlockRef r;
  r.set_block(block);
  r.set_layer((block - 1) / 2);
  r.set_sublayer(block % 2 == 1 ? "attn" : "mlp");
  return r;
}

v1::ScanSummary Summary() {
  v1::ScanSummary s;
  auto* t = s.add_spike_tokens();
  t->set_sequence(0);
  t->set_position(0);
  s.add_spike_channels(23);
  s.add_spike_channels(41);
  *s.add_spike_entries() = Entry(1234.5f, 0, 0, 23);
  *s.add_spike_entries() = Entry(-987.25f, 0, 0, 41);
  *s.add_step_up_blocks() = Ref(4);
  *s.add_step_down_blocks() = Ref(9);
  s.set_peak_abs(1234.5f);
  *s.mutable_peak_block() = Ref(6);
  s.set_spike_mean_over_sequences(1234.5f);
  auto* th = s.mutable_thresholds();
  th->set_top_k(3);
  th->set_abs_threshold(100);
  th->set_rel_threshold(1000);
  th->set_step_fraction(0.5);
  th->set_step_rule("share");
  th->set_step_share(0.2);
  auto* p = s.mutable_provenance();
  p->set_model("stories260K");
  p->set_checkpoint_format("llama2c");
  p->set_dtype("float32");
  p->set_device("cpu");
  p->set_attention_path("eager");
  p->set_code_version("0.1.0+abc1234");
  p->set_n_tokens(3);
  p->set_n_sequences(1);
  return s;
}

TEST(BlockLabelTest, NamesBlockLayerAndSublayer) {
  EXPECT_EQ(BlockLabel(4, 1, "mlp"), "4 (layer 1 mlp)");
  EXPECT_EQ(BlockLabel(1, 0, "attn"), "1 (layer 0 attn)");
  EXPECT_EQ(BlockLabel(Ref(62)), "62 (layer 30 mlp)");
  // A missing sublayer follows the block's parity.
  EXPECT_EQ(BlockLabel(7, 3, ""), "7 (layer 3 attn)");
}

TEST(FormatTest, ValuesAreSigned) {
  EXPECT_EQ(FormatValue(1234.5), "+1234.50");
  EXPECT_EQ(FormatValue(-987.25), "-987.25");
  EXPECT_EQ(FormatValue(-0.01234), "-0.0123");
  EXPECT_EQ(FormatValue(2.5e7), "+2.500e+07");
  EXPECT_EQ(FormatEntry(Entry(-42.0f, 1, 5, 17)), "-42.00 (1,5,17)");
}

TEST(FormatTest, NamesCodesStatesAndTypes) {
  EXPECT_EQ(StatusCodeName(3), "INVALID_ARGUMENT");
  EXPECT_EQ(StatusCodeName(16), "UNAUTHENTICATED");
  EXPECT_EQ(StatusCodeName(99), "CODE_99");
  EXPECT_EQ(JobStateName(v1::JOB_STATE_MODEL_LOADING), "MODEL_LOADING");
  EXPECT_EQ(JobTypeName(v1::JOB_TYPE_ACTIVATION_SCAN), "ACTIVATION_SCAN");
  EXPECT_EQ(DtypeName(v1::DTYPE_BFLOAT16), "bfloat16");
}

TEST(FormatTableTest, AlignsColumns) {
  std::string t = FormatTable({{"a", "bb"}, {"ccc", "d"}}, {1});
  EXPECT_EQ(t, "a    bb\n---  --\nccc   d\n");
}

TEST(ScanTableTest, ShowsBlocksWithSignedEntries) {
  std::vector<v1::ScanBlock> blocks = {
      Block(3, {Entry(-12.5f, 0, 2, 7), Entry(3.25f, 0, 1, 9), Entry(-1.0f, 0, 0, 1)}, 0.25f,
            Entry(-4.0f, 0, 2, 7), 0),
      Block(4, {Entry(1234.5f, 0, 0, 23), Entry(-987.25f, 0, 0, 41), Entry(50.0f, 0, 1, 3)},
            0.5f, Entry(1200.0f, 0, 0, 23), 2),
  };
  std::string table = RenderScanTable(blocks);
  EXPECT_THAT(table, HasSubstr("3 (layer 1 attn)"));
  EXPECT_THAT(table, HasSubstr("4 (layer 1 mlp)"));
  EXPECT_THAT(table, HasSubstr("+1234.50 (0,0,23)"));
  EXPECT_THAT(table, HasSubstr("-987.25 (0,0,41)"));
  EXPECT_THAT(table, HasSubstr("-12.50 (0,2,7)"));
  EXPECT_THAT(table, HasSubstr("+1200.00 (0,0,23)"));  // block output top-1
  EXPECT_THAT(table, HasSubstr("|resid| top-3"));
  EXPECT_THAT(table, HasSubstr("median|h|"));
  EXPECT_THAT(table, HasSubstr("0.5000"));
  // Header, rule, two rows.
  EXPECT_EQ(std::count(table.begin(), table.end(), '\n'), 4);
}

TEST(ScanTableTest, MedianRangeOverSequences) {
  v1::ScanBlock b = Block(1, {Entry(1.0f, 0, 0, 0)}, 0.125f, Entry(1.0f, 0, 0, 0), 0);
  b.add_median_abs(0.375f);
  EXPECT_THAT(RenderScanTable({b}), HasSubstr("0.1250..0.3750"));
}

TEST(ScanSummaryTest, ShowsSpikesStepsPeakThresholdsProvenance) {
  std::string s = RenderScanSummary(Summary());
  EXPECT_THAT(s, HasSubstr("Spike tokens (1):"));
  EXPECT_THAT(s, HasSubstr("(seq 0, pos 0)"));
  EXPECT_THAT(s, HasSubstr("Spike channels (2):"));
  EXPECT_THAT(s, HasSubstr("23, 41"));
  EXPECT_THAT(s, HasSubstr("+1234.50 (0,0,23), -987.25 (0,0,41)"));
  EXPECT_THAT(s, HasSubstr("Step-up blocks:       block 4 (layer 1 mlp)"));
  EXPECT_THAT(s, HasSubstr("Step-down blocks:     block 9 (layer 4 attn)"));
  EXPECT_THAT(s, HasSubstr("1234.50 at block 6 (layer 2 mlp)"));
  EXPECT_THAT(s, HasSubstr("|h| > 100 and |h| > 1000 x median|h|; step rule share (step share 0.2); top-k 3"));
  v1::ScanSummary single = Summary();
  single.mutable_thresholds()->set_step_rule("single-block");
  EXPECT_THAT(RenderScanSummary(single), HasSubstr("; step rule single-block (step fraction 0.5); top-k 3"));
  EXPECT_THAT(s, HasSubstr("model stories260K (llama2c), dtype float32, device cpu"));
  EXPECT_THAT(s, HasSubstr("code 0.1.0+abc1234"));
  EXPECT_THAT(s, HasSubstr("3 tokens in 1 sequence\n"));
}

TEST(ScanSummaryTest, EmptyListsSayNone) {
  v1::ScanSummary s;
  std::string text = RenderScanSummary(s);
  EXPECT_THAT(text, HasSubstr("Spike tokens (0):     none"));
  EXPECT_THAT(text, HasSubstr("Step-up blocks:       none"));
  EXPECT_THAT(text, Not(HasSubstr("Provenance")));
}

TEST(ScanSummaryTest, CapsSpikeEntries) {
  v1::ScanSummary s;
  for (int i = 0; i < 12; ++i) *s.add_spike_entries() = Entry(200.0f + i, 0, 0, i);
  EXPECT_THAT(RenderScanSummary(s, 10), HasSubstr("... (2 more)"));
}

TEST(ResultsTest, TableThenSummary) {
  std::vector<v1::ResultRecord> records(2);
  *records[0].mutable_scan_block() =
      Block(4, {Entry(-300.0f, 0, 0, 5)}, 0.1f, Entry(-290.0f, 0, 0, 5), 1);
  *records[1].mutable_scan_summary() = Summary();
  std::string text = RenderResults(records);
  size_t table = text.find("4 (layer 1 mlp)");
  size_t summary = text.find("Step-up blocks");
  ASSERT_NE(table, std::string::npos);
  ASSERT_NE(summary, std::string::npos);
  EXPECT_LT(table, summary);
  EXPECT_THAT(text, HasSubstr("-300.00 (0,0,5)"));
}

TEST(JsonTest, UsesProtoFieldNames) {
  v1::Job job;
  job.set_id("j-0123456789abcdef");
  job.set_state(v1::JOB_STATE_COMPLETED);
  job.set_type(v1::JOB_TYPE_ACTIVATION_SCAN);
  job.mutable_request()->set_model("stories260K");
  job.mutable_request()->add_sequences()->mutable_ids()->add_ids(1);
  *job.add_results()->mutable_scan_block() =
      Block(4, {Entry(-300.0f, 0, 0, 5)}, 0.1f, Entry(-290.0f, 0, 0, 5), 1);
  *job.add_results()->mutable_scan_summary() = Summary();
  absl::StatusOr<std::string> json = ToJson(job);
  ASSERT_TRUE(json.ok()) << json.status();
  EXPECT_THAT(*json, HasSubstr("\"state\": \"JOB_STATE_COMPLETED\""));
  EXPECT_THAT(*json, HasSubstr("\"scan_block\""));
  EXPECT_THAT(*json, HasSubstr("\"resid_top\""));
  EXPECT_THAT(*json, HasSubstr("\"median_abs\""));
  EXPECT_THAT(*json, HasSubstr("\"step_up_blocks\""));
  EXPECT_THAT(*json, HasSubstr("\"spike_mean_over_sequences\""));
  EXPECT_THAT(*json, HasSubstr("\"code_version\""));
  // Default-valued fields are printed too (scripts need not guess).
  EXPECT_THAT(*json, HasSubstr("\"queue_position\""));
  EXPECT_THAT(*json, Not(HasSubstr("residTop")));
  EXPECT_THAT(*json, Not(HasSubstr("stepUpBlocks")));
  std::string compact = *ToJson(job, /*pretty=*/false);
  EXPECT_EQ(compact.find('\n'), std::string::npos);
}

TEST(JobsTableTest, ListsJobs) {
  v1::ListJobsResponse response;
  v1::Job* job = response.add_jobs();
  job->set_id("j-00000000000000aa");
  job->set_type(v1::JOB_TYPE_ACTIVATION_SCAN);
  job->mutable_request()->set_model("stories260K");
  job->set_state(v1::JOB_STATE_QUEUED);
  job->set_queue_position(2);
  job->set_owner("alice");
  job->mutable_create_time()->set_seconds(1772965703);  // 2026-03-08 10:28:23 UTC
  response.set_next_page_token("tok");
  std::string t = RenderJobsTable(response, absl::UTCTimeZone());
  EXPECT_THAT(t, HasSubstr("id"));
  EXPECT_THAT(t, HasSubstr("owner"));
  EXPECT_THAT(t, HasSubstr("j-00000000000000aa  ACTIVATION_SCAN  stories260K  QUEUED (2)"));
  EXPECT_THAT(t, HasSubstr("2026-03-08 10:28:23  alice"));
  EXPECT_THAT(t, HasSubstr("--page-token tok"));
}

TEST(JobsTableTest, EmptyListSaysSo) {
  EXPECT_EQ(RenderJobsTable(v1::ListJobsResponse(), absl::UTCTimeZone()), "no jobs\n");
}

TEST(JobTest, ShowsStateErrorAndInputs) {
  v1::Job job;
  job.set_id("j-1");
  job.set_state(v1::JOB_STATE_FAILED);
  job.mutable_error()->set_code(3);
  job.mutable_error()->set_message("token id 9999 out of range");
  job.mutable_request()->set_model("stories260K");
  auto* ids = job.mutable_request()->add_sequences()->mutable_ids();
  for (int id : {1, 461, 401}) ids->add_ids(id);
  job.mutable_request()->add_sequences()->set_text("Once upon a time");
  job.mutable_request()->mutable_scan()->set_top_k(5);
  job.mutable_request()->mutable_scan()->set_step_rule("share");
  job.mutable_request()->mutable_scan()->set_step_share(0.2);
  std::string t = RenderJob(job, absl::UTCTimeZone());
  EXPECT_THAT(t, HasSubstr("FAILED"));
  EXPECT_THAT(t, HasSubstr("INVALID_ARGUMENT: token id 9999 out of range"));
  EXPECT_THAT(t, HasSubstr("ids [1 461 401]"));
  EXPECT_THAT(t, HasSubstr("text \"Once upon a time\""));
  EXPECT_THAT(t, HasSubstr("top_k 5, step_rule share, step_share 0.2"));
  EXPECT_THAT(t, HasSubstr("started     -"));
}

TEST(ModelsTest, ListsCatalog) {
  v1::ListModelsResponse response;
  v1::ModelInfo* m = response.add_models();
  m->set_name("stories260K");
  m->set_format("llama2c");
  m->set_default_dtype(v1::DTYPE_FLOAT32);
  m->set_n_layers(5);
  m->set_d_model(64);
  m->set_vocab_size(512);
  m->set_n_ctx(512);
  std::string t = RenderModels(response);
  EXPECT_THAT(t, HasSubstr("stories260K"));
  EXPECT_THAT(t, HasSubstr("float32"));
  EXPECT_THAT(t, HasSubstr("no (ids)"));
  EXPECT_THAT(t, HasSubstr("10"));  // 2L blocks
}

v1::JobEvent Event(int64_t seq, int attempt) {
  v1::JobEvent e;
  e.set_job_id("j-1");
  e.set_seq(seq);
  e.set_attempt(attempt);
  return e;
}

TEST(JobProgressTest, StatusLines) {
  JobProgress p("j-1");
  v1::JobEvent e = Event(1, 0);
  e.mutable_queued()->set_position(2);
  EXPECT_TRUE(p.Apply(e));
  EXPECT_EQ(p.status_line(), "job j-1: QUEUED (position 2)");
  EXPECT_EQ(p.state(), v1::JOB_STATE_QUEUED);

  e = Event(2, 1);
  e.mutable_model_loading()->set_model("stories260K");
  e.mutable_model_loading()->set_phase("loading");
  e.mutable_model_loading()->set_progress(0.4f);
  e.mutable_model_loading()->set_device("cpu");
  EXPECT_TRUE(p.Apply(e));
  EXPECT_EQ(p.status_line(), "job j-1: MODEL_LOADING stories260K (loading 40%, cpu)");

  e = Event(3, 1);
  e.mutable_model_loading()->set_model("stories260K");
  e.mutable_model_loading()->set_phase("cached");
  e.mutable_model_loading()->set_progress(1.0f);
  p.Apply(e);
  EXPECT_EQ(p.status_line(), "job j-1: MODEL_LOADING stories260K (cached)");

  e = Event(4, 1);
  e.mutable_running()->set_units_done(7);
  e.mutable_running()->set_units_total(10);
  EXPECT_TRUE(p.Apply(e));
  EXPECT_EQ(p.status_line(), "job j-1: RUNNING 7/10 blocks");
  EXPECT_FALSE(p.status_is_permanent());
  EXPECT_FALSE(p.done());

  e = Event(5, 1);
  e.mutable_failed()->set_code(3);
  e.mutable_failed()->set_message("sequence 0 is longer than the context");
  EXPECT_TRUE(p.Apply(e));
  EXPECT_TRUE(p.done());
  EXPECT_TRUE(p.status_is_permanent());
  EXPECT_EQ(p.status_line(),
            "job j-1: FAILED INVALID_ARGUMENT: sequence 0 is longer than the context");
  EXPECT_EQ(p.failure().code(), 3);
  EXPECT_EQ(p.last_seq(), 5);
}

TEST(JobProgressTest, RetryDiscardsEarlierAttemptRecords) {
  JobProgress p("j-1");
  v1::JobEvent e = Event(1, 1);
  *e.mutable_result()->mutable_scan_block() = Block(1, {Entry(1, 0, 0, 0)}, 1, Entry(1, 0, 0, 0), 0);
  EXPECT_FALSE(p.Apply(e));
  EXPECT_EQ(p.records().size(), 1u);

  e = Event(2, 1);
  e.mutable_retrying()->set_failed_attempt(1);
  e.mutable_retrying()->set_reason("worker 0 exited");
  EXPECT_TRUE(p.Apply(e));
  EXPECT_THAT(p.status_line(), HasSubstr("RETRYING (attempt 1 lost: worker 0 exited)"));
  EXPECT_TRUE(p.records().empty());

  // A late record of the lost attempt is ignored.
  e = Event(3, 1);
  *e.mutable_result()->mutable_scan_block() = Block(2, {Entry(1, 0, 0, 0)}, 1, Entry(1, 0, 0, 0), 0);
  p.Apply(e);
  EXPECT_TRUE(p.records().empty());

  for (int block : {1, 2}) {
    e = Event(3 + block, 2);
    *e.mutable_result()->mutable_scan_block() =
        Block(block, {Entry(1, 0, 0, 0)}, 1, Entry(1, 0, 0, 0), 0);
    p.Apply(e);
  }
  e = Event(6, 2);
  e.mutable_completed()->set_n_records(2);
  EXPECT_TRUE(p.Apply(e));
  EXPECT_EQ(p.status_line(), "job j-1: COMPLETED (2 records)");
  EXPECT_EQ(p.state(), v1::JOB_STATE_COMPLETED);
  ASSERT_EQ(p.records().size(), 2u);
  EXPECT_EQ(p.records()[1].scan_block().block(), 2);
}

TEST(JobProgressTest, Cancelled) {
  JobProgress p("j-1");
  v1::JobEvent e = Event(1, 0);
  e.mutable_cancelled()->set_reason("cancelled by alice");
  EXPECT_TRUE(p.Apply(e));
  EXPECT_EQ(p.status_line(), "job j-1: CANCELLED (cancelled by alice)");
  EXPECT_EQ(p.state(), v1::JOB_STATE_CANCELLED);
  EXPECT_TRUE(p.done());
}


// ---- analysis job types ----

v1::Provenance Prov() {
  v1::Provenance p;
  p.set_model("planted");
  p.set_checkpoint_format("hf-safetensors");
  p.set_dtype("float32");
  p.set_device("cpu");
  p.set_attention_path("sdpa");
  p.set_code_version("test");
  p.set_n_tokens(112);
  p.set_n_sequences(3);
  return p;
}

v1::SinkLayer SinkLayerRecord(int layer, std::vector<int> sink_heads) {
  v1::SinkLayer l;
  l.set_layer(layer);
  for (int h = 0; h < 4; ++h) {
    v1::HeadSinkStats* s = l.add_heads();
    s->set_layer(layer);
    s->set_head(h);
    const bool sink = std::count(sink_heads.begin(), sink_heads.end(), h) > 0;
    s->set_is_sink_head(sink);
    s->set_max_importance(sink ? 0.9688 : 0.1234);
    s->set_sink_fraction(sink ? 1.0 : 0.0);
    s->set_mean_attention_distance(sink ? 15.5 : 3.25);
    s->set_mean_logit_gap(sink ? 12.25 : 0.5);
  }
  l.set_sink_ratio(sink_heads.size() / 4.0);
  l.set_n_sink_heads(static_cast<int>(sink_heads.size()));
  return l;
}

TEST(SinksRenderTest, TableMarksSinkHeads) {
  std::string t = RenderSinkTable({SinkLayerRecord(2, {0, 2}), SinkLayerRecord(3, {1})});
  EXPECT_THAT(t, HasSubstr("max alpha"));
  // One row per head; sink heads carry "*".
  size_t rows = 0, marked = 0;
  std::istringstream in(t);
  std::string line;
  while (std::getline(in, line)) {
    if (line.find("0.9688") != std::string::npos) {
      ++rows;
      marked += line.find('*') != std::string::npos;
    } else if (line.find("0.1234") != std::string::npos) {
      ++rows;
      EXPECT_EQ(line.find('*'), std::string::npos) << line;
    }
  }
  EXPECT_EQ(rows, 8u);
  EXPECT_EQ(marked, 3u);
  EXPECT_THAT(t, HasSubstr("layer 2 50.00% (2/4)"));
  EXPECT_THAT(t, HasSubstr("layer 3 25.00% (1/4)"));
}

TEST(SinksRenderTest, SummaryComparesSinkHeadsWithOthers) {
  v1::SinkSummary s;
  s.set_sink_ratio(0.125);
  s.set_n_sink_heads(3);
  s.set_n_heads(24);
  for (auto [l, h] : std::vector<std::pair<int, int>>{{2, 0}, {2, 2}, {3, 1}}) {
    auto* r = s.add_sink_heads();
    r->set_layer(l);
    r->set_head(h);
  }
  s.set_sink_heads_distance(15.5);
  s.set_other_heads_distance(3.25);
  s.set_sink_heads_logit_gap(12.25);
  s.mutable_params()->set_window(32);
  s.mutable_params()->set_epsilon(0.3);
  *s.mutable_provenance() = Prov();
  std::string t = RenderSinkSummary(s);
  EXPECT_THAT(t, HasSubstr("12.50%"));
  EXPECT_THAT(t, HasSubstr("3 of 24 heads"));
  // A label longer than the 22-column key still gets a space.
  EXPECT_THAT(t, HasSubstr("Sink heads (layer,head): (2,0), (2,2), (3,1)"));
  EXPECT_THAT(t, HasSubstr("sink heads"));
  EXPECT_THAT(t, HasSubstr("other heads"));
  EXPECT_THAT(t, HasSubstr("15.50"));
  EXPECT_THAT(t, HasSubstr("T = 32, epsilon 0.3"));
  EXPECT_THAT(t, HasSubstr("model planted (hf-safetensors), dtype float32, device cpu"));
}

TEST(FirstTokenRenderTest, CountsRatiosExceptionsHistogram) {
  v1::FirstTokenProbeResult r;
  r.set_n_tokens(64);
  r.set_n_spike_at_first(3);
  r.set_ratio_at_first(3.0 / 64);
  r.set_n_spike_in_control(3);
  r.set_ratio_in_control(3.0 / 64);
  for (int id : {1, 5, 9}) r.add_spiking_in_control(id);
  r.add_not_spiking_at_first(0);
  r.add_not_spiking_at_first(2);
  for (int b = 0; b <= 12; ++b) r.add_first_spike_block_histogram(b == 4 ? 3 : 0);
  r.set_total_seconds(0.5);
  r.set_forward_seconds(0.25);
  r.mutable_params()->set_range_end(64);
  r.mutable_params()->add_prefix(1);
  *r.mutable_provenance() = Prov();
  std::string t = RenderFirstTokenProbe(r);
  EXPECT_THAT(t, HasSubstr("Tokens probed:        64"));
  EXPECT_THAT(t, HasSubstr("3 (4.69%)"));
  EXPECT_THAT(t, HasSubstr("1, 5, 9"));
  EXPECT_THAT(t, HasSubstr("(61 in all)"));
  EXPECT_THAT(t, HasSubstr("block 4 (layer 1 mlp): 3"));
  EXPECT_THAT(t, HasSubstr("0.500 s total"));
  EXPECT_THAT(t, HasSubstr("range [0, 64)"));
}

TEST(SpikeSimilarityRenderTest, ShowsThreeMatrices) {
  v1::SpikeSimilaritySummary s;
  for (int i = 0; i < 2; ++i) {
    auto* t = s.add_spike_tokens();
    t->set_sequence(i);
    s.add_token_ids(i == 0 ? 1 : 5);
  }
  *s.mutable_step_up_block() = Ref(4);
  auto fill = [](v1::CosineMatrix* m, const std::string& hook, double off) {
    m->set_hook(hook);
    m->set_n(2);
    for (double v : {1.0, off, off, 1.0}) m->add_values(v);
    m->set_mean_off_diagonal(off);
    m->set_min_off_diagonal(off);
  };
  fill(s.mutable_before(), "blocks.1.hook_resid_mid", 0.25);
  fill(s.mutable_after(), "blocks.1.hook_resid_post", 0.9999);
  fill(s.mutable_normalized(), "blocks.2.ln1.hook_normalized", 0.99995);
  std::string t = RenderSpikeSimilarity(s);
  EXPECT_THAT(t, HasSubstr("block 4 (layer 1 mlp)"));
  EXPECT_THAT(t, HasSubstr("before step-up"));
  EXPECT_THAT(t, HasSubstr("after step-up"));
  EXPECT_THAT(t, HasSubstr("after next norm"));
  EXPECT_THAT(t, HasSubstr("0.999900"));
  EXPECT_THAT(t, HasSubstr("id 5"));
}

TEST(SelfAttentionRenderTest, GroupsPerLayer) {
  v1::SelfAttentionLayer l;
  l.set_layer(0);
  for (auto [g, m, n] : std::vector<std::tuple<std::string, double, int>>{
           {"first", 1.0, 2}, {"delimiter", 0.75, 3}, {"other", 0.125, 8}}) {
    auto* o = l.add_groups();
    o->set_group(g);
    o->set_mean(m);
    o->set_count(n);
  }
  std::string t = RenderSelfAttentionTable({l});
  EXPECT_THAT(t, HasSubstr("1.0000"));
  EXPECT_THAT(t, HasSubstr("0.7500"));
  EXPECT_THAT(t, HasSubstr("2/3/8"));
  v1::SelfAttentionSummary s;
  auto* d = s.add_resolved_delimiters();
  d->set_text("\n");
  d->add_ids(13);
  EXPECT_THAT(RenderSelfAttentionSummary(s), HasSubstr("\"\\n\""));
}

TEST(PerplexityRenderTest, OneLinePerChunkThenTotal) {
  std::vector<v1::ResultRecord> records(3);
  for (int i = 0; i < 2; ++i) {
    auto* c = records[i].mutable_perplexity_chunk();
    c->set_index(i);
    c->set_first_token(128 * i);
    c->set_n_scored(127);
    c->set_mean_loss(2.0 + i);
    c->set_perplexity(std::exp(2.0 + i));
  }
  auto* s = records[2].mutable_perplexity_summary();
  s->set_perplexity(12.1825);
  s->set_n_scored(254);
  s->set_n_chunks(2);
  s->mutable_eval()->set_corpus("tinyshakespeare");
  s->mutable_eval()->set_chunk_length(128);
  s->mutable_eval()->set_token_budget(-1);
  std::string t = RenderResults(records);
  EXPECT_THAT(t, HasSubstr("chunk    0  tokens 0..127  scored 127  loss 2.000000  ppl 7.3891"));
  EXPECT_THAT(t, HasSubstr("chunk    1  tokens 128..255"));
  EXPECT_THAT(t, HasSubstr("Perplexity:           12.182500"));
  EXPECT_THAT(t, HasSubstr("corpus tinyshakespeare"));
  EXPECT_THAT(t, HasSubstr("token budget all"));
  EXPECT_LT(t.find("chunk    1"), t.find("Perplexity:"));
}

TEST(InterventionRenderTest, ChunksThenSummaryWithResolvedInterventions) {
  std::vector<v1::ResultRecord> records(2);
  auto* c = records[0].mutable_intervention_chunk();
  c->set_index(0);
  c->set_n_scored(31);
  c->set_baseline_perplexity(10.0);
  c->set_intervened_perplexity(10.5);
  c->set_kl_mean(0.0123);
  auto* s = records[1].mutable_intervention_summary();
  s->set_baseline_perplexity(10.0);
  s->set_intervened_perplexity(10.5);
  s->set_n_scored(31);
  s->mutable_kl()->set_all(0.0123);
  s->mutable_kl()->set_spike(0.5);
  s->mutable_kl()->set_n_spike(1);
  auto* sub = s->add_interventions()->mutable_substitution();
  sub->set_mode("mean");
  *sub->mutable_block() = Ref(4);
  sub->add_values(3);
  sub->add_values(4);
  auto* abl = s->add_interventions()->mutable_ablation();
  abl->set_method("mask");
  auto* h = abl->add_heads();
  h->set_layer(2);
  h->set_head(0);
  abl->add_sink_positions(0);
  auto* e = s->add_head_effects();
  e->set_layer(2);
  e->set_head(0);
  e->set_distance_baseline(15.5);
  e->set_distance_intervened(7.5);
  *s->mutable_provenance() = Prov();
  std::string t = RenderResults(records);
  EXPECT_THAT(t, HasSubstr("baseline ppl"));
  EXPECT_THAT(t, HasSubstr("+5%"));
  EXPECT_THAT(t, HasSubstr("baseline 10.000000 -> intervened 10.500000"));
  EXPECT_THAT(t, HasSubstr("intervened positions 0.5 (1)"));
  EXPECT_THAT(t, HasSubstr("substitute mean at block 4 (layer 1 mlp)"));
  EXPECT_THAT(t, HasSubstr("(norm 5)"));
  EXPECT_THAT(t, HasSubstr("ablate (mask) heads (2,0)"));
  EXPECT_THAT(t, HasSubstr("Per ablated head"));
  EXPECT_THAT(t, HasSubstr("15.50"));
  EXPECT_LT(t.find("baseline ppl"), t.find("Perplexity:"));
}

TEST(ResultsTest, EveryKindIsShown) {
  std::vector<v1::ResultRecord> records(2);
  *records[0].mutable_sink_layer() = SinkLayerRecord(0, {});
  records[1].mutable_sink_summary()->set_n_heads(4);
  std::string t = RenderResults(records);
  EXPECT_THAT(t, HasSubstr("Attention sinks per layer"));
  EXPECT_THAT(t, HasSubstr("Sink ratio (eq. 28)"));
  EXPECT_THAT(t, Not(HasSubstr("cannot show")));
}

TEST(JobProgressTest, UnitFollowsJobType) {
  EXPECT_EQ(ProgressUnit(v1::JOB_TYPE_ACTIVATION_SCAN), "blocks");
  EXPECT_EQ(ProgressUnit(v1::JOB_TYPE_FIRST_TOKEN_PROBE), "tokens");
  JobProgress p("j-2");
  p.set_unit(ProgressUnit(v1::JOB_TYPE_FIRST_TOKEN_PROBE));
  v1::JobEvent e = Event(3, 1);
  e.mutable_running()->set_units_done(16);
  e.mutable_running()->set_units_total(64);
  EXPECT_TRUE(p.Apply(e));
  EXPECT_EQ(p.status_line(), "job j-2: RUNNING 16/64 tokens");
}

TEST(ModelsTest, ListsCorpora) {
  v1::ListModelsResponse response;
  response.add_models()->set_name("planted");
  auto* c = response.add_corpora();
  c->set_name("tinyshakespeare");
  c->set_size_bytes(1115394);
  c->set_has_tokenizer(true);
  std::string t = RenderModels(response);
  EXPECT_THAT(t, HasSubstr("tinyshakespeare"));
  EXPECT_THAT(t, HasSubstr("1115394"));
}

// --events and the result view agree on superseded attempts: records of an
// attempt older than the known one (GetJob's attempts or a Retrying event)
// are dropped by both.
TEST(JobProgressTest, SupersededAttemptRecordsAreDroppedConsistently) {
  auto result = [](int attempt, int64_t seq) {
    v1::JobEvent e;
    e.set_seq(seq);
    e.set_attempt(attempt);
    e.mutable_result()->mutable_scan_block()->set_block(static_cast<int32_t>(seq));
    return e;
  };
  JobProgress progress("j-1");
  progress.set_known_attempt(2);  // the job is on its second attempt
  const v1::JobEvent old_record = result(1, 3);
  EXPECT_TRUE(progress.Superseded(old_record));
  progress.Apply(old_record);
  EXPECT_TRUE(progress.records().empty());
  const v1::JobEvent new_record = result(2, 9);
  EXPECT_FALSE(progress.Superseded(new_record));
  progress.Apply(new_record);
  EXPECT_EQ(progress.records().size(), 1u);

  // Without a known attempt, a Retrying event supersedes what came before.
  JobProgress live("j-2");
  EXPECT_FALSE(live.Superseded(result(1, 2)));
  live.Apply(result(1, 2));
  v1::JobEvent retrying;
  retrying.set_seq(3);
  retrying.set_attempt(1);
  retrying.mutable_retrying()->set_failed_attempt(1);
  live.Apply(retrying);
  EXPECT_TRUE(live.records().empty());
  EXPECT_TRUE(live.Superseded(result(1, 4)));
  EXPECT_FALSE(live.Superseded(result(2, 5)));
}

// A watch that starts after the terminal event takes the end from the job.
TEST(JobProgressTest, ApplyFinalJobEndsTheWatch) {
  JobProgress progress("j-3");
  v1::Job running;
  running.set_state(v1::JOB_STATE_RUNNING);
  EXPECT_FALSE(progress.ApplyFinalJob(running));
  EXPECT_FALSE(progress.done());
  v1::Job done;
  done.set_state(v1::JOB_STATE_COMPLETED);
  done.add_results()->mutable_scan_block()->set_block(1);
  ASSERT_TRUE(progress.ApplyFinalJob(done));
  EXPECT_TRUE(progress.done());
  EXPECT_EQ(progress.records().size(), 1u);
  EXPECT_THAT(progress.status_line(), HasSubstr("COMPLETED"));
  v1::Job failed;
  failed.set_state(v1::JOB_STATE_FAILED);
  failed.mutable_error()->set_code(9);
  failed.mutable_error()->set_message("boom");
  JobProgress p2("j-4");
  ASSERT_TRUE(p2.ApplyFinalJob(failed));
  EXPECT_EQ(p2.state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(p2.failure().message(), "boom");
}

// The models table warns when no worker can run jobs; a waiting job says why.
TEST(ModelsTest, WarnsWhenWorkersAreDown) {
  v1::ListModelsResponse response;
  v1::ModelInfo* m = response.add_models();
  m->set_name("stories260K");
  response.mutable_workers()->set_total(1);
  response.mutable_workers()->set_down(1);
  response.mutable_workers()->set_problem("no worker is running: worker 0 failed to start 3 times");
  EXPECT_THAT(RenderModels(response), HasSubstr("WARNING: no worker is running"));
  v1::Job job;
  job.set_id("j-5");
  job.set_state(v1::JOB_STATE_QUEUED);
  job.set_waiting_reason("no worker is running");
  EXPECT_THAT(RenderJob(job, absl::UTCTimeZone()), HasSubstr("no worker is running"));
}

TEST(RenderAttribution, ShowsSharesAndStepBlocksOfEachEntry) {
  v1::ScanSummary s;
  v1::SpikeAttribution* a = s.add_attributions();
  a->set_sequence(0);
  a->set_position(0);
  a->set_channel(7);
  a->set_peak_value(300);
  a->set_peak_block(8);
  a->set_embed(0);
  for (int b = 1; b <= 12; ++b) {
    const float c = (b == 4 || b == 6 || b == 8) ? 100.f : (b == 10 ? -300.f : 0.f);
    a->add_contributions(c);
    a->add_shares(c / 300.f);
  }
  for (int b : {4, 6, 8}) a->add_step_up_blocks(b);
  a->add_step_down_blocks(10);
  const std::string text = RenderAttributionTable(s);
  EXPECT_THAT(text, HasSubstr("(0,0,7)"));
  EXPECT_THAT(text, HasSubstr("8 (layer 3 mlp)"));
  EXPECT_THAT(text, HasSubstr("6: +100"));
  EXPECT_THAT(text, HasSubstr("+33%"));
  EXPECT_THAT(text, HasSubstr("-100%"));
  EXPECT_THAT(text, HasSubstr("4, 6, 8"));
  EXPECT_THAT(text, Not(HasSubstr("2: ")));
  EXPECT_EQ(RenderAttributionTable(v1::ScanSummary()), "");
}

TEST(RenderMechanism, FfnQuadraticBlockAndActivations) {
  std::vector<v1::ResultRecord> records(3);
  v1::FfnQuadraticBlock* b = records[0].mutable_ffn_quadratic_block();
  b->set_block(4);
  b->set_layer(1);
  b->set_sublayer("mlp");
  b->add_outlier_channels(7);
  v1::FfnChannelSpectrum* c = b->add_channels();
  c->set_channel(7);
  c->set_is_top(true);
  c->set_frobenius_norm(20);
  c->add_eigenvalues(20);
  c->add_eigenvalues(0);
  c->set_eigen_ratio(std::numeric_limits<double>::infinity());
  v1::ActivationTensor* t = records[1].mutable_activation_tensor();
  t->set_hook("blocks.1.hook_resid_post");
  t->add_shape(2);
  t->add_shape(3);
  t->add_dims("pos");
  t->add_dims("d_model");
  t->set_numel(6);
  for (float v : {1.f, -5.f, 2.f, 0.f, 0.f, 3.f}) t->add_values(v);
  records[2].mutable_activations_summary()->set_n_tensors(1);
  const std::string text = RenderResults(records);
  EXPECT_THAT(text, HasSubstr("4 (layer 1 mlp)"));
  EXPECT_THAT(text, HasSubstr("outlier channels (> factor x median): 7"));
  EXPECT_THAT(text, HasSubstr("inf"));
  EXPECT_THAT(text, HasSubstr("blocks.1.hook_resid_post"));
  EXPECT_THAT(text, HasSubstr("2x3"));
  EXPECT_THAT(text, HasSubstr("pos,d_model"));
  EXPECT_THAT(text, Not(HasSubstr("unknown")));
}

}  // namespace
}  // namespace client
}  // namespace sinkscope

namespace profile_render {

using ::testing::HasSubstr;

using sinkscope::client::RenderProfileCsv;
using sinkscope::client::RenderProfileResults;
using sinkscope::client::RenderProfileRowLine;

/// Two rows as a profile job streams them: one profiled, one failed.
std::vector<sinkscope::v1::ResultRecord> TwoRows(bool with_summary) {
  sinkscope::v1::ProfileRow ok;
  ok.set_model("bytelm-demo");
  ok.set_perplexity(3.326);
  ok.set_sink_ratio(0.4600);
  ok.set_spike(193.16f);
  ok.set_n_sink_heads(11);
  ok.set_n_heads(24);
  ok.set_top_sink_key(0);
  for (int b : {2, 4}) ok.add_step_up_blocks()->set_block(b);
  ok.add_step_down_blocks()->set_block(12);
  ok.add_spike_channels(251);
  ok.add_spike_positions(0);
  ok.add_layer_sink_ratios(0.25);
  ok.add_layer_sink_ratios(0.5);
  sinkscope::v1::ProfileRow bad;
  bad.set_model("gone");
  bad.mutable_failure()->set_code(5);
  bad.mutable_failure()->set_message("model gone is not in the catalog, \"x\"");
  std::vector<sinkscope::v1::ResultRecord> out(2);
  *out[0].mutable_profile_row() = ok;
  *out[1].mutable_profile_row() = bad;
  if (with_summary) {
    sinkscope::v1::ResultRecord s;
    *s.mutable_profile_summary()->add_rows() = ok;
    *s.mutable_profile_summary()->add_rows() = bad;
    s.mutable_profile_summary()->mutable_params()->mutable_eval()->set_corpus("tinyshakespeare");
    s.mutable_profile_summary()->mutable_params()->mutable_eval()->set_chunk_length(128);
    s.mutable_profile_summary()->mutable_params()->mutable_sinks()->set_window(64);
    out.push_back(s);
  }
  return out;
}

TEST(ProfileRenderTest, TableHasThePapersColumnsAndTheFailedRow) {
  const std::string text = RenderProfileResults(TwoRows(true));
  EXPECT_THAT(text, HasSubstr("3.326"));
  EXPECT_THAT(text, HasSubstr("46.00%"));
  EXPECT_THAT(text, HasSubstr("193"));
  EXPECT_THAT(text, HasSubstr("2,4"));
  EXPECT_THAT(text, HasSubstr("11/24"));
  EXPECT_THAT(text, HasSubstr("gone: NOT_FOUND: model gone is not in the catalog"));
  EXPECT_THAT(text, HasSubstr("corpus tinyshakespeare, chunks of 128 tokens"));
  EXPECT_THAT(RenderProfileRowLine(TwoRows(false)[0].profile_row()),
              HasSubstr("step-up 2 (layer 0 mlp) +1"));
}

TEST(ProfileRenderTest, CsvHasOneFieldPerHeaderColumnAndQuotes) {
  const std::string csv = RenderProfileCsv(TwoRows(false));
  std::vector<std::string> lines = absl::StrSplit(csv, '\n', absl::SkipEmpty());
  ASSERT_EQ(lines.size(), 3u);
  auto fields = [](const std::string& line) {  // RFC 4180: commas outside quotes
    int n = 1;
    bool quoted = false;
    for (char c : line) {
      if (c == '"') quoted = !quoted;
      if (c == ',' && !quoted) ++n;
    }
    return n;
  };
  EXPECT_EQ(fields(lines[0]), 27);
  EXPECT_EQ(fields(lines[1]), 27);
  EXPECT_EQ(fields(lines[2]), 27);
  EXPECT_THAT(lines[1], HasSubstr("bytelm-demo,ok,3.3260000000000001,"));
  EXPECT_THAT(lines[1], HasSubstr(",2;4,12,251,0,"));
  EXPECT_THAT(lines[1], HasSubstr(",0.25;0.5,"));
  EXPECT_THAT(lines[2], HasSubstr("gone,failed,"));
  EXPECT_THAT(lines[2], HasSubstr("\"NOT_FOUND: model gone is not in the catalog, \"\"x\"\"\""));
}

}  // namespace profile_render

namespace train_render {

using ::testing::HasSubstr;
using ::testing::Not;
using sinkscope::client::RenderResults;
using sinkscope::client::RenderTrainStepLine;
namespace v1 = sinkscope::v1;

// The train job's lines and table (issue 26): a progress line per record as
// `sinkscope-run train` prints it, replayed records marked, the summary with
// the command that profiles the run's checkpoints.
TEST(RenderTrainTest, ProgressLinesCurveAndSummary) {
  v1::TrainStep live;
  live.set_step(50);
  live.set_steps(500);
  live.set_loss(2.55091);
  live.set_lr(0.00198);
  live.set_grad_norm(0.652);
  live.set_tokens_per_s(19002);
  live.set_elapsed_s(5.4);
  live.set_eta_s(49);
  live.set_heldout_loss(1.78181);
  live.set_checkpoint("tiny@50");
  EXPECT_EQ(RenderTrainStepLine(live),
            "step     50/500  loss 2.5509  lr 0.00198  |g| 0.652     19002 tok/s     5.4 s (ETA 49 s)"
            "  held-out 1.7818  -> tiny@50");
  v1::TrainStep replayed;
  replayed.set_step(10);
  replayed.set_steps(500);
  replayed.set_loss(3.0);
  replayed.set_lr(0.001);
  replayed.set_replayed(true);
  EXPECT_EQ(RenderTrainStepLine(replayed), "step     10/500  loss 3.0000  lr 0.001  (from the checkpoint)");

  std::vector<v1::ResultRecord> records(3);
  *records[0].mutable_train_step() = replayed;
  *records[1].mutable_train_step() = live;
  v1::TrainSummary* s = records[2].mutable_train_summary();
  s->set_run_name("tiny");
  s->set_step(500);
  s->set_resumed_from_step(10);
  s->set_final_loss(1.7689);
  s->set_corpus("tinyshakespeare");
  s->add_checkpoints("tiny@250");
  s->add_checkpoints("tiny@500");
  s->set_n_params(862592);
  const std::string text = RenderResults(records);
  EXPECT_THAT(text, HasSubstr("Training curve"));
  EXPECT_THAT(text, HasSubstr("tiny@50"));
  EXPECT_THAT(text, HasSubstr("Run tiny: 500 updates (resumed from step 10), 862592 parameters"));
  EXPECT_THAT(text, HasSubstr("Checkpoints:       tiny@250, tiny@500"));
  EXPECT_THAT(text, HasSubstr("sinkscope profile --model tiny@250 --corpus tinyshakespeare --compare 'tiny@*'"));
  EXPECT_THAT(text, Not(HasSubstr("cannot show")));
}

}  // namespace train_render
