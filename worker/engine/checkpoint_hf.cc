// Hugging Face directories: config.json + safetensors (single file or sharded).
//
// Safetensors files are mmapped (FileMapping: MAP_PRIVATE, copy-on-write, so an
// accidental in-place write changes the process's copy, never the file) and each
// tensor aliases the mapping through at::from_blob; the deleter holds a
// shared_ptr to the mapping, so the file is unmapped when the last tensor dies.
// A tensor whose data is not aligned to its element size is copied instead.
// With a LoadTarget the aliases are then placed (PlaceTensors): one copy per
// weight, file pages returned chunk by chunk, the mapping gone with its shard.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/Exception.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "worker/engine/checkpoint.h"
#include "common/status_macros.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors is little-endian; this reader assumes a little-endian host"
#endif

namespace sinkscope {
namespace {

using nlohmann::json;

// The format's recommended maximum header size (safetensors spec).
constexpr uint64_t kMaxHeaderBytes = 100u << 20;
constexpr size_t kMaxRank = 16;

// Element size of every dtype in the safetensors spec; 0 = unknown.
size_t DtypeSize(const std::string& dtype) {
  static const std::map<std::string, size_t> kSizes = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E4M3", 1}, {"F8_E5M2", 1},
      {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},
      {"U32", 4},  {"F32", 4}, {"I64", 8}, {"U64", 8},     {"F64", 8}};
  auto it = kSizes.find(dtype);
  return it == kSizes.end() ? 0 : it->second;
}

// Loadable dtypes; returns false for the others.
bool ToScalarType(const std::string& dtype, at::ScalarType* out) {
  if (dtype == "F32")
    *out = at::kFloat;
  else if (dtype == "F16")
    *out = at::kHalf;
  else if (dtype == "BF16")
    *out = at::kBFloat16;
  else
    return false;
  return true;
}

const char* DtypeName(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return "F32";
    case at::kHalf:
      return "F16";
    case at::kBFloat16:
      return "BF16";
    default:
      return nullptr;
  }
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// Reads a JSON non-negative integer that fits in int64.
bool GetCount(const json& j, uint64_t* out) {
  if (j.is_number_unsigned()) {
    *out = j.get<uint64_t>();
  } else if (j.is_number_integer() && j.get<int64_t>() >= 0) {
    *out = static_cast<uint64_t>(j.get<int64_t>());
  } else {
    return false;
  }
  return *out <= static_cast<uint64_t>(INT64_MAX);
}

absl::StatusOr<SafetensorsEntry> ParseEntry(const std::string& name, const json& v,
                                            uint64_t data_size, const std::string& source) {
  auto bad = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": tensor ", name, ": ", what));
  };
  if (!v.is_object()) return bad(absl::StrCat("entry must be an object, got ", v.type_name()));
  SafetensorsEntry e;
  e.name = name;
  auto dt = v.find("dtype");
  if (dt == v.end() || !dt->is_string()) return bad("missing string field 'dtype'");
  e.dtype = dt->get<std::string>();
  const size_t elem = DtypeSize(e.dtype);
  if (elem == 0) return bad(absl::StrCat("unknown dtype '", e.dtype, "'"));

  auto sh = v.find("shape");
  if (sh == v.end() || !sh->is_array()) return bad("missing array field 'shape'");
  if (sh->size() > kMaxRank) return bad(absl::StrCat("shape has rank ", sh->size(), " > 16"));
  uint64_t numel = 1;
  bool overflow = false;
  for (const json& d : *sh) {
    uint64_t n = 0;
    if (!GetCount(d, &n)) {
      return bad(absl::StrCat("shape ", sh->dump(), " has an entry that is not a non-negative ",
                              "integer: ", d.dump()));
    }
    e.shape.push_back(static_cast<int64_t>(n));
    overflow |= __builtin_mul_overflow(numel, n, &numel);
  }
  uint64_t nbytes = 0;
  if (overflow || __builtin_mul_overflow(numel, static_cast<uint64_t>(elem), &nbytes) ||
      numel > static_cast<uint64_t>(INT64_MAX)) {
    return bad(absl::StrCat("shape ", ShapeString(e.shape), " overflows the size computation"));
  }

  auto off = v.find("data_offsets");
  if (off == v.end() || !off->is_array() || off->size() != 2 || !GetCount((*off)[0], &e.begin) ||
      !GetCount((*off)[1], &e.end)) {
    return bad("field 'data_offsets' must be [begin, end] of non-negative integers");
  }
  if (e.begin > e.end || e.end > data_size) {
    return bad(absl::StrCat("data_offsets [", e.begin, ", ", e.end,
                            "] out of range: the data section has ", data_size, " bytes"));
  }
  if (e.end - e.begin != nbytes) {
    return bad(absl::StrCat("data_offsets [", e.begin, ", ", e.end, "] span ", e.end - e.begin,
                            " bytes, but shape ", ShapeString(e.shape), " x ", e.dtype, " needs ",
                            nbytes));
  }
  return e;
}

