#include <curl/curl.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <random>
#include <stdexcept>

#include "curl_setup.hpp"
#include "tensorstream/errors.hpp"
#include "tensorstream/net/s3.hpp"

namespace ts {

namespace {

constexpr size_t kMinPart = 5u << 20;          // S3's smallest part (all but the last)
constexpr size_t kMaxPart = size_t{5} << 30;   // and its largest
constexpr int kMaxParts = 10000;
constexpr size_t kReplyCap = 1u << 20;

struct Exchange {
  const uint8_t* body = nullptr;
  size_t body_bytes = 0, sent = 0;
  HttpReply reply;
  net::ReplyHeaders headers;
};

size_t on_read(char* buf, size_t size, size_t n, void* user) {
  auto* x = static_cast<Exchange*>(user);
  size_t len = std::min(size * n, x->body_bytes - x->sent);
  if (len) std::memcpy(buf, x->body + x->sent, len);
  x->sent += len;
  return len;
}

size_t on_write(char* data, size_t size, size_t n, void* user) {
  auto* x = static_cast<Exchange*>(user);
  size_t len = size * n;
  x->reply.body.append(data, std::min(len, kReplyCap - std::min(kReplyCap, x->reply.body.size())));
  return x->reply.body.size() < kReplyCap ? len : 0;  // never read an endless reply
}

size_t on_header(char* data, size_t size, size_t n, void* user) {
  auto* x = static_cast<Exchange*>(user);
  size_t len = size * n;
  x->headers.note(data, len);
  static const char kName[] = "etag:";
  if (len > sizeof kName && strncasecmp(data, kName, sizeof kName - 1) == 0) {
    std::string v(data + sizeof kName - 1, len - (sizeof kName - 1));
    size_t a = v.find_first_not_of(" \t"), b = v.find_last_not_of(" \t\r\n");
    x->reply.etag = a == std::string::npos ? "" : v.substr(a, b - a + 1);
  }
  return len;
}

std::string xml_element(const std::string& body, const std::string& tag) {
  const std::string open = "<" + tag + ">", close = "</" + tag + ">";
  size_t a = body.find(open);
  if (a == std::string::npos) return {};
  a += open.size();
  size_t b = body.find(close, a);
  return b == std::string::npos ? std::string() : body.substr(a, b - a);
}

std::string xml_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

}  // namespace

HttpReply http_request(const HttpOptions& o, const std::string& method, const std::string& url, const uint8_t* body,
                       size_t body_bytes, const std::vector<std::string>& headers) {
  const std::string name = o.display.empty() ? redact_url(url) : o.display;
  const std::string payload_hash = body_bytes <= (1u << 20) ? sha256_hex(body, body_bytes)
                                                            : std::string(SigV4Signer::kUnsignedPayload);
  net::global_init();
  const auto deadline = net::deadline_after(o.deadline_s);
  CURL* e = curl_easy_init();
  if (!e) throw std::runtime_error("curl_easy_init failed");
  std::unique_ptr<CURL, void (*)(CURL*)> easy(e, curl_easy_cleanup);
  std::mt19937 rng(std::random_device{}());
  for (unsigned attempt = 1;; ++attempt) {
    Exchange x;
    x.body = body;
    x.body_bytes = body_bytes;
    curl_easy_reset(e);
    curl_slist* list = nullptr;
    auto add = [&](const std::string& line) {
      curl_slist* grown = curl_slist_append(list, line.c_str());
      if (!grown) throw std::bad_alloc();
      list = grown;
    };
    std::unique_ptr<curl_slist, void (*)(curl_slist*)> hold(nullptr, curl_slist_free_all);
    for (const auto& h : headers) add(h);
    add("Expect:");  // no 100-continue round trip before each part
    list = signed_headers(o, method.c_str(), url, payload_hash, list);
    hold.reset(list);
    curl_easy_setopt(e, CURLOPT_URL, url.c_str());
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, list);
    if (method == "PUT") {
      curl_easy_setopt(e, CURLOPT_UPLOAD, 1L);
      curl_easy_setopt(e, CURLOPT_READFUNCTION, on_read);
      curl_easy_setopt(e, CURLOPT_READDATA, &x);
      curl_easy_setopt(e, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(body_bytes));
    } else if (method == "POST") {
      curl_easy_setopt(e, CURLOPT_POST, 1L);
      curl_easy_setopt(e, CURLOPT_POSTFIELDS, body_bytes ? reinterpret_cast<const char*>(body) : "");
      curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body_bytes));
    } else {
      curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method.c_str());
    }
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &x);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, &x);
    net::set_common_options(e, o, url);
    CURLcode rc = net::perform_bounded(e, deadline, nullptr);
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &x.reply.status);
    const long status = x.reply.status;
    // S3 may answer 200 and put an error in the body (CompleteMultipartUpload does).
    const bool error_in_body = status == 200 && x.reply.body.find("<Error>") != std::string::npos;
    if (rc == CURLE_OK && status >= 200 && status < 300 && !error_in_body) return std::move(x.reply);
    const std::string detail = describe_error_body(x.reply.body);
    const std::string moved = net::describe_move(status, rc, x.headers, x.reply.body, o.signer != nullptr);
    const bool late = net::Clock::now() >= deadline;
    const bool transient = moved.empty() && !late &&
                           (net::transient(rc, status) || detail.rfind("RequestTimeout", 0) == 0 ||
                            detail.rfind("InternalError", 0) == 0 || detail.rfind("SlowDown", 0) == 0);
    if (!transient || attempt > o.retries) {
      std::string why = !moved.empty() ? moved
                        : late         ? "the deadline of " + std::to_string(o.deadline_s) + " s ran out"
                        : rc != CURLE_OK && status == 0 ? std::string(curl_easy_strerror(rc))
                                                        : "HTTP " + std::to_string(status);
      if (!detail.empty() && moved.empty()) why += " (" + detail + ")";
      throw NetworkError(method + " " + name + ": " + why + " after " + std::to_string(attempt) + " attempt" +
                             (attempt == 1 ? "" : "s"),
                         name, status, attempt);
    }
    double base = 0.05 * static_cast<double>(1u << std::min(attempt - 1, 7u));
    double delay = std::min(base, 5.0) * std::uniform_real_distribution<double>(0.5, 1.0)(rng);
    std::this_thread::sleep_for(std::chrono::duration<double>(delay));
  }
}

