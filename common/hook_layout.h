// Shapes of hook tensors, without libtorch: shared by the engine (the
// `activations` job) and the server (its size limit is checked before a job
// runs). Names are TransformerLens's (see hooks.h, model.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace sinkscope {

/// Default limit of an `activations` job's result (float32 bytes), checked by
/// the server before the job runs (text counted at one token per byte + BOS)
/// and by the worker after tokenization.
constexpr int64_t kDefaultMaxActivationsBytes = int64_t{64} << 20;

/// The sizes a hook's shape depends on (a ModelConfig subset, or a catalog
/// entry's probed shape on the server).
struct HookDims {
  int64_t n_layers = 0, d_model = 0, d_ffn = 0, d_vocab = 0;
  int64_t n_heads = 0, n_kv_heads = 0, d_head = 0;
};

/// Layout of one hook tensor of one sequence of T tokens (batch dim dropped).
struct HookLayout {
  /// kTokenChannel: [pos, C] (hook_resid_*, hook_*_out, ln*.hook_normalized,
  ///   mlp.hook_*, hook_embed, unembed.hook_out);
  /// kTokenHead: [pos, head, d_head] (attn.hook_q/k/v/rot_q/rot_k/z; k, v,
  ///   rot_k have n_kv_heads heads);
  /// kHeadQueryKey: [head, q_pos, k_pos] (attn.hook_attn_scores, attn.hook_pattern).
  enum class Kind { kTokenChannel, kTokenHead, kHeadQueryKey };
  Kind kind = Kind::kTokenChannel;
  int64_t layer = -1;      // -1 for hook_embed, ln_final, unembed
  int64_t channels = 0;    // C (kTokenChannel) or d_head (kTokenHead)
  int64_t heads = 0;       // kTokenHead, kHeadQueryKey
  std::string channel_dim;  // "d_model", "d_ffn", "d_vocab" or "d_head"
};

/// The per-layer hook suffixes (TransformerLens names, "blocks.{l}." + suffix)
/// in the order the forward pass reaches them: the one list of hook names.
const std::vector<std::string>& LayerHookSuffixes();

/// Layout of `name`. InvalidArgument naming the hook when it is not a hook
/// name (unknown suffix, layer out of range 0..n_layers-1).
absl::StatusOr<HookLayout> HookLayoutOf(const std::string& name, const HookDims& dims);

/// Slices of an `activations` request (index lists; empty = all). See
/// ActivationsRequest in proto/sinkscope/v1/mechanism.proto.
struct HookSlices {
  std::vector<int64_t> positions, channels, heads;
};

/// Checks the slice indices of one hook for a sequence of T tokens
/// (InvalidArgument naming the list, the index and the bound); `heads` do
/// not apply to [pos, C] hooks (ignored there).
absl::Status CheckSlices(const std::string& hook, const HookLayout& layout, int64_t T,
                         const HookSlices& slices);

/// Sliced shape (no batch dim) and dimension names for a sequence of T tokens.
std::vector<int64_t> SlicedShape(const HookLayout& layout, int64_t T, const HookSlices& slices);
std::vector<std::string> DimNames(const HookLayout& layout);

}  // namespace sinkscope
