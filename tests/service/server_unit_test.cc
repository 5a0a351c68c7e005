// Unit tests of the server's domain pieces, without processes or torch:
// the SQLite job store, request validation, the catalog and status mapping.
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "common/attention_chunks.h"
#include "server/catalog.h"
#include "server/memory_estimate.h"
#include "server/metrics.h"
#include "server/sqlite_job_store.h"
#include "server/status_util.h"
#include "server/validation.h"
#include "server/worker_pool.h"

namespace sinkscope {
namespace server {
namespace {

namespace fs = std::filesystem;

class StoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/ssu-XXXXXX";
    dir_ = mkdtemp(tmpl);
    auto store = SqliteJobStore::Open(dir_ + "/jobs.db", false);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
  }
  void TearDown() override { fs::remove_all(dir_); }

  v1::Job Create(const std::string& id, const std::string& owner = "u",
                 const std::string& client_request_id = "") {
    NewJob job;
    job.id = id;
    job.owner = owner;
    job.type = v1::JOB_TYPE_ACTIVATION_SCAN;
    job.request.set_model("m");
    job.client_request_id = client_request_id;
    bool created = false;
    auto out = store_->CreateJob(job, &created);
    EXPECT_TRUE(out.ok()) << out.status();
    return *out;
  }

  std::string dir_;
  std::unique_ptr<SqliteJobStore> store_;
};

TEST_F(StoreTest, FifoClaimAndEvents) {
  Create("a");
  Create("b");
  auto queued = store_->ListQueued();
  ASSERT_TRUE(queued.ok());
  ASSERT_EQ(queued->size(), 2u);
  EXPECT_EQ((*queued)[0].id, "a");
  auto events = store_->EventsSince("b", 0, 10);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 1u);
  EXPECT_EQ((*events)[0].queued().position(), 2);

  auto claimed = store_->ClaimJob("a", "w0");
  ASSERT_TRUE(claimed.ok());
  EXPECT_EQ(claimed->attempts(), 1);
  EXPECT_EQ(claimed->state(), v1::JOB_STATE_MODEL_LOADING);
  EXPECT_TRUE(absl::IsFailedPrecondition(store_->ClaimJob("a", "w1").status()));

  v1::JobEvent result;
  result.mutable_result()->mutable_scan_block()->set_block(1);
  ASSERT_TRUE(store_->AppendEvent("a", 1, result, v1::JOB_STATE_RUNNING).ok());
  // A stale attempt cannot write.
  EXPECT_TRUE(absl::IsFailedPrecondition(store_->AppendEvent("a", 2, result, std::nullopt).status()));

  v1::JobEvent done;
  done.mutable_completed()->set_n_records(1);
  ASSERT_TRUE(store_->FinishJob("a", 1, v1::JOB_STATE_COMPLETED, done).ok());
  // Never completed twice.
  EXPECT_TRUE(absl::IsFailedPrecondition(
      store_->FinishJob("a", 1, v1::JOB_STATE_COMPLETED, done).status()));
  auto results = store_->Results("a");
  ASSERT_TRUE(results.ok());
  ASSERT_EQ(results->size(), 1u);
  EXPECT_EQ((*results)[0].scan_block().block(), 1);
  auto job = store_->GetJob("a");
  ASSERT_TRUE(job.ok());
  EXPECT_EQ(job->state(), v1::JOB_STATE_COMPLETED);
  EXPECT_EQ(job->last_event_seq(), 3);
  EXPECT_TRUE(absl::IsNotFound(store_->GetJob("zzz").status()));
}

TEST_F(StoreTest, LostWorkerRequeuesThenFails) {
  Create("a");
  v1::JobEvent block;
  block.mutable_result()->mutable_scan_block()->set_block(1);
  for (int attempt = 1; attempt <= 2; ++attempt) {
    ASSERT_TRUE(store_->ClaimJob("a", "w0").ok());
    ASSERT_TRUE(store_->AppendEvent("a", attempt, block, v1::JOB_STATE_RUNNING).ok());
    auto r = store_->ReleaseLostJob("a", attempt, "killed by signal 9", true, 3);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(*r, ReleaseOutcome::kRequeued);
  }
  ASSERT_TRUE(store_->ClaimJob("a", "w0").ok());
  auto r = store_->ReleaseLostJob("a", 3, "killed by signal 9", true, 3);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, ReleaseOutcome::kFailed);
  auto job = store_->GetJob("a");
  EXPECT_EQ(job->state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ(job->error().code(), static_cast<int>(absl::StatusCode::kUnavailable));
  EXPECT_NE(job->error().message().find("signal 9"), std::string::npos);
  EXPECT_TRUE(store_->Results("a")->empty());
}

