// libFuzzer target: ParseTokenizerJson on arbitrary text; an accepted
// tokenizer must encode sample texts (multilingual, emoji, whitespace) to ids
// inside its vocabulary, and decode them without crashing.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "worker/engine/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto tok = sinkscope::ParseTokenizerJson(text, "", "tokenizer.json");
  if (!tok.ok()) return 0;
  for (const char* s : {"Hello, world! I'm here.", "  \t\n\r\n x", "\xC3\x84pfel \xE6\x88\x91 \xF0\x9F\x91\x8D",
                        "<|endoftext|>ab", ""}) {
    auto ids = (*tok)->Encode(s, false);
    if (!ids.ok()) continue;
    for (int64_t id : *ids) {
      if (id < 0 || id >= (*tok)->vocab_size()) std::abort();
    }
    (void)(*tok)->Decode(*ids);
  }
  return 0;
}
