// Issue 25 (4, 5, 7) without processes: default cpu memory budgets, corpus
// tokenizers declared per model, model types checked at catalog load, and
// the shipped catalog.
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "server/catalog.h"
#include "server/config.h"

namespace sinkscope {
namespace server {
namespace {

namespace fs = std::filesystem;

TEST(CpuMemoryBudget, ShareOfTheHostSplitAmongCpuWorkers) {
  ServerConfig config;
  config.worker_devices = {"cpu", "cpu", "cuda:0", "cpu"};
  EXPECT_EQ(config.cpu_memory_fraction, 0.8);
  // 0.8 x 3000 bytes over three cpu workers; the cuda worker derives its own.
  EXPECT_EQ(WorkerMemoryBudget(config, 0, 3000), 800);
  EXPECT_EQ(WorkerMemoryBudget(config, 1, 3000), 800);
  EXPECT_EQ(WorkerMemoryBudget(config, 2, 3000), 0);
  EXPECT_EQ(WorkerMemoryBudget(config, 3, 3000), 800);
  config.cpu_memory_fraction = 0.5;
  EXPECT_EQ(WorkerMemoryBudget(config, 0, 3000), 500);
  config.cpu_memory_fraction = 0;  // no default budget
  EXPECT_EQ(WorkerMemoryBudget(config, 0, 3000), 0);
  // A configured budget wins, 0 included (unlimited).
  config.cpu_memory_fraction = 0.8;
  config.worker_memory_bytes = {0};
  EXPECT_EQ(WorkerMemoryBudget(config, 0, 3000), 0);
  config.worker_memory_bytes = {1, 2, 3, 4};
  EXPECT_EQ(WorkerMemoryBudget(config, 3, 3000), 4);
  // The real host: MemTotal (or a lower cgroup limit), read by the server.
  ServerConfig one;
  EXPECT_GT(HostMemoryBytes(), 0);
  EXPECT_EQ(WorkerMemoryBudget(one, 0), static_cast<int64_t>(HostMemoryBytes() * 0.8));
  // Out of range: refused by name.
  one.cpu_memory_fraction = 1.5;
  absl::Status s = ValidateServerConfig(one);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("cpu_memory_fraction"), std::string::npos) << s;
}

TEST(CpuMemoryBudget, ConfigKey) {
  char tmpl[] = "/tmp/ssd-XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  std::ofstream(dir + "/s.json") << R"({"workers": "cpu,cpu", "cpu_memory_fraction": 0.25})";
  absl::StatusOr<ServerConfig> c = LoadServerConfigFile(dir + "/s.json", ServerConfig());
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->cpu_memory_fraction, 0.25);
  EXPECT_EQ(WorkerMemoryBudget(*c, 1, 8000), 1000);
  fs::remove_all(dir);
}

TEST(CorpusTokenizer, OnlyTheModelsOwnOrADeclaredOne) {
  CatalogEntry own, bare, declared;
  own.name = "own";
  own.tokenizer_path = "/m/own.bin";
  bare.name = "bare";
  declared.name = "declared";
  declared.compatible_tokenizers = {"/t/tok512.bin"};
  CorpusEntry with_tok, without;
  with_tok.name = "text";
  with_tok.tokenizer_path = "/t/tok512.bin";
  without.name = "plain";
  EXPECT_TRUE(CheckCorpusTokenizer(own, with_tok).ok());
  EXPECT_TRUE(CheckCorpusTokenizer(own, without).ok());
  EXPECT_TRUE(CheckCorpusTokenizer(declared, with_tok).ok());
  absl::Status s = CheckCorpusTokenizer(bare, with_tok);
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_NE(s.message().find("model bare"), std::string::npos) << s;
  EXPECT_NE(s.message().find("tok512.bin"), std::string::npos) << s;
  EXPECT_EQ(s.message().find("/t/"), std::string::npos) << s;  // no directories
  EXPECT_TRUE(absl::IsInvalidArgument(CheckCorpusTokenizer(bare, without)));
  EXPECT_TRUE(absl::IsInvalidArgument(CheckCorpusTokenizer(declared, without)));
}

// The shipped catalog: bytelm-demo (with its byte-level tokenizer) is there;
// no model reads tinyshakespeare through another model's tokenizer.
TEST(CorpusTokenizer, ShippedCatalogReadsNoCorpusThroughAForeignTokenizer) {
  auto catalog = ModelCatalog::LoadFile(std::string(SINKSCOPE_SOURCE_DIR) + "/deploy/catalog.json");
  ASSERT_TRUE(catalog.ok()) << catalog.status();
  const CatalogEntry* demo = catalog->Find("bytelm-demo");
  ASSERT_NE(demo, nullptr);
  EXPECT_EQ(fs::path(demo->tokenizer_path).filename(), "tokenizer.json");
  const CatalogEntry* stories = catalog->Find("stories260K");
  ASSERT_NE(stories, nullptr);
  const CorpusEntry* text = catalog->FindCorpus("tinyshakespeare");
  ASSERT_NE(text, nullptr);
  EXPECT_FALSE(CheckCorpusTokenizer(*stories, *text).ok());
  for (const CatalogEntry& m : catalog->entries()) {
    if (m.tokenizer_path.empty()) continue;
    EXPECT_TRUE(CheckCorpusTokenizer(m, *text).ok()) << m.name;
  }
}

// A config.json that names a model_type the engine does not run is
// unavailable at load with the parser's reason (no path).
TEST(CatalogLoad, UnsupportedModelTypeIsUnavailable) {
  char tmpl[] = "/tmp/ssd-XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  fs::create_directories(dir + "/bert");
  std::ofstream(dir + "/bert/config.json")
      << R"({"model_type": "bert", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128, "vocab_size": 100})";
  std::ofstream(dir + "/c.json") << R"({"models": [{"name": "bert", "format": "hf", "path": "bert"}]})";
  auto c = ModelCatalog::LoadFile(dir + "/c.json");
  ASSERT_TRUE(c.ok()) << c.status();
  const CatalogEntry* e = c->Find("bert");
  ASSERT_NE(e, nullptr);
  EXPECT_FALSE(e->available);
  EXPECT_NE(e->unavailable_reason.find("unsupported value 'bert'"), std::string::npos) << e->unavailable_reason;
  EXPECT_EQ(e->unavailable_reason.find(dir), std::string::npos) << e->unavailable_reason;
  fs::remove_all(dir);
}

}  // namespace
}  // namespace server
}  // namespace sinkscope
