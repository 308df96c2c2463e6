// Writing an S3 object with a multipart upload: parts sent in parallel as they fill, the first
// part (which holds the file's prologue) last, and the upload aborted if anything fails.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "tensorstream/io/sink.hpp"
#include "tensorstream/net/http.hpp"

namespace ts {

struct HttpReply {
  long status = 0;
  std::string body;  // the first 1 MiB at most
  std::string etag;
};

// One request with retries on connection errors, 408, 429 and 5xx; signed when `o.signer` is
// set. Throws NetworkError once the retries are spent or on other 4xx replies.
HttpReply http_request(const HttpOptions& o, const std::string& method, const std::string& url,
                       const uint8_t* body = nullptr, size_t body_bytes = 0,
                       const std::vector<std::string>& headers = {});

class MultipartUpload final : public StreamSink {
 public:
  // Starts the upload (CreateMultipartUpload). `part_bytes` >= 5 MiB; `parallel` parts in flight;
  // the first `prologue_bytes` of the object are given last, to finish().
  MultipartUpload(std::string object_url, HttpOptions opts, size_t prologue_bytes, size_t part_bytes,
                  unsigned parallel);
  ~MultipartUpload() override;  // aborts an upload that was not finished

  void append(const uint8_t* data, size_t n) override;
  void finish(const uint8_t* prologue, size_t n) override;
  void abort() noexcept override;

  const std::string& upload_id() const { return upload_id_; }
  uint64_t bytes_sent() const;
  unsigned parts_sent() const;

 private:
  struct Part {
    int number;
    std::vector<uint8_t> data;
  };
  void submit(int number, std::vector<uint8_t> data);
  void worker();
  void rethrow_failure();
  void stop_workers() noexcept;
  std::string part_url(int number) const;
  const std::string& name() const { return opts_.display.empty() ? url_ : opts_.display; }

  std::string url_;
  HttpOptions opts_;
  size_t part_bytes_;
  unsigned parallel_;
  std::string upload_id_;
  bool done_ = false;

  // The first part is kept until finish(): the prologue is written into its reserved front.
  std::vector<uint8_t> first_, current_;
  size_t prologue_bytes_ = 0;
  int next_number_ = 2;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Part> queue_;
  unsigned busy_ = 0;
  bool stopping_ = false;
  std::exception_ptr failure_;
  std::map<int, std::string> etags_;
  uint64_t sent_ = 0;
  std::vector<std::thread> threads_;
};

}  // namespace ts
