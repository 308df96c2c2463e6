#include "tensorstream/net/http.hpp"

#include <curl/curl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <random>
#include <stdexcept>
#include <thread>
#include <vector>

#include "coalesce.hpp"
#include "curl_setup.hpp"
#include "lanes.hpp"
#include "ramp.hpp"
#include "tensorstream/errors.hpp"
#include "tensorstream/settings.hpp"
#include "tensorstream/runtime.hpp"

namespace ts {

namespace {

using net::Clock;

}  // namespace

curl_slist* signed_headers(const HttpOptions& o, const char* method, const std::string& url,
                           const std::string& payload_sha256_hex, curl_slist* list) {
  if (!o.signer) return list;
  for (const auto& [name, value] : o.signer->sign(method, url, {}, payload_sha256_hex, std::time(nullptr))) {
    std::string line = name + ": " + value;
    curl_slist* grown = curl_slist_append(list, line.c_str());
    if (!grown) {
      curl_slist_free_all(list);
      throw std::bad_alloc();
    }
    list = grown;
  }
  return list;
}

std::string describe_error_body(const std::string& body) {
  std::string code = net::xml_text(body, "Code", 300), message = net::xml_text(body, "Message", 300);
  if (code.empty()) return {};
  return message.empty() ? code : code + ": " + message;
}

namespace {

// One range request: the piece it fills, what has arrived, and its attempts.
struct Transfer {
  CURL* easy = nullptr;
  curl_slist* headers = nullptr;  // belongs to the slot, like `easy`
  std::string error_body;         // the start of an error reply (S3 puts its error code there)
  net::ReplyHeaders reply;
  uint64_t total = 0;             // the resource's size as the first reply gave it
  const net::RangeRequest* req = nullptr;  // the pieces it fills
  const std::vector<Piece>* pieces = nullptr;
  size_t cursor = 0;                       // the first piece still receiving (net::scatter)
  uint64_t offset = 0, length = 0;  // the whole request, numbered as the engine's source
  const HttpSource* part = nullptr;  // the resource holding it (the source, or one of its parts)
  uint64_t base = 0;                 // where `part` starts in the engine's source
  uint64_t got = 0;  // bytes of the request received so far, over all attempts
  uint64_t want_from = 0;  // the offset this attempt asked for
  bool bad_range = false, overflow = false, resized = false;
  bool running = false;  // holds one of the host's request slots
  unsigned attempts = 0;
  net::HostState* host = nullptr;  // counts the bytes that arrive
  curl_socket_t sock = CURL_SOCKET_BAD;  // the connection's socket (net::track_connection)
  char range[64];
};

size_t on_header(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  size_t len = size * n;
  net::ack_quickly(t->sock);
  const std::string before = t->reply.content_range;
  t->reply.note(data, len);
  if (t->reply.content_range != before && !t->reply.content_range.empty()) {
    uint64_t total = 0, start = 0;
    if (!net::parse_content_range(t->reply.content_range, &total, &start) || start != t->want_from)
      t->bad_range = true;  // a 206 for some other range: never write it
    else if (total != t->total)
      t->resized = true;  // another object now: nothing of it may mix with what was read
  }
  return len;
}

size_t on_body(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  size_t len = size * n;
  long status = 0;
  curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
  if (status >= 300)  // keep the start of an error body for the message, then stop reading
    return net::keep_error_body(t->error_body, data, len) ? len : 0;
  if (t->resized) return 0;
  if (status != 206 || t->bad_range) return status == 200 ? 0 : len;  // other bodies are dropped
  uint64_t room = t->length - t->got;
  if (len > room) {
    t->overflow = true;
    return 0;  // abort: the server sends more than the range
  }
  net::scatter(*t->req, *t->pieces, t->got, reinterpret_cast<const uint8_t*>(data), len, t->cursor);
  t->got += len;
  net::ack_quickly(t->sock);
  t->host->add_bytes(len);
  return len;
}

// Bytes of curl's receive buffer per request when `in_flight` requests run at once: 512 KiB each
// up to 16 in flight, then kBufferBudget shared (at least 128 KiB each).
long receive_buffer(unsigned in_flight) {
  constexpr uint64_t kBufferBudget = 8u << 20, kMost = 512u << 10, kLeast = 128u << 10;
  return static_cast<long>(std::clamp<uint64_t>(kBufferBudget / std::max(1u, in_flight), kLeast, kMost));
}

class HttpEngine final : public ReadEngine {
 public:
  // `src` is an HttpSource, or a ShardSource of them (of one kind: one host, one set of options).
  HttpEngine(const Source& src, size_t chunk)
      : src_(src), head_(part_of(src.locate(0))), chunk_(chunk), key_(net::host_key(head_.url(), head_.options())),
        host_(net::host_state(key_)) {}
  const char* name() const override { return "http"; }
  bool remote() const override { return true; }

