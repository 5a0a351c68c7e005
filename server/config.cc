#include "server/config.h"
#include "server/sql_db.h"

#include <unistd.h>

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace sinkscope {
namespace server {

std::string DirName(const std::string& path) {
  size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string ResolvePath(const std::string& base_dir, const std::string& path) {
  if (path.empty() || path[0] == '/') return path;
  std::string base = base_dir;
  if (base.empty() || base[0] != '/') {
    char cwd[4096];
    if (getcwd(cwd, sizeof(cwd)) == nullptr) return path;
    base = base.empty() || base == "." ? std::string(cwd) : absl::StrCat(cwd, "/", base);
  }
  return absl::StrCat(base, "/", path);
}

absl::StatusOr<std::vector<std::string>> ParseWorkerDevices(const std::string& list) {
  std::vector<std::string> out;
  for (absl::string_view item : absl::StrSplit(list, ',')) {
    item = absl::StripAsciiWhitespace(item);
    if (item.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("workers: empty device in \"", list, "\""));
    }
    out.emplace_back(item);
  }
  return out;
}

absl::StatusOr<ServerConfig> LoadServerConfigFile(const std::string& path, ServerConfig config) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open config file ", path));
  std::stringstream text;
  text << in.rdbuf();
  const std::string dir = DirName(path);
  bool database_set = false;
  try {
    nlohmann::json j = nlohmann::json::parse(text.str());
    if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));
    for (auto it = j.begin(); it != j.end(); ++it) {
      const std::string& key = it.key();
      const nlohmann::json& v = it.value();
      if (key == "database") database_set = true;
      if (key == "listen") {
        config.listen = v.get<std::string>();
      } else if (key == "database") {
        const std::string db = v.get<std::string>();
        // A PostgreSQL URI is not a path.
        config.database = IsPostgresUrl(db) ? db : ResolvePath(dir, db);
      } else if (key == "workers") {
        if (v.is_string()) {
          absl::StatusOr<std::vector<std::string>> devices = ParseWorkerDevices(v.get<std::string>());
          if (!devices.ok()) return devices.status();
          config.worker_devices = *devices;
        } else {
          config.worker_devices = v.get<std::vector<std::string>>();
        }
      } else if (key == "catalog") {
        config.catalog = ResolvePath(dir, v.get<std::string>());
      } else if (key == "worker_binary") {
        config.worker_binary = ResolvePath(dir, v.get<std::string>());
      } else if (key == "runtime_dir") {
        config.runtime_dir = ResolvePath(dir, v.get<std::string>());
      } else if (key == "max_attempts") {
        config.max_attempts = v.get<int>();
      } else if (key == "drain_timeout_s") {
        config.drain_timeout_s = v.get<int>();
      } else if (key == "max_request_bytes") {
        config.max_request_bytes = v.get<int64_t>();
      } else if (key == "max_sequences") {
        config.max_sequences = v.get<int>();
      } else if (key == "max_total_tokens") {
        config.max_total_tokens = v.get<int64_t>();
      } else if (key == "worker_args") {
        config.worker_args = v.get<std::vector<std::string>>();
      } else if (key == "worker_threads") {
        config.worker_threads = v.get<int>();
      } else if (key == "sync_full") {
        config.sync_full = v.get<bool>();
      } else if (key == "auth") {
        config.auth = v.get<std::string>();
      } else if (key == "tls_cert") {
        config.tls_cert = ResolvePath(dir, v.get<std::string>());
      } else if (key == "tls_key") {
        config.tls_key = ResolvePath(dir, v.get<std::string>());
      } else if (key == "allow_insecure_remote") {
        config.allow_insecure_remote = v.get<bool>();
      } else if (key == "metrics_listen") {
        config.metrics_listen = v.get<std::string>();
      } else if (key == "metrics_max_users") {
        config.metrics_max_users = v.get<int>();
      } else if (key == "user_weights") {
        config.user_weights = v.get<std::map<std::string, double>>();
      } else if (key == "max_queued_per_user") {
        config.max_queued_per_user = v.get<int>();
      } else if (key == "max_running_per_user") {
        config.max_running_per_user = v.get<int>();
      } else if (key == "worker_memory_bytes") {
        if (v.is_array()) {
          config.worker_memory_bytes = v.get<std::vector<int64_t>>();
        } else {
          config.worker_memory_bytes = {v.get<int64_t>()};
        }
      } else if (key == "cpu_memory_fraction") {
        config.cpu_memory_fraction = v.get<double>();
      } else if (key == "host_id") {
        config.host_id = v.get<std::string>();
      } else if (key == "lease_ms") {
        config.lease_ms = v.get<int64_t>();
      } else if (key == "queue_event_interval_ms") {
        config.queue_event_interval_ms = v.get<int>();
      } else if (key == "allow_remote_metrics") {
        config.allow_remote_metrics = v.get<bool>();
      } else if (key == "heartbeat_interval_ms") {
        config.heartbeat_interval_ms = v.get<int>();
      } else if (key == "lease_timeout_ms") {
        config.lease_timeout_ms = v.get<int>();
      } else if (key == "progress_timeout_scale") {
        config.progress_timeout_scale = v.get<double>();
      } else if (key == "max_job_token_layers") {
        config.max_job_token_layers = v.get<int64_t>();
      } else if (key == "max_text_bytes") {
        config.max_text_bytes = v.get<int64_t>();
      } else if (key == "max_result_bytes") {
        config.max_result_bytes = v.get<int64_t>();
      } else if (key == "max_get_response_bytes") {
        config.max_get_response_bytes = v.get<int64_t>();
      } else if (key == "max_watch_streams_per_user") {
        config.max_watch_streams_per_user = v.get<int>();
      } else if (key == "max_watch_streams") {
        config.max_watch_streams = v.get<int>();
      } else if (key == "runs_dir") {
        config.runs_dir = ResolvePath(dir, v.get<std::string>());
      } else if (key == "train_yield_after_s") {
        config.train_yield_after_s = v.get<double>();
      } else if (key == "max_train_tokens") {
        config.max_train_tokens = v.get<int64_t>();
      } else if (key == "user_max_train_tokens") {
        config.user_max_train_tokens = v.get<std::map<std::string, int64_t>>();
      } else {
        return absl::InvalidArgumentError(absl::StrCat(path, ": unknown key \"", key, "\""));
      }
    }
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", e.what()));
  }
  // The database belongs to the config: a file that does not name one uses
  // sinkscope.db next to it, whatever the current directory (the server and
  // `sinkscope-server --config F token ...` then open the same file).
  if (!database_set) config.database = ResolvePath(dir, config.database);
  return config;
}

