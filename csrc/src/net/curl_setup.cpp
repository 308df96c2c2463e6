#include "curl_setup.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>

#include "tensorstream/errors.hpp"
#include "tensorstream/per_process.hpp"

namespace ts::net {

namespace {

bool starts_with_ci(const std::string& s, const char* prefix) {
  return strncasecmp(s.c_str(), prefix, std::strlen(prefix)) == 0;
}

// The value of `name:` in a raw header line, trimmed; false for another header.
bool header_value(const char* data, size_t len, const char* name, std::string* value) {
  const size_t n = std::strlen(name);
  if (len <= n || strncasecmp(data, name, n) != 0 || data[n] != ':') return false;
  std::string v(data + n + 1, len - n - 1);
  size_t a = v.find_first_not_of(" \t"), b = v.find_last_not_of(" \t\r\n");
  *value = a == std::string::npos ? std::string() : v.substr(a, b - a + 1);
  return true;
}

// Digits only, no sign or space, below kMaxResourceBytes.
bool parse_size(const std::string& s, uint64_t* out) {
  if (s.empty() || s.size() > 15) return false;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  if (v > kMaxResourceBytes) return false;
  *out = v;
  return true;
}

// What every request of the process shares besides its lane's connections: resolved host names
// and TLS sessions, so that a new connection to a host seen before skips the DNS lookup and
// resumes the TLS session instead of a full handshake. Made again in a child of fork().
class Share {
 public:
  Share() : sh_(curl_share_init()) {
    if (!sh_) return;  // requests then resolve and handshake on their own
    curl_share_setopt(sh_, CURLSHOPT_LOCKFUNC, lock);
    curl_share_setopt(sh_, CURLSHOPT_UNLOCKFUNC, unlock);
    curl_share_setopt(sh_, CURLSHOPT_USERDATA, this);
    curl_share_setopt(sh_, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
    curl_share_setopt(sh_, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
  }
  CURLSH* get() const { return sh_; }

 private:
  static std::mutex& mu(void* self, curl_lock_data data) {
    auto* s = static_cast<Share*>(self);
    return data == CURL_LOCK_DATA_DNS ? s->dns_ : data == CURL_LOCK_DATA_SSL_SESSION ? s->tls_ : s->other_;
  }
  static void lock(CURL*, curl_lock_data data, curl_lock_access, void* self) { mu(self, data).lock(); }
  static void unlock(CURL*, curl_lock_data data, void* self) { mu(self, data).unlock(); }

  CURLSH* sh_;  // never cleaned up: easy handles of any lane may refer to it until the end
  std::mutex dns_, tls_, other_;
};

// The sockets the process's requests opened, with the ports they connect (looked up once), so
// that a request can find the socket of the connection it was given.
class Sockets {
 public:
  void add(curl_socket_t s) {
    std::lock_guard<std::mutex> lock(mu_);
    ports_[s] = {0, 0};
  }
  void remove(curl_socket_t s) {
    std::lock_guard<std::mutex> lock(mu_);
    ports_.erase(s);
  }
  curl_socket_t find(long local_port, long peer_port) {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [s, ports] : ports_) {
      if (!ports.first) ports = ports_of(s);
      if (ports.first == local_port && ports.second == peer_port) return s;
    }
    return CURL_SOCKET_BAD;
  }

 private:
  static std::pair<long, long> ports_of(curl_socket_t s) {
    sockaddr_storage a{}, b{};
    socklen_t la = sizeof a, lb = sizeof b;
    if (getsockname(s, reinterpret_cast<sockaddr*>(&a), &la) != 0 ||
        getpeername(s, reinterpret_cast<sockaddr*>(&b), &lb) != 0)
      return {0, 0};  // not connected yet: looked up again next time
    return {port_of(a), port_of(b)};
  }
  static long port_of(const sockaddr_storage& a) {
    if (a.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in&>(a).sin_port);
    if (a.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6&>(a).sin6_port);
    return 0;
  }

  std::mutex mu_;
  std::map<curl_socket_t, std::pair<long, long>> ports_;  // local and peer port; 0: not known yet
};

Sockets& sockets() { return PerProcess<Sockets>::get(); }

curl_socket_t open_socket(void*, curlsocktype purpose, curl_sockaddr* addr) {
  if (purpose != CURLSOCKTYPE_IPCXN) return CURL_SOCKET_BAD;
  curl_socket_t s = ::socket(addr->family, addr->socktype | SOCK_CLOEXEC, addr->protocol);
  if (s != CURL_SOCKET_BAD) sockets().add(s);
  return s;
}

int close_socket(void*, curl_socket_t s) {
  sockets().remove(s);
  return ::close(s);
}

#if LIBCURL_VERSION_NUM >= 0x075000  // CURLOPT_PREREQFUNCTION: 7.80
int on_prereq(void* slot, char*, char*, int peer_port, int local_port) {
  *static_cast<curl_socket_t*>(slot) = sockets().find(local_port, peer_port);
  return CURL_PREREQFUNC_OK;
}
#endif

}  // namespace

void track_connection(CURL* e, curl_socket_t* sock) {
  *sock = CURL_SOCKET_BAD;
#if LIBCURL_VERSION_NUM >= 0x075000
  curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, on_prereq);
  curl_easy_setopt(e, CURLOPT_PREREQDATA, sock);
#else
  (void)e;
#endif
}

void ack_quickly(curl_socket_t sock) {
  if (sock == CURL_SOCKET_BAD) return;
  const int one = 1;
  ::setsockopt(sock, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
}

std::string xml_text(const std::string& body, const char* tag, size_t max) {
  const std::string open = std::string("<") + tag + ">", close = std::string("</") + tag + ">";
  size_t a = body.find(open);
  if (a == std::string::npos) return {};
  a += open.size();
  size_t b = body.find(close, a);
  if (b == std::string::npos) return {};
  std::string v = body.substr(a, std::min<size_t>(b - a, max));
  for (char& c : v)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = ' ';
  return v;
}

std::string printable(std::string s) {
  if (s.size() > 200) s.resize(200);
  for (char& c : s)
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  return s;
}

void global_init() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

void set_common_options(CURL* e, const HttpOptions& o, const std::string& url) {
  if (CURLSH* share = PerProcess<Share>::get().get()) curl_easy_setopt(e, CURLOPT_SHARE, share);
  curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, open_socket);
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, close_socket);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, nullptr);  // bytes as stored, never re-encoded
  curl_easy_setopt(e, CURLOPT_PATH_AS_IS, 1L);  // "a/../b" is a key of its own, not "b"
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  const bool follow = !o.signer;  // a signed request sent elsewhere would carry its token there
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, follow ? 1L : 0L);
  if (follow) {
    curl_easy_setopt(e, CURLOPT_MAXREDIRS, kMaxRedirects);
    curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, starts_with_ci(url, "https:") ? "https" : "http,https");
  }
  long timeout = std::max(1L, static_cast<long>(o.timeout_s));
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT, timeout);
  curl_easy_setopt(e, CURLOPT_LOW_SPEED_LIMIT, static_cast<long>(kMinBytesPerSecond));
  curl_easy_setopt(e, CURLOPT_LOW_SPEED_TIME, timeout);
  if (!o.ca_bundle.empty()) curl_easy_setopt(e, CURLOPT_CAINFO, o.ca_bundle.c_str());
  if (!o.ca_path.empty()) curl_easy_setopt(e, CURLOPT_CAPATH, o.ca_path.c_str());
  if (o.insecure) {
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
  }
}

