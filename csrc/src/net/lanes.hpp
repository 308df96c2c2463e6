// Connections kept per host for the whole process. A lane is one libcurl multi-handle (whose
// connection cache holds the open connections) and its easy handles; a run borrows lanes for the
// host it reads from and gives them back, so the size probe, the index, the data and every later
// load through any loader reuse the same connections. Each host also remembers how many
// connections served it best (see ramp.hpp). After fork() a child starts with an empty pool and
// never touches the parent's handles. Private to csrc/src/net.
#pragma once
#include <curl/curl.h>

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "tensorstream/net/http.hpp"

namespace ts::net {

struct HostState;  // ramp.hpp

class Lane {
 public:
  explicit Lane(size_t handles);
  ~Lane();
  Lane(const Lane&) = delete;
  Lane& operator=(const Lane&) = delete;
  CURLM* multi() const { return multi_; }
  // At least `handles` easy handles (the connections the multi-handle keeps stay).
  void grow(size_t handles);
  const std::vector<CURL*>& handles() const { return easy_; }

 private:
  std::vector<CURL*> easy_;
  CURLM* multi_ = nullptr;
};

// Lanes borrowed for one run (or one request), returned to the pool when destroyed.
class LaneLease {
 public:
  LaneLease(std::string key, std::vector<std::unique_ptr<Lane>> lanes) : key_(std::move(key)), lanes_(std::move(lanes)) {}
  ~LaneLease();
  LaneLease(LaneLease&&) = default;
  LaneLease(const LaneLease&) = delete;
  LaneLease& operator=(const LaneLease&) = delete;
  size_t size() const { return lanes_.size(); }
  Lane& operator[](size_t i) { return *lanes_[i]; }

 private:
  std::string key_;
  std::vector<std::unique_ptr<Lane>> lanes_;
};

// What tells connections to a host apart: scheme, host, port and the TLS options.
std::string host_key(const std::string& url, const HttpOptions& o);

// `count` lanes of `handles_each` easy handles for `key`: idle ones first, new ones for the rest.
LaneLease borrow_lanes(const std::string& key, size_t count, size_t handles_each);

// The host's remembered state (made on first use; lives as long as the process's pool).
HostState& host_state(const std::string& key);

// Every idle lane closed (their connections with them); for tests and long-idle processes.
void close_idle_connections();

// Lanes made since the process started (or forked): each is a new connection set.
size_t lanes_made();

}  // namespace ts::net
