#include "server/catalog.h"

#include <sys/stat.h>

#include <algorithm>
#include <filesystem>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "common/job_types.h"
#include "common/model_config.h"
#include "server/config.h"
#include "common/gguf.h"
#include "common/status_macros.h"

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

/// A model name: a valid name, or a checkpoint of a run "RUN@STEP" (STEP
/// decimal digits; profile comparisons expand "RUN@*").
bool IsValidModelName(const std::string& name) {
  const size_t at = name.rfind('@');
  if (at == std::string::npos) return IsValidName(name);
  const std::string step = name.substr(at + 1);
  return IsValidName(name.substr(0, at)) && !step.empty() && step.size() <= 18 &&
         step.find_first_not_of("0123456789") == std::string::npos;
}

/// Upper bounds of a believable model (far above any real one).
constexpr int64_t kMaxDim = 1 << 17;        // d_model, head_dim
constexpr int64_t kMaxHidden = 1 << 20;     // MLP width
constexpr int64_t kMaxLayers = 4096;
constexpr int64_t kMaxHeads = 4096;
constexpr int64_t kMaxVocab = 1 << 24;
constexpr int64_t kMaxCtx = 1 << 24;

/// The shape fields a probe reads besides the public ones (0 = absent).
struct ExtraShape {
  int64_t n_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t hidden = 0;
};

// The entry's shape from a successful probe, or unavailable with the probe's
// reason (and no nonsense left in its public shape).
void SettleProbe(const absl::Status& probe, const ExtraShape& extra, CatalogEntry* e) {
  e->available = probe.ok();
  if (probe.ok()) {
    e->d_ffn = extra.hidden > 0 ? extra.hidden : 0;
    e->n_kv_heads = extra.n_kv_heads > 0 ? extra.n_kv_heads : e->n_heads;
    e->d_head = extra.head_dim > 0 ? extra.head_dim : e->d_model / e->n_heads;
  } else {
    e->unavailable_reason = std::string(probe.message());
    e->vocab_size = e->n_ctx = e->n_layers = e->d_model = e->n_heads = 0;
  }
}

/// Checks that a probed shape makes sense. Messages name the field, never a path.
absl::Status CheckShape(const CatalogEntry& e, const ExtraShape& x) {
  auto bad = [](const std::string& what) { return absl::DataLossError(what); };
  auto in_range = [&](const char* field, int64_t v, int64_t max) -> absl::Status {
    if (v <= 0) return bad(absl::StrCat(field, " is ", v, "; it must be positive"));
    if (v > max) return bad(absl::StrCat(field, " is ", v, ", more than ", max));
    return absl::OkStatus();
  };
  for (absl::Status s : {in_range("d_model", e.d_model, kMaxDim),
                         in_range("n_layers", e.n_layers, kMaxLayers),
                         in_range("n_heads", e.n_heads, kMaxHeads),
                         in_range("vocab_size", e.vocab_size, kMaxVocab),
                         in_range("n_ctx", e.n_ctx, kMaxCtx)}) {
    if (!s.ok()) return s;
  }
  if (x.head_dim != 0) {
    RETURN_IF_ERROR(in_range("head_dim", x.head_dim, kMaxDim));
  } else if (e.d_model % e.n_heads != 0) {
    return bad(absl::StrCat("n_heads ", e.n_heads, " does not divide d_model ", e.d_model,
                            " (and no head_dim is given)"));
  }
  if (x.n_kv_heads != 0) {
    RETURN_IF_ERROR(in_range("n_kv_heads", x.n_kv_heads, kMaxHeads));
    if (e.n_heads % x.n_kv_heads != 0) {
      return bad(absl::StrCat("n_kv_heads ", x.n_kv_heads, " does not divide n_heads ", e.n_heads));
    }
  }
  if (x.hidden != 0) {
    RETURN_IF_ERROR(in_range("intermediate size", x.hidden, kMaxHidden));
  }
  return absl::OkStatus();
}