  // Several of the runtime's workers, each with a multi-handle borrowed from the host's kept
  // connections, take ranges from a shared counter (copying the bodies into the destinations uses
  // every core); how many requests are in flight at once is the host's to decide (ramp.hpp). A
  // lane whose worker never starts (all busy) leaves its share to the others.
  void run(const std::vector<ReadOp>& ops, const ChunkDone& done) override {
    const std::vector<Piece> pieces = cut_pieces(ops, chunk_);
    if (pieces.empty()) return;
    // A request never crosses from one resource into the next.
    const std::vector<net::RangeRequest> requests =
        net::coalesce(pieces, chunk_, [&](uint64_t offset) { return src_.locate(offset).end; });
    const unsigned fixed = head_.options().connections;  // 0: auto
    const size_t most = fixed ? fixed : net::HostState::kMax;
    const size_t threads = std::min({static_cast<size_t>(default_threads()), most, requests.size()});
    const size_t per_lane = (most + threads - 1) / threads;
    net::LaneLease lanes = net::borrow_lanes(key_, threads, per_lane);
    struct Running {  // the host counts this run while it lasts
      net::HostState& h;
      Running(net::HostState& host, unsigned fixed) : h(host) { h.begin_run(fixed); }
      ~Running() { h.end_run(); }
    } running(host_, fixed);
    Shared shared{pieces, requests, done, {}, {}, {}, {}};
    auto work = [&](size_t lane) {
      try {
        worker(shared, lanes[lane], per_lane);
      } catch (...) {
        std::lock_guard<std::mutex> lock(shared.mu);
        if (!shared.error) shared.error = std::current_exception();
        shared.failed = true;
      }
    };
    run_on_workers(threads, work);
    if (shared.error) std::rethrow_exception(shared.error);
  }

 private:
  struct Shared {
    const std::vector<Piece>& pieces;
    const std::vector<net::RangeRequest>& requests;
    const ChunkDone& done;
    std::atomic<size_t> next{0};
    std::atomic<bool> failed{false};
    std::mutex mu;
    std::exception_ptr error;
  };

  // The transfers of one lane for one run, on `n` of the lane's easy handles (a kept lane may have
  // more, from a run that asked for more): a run never has more connections busy than it asked.
  struct Slots {
    Slots(net::Lane& lane, size_t n) : all(std::min(n, lane.handles().size())) {
      for (size_t i = 0; i < all.size(); ++i) all[i].easy = lane.handles()[i];
    }
    ~Slots() {
      for (auto& t : all) curl_slist_free_all(t.headers);
    }
    std::vector<Transfer> all;
  };

