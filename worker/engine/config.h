// The model configuration lives in common/ (no libtorch) so that the engine
// and the server (catalog, memory estimate) share one parser and one shape.
#pragma once

#include "common/model_config.h"
