// A training run's recipe and its checks, without libtorch: the engine's
// trainer (worker/engine/train.h) and the server's submission checks
// (server/train_validation.cc) validate the same fields the same way.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/model_config.h"

namespace sinkscope {

/// Optimiser, schedule, data and loss settings of a training run (worker/engine/train.h's file comment).
struct TrainRecipe {
  int64_t steps = 0;       ///< optimiser updates in total (a resumed run continues to it)
  int64_t batch_size = 0;  ///< sequences per update
  int64_t seq_len = 0;     ///< input tokens per sequence (<= n_ctx)
  uint64_t seed = 0;       ///< init and data order
  double lr = 1e-3;        ///< peak learning rate
  double min_lr_ratio = 0.1;  ///< the cosine ends at lr x min_lr_ratio
  int64_t warmup_steps = 0;   ///< linear warmup updates
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double weight_decay = 0.1;  ///< decoupled, on rank >= 2 tensors only (and see no_weight_decay)
  /// More parameters without weight decay: a tensor whose canonical name
  /// contains any of these substrings (e.g. "embed_tokens", "lm_head") gets
  /// none, as a second torch.optim.AdamW parameter group would.
  std::vector<std::string> no_weight_decay;
  double grad_clip = 1.0;     ///< max global gradient L2 norm; 0 = off
  double init_std = 0.02;     ///< std of the normal init of matrices and embeddings
  int64_t loss_pos_min = 0;   ///< first input position with loss
  int64_t loss_pos_max = -1;  ///< last input position with loss; -1 = seq_len - 1
  double heldout_fraction = 0.05;  ///< tail of the stream held out, in [0, 0.5]
  int64_t bos_id = -1;        ///< >= 0: every sequence starts with this id
  int64_t eval_every = 0;     ///< held-out loss every N updates (and at the end); 0 = off
  int64_t eval_sequences = 16;  ///< held-out sequences per evaluation (consecutive windows)
  int64_t checkpoint_every = 0;  ///< OUT/step-N every N updates (and at the end); 0 = end only
  /// Profile (profile.h: the paper's row) on the held-out split at every N-th
  /// checkpoint (and the last); 0 = off. The held-out profile stream is
  /// `profile_sequences` consecutive chunks of seq_len tokens, each BOS + the
  /// next seq_len - 1 held-out tokens when bos_id >= 0 (as training reads them).
  int64_t profile_every = 0;
  int64_t profile_sequences = 16;  ///< chunks of the held-out profile (fewer when the split is short)
  /// The profile's massive-activation thresholds (ScanParams: |h| > abs and
  /// |h| > rel x the block's median |h|); small models need lower ones than the paper's.
  double profile_abs_threshold = 100.0;
  double profile_rel_threshold = 1000.0;
  /// "float32", or "bfloat16": mixed precision as torch.autocast(dtype=bfloat16)
  /// around the forward and the loss (matmuls in bfloat16; parameters,
  /// gradients, optimiser state, evaluation and profiles in float32).
  std::string precision = "float32";
};

/// Checks the recipe's own fields against a model config (not the corpus):
/// InvalidArgument "<prefix><field> <what>" naming the field and the allowed
/// range (non-positive steps/batch/seq_len, seq_len over n_ctx, lr, betas, eps
/// out of range, warmup over steps, an empty or inverted loss range, bos_id
/// outside the vocabulary, negative evaluation/checkpoint/profile settings, a
/// precision other than float32 / bfloat16).
absl::Status CheckTrainRecipeFields(const TrainRecipe& r, const ModelConfig& c,
                                    const std::string& prefix);

}  // namespace sinkscope
