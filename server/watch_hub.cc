#include "server/watch_hub.h"

#include <algorithm>
#include <chrono>
#include <climits>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/status_util.h"

namespace sinkscope {
namespace server {

/// One WatchJob stream. Owned by the hub (shared_ptr) from Open to OnDone;
/// gRPC calls its reactions on its own threads, the pump calls Refill.
class WatchHub::Stream : public grpc::ServerWriteReactor<v1::JobEvent> {
 public:
  Stream(WatchHub* hub, std::string user, std::string job_id, int64_t after_seq,
         std::function<void(int)> on_done)
      : hub_(hub),
        user_(std::move(user)),
        job_id_(std::move(job_id)),
        seq_(after_seq),
        on_done_(std::move(on_done)) {}

  const std::string& user() const { return user_; }
  const std::string& job_id() const { return job_id_; }

  /// Keeps the stream alive until OnDone.
  void Own(std::shared_ptr<Stream> self) { self_ = std::move(self); }

  /// Finishes with `status` (after the write in flight, if any). Once.
  void End(const grpc::Status& status) {
    std::unique_lock<std::mutex> lock(mu_);
    if (finishing_) return;
    finishing_ = true;
    if (writing_) {
      pending_finish_ = status;
      return;
    }
    lock.unlock();
    DoFinish(status);
  }

  /// The pump's view: whether it may read new events for this stream, and
  /// from which seq.
  bool IdleAt(int64_t* seq) {
    std::lock_guard<std::mutex> lock(mu_);
    if (finishing_ || writing_ || !pending_.empty()) return false;
    *seq = seq_;
    return true;
  }

  /// Queues `events` (read after seq `from`) and starts writing them.
  void Push(int64_t from, std::vector<v1::JobEvent> events) {
    std::unique_lock<std::mutex> lock(mu_);
    if (finishing_ || writing_ || !pending_.empty() || seq_ != from || events.empty()) return;
    for (v1::JobEvent& e : events) pending_.push_back(std::move(e));
    seq_ = pending_.back().seq();
    StartNextLocked(lock);
  }

  void OnWriteDone(bool ok) override {
    std::unique_lock<std::mutex> lock(mu_);
    writing_ = false;
    if (pending_finish_.has_value()) {
      grpc::Status s = *pending_finish_;
      pending_finish_.reset();
      lock.unlock();
      DoFinish(s);
      return;
    }
    if (!ok) {  // the client went away
      finishing_ = true;
      lock.unlock();
      DoFinish(grpc::Status(grpc::StatusCode::CANCELLED, "watcher went away"));
      return;
    }
    if (sent_terminal_) {
      finishing_ = true;
      lock.unlock();
      DoFinish(grpc::Status::OK);
      return;
    }
    if (!pending_.empty()) {
      StartNextLocked(lock);
      return;
    }
    lock.unlock();
    if (std::shared_ptr<Stream> self = Self()) hub_->Schedule(self);
  }

  void OnCancel() override { End(grpc::Status(grpc::StatusCode::CANCELLED, "watcher went away")); }

  void OnDone() override {
    if (on_done_) on_done_(static_cast<int>(final_code_));
    hub_->Remove(this);
    std::shared_ptr<Stream> keep;
    {
      std::lock_guard<std::mutex> lock(mu_);
      keep = std::move(self_);
    }
    // `keep` may be the last reference: the stream is deleted here.
  }

  int64_t seq() {
    std::lock_guard<std::mutex> lock(mu_);
    return seq_;
  }

 private:
  std::shared_ptr<Stream> Self() {
    std::lock_guard<std::mutex> lock(mu_);
    return self_;
  }

  /// Writes the next pending event; `lock` holds mu_ and is released.
  void StartNextLocked(std::unique_lock<std::mutex>& lock) {
    current_ = std::move(pending_.front());
    pending_.pop_front();
    if (IsTerminalEvent(current_)) {
      sent_terminal_ = true;
      pending_.clear();
    }
    writing_ = true;
    lock.unlock();
    StartWrite(&current_);
  }

  void DoFinish(const grpc::Status& status) {
    final_code_ = status.error_code();
    Finish(status);
  }

