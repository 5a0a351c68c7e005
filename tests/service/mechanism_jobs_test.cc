// The mechanism job types and the scan's block attribution through the whole
// service (real sinkscope-server + sinkscope-worker), on the planted-mechanism
// checkpoints of tests/engine/fixtures.h written to disk as HF directories:
// the one-block fixture ("planted") and the gradual one ("gradual": the spike
// injected over blocks 4, 6, 8). Values are the planted ground truth
// (PlantedTruth, analytic) or the engine's own hook tensors computed in this
// process (activations, bitwise); vo-circuit also on shared/ bytelm-demo
// against a float64 reference computed here from the checkpoint's bytes.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <set>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "service_test_util.h"
#include "shared_server_suite.h"
#include "tests/engine/fixtures.h"
#include "worker/engine/checkpoint.h"
#include "worker/engine/model.h"

namespace sinkscope {
namespace testing {
namespace {

using std::chrono::seconds;

const std::vector<std::vector<int32_t>> kSeqs = {{1, 10, 11, 12, 13, 14, 15, 16},
                                                 {1, 20, 21, 22, 23, 24, 25, 26, 27, 28}};

class MechanismJobsTest : public SharedServerSuite<MechanismJobsTest> {
 protected:
  static void SetUpTestSuite() {
    truth_ = new PlantedTruth;
    gradual_truth_ = new PlantedTruth;
    std::string models;
    for (bool gradual : {false, true}) {
      PlantedSpec spec;
      spec.gradual = gradual;
      const std::string name = gradual ? "gradual" : "planted";
      const std::string path =
          WriteHfModel(name, PlantedCheckpoint(spec, gradual ? gradual_truth_ : truth_));
      if (path.empty()) return;
      absl::StrAppend(&models, models.empty() ? "" : ", ", HfModelEntry(name, path));
    }
    if (!ByteLmDemoPath().empty()) {  // a real model with a spike (shared/)
      absl::StrAppend(&models, R"(, {"name": "bytelm-demo", "format": "llama2c", "path": ")",
                      ByteLmDemoPath(), R"(", "default_dtype": "float32"})");
    }
    StartSharedServer(absl::StrCat(R"({"models": [)", models, "]}"));
  }
  static void TearDownTestSuite() {
    delete truth_;
    delete gradual_truth_;
    truth_ = gradual_truth_ = nullptr;
    SharedServerSuite::TearDownTestSuite();
  }
  static std::vector<int> Blocks(const google::protobuf::RepeatedPtrField<v1::BlockRef>& v) {
    std::vector<int> out;
    for (const auto& b : v) out.push_back(b.block());
    return out;
  }

  static inline PlantedTruth* truth_ = nullptr;
  static inline PlantedTruth* gradual_truth_ = nullptr;
};

// Scan: channel 7, spike tokens (seq, 0), step-up block 4, step-down block 10
// and the planted value c SiLU(8) 8 with c = 20; the attribution sums to it.
TEST_F(MechanismJobsTest, ScanFindsThePlantedSpikeWithItsAttribution) {
  auto req = Request("planted", kSeqs);
  req.mutable_request()->mutable_scan();
  v1::Job job = RunOk(req);
  ASSERT_EQ(job.results_size(), 13);
  ASSERT_TRUE(job.results(12).has_scan_summary());
  const v1::ScanSummary& s = job.results(12).scan_summary();
  ASSERT_EQ(s.spike_channels_size(), 1);
  EXPECT_EQ(s.spike_channels(0), truth_->spike_channel);
  EXPECT_EQ(s.spike_channels(0), 7);
  ASSERT_EQ(s.spike_tokens_size(), 2);
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(s.spike_tokens(i).sequence(), i);
    EXPECT_EQ(s.spike_tokens(i).position(), 0);
  }
  EXPECT_EQ(Blocks(s.step_up_blocks()), std::vector<int>{4});
  EXPECT_EQ(Blocks(s.step_down_blocks()), std::vector<int>{10});
  const double planted = 20.0 * (8.0 / (1.0 + std::exp(-8.0))) * 8.0;
  ASSERT_EQ(s.spike_entries_size(), 2);
  for (const auto& e : s.spike_entries()) EXPECT_NEAR(e.value(), planted, 0.01 * planted);
  ASSERT_EQ(s.attributions_size(), 2);
  for (const auto& a : s.attributions()) {
    EXPECT_EQ(a.channel(), 7);
    EXPECT_NEAR(a.sum_to_peak(), a.peak_value(), 4e-7 * std::fabs(a.peak_value()));
    ASSERT_EQ(a.contributions_size(), 12);
    EXPECT_NEAR(a.shares(3), 1.0, 0.01) << "block 4 carries the whole peak";
    EXPECT_NEAR(a.shares(9), -1.0, 0.01) << "block 10 cancels it";
    EXPECT_EQ(std::vector<int>(a.step_up_blocks().begin(), a.step_up_blocks().end()), std::vector<int>{4});
  }
  EXPECT_EQ(s.thresholds().step_rule(), "share");
  EXPECT_DOUBLE_EQ(s.thresholds().step_share(), 0.1);
}

