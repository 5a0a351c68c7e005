// The engine's trainer: Model::Forward + autograd + AdamW (train.h).
#include "worker/engine/train.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/autocast_mode.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/cross_entropy_loss.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/linalg_vector_norm.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "worker/engine/checkpoint.h"
#include "worker/engine/hooks.h"
#include "worker/engine/model.h"
#include "common/status_macros.h"

namespace sinkscope {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

constexpr const char* kStateFormat = "sinkscope-train-1";

// Fields a resumed run may change (they do not change the numbers).
const std::set<std::string>& ResumeMayChange() {
  static const std::set<std::string> k = {"eval_every", "eval_sequences", "checkpoint_every",
                                          "profile_every", "profile_sequences",
                                          "profile_abs_threshold", "profile_rel_threshold"};
  return k;
}

uint64_t SplitMix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}


// Tokens of one sequence taken from the stream.
int64_t Need(const TrainRecipe& r) { return r.bos_id >= 0 ? r.seq_len : r.seq_len + 1; }
int64_t HeldoutTokens(const TrainRecipe& r, int64_t n) {
  return static_cast<int64_t>(std::floor(static_cast<double>(n) * r.heldout_fraction));
}

absl::StatusOr<std::string> ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::Status WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::PermissionDeniedError(absl::StrCat(path, ": cannot open for writing"));
  out << text;
  out.close();
  if (!out) return absl::DataLossError(absl::StrCat(path, ": write failed"));
  return absl::OkStatus();
}

// The families whose files use the canonical names unchanged are the ones a
// training run can write (the rest need fused / transposed layouts).
absl::Status CheckTrainable(const ModelConfig& c) {
  for (const TensorSpec& s : ExpectedTensors(c)) {
    if (s.layout != TensorLayout::kAsIs || s.file_name != s.canonical) {
      return absl::InvalidArgumentError(absl::StrCat(
          "model_type ", c.model_type, " stores tensor ", s.canonical, " as ", s.file_name,
          "; training writes llama-named families only (llama, mistral, qwen2, qwen3, olmo2, gemma2)"));
    }
  }
  if (c.rope_layout != RopeLayout::kRotateHalves) {
    return absl::InvalidArgumentError(
        "training needs the rotate-halves RoPE layout (HF); the config has adjacent pairs");
  }
  return absl::OkStatus();
}

// A trainable parameter with its AdamW state.
struct Param {
  std::string name;
  at::Tensor value;  // the model's own tensor, requires grad
  at::Tensor exp_avg, exp_avg_sq;
  bool decay = false;
};

// Random init (train.h): normal(0, std) matrices/embeddings, gains 1, biases 0,
// DynamicTanh alphas alpha0.
std::map<std::string, at::Tensor> InitialWeights(const ModelConfig& c, const TrainRecipe& r) {
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(r.seed);
  std::map<std::string, at::Tensor> w;
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  for (const TensorSpec& s : ExpectedTensors(c)) {
    at::Tensor t;
    const bool bias = s.canonical.size() >= 5 && s.canonical.compare(s.canonical.size() - 5, 5, ".bias") == 0;
    if (s.shape.size() >= 2) {
      t = at::empty(s.shape, f32);
      t.normal_(0.0, r.init_std, gen);
    } else if (bias) {
      t = at::zeros(s.shape, f32);
    } else if (s.canonical.size() >= 6 &&
               s.canonical.compare(s.canonical.size() - 6, 6, ".alpha") == 0) {
      t = at::full(s.shape, c.dyt_alpha0, f32);  // DynamicTanh's alpha0
    } else {  // a norm gain: effective gain (offset + w) = 1
      t = at::ones(s.shape, f32) * (1.0 - c.norm_gain_offset);
    }
    w[s.canonical] = t;
  }
  return w;
}

