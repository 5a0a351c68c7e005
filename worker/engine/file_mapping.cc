#include "worker/engine/file_mapping.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace sinkscope {
namespace {

// [begin, end) of the whole pages inside [p, p + n); begin >= end when none.
void PageRange(const void* p, size_t n, uintptr_t* begin, uintptr_t* end) {
  static const uintptr_t kPage = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  *begin = (a + kPage - 1) / kPage * kPage;
  *end = (a + n) / kPage * kPage;
}

}  // namespace

FileMapping::~FileMapping() {
  if (addr_ != nullptr) ::munmap(addr_, size_);
}

absl::StatusOr<std::shared_ptr<FileMapping>> FileMapping::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    std::string msg = absl::StrCat(path, ": cannot open: ", std::strerror(err));
    return err == ENOENT ? absl::NotFoundError(msg) : absl::PermissionDeniedError(msg);
  }
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  }
  std::shared_ptr<FileMapping> m(new FileMapping());
  m->size_ = static_cast<size_t>(st.st_size);
  if (m->size_ > 0) {
    void* a = ::mmap(nullptr, m->size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, fd, 0);
    if (a == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      return absl::InternalError(absl::StrCat(path, ": mmap failed: ", std::strerror(err)));
    }
    m->addr_ = a;
  }
  ::close(fd);
  return m;
}

bool FileMapping::Contains(const void* p, size_t n) const {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p), base = reinterpret_cast<uintptr_t>(addr_);
  return addr_ != nullptr && a >= base && n <= size_ && a - base <= size_ - n;
}

void FileMapping::ReleasePages(const void* p, size_t n) const {
  if (!Contains(p, n)) return;
  uintptr_t begin = 0, end = 0;
  PageRange(p, n, &begin, &end);
  if (begin < end) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

void FileMapping::Prefetch(const void* p, size_t n) const {
  if (!Contains(p, n)) return;
  uintptr_t begin = 0, end = 0;
  PageRange(p, n, &begin, &end);
  if (begin < end) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_WILLNEED);
}

void FileMapping::AdviseSequential() const {
  if (addr_ != nullptr) ::madvise(addr_, size_, MADV_SEQUENTIAL);
}

}  // namespace sinkscope
