// What the HTTP source reads from servers' replies and shows in messages: S3-style XML error bodies
// (ts::describe_error_body) and URLs with credentials or queries (ts::redact_url).
//
// Input: anything; it is used both as an error body and as a URL.
#include <string>

#include "fuzz_util.hpp"
#include "tensorstream/net/http.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  const std::string detail = ts::describe_error_body(text);
  FUZZ_CHECK(detail.size() <= 2 * 300 + 2);  // code and message, each cut at 300 bytes
  for (char c : detail) FUZZ_CHECK(static_cast<unsigned char>(c) >= 0x20);
  const std::string url = ts::redact_url(text);
  FUZZ_CHECK(url.size() <= text.size());
  FUZZ_CHECK(url.find_first_of("?#") == std::string::npos);  // queries (signatures) never shown
  const size_t scheme = url.find("://");
  const size_t host = scheme == std::string::npos ? 0 : scheme + 3;
  FUZZ_CHECK(url.substr(host, url.find('/', host) - host).find('@') == std::string::npos);  // nor user info
  return 0;
}
