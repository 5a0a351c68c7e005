#include "common/train_recipe_proto.h"

namespace sinkscope {

TrainRecipe TrainRecipeFromProto(const v1::TrainRecipe& p) {
  TrainRecipe r;
  if (p.has_steps()) r.steps = p.steps();
  if (p.has_batch_size()) r.batch_size = p.batch_size();
  if (p.has_seq_len()) r.seq_len = p.seq_len();
  if (p.has_seed()) r.seed = p.seed();
  if (p.has_lr()) r.lr = p.lr();
  if (p.has_min_lr_ratio()) r.min_lr_ratio = p.min_lr_ratio();
  if (p.has_warmup_steps()) r.warmup_steps = p.warmup_steps();
  if (p.has_beta1()) r.beta1 = p.beta1();
  if (p.has_beta2()) r.beta2 = p.beta2();
  if (p.has_eps()) r.eps = p.eps();
  if (p.has_weight_decay()) r.weight_decay = p.weight_decay();
  if (p.has_grad_clip()) r.grad_clip = p.grad_clip();
  if (p.has_init_std()) r.init_std = p.init_std();
  if (p.has_loss_pos_min()) r.loss_pos_min = p.loss_pos_min();
  if (p.has_loss_pos_max()) r.loss_pos_max = p.loss_pos_max();
  if (p.has_heldout_fraction()) r.heldout_fraction = p.heldout_fraction();
  if (p.has_bos_id()) r.bos_id = p.bos_id();
  if (p.has_eval_every()) r.eval_every = p.eval_every();
  if (p.has_eval_sequences()) r.eval_sequences = p.eval_sequences();
  if (p.has_checkpoint_every()) r.checkpoint_every = p.checkpoint_every();
  if (p.has_precision()) r.precision = p.precision();
  r.no_weight_decay.assign(p.no_weight_decay().begin(), p.no_weight_decay().end());
  return r;
}

}  // namespace sinkscope
