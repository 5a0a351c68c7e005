#include "client/render_profile.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "client/render.h"
#include "client/render_internal.h"

namespace sinkscope {
namespace client {
namespace {

/// The rows: the summary's when there is one, else the streamed ones.
std::vector<v1::ProfileRow> Rows(const std::vector<v1::ResultRecord>& records,
                                 const v1::ProfileSummary** summary) {
  std::vector<v1::ProfileRow> rows;
  *summary = nullptr;
  for (const v1::ResultRecord& r : records) {
    if (r.has_profile_summary()) *summary = &r.profile_summary();
    if (r.has_profile_row()) rows.push_back(r.profile_row());
  }
  if (*summary != nullptr) {
    rows.assign((*summary)->rows().begin(), (*summary)->rows().end());
  }
  return rows;
}

std::string Blocks(const google::protobuf::RepeatedPtrField<v1::BlockRef>& blocks,
                   const std::string& sep) {
  std::vector<std::string> out;
  for (const v1::BlockRef& b : blocks) out.push_back(absl::StrCat(b.block()));
  return absl::StrJoin(out, sep);
}

std::string Percent(double ratio) { return absl::StrFormat("%.2f%%", 100.0 * ratio); }

std::string Spike(float v) { return absl::StrFormat(v >= 100 ? "%.0f" : "%.2f", v); }

/// A CSV field: quoted when it holds a comma, a quote or a line break.
std::string CsvField(const std::string& s) {
  if (s.find_first_of(",\"\r\n") == std::string::npos) return s;
  return absl::StrCat("\"", absl::StrReplaceAll(s, {{"\"", "\"\""}}), "\"");
}

}  // namespace

bool IsProfileRecord(const v1::ResultRecord& record) {
  return record.has_profile_row() || record.has_profile_summary();
}

std::string RenderProfileRowLine(const v1::ProfileRow& row) {
  if (row.has_failure()) {
    return absl::StrCat("profile ", row.model(), ": failed (", StatusCodeName(row.failure().code()),
                        "): ", row.failure().message());
  }
  std::string out = absl::StrFormat("profile %s: PPL %.4g, sink ratio %s, spike %s", row.model(),
                                    row.perplexity(), Percent(row.sink_ratio()), Spike(row.spike()));
  if (!row.step_up_blocks().empty()) {
    absl::StrAppend(&out, ", step-up ", BlockLabel(row.step_up_blocks(0)));
    if (row.step_up_blocks_size() > 1) absl::StrAppend(&out, " +", row.step_up_blocks_size() - 1);
  }
  return out;
}

std::string RenderProfileResults(const std::vector<v1::ResultRecord>& records) {
  const v1::ProfileSummary* summary = nullptr;
  const std::vector<v1::ProfileRow> rows = Rows(records, &summary);
  if (rows.empty()) return "";
  std::vector<std::vector<std::string>> table = {
      {"model", "PPL", "sink ratio", "spike", "step-up", "step-down", "spike ch", "spike pos",
       "sink heads", "top sink key", "dist sink/other"}};
  std::vector<std::string> failures;
  for (const v1::ProfileRow& r : rows) {
    if (r.has_failure()) {
      table.push_back({r.model(), "failed", "", "", "", "", "", "", "", "", ""});
      failures.push_back(absl::StrCat("  ", r.model(), ": ", StatusCodeName(r.failure().code()),
                                      ": ", r.failure().message()));
      continue;
    }
    std::vector<std::string> channels, positions;
    for (int32_t c : r.spike_channels()) channels.push_back(absl::StrCat(c));
    for (int32_t p : r.spike_positions()) positions.push_back(absl::StrCat(p));
    table.push_back({r.model(), absl::StrFormat("%.4g", r.perplexity()), Percent(r.sink_ratio()),
                     Spike(r.spike()), Blocks(r.step_up_blocks(), ","),
                     Blocks(r.step_down_blocks(), ","), internal::JoinCapped(channels, 4, ","),
                     internal::JoinCapped(positions, 4, ","),
                     absl::StrCat(r.n_sink_heads(), "/", r.n_heads()),
                     r.top_sink_key() >= 0 ? absl::StrCat(r.top_sink_key()) : "-",
                     absl::StrFormat("%.1f/%.1f", r.sink_heads_distance(), r.other_heads_distance())});
  }
  std::string out =
      "Profile (paper Tables 3-8): PPL; sink ratio = eq. 28 over each chunk's first T tokens;\n"
      "spike = per chunk max |h| over blocks, tokens and channels, mean over chunks;\n"
      "step-up / step-down = paper blocks 1..2L (odd attn, even mlp)\n\n";
  absl::StrAppend(&out, FormatTable(table, {1, 2, 3}));
  if (!failures.empty()) absl::StrAppend(&out, "\nfailed rows:\n", absl::StrJoin(failures, "\n"), "\n");
  if (summary != nullptr) {
    const v1::ProfileParamsUsed& p = summary->params();
    absl::StrAppend(
        &out, "\n",
        absl::StrFormat("corpus %s, chunks of %d tokens (%s), sink window T = %d, epsilon %.3g, "
                        "massive: |h| > %g and > %g x median\n",
                        p.eval().corpus().empty() ? "(the given sequences)" : p.eval().corpus(),
                        p.eval().chunk_length(),
                        p.eval().token_budget() < 0 ? "the whole stream"
                                                    : absl::StrCat("budget ", p.eval().token_budget()),
                        p.sinks().window(), p.sinks().epsilon(), p.thresholds().abs_threshold(),
                        p.thresholds().rel_threshold()));
    absl::StrAppend(&out, FormatProvenance(summary->provenance()), "\n");
  }
  return out;
}

std::string RenderProfileCsv(const std::vector<v1::ResultRecord>& records) {
  const v1::ProfileSummary* summary = nullptr;
  const std::vector<v1::ProfileRow> rows = Rows(records, &summary);
  std::string out =
      "model,status,perplexity,mean_loss,sink_ratio,gu_sink_ratio,spike,peak_abs,peak_block,"
      "step_up_blocks,step_down_blocks,spike_channels,spike_positions,n_spike_tokens,n_massive,"
      "n_sink_heads,n_heads,top_sink_key,sink_heads_distance,other_heads_distance,"
      "layer_sink_ratios,n_chunks,n_scored,dtype,device,code_version,error\n";
  for (const v1::ProfileRow& r : rows) {
    std::vector<std::string> f;
    f.push_back(CsvField(r.model()));
    if (r.has_failure()) {
      f.push_back("failed");
      for (int i = 0; i < 24; ++i) f.push_back("");
      f.push_back(CsvField(absl::StrCat(StatusCodeName(r.failure().code()), ": ",
                                        r.failure().message())));
    } else {
      f.push_back("ok");
      f.push_back(absl::StrFormat("%.17g", r.perplexity()));
      f.push_back(absl::StrFormat("%.17g", r.mean_loss()));
      f.push_back(absl::StrFormat("%.17g", r.sink_ratio()));
      f.push_back(absl::StrFormat("%.17g", r.gu_sink_ratio()));
      f.push_back(absl::StrFormat("%.9g", r.spike()));
      f.push_back(absl::StrFormat("%.9g", r.peak_abs()));
      f.push_back(absl::StrCat(r.peak_block().block()));
      f.push_back(Blocks(r.step_up_blocks(), ";"));
      f.push_back(Blocks(r.step_down_blocks(), ";"));
      f.push_back(absl::StrJoin(r.spike_channels(), ";"));
      f.push_back(absl::StrJoin(r.spike_positions(), ";"));
      f.push_back(absl::StrCat(r.n_spike_tokens()));
      f.push_back(absl::StrCat(r.n_massive()));
      f.push_back(absl::StrCat(r.n_sink_heads()));
      f.push_back(absl::StrCat(r.n_heads()));
      f.push_back(absl::StrCat(r.top_sink_key()));
      f.push_back(absl::StrFormat("%.17g", r.sink_heads_distance()));
      f.push_back(absl::StrFormat("%.17g", r.other_heads_distance()));
      std::vector<std::string> layers;
      for (double v : r.layer_sink_ratios()) layers.push_back(absl::StrFormat("%.17g", v));
      f.push_back(absl::StrJoin(layers, ";"));
      f.push_back(absl::StrCat(r.n_chunks()));
      f.push_back(absl::StrCat(r.n_scored()));
      f.push_back(CsvField(r.provenance().dtype()));
      f.push_back(CsvField(r.provenance().device()));
      f.push_back(CsvField(r.provenance().code_version()));
      f.push_back("");
    }
    absl::StrAppend(&out, absl::StrJoin(f, ","), "\n");
  }
  return out;
}

}  // namespace client
}  // namespace sinkscope
