// The one place where internal absl::Status values become gRPC statuses.
#pragma once

#include <string>

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace sinkscope {
namespace server {

/// Longest status message sent to a client; longer ones are cut with "...".
inline constexpr size_t kMaxStatusMessageBytes = 2048;

/// Maps an absl::Status to a grpc::Status with the same code number (the two
/// enums agree) and a truncated message.
grpc::Status ToGrpcStatus(const absl::Status& status);

/// Maps a grpc::Status (e.g. from a worker RPC) to an absl::Status.
absl::Status FromGrpcStatus(const grpc::Status& status);

/// Cuts `message` to at most `max_bytes` bytes on a UTF-8 boundary, adding "...".
std::string TruncateMessage(const std::string& message, size_t max_bytes = kMaxStatusMessageBytes);

}  // namespace server
}  // namespace sinkscope
