// Query-chunk size of the O(T) attention statistics and of the chunked
// attention output (worker/engine/attention.h), shared with the server's memory
// estimate (server/memory_estimate.cc) so that both use the same figure. No
// libtorch.
#pragma once

#include <algorithm>
#include <cstdint>

namespace sinkscope {

/// Elements of one query chunk's [batch, heads, rows, keys] buffer: 2^24,
/// 64 MiB in float32.
inline constexpr int64_t kAttentionChunkElements = int64_t{1} << 24;

/// Query rows per chunk so that batch_heads x rows x keys stays within
/// kAttentionChunkElements; at least 1, at most `queries`.
inline int64_t AttentionChunkRows(int64_t batch_heads, int64_t keys, int64_t queries) {
  const int64_t per_row = std::max<int64_t>(1, batch_heads) * std::max<int64_t>(1, keys);
  return std::max<int64_t>(1, std::min<int64_t>(queries, kAttentionChunkElements / per_row));
}

}  // namespace sinkscope