TEST_F(StoreTest, RestartRequeuesInterruptedAndKeepsCompleted) {
  Create("a");
  Create("b");
  Create("c");
  ASSERT_TRUE(store_->ClaimJob("a", "w0").ok());
  v1::JobEvent done;
  done.mutable_completed();
  ASSERT_TRUE(store_->FinishJob("a", 1, v1::JOB_STATE_COMPLETED, done).ok());
  ASSERT_TRUE(store_->ClaimJob("b", "w0").ok());
  // Reopen (a restart).
  store_.reset();
  auto store = SqliteJobStore::Open(dir_ + "/jobs.db", false);
  ASSERT_TRUE(store.ok());
  store_ = std::move(*store);
  auto ids = store_->RequeueInterrupted("server restarted");
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(*ids, std::vector<std::string>{"b"});
  auto queued = store_->ListQueued();
  ASSERT_EQ(queued->size(), 2u);
  EXPECT_EQ((*queued)[0].id, "b");  // keeps its FIFO place
  EXPECT_EQ(store_->GetJob("a")->state(), v1::JOB_STATE_COMPLETED);
}

TEST_F(StoreTest, ClientRequestIdIsIdempotentPerOwner) {
  v1::Job a = Create("a", "alice", "r1");
  v1::Job b = Create("b", "alice", "r1");
  v1::Job c = Create("c", "bob", "r1");
  EXPECT_EQ(b.id(), "a");
  EXPECT_EQ(c.id(), "c");
  JobFilter filter;
  filter.owner = "alice";
  auto page = store_->ListJobs(filter);
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(page->jobs.size(), 1u);
}

TEST(ValidationTest, Utf8) {
  EXPECT_TRUE(IsValidUtf8("héllo ✓ 𝄞"));
  EXPECT_FALSE(IsValidUtf8("\xC3\x28"));
  EXPECT_FALSE(IsValidUtf8("\xC0\xAF"));          // overlong
  EXPECT_FALSE(IsValidUtf8("\xED\xA0\x80"));      // surrogate
  EXPECT_FALSE(IsValidUtf8("\xF4\x90\x80\x80"));  // > U+10FFFF
}

TEST(StatusTest, TruncatesAndKeepsCode) {
  grpc::Status s = ToGrpcStatus(absl::InvalidArgumentError(std::string(10000, 'x')));
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_LE(s.error_message().size(), kMaxStatusMessageBytes);
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
}

TEST(CatalogTest, DeployCatalogResolvesAgainstItsDirectory) {
  auto catalog = ModelCatalog::LoadFile(std::string(SINKSCOPE_SOURCE_DIR) + "/deploy/catalog.json");
  ASSERT_TRUE(catalog.ok()) << catalog.status();
  const CatalogEntry* stories = catalog->Find("stories260K");
  ASSERT_NE(stories, nullptr);
  EXPECT_EQ(fs::weakly_canonical(stories->path),
            fs::weakly_canonical(fs::path(SINKSCOPE_SOURCE_DIR) / "../shared/models/stories260K/stories260K.bin"));
  EXPECT_TRUE(stories->tokenizer_path.empty());
  const CatalogEntry* aidreams = catalog->Find("aidreams260K");
  ASSERT_NE(aidreams, nullptr);
  EXPECT_FALSE(aidreams->tokenizer_path.empty());
  if (stories->available) {
    EXPECT_EQ(stories->vocab_size, 512);
    EXPECT_EQ(stories->n_ctx, 512);
    EXPECT_EQ(stories->n_layers, 5);
    EXPECT_EQ(stories->d_model, 64);
  }
  EXPECT_EQ(catalog->Find("../etc/passwd"), nullptr);
}

