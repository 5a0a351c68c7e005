#include "server/config.h"

#include <unistd.h>

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

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
  try {
    nlohmann::json j = nlohmann::json::parse(text.str());
    if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));
    for (auto it = j.begin(); it != j.end(); ++it) {
      const std::string& key = it.key();
      const nlohmann::json& v = it.value();
      if (key == "listen") {
        config.listen = v.get<std::string>();
      } else if (key == "database") {
        config.database = ResolvePath(dir, v.get<std::string>());
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
      } else {
        return absl::InvalidArgumentError(absl::StrCat(path, ": unknown key \"", key, "\""));
      }
    }
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", e.what()));
  }
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
  return absl::OkStatus();
}

}  // namespace server
}  // namespace sinkscope