absl::Status SaveCheckpoint(const std::string& dir, const ModelConfig& config,
                            const std::vector<Param>& params, const TrainRecipe& r, int64_t step,
                            const std::vector<double>& losses) {
  std::error_code ec;
  const std::string tmp = dir + ".tmp";
  fs::remove_all(tmp, ec);
  if (!fs::create_directories(tmp, ec) && ec) {
    return absl::PermissionDeniedError(absl::StrCat(tmp, ": cannot create: ", ec.message()));
  }
  std::map<std::string, at::Tensor> weights, moments;
  for (const Param& p : params) {
    weights[p.name] = p.value.detach().to(at::kCPU).contiguous();
    moments["exp_avg." + p.name] = p.exp_avg.to(at::kCPU).contiguous();
    moments["exp_avg_sq." + p.name] = p.exp_avg_sq.to(at::kCPU).contiguous();
  }
  RETURN_IF_ERROR(WriteHfConfig(tmp + "/config.json", config));
  RETURN_IF_ERROR(WriteSafetensors(tmp + "/model.safetensors", weights));
  RETURN_IF_ERROR(WriteSafetensors(tmp + "/optimizer.safetensors", moments));
  json state = {{"format", kStateFormat},
                {"step", step},
                {"recipe", json::parse(TrainRecipeJson(r))},
                {"losses", losses}};
  RETURN_IF_ERROR(WriteText(tmp + "/trainer_state.json", state.dump(1) + "\n"));
  fs::remove_all(dir, ec);
  fs::rename(tmp, dir, ec);
  if (ec) return absl::InternalError(absl::StrCat(dir, ": cannot rename from ", tmp, ": ", ec.message()));
  return absl::OkStatus();
}

// Reads trainer_state.json and optimizer.safetensors of `dir` into `params`.
absl::Status LoadTrainerState(const std::string& dir, const TrainRecipe& r,
                              std::vector<Param>* params, int64_t* step,
                              std::vector<double>* losses) {
  const std::string state_path = dir + "/trainer_state.json";
  ASSIGN_OR_RETURN(std::string text, ReadText(state_path));
  json st = json::parse(text, nullptr, false);
  if (st.is_discarded() || !st.is_object() || st.value("format", "") != kStateFormat ||
      !st.contains("step") || !st["step"].is_number_integer() || !st.contains("recipe") ||
      !st["recipe"].is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(state_path, ": not a ", kStateFormat, " trainer state (step, recipe)"));
  }
  *step = st["step"].get<int64_t>();
  // The stored recipe with today's defaults for fields it predates.
  ASSIGN_OR_RETURN(TrainRecipe stored, ParseTrainRecipe(st["recipe"].dump(), state_path));
  const json was = json::parse(TrainRecipeJson(stored));
  const json mine = json::parse(TrainRecipeJson(r));
  for (auto it = mine.begin(); it != mine.end(); ++it) {
    if (ResumeMayChange().count(it.key())) continue;
    if (was[it.key()] != it.value()) {
      return absl::InvalidArgumentError(absl::StrCat(
          state_path, ": recipe field ", it.key(), " was ", was[it.key()].dump(),
          ", the resumed run asks for ", it.value().dump(), " (a resumed run keeps its recipe)"));
    }
  }
  if (*step < 0 || *step > r.steps) {
    return absl::InvalidArgumentError(
        absl::StrCat(state_path, ": step ", *step, " outside [0, ", r.steps, "]"));
  }
  if (st.contains("losses") && st["losses"].is_array()) {
    *losses = st["losses"].get<std::vector<double>>();
  }
  const std::string opt_path = dir + "/optimizer.safetensors";
  ASSIGN_OR_RETURN(std::string bytes, ReadText(opt_path));
  size_t data_start = 0;
  ASSIGN_OR_RETURN(std::vector<SafetensorsEntry> entries,
                   ParseSafetensorsHeader(reinterpret_cast<const uint8_t*>(bytes.data()),
                                          bytes.size(), opt_path, &data_start));
  std::map<std::string, const SafetensorsEntry*> by_name;
  for (const SafetensorsEntry& e : entries) by_name[e.name] = &e;
  for (Param& p : *params) {
    for (auto [prefix, dst] : {std::pair<const char*, at::Tensor*>{"exp_avg.", &p.exp_avg},
                               std::pair<const char*, at::Tensor*>{"exp_avg_sq.", &p.exp_avg_sq}}) {
      const std::string name = prefix + p.name;
      auto it = by_name.find(name);
      if (it == by_name.end()) {
        return absl::InvalidArgumentError(absl::StrCat(opt_path, ": tensor ", name, " missing"));
      }
      const SafetensorsEntry& e = *it->second;
      if (e.dtype != "F32" || e.shape != p.value.sizes().vec()) {
        return absl::InvalidArgumentError(absl::StrCat(
            opt_path, ": tensor ", name, " is ", e.dtype, " [", absl::StrJoin(e.shape, ", "),
            "], expected F32 [", absl::StrJoin(p.value.sizes(), ", "), "]"));
      }
      at::Tensor cpu = at::empty(e.shape, at::TensorOptions().dtype(at::kFloat));
      std::memcpy(cpu.data_ptr(), bytes.data() + data_start + e.begin, e.end - e.begin);
      *dst = cpu.to(p.value.device());
    }
  }
  return absl::OkStatus();
}

