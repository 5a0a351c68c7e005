// ValidateCheckpointTensors: the config's implied tensor set, shapes, finiteness.
#include <ATen/core/Tensor.h>
#include <ATen/ops/any.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/isnan.h>
#include <ATen/ops/sum.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <string>
#include <type_traits>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "worker/engine/checkpoint.h"
#include "common/status_macros.h"

namespace sinkscope {
namespace {

using Shape = std::vector<int64_t>;

std::string ShapeString(c10::IntArrayRef shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// Every tensor `c` implies under its file names, with its file shape (common/model_config.h).
std::map<std::string, Shape> ExpectedFileTensors(const ModelConfig& c) {
  std::map<std::string, Shape> e;
  for (const TensorSpec& t : ExpectedTensors(c)) e[t.file_name] = t.shape;
  return e;
}

// Lists at most a few names, then "(and N more)".
std::string NameList(const std::vector<std::string>& names) {
  constexpr size_t kShow = 6;
  std::vector<std::string> shown(names.begin(), names.begin() + std::min(kShow, names.size()));
  std::string s = absl::StrJoin(shown, ", ");
  if (names.size() > kShow) absl::StrAppend(&s, " (and ", names.size() - kShow, " more)");
  return s;
}

// OK when every value of `t` is finite. Fast path: a finite sum implies finite
// elements (NaN and Inf propagate); only a non-finite sum, which may also be an
// overflow, pays for the exact elementwise check.
absl::Status CheckFinite(const std::string& name, const at::Tensor& t, const std::string& source) {
  if (t.numel() == 0) return absl::OkStatus();
  // float16 sums in float32 (its own sum overflows long before its elements
  // do); bfloat16 has float32's range, and its sum accumulates in float32
  // without the float32 copy of the input that sum(kFloat) makes on CPU.
  const double sum = (t.scalar_type() == at::kHalf ? t.sum(at::kFloat) : t.sum()).item<double>();
  if (std::isfinite(sum)) return absl::OkStatus();
  if (at::isfinite(t).all().item<bool>()) return absl::OkStatus();
  const bool has_nan = at::isnan(t).any().item<bool>();
  return absl::InvalidArgumentError(
      absl::StrCat(source, ": tensor ", name, " contains ", has_nan ? "NaN" : "Inf", " values"));
}

absl::Status ValidateImpl(const ModelConfig& config,
                          const std::map<std::string, at::Tensor>& tensors,
                          const std::string& source, bool check_values) {
  if (absl::Status s = config.Validate(); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": invalid config: ", s.message()));
  }
  const std::map<std::string, Shape> expected = ExpectedFileTensors(config);
  std::vector<std::string> missing, unexpected;
  for (const auto& [name, shape] : expected) {
    auto it = tensors.find(name);
    if (it == tensors.end()) {
      missing.push_back(name);
      continue;
    }
    const at::Tensor& t = it->second;
    if (!t.defined()) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": tensor ", name, " is undefined"));
    }
    if (t.sizes() != c10::IntArrayRef(shape)) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": tensor ", name, " has shape ",
                                                     ShapeString(t.sizes()), ", config implies ",
                                                     ShapeString(shape)));
    }
    if (!t.is_floating_point()) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": tensor ", name, " has dtype ",
                                                     c10::toString(t.scalar_type()),
                                                     ", expected a floating-point type"));
    }
  }
  for (const auto& [name, t] : tensors) {
    if (expected.count(name) == 0) unexpected.push_back(name);
  }
  if (!missing.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": missing tensor", missing.size() > 1 ? "s " : " ", NameList(missing),
                     " (config: ", config.Summary(), ")"));
  }
  if (!unexpected.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": unexpected tensor", unexpected.size() > 1 ? "s " : " ",
                     NameList(unexpected), " not implied by the config (", config.Summary(), ")"));
  }
  if (!check_values) return absl::OkStatus();
  for (const auto& [name, t] : tensors) {
    if (absl::Status s = CheckFinite(name, t, source); !s.ok()) return s;
  }
  return absl::OkStatus();
}

// True when every element of the `n`-element float32 / float16 / bfloat16
// array at `p` is finite (exponent bits not all ones); a plain loop the
// compiler vectorises, no parallel region. Other dtypes: true (not checked here).
// An element is finite when (x & mask) ^ mask != 0: the minimum over the
// array, a reduction the vectoriser turns into packed min instructions.
template <typename T>
__attribute__((optimize("O3"))) bool AllFiniteMasked(const T* x, int64_t n, T mask) {
  T m = mask;
  for (int64_t i = 0; i < n; ++i) {
    const T v = static_cast<T>((x[i] & mask) ^ mask);
    m = v < m ? v : m;
  }
  return m != 0;
}

