// SentencePiece tokenizer through Debian's libsentencepiece, loaded privately.
//
// Debian's libsentencepiece.so.0 bundles protobuf-lite 3.14 and exports its
// symbols. Linked normally next to libtorch (which loads the system
// libprotobuf 3.21) either copy interposes the other: the process crashes in
// libprotobuf's static initialisers, or sentencepiece aborts on a protobuf
// version check. So the library is NOT linked: it is dlopen()ed with
// RTLD_LOCAL | RTLD_DEEPBIND (its own protobuf first, nothing leaked into the
// global scope), and used through its C++ API: virtual calls go through the
// vtable, and the four non-virtual functions needed come from dlsym().
//
// sentencepiece_processor.h also declares `namespace absl { using
// std::string_view; }`, which clashes with Abseil's own absl::string_view class
// (Debian builds Abseil with ABSL_OPTION_USE_STD_STRING_VIEW 0); renaming that
// namespace for the header keeps the ABI (std::string_view either way).
#define absl sinkscope_sentencepiece_absl
#include <sentencepiece_processor.h>
#undef absl

#include <dlfcn.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "worker/engine/tokenizer.h"

namespace sinkscope {
namespace {

using sentencepiece::SentencePieceProcessor;

/// The library's entry points; `error` is set when it could not be loaded.
struct SpmLibrary {
  void (*construct)(void* self) = nullptr;  // SentencePieceProcessor()
  void (*status_destroy)(void* self) = nullptr;
  int (*status_code)(const void* self) = nullptr;
  const char* (*status_message)(const void* self) = nullptr;
  std::string error;
};

const SpmLibrary& Library() {
  static const SpmLibrary* const lib = [] {
    auto* l = new SpmLibrary;
    // Already in the global scope (linked in): RTLD_DEEPBIND would not apply
    // and its protobuf calls would bind to libprotobuf and abort.
    if (void* linked = dlopen("libsentencepiece.so.0", RTLD_NOW | RTLD_NOLOAD)) {
      dlclose(linked);
      l->error =
          "libsentencepiece.so.0 is linked into the process; it must only be "
          "dlopen()ed (its bundled protobuf clashes with libtorch's)";
      return l;
    }
    void* h = dlopen("libsentencepiece.so.0", RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (h == nullptr) {
      const char* e = dlerror();
      l->error = absl::StrCat("cannot load libsentencepiece.so.0: ", e ? e : "unknown error");
      return l;
    }
    auto sym = [&](const char* name, auto* fn) {
      *fn = reinterpret_cast<std::remove_pointer_t<decltype(fn)>>(dlsym(h, name));
      if (*fn == nullptr) absl::StrAppend(&l->error, "libsentencepiece.so.0 lacks ", name, "; ");
    };
    sym("_ZN13sentencepiece22SentencePieceProcessorC1Ev", &l->construct);
    sym("_ZN13sentencepiece4util6StatusD1Ev", &l->status_destroy);
    sym("_ZNK13sentencepiece4util6Status4codeEv", &l->status_code);
    sym("_ZNK13sentencepiece4util6Status13error_messageEv", &l->status_message);
    return l;  // the handle stays open for the life of the process
  }();
  return *lib;
}

/// ABI stand-in for sentencepiece::util::Status (one unique_ptr<Rep>). Its
/// user-provided destructor makes it, like the real type, returned through a
/// hidden pointer; it is destroyed by the library's destructor.
class SpmStatus {
 public:
  SpmStatus(const SpmStatus&) = delete;
  SpmStatus& operator=(const SpmStatus&) = delete;
  ~SpmStatus() {
    if (rep_ != nullptr) Library().status_destroy(this);
  }
  /// As absl::Status, `context: message`; the codes share their numbering.
  absl::Status ToAbsl(const std::string& context) const {
    if (rep_ == nullptr) return absl::OkStatus();
    const char* msg = Library().status_message(this);
    return absl::Status(static_cast<absl::StatusCode>(Library().status_code(this)),
                        absl::StrCat(context, ": ", msg ? msg : ""));
  }

 private:
  void* rep_;
};
static_assert(sizeof(SpmStatus) == sizeof(sentencepiece::util::Status));

// The virtual methods that return util::Status, re-typed to return SpmStatus
// (Itanium ABI: a pointer to a virtual member is its vtable slot).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wcast-function-type"
using LoadFn = SpmStatus (SentencePieceProcessor::*)(std::string_view);
using EncodeFn = SpmStatus (SentencePieceProcessor::*)(std::string_view, std::vector<int>*) const;
using DecodeFn = SpmStatus (SentencePieceProcessor::*)(const std::vector<int>&, std::string*) const;
const LoadFn kLoad = reinterpret_cast<LoadFn>(
    static_cast<sentencepiece::util::Status (SentencePieceProcessor::*)(std::string_view)>(
        &SentencePieceProcessor::Load));
const EncodeFn kEncode = reinterpret_cast<EncodeFn>(
    static_cast<sentencepiece::util::Status (SentencePieceProcessor::*)(
        std::string_view, std::vector<int>*) const>(&SentencePieceProcessor::Encode));
const DecodeFn kDecode = reinterpret_cast<DecodeFn>(
    static_cast<sentencepiece::util::Status (SentencePieceProcessor::*)(
        const std::vector<int>&, std::string*) const>(&SentencePieceProcessor::Decode));
#pragma GCC diagnostic pop

class SentencePieceTokenizer final : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(std::unique_ptr<SentencePieceProcessor> sp)
      : sp_(std::move(sp)) {}

  absl::StatusOr<std::vector<int64_t>> Encode(std::string_view text, bool add_bos) const override {
    if (!IsValidUtf8(text)) {
      return absl::InvalidArgumentError("sentencepiece tokenizer: text is not valid UTF-8");
    }
    if (add_bos && bos_id() < 0) {
      return absl::InvalidArgumentError("sentencepiece tokenizer: the model has no BOS piece");
    }
    std::vector<int> ids;
    absl::Status st = ((*sp_).*kEncode)(text, &ids).ToAbsl("sentencepiece encode");
    if (!st.ok()) return st;
    std::vector<int64_t> out;
    out.reserve(ids.size() + 1);
    if (add_bos) out.push_back(bos_id());
    out.insert(out.end(), ids.begin(), ids.end());
    return out;
  }

  std::string DecodeToken(int64_t id) const override {
    if (id < 0 || id >= vocab_size()) return "";
    const std::string& piece = sp_->IdToPiece(static_cast<int>(id));
    if (sp_->IsByte(static_cast<int>(id)) && piece.size() == 6) {
      // `<0xXX>`: the raw byte.
      return std::string(1,
                         static_cast<char>(std::strtol(piece.substr(3, 2).c_str(), nullptr, 16)));
    }
    // U+2581 (the whitespace marker) is a space.
    std::string out;
    for (size_t i = 0; i < piece.size();) {
      if (piece.compare(i, 3, "\xE2\x96\x81") == 0) {
        out.push_back(' ');
        i += 3;
      } else {
        out.push_back(piece[i++]);
      }
    }
    return out;
  }

  /// sentencepiece's own decoding: control pieces (BOS/EOS) dropped, the
  /// dummy-prefix space removed; ids outside the vocabulary are skipped.
  std::string Decode(const std::vector<int64_t>& ids) const override {
    std::vector<int> valid;
    valid.reserve(ids.size());
    for (int64_t id : ids) {
      if (id >= 0 && id < vocab_size()) valid.push_back(static_cast<int>(id));
    }
    std::string out;
    if (!((*sp_).*kDecode)(valid, &out).ToAbsl("decode").ok()) return "";
    return out;
  }

  int64_t vocab_size() const override { return sp_->GetPieceSize(); }
  int64_t bos_id() const override { return sp_->bos_id(); }
  int64_t eos_id() const override { return sp_->eos_id(); }
  std::string kind() const override { return "sentencepiece"; }

 private:
  std::unique_ptr<SentencePieceProcessor> sp_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadSentencePieceTokenizer(const std::string& path) {
  const SpmLibrary& lib = Library();
  if (!lib.error.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(path, ": ", lib.error));
  }
  // Constructed by the library; destroyed through its virtual destructor.
  void* mem = ::operator new(sizeof(SentencePieceProcessor));
  lib.construct(mem);
  std::unique_ptr<SentencePieceProcessor> sp(static_cast<SentencePieceProcessor*>(mem));
  absl::Status st = ((*sp).*kLoad)(path).ToAbsl(path);
  if (!st.ok()) return st;
  if (sp->GetPieceSize() <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": sentencepiece model has no pieces"));
  }
  return std::unique_ptr<Tokenizer>(new SentencePieceTokenizer(std::move(sp)));
}

}  // namespace sinkscope
