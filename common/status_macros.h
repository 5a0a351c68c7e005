// Status helpers shared by every layer (tensorstore-style RETURN_IF_ERROR,
// ASSIGN_OR_RETURN, Annotate); no libtorch.
#pragma once

#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

#define SINKSCOPE_CONCAT_INNER_(a, b) a##b
#define SINKSCOPE_CONCAT_(a, b) SINKSCOPE_CONCAT_INNER_(a, b)

/// Returns from the enclosing function if `expr` (an absl::Status) is not OK.
#define RETURN_IF_ERROR(expr)                  \
  do {                                         \
    ::absl::Status _st = (expr);               \
    if (!_st.ok()) return _st;                 \
  } while (0)

/// `ASSIGN_OR_RETURN(auto x, StatusOrExpr())`.
#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL_(SINKSCOPE_CONCAT_(_statusor_, __LINE__), lhs, expr)
#define ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                           \
  if (!tmp.ok()) return std::move(tmp).status(); \
  lhs = std::move(tmp).value()

namespace sinkscope {

/// Returns `status` with `prefix: ` prepended to its message (same code).
inline absl::Status Annotate(const absl::Status& status, const std::string& prefix) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(prefix, ": ", status.message()));
}

}  // namespace sinkscope
