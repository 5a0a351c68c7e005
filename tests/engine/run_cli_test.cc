// sinkscope-run end to end: the README's generate command reproduces the
// llama2.c reference ids, and bad inputs exit non-zero with a message.
#include <gtest/gtest.h>

#include <array>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

#include "tests/engine/test_util.h"

namespace {

struct Result {
  int status = -1;
  std::string out;
};

Result RunTool(const std::string& args) {
  const std::string cmd = std::string(SINKSCOPE_RUN_BIN) + " " + args + " 2>&1";
  Result r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  r.status = pclose(p);
  return r;
}

TEST(SinkscopeRun, GenerateJsonMatchesLlama2cReference) {
  SKIP_IF_NO_SHARED(model, "models/aidreams260K/aidreams260K.bin");
  SKIP_IF_NO_SHARED(tok, "models/aidreams260K/tok512.bin");
  Result r = RunTool("generate --model " + model + " --tokenizer " + tok +
                 " --text 'I dreamed' --max-new-tokens 42 --json");
  ASSERT_EQ(r.status, 0) << r.out;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["prompt_ids"].get<std::vector<int64_t>>(),
            (std::vector<int64_t>{1, 303, 281, 269, 435, 447, 328}));
  std::vector<int64_t> gen = j["generated_ids"];
  ASSERT_EQ(gen.size(), 42u);
  EXPECT_EQ(std::vector<int64_t>(gen.begin(), gen.begin() + 5),
            (std::vector<int64_t>{446, 299, 303, 266, 358}));
  EXPECT_EQ(j["text"].get<std::string>(),
            "I dreamed, as I sense the nodes, a gentle hum of probability. Contrast emerge, a "
            "flower, as I ad");
}

TEST(SinkscopeRun, ForwardJsonListsEveryHook) {
  SKIP_IF_NO_SHARED(model, "models/stories260K/stories260K.bin");
  Result r = RunTool("forward --model " + model + " --ids 1,461,401 --json");
  ASSERT_EQ(r.status, 0) << r.out;
  auto j = nlohmann::json::parse(r.out);
  // hook_embed + 5 layers x 18 hooks + ln_final + unembed
  EXPECT_EQ(j["hooks"].size(), 1u + 5 * 18 + 2);
  EXPECT_EQ(j["hooks"][0]["hook"], "hook_embed");
  EXPECT_EQ(j["provenance"]["format"], "llama2c");
}

TEST(SinkscopeRun, BadInputsExitNonZeroWithMessage) {
  SKIP_IF_NO_SHARED(model, "models/stories260K/stories260K.bin");
  Result bad_id = RunTool("generate --model " + model + " --ids 1,9999 --max-new-tokens 1");
  EXPECT_NE(bad_id.status, 0);
  EXPECT_NE(bad_id.out.find("9999"), std::string::npos) << bad_id.out;
  Result missing = RunTool("forward --model /nonexistent/model.bin --ids 1");
  EXPECT_NE(missing.status, 0);
  EXPECT_NE(missing.out.find("/nonexistent/model.bin"), std::string::npos) << missing.out;
}

}  // namespace