TEST_F(MechanismJobsTest, GradualSpikeNamesItsThreeStepUpBlocks) {
  for (const std::string rule : {"share", "single-block"}) {
    auto req = Request("gradual", kSeqs);
    req.mutable_request()->mutable_scan()->set_step_rule(rule);
    v1::Job job = RunOk(req);
    ASSERT_EQ(job.results_size(), 13);
    const v1::ScanSummary& s = job.results(12).scan_summary();
    if (rule == "share") {
      EXPECT_EQ(Blocks(s.step_up_blocks()), (std::vector<int>{4, 6, 8}));
      ASSERT_FALSE(s.attributions().empty());
      for (int b : {4, 6, 8}) EXPECT_NEAR(s.attributions(0).shares(b - 1), 1.0 / 3, 0.02) << b;
    } else {
      EXPECT_TRUE(s.step_up_blocks().empty()) << "no single block carries half of the peak";
    }
  }
}

TEST_F(MechanismJobsTest, FfnQuadraticOutliersAreThePlantedChannel) {
  auto req = Request("planted", {});
  req.mutable_request()->mutable_ffn_quadratic()->set_sample_channels(2);
  v1::Job job = RunOk(req);
  ASSERT_EQ(job.results_size(), 7);
  for (int i = 0; i < 6; ++i) {
    ASSERT_TRUE(job.results(i).has_ffn_quadratic_block()) << i;
    const auto& b = job.results(i).ffn_quadratic_block();
    EXPECT_EQ(b.block(), 2 * i + 2);
    EXPECT_EQ(b.frobenius_norms_size(), 64);
    if (b.block() == 4 || b.block() == 10) {
      ASSERT_EQ(b.outlier_channels_size(), 1) << b.block();
      EXPECT_EQ(b.outlier_channels(0), 7);
      ASSERT_GE(b.channels_size(), 1);
      EXPECT_NEAR(b.channels(0).frobenius_norm(), 20.0, 1e-6);
      EXPECT_GT(b.channels(0).eigen_ratio(), 100.0);
    } else {
      EXPECT_EQ(b.outlier_channels_size(), 0) << b.block();
    }
  }
  ASSERT_TRUE(job.results(6).has_ffn_quadratic_summary());
  EXPECT_EQ(job.results(6).ffn_quadratic_summary().provenance().model(), "planted");
}

TEST_F(MechanismJobsTest, SiluRegimeNearIdentityAtSpikeTokens) {
  auto req = Request("planted", kSeqs);
  req.mutable_request()->mutable_silu_regime();
  v1::Job job = RunOk(req);
  ASSERT_EQ(job.results_size(), 3);
  for (int i = 0; i < 2; ++i) {
    const auto& b = job.results(i).silu_regime_block();
    EXPECT_EQ(b.block(), i == 0 ? 4 : 10);
    EXPECT_EQ(b.spike_tokens().n_tokens(), 2);
    EXPECT_GT(b.spike_tokens().min_cosine(), 0.999);
    EXPECT_NEAR(b.spike_tokens().mean_norm_ratio(), 1.0, 0.01);
    EXPECT_EQ(b.tokens_size(), 18);
  }
}