TEST(CatalogTest, RejectsBadEntries) {
  char tmpl[] = "/tmp/ssc-XXXXXX";
  std::string dir = mkdtemp(tmpl);
  // Issue 25.8: one bad entry does not stop the catalog. Without a usable
  // name it is left out with a warning; otherwise listed unavailable.
  std::ofstream(dir + "/c.json") << R"({"models": [{"name": "a b", "format": "llama2c", "path": "x"}]})";
  auto bad_name = ModelCatalog::LoadFile(dir + "/c.json");
  ASSERT_TRUE(bad_name.ok()) << bad_name.status();
  EXPECT_TRUE(bad_name->entries().empty());
  ASSERT_EQ(bad_name->warnings().size(), 1u);
  EXPECT_NE(bad_name->warnings()[0].find("\"a b\""), std::string::npos) << bad_name->warnings()[0];
  std::ofstream(dir + "/d.json") << R"({"models": [{"name": "a", "format": "onnx", "path": "x"}]})";
  auto bad_format = ModelCatalog::LoadFile(dir + "/d.json");
  ASSERT_TRUE(bad_format.ok()) << bad_format.status();
  ASSERT_NE(bad_format->Find("a"), nullptr);
  EXPECT_FALSE(bad_format->Find("a")->available);
  EXPECT_NE(bad_format->Find("a")->unavailable_reason.find("format must be llama2c, hf or gguf, got onnx"),
            std::string::npos);
  std::ofstream(dir + "/f.json") << "{not json";
  EXPECT_FALSE(ModelCatalog::LoadFile(dir + "/f.json").ok());
  std::ofstream(dir + "/e.json") << R"({"models": [{"name": "a", "format": "llama2c", "path": "missing.bin"}]})";
  auto c = ModelCatalog::LoadFile(dir + "/e.json");
  ASSERT_TRUE(c.ok());
  EXPECT_FALSE(c->Find("a")->available);
  RequestLimits limits;
  v1::JobRequest req;
  req.set_model("a");
  req.add_sequences()->mutable_ids()->add_ids(1);
  req.mutable_scan();
  EXPECT_TRUE(absl::IsFailedPrecondition(ValidateJobRequest(req, *c, limits)));
  fs::remove_all(dir);
}

/// A llama2.c header (7 int32) as a file: dim, hidden, layers, heads, kv, vocab, ctx.
void WriteLlama2cHeader(const std::string& path, std::vector<int32_t> header) {
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(header.data()), header.size() * sizeof(int32_t));
}

/// A catalog in `dir` of one model "m": a llama2.c header only (d_model 64,
/// d_ffn 172, 5 layers, 8 heads, 4 kv heads, vocab 512, n_ctx 512).
absl::StatusOr<ModelCatalog> HeaderOnlyCatalog(const std::string& dir) {
  WriteLlama2cHeader(dir + "/m.bin", {64, 172, 5, 8, 4, 512, 512});
  std::ofstream(dir + "/c.json")
      << R"({"models": [{"name": "m", "format": "llama2c", "path": "m.bin"}]})";
  return ModelCatalog::LoadFile(dir + "/c.json");
}

// Nonsense shapes make the model unavailable with a reason (no paths);
// sane ones stay available.
TEST(CatalogTest, NonsenseShapesAreUnavailableWithAReason) {
  char tmpl[] = "/tmp/ssc-XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  auto hf = [&](const std::string& name, const std::string& config) {
    fs::create_directories(dir + "/" + name);
    std::ofstream(dir + "/" + name + "/config.json") << config;
    return absl::StrCat(R"({"name": ")", name, R"(", "format": "hf", "path": ")", name, R"("})");
  };
  const std::string good =
      R"("hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 100, "max_position_embeddings": 256)";
  std::vector<std::string> models = {
      hf("good", "{" + good + "}"),
      hf("negative", R"({"hidden_size": 64, "num_hidden_layers": -727379968, "num_attention_heads": 4, "intermediate_size": 128, "vocab_size": 100})"),
      hf("absurd", R"({"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128, "vocab_size": 100, "max_position_embeddings": 9000000000000})"),
      hf("heads", R"({"hidden_size": 65, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128, "vocab_size": 100})"),
      hf("headdim", R"({"hidden_size": 65, "num_hidden_layers": 2, "num_attention_heads": 4, "head_dim": 16, "intermediate_size": 128, "vocab_size": 100})"),
      hf("kvheads", R"({"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 3, "intermediate_size": 128, "vocab_size": 100})"),
      hf("novocab", R"({"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128, "vocab_size": 0})"),
      hf("string", R"({"hidden_size": "64", "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128, "vocab_size": 100})"),
      R"({"name": "nope", "format": "llama2c", "path": "nope.bin"})",
      R"({"name": "badheader", "format": "llama2c", "path": "bad.bin"})",
  };
  WriteLlama2cHeader(dir + "/bad.bin", {64, 172, 5, 8, 3, 512, 512});  // kv 3 does not divide 8
  std::string catalog = R"({"models": [)";
  for (size_t i = 0; i < models.size(); ++i) absl::StrAppend(&catalog, i ? ", " : "", models[i]);
  std::ofstream(dir + "/c.json") << catalog << "]}";
  auto c = ModelCatalog::LoadFile(dir + "/c.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->Find("good")->available) << c->Find("good")->unavailable_reason;
  EXPECT_TRUE(c->Find("headdim")->available) << c->Find("headdim")->unavailable_reason;
  const std::map<std::string, std::string> expected = {
      {"negative", "n_layers is -727379968"}, {"absurd", "n_ctx is 9000000000000"},
      {"heads", "does not divide d_model"},   {"kvheads", "n_kv_heads 3 does not divide n_heads 4"},
      {"novocab", "vocab_size"},              {"string", "hidden_size is not an integer"},
      {"nope", "cannot be read"},             {"badheader", "n_kv_heads 3"}};
  for (const auto& [name, needle] : expected) {
    const CatalogEntry* e = c->Find(name);
    ASSERT_NE(e, nullptr) << name;
    EXPECT_FALSE(e->available) << name;
    EXPECT_NE(e->unavailable_reason.find(needle), std::string::npos)
        << name << ": " << e->unavailable_reason;
    EXPECT_EQ(e->unavailable_reason.find(dir), std::string::npos) << e->unavailable_reason;
    const v1::ModelInfo info = e->ToModelInfo();
    EXPECT_FALSE(info.available());
    EXPECT_EQ(info.unavailable_reason(), e->unavailable_reason);
    EXPECT_GE(info.n_layers(), 0) << name;
    EXPECT_EQ(info.description().find(dir), std::string::npos);
  }
  fs::remove_all(dir);
}