absl::StatusOr<std::string> ReadTextFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat(path, ": read error"));
  return ss.str();
}

// Maps `path` and adds its tensors to `out` under the names the family table
// gives them (StoredTensorName: GPT-2's bare names prefixed; buffers and other
// towers skipped unread); error on a name stored twice.
// The mapping is appended to `mappings` (placement returns its pages).
absl::Status LoadSafetensorsFile(const ModelConfig& config, const std::string& path,
                                 std::map<std::string, at::Tensor>* out,
                                 std::set<std::string>* names_in_file,
                                 std::vector<std::shared_ptr<FileMapping>>* mappings) {
  ASSIGN_OR_RETURN(std::shared_ptr<FileMapping> map, FileMapping::Open(path));
  mappings->push_back(map);
  size_t data_start = 0;
  ASSIGN_OR_RETURN(std::vector<SafetensorsEntry> entries,
                   ParseSafetensorsHeader(map->data(), map->size(), path, &data_start));
  for (const SafetensorsEntry& e : entries) {
    if (names_in_file != nullptr) names_in_file->insert(e.name);
    const std::optional<std::string> name = StoredTensorName(config, e.name);
    if (!name.has_value()) continue;
    at::ScalarType type;
    if (!ToScalarType(e.dtype, &type)) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": tensor ", e.name,
                                                     " has unsupported dtype ", e.dtype,
                                                     " (supported: F32, F16, BF16)"));
    }
    if (out->count(*name) != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": tensor ", *name,
          *name == e.name ? "" : absl::StrCat(" (stored as ", e.name, ")"),
          " appears in more than one file or under two spellings"));
    }
    uint8_t* ptr = map->data() + data_start + e.begin;
    const auto options = at::TensorOptions().dtype(type);
    at::Tensor t;
    if (reinterpret_cast<uintptr_t>(ptr) % DtypeSize(e.dtype) != 0) {
      t = at::empty(e.shape, options);
      if (e.end > e.begin) std::memcpy(t.data_ptr(), ptr, e.end - e.begin);
    } else {
      std::shared_ptr<FileMapping> keep = map;
      t = at::from_blob(
          ptr, e.shape, [keep](void*) mutable { keep.reset(); }, options);
    }
    (*out)[*name] = std::move(t);
  }
  return absl::OkStatus();
}

// Plain file name of a shard: no directories, no "..".
bool IsPlainFileName(const std::string& name) {
  return !name.empty() && name != "." && name != ".." && name.find('/') == std::string::npos &&
         name.find('\0') == std::string::npos;
}

absl::Status LoadShards(const ModelConfig& config, const std::string& dir,
                        const std::string& index_path, std::map<std::string, at::Tensor>* out,
                        std::vector<std::shared_ptr<FileMapping>>* mappings) {
  ASSIGN_OR_RETURN(std::string text, ReadTextFile(index_path));
  json index = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (index.is_discarded() || !index.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": invalid JSON"));
  }
  auto wm = index.find("weight_map");
  if (wm == index.end() || !wm->is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(index_path, ": field 'weight_map' missing or not an object"));
  }
  std::map<std::string, std::vector<std::string>> by_shard;  // shard -> tensor names
  for (auto it = wm->begin(); it != wm->end(); ++it) {
    if (!it->is_string() || !IsPlainFileName(it->get<std::string>())) {
      return absl::InvalidArgumentError(absl::StrCat(index_path, ": weight_map entry for ",
                                                     it.key(), " must be a plain file name, got ",
                                                     it->dump()));
    }
    by_shard[it->get<std::string>()].push_back(it.key());
  }
  if (by_shard.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": weight_map is empty"));
  }
  for (const auto& [shard, names] : by_shard) {
    const std::string shard_path = absl::StrCat(dir, "/", shard);
    std::set<std::string> in_file;
    RETURN_IF_ERROR(LoadSafetensorsFile(config, shard_path, out, &in_file, mappings));
    for (const std::string& name : names) {
      if (in_file.count(name) == 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            index_path, ": tensor ", name, " is mapped to ", shard, ", which does not contain it"));
      }
    }
  }
  return absl::OkStatus();
}

