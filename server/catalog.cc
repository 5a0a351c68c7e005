#include "server/catalog.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "server/config.h"

namespace sinkscope {
namespace server {
namespace {

bool IsValidName(const std::string& name) {
  if (name.empty() || name.size() > 128) return false;
  for (char c : name) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) {
      return false;
    }
  }
  return true;
}

/// Reads the shape of a llama2.c checkpoint from its 7-int32 header.
absl::Status ProbeLlama2c(CatalogEntry* e) {
  std::ifstream in(e->path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", e->path));
  int32_t header[7];
  if (!in.read(reinterpret_cast<char*>(header), sizeof(header))) {
    return absl::DataLossError(absl::StrCat(e->path, ": truncated header"));
  }
  // dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
  if (header[0] <= 0 || header[2] <= 0 || header[6] <= 0 || header[5] == 0) {
    return absl::DataLossError(absl::StrCat(e->path, ": bad header"));
  }
  e->d_model = header[0];
  e->n_layers = header[2];
  e->n_heads = header[3];
  e->vocab_size = std::abs(header[5]);
  e->n_ctx = header[6];
  return absl::OkStatus();
}

/// Reads the shape of a HF model from its config.json.
absl::Status ProbeHf(CatalogEntry* e) {
  const std::string config_path = e->path + "/config.json";
  std::ifstream in(config_path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", config_path));
  std::stringstream text;
  text << in.rdbuf();
  try {
    nlohmann::json j = nlohmann::json::parse(text.str());
    e->vocab_size = j.value("vocab_size", int64_t{0});
    e->n_ctx = j.value("max_position_embeddings", int64_t{0});
    e->n_layers = j.value("num_hidden_layers", int64_t{0});
    e->d_model = j.value("hidden_size", int64_t{0});
    e->n_heads = j.value("num_attention_heads", int64_t{0});
  } catch (const nlohmann::json::exception& ex) {
    return absl::DataLossError(absl::StrCat(config_path, ": ", ex.what()));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::string> CanonicalDtype(const std::string& name) {
  if (name == "float32" || name == "fp32" || name == "f32") return std::string("float32");
  if (name == "bfloat16" || name == "bf16") return std::string("bfloat16");
  if (name == "float16" || name == "fp16" || name == "f16") return std::string("float16");
  return absl::InvalidArgumentError(
      absl::StrCat("unknown dtype \"", name, "\" (expected float32, bfloat16 or float16)"));
}

v1::Dtype DtypeToProto(const std::string& canonical) {
  if (canonical == "float32") return v1::DTYPE_FLOAT32;
  if (canonical == "bfloat16") return v1::DTYPE_BFLOAT16;
  if (canonical == "float16") return v1::DTYPE_FLOAT16;
  return v1::DTYPE_UNSPECIFIED;
}

absl::StatusOr<std::string> DtypeFromProto(int dtype) {
  switch (dtype) {
    case v1::DTYPE_UNSPECIFIED:
      return std::string();
    case v1::DTYPE_FLOAT32:
      return std::string("float32");
    case v1::DTYPE_BFLOAT16:
      return std::string("bfloat16");
    case v1::DTYPE_FLOAT16:
      return std::string("float16");
    default:
      return absl::InvalidArgumentError(absl::StrCat("unknown dtype value ", dtype));
  }
}

v1::ModelInfo CatalogEntry::ToModelInfo() const {
  v1::ModelInfo info;
  info.set_name(name);
  info.set_format(format);
  info.set_description(available ? description
                                  : absl::StrCat(description, description.empty() ? "" : " ",
                                                 "[unavailable: ", unavailable_reason, "]"));
  info.set_default_dtype(DtypeToProto(default_dtype));
  info.set_has_tokenizer(!tokenizer_path.empty());
  info.set_vocab_size(static_cast<int32_t>(vocab_size));
  info.set_n_ctx(static_cast<int32_t>(n_ctx));
  info.set_n_layers(static_cast<int32_t>(n_layers));
  info.set_d_model(static_cast<int32_t>(d_model));
  info.set_n_heads(static_cast<int32_t>(n_heads));
  return info;
}

v1::CorpusInfo CorpusEntry::ToCorpusInfo() const {
  v1::CorpusInfo info;
  info.set_name(name);
  info.set_description(available ? description
                                  : absl::StrCat(description, description.empty() ? "" : " ",
                                                 "[unavailable: ", unavailable_reason, "]"));
  info.set_size_bytes(size_bytes);
  info.set_available(available);
  info.set_has_tokenizer(!tokenizer_path.empty());
  return info;
}

std::string CorpusNameOf(const v1::JobRequest& request) {
  switch (request.params_case()) {
    case v1::JobRequest::kPerplexity:
      return request.perplexity().eval().corpus();
    case v1::JobRequest::kConstantSubstitution:
      return request.constant_substitution().eval().corpus();
    case v1::JobRequest::kSinkAblation:
      return request.sink_ablation().eval().corpus();
    default:
      return "";
  }
}

absl::StatusOr<ModelCatalog> ModelCatalog::LoadFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open catalog ", path));
  std::stringstream text;
  text << in.rdbuf();
  const std::string dir = DirName(ResolvePath("", path));
  ModelCatalog catalog;
  try {
    nlohmann::json j = nlohmann::json::parse(text.str());
    const nlohmann::json& models = j.is_array() ? j : j.at("models");
    if (!models.is_array()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": \"models\" is not an array"));
    }
    for (size_t i = 0; i < models.size(); ++i) {
      const nlohmann::json& m = models[i];
      const std::string where = absl::StrCat(path, ": model ", i);
      CatalogEntry e;
      e.name = m.at("name").get<std::string>();
      if (!IsValidName(e.name)) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": bad name \"", e.name, "\" (letters, digits, . _ -)"));
      }
      e.format = m.at("format").get<std::string>();
      if (e.format != "llama2c" && e.format != "hf") {
        return absl::InvalidArgumentError(
            absl::StrCat(where, " (", e.name, "): format must be llama2c or hf, got ", e.format));
      }
      e.path = ResolvePath(dir, m.at("path").get<std::string>());
      if (m.contains("tokenizer") && !m["tokenizer"].is_null()) {
        e.tokenizer_path = ResolvePath(dir, m["tokenizer"].get<std::string>());
      }
      if (m.contains("default_dtype")) {
        absl::StatusOr<std::string> dtype = CanonicalDtype(m["default_dtype"].get<std::string>());
        if (!dtype.ok()) return absl::InvalidArgumentError(absl::StrCat(where, ": ", dtype.status().message()));
        e.default_dtype = *dtype;
      }
      e.description = m.value("description", std::string());
      for (const CatalogEntry& other : catalog.entries_) {
        if (other.name == e.name) {
          return absl::InvalidArgumentError(absl::StrCat(where, ": duplicate name ", e.name));
        }
      }
      absl::Status probe = e.format == "llama2c" ? ProbeLlama2c(&e) : ProbeHf(&e);
      if (probe.ok() && !e.tokenizer_path.empty()) {
        struct stat st;
        if (stat(e.tokenizer_path.c_str(), &st) != 0) {
          probe = absl::NotFoundError(absl::StrCat("cannot open tokenizer ", e.tokenizer_path));
        }
      }
      e.available = probe.ok();
      if (!probe.ok()) e.unavailable_reason = std::string(probe.message());
      catalog.entries_.push_back(std::move(e));
    }
    const nlohmann::json empty = nlohmann::json::array();
    const nlohmann::json& corpora = !j.is_array() && j.contains("corpora") ? j["corpora"] : empty;
    if (!corpora.is_array()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": \"corpora\" is not an array"));
    }
    for (size_t i = 0; i < corpora.size(); ++i) {
      const nlohmann::json& m = corpora[i];
      const std::string where = absl::StrCat(path, ": corpus ", i);
      CorpusEntry e;
      e.name = m.at("name").get<std::string>();
      if (!IsValidName(e.name)) {
        return absl::InvalidArgumentError(
            absl::StrCat(where, ": bad name \"", e.name, "\" (letters, digits, . _ -)"));
      }
      for (const CorpusEntry& other : catalog.corpora_) {
        if (other.name == e.name) {
          return absl::InvalidArgumentError(absl::StrCat(where, ": duplicate name ", e.name));
        }
      }
      e.path = ResolvePath(dir, m.at("path").get<std::string>());
      if (m.contains("tokenizer") && !m["tokenizer"].is_null()) {
        e.tokenizer_path = ResolvePath(dir, m["tokenizer"].get<std::string>());
      }
      e.description = m.value("description", std::string());
      struct stat st;
      // Reasons are shown to clients: no paths in them.
      if (stat(e.path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
        e.unavailable_reason = "its text file cannot be read";
      } else if (st.st_size == 0) {
        e.unavailable_reason = "its text file is empty";
      } else if (!e.tokenizer_path.empty() && stat(e.tokenizer_path.c_str(), &st) != 0) {
        e.unavailable_reason = "its tokenizer cannot be read";
      } else {
        stat(e.path.c_str(), &st);
        e.size_bytes = st.st_size;
        e.available = true;
      }
      catalog.corpora_.push_back(std::move(e));
    }
  } catch (const nlohmann::json::exception& ex) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", ex.what()));
  }
  std::sort(catalog.entries_.begin(), catalog.entries_.end(),
            [](const CatalogEntry& a, const CatalogEntry& b) { return a.name < b.name; });
  std::sort(catalog.corpora_.begin(), catalog.corpora_.end(),
            [](const CorpusEntry& a, const CorpusEntry& b) { return a.name < b.name; });
  return catalog;
}

const CorpusEntry* ModelCatalog::FindCorpus(const std::string& name) const {
  for (const CorpusEntry& e : corpora_) {
    if (e.name == name) return &e;
  }
  return nullptr;
}

const CatalogEntry* ModelCatalog::Find(const std::string& name) const {
  for (const CatalogEntry& e : entries_) {
    if (e.name == name) return &e;
  }
  return nullptr;
}

}  // namespace server
}  // namespace sinkscope
