// Models kept loaded between jobs, keyed by the resolved catalog entry.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/device_memory.h"

namespace sinkscope {

class Model;
class Tokenizer;

namespace worker {

/// Payload URL marking a Status as a checkpoint (or tokenizer) file error:
/// the only load failures after which the server marks a model unavailable.
inline constexpr const char kCheckpointErrorPayload[] = "type.sinkscope.dev/checkpoint-error";
/// True when `status` carries kCheckpointErrorPayload.
bool IsCheckpointError(const absl::Status& status);

/// What identifies a loaded model: the resolved catalog entry plus the
/// checkpoint's file identity, so that a changed entry or a replaced file is
/// reloaded.
struct ModelKey {
  std::string name;
  std::string format;          // "llama2c" or "hf"
  std::string path;            // checkpoint file or directory
  std::string tokenizer_path;  // "" = none
  std::string dtype;           // "float32", "bfloat16", "float16"

  /// Canonical string of the fields above.
  std::string ToString() const;
};

/// A model ready to run: weights on the worker's device and its tokenizer.
struct CachedModel {
  ModelKey key;
  std::string file_stamp;        // size/mtime of the checkpoint when loaded
  std::string checkpoint_format;  // as reported by the reader
  std::shared_ptr<const Model> model;
  std::shared_ptr<const Tokenizer> tokenizer;  // null when the entry has none
  /// Why the entry's tokenizer could not be loaded ("" = loaded, or none):
  /// the model still serves jobs on token ids; text jobs fail with this.
  std::string tokenizer_error;
  int64_t uses = 0;
};

/// Snapshot of one cache entry, for GetStatus.
struct CachedModelInfo {
  std::string name, path, dtype;
  int64_t weight_bytes = 0, n_params = 0, uses = 0;
};

/// Thread-safe LRU cache of models on one device.
class ModelCache {
 public:
  /// `device` is a name ParseDevice accepts ("cpu", "cuda:0"); `capacity`
  /// is the number of models kept (at least 1).
  ModelCache(std::string device, size_t capacity);
  ~ModelCache();

  /// Returns the model for `key`, loading it (checkpoint, Model::Create,
  /// tokenizer) when it is not cached or its file changed. `*was_cached` tells
  /// which. Errors of the loaders are returned annotated with the model name.
  /// With a memory budget, least recently used models are evicted first so
  /// that the cached weights (+ `need_weight_bytes` for a model to load) +
  /// `reserve_bytes` (the job's activations) fit in it. `before_load`, when
  /// set, is called once just before a load starts (never on a cache hit).
  absl::StatusOr<std::shared_ptr<CachedModel>> Get(
      const ModelKey& key, bool* was_cached, int64_t need_weight_bytes = 0,
      int64_t reserve_bytes = 0, const std::function<void()>& before_load = nullptr);

  /// Memory budget for weights + a job's activations (0 = unlimited; on a
  /// cuda device, 0 means 90% of the device's capacity).
  void set_budget_bytes(int64_t bytes) { budget_bytes_ = bytes; }
  /// The budget enforced: the configured one, else for cuda 90% of the
  /// device's total memory (cudaMemGetInfo), else 0 (unlimited).
  int64_t effective_budget_bytes() const;
  /// The device's memory now (zeros on cpu).
  DeviceMemory device_memory() const;

  /// Entries, most recently used first.
  std::vector<CachedModelInfo> Snapshot() const;

 private:
  const std::string device_;
  c10::Device parsed_device_{c10::kCPU};
  const size_t capacity_;
  int64_t budget_bytes_ = 0;
  /// Evicts LRU entries (never `keep`) until cached weights + extra fit.
  void EvictLocked(int64_t extra, const CachedModel* keep);
  mutable std::mutex mu_;
  std::vector<std::shared_ptr<CachedModel>> entries_;  // MRU first
};

/// "size:mtime_ns" of a file, or of config.json for a directory; "" if absent.
std::string FileStamp(const std::string& path);

}  // namespace worker
}  // namespace sinkscope
