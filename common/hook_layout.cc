#include "common/hook_layout.h"

#include <map>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"

namespace sinkscope {

absl::StatusOr<HookLayout> HookLayoutOf(const std::string& name, const HookDims& d) {
  HookLayout out;
  using K = HookLayout::Kind;
  auto channel = [&](int64_t c, const char* dim) {
    out.kind = K::kTokenChannel;
    out.channels = c;
    out.channel_dim = dim;
    return out;
  };
  if (name == "hook_embed") return channel(d.d_model, "d_model");
  if (name == "ln_final.hook_normalized") return channel(d.d_model, "d_model");
  if (name == "unembed.hook_out") return channel(d.d_vocab, "d_vocab");
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
  out.layer = layer;
  const std::string suffix = name.substr(dot + 1);
  static const std::map<std::string, int> kTokenChannel = {
      {"hook_resid_pre", 0}, {"ln1.hook_normalized", 0}, {"hook_attn_out", 0},
      {"hook_resid_mid", 0}, {"ln2.hook_normalized", 0}, {"hook_mlp_out", 0},
      {"hook_resid_post", 0}, {"mlp.hook_pre", 1}, {"mlp.hook_pre_linear", 1},
      {"mlp.hook_post", 1}};
  if (auto it = kTokenChannel.find(suffix); it != kTokenChannel.end()) {
    return it->second == 0 ? channel(d.d_model, "d_model") : channel(d.d_ffn, "d_ffn");
  }
  if (suffix == "attn.hook_q" || suffix == "attn.hook_rot_q" || suffix == "attn.hook_z" ||
      suffix == "attn.hook_k" || suffix == "attn.hook_rot_k" || suffix == "attn.hook_v") {
    const bool kv = suffix == "attn.hook_k" || suffix == "attn.hook_rot_k" || suffix == "attn.hook_v";
    out.kind = K::kTokenHead;
    out.heads = kv ? (d.n_kv_heads > 0 ? d.n_kv_heads : d.n_heads) : d.n_heads;
    out.channels = d.d_head;
    out.channel_dim = "d_head";
    return out;
  }
  if (suffix == "attn.hook_attn_scores" || suffix == "attn.hook_pattern") {
    out.kind = K::kHeadQueryKey;
    out.heads = d.n_heads;
    out.channel_dim = "k_pos";
    return out;
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