void ReplyHeaders::note(const char* data, size_t len) {
  if (len >= 5 && strncasecmp(data, "HTTP/", 5) == 0) {
    *this = ReplyHeaders{};  // a new reply: what a redirect said no longer counts
    return;
  }
  std::string v;
  if (header_value(data, len, "content-range", &v)) content_range = v;
  else if (header_value(data, len, "location", &v)) location = v;
  else if (header_value(data, len, "x-amz-bucket-region", &v)) bucket_region = v;
  else if (header_value(data, len, "etag", &v)) etag = printable(v);
  else if (header_value(data, len, "last-modified", &v)) last_modified = printable(v);
}

bool keep_error_body(std::string& body, const char* data, size_t len) {
  body.append(data, std::min(len, kErrorBodyBytes - std::min(kErrorBodyBytes, body.size())));
  return body.size() < kErrorBodyBytes;
}

std::string describe_move(long status, CURLcode rc, const ReplyHeaders& h, const std::string& body, bool is_signed) {
  const std::string target = h.location.empty() ? std::string("an unnamed place") : printable(redact_url(h.location));
  if (rc == CURLE_TOO_MANY_REDIRECTS)
    return "more than " + std::to_string(kMaxRedirects) + " redirects (a redirect loop?), the last to " + target;
  if (rc == CURLE_UNSUPPORTED_PROTOCOL && !h.location.empty())
    return "refused a redirect to " + target + " (only http and https are followed, never https to http)";
  if (status < 300 || status > 399) return {};
  const std::string code = "HTTP " + std::to_string(status);
  if (!is_signed) return code + " without a Location to follow";
  std::string region = h.bucket_region.empty() ? xml_text(body, "Region") : printable(h.bucket_region);
  std::string endpoint = xml_text(body, "Endpoint");
  std::string where;
  if (!region.empty()) where = "region " + region;
  if (!endpoint.empty()) where += (where.empty() ? "endpoint " : ", endpoint ") + endpoint;
  if (where.empty()) where = h.location.empty() ? "another endpoint" : target;
  return code + ": the store asks for " + where +
         "; signed requests are never redirected (set the region or endpoint to that one)";
}