TEST_F(MechanismJobsTest, VoCircuitStreamsOneRecordPerLayerUpToTheStepUpBlock) {
  auto req = Request("planted", {});
  req.mutable_request()->mutable_vo_circuit()->add_token_ids(1);
  req.mutable_request()->mutable_vo_circuit()->add_token_ids(5);
  req.mutable_request()->mutable_vo_circuit()->set_vocab_sample(32);
  v1::Job job = RunOk(req);
  ASSERT_EQ(job.results_size(), 3) << "layers 0 and 1 (step-up block 4 is layer 1's MLP)";
  EXPECT_EQ(job.results(2).vo_circuit_summary().step_up_block(), 4);
  for (int l = 0; l < 2; ++l) {
    const v1::VoCircuitLayer& L = job.results(l).vo_circuit_layer();
    EXPECT_EQ(L.layer(), l);
    // Analytic: s* = e_0 (U_7 = 20 e_0 e_0^T) and W_O writes nothing on e_0,
    // so |cos(W_VO h~, s*)| is 0 for every token (non-zero values: the
    // bytelm-demo test below).
    ASSERT_EQ(L.token_alignment_size(), 2);
    for (double a : L.token_alignment()) EXPECT_NEAR(a, 0.0, 1e-12);
    EXPECT_NEAR(L.sample_max(), 0.0, 1e-12);
  }
}

// vo-circuit on a real model (shared/ bytelm-demo, step-up block 2 = layer 0's
// MLP, spike channel 251) against a float64 reference computed here from the
// llama2.c file's bytes (shared/README.md layout; libtorch only for the
// arithmetic and the symmetric eigensolver): s* = the leading eigenvector of
// S_251 = (U + U^T) / 2, U = sum_i W2[251, i] (W1[i] o g)^T (W3[i] o g)
// (g = rms_ffn[0]); h~ = RMSNorm(embedding) * rms_att[0]; alignment
// |cos(W_O W_V h~, s*)| for the requested tokens and the whole vocabulary
// (vocab_sample = 257: mean, min, max, 10/50/90 % order statistics).
TEST_F(MechanismJobsTest, VoCircuitEqualsFloat64ReferenceOnByteLmDemo) {
  if (ByteLmDemoPath().empty()) {
    SINKSCOPE_SKIP_MISSING("shared/models/bytelm-demo/bytelm-demo.bin not found");
  }
  const std::vector<int64_t> tokens = {256, 70, 105, 114};
  auto req = Request("bytelm-demo", {});
  for (int64_t t : tokens) req.mutable_request()->mutable_vo_circuit()->add_token_ids(t);
  req.mutable_request()->mutable_vo_circuit()->set_vocab_sample(257);
  req.mutable_request()->mutable_vo_circuit()->set_step_up_block(2);
  v1::Job job = RunOk(req);
  ASSERT_EQ(job.results_size(), 2) << "layer 0, then the summary";
  const v1::VoCircuitLayer& L = job.results(0).vo_circuit_layer();

  // The reference, from the file's bytes.
  std::ifstream in(ByteLmDemoPath(), std::ios::binary);
  std::vector<char> raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  int32_t hdr[7];
  ASSERT_GE(raw.size(), sizeof(hdr));
  std::memcpy(hdr, raw.data(), sizeof(hdr));
  const int64_t D = hdr[0], F = hdr[1], NL = hdr[2], V = std::abs(hdr[5]);
  ASSERT_EQ(D, 256);
  ASSERT_EQ(hdr[3], hdr[4]) << "no GQA in bytelm-demo";
  const float* f = reinterpret_cast<const float*>(raw.data() + sizeof(hdr));
  int64_t off = 0;
  auto take = [&](std::vector<int64_t> shape, int64_t layers) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    at::Tensor t = at::from_blob(const_cast<float*>(f + off), shape, at::kFloat).to(at::kDouble);
    off += n * layers;
    return t;  // layer 0's slice
  };
  const at::Tensor emb = take({V, D}, 1), rms_att = take({D}, NL);
  take({D, D}, NL);  // wq
  take({D, D}, NL);  // wk
  const at::Tensor wv = take({D, D}, NL), wo = take({D, D}, NL), rms_ffn = take({D}, NL);
  const at::Tensor w1 = take({F, D}, NL), w2 = take({D, F}, NL), w3 = take({F, D}, NL);
  ASSERT_LE(static_cast<size_t>(off) * sizeof(float) + sizeof(hdr), raw.size());
  const int64_t k = 251;
  const at::Tensor gate = w1 * rms_ffn, up = w3 * rms_ffn;
  const at::Tensor U = at::matmul(gate.t() * w2[k], up);
  const auto [vals, vecs] = at::linalg_eigh((U + U.t()) / 2);
  const at::Tensor s_star = vecs.select(1, vals.abs().argmax().item<int64_t>());
  const at::Tensor h = emb / (emb.pow(2).mean(-1, true) + 1e-5).sqrt() * rms_att;
  const at::Tensor y = at::matmul(h, at::matmul(wo, wv).t());
  const at::Tensor cos = at::matmul(y, s_star).abs() / y.norm(2, {1});
  std::vector<double> vocab(cos.data_ptr<double>(), cos.data_ptr<double>() + V);

  ASSERT_EQ(L.token_alignment_size(), static_cast<int>(tokens.size()));
  for (size_t i = 0; i < tokens.size(); ++i) {
    EXPECT_NEAR(L.token_alignment(static_cast<int>(i)), vocab[tokens[i]], 1e-5) << "token " << tokens[i];
  }
  std::vector<double> sorted = vocab;
  std::sort(sorted.begin(), sorted.end());
  double mean = 0;
  for (double v : vocab) mean += v / V;
  EXPECT_GT(sorted.back(), 0.1) << "non-trivial alignments";
  EXPECT_NEAR(L.sample_mean(), mean, 1e-5);
  EXPECT_NEAR(L.sample_min(), sorted.front(), 1e-5);
  EXPECT_NEAR(L.sample_max(), sorted.back(), 1e-5);
  ASSERT_EQ(L.sample_quantiles_size(), 3);
  const double q[3] = {0.1, 0.5, 0.9};
  for (int i = 0; i < 3; ++i) {
    EXPECT_NEAR(L.sample_quantiles(i), sorted[static_cast<size_t>(q[i] * (V - 1))], 1e-5) << q[i];
  }
}