  WatchHub* const hub_;
  const std::string user_, job_id_;
  std::mutex mu_;
  int64_t seq_;                       // last seq queued for writing
  std::deque<v1::JobEvent> pending_;  // read, not yet written
  v1::JobEvent current_;              // the write in flight
  bool writing_ = false, finishing_ = false, sent_terminal_ = false;
  std::optional<grpc::Status> pending_finish_;
  grpc::StatusCode final_code_ = grpc::StatusCode::OK;
  std::function<void(int)> on_done_;
  std::shared_ptr<Stream> self_;
};

namespace {

/// A stream that ends at once with a status (errors, caps).
class FailedStream : public grpc::ServerWriteReactor<v1::JobEvent> {
 public:
  FailedStream(const grpc::Status& status, std::function<void(int)> on_done)
      : code_(status.error_code()), on_done_(std::move(on_done)) {
    Finish(status);
  }
  void OnDone() override {
    if (on_done_) on_done_(static_cast<int>(code_));
    delete this;
  }

 private:
  grpc::StatusCode code_;
  std::function<void(int)> on_done_;
};

}  // namespace

WatchHub::WatchHub(JobStore* store, WatchLimits limits, std::function<void(int)> on_done)
    : store_(store), limits_(limits), on_done_(std::move(on_done)) {
  pump_ = std::thread([this] { PumpLoop(); });
}

WatchHub::~WatchHub() {
  Shutdown();
  {
    std::lock_guard<std::mutex> lock(mu_);
    ready_.clear();
  }
  cv_.notify_all();
  if (pump_.joinable()) pump_.join();
}

grpc::ServerWriteReactor<v1::JobEvent>* WatchHub::Failed(const grpc::Status& status,
                                                          std::function<void(int)> on_done) {
  return new FailedStream(status, std::move(on_done));
}

grpc::ServerWriteReactor<v1::JobEvent>* WatchHub::Open(const std::string& user,
                                                        const std::string& job_id,
                                                        int64_t after_seq) {
  std::shared_ptr<Stream> s;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (shutdown_) {
      return Failed(grpc::Status(grpc::StatusCode::UNAVAILABLE, "server is shutting down"),
                    on_done_);
    }
    if (static_cast<int>(streams_.size()) >= limits_.total) {
      return Failed(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                 absl::StrCat("too many concurrent WatchJob streams on this server (",
                                              streams_.size(), "; cap ", limits_.total,
                                              ", max_watch_streams); retry later")),
                    on_done_);
    }
    auto it = by_user_.find(user);
    if (it != by_user_.end() && it->second >= limits_.per_user) {
      return Failed(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                                 absl::StrCat("user ", user, " already has ", it->second,
                                              " concurrent WatchJob streams (cap ",
                                              limits_.per_user,
                                              ", max_watch_streams_per_user); close some first")),
                    on_done_);
    }
    s = std::make_shared<Stream>(this, user, job_id, after_seq, on_done_);
    s->Own(s);
    streams_[s.get()] = s;
    by_job_[job_id].insert(s.get());
    ++by_user_[user];
    ready_.push_back(s);
  }
  cv_.notify_all();
  return s.get();
}

void WatchHub::Remove(Stream* s) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = streams_.find(s);
  if (it == streams_.end()) return;
  auto job = by_job_.find(s->job_id());
  if (job != by_job_.end()) {
    job->second.erase(s);
    if (job->second.empty()) {
      by_job_.erase(job);
      PruneOfferedLocked(s->job_id(), INT64_MAX);
    }
  }
  auto user = by_user_.find(s->user());
  if (user != by_user_.end() && --user->second <= 0) by_user_.erase(user);
  streams_.erase(it);
}

void WatchHub::Schedule(const std::shared_ptr<Stream>& s) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (shutdown_) return;
    ready_.push_back(s);
  }
  cv_.notify_all();
}

void WatchHub::JobChanged(const std::string& job_id) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = by_job_.find(job_id);
    if (it == by_job_.end()) return;
    for (Stream* s : it->second) ready_.push_back(streams_[s]);
  }
  cv_.notify_all();
}

void WatchHub::Offer(const std::string& job_id, const std::vector<v1::JobEvent>& events) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto watchers = by_job_.find(job_id);
    if (watchers == by_job_.end()) return;  // nobody watches: the store has them
    std::map<int64_t, v1::JobEvent>& kept = offered_[job_id];
    for (const v1::JobEvent& e : events) {
      const size_t bytes = e.ByteSizeLong();
      if (bytes > kMaxOfferedEventBytes || offered_bytes_ + bytes > kMaxOfferedBytes) continue;
      if (kept.emplace(e.seq(), e).second) offered_bytes_ += bytes;
    }
    if (kept.empty()) offered_.erase(job_id);
    for (Stream* st : watchers->second) ready_.push_back(streams_[st]);
  }
  cv_.notify_all();
}

