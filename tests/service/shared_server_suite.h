// One real sinkscope-server (one cpu worker) shared by every test of a suite,
// on a catalog the suite writes in its temporary directory; the planted
// checkpoints of tests/engine/fixtures.h are written there as Hugging Face
// directories. Derive as `class X : public SharedServerSuite<X>` and call
// StartSharedServer() from X::SetUpTestSuite(); a setup failure fails every
// test of the suite with its reason.
#pragma once

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "service_test_util.h"
#include "tests/engine/fixtures.h"
#include "worker/engine/checkpoint.h"

namespace sinkscope {
namespace testing {

template <class Suite>
class SharedServerSuite : public ::testing::Test {
 protected:
  /// The suite's temporary directory (created on first use).
  static const std::string& SuiteDir() {
    if (dir_ == nullptr) dir_ = new TempDir();
    return dir_->path();
  }

  /// Writes `ck` as the HF directory SuiteDir()/name (config.json written by
  /// the engine's WriteHfConfig, model.safetensors); returns its path, or ""
  /// with the reason recorded as the suite's setup error.
  static std::string WriteHfModel(const std::string& name, const Checkpoint& ck) {
    const std::string path = SuiteDir() + "/" + name;
    std::filesystem::create_directories(path);
    absl::Status s = WriteHfConfig(path + "/config.json", ck.config);
    if (s.ok()) s = WriteSafetensors(path + "/model.safetensors", ck.tensors);
    if (!s.ok()) {
      setup_error_ = s.ToString();
      return "";
    }
    return path;
  }

  /// The catalog entry of an HF model served in float32.
  static std::string HfModelEntry(const std::string& name, const std::string& path) {
    return absl::StrCat(R"({"name": ")", name, R"(", "format": "hf", "path": ")", path,
                        R"(", "default_dtype": "float32"})");
  }

  /// Starts the suite's server on `catalog` (catalog.json text), unless an
  /// earlier setup step failed.
  static void StartSharedServer(const std::string& catalog) {
    if (!setup_error_.empty()) return;
    server_ = new ServerProcess(SuiteDir(), TestServerConfig(SuiteDir(), 1, catalog));
    if (!server_->Start()) setup_error_ = "server did not start: " + ReadTail(server_->log_path());
  }

  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
    delete dir_;
    dir_ = nullptr;
    setup_error_.clear();
  }

  void SetUp() override {
    ASSERT_TRUE(setup_error_.empty()) << setup_error_;
    ASSERT_NE(server_, nullptr);
    stub_ = server_->NewStub();
  }
  void TearDown() override {
    if (HasFailure() && server_ != nullptr) {
      std::fprintf(stderr, "---- server log tail ----\n%s\n", ReadTail(server_->log_path()).c_str());
    }
  }

  /// A request on `model` with id sequences.
  static v1::SubmitJobRequest Request(const std::string& model,
                                      const std::vector<std::vector<int32_t>>& sequences) {
    v1::SubmitJobRequest req;
    req.mutable_request()->set_model(model);
    for (const auto& s : sequences) {
      req.mutable_request()->add_sequences()->mutable_ids()->mutable_ids()->Add(s.begin(), s.end());
    }
    return req;
  }

  grpc::Status TrySubmit(const v1::SubmitJobRequest& req, v1::Job* job) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    return stub_->SubmitJob(&ctx, req, job);
  }

  /// Submits, waits (up to 180 s), and returns the terminal job with its results.
  v1::Job Run(const v1::SubmitJobRequest& req) {
    v1::Job job;
    grpc::Status s = TrySubmit(req, &job);
    EXPECT_TRUE(s.ok()) << s.error_code() << ": " << s.error_message();
    if (!s.ok()) return job;
    return WaitTerminal(*stub_, job.id(), std::chrono::seconds(180));
  }

  /// Runs a job that must complete.
  v1::Job RunOk(const v1::SubmitJobRequest& req) {
    v1::Job job = Run(req);
    EXPECT_EQ(job.state(), v1::JOB_STATE_COMPLETED)
        << job.error().code() << ": " << job.error().message();
    return job;
  }

  static inline TempDir* dir_ = nullptr;
  static inline ServerProcess* server_ = nullptr;
  static inline std::string setup_error_;
  std::unique_ptr<v1::AnalysisService::Stub> stub_;
};

}  // namespace testing
}  // namespace sinkscope
