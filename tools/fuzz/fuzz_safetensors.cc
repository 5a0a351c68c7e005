// libFuzzer target: ParseSafetensorsHeader on arbitrary bytes (a whole file).
// Accepted headers must describe tensors inside the buffer.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include "worker/engine/checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  size_t start = 0;
  auto entries = sinkscope::ParseSafetensorsHeader(data, size, "fuzz.safetensors", &start);
  if (!entries.ok()) return 0;
  if (start > size) std::abort();
  for (const sinkscope::SafetensorsEntry& e : *entries) {
    if (e.begin > e.end || start + e.end > size) std::abort();
  }
  return 0;
}
