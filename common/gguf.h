// GGUF container reader (no libtorch): header, metadata and tensor table.
//
// Format (ggml-org/ggml docs/gguf.md, llama.cpp gguf-py/gguf/constants.py),
// little-endian throughout:
//   uint32 magic "GGUF", uint32 version (2 or 3; version 1 used 32-bit counts
//   and is refused), uint64 tensor_count, uint64 metadata_kv_count,
//   metadata_kv_count x {string key, uint32 value_type, value},
//   tensor_count x {string name, uint32 n_dims, uint64 ne[n_dims] (ne[0] is the
//   contiguous dimension), uint32 ggml_type, uint64 offset},
//   padding to `general.alignment` (default 32), then the tensor data; each
//   tensor's offset is relative to the start of the data and aligned.
//   A string is uint64 length + bytes (no terminator); an array is uint32
//   element type + uint64 count + elements.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace sinkscope {

/// GGUF metadata value types (gguf.md `gguf_metadata_value_type`).
enum class GgufType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

/// One metadata value. Scalars: numeric ones in `number` (integers up to 2^53
/// exactly; `uinteger`/`integer` keep 64-bit integers exactly), strings in
/// `string`. Arrays (one level; nested arrays are refused): `array_type`,
/// and `strings` or `numbers`.
struct GgufValue {
  GgufType type = GgufType::kUint8;
  double number = 0;
  uint64_t uinteger = 0;
  int64_t integer = 0;
  std::string string;
  GgufType array_type = GgufType::kUint8;
  std::vector<std::string> strings;
  std::vector<double> numbers;

  bool is_integer() const;  // any integer scalar type
  bool is_array_of(GgufType t) const { return type == GgufType::kArray && array_type == t; }
};

/// ggml tensor types as stored in GGUF (ggml.h `enum ggml_type`).
struct GgmlTypeInfo {
  const char* name;     // "F32", "Q8_0", ...
  int64_t block_size;   // elements per block (1 for plain types)
  int64_t type_size;    // bytes per block
};
/// Traits of ggml type `type`, or nullptr for a number ggml does not define.
const GgmlTypeInfo* GgmlType(uint32_t type);
/// "Q5_K" for a known type, "type 77" for an unknown number.
std::string GgmlTypeName(uint32_t type);

constexpr uint32_t kGgmlF32 = 0, kGgmlF16 = 1, kGgmlQ4_0 = 2, kGgmlQ8_0 = 8, kGgmlQ4_K = 12,
                   kGgmlBF16 = 30;

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> ne;  // ggml order: ne[0] contiguous (torch shape reversed)
  uint32_t type = 0;
  uint64_t offset = 0;      // from the start of the data section
  uint64_t nbytes = 0;
  int64_t numel() const;
};

/// A parsed GGUF header. Tensor data are at `data_offset + info.offset` of the
/// buffer given to ParseGguf, and inside it (checked).
struct GgufFile {
  uint32_t version = 0;
  std::map<std::string, GgufValue> metadata;
  std::vector<GgufTensorInfo> tensors;
  uint64_t alignment = 32;
  uint64_t data_offset = 0;

  const GgufValue* Find(const std::string& key) const;
};

/// Parses the header of a whole GGUF file held in memory (`size` bytes).
/// `source` names it in messages. Errors (InvalidArgument, naming the file,
/// the key or tensor, and the problem): bad magic, unsupported version,
/// counts or strings past the end, unknown value or tensor type, nested
/// arrays, duplicate keys or tensors, bad alignment, more than 4 dimensions,
/// a row not a whole number of blocks, misaligned offsets, tensor data past
/// the end of the file (truncated) or overlapping.
absl::StatusOr<GgufFile> ParseGguf(const uint8_t* data, size_t size, const std::string& source);

/// Maps and parses a GGUF file's header (the mapping is released before
/// returning). NotFound / InvalidArgument naming `path`.
absl::StatusOr<GgufFile> ReadGgufFile(const std::string& path);

/// The shape a catalog needs, from `<general.architecture>.*` and the
/// token_embd.weight / output.weight entries (no tensor data read).
struct GgufShape {
  std::string architecture;
  int64_t d_model = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0, d_ffn = 0, d_vocab = 0;
  int64_t n_ctx = 2048, d_head = 0;
  bool tied = false;
  bool has_vocab = false;  // tokenizer.ggml.tokens present
};
/// InvalidArgument naming the missing key or tensor.
absl::StatusOr<GgufShape> GgufModelShape(const GgufFile& file);

/// Byte-level reading of a GGUF file's tokenizer: the `tokenizer.ggml.*` keys.
struct GgufVocab {
  std::string model;  // tokenizer.ggml.model: "gpt2" (byte-level BPE), "llama" (SPM)
  std::string pre;    // tokenizer.ggml.pre ("" when absent)
  std::vector<std::string> tokens;
  std::vector<float> scores;       // empty when absent
  std::vector<int32_t> token_types;  // empty when absent; 1 normal ... 6 byte
  std::vector<std::string> merges;   // "left right", by rank
  int64_t bos_id = -1, eos_id = -1, unk_id = -1;
  bool add_space_prefix = true;
};
/// Extracts the vocabulary; InvalidArgument naming `source` and the key when
/// tokens are missing or arrays have the wrong type or length.
absl::StatusOr<GgufVocab> ReadGgufVocab(const GgufFile& file, const std::string& source);

}  // namespace sinkscope