bool parse_content_range(const std::string& value, uint64_t* total, uint64_t* start) {
  if (!starts_with_ci(value, "bytes ")) return false;
  const std::string rest = value.substr(6);
  size_t dash = rest.find('-'), slash = rest.find('/');
  if (dash == std::string::npos || slash == std::string::npos || dash > slash) return false;
  uint64_t a = 0, b = 0;
  if (!parse_size(rest.substr(0, dash), &a) || !parse_size(rest.substr(dash + 1, slash - dash - 1), &b) || b < a ||
      !parse_size(rest.substr(slash + 1), total) || b >= *total)
    return false;
  if (start) *start = a;
  return true;
}

bool transient(CURLcode rc, long status) {
  if (status == 408 || status == 429 || status >= 500) return true;
  switch (rc) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_GOT_NOTHING:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_PARTIAL_FILE:
    case CURLE_SSL_CONNECT_ERROR:
      return true;
    default:
      return rc != CURLE_OK && status == 0 && rc != CURLE_UNSUPPORTED_PROTOCOL && rc != CURLE_URL_MALFORMAT;
  }
}

CURLcode perform_bounded(CURL* e, Clock::time_point deadline, const CancelToken* cancel, CURLM* multi) {
  std::unique_ptr<CURLM, CURLMcode (*)(CURLM*)> own(multi ? nullptr : curl_multi_init(), curl_multi_cleanup);
  if (!multi) multi = own.get();
  if (!multi) throw std::runtime_error("curl_multi_init failed");
  curl_multi_add_handle(multi, e);
  struct Detach {  // the handle leaves the multi however the loop ends
    CURLM* m;
    CURL* e;
    ~Detach() { curl_multi_remove_handle(m, e); }
  } detach{multi, e};
  for (;;) {
    if (cancel && cancel->requested()) throw Cancelled("request cancelled");
    if (Clock::now() >= deadline) return CURLE_OPERATION_TIMEDOUT;
    int running = 0, msgs = 0;
    curl_multi_perform(multi, &running);
    while (CURLMsg* m = curl_multi_info_read(multi, &msgs))
      if (m->msg == CURLMSG_DONE && m->easy_handle == e) return m->data.result;
    curl_multi_poll(multi, nullptr, 0, 50, nullptr);
  }
}

Clock::time_point deadline_after(double seconds) {
  if (seconds <= 0) return Clock::time_point::max();
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

}  // namespace ts::net
