// SigV4 against AWS's published S3 example (GET with a Range header) and the rules that example
// does not cover: session tokens, query strings, default ports.
#include <stdexcept>
#include <string>

#include "check.hpp"
#include "tensorstream/net/sigv4.hpp"

namespace {

const std::time_t k20130524 = 1369353600;  // 2013-05-24T00:00:00Z
const char* kEmptySha = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

ts::SigV4Signer example_signer(std::string token = {}) {
  return ts::SigV4Signer({"AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", std::move(token)},
                         "us-east-1");
}

std::string header(const std::vector<ts::Header>& hs, const std::string& name) {
  for (const auto& [k, v] : hs)
    if (k == name) return v;
  return {};
}

}  // namespace

TEST(sigv4_matches_aws_get_object_example) {
  auto t = example_signer().sign_traced("GET", "https://examplebucket.s3.amazonaws.com/test.txt",
                                        {{"Range", "bytes=0-9"}}, kEmptySha, k20130524);
  CHECK(t.signature == "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
  CHECK(header(t.added, "authorization") ==
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
  CHECK(header(t.added, "x-amz-date") == "20130524T000000Z");
  CHECK(header(t.added, "x-amz-security-token").empty());
}

TEST(sigv4_session_token_is_sent_and_signed) {
  auto t = example_signer("TOKEN/with+chars").sign_traced("GET", "https://examplebucket.s3.amazonaws.com/test.txt",
                                                          {}, "UNSIGNED-PAYLOAD", k20130524);
  CHECK(header(t.added, "x-amz-security-token") == "TOKEN/with+chars");
  CHECK(t.canonical_request.find("x-amz-security-token:TOKEN/with+chars\n") != std::string::npos);
  CHECK(header(t.added, "authorization").find("x-amz-date;x-amz-security-token") != std::string::npos);
}

TEST(sigv4_canonical_query_is_sorted_and_default_port_dropped) {
  auto t = example_signer().sign_traced("POST", "https://bucket.example.com:443/k%20ey?uploadId=x%2By&partNumber=2",
                                        {}, kEmptySha, k20130524);
  CHECK(t.canonical_request.rfind("POST\n/k%20ey\npartNumber=2&uploadId=x%2By\nhost:bucket.example.com\n", 0) == 0);
  auto u = example_signer().sign_traced("POST", "http://127.0.0.1:9000/b/k?uploads", {}, kEmptySha, k20130524);
  CHECK(u.canonical_request.rfind("POST\n/b/k\nuploads=\nhost:127.0.0.1:9000\n", 0) == 0);
}

TEST(sigv4_refuses_missing_parts) {
  auto make = [](const char* id, const char* secret, const char* region) {
    ts::SigV4Signer s(ts::AwsCredentials{id, secret, ""}, region);
  };
  CHECK_THROWS(make("", "secret", "us-east-1"), std::invalid_argument);
  CHECK_THROWS(make("id", "", "us-east-1"), std::invalid_argument);
  CHECK_THROWS(make("id", "secret", ""), std::invalid_argument);
}

TEST(uri_encode_follows_s3_rules) {
  CHECK(ts::uri_encode("a b/c~d_e-f.g+h=", true) == "a%20b/c~d_e-f.g%2Bh%3D");
  CHECK(ts::uri_encode("a/b", false) == "a%2Fb");
  CHECK(ts::uri_encode("\xc3\xa9", true) == "%C3%A9");
}

TEST(sigv4_refuses_control_characters) {
  auto make = [](const char* id, const char* secret, const char* token, const char* region) {
    ts::SigV4Signer s(ts::AwsCredentials{id, secret, token}, region);
  };
  CHECK_THROWS(make("id\r\nX-Injected: 1", "secret", "", "us-east-1"), std::invalid_argument);
  CHECK_THROWS(make("id", "sec\nret", "", "us-east-1"), std::invalid_argument);
  CHECK_THROWS(make("id", "secret", "tok\x7f", "us-east-1"), std::invalid_argument);
  CHECK_THROWS(make("id", "secret", "", "us-east-1\t"), std::invalid_argument);
  try {
    make("id", "secret", "tok\r\nX-Injected: 1", "us-east-1");
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()).find("X-Injected") == std::string::npos);  // the value is never repeated
  }
}

TEST(sigv4_keeps_dot_segments_in_the_canonical_uri) {
  auto t = example_signer().sign_traced("GET", "https://examplebucket.s3.amazonaws.com/a/../b/./c.tensors", {},
                                        ts::SigV4Signer::kUnsignedPayload, 1369353600);
  CHECK(t.canonical_request.rfind("GET\n/a/../b/./c.tensors\n", 0) == 0);
}