  void worker(Shared& sh, net::Lane& lane, size_t per_lane) {
    const std::vector<Piece>& pieces = sh.pieces;
    const std::vector<net::RangeRequest>& requests = sh.requests;
    const ChunkDone& done = sh.done;
    const HttpOptions& o = head_.options();
    CURLM* multi = lane.multi();
    Slots slots(lane, per_lane);
    std::vector<Transfer*> idle;
    for (auto& t : slots.all) idle.push_back(&t);
    struct Retry {
      Clock::time_point at;
      Transfer state;
    };
    std::deque<Retry> retries;
    size_t active = 0;
    const auto deadline = net::deadline_after(o.deadline_s);
    std::mt19937 rng(std::random_device{}());
    auto cleanup = [&] {  // removing a handle that is not in the multi is a harmless no-op
      for (auto& t : slots.all) {
        if (t.running) host_.finished();
        t.running = false;
        curl_multi_remove_handle(multi, t.easy);
      }
    };
    try {
      for (;;) {
        // Checked at least every 100 ms (the longest wait below); the catch removes the handles.
        if (cancel_requested()) throw Cancelled("read cancelled");
        host_.tick();
        // Start what can start (while the host has room): due retries first, then new pieces.
        bool blocked = false;
        while (!idle.empty()) {
          Transfer* t = idle.back();
          const bool retry_due = !retries.empty() && retries.front().at <= Clock::now();
          const bool more = !sh.failed && sh.next.load() < requests.size();
          if (!retry_due && !more) {
            if (host_.has_room()) host_.starved();
            break;
          }
          if (!host_.try_start()) {
            blocked = true;
            break;
          }
          if (retry_due) {
            reuse_slot(*t, retries.front().state);
            retries.pop_front();
          } else if (size_t i = sh.next.fetch_add(1); i < requests.size()) {
            reuse_slot(*t, Transfer{});
            t->req = &requests[i];
            t->pieces = &pieces;
            t->offset = requests[i].offset;
            t->length = requests[i].length;
            const Source::Located at = src_.locate(t->offset);
            t->part = &part_of(at);
            t->base = t->offset - at.offset;
          } else {
            host_.finished();  // another lane took the last request
            continue;
          }
          idle.pop_back();
          t->running = true;
          start(multi, *t);
          ++active;
        }
        if (active == 0 && retries.empty() && !blocked) break;  // nothing running, nothing left to take
        if (sh.failed) throw std::runtime_error("another range failed");  // replaced by that error
        if (Clock::now() > deadline)
          throw NetworkError("GET " + src_.name() + ": deadline of " + std::to_string(o.deadline_s) +
                                 " s exceeded",
                             src_.name(), 0, 0);
        int running = 0;
        curl_multi_perform(multi, &running);
        int msgs = 0;
        bool finished_any = false;
        while (CURLMsg* m = curl_multi_info_read(multi, &msgs)) {
          if (m->msg != CURLMSG_DONE) continue;
          Transfer* t = nullptr;
          curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, reinterpret_cast<char**>(&t));
          curl_multi_remove_handle(multi, t->easy);
          --active;
          t->running = false;
          host_.finished();
          finish(*t, m->data.result, done, pieces, retries, rng);
          idle.push_back(t);
          finished_any = true;
        }
        if (finished_any) continue;  // start the next ranges before waiting
        int wait_ms = blocked ? 5 : 100;  // blocked: the host's room may free up in another lane
        if (active == 0 && !retries.empty()) {
          auto left = std::chrono::duration_cast<std::chrono::milliseconds>(retries.front().at - Clock::now());
          wait_ms = static_cast<int>(std::clamp<long long>(left.count(), 0, wait_ms));
        }
        curl_multi_poll(multi, nullptr, 0, wait_ms, nullptr);
      }
    } catch (...) {
      cleanup();  // removing a handle stops its transfer: nothing writes after this
      throw;
    }
    cleanup();
  }

  // A slot takes over a transfer's state and keeps its own curl handle and header list.
  static void reuse_slot(Transfer& slot, const Transfer& state) {
    CURL* easy = slot.easy;
    curl_slist* headers = slot.headers;
    slot = state;
    slot.easy = easy;
    slot.headers = headers;
  }

