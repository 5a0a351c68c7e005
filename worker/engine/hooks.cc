#include "worker/engine/hooks.h"

#include "absl/strings/str_cat.h"

namespace sinkscope {

void HookRegistry::AddProbe(const std::string& name, Probe probe) {
  probes_[name].push_back(std::move(probe));
}

void HookRegistry::AddIntervention(const std::string& name, Intervention fn) {
  interventions_[name].push_back(std::move(fn));
}

std::set<std::string> HookRegistry::Names() const {
  std::set<std::string> names;
  for (const auto& [name, _] : probes_) names.insert(name);
  for (const auto& [name, _] : interventions_) names.insert(name);
  return names;
}

at::Tensor HookRegistry::Run(const std::string& name, int64_t layer, at::Tensor t) const {
  if (auto it = interventions_.find(name); it != interventions_.end()) {
    for (const auto& fn : it->second) t = fn(name, layer, t);
  }
  if (auto it = probes_.find(name); it != probes_.end()) {
    for (const auto& probe : it->second) probe(name, layer, t);
  }
  return t;
}

std::string HookName(int64_t layer, const std::string& suffix) {
  return absl::StrCat("blocks.", layer, ".", suffix);
}

}  // namespace sinkscope
