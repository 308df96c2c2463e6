#include "tensorstream/errors.hpp"

#include <cstring>

namespace ts {

namespace {
std::string with_place(const std::string& msg, const std::string& tensor, const std::string& field) {
  std::string out = msg;
  if (!tensor.empty()) out += " (tensor " + printable_name(tensor);
  if (!field.empty()) out += tensor.empty() ? " (field " + field + ")" : ", field " + field + ")";
  else if (!tensor.empty()) out += ")";
  return out;
}
}  // namespace

FormatError::FormatError(const std::string& msg, std::string tensor, std::string field)
    : std::runtime_error(with_place(msg, tensor, field)), tensor_(std::move(tensor)), field_(std::move(field)) {}

HashMismatchError::HashMismatchError(const std::string& msg, std::string tensor)
    : std::runtime_error(with_place(msg, tensor, {})), tensor_(std::move(tensor)) {}

CryptographyError::CryptographyError(const std::string& msg, std::string tensor)
    : std::runtime_error(with_place(msg, tensor, {})), tensor_(std::move(tensor)) {}

IoError::IoError(int err, const std::string& what, std::string path)
    : std::runtime_error(what + (path.empty() ? "" : " '" + path + "'") + ": " + std::strerror(err)),
      code_(err),
      path_(std::move(path)),
      message_(what + ": " + std::strerror(err)) {}

std::string printable_name(const std::string& raw) {
  static const char* hex = "0123456789abcdef";
  std::string out = "'";
  size_t limit = 200;
  for (size_t i = 0; i < raw.size() && i < limit; ++i) {
    unsigned char c = static_cast<unsigned char>(raw[i]);
    if (c == '\\' || c == '\'') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c >= 0x20 && c != 0x7f) {
      out += static_cast<char>(c);  // printable ASCII and UTF-8 continuation bytes kept
    } else {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  if (raw.size() > limit) out += "...";
  return out + "'";
}

}  // namespace ts
