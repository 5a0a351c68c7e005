#include "worker/engine/batching.h"

#include <ATen/ops/tensor.h>

#include <algorithm>
#include <map>

namespace sinkscope {

std::vector<std::vector<int64_t>> BatchByLength(const std::vector<std::vector<int64_t>>& seqs,
                                                size_t max_tokens) {
  std::map<size_t, std::vector<int64_t>> by_len;
  for (size_t s = 0; s < seqs.size(); ++s) by_len[seqs[s].size()].push_back(s);
  std::vector<std::vector<int64_t>> batches;
  for (auto& [len, idx] : by_len) {
    const size_t per_batch = std::max<size_t>(1, max_tokens / std::max<size_t>(1, len));
    for (size_t i = 0; i < idx.size(); i += per_batch) {
      batches.emplace_back(idx.begin() + i, idx.begin() + std::min(idx.size(), i + per_batch));
    }
  }
  return batches;
}

at::Tensor BatchTokens(const std::vector<std::vector<int64_t>>& seqs,
                       const std::vector<int64_t>& rows) {
  const int64_t T = static_cast<int64_t>(seqs[rows[0]].size());
  std::vector<int64_t> flat;
  flat.reserve(rows.size() * T);
  for (int64_t s : rows) flat.insert(flat.end(), seqs[s].begin(), seqs[s].end());
  return at::tensor(flat, at::TensorOptions().dtype(at::kLong))
      .view({static_cast<int64_t>(rows.size()), T});
}

}  // namespace sinkscope