/// A minimal GGUF v3 file (layout in common/gguf.h): llama metadata,
/// an optional vocabulary, one F32 token_embd.weight [vocab, d_model].
void WriteTinyGguf(const std::string& path, bool with_vocab) {
  std::string kv;
  uint64_t n_kv = 0;
  auto str = [](std::string* o, const std::string& v) {
    uint64_t n = v.size();
    o->append(reinterpret_cast<const char*>(&n), 8);
    o->append(v);
  };
  auto pod = [](std::string* o, auto v) { o->append(reinterpret_cast<const char*>(&v), sizeof(v)); };
  auto u32 = [&](const std::string& k, uint32_t v) { str(&kv, k); pod(&kv, uint32_t{4}); pod(&kv, v); ++n_kv; };
  str(&kv, "general.architecture");
  pod(&kv, uint32_t{8});
  str(&kv, "llama");
  ++n_kv;
  u32("llama.embedding_length", 8);
  u32("llama.block_count", 3);
  u32("llama.attention.head_count", 2);
  u32("llama.attention.head_count_kv", 1);
  u32("llama.feed_forward_length", 16);
  u32("llama.context_length", 64);
  if (with_vocab) {
    str(&kv, "tokenizer.ggml.tokens");
    pod(&kv, uint32_t{9});
    pod(&kv, uint32_t{8});
    pod(&kv, uint64_t{10});
    for (int i = 0; i < 10; ++i) str(&kv, absl::StrCat("t", i));
    ++n_kv;
  }
  std::string o = "GGUF";
  pod(&o, uint32_t{3});
  pod(&o, uint64_t{1});
  pod(&o, n_kv);
  o += kv;
  str(&o, "token_embd.weight");
  pod(&o, uint32_t{2});
  pod(&o, uint64_t{8});
  pod(&o, uint64_t{10});
  pod(&o, uint32_t{0});  // F32
  pod(&o, uint64_t{0});
  o.resize((o.size() + 31) / 32 * 32, '\0');
  o.append(8 * 10 * 4, '\0');
  std::ofstream(path, std::ios::binary) << o;
}