bool IsRegularFile(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// Without a target the tensors alias the mappings; with one, names and shapes
// are validated first (no weight byte read), then PlaceTensors copies them.
absl::StatusOr<Checkpoint> LoadHfDirectoryImpl(const std::string& dir, const LoadTarget* target) {
  Checkpoint ck;
  ck.format = "hf-safetensors";
  ck.path = dir;
  const std::string config_path = absl::StrCat(dir, "/config.json");
  ASSIGN_OR_RETURN(std::string config_text, ReadTextFile(config_path));
  ASSIGN_OR_RETURN(ck.config, ParseHfConfig(config_text, config_path));

  const std::string single = absl::StrCat(dir, "/model.safetensors");
  const std::string index = absl::StrCat(dir, "/model.safetensors.index.json");
  std::string source;
  std::vector<std::shared_ptr<FileMapping>> mappings;
  if (IsRegularFile(single)) {
    source = single;
    RETURN_IF_ERROR(LoadSafetensorsFile(ck.config, single, &ck.tensors, nullptr, &mappings));
  } else if (IsRegularFile(index)) {
    source = index;
    RETURN_IF_ERROR(LoadShards(ck.config, dir, index, &ck.tensors, &mappings));
  } else {
    return absl::NotFoundError(
        absl::StrCat(dir, ": neither model.safetensors nor model.safetensors.index.json exists"));
  }
  // Tied: HF ignores a stored lm_head.weight and uses the embedding.
  if (ck.config.tied_embeddings) ck.tensors.erase("lm_head.weight");
  RETURN_IF_ERROR(ValidateCheckpointTensors(ck.config, ck.tensors, source,
                                            /*check_values=*/target == nullptr));
  if (target != nullptr) {
    RETURN_IF_ERROR(PlaceTensors(&ck.tensors, *target, mappings, source));
    ck.placed = true;
  }
  mappings.clear();  // the tensors that still alias a mapping keep it alive
  RETURN_IF_ERROR(CanonicalizeTensors(ck.config, &ck.tensors, source));
  return ck;
}

template <typename Fn>
absl::StatusOr<Checkpoint> Guarded(const std::string& path, Fn fn) {
  try {
    return fn();
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat(path, ": ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(path, ": ", e.what()));
  }
}

}  // namespace

absl::StatusOr<std::vector<SafetensorsEntry>> ParseSafetensorsHeader(const uint8_t* data,
                                                                     size_t size,
                                                                     const std::string& source,
                                                                     size_t* data_start) {
  if (size < 8) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": file has ", size, " bytes, shorter than the 8-byte header length"));
  }
  uint64_t n = 0;
  std::memcpy(&n, data, 8);
  if (n > size - 8) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": header length ", n,
                                                   " exceeds the file size (", size, " bytes, ",
                                                   size - 8, " after the length)"));
  }
  if (n > kMaxHeaderBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": header length ", n, " exceeds the 100 MiB limit"));
  }
  const uint8_t* begin = data + 8;
  json header;
  try {
    header = json::parse(begin, begin + n);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": invalid JSON header: ", e.what()));
  }
  if (!header.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        source, ": invalid JSON header: expected an object, got ", header.type_name()));
  }
  const uint64_t data_size = size - 8 - n;
  std::vector<SafetensorsEntry> entries;
  try {
    for (auto it = header.begin(); it != header.end(); ++it) {
      if (it.key() == "__metadata__") continue;
      ASSIGN_OR_RETURN(SafetensorsEntry e, ParseEntry(it.key(), it.value(), data_size, source));
      entries.push_back(std::move(e));
    }
  } catch (const json::exception& e) {  // defensive; the checks above avoid throwing
    return absl::InvalidArgumentError(absl::StrCat(source, ": invalid header: ", e.what()));
  }
  if (data_start != nullptr) *data_start = static_cast<size_t>(8 + n);
  return entries;
}