// torch.autocast(device_type, dtype=bfloat16) as a scope: ops on the
// autocast lists (linear, matmul, bmm, SDPA, ...) run in bfloat16, the rest
// keep their inputs' dtype; the cache of bfloat16 weight copies is cleared on
// leaving, as Python's context manager does, so the next update casts the
// updated float32 weights afresh. A no-op when `on` is false.
class BF16Autocast {
 public:
  BF16Autocast(c10::DeviceType device, bool on) : device_(device), on_(on) {
    if (!on_) return;
    prev_enabled_ = at::autocast::is_autocast_enabled(device_);
    prev_dtype_ = at::autocast::get_autocast_dtype(device_);
    at::autocast::set_autocast_enabled(device_, true);
    at::autocast::set_autocast_dtype(device_, at::kBFloat16);
    at::autocast::increment_nesting();
  }
  ~BF16Autocast() {
    if (!on_) return;
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(device_, prev_enabled_);
    at::autocast::set_autocast_dtype(device_, prev_dtype_);
  }
  BF16Autocast(const BF16Autocast&) = delete;
  BF16Autocast& operator=(const BF16Autocast&) = delete;

 private:
  c10::DeviceType device_;
  bool on_;
  bool prev_enabled_ = false;
  at::ScalarType prev_dtype_ = at::kBFloat16;
};

// Builds the [B, T] inputs and targets of `rows` sequences starting at `offsets`.
void MakeBatch(const std::vector<int64_t>& stream, const std::vector<int64_t>& offsets,
               const TrainRecipe& r, at::Tensor* inputs, at::Tensor* targets) {
  const int64_t B = static_cast<int64_t>(offsets.size()), T = r.seq_len;
  at::Tensor seq = at::empty({B, T + 1}, at::TensorOptions().dtype(at::kLong));
  int64_t* d = seq.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    int64_t* row = d + b * (T + 1);
    const int64_t* src = stream.data() + offsets[b];
    if (r.bos_id >= 0) {
      row[0] = r.bos_id;
      std::copy(src, src + T, row + 1);
    } else {
      std::copy(src, src + T + 1, row);
    }
  }
  *inputs = seq.narrow(1, 0, T).contiguous();
  *targets = seq.narrow(1, 1, T).contiguous();
}

// Mean cross-entropy over positions [lo, hi] (logits [B, T, V], targets [B, T]).
at::Tensor Loss(const at::Tensor& logits, const at::Tensor& targets, int64_t lo, int64_t hi) {
  const int64_t V = logits.size(2), n = hi - lo + 1;
  at::Tensor l = logits.narrow(1, lo, n).reshape({-1, V});
  at::Tensor t = targets.narrow(1, lo, n).reshape({-1}).to(logits.device());
  return at::cross_entropy_loss(l, t);
}

}  // namespace

