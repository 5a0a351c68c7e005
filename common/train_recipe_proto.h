// The proto's training recipe as the engine's TrainRecipe (common/train_recipe.h):
// one conversion for the server's submission checks and the worker's runner.
#pragma once

#include "common/train_recipe.h"
#include "sinkscope/v1/analysis.pb.h"

namespace sinkscope {

/// `p` with TrainRecipe's defaults for absent fields (no checks: see
/// CheckTrainRecipeFields).
TrainRecipe TrainRecipeFromProto(const v1::TrainRecipe& p);

}  // namespace sinkscope
