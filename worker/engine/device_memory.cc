#include "worker/engine/device_memory.h"

#include <ATen/Context.h>

#if SINKSCOPE_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>
#endif

namespace sinkscope {

bool BuiltWithCuda() { return SINKSCOPE_WITH_CUDA != 0; }

DeviceMemory QueryDeviceMemory(const c10::Device& device) {
  DeviceMemory m;
#if SINKSCOPE_WITH_CUDA
  if (!device.is_cuda() || !at::hasCUDA()) return m;
  try {
    const c10::DeviceIndex index = device.has_index() ? device.index() : 0;
    c10::cuda::CUDAGuard guard(index);
    using c10::CachingAllocator::StatType;
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(index);
    const auto aggregate = static_cast<size_t>(StatType::AGGREGATE);
    m.allocated_bytes = stats.allocated_bytes[aggregate].current;
    m.reserved_bytes = stats.reserved_bytes[aggregate].current;
    m.peak_allocated_bytes = stats.allocated_bytes[aggregate].peak;
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) {
      m.free_bytes = static_cast<int64_t>(free_b);
      m.total_bytes = static_cast<int64_t>(total_b);
    }
  } catch (...) {
    return DeviceMemory{};
  }
#else
  (void)device;
#endif
  return m;
}

void ReleaseCachedDeviceMemory(const c10::Device& device) {
#if SINKSCOPE_WITH_CUDA
  if (!device.is_cuda() || !at::hasCUDA()) return;
  try {
    c10::cuda::CUDACachingAllocator::emptyCache();
  } catch (...) {
  }
#else
  (void)device;
#endif
}

void ResetPeakDeviceMemory(const c10::Device& device) {
#if SINKSCOPE_WITH_CUDA
  if (!device.is_cuda() || !at::hasCUDA()) return;
  try {
    c10::cuda::CUDACachingAllocator::resetPeakStats(device.has_index() ? device.index() : 0);
  } catch (...) {
  }
#else
  (void)device;
#endif
}

void SynchronizeDevice(const c10::Device& device) {
#if SINKSCOPE_WITH_CUDA
  if (!device.is_cuda() || !at::hasCUDA()) return;
  try {
    c10::cuda::device_synchronize();
  } catch (...) {
  }
#else
  (void)device;
#endif
}

}  // namespace sinkscope