/// Reads the shape of a llama2.c checkpoint from its 7-int32 header.
/// Messages never hold the path (they are shown to clients).
absl::Status ProbeLlama2c(CatalogEntry* e, ExtraShape* x) {
  std::ifstream in(e->path, std::ios::binary);
  if (!in) return absl::NotFoundError("its checkpoint file cannot be read");
  int32_t header[7];
  if (!in.read(reinterpret_cast<char*>(header), sizeof(header))) {
    return absl::DataLossError("its checkpoint has a truncated header");
  }
  // dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len
  e->d_model = header[0];
  e->n_layers = header[2];
  e->n_heads = header[3];
  // A negative vocab_size flags an unshared classifier.
  e->vocab_size = std::abs(static_cast<int64_t>(header[5]));
  e->n_ctx = header[6];
  x->hidden = header[1] == 0 ? -1 : header[1];
  x->n_kv_heads = header[4] == 0 ? -1 : header[4];
  return absl::OkStatus();
}

/// Reads the shape of a HF model from its config.json.
absl::Status ProbeHf(CatalogEntry* e, ExtraShape* x) {
  const std::string config_path = e->path + "/config.json";
  std::ifstream in(config_path);
  if (!in) return absl::NotFoundError("its config.json cannot be read");
  std::stringstream text;
  text << in.rdbuf();
  // Families the engine knows: the engine's own parser and family table
  // (common/model_config.h), so the catalog shows what the worker will load
  // (GPT-2's n_embd / n_layer, Gemma's head_dim, ...).
  absl::StatusOr<ModelConfig> c = ParseHfConfig(text.str(), "config.json");
  if (c.ok()) {
    e->vocab_size = c->d_vocab;
    e->n_ctx = c->n_ctx;
    e->n_layers = c->n_layers;
    e->d_model = c->d_model;
    e->n_heads = c->n_heads;
    x->n_kv_heads = c->n_kv_heads;
    x->hidden = c->d_ffn;
    x->head_dim = c->d_head;
    return absl::OkStatus();
  }
  // A config that names its family is read by the worker with the same
  // parser: an unsupported model_type (or a field it lacks) fails every job,
  // so the entry is unavailable now, with the parser's reason (no path).
  try {
    const nlohmann::json j = nlohmann::json::parse(text.str());
    if (j.is_object() && j.contains("model_type")) {
      return absl::FailedPreconditionError(std::string(c.status().message()));
    }
  } catch (const nlohmann::json::exception&) {
  }
  // Otherwise the raw llama-style keys, checked field by field below.
  try {
    nlohmann::json j = nlohmann::json::parse(text.str());
    // A present but null / non-integer field is an error, not a default.
    auto field = [&](const char* key, int64_t* out) {
      if (!j.contains(key) || j[key].is_null()) return;
      const nlohmann::json& v = j[key];
      if (!v.is_number_integer()) {
        throw std::invalid_argument(absl::StrCat("config.json: ", key, " is not an integer"));
      }
      *out = v.get<int64_t>();
      if (*out == 0) *out = -1;  // present and zero: invalid, unlike absent
    };
    e->n_ctx = 2048;  // the engine's default when absent
    field("vocab_size", &e->vocab_size);
    field("max_position_embeddings", &e->n_ctx);
    field("num_hidden_layers", &e->n_layers);
    field("hidden_size", &e->d_model);
    field("num_attention_heads", &e->n_heads);
    field("num_key_value_heads", &x->n_kv_heads);
    field("intermediate_size", &x->hidden);
    field("head_dim", &x->head_dim);
  } catch (const nlohmann::json::exception& ex) {
    return absl::DataLossError(absl::StrCat("its config.json is not valid JSON: ", ex.what()));
  } catch (const std::invalid_argument& ex) {
    return absl::DataLossError(ex.what());
  }
  return absl::OkStatus();
}