absl::StatusOr<std::string> LatestCheckpoint(const std::string& out_dir) {
  std::error_code ec;
  int64_t best = -1;
  std::string best_path;
  for (fs::directory_iterator it(out_dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.rfind("step-", 0) != 0) continue;
    const std::string digits = name.substr(5);
    if (digits.empty() || digits.size() > 15 ||
        digits.find_first_not_of("0123456789") != std::string::npos) {
      continue;  // step-N.tmp: an unfinished write
    }
    const int64_t n = std::stoll(digits);
    if (n > best && fs::is_regular_file(it->path() / "trainer_state.json")) {
      best = n;
      best_path = it->path().string();
    }
  }
  if (best < 0) {
    return absl::NotFoundError(absl::StrCat(out_dir, ": no complete checkpoint step-N/ to resume from"));
  }
  return best_path;
}

double LearningRateAt(const TrainRecipe& r, int64_t step) {
  if (step < r.warmup_steps) {
    return r.lr * static_cast<double>(step + 1) / static_cast<double>(r.warmup_steps);
  }
  const double min_lr = r.lr * r.min_lr_ratio;
  const double progress = static_cast<double>(step - r.warmup_steps) /
                          static_cast<double>(std::max<int64_t>(1, r.steps - r.warmup_steps));
  return min_lr + (r.lr - min_lr) * (1.0 + std::cos(M_PI * progress)) / 2.0;
}

uint64_t SequenceOffset(uint64_t seed, int64_t step, int64_t batch_size, int64_t row,
                        uint64_t n_starts) {
  const uint64_t k = static_cast<uint64_t>(step) * static_cast<uint64_t>(batch_size) +
                     static_cast<uint64_t>(row) + 1;
  return SplitMix64(seed + k * 0x9E3779B97F4A7C15ULL) % n_starts;
}

absl::Status ValidateTrainRecipe(const TrainRecipe& r, const ModelConfig& c, int64_t n) {
  RETURN_IF_ERROR(CheckTrainRecipeFields(r, c, "train recipe: "));
  const int64_t held = HeldoutTokens(r, n), train = n - held;
  if (train < Need(r)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "corpus: the training split has ", train, " tokens, fewer than one sequence needs (", Need(r),
        " = seq_len", r.bos_id >= 0 ? " with BOS" : " + 1", ")"));
  }
  if ((r.eval_every > 0 || r.profile_every > 0) && held < Need(r)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "corpus: the held-out split has ", held, " tokens (heldout_fraction ", r.heldout_fraction,
        "), fewer than one sequence needs (", Need(r),
        "); raise heldout_fraction or set eval_every and profile_every 0"));
  }
  return absl::OkStatus();
}

std::string TrainRecipeJson(const TrainRecipe& r) {
  json j = {{"steps", r.steps},
            {"batch_size", r.batch_size},
            {"seq_len", r.seq_len},
            {"seed", r.seed},
            {"lr", r.lr},
            {"min_lr_ratio", r.min_lr_ratio},
            {"warmup_steps", r.warmup_steps},
            {"beta1", r.beta1},
            {"beta2", r.beta2},
            {"eps", r.eps},
            {"weight_decay", r.weight_decay},
            {"grad_clip", r.grad_clip},
            {"init_std", r.init_std},
            {"loss_pos_min", r.loss_pos_min},
            {"loss_pos_max", r.loss_pos_max},
            {"heldout_fraction", r.heldout_fraction},
            {"bos_id", r.bos_id},
            {"eval_every", r.eval_every},
            {"eval_sequences", r.eval_sequences},
            {"checkpoint_every", r.checkpoint_every},
            {"profile_every", r.profile_every},
            {"profile_sequences", r.profile_sequences},
            {"profile_abs_threshold", r.profile_abs_threshold},
            {"profile_rel_threshold", r.profile_rel_threshold},
            {"precision", r.precision},
            {"no_weight_decay", r.no_weight_decay}};
  return j.dump();
}

