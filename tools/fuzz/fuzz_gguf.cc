// libFuzzer target: the GGUF header parser (ParseGguf) on arbitrary bytes; an
// accepted header must describe tensor data inside the buffer, and its
// vocabulary (when ReadGgufVocab accepts it) must build a tokenizer that
// encodes to ids inside the vocabulary.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "common/gguf.h"
#include "worker/engine/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto f = sinkscope::ParseGguf(data, size, "fuzz.gguf");
  if (!f.ok()) return 0;
  if (f->data_offset > size && !f->tensors.empty()) std::abort();
  for (const sinkscope::GgufTensorInfo& t : f->tensors) {
    if (f->data_offset + t.offset + t.nbytes > size) std::abort();
    if (sinkscope::GgmlType(t.type) == nullptr) std::abort();
  }
  (void)sinkscope::GgufModelShape(*f);
  auto v = sinkscope::ReadGgufVocab(*f, "fuzz.gguf");
  if (!v.ok()) return 0;
  auto tok = sinkscope::TokenizerFromGgufVocab(*v, "fuzz.gguf");
  if (!tok.ok()) return 0;
  for (const char* text : {"Hello world", " a\n\tb  c 123 \xF0\x9F\x99\x82", ""}) {
    auto ids = (*tok)->Encode(text, false);
    if (!ids.ok()) continue;
    for (int64_t id : *ids) {
      if (id < 0 || id >= (*tok)->vocab_size()) std::abort();
    }
    (void)(*tok)->Decode(*ids);
  }
  return 0;
}
