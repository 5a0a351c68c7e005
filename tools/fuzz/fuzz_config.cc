// libFuzzer target: ParseHfConfig on arbitrary text; an accepted config must
// validate, and (when expressible) survive WriteHfConfig -> ParseHfConfig.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "worker/engine/checkpoint.h"
#include "worker/engine/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto config = sinkscope::ParseHfConfig(text, "config.json");
  if (!config.ok()) return 0;
  if (!config->Validate().ok()) std::abort();
  static const std::string path =
      "/tmp/sinkscope_fuzz_config_" + std::to_string(::getpid()) + ".json";
  if (!sinkscope::WriteHfConfig(path, *config).ok()) return 0;
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  auto back = sinkscope::ParseHfConfig(ss.str(), "config.json");
  if (!back.ok() || back->d_model != config->d_model || back->n_heads != config->n_heads ||
      back->d_head != config->d_head || back->qkv_bias != config->qkv_bias ||
      back->qk_norm != config->qk_norm || back->norm_placement != config->norm_placement ||
      back->rope_layout != config->rope_layout) {
    std::abort();
  }
  return 0;
}