void WatchHub::PruneOfferedLocked(const std::string& job_id, int64_t upto) {
  auto it = offered_.find(job_id);
  if (it == offered_.end()) return;
  std::map<int64_t, v1::JobEvent>& kept = it->second;
  while (!kept.empty() && kept.begin()->first <= upto) {
    offered_bytes_ -= kept.begin()->second.ByteSizeLong();
    kept.erase(kept.begin());
  }
  if (kept.empty()) offered_.erase(it);
}

void WatchHub::AllChanged() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    sweep_ = true;
  }
  cv_.notify_all();
}

void WatchHub::Shutdown() {
  std::vector<std::shared_ptr<Stream>> all;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (shutdown_) return;
    shutdown_ = true;
    for (auto& [_, s] : streams_) all.push_back(s);
  }
  cv_.notify_all();
  for (auto& s : all) {
    s->End(grpc::Status(grpc::StatusCode::UNAVAILABLE,
                        absl::StrCat("server is shutting down; watch again with after_seq=",
                                     s->seq())));
  }
}

int WatchHub::active() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(streams_.size());
}

int WatchHub::active_of(const std::string& user) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = by_user_.find(user);
  return it == by_user_.end() ? 0 : it->second;
}

void WatchHub::Refill(const std::shared_ptr<Stream>& s) {
  int64_t seq = 0;
  if (!s->IdleAt(&seq)) return;  // writing, or finishing: it reschedules itself
  constexpr int kBatch = 256;
  {
    // Offered events that continue the stream exactly: no store read. The
    // ones every watcher of the job has passed are dropped.
    std::vector<v1::JobEvent> next;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = offered_.find(s->job_id());
      if (it != offered_.end()) {
        for (auto e = it->second.find(seq + 1);
             e != it->second.end() && e->first == seq + 1 + static_cast<int64_t>(next.size()) &&
             static_cast<int>(next.size()) < kBatch;
             ++e) {
          next.push_back(e->second);
        }
        int64_t low = seq + static_cast<int64_t>(next.size());
        auto watchers = by_job_.find(s->job_id());
        if (watchers != by_job_.end()) {
          for (Stream* other : watchers->second) {
            if (other != s.get()) low = std::min(low, other->seq());
          }
        }
        PruneOfferedLocked(s->job_id(), low);
      }
    }
    if (!next.empty()) {
      s->Push(seq, std::move(next));
      return;
    }
  }
  absl::StatusOr<std::vector<v1::JobEvent>> events = store_->EventsSince(s->job_id(), seq, kBatch);
  if (!events.ok()) {
    s->End(ToGrpcStatus(events.status()));
    return;
  }
  if (!events->empty()) {
    s->Push(seq, *std::move(events));
    return;
  }
  // Nothing new: a job whose terminal event is at or before `seq` is done.
  absl::StatusOr<v1::Job> job = store_->GetJob(s->job_id());
  if (!job.ok()) {
    s->End(ToGrpcStatus(job.status()));
    return;
  }
  if (IsTerminal(job->state()) && job->last_event_seq() <= seq) s->End(grpc::Status::OK);
}

void WatchHub::PumpLoop() {
  // A slow sweep over every stream catches a change nobody announced.
  constexpr auto kSweep = std::chrono::seconds(2);
  auto next_sweep = std::chrono::steady_clock::now() + kSweep;
  while (true) {
    std::vector<std::shared_ptr<Stream>> batch;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_until(lock, next_sweep, [&] { return shutdown_ || sweep_ || !ready_.empty(); });
      if (shutdown_) return;
      if (sweep_ || std::chrono::steady_clock::now() >= next_sweep) {
        sweep_ = false;
        next_sweep = std::chrono::steady_clock::now() + kSweep;
        for (auto& [_, s] : streams_) batch.push_back(s);
      }
      std::set<Stream*> seen;
      for (auto& s : batch) seen.insert(s.get());
      while (!ready_.empty()) {
        if (seen.insert(ready_.front().get()).second) batch.push_back(ready_.front());
        ready_.pop_front();
      }
    }
    for (const auto& s : batch) Refill(s);
  }
}

}  // namespace server
}  // namespace sinkscope
