#include "server/host_lease.h"

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace sinkscope {
namespace server {
namespace {

void Log(const std::string& msg) { std::fprintf(stderr, "sinkscope-server: %s\n", msg.c_str()); }

/// A published worker counts as idle for affinity when its host saw it
/// poll within this window (as the scheduler's own idle test).
constexpr int64_t kPeerFreshMs = 2000;

}  // namespace

HostLeases::HostLeases(JobStore* store, Scheduler* scheduler, HostLeaseOptions options,
                       std::function<void()> on_change)
    : store_(store), scheduler_(scheduler), options_(options), on_change_(std::move(on_change)) {}

HostLeases::~HostLeases() { Stop(); }

void HostLeases::Start() { thread_ = std::thread([this] { Loop(); }); }

void HostLeases::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void HostLeases::RunOnce() {
  absl::StatusOr<int> renewed = store_->RenewLeases();
  if (!renewed.ok()) Log(absl::StrCat("renewing job leases: ", renewed.status().ToString()));
  absl::StatusOr<std::vector<std::string>> reclaimed =
      store_->ReclaimExpiredLeases(options_.max_attempts);
  if (!reclaimed.ok()) {
    Log(absl::StrCat("re-queueing jobs of lost hosts: ", reclaimed.status().ToString()));
  } else if (!reclaimed->empty()) {
    Log(absl::StrCat("released ", reclaimed->size(), " job(s) whose host stopped renewing ",
                     "its lease: ", absl::StrJoin(*reclaimed, ", ")));
    if (on_change_) on_change_();
  }
  if (!options_.share_workers) return;
  const absl::Time now = absl::Now();
  std::vector<HostWorker> mine;
  for (const auto& [name, w] : scheduler_->LocalWorkers()) {
    HostWorker h;
    h.worker = name;
    h.budget_bytes = w.budget_bytes;
    h.models = w.models;
    h.busy = w.busy || now - w.last_poll > absl::Milliseconds(kPeerFreshMs);
    mine.push_back(std::move(h));
  }
  if (absl::Status s = store_->PublishWorkers(mine); !s.ok()) {
    Log(absl::StrCat("publishing workers: ", s.ToString()));
  }
  absl::StatusOr<std::vector<HostWorker>> peers = store_->PeerWorkers(kPeerFreshMs);
  absl::StatusOr<std::map<std::string, int>> running = store_->PeerRunningByOwner();
  if (!peers.ok() || !running.ok()) return;
  std::map<std::string, WorkerView> views;
  for (const HostWorker& h : *peers) {
    WorkerView v;
    v.budget_bytes = h.budget_bytes;
    v.models = h.models;
    v.busy = h.busy;
    v.last_poll = now;  // fresh by the database's clock (PeerWorkers filtered)
    views[absl::StrCat(h.host, "/", h.worker)] = std::move(v);
  }
  scheduler_->SetPeers(std::move(views), *std::move(running));
}

void HostLeases::Loop() {
  const int64_t tick_ms =
      options_.share_workers ? std::clamp<int64_t>(options_.lease_ms / 4, 50, 500)
                             : std::max<int64_t>(options_.lease_ms / 4, 50);
  while (true) {
    RunOnce();
    std::unique_lock<std::mutex> lock(mu_);
    if (cv_.wait_for(lock, std::chrono::milliseconds(tick_ms), [&] { return stop_; })) return;
  }
}

}  // namespace server
}  // namespace sinkscope