// GGUF entries: shape from the metadata, the file's own vocabulary as the
// tokenizer; HF directories pick up their tokenizer.json; a malformed GGUF is
// unavailable with a reason (no path).
TEST(CatalogTest, GgufEntriesAndModelTokenizers) {
  char tmpl[] = "/tmp/ssc-XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  WriteTinyGguf(dir + "/m.gguf", true);
  WriteTinyGguf(dir + "/novocab.gguf", false);
  std::ofstream(dir + "/bad.gguf") << "GGUF\x07\0\0\0";
  fs::create_directories(dir + "/hf");
  std::ofstream(dir + "/hf/config.json")
      << R"({"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128, "vocab_size": 100})";
  std::ofstream(dir + "/hf/tokenizer.json") << "{}";
  std::ofstream(dir + "/c.json") << R"({"models": [
      {"name": "g", "format": "gguf", "path": "m.gguf"},
      {"name": "nv", "format": "gguf", "path": "novocab.gguf"},
      {"name": "bad", "format": "gguf", "path": "bad.gguf"},
      {"name": "h", "format": "hf", "path": "hf"}]})";
  auto c = ModelCatalog::LoadFile(dir + "/c.json");
  ASSERT_TRUE(c.ok()) << c.status();
  const CatalogEntry* g = c->Find("g");
  ASSERT_TRUE(g->available) << g->unavailable_reason;
  EXPECT_EQ(g->d_model, 8);
  EXPECT_EQ(g->n_layers, 3);
  EXPECT_EQ(g->n_heads, 2);
  EXPECT_EQ(g->vocab_size, 10);
  EXPECT_EQ(g->n_ctx, 64);
  EXPECT_EQ(g->tokenizer_path, dir + "/m.gguf");
  EXPECT_TRUE(c->Find("nv")->available);
  EXPECT_TRUE(c->Find("nv")->tokenizer_path.empty());
  EXPECT_FALSE(c->Find("bad")->available);
  EXPECT_NE(c->Find("bad")->unavailable_reason.find("GGUF"), std::string::npos);
  EXPECT_EQ(c->Find("bad")->unavailable_reason.find(dir), std::string::npos);
  EXPECT_EQ(c->Find("h")->tokenizer_path, dir + "/hf/tokenizer.json");
  auto shape = ReadModelShape(*g);
  ASSERT_TRUE(shape.ok()) << shape.status();
  EXPECT_EQ(shape->d_mlp, 16);
  EXPECT_EQ(shape->n_kv_heads, 1);
  EXPECT_TRUE(shape->shared_head);
  fs::remove_all(dir);
}

