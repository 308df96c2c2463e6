// HTTP(S) byte source: range GETs through a libcurl multi-handle, many in flight over kept-alive
// connections, bytes written straight into the destinations, broken ranges resumed.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tensorstream/cancel.hpp"
#include "tensorstream/io/engine.hpp"
#include "tensorstream/io/source.hpp"
#include "tensorstream/net/sigv4.hpp"

struct curl_slist;

namespace ts {

struct HttpOptions {
  unsigned connections = 0;   // range requests in flight per host; 0: ramped up per host (auto)
  unsigned retries = 5;       // further attempts per range after the first
  double timeout_s = 30;      // seconds under 1 KiB/s (or without a connection) before a retry
  double deadline_s = 0;      // overall seconds for one run or request; 0: none
  double open_timeout_s = 60;  // overall seconds for opening a URL (the size probe, every attempt)
  std::string ca_bundle;      // PEM file of trusted CAs; empty: the system store
  std::string ca_path;        // directory of trusted CA certificates; empty: the system store
  bool insecure = false;      // skip certificate checks (testing only)
  std::shared_ptr<const SigV4Signer> signer;  // signs every request (S3); null: unsigned
  std::string display;        // how messages name the resource (e.g. s3://bucket/key); empty: the URL
  // The TENSORSTREAM_HTTP_* settings (see settings.hpp).
  static HttpOptions from_env();
};

class HttpSource final : public Source {
 public:
  // Asks the server for the size with a one-byte range request, within opts.open_timeout_s (and
  // opts.deadline_s); throws NetworkError, or Cancelled once `cancel` asks.
  HttpSource(std::string url, HttpOptions opts, const CancelToken* cancel = nullptr);
  uint64_t size() const override { return size_; }
  const std::string& name() const override { return display_; }
  void read_exact(uint64_t offset, void* dst, size_t n) const override;
  void read_exact(uint64_t offset, void* dst, size_t n, const CancelToken* cancel) const override;
  std::string kind() const override;  // one host, one set of connection options
  std::unique_ptr<ReadEngine> engine_for(const Source& whole, size_t chunk_bytes) const override;
  const std::string& url() const { return url_; }
  const HttpOptions& options() const { return opts_; }
  // What the reply to the size probe said of the resource ("" when the server sent nothing).
  const std::string& etag() const { return etag_; }
  const std::string& last_modified() const { return last_modified_; }

 private:
  std::string url_, display_, etag_, last_modified_;
  HttpOptions opts_;
  uint64_t size_ = 0;
};

// How many range requests each host read from gets (see net/ramp.hpp): the level in use, whether
// the ramp has settled, and the bytes/s it measured at each level it tried.
struct HostConcurrency {
  std::string host;
  unsigned connections = 0;
  bool settled = false, fixed = false;
  std::vector<std::pair<unsigned, double>> measured;
};
std::vector<HostConcurrency> host_concurrency();

// Closes the connections kept for later loads (they reopen on demand); returns how many
// connection sets (curl multi-handles) were made since the process started.
size_t close_idle_connections();

// The URL without user info and query string, for messages.
std::string redact_url(const std::string& url);

// "Code: Message" from an S3-style XML error body; empty when it has none.
std::string describe_error_body(const std::string& body);

// Appends the signer's headers for one request to `list` (unchanged without a signer).
curl_slist* signed_headers(const HttpOptions& o, const char* method, const std::string& url,
                           const std::string& payload_sha256_hex, curl_slist* list);

}  // namespace ts