  void start(CURLM* multi, Transfer& t) {
    const HttpSource& part = *t.part;
    const HttpOptions& o = part.options();
    CURL* e = t.easy;
    curl_easy_reset(e);
    t.want_from = t.offset - t.base + t.got;  // Range headers count from the start of the part
    t.cursor = 0;
    t.bad_range = t.overflow = t.resized = false;
    t.error_body.clear();
    t.reply = {};
    t.total = part.size();
    t.host = &host_;
    curl_slist_free_all(t.headers);
    t.headers = signed_headers(o, "GET", part.url(), SigV4Signer::kUnsignedPayload, nullptr);
    if (t.headers) curl_easy_setopt(e, CURLOPT_HTTPHEADER, t.headers);
    ++t.attempts;
    std::snprintf(t.range, sizeof t.range, "%llu-%llu", static_cast<unsigned long long>(t.want_from),
                  static_cast<unsigned long long>(t.offset - t.base + t.length - 1));
    curl_easy_setopt(e, CURLOPT_URL, part.url().c_str());
    curl_easy_setopt(e, CURLOPT_RANGE, t.range);
    curl_easy_setopt(e, CURLOPT_PRIVATE, &t);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &t);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, &t);
    // Large receive buffers: fewer, larger reads and copies (measured ~1.8x over curl's 16 KiB on
    // loopback; 2 MiB was no better than 512 KiB). Many requests in flight (a link capped per
    // connection: each is slow) share a budget instead, so buffers stay a few MiB in all.
    curl_easy_setopt(e, CURLOPT_BUFFERSIZE, receive_buffer(host_.limit()));
    net::set_common_options(e, o, part.url());
    net::track_connection(e, &t.sock);
    curl_multi_add_handle(multi, e);
  }

  template <typename Retries>
  void finish(Transfer& t, CURLcode rc, const ChunkDone& done, const std::vector<Piece>& pieces,
              Retries& retries, std::mt19937& rng) {
    long status = 0;
    curl_easy_getinfo(t.easy, CURLINFO_RESPONSE_CODE, &status);
    const HttpSource& part = *t.part;
    const std::string where = "GET " + part.name() + " bytes " + t.range;
    if (rc == CURLE_OK && status == 206 && !t.bad_range && !t.resized && t.got == t.length) {
      for (size_t i : t.req->pieces) done(pieces[i]);
      return;
    }
    if (status == 200)
      throw NetworkError(where + ": the server ignores Range requests (answered 200 with the whole file)",
                         part.name(), status, t.attempts);
    // A move (never followed when signed) and a resource that changed size are final.
    std::string why = net::describe_move(status, rc, t.reply, t.error_body, part.options().signer != nullptr);
    if (why.empty() && t.resized)
      why = "the resource changed size (" + net::printable(t.reply.content_range) + "; it had " +
            std::to_string(t.total) + " bytes when opened)";
    bool retryable = why.empty();
    if (!why.empty()) {
      // named above
    } else if (t.bad_range) {
      why = "answered 206 for a different range";
    } else if (t.overflow) {
      why = "sent more bytes than the range holds";
    } else if (status >= 400) {
      const std::string detail = describe_error_body(t.error_body);
      why = "HTTP " + std::to_string(status) + (detail.empty() ? "" : " (" + detail + ")");
      retryable = status == 408 || status == 429 || status >= 500 ||
                  detail.rfind("RequestTimeout", 0) == 0;  // S3's "reset, try again"
    } else if (rc != CURLE_OK) {
      why = std::string(curl_easy_strerror(rc)) + (status && status != 206 ? " (HTTP " + std::to_string(status) + ")" : "");
    } else {
      why = "body ended after " + std::to_string(t.got) + " of " + std::to_string(t.length) + " bytes";
    }
    if (t.bad_range || t.overflow) t.got = 0;  // what arrived cannot be trusted: fetch it again
    if (!retryable || t.attempts > part.options().retries)
      throw NetworkError(where + ": " + why + " after " + std::to_string(t.attempts) + " attempt" +
                             (t.attempts == 1 ? "" : "s"),
                         part.name(), status, t.attempts);
    double base = 0.05 * static_cast<double>(1u << std::min(t.attempts - 1, 7u));
    double delay = std::min(base, 5.0) * std::uniform_real_distribution<double>(0.5, 1.0)(rng);
    retries.push_back({Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(delay)),
                       t});
    std::sort(retries.begin(), retries.end(), [](const auto& a, const auto& b) { return a.at < b.at; });
  }

  // The parts of a source read by this engine are HttpSources (Source::kind says so).
  static const HttpSource& part_of(const Source::Located& at) { return static_cast<const HttpSource&>(*at.part); }

  const Source& src_;
  const HttpSource& head_;  // the first part: the host, the run's options
  size_t chunk_;
  const std::string key_;
  net::HostState& host_;
};

}  // namespace

HttpOptions HttpOptions::from_env() {
  const Settings s = settings();
  HttpOptions o;
  o.connections = s.http_connections;
  o.retries = s.http_retries;
  o.timeout_s = s.http_timeout;
  o.deadline_s = s.http_deadline;
  o.open_timeout_s = s.http_open_timeout;
  return o;
}

std::string redact_url(const std::string& url) {
  std::string out = url.substr(0, url.find_first_of("?#"));
  size_t scheme = out.find("://");
  size_t host = scheme == std::string::npos ? 0 : scheme + 3;
  size_t slash = out.find('/', host);
  size_t at = out.rfind('@', slash == std::string::npos ? out.size() : slash);
  if (at != std::string::npos && at >= host) out.erase(host, at + 1 - host);
  return out;
}

void HttpSource::read_exact(uint64_t offset, void* dst, size_t n) const { read_exact(offset, dst, n, nullptr); }

void HttpSource::read_exact(uint64_t offset, void* dst, size_t n, const CancelToken* cancel) const {
  if (offset > size_ || n > size_ - offset)
    throw FormatError("file ends before byte " + std::to_string(offset + n), "", "file_size");
  HttpEngine engine(*this, 8u << 20);
  engine.set_cancel(cancel);
  engine.run({ReadOp{offset, n, static_cast<uint8_t*>(dst)}}, [](const Piece&) {});
}

std::unique_ptr<ReadEngine> HttpSource::engine_for(const Source& whole, size_t chunk_bytes) const {
  return std::make_unique<HttpEngine>(whole, chunk_bytes);
}

std::string HttpSource::kind() const { return "http " + net::host_key(url_, opts_); }

std::vector<HostConcurrency> host_concurrency() {
  std::vector<HostConcurrency> out;
  for (const auto& r : net::ramp_reports()) out.push_back({r.host, r.connections, r.settled, r.fixed, r.measured});
  return out;
}

size_t close_idle_connections() {
  net::close_idle_connections();
  return net::lanes_made();
}

}  // namespace ts
