#include "lanes.hpp"

#include <atomic>
#include <map>
#include <mutex>
#include <new>
#include <stdexcept>

#include "curl_setup.hpp"
#include "ramp.hpp"
#include "tensorstream/per_process.hpp"

namespace ts::net {

Lane::Lane(size_t handles) {
  global_init();
  multi_ = curl_multi_init();
  if (!multi_) throw std::runtime_error("curl_multi_init failed");
  try {
    grow(handles);
  } catch (...) {
    for (CURL* made : easy_) curl_easy_cleanup(made);
    curl_multi_cleanup(multi_);
    throw;
  }
}

void Lane::grow(size_t handles) {
  while (easy_.size() < handles) {
    CURL* e = curl_easy_init();
    if (!e) throw std::runtime_error("curl_easy_init failed");
    easy_.push_back(e);
  }
  // Keep a connection per handle open between runs (libcurl's default follows the handles added).
  curl_multi_setopt(multi_, CURLMOPT_MAXCONNECTS, static_cast<long>(easy_.size()));
}

Lane::~Lane() {
  for (CURL* e : easy_) {
    if (multi_) curl_multi_remove_handle(multi_, e);  // a no-op for a handle it does not hold
    curl_easy_cleanup(e);
  }
  easy_.clear();
  if (multi_) curl_multi_cleanup(multi_);  // closes the connections it kept
  multi_ = nullptr;
}

namespace {

constexpr size_t kIdleLanesPerHost = 16;

struct Host {
  std::unique_ptr<HostState> state;
  std::vector<std::unique_ptr<Lane>> idle;
};

// The process's lanes by host (PerProcess: a child of fork() gets a new one and leaves the
// parent's handles alone: their sockets and TLS sessions are the parent's).
struct Pool {
  std::mutex mu;
  std::map<std::string, Host> hosts;
  std::atomic<size_t> made{0};  // lanes made, each a new connection set
};

Pool& pool() { return PerProcess<Pool>::get(); }

Host& host_locked(Pool& p, const std::string& key) {
  Host& h = p.hosts[key];
  if (!h.state) h.state = std::make_unique<HostState>(key.substr(0, key.find('|')));
  return h;
}

}  // namespace

std::string host_key(const std::string& url, const HttpOptions& o) {
  const size_t scheme_end = url.find("://");
  const size_t start = scheme_end == std::string::npos ? 0 : scheme_end + 3;
  size_t end = url.find_first_of("/?#", start);
  if (end == std::string::npos) end = url.size();
  std::string authority = url.substr(start, end - start);
  if (size_t at = authority.rfind('@'); at != std::string::npos) authority.erase(0, at + 1);
  std::string key = url.substr(0, start) + authority;
  key += "|" + o.ca_bundle + "|" + o.ca_path + (o.insecure ? "|insecure" : "|");
  return key;
}

LaneLease borrow_lanes(const std::string& key, size_t count, size_t handles_each) {
  std::vector<std::unique_ptr<Lane>> lanes;
  {
    Pool& p = pool();
    std::lock_guard<std::mutex> lock(p.mu);
    auto& idle = host_locked(p, key).idle;
    while (lanes.size() < count && !idle.empty()) {
      lanes.push_back(std::move(idle.back()));
      idle.pop_back();
    }
  }
  for (auto& lane : lanes) lane->grow(handles_each);
  while (lanes.size() < count) {
    lanes.push_back(std::make_unique<Lane>(handles_each));
    ++pool().made;
  }
  return LaneLease(key, std::move(lanes));
}

LaneLease::~LaneLease() {
  if (lanes_.empty()) return;  // moved from
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mu);
  auto& idle = host_locked(p, key_).idle;
  // Back in reverse, so that the next borrower's first lane (the one its own thread runs, always
  // used) is this lease's first: lanes a run had no worker for stay last, and connections
  // already open are the ones reused.
  for (auto it = lanes_.rbegin(); it != lanes_.rend(); ++it)
    if (*it && idle.size() < kIdleLanesPerHost) idle.push_back(std::move(*it));
  // lanes not kept close here, with their connections
}

HostState& host_state(const std::string& key) {
  Pool& p = pool();
  std::lock_guard<std::mutex> lock(p.mu);
  return *host_locked(p, key).state;
}

void close_idle_connections() {
  std::vector<std::unique_ptr<Lane>> closing;
  Pool& p = pool();
  {
    std::lock_guard<std::mutex> lock(p.mu);
    for (auto& [key, host] : p.hosts)
      for (auto& lane : host.idle) closing.push_back(std::move(lane));
    for (auto& [key, host] : p.hosts) host.idle.clear();
  }
}

size_t lanes_made() { return pool().made.load(); }

std::vector<RampReport> ramp_reports() {
  std::vector<HostState*> states;
  {
    Pool& p = pool();
    std::lock_guard<std::mutex> lock(p.mu);
    for (auto& [key, host] : p.hosts) states.push_back(host.state.get());
  }
  std::vector<RampReport> out;
  for (HostState* s : states) out.push_back(s->report());
  return out;
}

}  // namespace ts::net