bool AllFiniteBits(at::ScalarType type, const void* p, int64_t n) {
  switch (type) {
    case at::kFloat:
      return AllFiniteMasked(static_cast<const uint32_t*>(p), n, uint32_t{0x7F800000u});
    case at::kHalf:
      return AllFiniteMasked(static_cast<const uint16_t*>(p), n, uint16_t{0x7C00u});
    case at::kBFloat16:
      return AllFiniteMasked(static_cast<const uint16_t*>(p), n, uint16_t{0x7F80u});
    default:
      return true;
  }
}

// dst[i] = src[i] converted through float (c10's conversions: round to
// nearest even, as at::Tensor::copy_); a plain loop, no parallel region.
template <typename D, typename S>
__attribute__((optimize("O3"))) void ConvertLoop(D* dst, const S* src, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<D>(static_cast<float>(src[i]));
}

// Converts `n` elements between float32 / float16 / bfloat16 on the CPU;
// false for any other pair (the caller falls back to copy_).
bool ConvertChunk(at::ScalarType to, void* dst, at::ScalarType from, const void* src, int64_t n) {
  auto run = [&](auto* d) {
    using D = std::remove_pointer_t<decltype(d)>;
    switch (from) {
      case at::kFloat:
        ConvertLoop(d, static_cast<const float*>(src), n);
        return true;
      case at::kHalf:
        ConvertLoop(d, static_cast<const c10::Half*>(src), n);
        return true;
      case at::kBFloat16:
        ConvertLoop(d, static_cast<const c10::BFloat16*>(src), n);
        return true;
      default:
        (void)sizeof(D);
        return false;
    }
  };
  switch (to) {
    case at::kFloat:
      return run(static_cast<float*>(dst));
    case at::kHalf:
      return run(static_cast<c10::Half*>(dst));
    case at::kBFloat16:
      return run(static_cast<c10::BFloat16*>(dst));
    default:
      return false;
  }
}

// MemAvailable of /proc/meminfo, bytes (-1 if unreadable).
int64_t MemAvailableBytes() {
  std::ifstream f("/proc/meminfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("MemAvailable:", 0) == 0) return std::atoll(line.c_str() + 13) * 1024;
  }
  return -1;
}

// Reclaims the file pages mapped in the whole pages inside [p, p + n) (clean
// pages of a file mapping: dropped from the page cache unless another process
// maps them). A hint; ignored by kernels before 5.4.
void PageOut(const void* p, size_t n) {
#ifdef MADV_PAGEOUT
  static const uintptr_t kPage = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  const uintptr_t begin = (a + kPage - 1) / kPage * kPage, end = (a + n) / kPage * kPage;
  if (begin < end) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_PAGEOUT);
#else
  (void)p;
  (void)n;
#endif
}

// Faults in the whole pages inside [p, p + n) for writing in one call
// (MADV_POPULATE_WRITE, Linux 5.14) instead of one page fault per 4 KiB page.
void Populate(void* p, size_t n) {
#ifdef MADV_POPULATE_WRITE
  static const uintptr_t kPage = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  const uintptr_t begin = (a + kPage - 1) / kPage * kPage, end = (a + n) / kPage * kPage;
  if (begin < end) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_WRITE);
#else
  (void)p;
  (void)n;
#endif
}

// Bytes per placement chunk: small enough that the chunk's file pages and its
// cast copy are noise beside the weights, large enough to amortise the calls.
constexpr int64_t kPlaceChunkBytes = 4 << 20;
// Chunks whose file pages are returned together (CPU targets): 64 MiB.
constexpr int64_t kReleaseChunks = 16;