absl::Status ValidateServerConfig(const ServerConfig& c) {
  if (c.worker_devices.empty()) return absl::InvalidArgumentError("at least one worker is needed");
  if (c.max_attempts < 1) return absl::InvalidArgumentError("max_attempts must be >= 1");
  if (c.drain_timeout_s < 0) return absl::InvalidArgumentError("drain_timeout_s must be >= 0");
  if (c.max_request_bytes < 1024) {
    return absl::InvalidArgumentError("max_request_bytes must be >= 1024");
  }
  if (c.max_sequences < 1) return absl::InvalidArgumentError("max_sequences must be >= 1");
  if (c.max_total_tokens < 1) return absl::InvalidArgumentError("max_total_tokens must be >= 1");
  if (c.database.empty()) return absl::InvalidArgumentError("database path is empty");
  if (c.catalog.empty()) return absl::InvalidArgumentError("catalog path is empty");
  if (c.auth != "auto" && c.auth != "none" && c.auth != "token") {
    return absl::InvalidArgumentError("auth must be \"auto\", \"none\" or \"token\"");
  }
  if (c.tls_cert.empty() != c.tls_key.empty()) {
    return absl::InvalidArgumentError("tls_cert and tls_key must be given together");
  }
  if (!IsLoopbackAddress(c.listen) && !c.allow_insecure_remote) {
    if (c.tls_cert.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "listen ", c.listen, " is not a loopback address: configure tls_cert and tls_key ",
          "(or set allow_insecure_remote: true)"));
    }
    if (EffectiveAuthMode(c) == "none") {
      return absl::InvalidArgumentError(absl::StrCat(
          "auth \"none\" on the non-loopback address ", c.listen,
          " needs allow_insecure_remote: true"));
    }
  }
  for (const auto& [user, w] : c.user_weights) {
    if (!(w > 0)) return absl::InvalidArgumentError(absl::StrCat("user_weights[", user, "] must be > 0"));
  }
  if (!(c.train_yield_after_s >= 0)) return absl::InvalidArgumentError("train_yield_after_s must be >= 0");
  if (c.max_train_tokens < 1) return absl::InvalidArgumentError("max_train_tokens must be >= 1");
  for (const auto& [user, n] : c.user_max_train_tokens) {
    if (n < 1) return absl::InvalidArgumentError(absl::StrCat("user_max_train_tokens[", user, "] must be >= 1"));
  }
  if (c.max_queued_per_user < 1) return absl::InvalidArgumentError("max_queued_per_user must be >= 1");
  if (c.max_running_per_user < 0) return absl::InvalidArgumentError("max_running_per_user must be >= 0");
  if (c.worker_memory_bytes.size() > 1 && c.worker_memory_bytes.size() != c.worker_devices.size()) {
    return absl::InvalidArgumentError(absl::StrCat("worker_memory_bytes has ", c.worker_memory_bytes.size(),
                                                   " entries for ", c.worker_devices.size(), " workers"));
  }
  for (int64_t b : c.worker_memory_bytes) {
    if (b < 0) return absl::InvalidArgumentError("worker_memory_bytes must be >= 0");
  }
  if (!(c.cpu_memory_fraction >= 0 && c.cpu_memory_fraction <= 1)) {
    return absl::InvalidArgumentError("cpu_memory_fraction must be in 0..1 (0 = no default budget)");
  }
  if (c.lease_ms < 200 || c.lease_ms > 3600000) {
    return absl::InvalidArgumentError("lease_ms must be in 200..3600000 (milliseconds)");
  }
  if (c.host_id.size() > 200) return absl::InvalidArgumentError("host_id is longer than 200 characters");
  if (c.queue_event_interval_ms < 0) return absl::InvalidArgumentError("queue_event_interval_ms must be >= 0");
  if (c.metrics_max_users < 0) return absl::InvalidArgumentError("metrics_max_users must be >= 0");
  if (!c.metrics_listen.empty() && !IsLoopbackAddress(c.metrics_listen) && !c.allow_remote_metrics) {
    return absl::InvalidArgumentError(absl::StrCat(
        "metrics_listen ", c.metrics_listen, " is not a loopback address: /metrics has no ",
        "authentication; set allow_remote_metrics: true (or --allow-remote-metrics) to serve it ",
        "there anyway, or use 127.0.0.1:PORT"));
  }
  if (c.heartbeat_interval_ms < 10) return absl::InvalidArgumentError("heartbeat_interval_ms must be >= 10");
  if (c.lease_timeout_ms < 2 * c.heartbeat_interval_ms) {
    return absl::InvalidArgumentError(absl::StrCat(
        "lease_timeout_ms (", c.lease_timeout_ms, ") must be at least twice heartbeat_interval_ms (",
        c.heartbeat_interval_ms, ")"));
  }
  if (!(c.progress_timeout_scale > 0)) return absl::InvalidArgumentError("progress_timeout_scale must be > 0");
  if (c.max_job_token_layers < 1) return absl::InvalidArgumentError("max_job_token_layers must be >= 1");
  if (c.max_text_bytes < 1) return absl::InvalidArgumentError("max_text_bytes must be >= 1");
  if (c.max_result_bytes < 1024) return absl::InvalidArgumentError("max_result_bytes must be >= 1024");
  if (c.max_get_response_bytes < 1024) {
    return absl::InvalidArgumentError("max_get_response_bytes must be >= 1024");
  }
  if (c.max_watch_streams_per_user < 1 || c.max_watch_streams < 1) {
    return absl::InvalidArgumentError("max_watch_streams_per_user and max_watch_streams must be >= 1");
  }
  return absl::OkStatus();
}