absl::StatusOr<TrainRecipe> ParseTrainRecipe(const std::string& text, const std::string& source) {
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": recipe must be a JSON object"));
  }
  TrainRecipe r;
  std::map<std::string, int64_t*> ints = {
      {"steps", &r.steps},           {"batch_size", &r.batch_size},
      {"seq_len", &r.seq_len},       {"warmup_steps", &r.warmup_steps},
      {"loss_pos_min", &r.loss_pos_min}, {"loss_pos_max", &r.loss_pos_max},
      {"bos_id", &r.bos_id},         {"eval_every", &r.eval_every},
      {"eval_sequences", &r.eval_sequences}, {"checkpoint_every", &r.checkpoint_every},
      {"profile_every", &r.profile_every}, {"profile_sequences", &r.profile_sequences}};
  std::map<std::string, double*> doubles = {
      {"lr", &r.lr},         {"min_lr_ratio", &r.min_lr_ratio}, {"beta1", &r.beta1},
      {"beta2", &r.beta2},   {"eps", &r.eps},                   {"weight_decay", &r.weight_decay},
      {"grad_clip", &r.grad_clip}, {"init_std", &r.init_std},   {"heldout_fraction", &r.heldout_fraction},
      {"profile_abs_threshold", &r.profile_abs_threshold},
      {"profile_rel_threshold", &r.profile_rel_threshold}};
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& k = it.key();
    const json& v = it.value();
    if (k == "seed") {
      if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<int64_t>() >= 0)) {
        return absl::InvalidArgumentError(absl::StrCat(source, ": seed must be a non-negative integer, got ", v.dump()));
      }
      r.seed = v.get<uint64_t>();
    } else if (k == "no_weight_decay") {
      if (!v.is_array() || !std::all_of(v.begin(), v.end(), [](const json& e) { return e.is_string(); })) {
        return absl::InvalidArgumentError(
            absl::StrCat(source, ": no_weight_decay must be a list of name substrings, got ", v.dump()));
      }
      r.no_weight_decay = v.get<std::vector<std::string>>();
    } else if (k == "precision") {
      if (!v.is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(source, ": precision must be a string, got ", v.dump()));
      }
      r.precision = v.get<std::string>();
    } else if (auto i = ints.find(k); i != ints.end()) {
      if (!v.is_number_integer()) {
        return absl::InvalidArgumentError(absl::StrCat(source, ": ", k, " must be an integer, got ", v.dump()));
      }
      *i->second = v.get<int64_t>();
    } else if (auto d = doubles.find(k); d != doubles.end()) {
      if (!v.is_number()) {
        return absl::InvalidArgumentError(absl::StrCat(source, ": ", k, " must be a number, got ", v.dump()));
      }
      *d->second = v.get<double>();
    } else {
      std::vector<std::string> known = {"seed", "precision", "no_weight_decay"};
      for (const auto& [n, _] : ints) known.push_back(n);
      for (const auto& [n, _] : doubles) known.push_back(n);
      std::sort(known.begin(), known.end());
      return absl::InvalidArgumentError(absl::StrCat(source, ": unknown recipe field '", k,
                                                     "' (known: ", absl::StrJoin(known, ", "), ")"));
    }
  }
  return r;
}

