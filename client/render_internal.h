// Small text helpers shared by the client's renderers (render*.cc). Not
// part of the client's interface (render.h).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace sinkscope {
namespace client {
namespace internal {

/// `what` with its count, plural-aware: "1 sequence", "3 sequences".
inline std::string Count(int64_t n, const std::string& what) {
  return absl::StrCat(n, " ", what, n == 1 ? "" : "s");
}

/// Joins at most `max` items and says how many more there were.
inline std::string JoinCapped(const std::vector<std::string>& items, size_t max,
                              const std::string& sep = ", ") {
  if (items.empty()) return "none";
  if (items.size() <= max) return absl::StrJoin(items, sep);
  std::vector<std::string> head(items.begin(), items.begin() + max);
  return absl::StrCat(absl::StrJoin(head, sep), sep, "... (", items.size() - max, " more)");
}

}  // namespace internal
}  // namespace client
}  // namespace sinkscope
