#include "worker/model_cache.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <exception>
#include <utility>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "worker/engine/checkpoint.h"
#include "worker/engine/model.h"
#include "common/status_macros.h"
#include "worker/engine/tokenizer.h"

namespace sinkscope {
namespace worker {

std::string ModelKey::ToString() const {
  return absl::StrCat(name, "|", format, "|", path, "|", tokenizer_path, "|", dtype);
}

std::string FileStamp(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) != 0) return "";
  if (S_ISDIR(st.st_mode)) {
    std::string config = path + "/config.json";
    if (stat(config.c_str(), &st) != 0) return "dir";
  }
  return absl::StrCat(st.st_size, ":", st.st_mtim.tv_sec, ".", st.st_mtim.tv_nsec);
}

ModelCache::ModelCache(std::string device, size_t capacity)
    : device_(std::move(device)), capacity_(std::max<size_t>(1, capacity)) {
  absl::StatusOr<c10::Device> d = ParseDevice(device_);
  if (d.ok()) parsed_device_ = *d;  // a bad name fails at the first load, with its message
}

DeviceMemory ModelCache::device_memory() const { return QueryDeviceMemory(parsed_device_); }

int64_t ModelCache::effective_budget_bytes() const {
  if (budget_bytes_ > 0) return budget_bytes_;
  if (!parsed_device_.is_cuda()) return 0;
  const DeviceMemory dm = QueryDeviceMemory(parsed_device_);
  return dm.total_bytes / 10 * 9;
}

ModelCache::~ModelCache() = default;

bool IsCheckpointError(const absl::Status& status) {
  return status.GetPayload(kCheckpointErrorPayload).has_value();
}

namespace {

absl::StatusOr<std::shared_ptr<CachedModel>> Load(const ModelKey& key, const std::string& device_name,
                                                  const std::string& stamp) {
  // Errors of the checkpoint or tokenizer file carry kCheckpointErrorPayload;
  // the device, the dtype and memory are the job's problem, not the file's.
  auto file_error = [](absl::Status s) {
    s.SetPayload(kCheckpointErrorPayload, absl::Cord("1"));
    return s;
  };
  try {
    ASSIGN_OR_RETURN(c10::Device device, ParseDevice(device_name));
    ASSIGN_OR_RETURN(c10::ScalarType dtype, ParseDtype(key.dtype));
    // Placed at load: each weight copied once into its final dtype and device,
    // the file's pages returned as it goes (peak = the weights + one chunk).
    absl::StatusOr<Checkpoint> read = LoadCheckpoint(key.path, LoadTarget{device, dtype});
    if (!read.ok()) return file_error(read.status());
    Checkpoint ckpt = *std::move(read);
    if (absl::Status s = ckpt.config.Validate(); !s.ok()) return file_error(s);
    ASSIGN_OR_RETURN(std::unique_ptr<Model> model, Model::Create(ckpt, device, dtype));
    auto entry = std::make_shared<CachedModel>();
    entry->key = key;
    entry->file_stamp = stamp;
    entry->checkpoint_format = ckpt.format;
    if (!key.tokenizer_path.empty()) {
      // A tokenizer that cannot be loaded leaves the model serving jobs on
      // token ids; jobs with text fail naming the tokenizer (no path).
      absl::StatusOr<std::unique_ptr<Tokenizer>> tok =
          LoadTokenizer(key.tokenizer_path, model->config().d_vocab);
      absl::Status problem = tok.status();
      if (problem.ok()) {
        problem = CheckTokenizerVocab(**tok, model->config().d_vocab, /*allow_padding=*/true,
                                      absl::StrCat("model ", key.name, "'s tokenizer"));
      }
      if (problem.ok()) {
        entry->tokenizer = *std::move(tok);
      } else {
        std::fprintf(stderr, "sinkscope-worker: model %s: tokenizer %s: %s\n", key.name.c_str(),
                     key.tokenizer_path.c_str(), problem.ToString().c_str());
        entry->tokenizer_error = absl::StrCat(
            "model ", key.name, "'s tokenizer cannot be loaded (",
            absl::StrReplaceAll(problem.message(), {{key.tokenizer_path, "<tokenizer>"}}),
            "): jobs on token ids still run; send --ids");
      }
    }
    entry->model = std::move(model);
    return entry;
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("exception while loading: ", e.what()));
  }
}

}  // namespace

