// AWS Signature Version 4 for S3 requests: the headers that authenticate one request.
#pragma once
#include <ctime>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace ts {

struct AwsCredentials {
  std::string access_key_id;
  std::string secret_access_key;
  std::string session_token;  // empty unless temporary credentials
};

using Header = std::pair<std::string, std::string>;  // name, value

// Signs requests for one region and service; one signer serves every thread. Its credentials
// may be replaced (temporary ones that expired, re-resolved) while requests are being signed.
class SigV4Signer {
 public:
  // The payload hash every signed request declares unless the caller passes the body's SHA-256.
  static constexpr const char* kUnsignedPayload = "UNSIGNED-PAYLOAD";

  SigV4Signer(AwsCredentials creds, std::string region, std::string service = "s3");

  // The headers to add to a request for `url` (scheme://host[:port]/path[?query], path and query
  // already percent-encoded as they will be sent): x-amz-date, x-amz-content-sha256 (S3 only),
  // x-amz-security-token (temporary credentials), authorization. `headers` are further request
  // headers to sign (e.g. range); host is always signed. `when` is the signing time (UTC).
  std::vector<Header> sign(const std::string& method, const std::string& url, const std::vector<Header>& headers,
                           const std::string& payload_sha256_hex, std::time_t when) const;

  // The canonical request and string to sign, exposed for tests against published examples.
  struct Trace {
    std::string canonical_request, string_to_sign, signature;
    std::vector<Header> added;
  };
  Trace sign_traced(const std::string& method, const std::string& url, const std::vector<Header>& headers,
                    const std::string& payload_sha256_hex, std::time_t when) const;

  std::string access_key_id() const;
  const std::string& region() const { return region_; }
  // Signs every later request with `creds` (std::invalid_argument for empty or control-character
  // values, and nothing changes).
  void set_credentials(AwsCredentials creds) const;

 private:
  static void check(const AwsCredentials& c);
  AwsCredentials credentials() const;

  mutable std::mutex mu_;
  mutable AwsCredentials creds_;  // replaced by set_credentials, read under mu_
  std::string region_, service_;
};

// Lower-case hex SHA-256 of a byte string.
std::string sha256_hex(const void* data, size_t n);

// Percent-encodes per RFC 3986 as S3 expects: unreserved characters kept, '/' kept when
// `keep_slash` (object keys in paths), every other byte as %XX.
std::string uri_encode(const std::string& raw, bool keep_slash);

}  // namespace ts