namespace {

// The model a run trains, ready: loaded (init_from / resume_from) or freshly
// initialised, after every check that needs no work (train.h's Train errors),
// with config.json written into the output directory.
absl::StatusOr<std::unique_ptr<Model>> PrepareModel(const TrainJob& job, const std::vector<int64_t>& stream) {
  const TrainRecipe& r = job.recipe;
  Checkpoint ck;
  const std::string from = !job.resume_from.empty() ? job.resume_from : job.init_from;
  if (!from.empty()) {
    ASSIGN_OR_RETURN(ck, LoadHfDirectory(from));
  } else {
    RETURN_IF_ERROR(job.config.Validate());
    ck.config = job.config;
  }
  RETURN_IF_ERROR(CheckTrainable(ck.config));
  RETURN_IF_ERROR(ValidateTrainRecipe(r, ck.config, static_cast<int64_t>(stream.size())));
  {  // The config must be writable as config.json before any work is done.
    std::error_code ec;
    fs::create_directories(job.out_dir, ec);
    if (ec) return absl::PermissionDeniedError(absl::StrCat(job.out_dir, ": cannot create: ", ec.message()));
    RETURN_IF_ERROR(WriteHfConfig(job.out_dir + "/config.json", ck.config));
  }
  for (size_t i = 0; i < stream.size(); ++i) {
    if (stream[i] < 0 || stream[i] >= ck.config.d_vocab) {
      return absl::InvalidArgumentError(absl::StrCat("corpus: token id ", stream[i], " at position ", i,
                                                     " is outside the vocabulary [0, ", ck.config.d_vocab,
                                                     ")"));
    }
  }
  if (from.empty()) ck.tensors = InitialWeights(ck.config, r);
  return Model::Create(ck, job.device, at::kFloat);
}

// One run in progress: the model, its parameters with their AdamW state and
// the split of the stream (train.h's recipe, exactly).
class Run {
 public:
  Run(const TrainJob& job, const std::vector<int64_t>& stream, std::unique_ptr<Model> model)
      : job_(job), r_(job.recipe), stream_(stream), model_(std::move(model)) {
    for (auto& [name, t] : model_->Parameters()) {
      Param p;
      p.name = name;
      p.value = t;
      p.value.requires_grad_(true);
      p.exp_avg = at::zeros_like(t);
      p.exp_avg_sq = at::zeros_like(t);
      p.decay = t.dim() >= 2 && std::none_of(r_.no_weight_decay.begin(), r_.no_weight_decay.end(),
                                             [&](const std::string& n) { return p.name.find(n) != std::string::npos; });
      params_.push_back(std::move(p));
    }
    const int64_t n = static_cast<int64_t>(stream.size());
    held_ = HeldoutTokens(r_, n);
    n_train_ = n - held_;
    need_ = Need(r_);
    n_starts_ = static_cast<uint64_t>(n_train_ - need_ + 1);
  }

  const Model& model() const { return *model_; }
  std::vector<Param>& params() { return params_; }

  /// Update `step` (0-based) at learning rate `lr`: the batch's loss (before
  /// the update) and the gradient norm before clipping.
  absl::Status Update(int64_t step, double lr, double* loss_out, double* grad_norm) {
    std::vector<int64_t> offsets(r_.batch_size);
    for (int64_t b = 0; b < r_.batch_size; ++b) {
      offsets[b] = static_cast<int64_t>(SequenceOffset(r_.seed, step, r_.batch_size, b, n_starts_));
    }
    at::Tensor inputs, targets;
    MakeBatch(stream_, offsets, r_, &inputs, &targets);
    at::Tensor loss;
    {  // forward and loss under autocast, backward outside (as torch.autocast's docs)
      BF16Autocast autocast(job_.device.type(), r_.precision == "bfloat16");
      ASSIGN_OR_RETURN(at::Tensor logits, model_->Forward(inputs, no_hooks_));
      loss = Loss(logits, targets, r_.loss_pos_min, r_.loss_pos_max < 0 ? r_.seq_len - 1 : r_.loss_pos_max);
    }
    for (Param& p : params_) p.value.mutable_grad().reset();
    loss.backward();
    at::Tensor total_norm = ClipGradients();
    AdamW(step, lr);
    *loss_out = loss.item<double>();
    *grad_norm = total_norm.item<double>();
    return absl::OkStatus();
  }

