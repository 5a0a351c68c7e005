#include "common/hook_layout.h"

#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"

namespace sinkscope {

namespace {

/// What a hook's shape is made of; the one list of hook names (TransformerLens'
/// names) the engine's forward, the server's validation and the clients share.
enum class Dim { kModel, kFfn, kVocab, kQueryHeads, kKvHeads, kQueryKey };
struct HookEntry {
  const char* name;  // suffix after "blocks.{l}." for layer hooks
  Dim dim;
};

/// Per layer, in the order the forward pass reaches them.
constexpr HookEntry kLayerHooks[] = {
    {"hook_resid_pre", Dim::kModel},           // [batch, pos, d_model]
    {"ln1.hook_normalized", Dim::kModel},      // [batch, pos, d_model]
    {"attn.hook_q", Dim::kQueryHeads},         // [batch, pos, head, d_head]
    {"attn.hook_k", Dim::kKvHeads},            // [batch, pos, kv_head, d_head]
    {"attn.hook_v", Dim::kKvHeads},            // [batch, pos, kv_head, d_head]
    {"attn.hook_rot_q", Dim::kQueryHeads},     // [batch, pos, head, d_head]
    {"attn.hook_rot_k", Dim::kKvHeads},        // [batch, pos, kv_head, d_head]
    {"attn.hook_attn_scores", Dim::kQueryKey}, // [batch, head, q_pos, k_pos]
    {"attn.hook_pattern", Dim::kQueryKey},     // [batch, head, q_pos, k_pos]
    {"attn.hook_z", Dim::kQueryHeads},         // [batch, pos, head, d_head]
    {"hook_attn_out", Dim::kModel},            // [batch, pos, d_model]
    {"hook_resid_mid", Dim::kModel},           // [batch, pos, d_model]
    {"ln2.hook_normalized", Dim::kModel},      // [batch, pos, d_model]
    {"mlp.hook_pre", Dim::kFfn},               // [batch, pos, d_ffn]
    {"mlp.hook_pre_linear", Dim::kFfn},        // [batch, pos, d_ffn]
    {"mlp.hook_post", Dim::kFfn},              // [batch, pos, d_ffn]
    {"hook_mlp_out", Dim::kModel},             // [batch, pos, d_model]
    {"hook_resid_post", Dim::kModel},          // [batch, pos, d_model]
};

/// Outside the blocks.
constexpr HookEntry kModelHooks[] = {
    {"hook_embed", Dim::kModel},
    {"ln_final.hook_normalized", Dim::kModel},
    {"unembed.hook_out", Dim::kVocab},
};

HookLayout LayoutOf(Dim dim, const HookDims& d) {
  HookLayout out;
  using K = HookLayout::Kind;
  switch (dim) {
    case Dim::kModel:
      out.channels = d.d_model;
      out.channel_dim = "d_model";
      break;
    case Dim::kFfn:
      out.channels = d.d_ffn;
      out.channel_dim = "d_ffn";
      break;
    case Dim::kVocab:
      out.channels = d.d_vocab;
      out.channel_dim = "d_vocab";
      break;
    case Dim::kQueryHeads:
    case Dim::kKvHeads:
      out.kind = K::kTokenHead;
      out.heads = dim == Dim::kKvHeads && d.n_kv_heads > 0 ? d.n_kv_heads : d.n_heads;
      out.channels = d.d_head;
      out.channel_dim = "d_head";
      break;
    case Dim::kQueryKey:
      out.kind = K::kHeadQueryKey;
      out.heads = d.n_heads;
      out.channel_dim = "k_pos";
      break;
  }
  return out;
}

}  // namespace

const std::vector<std::string>& LayerHookSuffixes() {
  static const std::vector<std::string> kSuffixes = [] {
    std::vector<std::string> out;
    for (const HookEntry& h : kLayerHooks) out.emplace_back(h.name);
    return out;
  }();
  return kSuffixes;
}

absl::StatusOr<HookLayout> HookLayoutOf(const std::string& name, const HookDims& d) {
  for (const HookEntry& h : kModelHooks) {
    if (name == h.name) return LayoutOf(h.dim, d);
  }
  const std::string unknown = absl::StrCat(
      "hook \"", name, "\" does not exist (names: hook_embed, blocks.{l}.<suffix> for l in 0..",
      d.n_layers - 1, ", ln_final.hook_normalized, unembed.hook_out)");
  if (!absl::StartsWith(name, "blocks.")) return absl::InvalidArgumentError(unknown);
  const size_t dot = name.find('.', 7);
  int64_t layer = -1;
  if (dot == std::string::npos || !absl::SimpleAtoi(name.substr(7, dot - 7), &layer)) {
    return absl::InvalidArgumentError(unknown);
  }
  if (layer < 0 || layer >= d.n_layers) {
    return absl::InvalidArgumentError(absl::StrCat("hook \"", name, "\": layer ", layer,
                                                   " does not exist (layers 0..", d.n_layers - 1,
                                                   ")"));
  }
  const std::string suffix = name.substr(dot + 1);
  for (const HookEntry& h : kLayerHooks) {
    if (suffix == h.name) {
      HookLayout out = LayoutOf(h.dim, d);
      out.layer = layer;
      return out;
    }
  }
  return absl::InvalidArgumentError(unknown);
}

absl::Status CheckSlices(const std::string& hook, const HookLayout& layout, int64_t T,
                         const HookSlices& s) {
  auto check = [&](const char* what, const std::vector<int64_t>& idx, int64_t bound,
                   const std::string& dim) -> absl::Status {
    for (int64_t i : idx) {
      if (i < 0 || i >= bound) {
        return absl::InvalidArgumentError(absl::StrCat("activations.", what, ": index ", i,
                                                       " is out of range for hook ", hook, " (",
                                                       dim, " has ", bound, ")"));
      }
    }
    return absl::OkStatus();
  };
  if (absl::Status st = check("positions", s.positions, T, "pos"); !st.ok()) return st;
  const int64_t ch = layout.kind == HookLayout::Kind::kHeadQueryKey ? T : layout.channels;
  if (absl::Status st = check("channels", s.channels, ch, layout.channel_dim); !st.ok()) return st;
  if (layout.kind == HookLayout::Kind::kTokenChannel) return absl::OkStatus();  // heads unused
  return check("heads", s.heads, layout.heads, "head");
}

std::vector<int64_t> SlicedShape(const HookLayout& layout, int64_t T, const HookSlices& s) {
  auto n = [](const std::vector<int64_t>& v, int64_t all) {
    return v.empty() ? all : static_cast<int64_t>(v.size());
  };
  const int64_t P = n(s.positions, T);
  switch (layout.kind) {
    case HookLayout::Kind::kTokenChannel:
      return {P, n(s.channels, layout.channels)};
    case HookLayout::Kind::kTokenHead:
      return {P, n(s.heads, layout.heads), n(s.channels, layout.channels)};
    case HookLayout::Kind::kHeadQueryKey:
      return {n(s.heads, layout.heads), P, n(s.channels, T)};
  }
  return {};
}

std::vector<std::string> DimNames(const HookLayout& layout) {
  switch (layout.kind) {
    case HookLayout::Kind::kTokenChannel:
      return {"pos", layout.channel_dim};
    case HookLayout::Kind::kTokenHead:
      return {"pos", "head", "d_head"};
    case HookLayout::Kind::kHeadQueryKey:
      return {"head", "q_pos", "k_pos"};
  }
  return {};
}

}  // namespace sinkscope
