// WatchHub: every public WatchJob stream on gRPC's callback API, without a
// thread each. A stream is a ServerWriteReactor that holds its job id, the
// last seq it sent and a few pending events; one pump thread reads new
// events from the store when a job changes (JobManager tells the hub) or
// when a stream has sent everything it had, and starts the next write.
// Streams are capped per user and in total (RESOURCE_EXHAUSTED naming the
// cap) so that no client can tie up the server's memory or its store.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "server/job_store.h"
#include "sinkscope/v1/analysis.pb.h"

namespace sinkscope {
namespace server {

/// Caps of the hub.
struct WatchLimits {
  /// Concurrent WatchJob streams of one user (max_watch_streams_per_user).
  int per_user = 256;
  /// Concurrent WatchJob streams in all (max_watch_streams).
  int total = 4096;
};

/// Owns the live WatchJob streams. Thread-safe. Must outlive the gRPC server.
class WatchHub {
 public:
  /// `store` must outlive the hub. `on_done(code)` (may be empty) is called
  /// once per stream with its final status code (for metrics).
  WatchHub(JobStore* store, WatchLimits limits, std::function<void(int)> on_done);
  ~WatchHub();
  WatchHub(const WatchHub&) = delete;
  WatchHub& operator=(const WatchHub&) = delete;

  /// A stream of job `job_id`'s events with seq > after_seq for `user`
  /// (access already checked): every stored event, then live ones, ending
  /// with OK after the terminal event. Over a cap, or after Shutdown, the
  /// returned reactor finishes at once (RESOURCE_EXHAUSTED / UNAVAILABLE).
  grpc::ServerWriteReactor<v1::JobEvent>* Open(const std::string& user, const std::string& job_id,
                                               int64_t after_seq);
  /// A reactor that finishes at once with `status` (errors found before Open).
  static grpc::ServerWriteReactor<v1::JobEvent>* Failed(const grpc::Status& status,
                                                         std::function<void(int)> on_done);

  /// Job `job_id` has new events or a new state.
  void JobChanged(const std::string& job_id);
  /// Events of job `job_id` just committed (any order across calls): kept
  /// in memory while the job has watchers, so that their streams take them
  /// from here instead of reading them back from the store. Events of up
  /// to kMaxOfferedEventBytes each, kMaxOfferedBytes in all; a stream whose
  /// next event is not here reads the store as before.
  void Offer(const std::string& job_id, const std::vector<v1::JobEvent>& events);
  static constexpr size_t kMaxOfferedEventBytes = 256 << 10;
  static constexpr size_t kMaxOfferedBytes = 64 << 20;
  /// Every stream should look again (a change made outside the manager).
  void AllChanged();
  /// Ends every stream with UNAVAILABLE (it says the after_seq to resume
  /// from) and refuses new ones. Idempotent.
  void Shutdown();

  /// Live streams, in all and of `user`.
  int active() const;
  int active_of(const std::string& user) const;

  class Stream;

 private:
  friend class Stream;
  void PumpLoop();
  /// Reads `s`'s next events and starts a write, or finishes it.
  void Refill(const std::shared_ptr<Stream>& s);
  void Schedule(const std::shared_ptr<Stream>& s);
  void Remove(Stream* s);

  JobStore* const store_;
  const WatchLimits limits_;
  const std::function<void(int)> on_done_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool shutdown_ = false;
  std::map<Stream*, std::shared_ptr<Stream>> streams_;
  std::map<std::string, std::set<Stream*>> by_job_;
  std::map<std::string, int> by_user_;
  std::deque<std::shared_ptr<Stream>> ready_;  // streams to refill
  /// Offered events by job and seq (jobs with watchers only), and their size.
  std::map<std::string, std::map<int64_t, v1::JobEvent>> offered_;
  size_t offered_bytes_ = 0;
  /// Drops job_id's offered events with seq <= `upto` (mu_ held).
  void PruneOfferedLocked(const std::string& job_id, int64_t upto);
  bool sweep_ = false;                         // refill every stream
  std::thread pump_;
};

}  // namespace server
}  // namespace sinkscope