// Text counts its bytes + 2 tokens (an upper bound of what a tokenizer
// makes of it): text over the caps is refused at submission with
// RESOURCE_EXHAUSTED whatever its size (1.1 MB and 4 MB alike).
TEST(ValidationTest, TextCountsItsBytesAtSubmission) {
  char tmpl[] = "/tmp/ssc-XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  WriteLlama2cHeader(dir + "/m.bin", {64, 172, 5, 8, 4, 512, 512});
  std::ofstream(dir + "/tok.bin") << "x";
  std::ofstream(dir + "/c.json")
      << R"({"models": [{"name": "m", "format": "llama2c", "path": "m.bin", "tokenizer": "tok.bin"}]})";
  auto c = ModelCatalog::LoadFile(dir + "/c.json");
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_TRUE(c->Find("m")->available) << c->Find("m")->unavailable_reason;
  RequestLimits limits;  // 1 << 20 tokens
  v1::JobRequest req;
  req.set_model("m");
  req.mutable_perplexity();
  req.add_sequences()->set_text(std::string(1000000, 'a'));
  EXPECT_TRUE(ValidateJobRequest(req, *c, limits).ok()) << ValidateJobRequest(req, *c, limits);
  req.mutable_sequences(0)->set_text(std::string(1100000, 'a'));
  absl::Status big = ValidateJobRequest(req, *c, limits);
  EXPECT_TRUE(absl::IsResourceExhausted(big)) << big;
  req.mutable_sequences(0)->set_text(std::string(4 * (1 << 20) + 8, 'a'));
  absl::Status bigger = ValidateJobRequest(req, *c, limits);
  EXPECT_TRUE(absl::IsResourceExhausted(bigger)) << bigger;
  // Tokens: 998 bytes + 2 = 1000 fit a cap of 1000 tokens; 999 + 2 do not.
  RequestLimits small = limits;
  small.max_total_tokens = 1000;
  req.mutable_sequences(0)->set_text(std::string(998, 'a'));
  EXPECT_TRUE(ValidateJobRequest(req, *c, small).ok());
  req.mutable_sequences(0)->set_text(std::string(999, 'a'));
  EXPECT_TRUE(absl::IsResourceExhausted(ValidateJobRequest(req, *c, small)));

  // Work estimate: a scan of 2 x 100 ids on 5 layers is 1000 token-layers,
  // counted by hand; one more than the limit is refused with both numbers.
  v1::JobRequest scan;
  scan.set_model("m");
  scan.mutable_scan();
  for (int k = 0; k < 2; ++k) {
    auto* ids = scan.add_sequences()->mutable_ids();
    for (int i = 0; i < 100; ++i) ids->add_ids(1 + i % 60);
  }
  EXPECT_EQ(EstimateJobWork(scan, *c).token_layers, 2 * 100 * 5);
  RequestLimits work = limits;
  work.max_job_token_layers = 999;
  absl::Status w = ValidateJobRequest(scan, *c, work);
  EXPECT_TRUE(absl::IsResourceExhausted(w)) << w;
  EXPECT_NE(w.message().find("1000 token-layers"), std::string::npos) << w;
  EXPECT_NE(w.message().find("999 (max_job_token_layers)"), std::string::npos) << w;
  // A first-token probe of a range: 2 runs x (range) x 2 positions x 5 layers.
  v1::JobRequest probe;
  probe.set_model("m");
  probe.mutable_first_token_probe()->set_range_begin(0);
  probe.mutable_first_token_probe()->set_range_end(50);
  EXPECT_EQ(EstimateJobWork(probe, *c).token_layers, 2 * 50 * 2 * 5);
  // Duplicates refused; too many entries refused.
  probe.mutable_first_token_probe()->clear_range_end();
  probe.mutable_first_token_probe()->clear_range_begin();
  probe.mutable_first_token_probe()->add_token_ids(7);
  probe.mutable_first_token_probe()->add_token_ids(7);
  absl::Status dup = ValidateJobRequest(probe, *c, limits);
  EXPECT_TRUE(absl::IsInvalidArgument(dup)) << dup;
  EXPECT_NE(dup.message().find("7 appears more than once"), std::string::npos) << dup;
  v1::JobRequest sinks = scan;
  sinks.mutable_sinks();
  for (int i = 0; i < 5000; ++i) sinks.mutable_sinks()->add_layers(i % 5);
  absl::Status many = ValidateJobRequest(sinks, *c, limits);
  EXPECT_TRUE(absl::IsResourceExhausted(many)) << many;
  EXPECT_NE(many.message().find("max_list_entries"), std::string::npos) << many;
  // sinks: a sequence longer than the context (n_ctx 512) is accepted.
  v1::JobRequest longer = scan;
  longer.mutable_sinks()->set_windowed(true);
  auto* ids = longer.mutable_sequences(0)->mutable_ids();
  for (int i = 0; i < 600; ++i) ids->add_ids(1 + i % 60);
  EXPECT_TRUE(ValidateJobRequest(longer, *c, limits).ok()) << ValidateJobRequest(longer, *c, limits);

  // Perplexity of one token id: a clear message, no internal placeholder.
  v1::JobRequest one;
  one.set_model("m");
  one.mutable_perplexity();
  one.add_sequences()->mutable_ids()->add_ids(1);
  absl::Status s = ValidateJobRequest(one, *c, limits);
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_NE(s.message().find("the corpus has 1 token; at least 2 are needed"), std::string::npos) << s;
  fs::remove_all(dir);
}

