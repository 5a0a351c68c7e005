// Hook points: TransformerLens names for every intermediate tensor.
//
// A probe registered on a name receives the tensor when the forward pass
// produces it (read-only; reduce it and keep nothing). An intervention
// registered on a name returns a replacement of the same shape and dtype.
// Names the model does not have are refused by Model::Forward with the name.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "common/hook_layout.h"  // LayerHookSuffixes: the one list of hook names

namespace sinkscope {

/// Probe: called with the tensor at a hook point (shapes in hook_layout.h).
/// `layer` is the layer index of the hook (-1 for hook_embed, ln_final, unembed).
using Probe = std::function<void(const std::string& name, int64_t layer, const at::Tensor& t)>;
/// Intervention: returns the tensor to use instead of `t` (same shape).
using Intervention =
    std::function<at::Tensor(const std::string& name, int64_t layer, const at::Tensor& t)>;

/// Probes and interventions keyed by hook name. Several may share a name;
/// interventions run in registration order, then probes see the result.
class HookRegistry {
 public:
  void AddProbe(const std::string& name, Probe probe);
  void AddIntervention(const std::string& name, Intervention fn);
  bool Has(const std::string& name) const {
    return probes_.count(name) > 0 || interventions_.count(name) > 0;
  }
  bool Empty() const { return probes_.empty() && interventions_.empty(); }
  /// Every registered name (for validation against the model's hook names).
  std::set<std::string> Names() const;
  /// Runs interventions then probes on `t`; returns the (possibly replaced) tensor.
  at::Tensor Run(const std::string& name, int64_t layer, at::Tensor t) const;

 private:
  std::map<std::string, std::vector<Probe>> probes_;
  std::map<std::string, std::vector<Intervention>> interventions_;
};

/// Hook name helpers: `HookName(3, "hook_resid_post")` = "blocks.3.hook_resid_post".
std::string HookName(int64_t layer, const std::string& suffix);

}  // namespace sinkscope
