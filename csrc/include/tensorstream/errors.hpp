// Typed errors of the core. Bindings map each to one Python class (csrc/bindings/errors.cpp).
#pragma once
#include <stdexcept>
#include <string>

namespace ts {

// A malformed file: names the tensor (may be empty) and the field that broke a rule.
class FormatError : public std::runtime_error {
 public:
  FormatError(const std::string& msg, std::string tensor = {}, std::string field = {});
  const std::string& tensor() const noexcept { return tensor_; }
  const std::string& field() const noexcept { return field_; }

 private:
  std::string tensor_, field_;
};

// A stored CRC32 or SHA-256 does not match the bytes read.
class HashMismatchError : public std::runtime_error {
 public:
  HashMismatchError(const std::string& msg, std::string tensor);
  const std::string& tensor() const noexcept { return tensor_; }

 private:
  std::string tensor_;
};

// Decryption failed (wrong key, tampered data or MAC) or is misconfigured; names the tensor
// (may be empty). Messages never carry key material.
class CryptographyError : public std::runtime_error {
 public:
  explicit CryptographyError(const std::string& msg, std::string tensor = {});
  const std::string& tensor() const noexcept { return tensor_; }

 private:
  std::string tensor_;
};

// The file is encrypted and no key was given.
class KeyRequiredError : public CryptographyError {
 public:
  explicit KeyRequiredError(const std::string& msg) : CryptographyError(msg) {}
};

// A failed system call: keeps errno and the path it concerned.
class IoError : public std::runtime_error {
 public:
  IoError(int err, const std::string& what, std::string path);
  int code() const noexcept { return code_; }
  const std::string& path() const noexcept { return path_; }
  // What failed and why, without the path (Python's OSError adds the file name itself).
  const std::string& message() const noexcept { return message_; }

 private:
  int code_;
  std::string path_, message_;
};

// An HTTP transfer failed for good: names the URL (never credentials), the last HTTP status
// (0 when none arrived) and the attempts made.
class NetworkError : public std::runtime_error {
 public:
  NetworkError(const std::string& msg, std::string url, long status, unsigned attempts)
      : std::runtime_error(msg), url_(std::move(url)), status_(status), attempts_(attempts) {}
  const std::string& url() const noexcept { return url_; }
  long status() const noexcept { return status_; }
  unsigned attempts() const noexcept { return attempts_; }

 private:
  std::string url_;
  long status_;
  unsigned attempts_;
};

// A load stopped early because it was cancelled (Loader::cancel, or an interrupt). Thrown only
// once no read can still write into the load's destinations; what they hold is incomplete.
class Cancelled : public std::runtime_error {
 public:
  explicit Cancelled(const std::string& msg) : std::runtime_error(msg) {}
};

// Printable form of a tensor name: UTF-8 as is, other bytes escaped, long names shortened.
std::string printable_name(const std::string& raw);

}  // namespace ts

// Builds the message only on failure.
#define TS_FORMAT_CHECK(cond, msg, tensor, field)                  \
  do {                                                             \
    if (!(cond)) throw ::ts::FormatError((msg), (tensor), (field)); \
  } while (0)
