// Mechanism analyses (paper section 3): why one channel explodes.
//
//  - ffn-quadratic (eq. 16-19, Fig. 3, 4, 8): with SiLU(x) ~ x, FFN output
//    channel k is the quadratic form h~^T U_k h~ with
//      U_k = sum_i W_down[k,i] W_gate[i,:]^T W_up[i,:]   [d_model, d_model]
//    and S_k = (U_k + U_k^T)/2. h~ is the FFN input normalised WITHOUT its
//    gain: the RMSNorm gain g is folded into W_gate and W_up (W diag(g)).
//    ||U_k||_F for every k without forming U_k:
//      ||U_k||_F^2 = d_k^T [(W_gate W_gate^T) o (W_up W_up^T)] d_k,  d_k = W_down[k,:]
//    computed for all k at once in row chunks of c FFN units:
//      M_I = (W_gate[I] W_gate^T) o (W_up[I] W_up^T)     [c, d_ffn]
//      F2 += rowsum(W_down[:, I] o (W_down M_I^T))        [d_model]
//    Memory bound per block (float64): the three folded weights
//    3 d_model d_ffn, plus 3 c d_ffn + d_model c for one chunk
//    (c = row_chunk, default 1024: Llama-2-7B ~1.08 GiB + 0.30 GiB).
//    Time: 6 d_model d_ffn^2 flops per block.
//    Eigenpairs of S_k: Lanczos with full reorthogonalisation on the implicit
//    operator (no d_model^2 matrix):
//      U_k x   = W_gate^T (d_k o (W_up x)),   U_k^T x = W_up^T (d_k o (W_gate x)),
//      S_k x   = (U_k x + U_k^T x) / 2        (4 d_ffn d_model flops).
//  - silu-regime (Fig. 2): cos(x, SiLU(x)) and ||SiLU(x)|| / ||x|| for the gate
//    pre-activation x = mlp.hook_pre at every token of chosen MLP blocks.
//  - vo-circuit (eq. 22): position 0 attends only to itself, so attention is
//    the static map W_VO = sum_h W_O^(h) W_V^(g(h)) (g(h): the KV group of
//    query head h); alignment |cos(W_VO x, s*)| of the position-0 state.
//
// All arithmetic in float64 whatever the model dtype.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <vector>

#include <ATen/core/Tensor.h>

#include "absl/status/statusor.h"
#include "worker/engine/model.h"
#include "worker/engine/scan.h"

