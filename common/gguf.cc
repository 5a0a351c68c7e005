// GGUF header reader (format in gguf.h).
#include "common/gguf.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <set>
#include <tuple>
#include <utility>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace sinkscope {
namespace {

// ggml.h `enum ggml_type`; gaps are numbers ggml removed. Sizes: ggml-common.h.
const GgmlTypeInfo kTypes[] = {
    {"F32", 1, 4},        {"F16", 1, 2},       {"Q4_0", 32, 18},    {"Q4_1", 32, 20},
    {nullptr, 0, 0},      {nullptr, 0, 0},     {"Q5_0", 32, 22},    {"Q5_1", 32, 24},
    {"Q8_0", 32, 34},     {"Q8_1", 32, 36},    {"Q2_K", 256, 84},   {"Q3_K", 256, 110},
    {"Q4_K", 256, 144},   {"Q5_K", 256, 176},  {"Q6_K", 256, 210},  {"Q8_K", 256, 292},
    {"IQ2_XXS", 256, 66}, {"IQ2_XS", 256, 74}, {"IQ3_XXS", 256, 98}, {"IQ1_S", 256, 50},
    {"IQ4_NL", 32, 18},   {"IQ3_S", 256, 110}, {"IQ2_S", 256, 82},  {"IQ4_XS", 256, 136},
    {"I8", 1, 1},         {"I16", 1, 2},       {"I32", 1, 4},       {"I64", 1, 8},
    {"F64", 1, 8},        {"IQ1_M", 256, 56},  {"BF16", 1, 2},      {nullptr, 0, 0},
    {nullptr, 0, 0},      {nullptr, 0, 0},     {"TQ1_0", 256, 54},  {"TQ2_0", 256, 66},
    {nullptr, 0, 0},      {nullptr, 0, 0},     {nullptr, 0, 0},     {"MXFP4", 32, 17},
};

class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  size_t pos() const { return pos_; }
  size_t remaining() const { return size_ - pos_; }
  template <typename T>
  bool Read(T* v) {
    if (remaining() < sizeof(T)) return false;
    std::memcpy(v, data_ + pos_, sizeof(T));  // GGUF is little-endian, as the hosts
    pos_ += sizeof(T);
    return true;
  }
  bool ReadString(std::string* s) {
    uint64_t n = 0;
    if (!Read(&n) || n > remaining()) return false;
    s->assign(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return true;
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

/// Bytes of one scalar of type `t`; 0 for string / array / unknown.
size_t ScalarSize(GgufType t) {
  switch (t) {
    case GgufType::kUint8: case GgufType::kInt8: case GgufType::kBool: return 1;
    case GgufType::kUint16: case GgufType::kInt16: return 2;
    case GgufType::kUint32: case GgufType::kInt32: case GgufType::kFloat32: return 4;
    case GgufType::kUint64: case GgufType::kInt64: case GgufType::kFloat64: return 8;
    default: return 0;
  }
}

bool KnownType(uint32_t t) { return t <= static_cast<uint32_t>(GgufType::kFloat64); }

/// Reads one scalar of numeric/bool type `t` into `v`.
bool ReadScalar(Reader& r, GgufType t, GgufValue* v) {
  auto set_u = [&](uint64_t x) { v->uinteger = x; v->integer = static_cast<int64_t>(x); v->number = static_cast<double>(x); };
  auto set_i = [&](int64_t x) { v->integer = x; v->uinteger = static_cast<uint64_t>(x); v->number = static_cast<double>(x); };
  switch (t) {
    case GgufType::kUint8: { uint8_t x; if (!r.Read(&x)) return false; set_u(x); return true; }
    case GgufType::kBool: { uint8_t x; if (!r.Read(&x)) return false; set_u(x != 0); return true; }
    case GgufType::kInt8: { int8_t x; if (!r.Read(&x)) return false; set_i(x); return true; }
    case GgufType::kUint16: { uint16_t x; if (!r.Read(&x)) return false; set_u(x); return true; }
    case GgufType::kInt16: { int16_t x; if (!r.Read(&x)) return false; set_i(x); return true; }
    case GgufType::kUint32: { uint32_t x; if (!r.Read(&x)) return false; set_u(x); return true; }
    case GgufType::kInt32: { int32_t x; if (!r.Read(&x)) return false; set_i(x); return true; }
    case GgufType::kUint64: { uint64_t x; if (!r.Read(&x)) return false; set_u(x); return true; }
    case GgufType::kInt64: { int64_t x; if (!r.Read(&x)) return false; set_i(x); return true; }
    case GgufType::kFloat32: { float x; if (!r.Read(&x)) return false; v->number = x; return true; }
    case GgufType::kFloat64: { double x; if (!r.Read(&x)) return false; v->number = x; return true; }
    default: return false;
  }
}

}  // namespace

bool GgufValue::is_integer() const {
  switch (type) {
    case GgufType::kUint8: case GgufType::kInt8: case GgufType::kUint16: case GgufType::kInt16:
    case GgufType::kUint32: case GgufType::kInt32: case GgufType::kUint64: case GgufType::kInt64:
      return true;
    default:
      return false;
  }
}

const GgmlTypeInfo* GgmlType(uint32_t type) {
  if (type >= sizeof(kTypes) / sizeof(kTypes[0]) || kTypes[type].name == nullptr) return nullptr;
  return &kTypes[type];
}

std::string GgmlTypeName(uint32_t type) {
  const GgmlTypeInfo* t = GgmlType(type);
  return t ? std::string(t->name) : absl::StrCat("type ", type);
}

int64_t GgufTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  return n;
}

const GgufValue* GgufFile::Find(const std::string& key) const {
  auto it = metadata.find(key);
  return it == metadata.end() ? nullptr : &it->second;
}

absl::StatusOr<GgufFile> ParseGguf(const uint8_t* data, size_t size, const std::string& source) {
  auto fail = [&](const std::string& problem) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", problem));
  };
  Reader r(data, size);
  uint32_t magic = 0;
  if (!r.Read(&magic)) return fail(absl::StrCat("not a GGUF file: ", size, " bytes, no magic"));
  if (std::memcmp(&magic, "GGUF", 4) != 0) {
    std::string got(reinterpret_cast<const char*>(&magic), 4);
    for (char& c : got) if (static_cast<unsigned char>(c) < 32 || static_cast<unsigned char>(c) > 126) c = '?';
    return fail(absl::StrCat("bad magic \"", got, "\" (a GGUF file starts with \"GGUF\")"));
  }
  GgufFile f;
  if (!r.Read(&f.version)) return fail("truncated header: no version");
  if (f.version != 2 && f.version != 3) {
    return fail(absl::StrCat("unsupported GGUF version ", f.version, " (supported: 2 and 3)"));
  }
  uint64_t n_tensors = 0, n_kv = 0;
  if (!r.Read(&n_tensors) || !r.Read(&n_kv)) return fail("truncated header: no tensor/metadata counts");
  // Every key-value pair takes at least 12 bytes, every tensor entry 24.
  if (n_kv > r.remaining() / 12) return fail(absl::StrCat("metadata count ", n_kv, " exceeds what the file can hold"));
  if (n_tensors > r.remaining() / 24) return fail(absl::StrCat("tensor count ", n_tensors, " exceeds what the file can hold"));
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key;
    if (!r.ReadString(&key)) return fail(absl::StrCat("truncated at metadata key ", i, " of ", n_kv));
    uint32_t vt = 0;
    if (!r.Read(&vt)) return fail(absl::StrCat("metadata ", key, ": truncated before its type"));
    if (!KnownType(vt)) return fail(absl::StrCat("metadata ", key, ": unknown value type ", vt));
    GgufValue v;
    v.type = static_cast<GgufType>(vt);
    bool ok = true;
    if (v.type == GgufType::kString) {
      ok = r.ReadString(&v.string);
    } else if (v.type == GgufType::kArray) {
      uint32_t et = 0;
      uint64_t n = 0;
      if (!r.Read(&et) || !r.Read(&n)) return fail(absl::StrCat("metadata ", key, ": truncated array header"));
      if (!KnownType(et)) return fail(absl::StrCat("metadata ", key, ": unknown array element type ", et));
      v.array_type = static_cast<GgufType>(et);
      if (v.array_type == GgufType::kArray) return fail(absl::StrCat("metadata ", key, ": nested arrays are not supported"));
      const size_t min_elem = v.array_type == GgufType::kString ? 8 : ScalarSize(v.array_type);
      if (n > r.remaining() / min_elem) {
        return fail(absl::StrCat("metadata ", key, ": array of ", n, " elements runs past the end of the file"));
      }
      if (v.array_type == GgufType::kString) {
        v.strings.resize(n);
        for (uint64_t k = 0; k < n && ok; ++k) ok = r.ReadString(&v.strings[k]);
      } else {
        v.numbers.resize(n);
        GgufValue tmp;
        for (uint64_t k = 0; k < n && ok; ++k) {
          ok = ReadScalar(r, v.array_type, &tmp);
          v.numbers[k] = tmp.number;
        }
      }
    } else {
      ok = ReadScalar(r, v.type, &v);
    }
    if (!ok) return fail(absl::StrCat("metadata ", key, ": value runs past the end of the file"));
    if (!f.metadata.emplace(key, std::move(v)).second) return fail(absl::StrCat("duplicate metadata key ", key));
  }
  if (const GgufValue* a = f.Find("general.alignment")) {
    if (!a->is_integer() || a->uinteger == 0 || (a->uinteger & (a->uinteger - 1)) != 0 || a->uinteger > (1u << 30)) {
      return fail("general.alignment must be a power-of-two integer");
    }
    f.alignment = a->uinteger;
  }
  std::set<std::string> names;
  f.tensors.reserve(n_tensors);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo t;
    if (!r.ReadString(&t.name)) return fail(absl::StrCat("truncated at tensor entry ", i, " of ", n_tensors));
    const std::string where = absl::StrCat("tensor ", t.name, ": ");
    uint32_t n_dims = 0;
    if (!r.Read(&n_dims)) return fail(where + "truncated entry");
    if (n_dims == 0 || n_dims > 4) return fail(absl::StrCat(where, n_dims, " dimensions (ggml allows 1 to 4)"));
    int64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t ne = 0;
      if (!r.Read(&ne)) return fail(where + "truncated entry");
      if (ne == 0 || ne > (uint64_t{1} << 40) || numel > std::numeric_limits<int64_t>::max() / static_cast<int64_t>(ne)) {
        return fail(absl::StrCat(where, "bad dimension ", ne));
      }
      numel *= static_cast<int64_t>(ne);
      t.ne.push_back(static_cast<int64_t>(ne));
    }
    if (!r.Read(&t.type) || !r.Read(&t.offset)) return fail(where + "truncated entry");
    const GgmlTypeInfo* ti = GgmlType(t.type);
    if (ti == nullptr) return fail(absl::StrCat(where, "unknown ggml type ", t.type));
    if (t.ne[0] % ti->block_size != 0) {
      return fail(absl::StrCat(where, "row of ", t.ne[0], " elements is not a whole number of ", ti->name,
                               " blocks of ", ti->block_size));
    }
    const int64_t blocks = numel / ti->block_size;
    if (blocks > std::numeric_limits<int64_t>::max() / ti->type_size) return fail(where + "size overflows");
    t.nbytes = static_cast<uint64_t>(blocks * ti->type_size);
    if (t.offset % f.alignment != 0) {
      return fail(absl::StrCat(where, "data offset ", t.offset, " is not aligned to ", f.alignment));
    }
    if (!names.insert(t.name).second) return fail(absl::StrCat("duplicate tensor ", t.name));
    f.tensors.push_back(std::move(t));
  }
  const uint64_t pad = (f.alignment - r.pos() % f.alignment) % f.alignment;
  f.data_offset = r.pos() + pad;
  const uint64_t data_size = size >= f.data_offset ? size - f.data_offset : 0;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const GgufTensorInfo& t : f.tensors) {
    if (t.offset > data_size || t.nbytes > data_size - t.offset) {
      return fail(absl::StrCat("tensor ", t.name, ": data [", t.offset, ", ", t.offset + t.nbytes,
                               ") of the data section runs past the end of the file (", data_size,
                               " data bytes): truncated tensor data"));
    }
    ranges.emplace_back(t.offset, t.offset + t.nbytes);
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].first < ranges[i - 1].second) {
      for (const GgufTensorInfo& t : f.tensors) {
        if (t.offset == ranges[i].first) return fail(absl::StrCat("tensor ", t.name, ": data overlaps another tensor's"));
      }
    }
  }
  return f;
}