// Activations: a repeated head / channel / position / sequence index is
// refused by name (repeated hooks are read once), and the result size is
// checked at submission against the lower of the engine's cap and the
// server's max_result_bytes: 512 positions x d_model 64 x 4 bytes + the
// 1024-byte record allowance = 132096 bytes.
TEST(ValidationTest, ActivationsRefuseDuplicatesAndResultsOverMaxResultBytes) {
  char tmpl[] = "/tmp/ssc-XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  auto c = HeaderOnlyCatalog(dir);
  ASSERT_TRUE(c.ok()) << c.status();
  v1::JobRequest base;
  base.set_model("m");
  auto* ids = base.add_sequences()->mutable_ids();
  for (int i = 0; i < 512; ++i) ids->add_ids(1 + i % 60);
  base.mutable_activations()->add_hooks("blocks.1.hook_resid_post");
  RequestLimits limits;
  EXPECT_TRUE(ValidateJobRequest(base, *c, limits).ok());
  {
    v1::JobRequest r = base;
    r.mutable_activations()->add_hooks("blocks.1.hook_resid_post");  // folded
    EXPECT_TRUE(ValidateJobRequest(r, *c, limits).ok());
  }
  struct Dup {
    const char* field;
    void (*set)(v1::ActivationsRequest*);
  };
  for (const Dup& d : std::vector<Dup>{
           {"activations.sequences: 0 appears more than once",
            [](v1::ActivationsRequest* a) { a->add_sequences(0); a->add_sequences(0); }},
           {"activations.positions: 2 appears more than once",
            [](v1::ActivationsRequest* a) { a->add_positions(2); a->add_positions(2); }},
           {"activations.channels: 3 appears more than once",
            [](v1::ActivationsRequest* a) { a->add_channels(3); a->add_channels(3); }},
           {"activations.heads: 0 appears more than once",
            [](v1::ActivationsRequest* a) { a->add_heads(0); a->add_heads(0); }}}) {
    v1::JobRequest r = base;
    d.set(r.mutable_activations());
    absl::Status s = ValidateJobRequest(r, *c, limits);
    EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
    EXPECT_NE(s.message().find(d.field), std::string::npos) << s;
  }
  limits.max_result_bytes = 132096;
  EXPECT_TRUE(ValidateJobRequest(base, *c, limits).ok());
  limits.max_result_bytes = 132095;
  absl::Status s = ValidateJobRequest(base, *c, limits);
  EXPECT_TRUE(absl::IsResourceExhausted(s)) << s;
  EXPECT_NE(s.message().find("about 132096 bytes"), std::string::npos) << s;
  EXPECT_NE(s.message().find("limit of 132095 bytes (the server's max_result_bytes)"),
            std::string::npos)
      << s;
  fs::remove_all(dir);
}