bool IsLoopbackAddress(const std::string& listen) {
  if (absl::StartsWith(listen, "unix:") || absl::StartsWith(listen, "unix-abstract:")) return true;
  std::string host = listen;
  if (absl::StartsWith(host, "ipv4:")) host = host.substr(5);
  if (absl::StartsWith(host, "ipv6:")) host = host.substr(5);
  if (absl::StartsWith(host, "[")) {
    size_t close = host.find(']');
    host = close == std::string::npos ? host : host.substr(1, close - 1);
  } else {
    size_t colon = host.rfind(':');
    if (colon != std::string::npos) host = host.substr(0, colon);
  }
  return host == "localhost" || host == "::1" || absl::StartsWith(host, "127.");
}

std::string EffectiveAuthMode(const ServerConfig& config) {
  if (config.auth != "auto") return config.auth;
  return IsLoopbackAddress(config.listen) ? "none" : "token";
}

namespace {

/// The first integer in file `path` (a cgroup limit); -1 when unreadable or
/// "max".
int64_t ReadLimitFile(const std::string& path) {
  std::ifstream in(path);
  std::string word;
  if (!(in >> word) || word == "max") return -1;
  try {
    return static_cast<int64_t>(std::stoull(word));
  } catch (...) {
    return -1;
  }
}

}  // namespace

