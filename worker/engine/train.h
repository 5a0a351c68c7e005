// Training a decoder from the engine's own ModelConfig with libtorch autograd
// (issue 26): the forward pass is Model::Forward itself, run on parameters
// that require grad, so whatever is trained loads in every analysis job.
//
// The recipe, exactly (tests/engine/python/test_train.py re-implements it in
// PyTorch and compares losses):
//  - Init (fresh runs): every matrix and embedding ~ normal(0, init_std) drawn
//    from a CPU generator seeded with `seed`, in ExpectedTensors order; norm
//    gains 1 (stored as 1 - norm_gain_offset), biases 0, DynamicTanh alphas
//    dyt_alpha0 (transformers'
//    LlamaPreTrainedModel._init_weights with initializer_range = init_std).
//    `init_from` starts from a HF directory's weights instead.
//  - Data: a token stream; the last floor(n x heldout_fraction) tokens are the
//    held-out split, the rest the training split. A sequence needs
//    need = seq_len + 1 stream tokens, or seq_len when `bos_id` >= 0 (the
//    sequence is then BOS + seq_len stream tokens). Row b of step s starts at
//    offset SplitMix64(seed + (s x batch_size + b + 1) x 0x9E3779B97F4A7C15)
//    mod (n_train - need + 1) (integer arithmetic mod 2^64; SplitMix64 is
//    Steele et al.'s finaliser), so the data order is a function of the seed
//    and the step alone and a resumed run reads the same batches.
//    inputs = sequence[0, seq_len), targets = sequence[1, seq_len].
//  - Loss: mean cross-entropy (nats) over rows and the input positions p in
//    [loss_pos_min, loss_pos_max] (the logit at p predicts token p+1).
//  - Schedule: lr(s) = lr (s+1) / warmup_steps for s < warmup_steps, else
//    cosine from lr to lr x min_lr_ratio: lr_min + (lr - lr_min)(1 + cos(pi x
//    (s - warmup) / max(1, steps - warmup))) / 2, s = 0-based update index.
//  - Gradient clipping: torch.nn.utils.clip_grad_norm_ (global L2 norm over
//    every parameter's gradient, scaled by min(1, max / (norm + 1e-6))).
//  - AdamW: torch.optim.AdamW's single-tensor update (decoupled weight decay
//    p *= 1 - lr wd; bias-corrected moments); weight decay only on tensors of
//    rank >= 2 (linear weights, embeddings, lm_head) whose name contains none
//    of `no_weight_decay`, none on norm gains and biases. Float32 parameters, gradients and moments.
//  - Precision "bfloat16": the forward and the loss run under
//    torch.autocast(dtype=bfloat16) semantics (at::autocast: matmuls in
//    bfloat16, norms and the residual stream as the model computes them in
//    float32), the backward outside it; the rest as above, in float32.
//  - Checkpoints: OUT/step-N/ holds config.json + model.safetensors (a HF
//    directory: llama for pre/sandwich norm, the latter marked with
//    `sinkscope_norm_placement`, which transformers ignores: it would run such a
//    checkpoint as pre-norm; olmo2 for post-norm + full-width QK-norm; qwen3
//    for per-head QK-norm; gemma2 for Gemma 2's own sandwich), optimizer.safetensors (`exp_avg.NAME`,
//    `exp_avg_sq.NAME`, float32) and trainer_state.json (step, recipe, losses).
//    Resuming from one continues bitwise (CPU, float32, same thread count).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <c10/core/Device.h>

#include "absl/status/statusor.h"
#include "common/train_recipe.h"
#include "worker/engine/config.h"
#include "worker/engine/profile.h"