  /// Mean NLL over every position of the first eval_sequences consecutive
  /// windows of the held-out split.
  absl::StatusOr<double> HeldoutLoss() {
    at::NoGradGuard no_grad;
    const int64_t windows = std::min<int64_t>(r_.eval_sequences, held_ / need_);
    double total = 0;
    int64_t count = 0;
    for (int64_t w0 = 0; w0 < windows; w0 += r_.batch_size) {
      std::vector<int64_t> offsets;
      for (int64_t w = w0; w < std::min(windows, w0 + r_.batch_size); ++w) offsets.push_back(n_train_ + w * need_);
      at::Tensor in, tg;
      MakeBatch(stream_, offsets, r_, &in, &tg);
      ASSIGN_OR_RETURN(at::Tensor logits, model_->Forward(in, no_hooks_));
      total += Loss(logits, tg, 0, r_.seq_len - 1).item<double>() * static_cast<double>(offsets.size());
      count += static_cast<int64_t>(offsets.size());
    }
    return total / static_cast<double>(count);
  }

  /// The profile (profile.h) of the held-out split: chunks of seq_len, each
  /// BOS + seq_len - 1 tokens when bos_id >= 0 (as training reads them).
  absl::StatusOr<ProfileResult> Profile() {
    at::NoGradGuard no_grad;
    const int64_t body = r_.bos_id >= 0 ? r_.seq_len - 1 : r_.seq_len;
    const int64_t chunks = std::min<int64_t>(r_.profile_sequences, held_ / body);
    std::vector<int64_t> tokens;
    for (int64_t w = 0; w < chunks; ++w) {
      if (r_.bos_id >= 0) tokens.push_back(r_.bos_id);
      const auto first = stream_.begin() + n_train_ + w * body;
      tokens.insert(tokens.end(), first, first + body);
    }
    ProfileParams pp;
    pp.eval.chunk_length = r_.seq_len;
    pp.scan.abs_threshold = r_.profile_abs_threshold;
    pp.scan.rel_threshold = r_.profile_rel_threshold;
    return RunProfile(*model_, tokens, pp, nullptr, nullptr, job_.cancel);
  }

 private:
  // torch.nn.utils.clip_grad_norm_: the global norm (of per-tensor norms), and
  // every gradient scaled by min(1, max / (norm + 1e-6)). Returns the norm.
  at::Tensor ClipGradients() {
    std::vector<at::Tensor> norms;
    for (Param& p : params_) {
      if (!p.value.grad().defined()) p.value.mutable_grad() = at::zeros_like(p.value);
      norms.push_back(at::linalg_vector_norm(p.value.grad(), 2));
    }
    at::Tensor total_norm = at::linalg_vector_norm(at::stack(norms), 2);
    if (r_.grad_clip > 0) {
      at::NoGradGuard no_grad;
      at::Tensor coef = ((total_norm + 1e-6).reciprocal() * r_.grad_clip).clamp_max(1.0);
      for (Param& p : params_) p.value.mutable_grad().mul_(coef);
    }
    return total_norm;
  }

  // torch.optim.AdamW, single-tensor path (torch/optim/adam.py _single_tensor_adam).
  void AdamW(int64_t step, double lr) {
    at::NoGradGuard no_grad;
    const double t = static_cast<double>(step + 1);
    const double step_size = lr / (1.0 - std::pow(r_.beta1, t));
    const double bc2_sqrt = std::sqrt(1.0 - std::pow(r_.beta2, t));
    for (Param& p : params_) {
      const at::Tensor& g = p.value.grad();
      if (p.decay && r_.weight_decay != 0) p.value.mul_(1.0 - lr * r_.weight_decay);
      p.exp_avg.lerp_(g, 1.0 - r_.beta1);
      p.exp_avg_sq.mul_(r_.beta2).addcmul_(g, g, 1.0 - r_.beta2);
      at::Tensor denom = (p.exp_avg_sq.sqrt() / bc2_sqrt).add_(r_.eps);
      p.value.addcdiv_(p.exp_avg, denom, -step_size);
    }
  }

