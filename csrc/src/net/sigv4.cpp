#include "tensorstream/net/sigv4.hpp"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

#include <algorithm>
#include <cstdio>
#include <stdexcept>

namespace ts {

namespace {

std::string hex(const unsigned char* p, size_t n) {
  static const char digits[] = "0123456789abcdef";
  std::string out(n * 2, '0');
  for (size_t i = 0; i < n; ++i) {
    out[2 * i] = digits[p[i] >> 4];
    out[2 * i + 1] = digits[p[i] & 15];
  }
  return out;
}

std::string hmac(const std::string& key, const std::string& msg) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (!HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(msg.data()),
            msg.size(), out, &len))
    throw std::runtime_error("HMAC-SHA256 failed");
  return std::string(reinterpret_cast<char*>(out), len);
}

// ASCII only, whatever the C locale says.
char lower_ascii(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }
bool alnum_ascii(unsigned char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

std::string lower(std::string s) {
  for (char& c : s) c = lower_ascii(c);
  return s;
}

bool has_control(const std::string& s) {
  for (unsigned char c : s)
    if (c < 0x20 || c == 0x7f) return true;
  return false;
}

// Header values are signed trimmed, with inner runs of spaces folded to one.
std::string fold_spaces(const std::string& v) {
  std::string out;
  bool space = false;
  for (char c : v) {
    if (c == ' ' || c == '\t') {
      space = !out.empty();
      continue;
    }
    if (space) out += ' ';
    space = false;
    out += c;
  }
  return out;
}

struct UrlParts {
  std::string host, path, query;
};

UrlParts split_url(const std::string& url) {
  size_t scheme_end = url.find("://");
  if (scheme_end == std::string::npos) throw std::invalid_argument("not an absolute URL");
  std::string scheme = lower(url.substr(0, scheme_end));
  size_t host_at = scheme_end + 3;
  size_t path_at = url.find_first_of("/?#", host_at);
  std::string authority = url.substr(host_at, path_at == std::string::npos ? std::string::npos : path_at - host_at);
  if (size_t at = authority.rfind('@'); at != std::string::npos) authority.erase(0, at + 1);
  // The Host header leaves out a port that is the scheme's default.
  const std::string default_port = scheme == "https" ? ":443" : scheme == "http" ? ":80" : "";
  if (!default_port.empty() && authority.size() > default_port.size() &&
      authority.compare(authority.size() - default_port.size(), default_port.size(), default_port) == 0)
    authority.resize(authority.size() - default_port.size());
  UrlParts parts;
  parts.host = lower(authority);
  std::string rest = path_at == std::string::npos ? "" : url.substr(path_at);
  rest = rest.substr(0, rest.find('#'));
  size_t q = rest.find('?');
  parts.path = rest.substr(0, q);
  if (q != std::string::npos) parts.query = rest.substr(q + 1);
  if (parts.path.empty()) parts.path = "/";
  return parts;
}

std::string canonical_query(const std::string& query) {
  std::vector<std::pair<std::string, std::string>> params;
  size_t at = 0;
  while (at <= query.size() && !query.empty()) {
    size_t amp = query.find('&', at);
    std::string item = query.substr(at, amp == std::string::npos ? std::string::npos : amp - at);
    if (!item.empty()) {
      size_t eq = item.find('=');
      params.emplace_back(item.substr(0, eq), eq == std::string::npos ? "" : item.substr(eq + 1));
    }
    if (amp == std::string::npos) break;
    at = amp + 1;
  }
  std::sort(params.begin(), params.end());
  std::string out;
  for (const auto& [k, v] : params) {
    if (!out.empty()) out += '&';
    out += k + "=" + v;
  }
  return out;
}

}  // namespace

std::string sha256_hex(const void* data, size_t n) {
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(static_cast<const unsigned char*>(data), n, md);
  return hex(md, sizeof md);
}

