#include "worker/engine/activations.h"

#include <ATen/ATen.h>

#include <set>

#include "absl/strings/str_cat.h"
#include "worker/engine/batching.h"
#include "worker/engine/hooks.h"
#include "common/status_macros.h"

namespace sinkscope {

HookDims HookDimsOf(const ModelConfig& c) {
  HookDims d;
  d.n_layers = c.n_layers;
  d.d_model = c.d_model;
  d.d_ffn = c.d_ffn;
  d.d_vocab = c.d_vocab;
  d.n_heads = c.n_heads;
  d.n_kv_heads = c.n_kv_heads;
  d.d_head = c.d_head;
  return d;
}

namespace {

std::vector<int64_t> SelectedSequences(const std::vector<std::vector<int64_t>>& seqs,
                                       const ActivationsParams& p) {
  if (!p.sequences.empty()) return p.sequences;
  std::vector<int64_t> all(seqs.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<int64_t>(i);
  return all;
}

at::Tensor Index(const at::Tensor& t, int64_t dim, const std::vector<int64_t>& idx) {
  if (idx.empty()) return t;
  return t.index_select(dim, at::tensor(idx, at::TensorOptions().dtype(at::kLong).device(t.device())));
}

}  // namespace

absl::StatusOr<int64_t> CheckActivationsRequest(const Model& model,
                                                const std::vector<std::vector<int64_t>>& sequences,
                                                const ActivationsParams& p) {
  if (p.hooks.empty()) return absl::InvalidArgumentError("activations.hooks is empty: name at least one hook");
  const HookDims dims = HookDimsOf(model.config());
  for (int64_t s : p.sequences) {
    if (s < 0 || s >= static_cast<int64_t>(sequences.size())) {
      return absl::InvalidArgumentError(absl::StrCat("activations.sequences: index ", s,
                                                     " is out of range (", sequences.size(),
                                                     " sequences)"));
    }
  }
  int64_t bytes = 0;
  for (const std::string& hook : p.hooks) {
    ASSIGN_OR_RETURN(HookLayout layout, HookLayoutOf(hook, dims));
    if (!model.HasHook(hook)) {
      return absl::InvalidArgumentError(absl::StrCat("activations.hooks: model has no hook \"", hook,
                                                     "\" (norm placement ",
                                                     NormPlacementName(model.config().norm_placement), ")"));
    }
    for (int64_t s : SelectedSequences(sequences, p)) {
      const int64_t T = static_cast<int64_t>(sequences[s].size());
      RETURN_IF_ERROR(CheckSlices(hook, layout, T, p.slices));
      int64_t n = 1;
      for (int64_t x : SlicedShape(layout, T, p.slices)) n *= x;
      bytes += 4 * n;
    }
  }
  if (p.max_bytes > 0 && bytes > p.max_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat("activations: the result would be ", bytes,
                                                     " bytes, over the limit of ", p.max_bytes,
                                                     " bytes; slice it or name fewer hooks"));
  }
  return bytes;
}

absl::StatusOr<int64_t> RunActivations(const Model& model,
                                       const std::vector<std::vector<int64_t>>& sequences,
                                       const ActivationsParams& p, const HookTensorFn& on_tensor,
                                       const ProgressFn& progress,
                                       const std::atomic<bool>* cancel) {
  ASSIGN_OR_RETURN(int64_t bytes, CheckActivationsRequest(model, sequences, p));
  RETURN_IF_ERROR(model.ValidateTokens(sequences));
  const HookDims dims = HookDimsOf(model.config());
  const std::vector<int64_t> selected = SelectedSequences(sequences, p);
  const std::set<int64_t> wanted(selected.begin(), selected.end());
  std::vector<std::vector<int64_t>> sub;  // the selected sequences, in request order
  for (int64_t s : selected) sub.push_back(sequences[s]);
  const std::vector<std::vector<int64_t>> batches = BatchByLength(sub);
  int64_t done = 0;
  for (const auto& batch : batches) {
    HookRegistry hooks;
    for (const std::string& hook : std::set<std::string>(p.hooks.begin(), p.hooks.end())) {
      const HookLayout layout = *HookLayoutOf(hook, dims);
      hooks.AddProbe(hook, [&, hook, layout](const std::string&, int64_t, const at::Tensor& t) {
        for (size_t r = 0; r < batch.size(); ++r) {
          at::Tensor x = t.select(0, static_cast<int64_t>(r));
          switch (layout.kind) {
            case HookLayout::Kind::kTokenChannel:  // [pos, C]
              x = Index(Index(x, 0, p.slices.positions), 1, p.slices.channels);
              break;
            case HookLayout::Kind::kTokenHead:  // [pos, head, d_head]
              x = Index(Index(Index(x, 0, p.slices.positions), 1, p.slices.heads), 2,
                        p.slices.channels);
              break;
            case HookLayout::Kind::kHeadQueryKey:  // [head, q, k]
              x = Index(Index(Index(x, 0, p.slices.heads), 1, p.slices.positions), 2,
                        p.slices.channels);
              break;
          }
          at::Tensor c = x.to(at::kFloat).cpu().contiguous();
          HookTensor out;
          out.hook = hook;
          out.sequence = selected[batch[r]];
          out.shape.assign(c.sizes().begin(), c.sizes().end());
          out.dims = DimNames(layout);
          out.values.assign(c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
          on_tensor(out);
        }
      });
    }
    RETURN_IF_ERROR(model.RunHooks(BatchTokens(sub, batch), hooks, cancel));
    if (progress) progress(++done, static_cast<int64_t>(batches.size()));
  }
  (void)wanted;
  return bytes;
}

}  // namespace sinkscope
