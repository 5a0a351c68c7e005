// Grouping token sequences into equal-length batches for the analyses.
#pragma once

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

namespace sinkscope {

/// Groups sequence indices by length into batches of at most `max_tokens`
/// tokens (at least one sequence each). Causal attention makes right padding
/// unnecessary: equal lengths keep every statistic exact.
std::vector<std::vector<int64_t>> BatchByLength(const std::vector<std::vector<int64_t>>& seqs,
                                                size_t max_tokens = 16384);

/// The [batch, pos] int64 tensor of the sequences `rows` (all of equal length).
at::Tensor BatchTokens(const std::vector<std::vector<int64_t>>& seqs,
                       const std::vector<int64_t>& rows);

}  // namespace sinkscope