absl::StatusOr<Checkpoint> LoadHfDirectory(const std::string& dir) {
  return Guarded(dir, [&] { return LoadHfDirectoryImpl(dir, nullptr); });
}

absl::StatusOr<Checkpoint> LoadHfDirectory(const std::string& dir, const LoadTarget& target) {
  return Guarded(dir, [&] { return LoadHfDirectoryImpl(dir, &target); });
}

namespace {

// LoadCheckpoint's dispatch on the path; `target` may be null.
absl::StatusOr<Checkpoint> LoadCheckpointImpl(const std::string& path, const LoadTarget* target) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    return absl::NotFoundError(absl::StrCat(path, ": no such file or directory"));
  }
  auto hf = [target](const std::string& dir) {
    return target != nullptr ? LoadHfDirectory(dir, *target) : LoadHfDirectory(dir);
  };
  if (S_ISDIR(st.st_mode)) return hf(path);
  if (absl::EndsWith(path, ".bin")) return target != nullptr ? LoadLlama2c(path, *target) : LoadLlama2c(path);
  if (absl::EndsWith(path, ".gguf")) return target != nullptr ? LoadGguf(path, *target) : LoadGguf(path);
  // A file inside a HF directory: load the directory.
  const size_t slash = path.rfind('/');
  const std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  if (base == "config.json" || absl::EndsWith(base, ".safetensors") ||
      absl::EndsWith(base, ".safetensors.index.json")) {
    return hf(slash == std::string::npos ? "." : path.substr(0, slash));
  }
  return absl::InvalidArgumentError(absl::StrCat(
      path, ": unknown checkpoint format (expected a HF directory, a llama2.c .bin or a .gguf file)"));
}

}  // namespace

absl::StatusOr<Checkpoint> LoadCheckpoint(const std::string& path) {
  return LoadCheckpointImpl(path, nullptr);
}

absl::StatusOr<Checkpoint> LoadCheckpoint(const std::string& path, const LoadTarget& target) {
  return LoadCheckpointImpl(path, &target);
}

absl::Status WriteSafetensors(const std::string& path,
                              const std::map<std::string, at::Tensor>& tensors) {
  try {
    // Data order: larger elements first, then by name (as the reference
    // implementation), so every tensor starts aligned to its element size.
    std::vector<std::pair<std::string, at::Tensor>> order;
    for (const auto& [name, t] : tensors) {
      if (!t.defined() || !t.device().is_cpu() || DtypeName(t.scalar_type()) == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(
            path, ": tensor ", name, " must be a defined CPU float32/float16/bfloat16 tensor"));
      }
      order.emplace_back(name, t.contiguous());
    }
    std::stable_sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
      return a.second.element_size() > b.second.element_size();
    });
    json header = json::object();
    header["__metadata__"] = {{"format", "pt"}};
    uint64_t offset = 0;
    for (const auto& [name, t] : order) {
      const uint64_t nbytes = t.numel() * t.element_size();
      header[name] = {{"dtype", DtypeName(t.scalar_type())},
                      {"shape", std::vector<int64_t>(t.sizes().begin(), t.sizes().end())},
                      {"data_offsets", {offset, offset + nbytes}}};
      offset += nbytes;
    }
    std::string text = header.dump();
    while ((8 + text.size()) % 8 != 0) text.push_back(' ');
    const uint64_t n = text.size();
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    if (!out) return absl::PermissionDeniedError(absl::StrCat(path, ": cannot open for writing"));
    out.write(reinterpret_cast<const char*>(&n), 8);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const auto& [name, t] : order) {
      out.write(static_cast<const char*>(t.data_ptr()),
                static_cast<std::streamsize>(t.numel() * t.element_size()));
    }
    out.close();
    if (!out) return absl::DataLossError(absl::StrCat(path, ": write failed"));
    return absl::OkStatus();
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat(path, ": ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(path, ": ", e.what()));
  }
}

}  // namespace sinkscope