/// Reads the shape of a GGUF checkpoint from its metadata (no tensor data).
absl::Status ProbeGguf(CatalogEntry* e, ExtraShape* x) {
  struct stat st;
  if (stat(e->path.c_str(), &st) != 0) return absl::NotFoundError("its GGUF file cannot be read");
  absl::StatusOr<GgufFile> f = ReadGgufFile(e->path);
  // Reasons are shown to clients: the parser's message starts with the path.
  if (!f.ok()) return absl::DataLossError("its GGUF file is malformed");
  absl::StatusOr<GgufShape> s = GgufModelShape(*f);
  if (!s.ok()) return absl::DataLossError(absl::StrCat("its GGUF file: ", s.status().message()));
  e->d_model = s->d_model;
  e->n_layers = s->n_layers;
  e->n_heads = s->n_heads;
  e->vocab_size = s->d_vocab;
  e->n_ctx = s->n_ctx;
  x->n_kv_heads = s->n_kv_heads;
  x->head_dim = s->d_head;
  x->hidden = s->d_ffn;
  // The file's own vocabulary is the model's tokenizer unless one is named.
  if (e->tokenizer_path.empty() && s->has_vocab) e->tokenizer_path = e->path;
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
  info.set_available(available);
  if (!available) info.set_unavailable_reason(unavailable_reason);
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

std::vector<std::string> ExpandCheckpoints(const ModelCatalog& catalog, const std::string& name) {
  if (name.size() < 2 || name.compare(name.size() - 2, 2, "@*") != 0) return {name};
  const std::string prefix = name.substr(0, name.size() - 1);  // "RUN@"
  std::vector<std::pair<uint64_t, std::string>> steps;
  for (const CatalogEntry& e : catalog.entries()) {
    if (e.name.size() <= prefix.size() || e.name.compare(0, prefix.size(), prefix) != 0) continue;
    const std::string step = e.name.substr(prefix.size());
    if (step.size() > 18 || step.find_first_not_of("0123456789") != std::string::npos) continue;
    steps.emplace_back(std::stoull(step), e.name);
  }
  std::sort(steps.begin(), steps.end());
  std::vector<std::string> out;
  for (auto& [step, n] : steps) out.push_back(std::move(n));
  return out;
}

namespace {

/// `path` made canonical when it exists (symlinks, "..": one file, one name).
std::string CanonicalPath(const std::string& path) {
  std::error_code ec;
  std::filesystem::path p = std::filesystem::weakly_canonical(path, ec);
  return ec ? path : p.string();
}

}  // namespace

absl::Status CheckCorpusTokenizer(const CatalogEntry& model, const CorpusEntry& corpus) {
  if (!model.tokenizer_path.empty()) return absl::OkStatus();
  if (corpus.tokenizer_path.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model ", model.name, " has no tokenizer and corpus ", corpus.name,
        " brings none; send token ids as sequences (--ids)"));
  }
  const std::string tok = CanonicalPath(corpus.tokenizer_path);
  for (const std::string& c : model.compatible_tokenizers) {
    if (c == tok) return absl::OkStatus();
  }
  const std::string file = std::filesystem::path(corpus.tokenizer_path).filename().string();
  return absl::InvalidArgumentError(absl::StrCat(
      "model ", model.name, " has no tokenizer of its own, and corpus ", corpus.name,
      "'s tokenizer (", file, ") is not declared compatible with model ", model.name,
      " (catalog: the model's compatible_tokenizers); text read through another model's "
      "pieces gives wrong ids. Use a model with a tokenizer, or send token ids (--ids)"));
}