  const TrainJob& job_;
  const TrainRecipe& r_;
  const std::vector<int64_t>& stream_;
  std::unique_ptr<Model> model_;
  std::vector<Param> params_;
  int64_t held_ = 0, n_train_ = 0, need_ = 0;
  uint64_t n_starts_ = 1;
  HookRegistry no_hooks_;
};

}  // namespace

absl::StatusOr<TrainSummary> Train(const TrainJob& job, const std::vector<int64_t>& stream,
                                   const std::function<absl::Status(const TrainProgress&)>& on_progress) {
  const TrainRecipe& r = job.recipe;
  if (!job.init_from.empty() && !job.resume_from.empty()) {
    return absl::InvalidArgumentError("init_from and resume_from exclude each other");
  }
  if (job.out_dir.empty()) return absl::InvalidArgumentError("no output directory given");
  try {
    ASSIGN_OR_RETURN(std::unique_ptr<Model> model, PrepareModel(job, stream));
    Run run(job, stream, std::move(model));
    TrainSummary summary;
    summary.n_params = run.model().n_params();
    std::vector<double> all_losses;
    int64_t step = 0;
    if (!job.resume_from.empty()) {
      RETURN_IF_ERROR(LoadTrainerState(job.resume_from, r, &run.params(), &step, &all_losses));
      all_losses.resize(std::min<size_t>(all_losses.size(), static_cast<size_t>(step)));
    }
    summary.start_step = step;
    int64_t checkpoints_written = 0;
    const auto t_start = std::chrono::steady_clock::now();
    auto t_last = t_start;
    int64_t tokens_total = 0;
    double update_s = 0;  // wall seconds inside updates (no evaluation, checkpoint, callback)
    while (step < r.steps) {
      if (job.cancel && job.cancel->load(std::memory_order_relaxed)) {
        return absl::CancelledError(absl::StrCat("training cancelled after update ", step));
      }
      TrainProgress rec;
      rec.lr = LearningRateAt(r, step);
      RETURN_IF_ERROR(run.Update(step, rec.lr, &rec.loss, &rec.grad_norm));
      rec.step = ++step;
      rec.steps = r.steps;
      all_losses.push_back(rec.loss);
      summary.losses.push_back(rec.loss);
      tokens_total += r.batch_size * r.seq_len;
      const auto now = std::chrono::steady_clock::now();
      update_s += std::chrono::duration<double>(now - t_last).count();
      rec.tokens_per_s = update_s > 0 ? static_cast<double>(tokens_total) / update_s : 0.0;
      rec.elapsed_s = std::chrono::duration<double>(now - t_start).count();
      if (r.eval_every > 0 && (step % r.eval_every == 0 || step == r.steps)) {
        ASSIGN_OR_RETURN(rec.heldout_loss, run.HeldoutLoss());
      }
      if ((r.checkpoint_every > 0 && step % r.checkpoint_every == 0) || step == r.steps) {
        const std::string dir = absl::StrCat(job.out_dir, "/step-", step);
        RETURN_IF_ERROR(SaveCheckpoint(dir, run.model().config(), run.params(), r, step, all_losses));
        rec.checkpoint = summary.last_checkpoint = dir;
        ++checkpoints_written;
        if (r.profile_every > 0 && (checkpoints_written % r.profile_every == 0 || step == r.steps)) {
          ASSIGN_OR_RETURN(rec.profile, run.Profile());
        }
      }
      if (on_progress) RETURN_IF_ERROR(on_progress(rec));
      // Do not time the callback, evaluation or checkpoint against the next update.
      t_last = std::chrono::steady_clock::now();
    }
    summary.step = step;
    return summary;
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("training: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("training: ", e.what()));
  }
}

}  // namespace sinkscope