TEST_F(MechanismJobsTest, ActivationsAreTheEnginesHookTensors) {
  auto req = Request("planted", kSeqs);
  v1::ActivationsRequest* a = req.mutable_request()->mutable_activations();
  a->add_hooks("blocks.1.hook_resid_post");
  a->add_hooks("blocks.2.attn.hook_pattern");
  a->add_sequences(1);
  a->add_positions(0);
  a->add_positions(3);
  a->add_channels(7);
  a->add_channels(0);
  a->add_channels(2);
  a->add_heads(2);
  v1::Job job = RunOk(req);
  ASSERT_EQ(job.results_size(), 3);
  // The engine in this process on the same checkpoint and tokens.
  auto model = Model::Create(PlantedCheckpoint(PlantedSpec{}, nullptr), c10::Device(c10::kCPU), at::kFloat);
  ASSERT_TRUE(model.ok()) << model.status();
  std::map<std::string, at::Tensor> ref;
  HookRegistry hooks;
  for (const std::string h : {"blocks.1.hook_resid_post", "blocks.2.attn.hook_pattern"}) {
    hooks.AddProbe(h, [&, h](const std::string&, int64_t, const at::Tensor& t) { ref[h] = t[0].clone(); });
  }
  std::vector<int64_t> ids(kSeqs[1].begin(), kSeqs[1].end());
  ASSERT_TRUE((*model)->RunHooks(at::tensor(ids, at::kLong).view({1, -1}), hooks, nullptr).ok());
  auto idx = [](std::vector<int64_t> v) { return at::tensor(v, at::kLong); };
  for (int i = 0; i < 2; ++i) {
    const v1::ActivationTensor& t = job.results(i).activation_tensor();
    EXPECT_EQ(t.sequence(), 1);
    at::Tensor x = ref.at(t.hook());
    if (x.dim() == 2) {
      x = x.index_select(0, idx({0, 3})).index_select(1, idx({7, 0, 2}));
      EXPECT_EQ(std::vector<std::string>(t.dims().begin(), t.dims().end()),
                (std::vector<std::string>{"pos", "d_model"}));
    } else {
      x = x.index_select(0, idx({2})).index_select(1, idx({0, 3})).index_select(2, idx({7, 0, 2}));
    }
    x = x.contiguous();
    ASSERT_EQ(std::vector<int64_t>(t.shape().begin(), t.shape().end()),
              std::vector<int64_t>(x.sizes().begin(), x.sizes().end()));
    ASSERT_EQ(t.values_size(), x.numel());
    EXPECT_EQ(std::memcmp(t.values().data(), x.data_ptr<float>(), 4 * x.numel()), 0) << t.hook();
  }
  EXPECT_EQ(job.results(2).activations_summary().n_tensors(), 2);
}