absl::StatusOr<GgufFile> ReadGgufFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::NotFoundError(absl::StrCat(path, ": cannot open GGUF file"));
  struct stat st;
  if (::fstat(fd, &st) != 0 || st.st_size <= 0) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, ": empty or unreadable GGUF file"));
  }
  void* map = ::mmap(nullptr, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) return absl::InvalidArgumentError(absl::StrCat(path, ": cannot map GGUF file"));
  absl::StatusOr<GgufFile> f = ParseGguf(static_cast<const uint8_t*>(map), st.st_size, path);
  ::munmap(map, st.st_size);
  return f;
}

absl::StatusOr<GgufShape> GgufModelShape(const GgufFile& file) {
  GgufShape s;
  const GgufValue* arch = file.Find("general.architecture");
  if (arch == nullptr || arch->type != GgufType::kString) {
    return absl::InvalidArgumentError("no general.architecture string");
  }
  s.architecture = arch->string;
  auto get = [&](const char* key, int64_t* out, bool required) -> absl::Status {
    const GgufValue* v = file.Find(absl::StrCat(s.architecture, ".", key));
    if (v == nullptr || !v->is_integer()) {
      return required ? absl::InvalidArgumentError(absl::StrCat("missing ", s.architecture, ".", key))
                      : absl::OkStatus();
    }
    *out = v->integer;
    return absl::OkStatus();
  };
  for (auto [key, out, req] : {std::tuple{"embedding_length", &s.d_model, true},
                               std::tuple{"block_count", &s.n_layers, true},
                               std::tuple{"attention.head_count", &s.n_heads, true},
                               std::tuple{"feed_forward_length", &s.d_ffn, true},
                               std::tuple{"attention.head_count_kv", &s.n_kv_heads, false},
                               std::tuple{"attention.key_length", &s.d_head, false},
                               std::tuple{"context_length", &s.n_ctx, false}}) {
    absl::Status st = get(key, out, req);
    if (!st.ok()) return st;
  }
  if (s.n_kv_heads == 0) s.n_kv_heads = s.n_heads;
  bool output = false;
  for (const GgufTensorInfo& t : file.tensors) {
    if (t.name == "token_embd.weight" && t.ne.size() == 2) s.d_vocab = t.ne[1];
    if (t.name == "output.weight") output = true;
  }
  if (s.d_vocab == 0) return absl::InvalidArgumentError("no 2-D token_embd.weight tensor");
  s.tied = !output;
  s.has_vocab = file.Find("tokenizer.ggml.tokens") != nullptr;
  return s;
}

