// What every libcurl request of the core shares: its options (timeouts, TLS, the redirect policy),
// the reply headers it looks at, how a reply that moved is described, and a bounded, cancellable
// perform. Private to csrc/src/net.
#pragma once
#include <curl/curl.h>

#include <chrono>
#include <cstdint>
#include <string>

#include "tensorstream/cancel.hpp"
#include "tensorstream/net/http.hpp"

namespace ts::net {

using Clock = std::chrono::steady_clock;

// Redirects followed by an unsigned request; signed requests follow none.
constexpr long kMaxRedirects = 5;
// The largest size a server may claim for a resource (256 TiB; S3 objects end at 5 TiB).
constexpr uint64_t kMaxResourceBytes = uint64_t{1} << 48;
// The slowest a transfer may be, averaged over HttpOptions::timeout_s, before it counts as stalled.
constexpr long kMinBytesPerSecond = 1024;
// How much of an error reply's body is kept (and read) for the message.
constexpr size_t kErrorBodyBytes = 4096;

void global_init();

// Keep-alive, timeouts, TLS, dot segments sent as they are, http/https only; redirects followed
// (at most kMaxRedirects, never from https to http) only when the request is unsigned.
void set_common_options(CURL* e, const HttpOptions& o, const std::string& url);

// Acknowledging what arrives at once instead of after the kernel's delayed-ACK timer. A server
// that corks its replies (nginx with tcp_nopush, a common default) holds the last segment of a
// reply until the segment before it is acknowledged: on a kept connection, a 40 ms wait per
// request. The kernel leaves quick-ack mode on its own, so a transfer sets it again as bytes
// arrive. track_connection makes `*sock` the socket of the connection each request of `e` goes
// on (set before the request is sent); ack_quickly acknowledges what is pending on it now.
// (Sockets are opened close-on-exec and known to the process through set_common_options.)
void track_connection(CURL* e, curl_socket_t* sock);
void ack_quickly(curl_socket_t sock);

// The reply headers the core reads. note() takes one raw header line; a new status line (after
// a redirect) clears what the previous reply said.
struct ReplyHeaders {
  std::string content_range, location, bucket_region, etag, last_modified;
  void note(const char* data, size_t len);
};

// Appends the start of an error body, up to kErrorBodyBytes; false once that much is kept (the
// write callback then stops the transfer instead of reading an endless body).
bool keep_error_body(std::string& body, const char* data, size_t len);

// Why a reply that moved (3xx), or a redirect libcurl refused, ends the request; empty when it
// did not move. Names the target (without credentials) or, for S3, the region it asked for.
std::string describe_move(long status, CURLcode rc, const ReplyHeaders& h, const std::string& body, bool is_signed);

// The total of "bytes A-B/TOTAL"; false for anything else (a "*", a sign, a size past
// kMaxResourceBytes). `start` receives A when given.
bool parse_content_range(const std::string& value, uint64_t* total, uint64_t* start = nullptr);

// Whether a failed attempt may be repeated: no reply, a transport failure mid-reply (a stall in
// the headers included), 408, 429 or 5xx.
bool transient(CURLcode rc, long status);

// curl_easy_perform that stops at `deadline` (CURLE_OPERATION_TIMEDOUT) and, within 50 ms, when
// `cancel` asks (throws Cancelled). With `multi`, the request runs on that multi-handle (and its
// kept connections) instead of a fresh one.
CURLcode perform_bounded(CURL* e, Clock::time_point deadline, const CancelToken* cancel, CURLM* multi = nullptr);

// At most 200 characters of `s`, control characters replaced, for messages.
std::string printable(std::string s);

// The text of the first <tag>...</tag> in an XML error body (at most `max` characters, control
// characters as spaces); empty when there is none.
std::string xml_text(const std::string& body, const char* tag, size_t max = 200);

// now + seconds; the far future for 0 (no limit).
Clock::time_point deadline_after(double seconds);

}  // namespace ts::net