// The traits of the job-type table as validation, memory estimate, corpus
// lookup, deadlines and metrics apply them (values written out by hand).
TEST(ValidationTest, JobTypeTraitsAsApplied) {
  char tmpl[] = "/tmp/ssc-XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  auto c = HeaderOnlyCatalog(dir);
  ASSERT_TRUE(c.ok()) << c.status();
  RequestLimits limits;
  auto with_ids = [](v1::JobRequest r, int n) {
    r.set_model("m");
    auto* ids = r.add_sequences()->mutable_ids();
    for (int i = 0; i < n; ++i) ids->add_ids(1 + i % 60);
    return r;
  };
  auto expect_invalid = [&](const v1::JobRequest& r, const std::string& part) {
    absl::Status s = ValidateJobRequest(r, *c, limits);
    EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
    EXPECT_NE(s.message().find(part), std::string::npos) << s;
  };
  v1::JobRequest scan, sinks, probe, ffn, vo, similarity, none;
  scan.mutable_scan();
  sinks.mutable_sinks();
  probe.mutable_first_token_probe()->add_token_ids(3);
  ffn.mutable_ffn_quadratic();
  vo.mutable_vo_circuit()->add_token_ids(3);
  similarity.mutable_spike_similarity();
  none.set_model("m");
  // Context (n_ctx 512): a scan refuses 600 ids, a sinks job (windowed) takes them.
  expect_invalid(with_ids(scan, 600), "more than the context of model m (512)");
  EXPECT_TRUE(ValidateJobRequest(with_ids(scan, 512), *c, limits).ok());
  // Min ids: sinks needs 2 per sequence, a scan 1.
  expect_invalid(with_ids(sinks, 1), "this job needs >= 2");
  EXPECT_TRUE(ValidateJobRequest(with_ids(scan, 1), *c, limits).ok());
  // Forbidden sequences, each with its own message.
  expect_invalid(with_ids(probe, 2), "first_token_probe takes no sequences");
  expect_invalid(with_ids(ffn, 2), "ffn_quadratic reads weights only");
  expect_invalid(with_ids(vo, 2), "vo_circuit places its tokens at position 0 itself");
  // Required sequences.
  similarity.set_model("m");
  expect_invalid(similarity, "at least one sequence");
  expect_invalid(none, "no job parameters");
  fs::remove_all(dir);

  // Memory: d_model 4, d_mlp 8, 2 heads, vocab 10, one sequence of 3 ids:
  // 3 * (8*4 + 3*8 + 10) = 198 floats, plus 2*3*3 = 18 pattern floats x 2
  // (scan) or x 5 (eager attention patterns); the attention statistics
  // (sinks) add 8 chunks of at most the 18 floats and 64 per (head, position):
  // 8*18 + 64*2*3 = 528; FFN fold jobs add
  // 8 * (3*4*8 + 3*1024*8 + 4*1024) = 230144 bytes.
  ModelShape shape;
  shape.d_model = 4;
  shape.d_mlp = 8;
  shape.n_layers = 1;
  shape.n_heads = 2;
  shape.n_kv_heads = 2;
  shape.vocab = 10;
  shape.n_ctx = 100;
  v1::JobRequest acts, silu;
  acts.mutable_activations();
  silu.mutable_silu_regime();
  EXPECT_EQ(EstimateJobMemory(shape, "float32", with_ids(scan, 3)).activation_bytes, (198 + 36) * 4);
  EXPECT_EQ(EstimateJobMemory(shape, "float32", with_ids(sinks, 3)).activation_bytes, (198 + 528) * 4);
  {
    // Sinks at T = 32768 with 32 heads: O(T), one chunk budget instead of
    // 5 x 32 x T^2 floats (687 GB); 66 floats per token for the forward.
    ModelShape big = shape;
    big.n_heads = 32;
    big.n_ctx = 32768;
    v1::JobRequest long_sinks = with_ids(sinks, 40000);  // cut to the window
    long_sinks.mutable_sinks()->set_window(32768);
    const int64_t T = 32768;
    EXPECT_EQ(EstimateJobMemory(big, "float32", long_sinks).activation_bytes,
              (T * 66 + 8 * kAttentionChunkElements + 64 * 32 * T) * 4);
    // Windowed: 10 ids in windows of 4 = two of 4 (one batch) and one of 2.
    v1::JobRequest windowed = with_ids(sinks, 10);
    windowed.mutable_sinks()->set_window(4);
    windowed.mutable_sinks()->set_windowed(true);
    EXPECT_EQ(EstimateJobMemory(shape, "float32", windowed).activation_bytes,
              (8 * 66 + 8 * 2 * 2 * 16 + 64 * 2 * 2 * 4) * 4);
    // The self-attention profile is charged the same way.
    v1::JobRequest profile;
    profile.mutable_self_attention_profile();
    EXPECT_EQ(EstimateJobMemory(shape, "float32", with_ids(profile, 3)).activation_bytes,
              (198 + 528) * 4);
  }
  EXPECT_EQ(EstimateJobMemory(shape, "float32", with_ids(acts, 3)).activation_bytes, (198 + 90) * 4);
  EXPECT_EQ(EstimateJobMemory(shape, "float32", with_ids(silu, 3)).activation_bytes,
            (198 + 90) * 4 + 230144);
  EXPECT_EQ(EstimateJobMemory(shape, "float32", ffn).activation_bytes, 230144);

  // Corpus names: the eval corpus of the evaluation jobs, none for others.
  v1::JobRequest ppl, ablation;
  ppl.mutable_perplexity()->mutable_eval()->set_corpus("tiny");
  ablation.mutable_sink_ablation()->mutable_eval()->set_corpus("tiny2");
  EXPECT_EQ(CorpusNameOf(ppl), "tiny");
  EXPECT_EQ(CorpusNameOf(ablation), "tiny2");
  EXPECT_EQ(CorpusNameOf(scan), "");
  EXPECT_EQ(JobTypeOf(ablation), v1::JOB_TYPE_SINK_ABLATION);
  EXPECT_EQ(JobTypeOf(none), v1::JOB_TYPE_UNSPECIFIED);

  // Deadlines: 300 s before the first unit for jobs with calibration passes.
  ServerConfig config;
  config.progress_timeout_scale = 1;
  EXPECT_EQ(DeadlinesForJob(config, v1::JOB_TYPE_FIRST_TOKEN_PROBE, 0).progress_base, absl::Seconds(300));
  EXPECT_EQ(DeadlinesForJob(config, v1::JOB_TYPE_SINK_ABLATION, 0).progress_base, absl::Seconds(300));
  EXPECT_EQ(DeadlinesForJob(config, v1::JOB_TYPE_ACTIVATION_SCAN, 0).progress_base, absl::Seconds(120));
  EXPECT_EQ(DeadlinesForJob(config, v1::JOB_TYPE_UNSPECIFIED, 0).progress_base, absl::Seconds(120));

  // Metrics labels.
  EXPECT_EQ(Metrics::TypeLabel(v1::JOB_TYPE_ACTIVATION_SCAN), "activation_scan");
  EXPECT_EQ(Metrics::TypeLabel(v1::JOB_TYPE_FIRST_TOKEN_PROBE), "first_token_probe");
  EXPECT_EQ(Metrics::TypeLabel(v1::JOB_TYPE_UNSPECIFIED), "unspecified");
}

}  // namespace
}  // namespace server
}  // namespace sinkscope