MultipartUpload::MultipartUpload(std::string object_url, HttpOptions opts, size_t prologue_bytes, size_t part_bytes,
                                 unsigned parallel)
    : url_(std::move(object_url)),
      opts_(std::move(opts)),
      part_bytes_(std::clamp(part_bytes, kMinPart, kMaxPart)),
      parallel_(std::max(1u, parallel)),
      prologue_bytes_(prologue_bytes) {
  if (prologue_bytes_ > part_bytes_) throw std::invalid_argument("the prologue must fit in the first part");
  HttpReply r = http_request(opts_, "POST", url_ + "?uploads", nullptr, 0,
                             {"Content-Type: application/octet-stream"});
  upload_id_ = xml_element(r.body, "UploadId");
  if (upload_id_.empty())
    throw NetworkError("POST " + name() + "?uploads: the reply names no UploadId", name(), r.status, 1);
  first_.reserve(part_bytes_);
  first_.resize(prologue_bytes_, 0);
  for (unsigned i = 0; i < parallel_; ++i) threads_.emplace_back([this] { worker(); });
}

MultipartUpload::~MultipartUpload() {
  if (!done_) abort();
  stop_workers();
}

std::string MultipartUpload::part_url(int number) const {
  return url_ + "?partNumber=" + std::to_string(number) + "&uploadId=" + uri_encode(upload_id_, false);
}

uint64_t MultipartUpload::bytes_sent() const {
  std::lock_guard<std::mutex> lock(mu_);
  return sent_;
}

unsigned MultipartUpload::parts_sent() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<unsigned>(etags_.size());
}

void MultipartUpload::rethrow_failure() {
  std::lock_guard<std::mutex> lock(mu_);
  if (failure_) std::rethrow_exception(failure_);
}

