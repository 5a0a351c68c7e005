#include "common/train_recipe.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace sinkscope {
namespace {

absl::Status Bad(const std::string& prefix, const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(prefix, field, " ", what));
}

}  // namespace

absl::Status CheckTrainRecipeFields(const TrainRecipe& r, const ModelConfig& c,
                                    const std::string& prefix) {
  auto finite = [](double x) { return std::isfinite(x); };
  if (r.steps <= 0) return Bad(prefix, "steps", absl::StrCat("must be positive, got ", r.steps));
  if (r.batch_size <= 0) return Bad(prefix, "batch_size", absl::StrCat("must be positive, got ", r.batch_size));
  if (r.seq_len <= 0) return Bad(prefix, "seq_len", absl::StrCat("must be positive, got ", r.seq_len));
  if (r.seq_len > c.n_ctx) {
    return Bad(prefix, "seq_len", absl::StrCat("= ", r.seq_len, " exceeds the model's context n_ctx = ", c.n_ctx));
  }
  if (!finite(r.lr) || r.lr <= 0) return Bad(prefix, "lr", absl::StrCat("must be positive and finite, got ", r.lr));
  if (!finite(r.min_lr_ratio) || r.min_lr_ratio < 0 || r.min_lr_ratio > 1) {
    return Bad(prefix, "min_lr_ratio", absl::StrCat("must be in [0, 1], got ", r.min_lr_ratio));
  }
  if (r.warmup_steps < 0 || r.warmup_steps > r.steps) {
    return Bad(prefix, "warmup_steps", absl::StrCat("must be in [0, steps = ", r.steps, "], got ", r.warmup_steps));
  }
  if (!finite(r.beta1) || r.beta1 < 0 || r.beta1 >= 1) return Bad(prefix, "beta1", absl::StrCat("must be in [0, 1), got ", r.beta1));
  if (!finite(r.beta2) || r.beta2 < 0 || r.beta2 >= 1) return Bad(prefix, "beta2", absl::StrCat("must be in [0, 1), got ", r.beta2));
  if (!finite(r.eps) || r.eps <= 0) return Bad(prefix, "eps", absl::StrCat("must be positive, got ", r.eps));
  if (!finite(r.weight_decay) || r.weight_decay < 0) {
    return Bad(prefix, "weight_decay", absl::StrCat("must be >= 0, got ", r.weight_decay));
  }
  if (!finite(r.grad_clip) || r.grad_clip < 0) return Bad(prefix, "grad_clip", absl::StrCat("must be >= 0 (0 = off), got ", r.grad_clip));
  if (!finite(r.init_std) || r.init_std <= 0) return Bad(prefix, "init_std", absl::StrCat("must be positive, got ", r.init_std));
  const int64_t hi = r.loss_pos_max < 0 ? r.seq_len - 1 : r.loss_pos_max;
  if (r.loss_pos_min < 0 || r.loss_pos_min > hi || hi >= r.seq_len) {
    return Bad(prefix, "loss_pos_min/loss_pos_max",
               absl::StrCat("must satisfy 0 <= min <= max < seq_len = ", r.seq_len, ", got [",
                            r.loss_pos_min, ", ", r.loss_pos_max, "]"));
  }
  if (!finite(r.heldout_fraction) || r.heldout_fraction < 0 || r.heldout_fraction > 0.5) {
    return Bad(prefix, "heldout_fraction", absl::StrCat("must be in [0, 0.5], got ", r.heldout_fraction));
  }
  if (r.bos_id >= c.d_vocab) {
    return Bad(prefix, "bos_id", absl::StrCat("= ", r.bos_id, " is outside the vocabulary [0, ", c.d_vocab, ")"));
  }
  if (r.eval_every < 0) return Bad(prefix, "eval_every", absl::StrCat("must be >= 0, got ", r.eval_every));
  if (r.eval_sequences <= 0) return Bad(prefix, "eval_sequences", absl::StrCat("must be positive, got ", r.eval_sequences));
  if (r.checkpoint_every < 0) return Bad(prefix, "checkpoint_every", absl::StrCat("must be >= 0, got ", r.checkpoint_every));
  if (!finite(r.profile_abs_threshold) || r.profile_abs_threshold < 0 ||
      !finite(r.profile_rel_threshold) || r.profile_rel_threshold < 0) {
    return Bad(prefix, "profile_abs_threshold/profile_rel_threshold", "must be finite and >= 0");
  }
  for (const std::string& n : r.no_weight_decay) {
    if (n.empty()) return Bad(prefix, "no_weight_decay", "holds an empty name (it would match every tensor)");
  }
  if (r.precision != "float32" && r.precision != "bfloat16") {
    return Bad(prefix, "precision", absl::StrCat("must be float32 or bfloat16 (mixed), got '", r.precision, "'"));
  }
  if (r.profile_every < 0) return Bad(prefix, "profile_every", absl::StrCat("must be >= 0, got ", r.profile_every));
  if (r.profile_sequences <= 0) {
    return Bad(prefix, "profile_sequences", absl::StrCat("must be positive, got ", r.profile_sequences));
  }
  if (r.seq_len < 2 && r.profile_every > 0) return Bad(prefix, "seq_len", "must be >= 2 to profile");
  return absl::OkStatus();
}

}  // namespace sinkscope