void ModelCache::EvictLocked(int64_t extra, const CachedModel* keep) {
  const int64_t budget = effective_budget_bytes();
  if (budget <= 0) return;
  bool evicted = false;
  auto cached = [&] {
    int64_t sum = 0;
    for (const auto& e : entries_) sum += e->model->weight_bytes();
    return sum;
  };
  while (cached() + extra > budget) {
    size_t victim = entries_.size();
    for (size_t i = entries_.size(); i-- > 0;) {
      if (entries_[i].get() != keep) {
        victim = i;
        break;
      }
    }
    if (victim == entries_.size()) return;
    std::fprintf(stderr,
                 "sinkscope-worker: evicting model %s (%lld weight bytes) to stay within the "
                 "memory budget of %lld bytes\n",
                 entries_[victim]->key.name.c_str(),
                 static_cast<long long>(entries_[victim]->model->weight_bytes()),
                 static_cast<long long>(budget));
    entries_.erase(entries_.begin() + victim);
    evicted = true;
  }
  // The evicted weights' blocks stay in the caching allocator until returned:
  // give them back so that the next model (or another process) can use them.
  if (evicted) ReleaseCachedDeviceMemory(parsed_device_);
}

absl::StatusOr<std::shared_ptr<CachedModel>> ModelCache::Get(const ModelKey& key,
                                                             bool* was_cached,
                                                             int64_t need_weight_bytes,
                                                             int64_t reserve_bytes,
                                                             const std::function<void()>& before_load) {
  const std::string stamp = FileStamp(key.path);
  const std::string key_str = key.ToString();
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (size_t i = 0; i < entries_.size(); ++i) {
      if (entries_[i]->key.ToString() != key_str) continue;
      if (entries_[i]->file_stamp == stamp) {
        std::shared_ptr<CachedModel> hit = entries_[i];
        entries_.erase(entries_.begin() + i);
        entries_.insert(entries_.begin(), hit);
        ++hit->uses;
        EvictLocked(reserve_bytes, hit.get());
        if (was_cached) *was_cached = true;
        return hit;
      }
      entries_.erase(entries_.begin() + i);  // file changed: reload
      break;
    }
  }
  if (was_cached) *was_cached = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    EvictLocked(need_weight_bytes + reserve_bytes, nullptr);
  }
  // Loading happens outside the lock (the worker runs one job at a time, so
  // two loads of the same key do not race in practice; if they did, both
  // would succeed and the later one would win).
  if (before_load) before_load();
  absl::StatusOr<std::shared_ptr<CachedModel>> loaded = Load(key, device_, stamp);
  if (!loaded.ok()) {
    // The full error (with paths) goes to the log; the job's message names
    // the model and the problem, never server paths. A checkpoint that
    // cannot be read is a server-side problem, not the client's:
    // FAILED_PRECONDITION with kCheckpointErrorPayload (the server then
    // marks the model unavailable). Other failures (dtype or device the
    // worker cannot run, out of memory) keep their code: the job fails alone.
    const absl::Status& error = loaded.status();
    std::fprintf(stderr, "sinkscope-worker: loading model %s (%s): %s\n", key.name.c_str(),
                 key.path.c_str(), error.ToString().c_str());
    std::string message(error.message());
    std::vector<std::pair<std::string, std::string>> paths;
    if (!key.path.empty()) paths.emplace_back(key.path, "<checkpoint>");
    if (!key.tokenizer_path.empty()) paths.emplace_back(key.tokenizer_path, "<tokenizer>");
    message = absl::StrReplaceAll(message, paths);
    message = absl::StrCat("loading model ", key.name, ": ", message);
    if (IsCheckpointError(error)) {
      absl::Status out = absl::FailedPreconditionError(message);
      out.SetPayload(kCheckpointErrorPayload, absl::Cord("1"));
      return out;
    }
    return absl::Status(error.code() == absl::StatusCode::kOk ? absl::StatusCode::kInternal
                                                              : error.code(),
                        message);
  }
  std::lock_guard<std::mutex> lock(mu_);
  (*loaded)->uses = 1;
  entries_.insert(entries_.begin(), *loaded);
  if (entries_.size() > capacity_) {
    while (entries_.size() > capacity_) entries_.pop_back();
    ReleaseCachedDeviceMemory(parsed_device_);
  }
  EvictLocked(reserve_bytes, loaded->get());
  return *loaded;
}

std::vector<CachedModelInfo> ModelCache::Snapshot() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<CachedModelInfo> out;
  for (const auto& e : entries_) {
    CachedModelInfo info;
    info.name = e->key.name;
    info.path = e->key.path;
    info.dtype = e->key.dtype;
    info.weight_bytes = e->model->weight_bytes();
    info.n_params = e->model->n_params();
    info.uses = e->uses;
    out.push_back(info);
  }
  return out;
}

}  // namespace worker
}  // namespace sinkscope