TEST_F(MechanismJobsTest, BadParametersAreRefusedNamingThem) {
  struct Case {
    std::string name;
    v1::SubmitJobRequest request;
    grpc::StatusCode code;
    std::string part;
  };
  std::vector<Case> cases;
  {
    auto r = Request("planted", {});
    r.mutable_request()->mutable_ffn_quadratic()->add_blocks(14);
    cases.push_back({"unknown block", r, grpc::StatusCode::INVALID_ARGUMENT, "block 14 does not exist"});
  }
  {
    auto r = Request("planted", {});
    r.mutable_request()->mutable_ffn_quadratic()->add_blocks(3);
    cases.push_back({"attention block", r, grpc::StatusCode::INVALID_ARGUMENT, "attention block"});
  }
  {
    auto r = Request("planted", kSeqs);
    r.mutable_request()->mutable_silu_regime()->add_blocks(5);
    cases.push_back({"attention block (silu)", r, grpc::StatusCode::INVALID_ARGUMENT, "silu_regime.blocks"});
  }
  {
    auto r = Request("planted", {});
    r.mutable_request()->mutable_ffn_quadratic()->set_top_channels(0);
    cases.push_back({"zero channels", r, grpc::StatusCode::INVALID_ARGUMENT, "top_channels"});
  }
  {
    auto r = Request("planted", {});
    r.mutable_request()->mutable_ffn_quadratic()->set_sample_channels(65);
    cases.push_back({"sample > d_model", r, grpc::StatusCode::INVALID_ARGUMENT, "sample_channels"});
  }
  {
    auto r = Request("planted", kSeqs);
    r.mutable_request()->mutable_activations()->add_hooks("blocks.1.hook_nope");
    cases.push_back({"unknown hook", r, grpc::StatusCode::INVALID_ARGUMENT, "blocks.1.hook_nope"});
  }
  {
    auto r = Request("planted", kSeqs);
    r.mutable_request()->mutable_activations();
    cases.push_back({"no hooks", r, grpc::StatusCode::INVALID_ARGUMENT, "activations.hooks"});
  }
  {
    auto r = Request("planted", kSeqs);
    r.mutable_request()->mutable_activations()->add_hooks("blocks.0.hook_resid_pre");
    r.mutable_request()->mutable_activations()->add_positions(8);
    cases.push_back({"position out of range", r, grpc::StatusCode::INVALID_ARGUMENT, "activations.positions"});
  }
  {
    // 32 x 256 tokens x 6 layers of [T, T] patterns x 4 heads: 32*6*4*256*256*4 bytes = 192 MiB.
    v1::SubmitJobRequest r;
    r.mutable_request()->set_model("planted");
    for (int s = 0; s < 32; ++s) {
      auto* ids = r.mutable_request()->add_sequences()->mutable_ids()->mutable_ids();
      for (int i = 0; i < 256; ++i) ids->Add(i == 0 ? 1 : 10 + i % 50);
    }
    for (int l = 0; l < 6; ++l) r.mutable_request()->mutable_activations()->add_hooks(absl::StrCat("blocks.", l, ".attn.hook_pattern"));
    // 32 sequences x 6 layers x [4 heads, 256, 256] float32 = 201326592
    // bytes, + 192 records x the 1024-byte record allowance.
    cases.push_back({"over-size", r, grpc::StatusCode::RESOURCE_EXHAUSTED, "about 201523200 bytes"});
  }
  {
    auto r = Request("planted", kSeqs);
    r.mutable_request()->mutable_scan()->set_step_rule("half");
    cases.push_back({"unknown step rule", r, grpc::StatusCode::INVALID_ARGUMENT, "scan.step_rule"});
  }
  for (const Case& c : cases) {
    v1::Job job;
    grpc::Status s = TrySubmit(c.request, &job);
    EXPECT_EQ(s.error_code(), c.code) << c.name << ": " << s.error_message();
    EXPECT_NE(s.error_message().find(c.part), std::string::npos) << c.name << ": " << s.error_message();
  }
}

}  // namespace
}  // namespace testing
}  // namespace sinkscope
