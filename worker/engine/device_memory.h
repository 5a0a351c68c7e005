// Device memory as the caching allocator sees it: what a cuda worker reports
// as metrics and uses for its memory budget. CPU devices report zeros.
#pragma once

#include <cstdint>

#include <c10/core/Device.h>

namespace sinkscope {

/// Memory of one device, bytes.
struct DeviceMemory {
  /// Bytes in live tensors (c10 CUDA caching allocator "allocated_bytes").
  int64_t allocated_bytes = 0;
  /// Bytes the caching allocator holds from the driver (allocated + cached).
  int64_t reserved_bytes = 0;
  /// Device capacity (cudaMemGetInfo total).
  int64_t total_bytes = 0;
  /// Free according to the driver (cudaMemGetInfo free): what other processes
  /// and a further reservation can still get.
  int64_t free_bytes = 0;
  /// Most bytes in live tensors since the last ResetPeakDeviceMemory.
  int64_t peak_allocated_bytes = 0;
};

/// True when this build links libtorch's CUDA backend (the PyPI wheel does);
/// whether a GPU is present is at::hasCUDA().
bool BuiltWithCuda();

/// Reads the numbers above for `device`; all zero for a CPU device or when no
/// CUDA device is present. Never throws.
DeviceMemory QueryDeviceMemory(const c10::Device& device);

/// Returns cached, unused blocks of the caching allocator to the driver (after
/// a model is evicted), so that other processes on the GPU can use them. No-op
/// on CPU.
void ReleaseCachedDeviceMemory(const c10::Device& device);

/// Resets the caching allocator's peak statistics (no-op on CPU).
void ResetPeakDeviceMemory(const c10::Device& device);

/// Waits for every kernel queued on `device` (for timing; no-op on CPU).
void SynchronizeDevice(const c10::Device& device);

}  // namespace sinkscope
