#include "client/render_train.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/render.h"

namespace sinkscope {
namespace client {

bool IsTrainRecord(const v1::ResultRecord& record) {
  return record.has_train_step() || record.has_train_summary();
}

std::string RenderTrainStepLine(const v1::TrainStep& t) {
  std::string out = absl::StrFormat("step %6d/%d  loss %.4f  lr %.3g", t.step(), t.steps(), t.loss(), t.lr());
  if (t.replayed()) {
    absl::StrAppend(&out, "  (from the checkpoint)");
  } else {
    absl::StrAppend(&out, absl::StrFormat("  |g| %.3f  %8.0f tok/s  %6.1f s (ETA %.0f s)", t.grad_norm(),
                                          t.tokens_per_s(), t.elapsed_s(), t.eta_s()));
  }
  if (t.has_heldout_loss()) absl::StrAppend(&out, absl::StrFormat("  held-out %.4f", t.heldout_loss()));
  if (!t.checkpoint().empty()) absl::StrAppend(&out, "  -> ", t.checkpoint());
  return out;
}

std::string RenderTrainResults(const std::vector<v1::ResultRecord>& records) {
  std::vector<std::vector<std::string>> rows = {{"step", "loss", "lr", "|g|", "held-out", "checkpoint"}};
  const v1::TrainSummary* summary = nullptr;
  for (const v1::ResultRecord& r : records) {
    if (r.has_train_summary()) summary = &r.train_summary();
    if (!r.has_train_step()) continue;
    const v1::TrainStep& t = r.train_step();
    rows.push_back({absl::StrCat(t.step()), absl::StrFormat("%.4f", t.loss()), absl::StrFormat("%.3g", t.lr()),
                    t.replayed() ? "-" : absl::StrFormat("%.3f", t.grad_norm()),
                    t.has_heldout_loss() ? absl::StrFormat("%.4f", t.heldout_loss()) : "",
                    t.checkpoint()});
  }
  std::string out;
  if (rows.size() > 1) {
    absl::StrAppend(&out, "Training curve (loss: nats per token of the update's batch)\n\n",
                    FormatTable(rows, {0, 1, 2, 3, 4}));
  }
  if (summary != nullptr) {
    const v1::TrainSummary& s = *summary;
    absl::StrAppend(&out, out.empty() ? "" : "\n", "Run ", s.run_name(), ": ", s.step(), " updates",
                    s.resumed_from_step() > 0 ? absl::StrCat(" (resumed from step ", s.resumed_from_step(), ")") : "",
                    ", ", s.n_params(), " parameters, corpus ", s.corpus(), "\n");
    absl::StrAppend(&out, absl::StrFormat("Final loss:        %.4f", s.final_loss()),
                    s.has_final_heldout_loss() ? absl::StrFormat(" (held-out %.4f)", s.final_heldout_loss()) : "",
                    "\n");
    absl::StrAppend(&out, "Checkpoints:       ", s.checkpoints().empty() ? "none" : absl::StrJoin(s.checkpoints(), ", "),
                    "\n");
    absl::StrAppend(&out, absl::StrFormat("Throughput:        %.0f tokens/s (%d tokens this attempt)\n",
                                          s.tokens_per_s(), s.tokens()));
    absl::StrAppend(&out, "Recipe:            ", s.recipe_json(), "\n");
    absl::StrAppend(&out, "Provenance:        device ", s.device(), ", code ", s.code_version(), "\n");
    if (!s.checkpoints().empty()) {
      absl::StrAppend(&out, "Profile the checkpoints: sinkscope profile --model ", s.checkpoints(0),
                      " --corpus ", s.corpus(), " --compare '", s.run_name(), "@*'\n");
    }
  }
  return out;
}

}  // namespace client
}  // namespace sinkscope