namespace sinkscope {


/// Checks a recipe against a model config and a stream of `stream_tokens`
/// tokens. Errors: InvalidArgument naming the field and the allowed range
/// (non-positive steps/batch/seq_len, seq_len over n_ctx, lr, betas, eps out of
/// range, warmup over steps, an empty or inverted loss range, bos_id outside
/// the vocabulary, a training split shorter than one sequence, a held-out
/// split shorter than one sequence while eval_every > 0).
absl::Status ValidateTrainRecipe(const TrainRecipe& recipe, const ModelConfig& config,
                                 int64_t stream_tokens);

/// Parses a recipe from a JSON object whose keys are TrainRecipe's field names.
/// `source` names it in messages. Errors: InvalidArgument for an unknown key
/// (named, with the known ones) or a value of the wrong type.
absl::StatusOr<TrainRecipe> ParseTrainRecipe(const std::string& json_text, const std::string& source);
/// The recipe as a JSON object (the inverse of ParseTrainRecipe).
std::string TrainRecipeJson(const TrainRecipe& recipe);

/// Learning rate of 0-based update `step` (file comment), as a double.
double LearningRateAt(const TrainRecipe& recipe, int64_t step);

/// Start offset in the training split of row `row` of update `step`
/// (file comment); `n_starts` = n_train - need + 1 > 0.
uint64_t SequenceOffset(uint64_t seed, int64_t step, int64_t batch_size, int64_t row,
                        uint64_t n_starts);

/// The checkpoint with the largest N among `out_dir`/step-N/ that hold a
/// trainer_state.json (a checkpoint is renamed into place only when complete,
/// so after a kill -9 this is the last one written). Errors: NotFound naming
/// out_dir when there is none.
absl::StatusOr<std::string> LatestCheckpoint(const std::string& out_dir);

/// One update's record.
struct TrainProgress {
  int64_t step = 0;        ///< updates done (1-based: the update just made)
  int64_t steps = 0;       ///< updates in the run
  double loss = 0;         ///< training loss of this update's batch (before the update), nats
  double lr = 0;           ///< learning rate used
  double grad_norm = 0;    ///< global gradient L2 norm before clipping
  double tokens_per_s = 0; ///< input tokens / wall second of updates (evaluation and checkpoints
                           ///< excluded) since this process started or resumed the run
  double elapsed_s = 0;    ///< wall seconds since this process started the run
  /// Set on evaluation updates: mean NLL (nats) over every position of the first
  /// eval_sequences consecutive windows of the held-out split (same windows each time).
  std::optional<double> heldout_loss;
  std::string checkpoint;  ///< set when OUT/step-N was written: its path
  /// Set on profiled checkpoints (TrainRecipe::profile_every): the weights of
  /// that checkpoint profiled on the held-out split with ProfileParams' defaults
  /// (chunks of seq_len, sink window 64, epsilon 0.3, scan abs 100 / rel 1000).
  std::optional<ProfileResult> profile;
};

/// What to train and where.
struct TrainJob {
  ModelConfig config;         ///< architecture of a fresh run (ignored with init_from / resume_from)
  std::string init_from;      ///< HF directory: start from its weights (fresh optimiser, step 0)
  std::string resume_from;    ///< OUT/step-N of an earlier run: weights, optimiser, step
  TrainRecipe recipe;
  std::string out_dir;        ///< checkpoints go to out_dir/step-N/
  c10::Device device{c10::kCPU};
  const std::atomic<bool>* cancel = nullptr;  ///< checked between updates
};

/// Result of a finished (or cancelled) run.
struct TrainSummary {
  int64_t start_step = 0;      ///< 0, or the resumed checkpoint's step
  int64_t step = 0;            ///< updates done
  std::vector<double> losses;  ///< training loss of updates start_step+1 .. step
  std::string last_checkpoint;
  int64_t n_params = 0;
};

/// Trains on `stream` (token ids in [0, d_vocab)). Calls `on_progress` after
/// every update (a non-OK status stops the run and is returned). Writes
/// checkpoints into out_dir (created). Errors: InvalidArgument for a bad
/// recipe/config (before any work; see ValidateTrainRecipe) or a config the
/// checkpoint writer cannot express as config.json; NotFound / InvalidArgument
/// for an unreadable init_from / resume_from, or a resume_from whose recipe
/// differs (names the field); Cancelled when `cancel` is set (after the
/// current update; no checkpoint is written); Internal for libtorch errors.
absl::StatusOr<TrainSummary> Train(const TrainJob& job, const std::vector<int64_t>& stream,
                                   const std::function<absl::Status(const TrainProgress&)>& on_progress);

}  // namespace sinkscope