std::string uri_encode(const std::string& raw, bool keep_slash) {
  static const char digits[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(raw.size());
  for (unsigned char c : raw) {
    if (alnum_ascii(c) || c == '-' || c == '_' || c == '.' || c == '~' || (keep_slash && c == '/')) {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += digits[c >> 4];
      out += digits[c & 15];
    }
  }
  return out;
}

SigV4Signer::SigV4Signer(AwsCredentials creds, std::string region, std::string service)
    : creds_(std::move(creds)), region_(std::move(region)), service_(std::move(service)) {
  check(creds_);
  if (region_.empty()) throw std::invalid_argument("a region is needed to sign requests");
  // A CR or LF would end the header it is sent in and start one of the sender's choosing.
  if (has_control(region_)) throw std::invalid_argument("the region holds a control character");
  if (has_control(service_)) throw std::invalid_argument("the service holds a control character");
}

void SigV4Signer::check(const AwsCredentials& c) {
  if (c.access_key_id.empty() || c.secret_access_key.empty())
    throw std::invalid_argument("an access key id and a secret access key are both needed to sign requests");
  const std::pair<const char*, const std::string*> fields[] = {{"the access key id", &c.access_key_id},
                                                                {"the secret access key", &c.secret_access_key},
                                                                {"the session token", &c.session_token}};
  for (const auto& [what, value] : fields)
    if (has_control(*value)) throw std::invalid_argument(std::string(what) + " holds a control character");
}

void SigV4Signer::set_credentials(AwsCredentials creds) const {
  check(creds);
  std::lock_guard<std::mutex> lock(mu_);
  creds_ = std::move(creds);
}

AwsCredentials SigV4Signer::credentials() const {
  std::lock_guard<std::mutex> lock(mu_);
  return creds_;
}

std::string SigV4Signer::access_key_id() const { return credentials().access_key_id; }

std::vector<Header> SigV4Signer::sign(const std::string& method, const std::string& url,
                                      const std::vector<Header>& headers, const std::string& payload_sha256_hex,
                                      std::time_t when) const {
  return sign_traced(method, url, headers, payload_sha256_hex, when).added;
}

SigV4Signer::Trace SigV4Signer::sign_traced(const std::string& method, const std::string& url,
                                            const std::vector<Header>& headers,
                                            const std::string& payload_sha256_hex, std::time_t when) const {
  std::tm tm{};
  gmtime_r(&when, &tm);
  char stamp[40], day[9];
  std::snprintf(stamp, sizeof stamp, "%04d%02d%02dT%02d%02d%02dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                tm.tm_hour, tm.tm_min, tm.tm_sec);  // digits only: no locale can change them
  std::snprintf(day, sizeof day, "%.8s", stamp);
  const UrlParts parts = split_url(url);
  const AwsCredentials creds = credentials();  // one set for the whole signature

  Trace t;
  t.added.emplace_back("x-amz-date", stamp);
  if (service_ == "s3") t.added.emplace_back("x-amz-content-sha256", payload_sha256_hex);
  if (!creds.session_token.empty()) t.added.emplace_back("x-amz-security-token", creds.session_token);

  std::vector<Header> signed_headers{{"host", parts.host}};
  for (const auto& [k, v] : headers) signed_headers.emplace_back(lower(k), fold_spaces(v));
  for (const auto& [k, v] : t.added) signed_headers.emplace_back(k, v);
  std::sort(signed_headers.begin(), signed_headers.end());
  std::string canonical_headers, names;
  for (const auto& [k, v] : signed_headers) {
    canonical_headers += k + ":" + v + "\n";
    if (!names.empty()) names += ';';
    names += k;
  }
  t.canonical_request = method + "\n" + parts.path + "\n" + canonical_query(parts.query) + "\n" + canonical_headers +
                        "\n" + names + "\n" + payload_sha256_hex;
  const std::string scope = std::string(day) + "/" + region_ + "/" + service_ + "/aws4_request";
  t.string_to_sign = std::string("AWS4-HMAC-SHA256\n") + stamp + "\n" + scope + "\n" +
                     sha256_hex(t.canonical_request.data(), t.canonical_request.size());
  std::string key = hmac("AWS4" + creds.secret_access_key, day);
  key = hmac(key, region_);
  key = hmac(key, service_);
  key = hmac(key, "aws4_request");
  const std::string sig = hmac(key, t.string_to_sign);
  t.signature = hex(reinterpret_cast<const unsigned char*>(sig.data()), sig.size());
  t.added.emplace_back("authorization", "AWS4-HMAC-SHA256 Credential=" + creds.access_key_id + "/" + scope +
                                            ", SignedHeaders=" + names + ", Signature=" + t.signature);
  return t;
}

}  // namespace ts