absl::StatusOr<GgufVocab> ReadGgufVocab(const GgufFile& file, const std::string& source) {
  auto fail = [&](const std::string& key, const std::string& problem) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", key, ": ", problem));
  };
  GgufVocab v;
  const GgufValue* model = file.Find("tokenizer.ggml.model");
  if (model == nullptr || model->type != GgufType::kString) return fail("tokenizer.ggml.model", "missing or not a string");
  v.model = model->string;
  if (const GgufValue* pre = file.Find("tokenizer.ggml.pre"); pre && pre->type == GgufType::kString) v.pre = pre->string;
  const GgufValue* tokens = file.Find("tokenizer.ggml.tokens");
  if (tokens == nullptr || !tokens->is_array_of(GgufType::kString) || tokens->strings.empty()) {
    return fail("tokenizer.ggml.tokens", "missing or not a non-empty array of strings");
  }
  v.tokens = tokens->strings;
  const size_t n = v.tokens.size();
  if (const GgufValue* s = file.Find("tokenizer.ggml.scores")) {
    if (!s->is_array_of(GgufType::kFloat32) || s->numbers.size() != n) {
      return fail("tokenizer.ggml.scores", absl::StrCat("must be ", n, " float32 values"));
    }
    for (double x : s->numbers) v.scores.push_back(static_cast<float>(x));
  }
  if (const GgufValue* t = file.Find("tokenizer.ggml.token_type")) {
    if (!t->is_array_of(GgufType::kInt32) || t->numbers.size() != n) {
      return fail("tokenizer.ggml.token_type", absl::StrCat("must be ", n, " int32 values"));
    }
    for (double x : t->numbers) v.token_types.push_back(static_cast<int32_t>(x));
  }
  if (const GgufValue* m = file.Find("tokenizer.ggml.merges")) {
    if (!m->is_array_of(GgufType::kString)) return fail("tokenizer.ggml.merges", "not an array of strings");
    v.merges = m->strings;
  }
  auto id = [&](const char* key, int64_t* out) -> absl::Status {
    const GgufValue* x = file.Find(key);
    if (x == nullptr) return absl::OkStatus();
    if (!x->is_integer() || x->integer < 0 || static_cast<uint64_t>(x->integer) >= n) {
      return fail(key, absl::StrCat("not a token id below ", n));
    }
    *out = x->integer;
    return absl::OkStatus();
  };
  for (auto [key, out] : {std::pair{"tokenizer.ggml.bos_token_id", &v.bos_id},
                          std::pair{"tokenizer.ggml.eos_token_id", &v.eos_id},
                          std::pair{"tokenizer.ggml.unknown_token_id", &v.unk_id}}) {
    absl::Status st = id(key, out);
    if (!st.ok()) return st;
  }
  if (const GgufValue* p = file.Find("tokenizer.ggml.add_space_prefix"); p && p->type == GgufType::kBool) {
    v.add_space_prefix = p->uinteger != 0;
  }
  return v;
}

}  // namespace sinkscope