namespace sinkscope {

/// Folded FFN weights of one layer, float64 on the model's device:
/// gate, up [d_ffn, d_model] (input norm gain folded in), down [d_model, d_ffn].
struct FfnWeights {
  at::Tensor gate, up, down;
};

/// W_gate diag(g), W_up diag(g), W_down of `layer` (g: post_attention_layernorm
/// for pre-norm, pre_feedforward_layernorm for sandwich, none for post-norm).
/// InvalidArgument for a layer out of range.
absl::StatusOr<FfnWeights> FoldedFfnWeights(const Model& model, int64_t layer);

/// ||U_k||_F for k = 0..d_model-1 (float64 [d_model]), in chunks of
/// `row_chunk` FFN units (memory bound in the file comment).
at::Tensor FfnFrobeniusNorms(const FfnWeights& w, int64_t row_chunk = 1024);

/// S_k x for x [d_model] or [d_model, n] (float64).
at::Tensor ApplySk(const FfnWeights& w, int64_t k, const at::Tensor& x);

/// Leading eigenpairs of S_k.
struct Eigenpairs {
  std::vector<double> values;  // largest |lambda| first
  at::Tensor leading_vector;   // [d_model] float64, unit, largest |component| positive
  double residual = 0;         // ||S s - lambda_1 s|| / |lambda_1|
};

/// Lanczos (full reorthogonalisation, restarts on breakdown) with
/// min(d_model, max(3 n_eig + 20, 60)) steps; exact when that is d_model.
Eigenpairs LeadingEigenpairs(const FfnWeights& w, int64_t k, int64_t n_eig, uint64_t seed = 0);

/// Parameters of ffn-quadratic (FfnQuadraticRequest).
struct FfnQuadraticParams {
  std::vector<int64_t> blocks;  // even paper block numbers; empty = all MLP blocks
  int64_t top_channels = 0;     // 0 = outliers above outlier_factor x median (<= max_outliers)
  double outlier_factor = 10;
  int64_t max_outliers = 16;
  int64_t sample_channels = 4;
  uint64_t seed = 0;
  int64_t n_eigenvalues = 10;
  int64_t top_rows = 8;
  int64_t row_chunk = 1024;
};
/// InvalidArgument naming the parameter: unknown block, an attention block,
/// top_channels or sample_channels outside 0..d_model, n_eigenvalues outside
/// 1..64, top_rows outside 1..256, outlier_factor <= 1.
absl::Status ValidateFfnQuadraticParams(const FfnQuadraticParams& p, const ModelConfig& c);

struct FfnRowInfo {
  int64_t row = 0;
  float w_down = 0;
  double gate_up_cosine = 0;
};

struct FfnChannelSpectrum {
  int64_t channel = 0;
  bool is_top = false;
  double frobenius_norm = 0;
  std::vector<double> eigenvalues;
  double eigen_ratio = 0;  // lambda_1 / |lambda_2| (inf when lambda_2 = 0)
  std::vector<float> leading_eigenvector;
  double residual = 0;
  std::vector<FfnRowInfo> top_rows;
};

struct FfnQuadraticBlock {
  BlockId id;
  std::vector<float> frobenius_norms;  // [d_model]
  double median = 0;                   // lower median
  std::vector<int64_t> outlier_channels;  // > outlier_factor x median, largest first
  std::vector<FfnChannelSpectrum> channels;  // top first, then sampled
  std::vector<double> top_cosine;            // |cos(s*_a, s*_b)| [n_top, n_top]
  double mean_top_cosine = 0;
  double seconds = 0;
};

using FfnBlockFn = std::function<void(const FfnQuadraticBlock&)>;

/// Runs ffn-quadratic block by block (one block's folded weights live at a
/// time); progress units are blocks. Errors: bad params, CANCELLED.
absl::Status RunFfnQuadratic(const Model& model, const FfnQuadraticParams& params,
                             const FfnBlockFn& on_block, const ProgressFn& progress,
                             const std::atomic<bool>* cancel = nullptr);

/// Parameters of silu-regime.
struct SiluRegimeParams {
  std::vector<int64_t> blocks;  // even; empty = detected step-up and step-down MLP blocks
  ScanParams scan;              // spike rule
  int64_t channel = -1;         // k of the quadratic approximation; -1 = largest spike's channel
};
absl::Status ValidateSiluRegimeParams(const SiluRegimeParams& p, const ModelConfig& c);

struct SiluToken {
  int64_t sequence = 0, position = 0;
  bool is_spike_token = false;
  double cosine = 0, norm_ratio = 0;
  float max_abs_output = 0;
};
struct SiluStats {
  int64_t n = 0;
  double mean_cosine = 0, min_cosine = 0, mean_norm_ratio = 0;
};
struct SiluRegimeBlock {
  BlockId id;
  std::vector<SiluToken> tokens;
  SiluStats spike, other;
  int64_t channel = -1;  // -1: no quadratic approximation (no spike, no channel given)
  double lambda_star = 0;
  double mean_quadratic_error = 0, max_quadratic_error = 0;
};
struct SiluRegimeResult {
  std::vector<SiluRegimeBlock> blocks;
  std::vector<std::pair<int64_t, int64_t>> spike_tokens;
};

/// Errors: bad params; FAILED_PRECONDITION when no block is given and the
/// scan detects no step-up/step-down MLP block; CANCELLED.
absl::StatusOr<SiluRegimeResult> RunSiluRegime(const Model& model,
                                               const std::vector<std::vector<int64_t>>& sequences,
                                               const SiluRegimeParams& params,
                                               const ProgressFn& progress,
                                               const std::atomic<bool>* cancel = nullptr);

/// Parameters of vo-circuit.
struct VoCircuitParams {
  std::vector<int64_t> token_ids;  // tokens placed at position 0
  int64_t vocab_sample = 256;
  uint64_t seed = 0;
  int64_t step_up_block = 0;       // even; 0 = detected on one-token sequences of token_ids
  ScanParams scan;
};
absl::Status ValidateVoCircuitParams(const VoCircuitParams& p, const ModelConfig& c);

struct VoCircuitLayer {
  int64_t layer = 0;
  std::vector<double> token_alignment;  // |cos(W_VO x, s*)| per token
  double mean = 0, min = 0, max = 0;
  std::vector<double> quantiles;        // 10, 50, 90 %
};
struct VoCircuitResult {
  int64_t step_up_block = 0, channel = 0;
  std::vector<VoCircuitLayer> layers;   // 0..layer(step_up_block)
  std::vector<int64_t> sample_ids;
};

/// W_VO of `layer`: sum_h W_O[:, h] W_V[g(h)] [d_model, d_model] float64.
at::Tensor VoMatrix(const Model& model, int64_t layer);

absl::StatusOr<VoCircuitResult> RunVoCircuit(const Model& model, const VoCircuitParams& params,
                                             const ProgressFn& progress,
                                             const std::atomic<bool>* cancel = nullptr);

}  // namespace sinkscope