void MultipartUpload::append(const uint8_t* data, size_t n) {
  if (done_) throw std::logic_error("the upload is finished");
  while (n) {
    std::vector<uint8_t>& into = first_.size() < part_bytes_ && next_number_ == 2 && current_.empty() ? first_ : current_;
    if (&into == &current_ && current_.capacity() < part_bytes_) current_.reserve(part_bytes_);
    size_t take = std::min(n, part_bytes_ - into.size());
    into.insert(into.end(), data, data + take);
    data += take;
    n -= take;
    if (&into == &current_ && current_.size() == part_bytes_) {
      if (next_number_ >= kMaxParts) throw std::length_error("the object needs more than 10000 parts");
      submit(next_number_++, std::move(current_));
      current_ = {};
      // Larger parts as the object grows, so that 10000 parts reach S3's largest objects.
      if (next_number_ % 1000 == 0) part_bytes_ = std::min(part_bytes_ * 2, kMaxPart);
    }
  }
}

void MultipartUpload::submit(int number, std::vector<uint8_t> data) {
  std::unique_lock<std::mutex> lock(mu_);
  cv_.wait(lock, [&] { return failure_ || queue_.size() + busy_ < parallel_; });
  if (failure_) std::rethrow_exception(failure_);
  queue_.push_back(Part{number, std::move(data)});
  cv_.notify_all();
}

void MultipartUpload::worker() {
  for (;;) {
    Part part;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
      if (queue_.empty()) return;
      part = std::move(queue_.front());
      queue_.pop_front();
      ++busy_;
    }
    try {
      HttpReply r = http_request(opts_, "PUT", part_url(part.number), part.data.data(), part.data.size());
      if (r.etag.empty())
        throw NetworkError("PUT " + name() + " part " + std::to_string(part.number) + ": the reply has no ETag",
                           name(), r.status, 1);
      std::lock_guard<std::mutex> lock(mu_);
      etags_[part.number] = r.etag;
      sent_ += part.data.size();
      --busy_;
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu_);
      if (!failure_) failure_ = std::current_exception();
      queue_.clear();
      --busy_;
    }
    cv_.notify_all();
  }
}

void MultipartUpload::stop_workers() noexcept {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_)
    if (t.joinable()) t.join();
  threads_.clear();
}

void MultipartUpload::finish(const uint8_t* prologue, size_t n) {
  if (done_) throw std::logic_error("the upload is finished");
  if (n != prologue_bytes_) throw std::invalid_argument("prologue size differs from the one reserved");
  try {
    if (n) std::memcpy(first_.data(), prologue, n);
    if (!current_.empty()) submit(next_number_++, std::move(current_));
    submit(1, std::move(first_));
    stop_workers();  // drains the queue, then joins
    rethrow_failure();
    std::string xml = "<CompleteMultipartUpload>";
    for (const auto& [number, etag] : etags_)
      xml += "<Part><PartNumber>" + std::to_string(number) + "</PartNumber><ETag>" + xml_escape(etag) +
             "</ETag></Part>";
    xml += "</CompleteMultipartUpload>";
    if (etags_.size() != static_cast<size_t>(next_number_ - 1)) throw std::logic_error("a part of the upload is missing");
    http_request(opts_, "POST", url_ + "?uploadId=" + uri_encode(upload_id_, false),
                 reinterpret_cast<const uint8_t*>(xml.data()), xml.size(), {"Content-Type: application/xml"});
    done_ = true;
  } catch (...) {
    abort();
    throw;
  }
}

void MultipartUpload::abort() noexcept {
  if (done_) return;
  done_ = true;
  {
    std::lock_guard<std::mutex> lock(mu_);
    queue_.clear();
    if (!failure_) failure_ = std::make_exception_ptr(std::runtime_error("the upload was aborted"));
  }
  stop_workers();
  try {
    HttpOptions quick = opts_;
    quick.retries = std::min(quick.retries, 2u);
    http_request(quick, "DELETE", url_ + "?uploadId=" + uri_encode(upload_id_, false));
  } catch (...) {
    // Nothing more can be done: an unfinished upload expires by the bucket's lifecycle rules.
  }
}

}  // namespace ts
