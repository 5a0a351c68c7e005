// The activation scan's CPU float32 per-block reductions (worker/engine/scan.cc),
// exposed so that sinkscope-bench times the engine's own code.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

namespace sinkscope {

/// CPU float32 fast path of the scan's top-k: one pass over the contiguous
/// float32 `flat` keeping the k largest |value| as (signed value, flat index),
/// largest first (ties: lower flat index first); 1 <= k <= numel. False
/// (`out` then unspecified) when a NaN is present, so that the caller falls
/// back to at::topk's NaN semantics.
bool TopKAbsCpu(const at::Tensor& flat, int64_t k, std::vector<std::pair<float, int64_t>>* out);

/// Lower median of `abs_row` (non-negative values; torch.median semantics:
/// the lower of the two middle values, NaN when a NaN is present). CPU
/// float32: exact radix select on the bit patterns; else at::median.
float MedianAbs(const at::Tensor& abs_row);

/// Lower median and maximum of |row| for a contiguous CPU float32 `row` of
/// signed values, without materialising |row|: one pass for the histogram of
/// the bit patterns and the maximum, one over the median's bucket. Same
/// values as MedianAbs(row.abs()) and row.abs().max(). False (nothing
/// written) for other tensors, an empty row or a NaN, so that the caller
/// takes the tensor path and its NaN semantics.
bool MedianMaxAbsCpu(const at::Tensor& row, float* median, float* max_abs);

}  // namespace sinkscope
