// libFuzzer target: ParseLlama2c on arbitrary bytes. Small valid-looking
// headers reach the tensor construction and validation code.
#include <cstddef>
#include <cstdint>

#include "worker/engine/checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto ck = sinkscope::ParseLlama2c(data, size, "fuzz.bin");
  (void)ck;
  return 0;
}