absl::Status PlaceImpl(std::map<std::string, at::Tensor>* tensors, const LoadTarget& target,
                       const std::vector<std::shared_ptr<FileMapping>>& mappings,
                       const std::string& source) {
  // File order: sequential reads, and each mapping is done with before the next.
  std::vector<std::pair<uintptr_t, std::string>> order;
  for (const auto& [name, t] : *tensors) {
    order.emplace_back(t.defined() && t.numel() > 0 ? reinterpret_cast<uintptr_t>(t.data_ptr()) : 0,
                       name);
  }
  std::sort(order.begin(), order.end());
  for (const auto& m : mappings) m->AdviseSequential();
  // When the file and the placed weights cannot both stay in memory, the page
  // cache of what was copied is dropped as the copy goes (MADV_PAGEOUT): else
  // the kernel, short of memory for the weights, evicts the file's pages not
  // yet read (the inactive ones) before those just read twice, and the load
  // reads the file from disk again. Where both fit, the cache stays (a reload
  // reads from memory).
  int64_t mapped_bytes = 0;
  for (const auto& m : mappings) mapped_bytes += static_cast<int64_t>(m->size());
  const int64_t available = MemAvailableBytes();
  const bool drop_cache = target.device.is_cpu() && available > 0 && 2 * mapped_bytes > available;
  const auto options = at::TensorOptions().dtype(target.dtype).device(target.device);
  for (const auto& [addr, name] : order) {
    at::Tensor src = tensors->at(name);
    if (!src.defined()) continue;
    at::Tensor dst = at::empty(src.sizes(), options);
    if (src.numel() > 0) {
      const at::Tensor flat_src = src.contiguous().view(-1);
      at::Tensor flat_dst = dst.view(-1);
      const int64_t n = flat_src.numel(), elem = flat_src.element_size();
      const int64_t step = std::max<int64_t>(1, kPlaceChunkBytes / elem);
      const uint8_t* base = static_cast<const uint8_t*>(flat_src.data_ptr());
      const bool same_bytes = dst.device().is_cpu() && dst.scalar_type() == flat_src.scalar_type();
      const FileMapping* map = nullptr;
      for (const auto& m : mappings) {
        if (m->Contains(base, static_cast<size_t>(n * elem))) map = m.get();
      }
      const bool known = flat_src.scalar_type() == at::kFloat ||
                         flat_src.scalar_type() == at::kHalf ||
                         flat_src.scalar_type() == at::kBFloat16;
      const bool cpu_convert = dst.device().is_cpu() && known &&
                               (dst.scalar_type() == at::kFloat || dst.scalar_type() == at::kHalf ||
                                dst.scalar_type() == at::kBFloat16);
      uint8_t* dst_bytes = static_cast<uint8_t*>(dst.data_ptr());

      const int64_t dst_elem = dst.element_size();
      const int64_t n_chunks = (n + step - 1) / step;
      // One chunk: check, copy (or convert), return its file pages. False when
      // a value is not finite (nothing of it copied).
      auto one = [&](int64_t c) {
        const int64_t start = c * step, len = std::min(step, n - start);
        const uint8_t* bytes = base + start * elem;
        if (!AllFiniteBits(flat_src.scalar_type(), bytes, len)) return false;
        Populate(dst_bytes + start * dst_elem, static_cast<size_t>(len * dst_elem));
        if (same_bytes) {
          std::memcpy(dst_bytes + start * elem, bytes, static_cast<size_t>(len * elem));
        } else {
          ConvertChunk(dst.scalar_type(), dst_bytes + start * dst_elem, flat_src.scalar_type(), bytes,
                       len);
        }
        return true;
      };
      if (same_bytes || cpu_convert) {
        // CPU: chunks on the intra-op threads (page faults, memcpy and
        // conversion all scale), plain loops inside (no nested regions);
        // file pages returned per group of chunks (madvise shoots down TLBs
        // on every thread: once per group, not per chunk).
        std::atomic<int64_t> first_bad{n_chunks};
        for (int64_t g0 = 0; g0 < n_chunks && first_bad.load() == n_chunks; g0 += kReleaseChunks) {
          const int64_t g1 = std::min(n_chunks, g0 + kReleaseChunks);
          at::parallel_for(g0, g1, 1, [&](int64_t b0, int64_t b1) {
            for (int64_t c = b0; c < b1 && c < first_bad.load(); ++c) {
              if (!one(c)) {
                int64_t cur = first_bad.load();
                while (c < cur && !first_bad.compare_exchange_weak(cur, c)) {
                }
              }
            }
          });
          if (map != nullptr) {
            const int64_t start = g0 * step, end = std::min(n, g1 * step);
            const uint8_t* p = base + start * elem;
            const size_t len = static_cast<size_t>((end - start) * elem);
            if (drop_cache) PageOut(p, len);
            map->ReleasePages(p, len);
          }
        }
        if (first_bad.load() < n_chunks) {
          const int64_t start = first_bad.load() * step;
          RETURN_IF_ERROR(CheckFinite(name, flat_src.narrow(0, start, std::min(step, n - start)), source));
        }
      } else {
        // Another device (or dtype): chunk by chunk through copy_, which
        // stages at most a chunk on the host.
        for (int64_t c = 0; c < n_chunks; ++c) {
          const int64_t start = c * step, len = std::min(step, n - start);
          const uint8_t* bytes = base + start * elem;
          if (map != nullptr && start + len < n) {
            map->Prefetch(bytes + len * elem, static_cast<size_t>(std::min(step, n - start - len) * elem));
          }
          const at::Tensor chunk = flat_src.narrow(0, start, len);
          if (!known || !AllFiniteBits(chunk.scalar_type(), bytes, len)) {
            RETURN_IF_ERROR(CheckFinite(name, chunk, source));  // names NaN or Inf
          }
          flat_dst.narrow(0, start, len).copy_(chunk);
          if (map != nullptr) map->ReleasePages(bytes, static_cast<size_t>(len * elem));
        }
      }
    }
    (*tensors)[name] = std::move(dst);  // drops the alias of the file
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status PlaceTensors(std::map<std::string, at::Tensor>* tensors, const LoadTarget& target,
                          const std::vector<std::shared_ptr<FileMapping>>& mappings,
                          const std::string& source) {
  try {
    return PlaceImpl(tensors, target, mappings, source);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat(source, ": placing weights on ", target.device.str(),
                                            ": ", e.what_without_backtrace()));
  }
}

absl::Status CanonicalizeTensors(const ModelConfig& config,
                                 std::map<std::string, at::Tensor>* tensors,
                                 const std::string& source) {
  try {
    const int64_t q_dim = config.n_heads * config.d_head, kv_dim = config.n_kv_heads * config.d_head;
    for (const TensorSpec& s : ExpectedTensors(config)) {
      if (s.layout == TensorLayout::kAsIs && s.file_name == s.canonical) continue;
      auto it = tensors->find(s.file_name);
      if (it == tensors->end()) {
        return absl::InvalidArgumentError(absl::StrCat(source, ": missing tensor ", s.file_name));
      }
      at::Tensor t = it->second;
      tensors->erase(it);
      switch (s.layout) {
        case TensorLayout::kAsIs:
          (*tensors)[s.canonical] = t;
          break;
        case TensorLayout::kConv1D:  // [in, out] -> [out, in]
          (*tensors)[s.canonical] = t.t().contiguous();
          break;
        case TensorLayout::kFusedQkvConv1D: {
          // Columns (weight) or entries (bias) [q | k | v] (GPT-2 c_attn.split(n_embd, dim=2)).
          const int64_t dim = t.dim() - 1;
          at::Tensor q = t.narrow(dim, 0, q_dim), k = t.narrow(dim, q_dim, kv_dim),
                     v = t.narrow(dim, q_dim + kv_dim, kv_dim);
          if (t.dim() == 2) {
            q = q.t();
            k = k.t();
            v = v.t();
          }
          (*tensors)[s.canonical] = q.contiguous();
          (*tensors)[s.canonical_k] = k.contiguous();
          (*tensors)[s.canonical_v] = v.contiguous();
          break;
        }
        case TensorLayout::kFusedQkvPerHead: {
          // GPT-NeoX: qkv.view(..., n_heads, 3 d_head), chunked into q, k, v per head;
          // rows (weight) / entries (bias) are [n_heads, 3, d_head]. No GQA (kv_dim = q_dim).
          if (config.n_kv_heads != config.n_heads) {
            return absl::InvalidArgumentError(absl::StrCat(
                source, ": tensor ", s.file_name, " fuses q, k, v per head, which needs as many "
                "key/value heads as query heads (", config.n_kv_heads, " vs ", config.n_heads, ")"));
          }
          const int64_t H = config.n_heads, Dh = config.d_head;
          std::vector<int64_t> grouped = {H, 3, Dh};
          if (t.dim() == 2) grouped.push_back(t.size(1));
          at::Tensor g = t.reshape(grouped);
          auto part = [&](int64_t i) {
            at::Tensor p = g.select(1, i);
            return (t.dim() == 2 ? p.reshape({H * Dh, t.size(1)}) : p.reshape({H * Dh})).contiguous();
          };
          (*tensors)[s.canonical] = part(0);
          (*tensors)[s.canonical_k] = part(1);
          (*tensors)[s.canonical_v] = part(2);
          break;
        }
      }
    }
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat(source, ": libtorch error while renaming tensors: ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

absl::Status ValidateCheckpointTensors(const ModelConfig& config,
                                       const std::map<std::string, at::Tensor>& tensors,
                                       const std::string& source, bool check_values) {
  try {
    return ValidateImpl(config, tensors, source, check_values);
  } catch (const c10::Error& e) {
    return absl::InternalError(
        absl::StrCat(source, ": libtorch error while validating: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(source, ": error while validating: ", e.what()));
  }
}

}  // namespace sinkscope
