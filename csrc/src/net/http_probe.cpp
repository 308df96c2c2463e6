// Opening a URL: a one-byte range request whose Content-Range gives the size, bounded in time,
// cancellable, and retried like the engine's ranges.
#include <algorithm>
#include <memory>
#include <stdexcept>
#include <thread>

#include "curl_setup.hpp"
#include "lanes.hpp"
#include "tensorstream/errors.hpp"
#include "tensorstream/net/http.hpp"

namespace ts {

namespace {

struct Probe {
  CURL* easy = nullptr;
  net::ReplyHeaders reply;
  std::string error_body;
  bool have_size = false;  // stopped at the end of a 206's headers
};

bool end_of_headers(const char* data, size_t len) {
  return len <= 2 && (len == 0 || data[0] == '\r' || data[0] == '\n');
}

// At the end of a 206's headers the size is known. A one-byte body is read (so that the
// connection stays open for the index and the data); a longer one is not waited for (a server
// that stalls after its headers then costs nothing here).
size_t on_header(char* data, size_t size, size_t n, void* user) {
  size_t len = size * n;
  auto* p = static_cast<Probe*>(user);
  p->reply.note(data, len);
  if (!end_of_headers(data, len)) return len;
  long code = 0;
  curl_easy_getinfo(p->easy, CURLINFO_RESPONSE_CODE, &code);
  p->have_size = code == 206 && !p->reply.content_range.empty();
  if (!p->have_size) return len;
  curl_off_t body = -1;
  curl_easy_getinfo(p->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &body);
  return body == 1 ? len : 0;
}

// Keeps the start of an error body and stops there; any other body ends the request.
size_t on_body(char* data, size_t size, size_t n, void* user) {
  size_t len = size * n;
  auto* p = static_cast<Probe*>(user);
  long code = 0;
  curl_easy_getinfo(p->easy, CURLINFO_RESPONSE_CODE, &code);
  if (code < 300) return len <= 1 ? len : 0;
  return net::keep_error_body(p->error_body, data, len) ? len : 0;
}

// Sleeps until `until`, waking every 20 ms to see whether `cancel` asks.
void pause_until(net::Clock::time_point until, const CancelToken* cancel) {
  while (net::Clock::now() < until) {
    if (cancel) cancel->check();
    std::this_thread::sleep_for(std::min<net::Clock::duration>(std::chrono::milliseconds(20), until - net::Clock::now()));
  }
}

double open_limit_s(const HttpOptions& o) {
  if (o.deadline_s > 0 && (o.open_timeout_s <= 0 || o.deadline_s < o.open_timeout_s)) return o.deadline_s;
  return o.open_timeout_s;
}

void check_url(const std::string& url) {
  for (unsigned char c : url)
    if (c < 0x20 || c == 0x7f) throw std::invalid_argument("a URL may not hold control characters (NUL, CR, LF...)");
}

}  // namespace

HttpSource::HttpSource(std::string url, HttpOptions opts, const CancelToken* cancel)
    : url_(std::move(url)), display_(opts.display.empty() ? redact_url(url_) : opts.display), opts_(std::move(opts)) {
  check_url(url_);
  net::global_init();
  std::unique_ptr<CURL, void (*)(CURL*)> easy(curl_easy_init(), curl_easy_cleanup);
  if (!easy) throw std::runtime_error("curl_easy_init failed");
  std::unique_ptr<curl_slist, void (*)(curl_slist*)> headers(nullptr, curl_slist_free_all);
  CURL* e = easy.get();
  const double limit = open_limit_s(opts_);
  const auto deadline = net::deadline_after(limit);
  // The probe's connection stays with the host's kept lanes, for the index and the data after it.
  net::LaneLease lane = net::borrow_lanes(net::host_key(url_, opts_), 1, 1);
  Probe probe;
  probe.easy = e;
  long status = 0;
  CURLcode rc = CURLE_OK;
  unsigned attempts = 0;
  for (;;) {
    ++attempts;
    curl_easy_reset(e);
    curl_easy_setopt(e, CURLOPT_URL, url_.c_str());
    curl_easy_setopt(e, CURLOPT_RANGE, "0-0");
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, &probe);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &probe);
    headers.reset(signed_headers(opts_, "GET", url_, SigV4Signer::kUnsignedPayload, nullptr));
    if (headers) curl_easy_setopt(e, CURLOPT_HTTPHEADER, headers.get());
    net::set_common_options(e, opts_, url_);
    probe = Probe{e, {}, {}, false};
    rc = net::perform_bounded(e, deadline, cancel, lane[0].multi());
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    const bool stopped_on_purpose = probe.have_size || (status >= 300 && probe.error_body.size() >= net::kErrorBodyBytes);
    if (rc == CURLE_WRITE_ERROR && stopped_on_purpose) rc = CURLE_OK;
    if (probe.have_size && rc != CURLE_OK && rc != CURLE_WRITE_ERROR) rc = CURLE_OK;  // the size came; the byte after it is not needed
    if (net::Clock::now() >= deadline || attempts > opts_.retries || !net::transient(rc, status)) break;
    double delay = std::min(2.0, 0.05 * static_cast<double>(1u << std::min(attempts - 1, 7u)));
    pause_until(std::min(deadline, net::deadline_after(delay)), cancel);
  }
  const std::string where = "GET " + display_;
  auto fail = [&](const std::string& why) {
    throw NetworkError(where + ": " + why + " after " + std::to_string(attempts) + " attempt" +
                           (attempts == 1 ? "" : "s"),
                       display_, status, attempts);
  };
  if (!probe.have_size && net::Clock::now() >= deadline)
    fail("no usable reply within " + std::to_string(static_cast<long>(limit)) +
         " s (the time allowed for opening a URL)");
  if (std::string moved = net::describe_move(status, rc, probe.reply, probe.error_body, opts_.signer != nullptr);
      !moved.empty())
    fail(moved);
  if (status == 200)
    throw NetworkError(where + ": the server ignores Range requests (answered 200 to a range request)",
                       display_, status, attempts);
  if (status != 206) {
    const std::string detail = describe_error_body(probe.error_body);
    fail(status ? "HTTP " + std::to_string(status) + (detail.empty() ? "" : " (" + detail + ")")
                : std::string(curl_easy_strerror(rc)));
  }
  if (rc != CURLE_OK) fail(std::string(curl_easy_strerror(rc)) + " (HTTP 206, in its headers)");
  etag_ = probe.reply.etag;
  last_modified_ = probe.reply.last_modified;
  if (!net::parse_content_range(probe.reply.content_range, &size_))
    fail("no usable size in the reply's Content-Range (" + net::printable(probe.reply.content_range) +
         "; at most 256 TiB)");
}

}  // namespace ts
