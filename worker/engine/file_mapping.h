// A whole file mapped into memory, copy-on-write (MAP_PRIVATE), for the
// checkpoint readers: tensors alias it through at::from_blob (the deleter holds
// a shared_ptr), and placement returns its pages to the kernel chunk by chunk.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace sinkscope {

/// A regular file mapped read/write MAP_PRIVATE | MAP_NORESERVE: an accidental
/// in-place write changes this process's copy, never the file. Unmapped on
/// destruction. Pages are read on first touch (nothing is read at Open).
class FileMapping {
 public:
  ~FileMapping();
  FileMapping(const FileMapping&) = delete;
  FileMapping& operator=(const FileMapping&) = delete;

  /// Maps `path`. Errors: NotFound (no such file), PermissionDenied (cannot
  /// open), InvalidArgument (not a regular file), Internal (mmap failed).
  static absl::StatusOr<std::shared_ptr<FileMapping>> Open(const std::string& path);

  uint8_t* data() const { return static_cast<uint8_t*>(addr_); }
  size_t size() const { return size_; }
  /// True when [p, p + n) lies inside the mapping.
  bool Contains(const void* p, size_t n) const;
  /// Returns the whole pages inside [p, p + n) (which must lie in the mapping)
  /// to the kernel (madvise MADV_DONTNEED): the process's RSS drops; a later
  /// read of those bytes faults the file's contents in again. Pages written by
  /// this process would lose the write, so call it only on bytes never written.
  void ReleasePages(const void* p, size_t n) const;
  /// Starts reading [p, p + n) into the page cache (MADV_WILLNEED; no RSS).
  void Prefetch(const void* p, size_t n) const;
  /// Hints a front-to-back read of the whole mapping (MADV_SEQUENTIAL).
  void AdviseSequential() const;

 private:
  FileMapping() = default;
  void* addr_ = nullptr;
  size_t size_ = 0;
};

}  // namespace sinkscope