std::string CorpusNameOf(const v1::JobRequest& request) {
  const JobTypeDescriptor* job = JobTypeOfRequest(request);
  if (job == nullptr || !job->reads_corpus()) return "";
  return job->eval_corpus(request)->corpus();
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
      // One bad entry does not stop the others: without a usable name it is
      // left out (a warning), otherwise it is listed unavailable with why.
      CatalogEntry e;
      if (!m.is_object() || !m.contains("name") || !m["name"].is_string() ||
          !IsValidModelName(m["name"].get<std::string>())) {
        catalog.warnings_.push_back(absl::StrCat(
            where, ": left out: \"name\" must be a string of letters, digits, . _ -, or a run's checkpoint RUN@STEP (got ",
            m.is_object() && m.contains("name") ? m["name"].dump() : std::string("none"), ")"));
        continue;
      }
      e.name = m["name"].get<std::string>();
      bool duplicate = false;
      for (const CatalogEntry& other : catalog.entries_) duplicate = duplicate || other.name == e.name;
      if (duplicate) {
        catalog.warnings_.push_back(absl::StrCat(where, ": left out: duplicate name ", e.name));
        continue;
      }
      try {
        e.format = m.at("format").get<std::string>();
        if (e.format != "llama2c" && e.format != "hf" && e.format != "gguf") {
          throw std::invalid_argument(absl::StrCat("format must be llama2c, hf or gguf, got ", e.format));
        }
        e.path = ResolvePath(dir, m.at("path").get<std::string>());
        if (m.contains("tokenizer") && !m["tokenizer"].is_null()) {
          e.tokenizer_path = ResolvePath(dir, m["tokenizer"].get<std::string>());
        }
        if (m.contains("compatible_tokenizers")) {
          for (const std::string& t : m["compatible_tokenizers"].get<std::vector<std::string>>()) {
            e.compatible_tokenizers.push_back(CanonicalPath(ResolvePath(dir, t)));
          }
        }
        if (m.contains("default_dtype")) {
          absl::StatusOr<std::string> dtype = CanonicalDtype(m["default_dtype"].get<std::string>());
          if (!dtype.ok()) throw std::invalid_argument(std::string(dtype.status().message()));
          e.default_dtype = *dtype;
        }
        e.description = m.value("description", std::string());
      } catch (const std::exception& ex) {
        // Reasons are shown to clients: the JSON library's message, no path.
        e.available = false;
        e.unavailable_reason = absl::StrCat("its catalog entry is malformed: ", ex.what());
        catalog.warnings_.push_back(absl::StrCat(where, " (", e.name, "): ", e.unavailable_reason));
        catalog.entries_.push_back(std::move(e));
        continue;
      }
      // Reasons are shown to clients: no paths in them (the server logs the
      // entry's path next to the reason).
      ExtraShape extra;
      // A HF directory's own tokenizer.json / tokenizer.model, unless one is named.
      if (e.format == "hf" && e.tokenizer_path.empty()) {
        for (const char* name : {"/tokenizer.json", "/tokenizer.model"}) {
          struct stat st;
          if (stat((e.path + name).c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
            e.tokenizer_path = e.path + name;
            break;
          }
        }
      }
      absl::Status probe = e.format == "llama2c" ? ProbeLlama2c(&e, &extra)
                           : e.format == "gguf"  ? ProbeGguf(&e, &extra)
                                                 : ProbeHf(&e, &extra);
      if (probe.ok()) probe = CheckShape(e, extra);
      if (probe.ok() && !e.tokenizer_path.empty()) {
        struct stat st;
        if (stat(e.tokenizer_path.c_str(), &st) != 0) {
          probe = absl::NotFoundError("its tokenizer file cannot be read");
        }
      }
      SettleProbe(probe, extra, &e);
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

ModelCatalog ModelCatalog::WithRunCheckpoints(const std::string& user_runs_dir) const {
  ModelCatalog out = *this;
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::directory_iterator runs(user_runs_dir, ec);
  if (ec) return out;
  for (const fs::directory_entry& run : runs) {
    const std::string run_name = run.path().filename().string();
    if (!run.is_directory(ec) || !IsValidName(run_name)) continue;
    // The run's copy of the tokenizer its corpus was read with (worker/train_job.cc).
    std::string tokenizer;
    for (const char* name : {"tokenizer.json", "tokenizer.model", "tokenizer.bin"}) {
      if (fs::is_regular_file(run.path() / name, ec)) {
        tokenizer = (run.path() / name).string();
        break;
      }
    }
    fs::directory_iterator steps(run.path(), ec);
    if (ec) continue;
    for (const fs::directory_entry& step : steps) {
      const std::string dir = step.path().filename().string();
      if (dir.size() < 6 || dir.compare(0, 5, "step-") != 0 ||
          dir.find_first_not_of("0123456789", 5) != std::string::npos || dir.size() > 5 + 18) {
        continue;
      }
      if (!fs::is_regular_file(step.path() / "trainer_state.json", ec)) continue;
      CatalogEntry e;
      e.name = run_name + "@" + dir.substr(5);
      if (out.Find(e.name) != nullptr) continue;
      e.format = "hf";
      e.path = step.path().string();
      e.tokenizer_path = tokenizer;
      e.description = "your training run " + run_name + ", step " + dir.substr(5);
      ExtraShape extra;
      absl::Status probe = ProbeHf(&e, &extra);
      if (probe.ok()) probe = CheckShape(e, extra);
      SettleProbe(probe, extra, &e);
      out.entries_.push_back(std::move(e));
    }
  }
  std::sort(out.entries_.begin(), out.entries_.end(),
            [](const CatalogEntry& a, const CatalogEntry& b) { return a.name < b.name; });
  return out;
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