int64_t HostMemoryBytes() {
  int64_t total = 0;
  {
    std::ifstream meminfo("/proc/meminfo");
    std::string key;
    int64_t kib = 0;
    std::string unit;
    while (meminfo >> key >> kib) {
      std::getline(meminfo, unit);
      if (key == "MemTotal:") {
        total = kib * 1024;
        break;
      }
    }
  }
  // This process's cgroup (v2: one "0::/path" line; v1: the memory controller).
  std::ifstream cgroup("/proc/self/cgroup");
  std::string line;
  std::vector<std::string> limits;
  while (std::getline(cgroup, line)) {
    std::vector<std::string> parts = absl::StrSplit(line, absl::MaxSplits(':', 2));
    if (parts.size() != 3) continue;
    if (parts[0] == "0" && parts[1].empty()) {
      limits.push_back(absl::StrCat("/sys/fs/cgroup", parts[2], "/memory.max"));
      limits.push_back("/sys/fs/cgroup/memory.max");
    } else if (absl::StrContains(parts[1], "memory")) {
      limits.push_back(absl::StrCat("/sys/fs/cgroup/memory", parts[2], "/memory.limit_in_bytes"));
      limits.push_back("/sys/fs/cgroup/memory/memory.limit_in_bytes");
    }
  }
  for (const std::string& path : limits) {
    const int64_t limit = ReadLimitFile(path);
    // v1 reports "no limit" as a huge number: only a lower one counts.
    if (limit > 0 && (total == 0 || limit < total)) total = limit;
  }
  return total;
}

int64_t WorkerMemoryBudget(const ServerConfig& config, size_t index, int64_t host_memory_bytes) {
  if (config.worker_memory_bytes.size() == 1) return config.worker_memory_bytes[0];
  if (!config.worker_memory_bytes.empty()) {
    return index < config.worker_memory_bytes.size() ? config.worker_memory_bytes[index] : 0;
  }
  if (index >= config.worker_devices.size() || config.worker_devices[index] != "cpu") return 0;
  if (!(config.cpu_memory_fraction > 0)) return 0;
  const int64_t host = host_memory_bytes >= 0 ? host_memory_bytes : HostMemoryBytes();
  int64_t cpu_workers = 0;
  for (const std::string& d : config.worker_devices) cpu_workers += d == "cpu" ? 1 : 0;
  return static_cast<int64_t>(static_cast<double>(host) * config.cpu_memory_fraction /
                              static_cast<double>(cpu_workers));
}

}  // namespace server
}  // namespace sinkscope
