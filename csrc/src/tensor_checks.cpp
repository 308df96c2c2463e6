#include "tensorstream/tensor_checks.hpp"

#include <cstring>
#include <stdexcept>

#include "tensorstream/errors.hpp"

namespace ts {

namespace {

constexpr uint64_t kHeaderBatchBytes = 16u << 20;

std::string hex(const uint8_t* p, size_t n) {
  static const char* d = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    s += d[p[i] >> 4];
    s += d[p[i] & 15];
  }
  return s;
}

HeaderDigest digest_of(const uint8_t* raw, size_t size, const tz::TensorHeader& th, size_t entry) {
  HeaderDigest d{entry, th.crc32, th.sha256, std::vector<uint8_t>(raw, raw + size)};
  for (auto [b, e] : th.hash_value_ranges) std::memset(d.hashed_header.data() + b, 0, e - b);
  if (th.crypt_end > th.crypt_begin)
    d.hashed_header.erase(d.hashed_header.begin() + static_cast<std::ptrdiff_t>(th.crypt_begin),
                          d.hashed_header.begin() + static_cast<std::ptrdiff_t>(th.crypt_end));
  return d;
}

// The key of one tensor of an encrypted file; null for tensors without data.
const crypto::SecretKey* key_for(const tz::TensorHeader& h, const tz::IndexEntry& e, crypto::KeySource& keys) {
  if (e.data_length == 0) return nullptr;
  if (!h.crypt.encrypted)
    throw CryptographyError("has data but no encryption in an encrypted file: refused, its data is not authenticated",
                            e.name);
  return &keys.key_for(h.crypt.kdf ? &*h.crypt.kdf : nullptr, e.name);
}

}  // namespace

void check_requests(const tz::Index& index, const std::vector<LoadRequest>& reqs) {
  for (const auto& r : reqs) {
    if (r.entry >= index.entries.size())
      throw std::invalid_argument("load request names tensor #" + std::to_string(r.entry) + " of " +
                                  std::to_string(index.entries.size()));
    const auto& e = index.entries[r.entry];
    if (r.nbytes != e.data_length)
      throw std::invalid_argument("destination of tensor " + printable_name(e.name) + " is " +
                                  std::to_string(r.nbytes) + " bytes, its data is " +
                                  std::to_string(e.data_length));
    if (r.nbytes && !r.dst) throw std::invalid_argument("null destination for tensor " + printable_name(e.name));
  }
}

void check_encryption(bool encrypted, const crypto::KeySource& keys, const std::string& file) {
  if (encrypted && keys.empty())
    throw KeyRequiredError("'" + file + "' is encrypted: a decryption key is needed to load it");
  if (!encrypted && !keys.empty())
    throw CryptographyError("'" + file + "' is not encrypted, but a decryption key was given: load it without one");
}

std::vector<TensorCheck> checks_without_headers(const std::vector<LoadRequest>& reqs) {
  std::vector<TensorCheck> checks(reqs.size());
  for (size_t i = 0; i < reqs.size(); ++i) checks[i].digest.entry = reqs[i].entry;
  return checks;
}

std::vector<TensorCheck> read_headers(ReadEngine& engine, const Source& src, const tz::Index& index,
                                      const std::vector<LoadRequest>& reqs, bool verify, crypto::KeySource& keys,
                                      uint64_t& reads, const CancelToken* cancel,
                                      const std::vector<ReadOp>* with_first) {
  if (!index.has_tensor_headers()) {  // safetensors: nothing to read, nothing to verify
    if (verify) throw std::invalid_argument("safetensors files carry no hashes: there is nothing to verify");
    if (with_first && !with_first->empty()) engine.run(*with_first, [](const Piece&) {});
    reads += with_first ? with_first->size() : 0;
    return checks_without_headers(reqs);
  }
  std::vector<TensorCheck> checks(reqs.size());
  std::vector<uint8_t> scratch;
  for (size_t begin = 0; begin < reqs.size();) {
    if (cancel) cancel->check();
    uint64_t used = 0;
    size_t end = begin;
    for (; end < reqs.size(); ++end) {
      uint64_t hs = index.entries[reqs[end].entry].header_size();
      if (end > begin && used + hs > kHeaderBatchBytes) break;
      used += hs;
    }
    scratch.resize(used);
    std::vector<ReadOp> ops;
    used = 0;
    for (size_t i = begin; i < end; ++i) {
      const auto& e = index.entries[reqs[i].entry];
      ops.push_back(ReadOp{e.header_offset, e.header_size(), scratch.data() + used});
      used += e.header_size();
    }
    const size_t headers = ops.size();
    if (begin == 0 && with_first) ops.insert(ops.end(), with_first->begin(), with_first->end());
    try {
      engine.run(ops, [](const Piece&) {});
    } catch (const ReadFailure& f) {
      const bool header = f.op() < headers;
      rethrow_read(f, index.entries[reqs[begin + (header ? f.op() : 0)].entry], src, header ? "header" : "data");
    }
    for (size_t i = begin; i < end; ++i) {
      const auto& e = index.entries[reqs[i].entry];
      const ReadOp& op = ops[i - begin];
      checks[i].header = tz::parse_tensor_header(op.dst, op.length, e, index.header);
      checks[i].digest = digest_of(op.dst, op.length, checks[i].header, reqs[i].entry);
      if (index.header.encrypted()) checks[i].key = key_for(checks[i].header, e, keys);
      if (verify) {
        checks[i].hasher = std::make_unique<TensorHasher>();
        const auto& covered = checks[i].digest.hashed_header;
        checks[i].hasher->update(covered.data(), covered.size());
        if (e.data_length == 0) finish_check(checks[i], e.name, src.name());
      }
    }
    reads += ops.size();
    begin = end;
  }
  return checks;
}

std::vector<HeaderDigest> read_digests(const Source& src, const tz::Index& index, const std::vector<size_t>& entries) {
  if (!index.has_tensor_headers()) throw std::invalid_argument("safetensors files carry no hashes to compare with");
  std::vector<HeaderDigest> out;
  out.reserve(entries.size());
  std::vector<uint8_t> raw;
  for (size_t pos : entries) {
    if (pos >= index.entries.size())
      throw std::invalid_argument("no tensor #" + std::to_string(pos) + " among " +
                                  std::to_string(index.entries.size()));
    const auto& e = index.entries[pos];
    raw.resize(e.header_size());
    src.read_exact(e.header_offset, raw.data(), raw.size());
    out.push_back(digest_of(raw.data(), raw.size(), tz::parse_tensor_header(raw.data(), raw.size(), e, index.header),
                            pos));
  }
  return out;
}

std::vector<HeaderDigest> digests_of(std::vector<TensorCheck>& checks) {
  std::vector<HeaderDigest> out;
  out.reserve(checks.size());
  for (auto& c : checks) out.push_back(std::move(c.digest));
  return out;
}

void finish_check(TensorCheck& c, const std::string& name, const std::string& file) {
  if (c.header.crc32 && *c.header.crc32 != c.hasher->crc32())
    throw HashMismatchError(file + ": CRC32 mismatch: stored " + std::to_string(*c.header.crc32) + ", computed " +
                                std::to_string(c.hasher->crc32()),
                            name);
  if (c.header.sha256) {
    auto got = c.hasher->sha256();
    if (got != *c.header.sha256)
      throw HashMismatchError(file + ": SHA-256 mismatch: stored " + hex(c.header.sha256->data(), 32) + ", computed " +
                                  hex(got.data(), 32),
                              name);
  }
}

namespace {
[[noreturn]] void throw_read(const ReadFailure& f, const std::string& tensor, const Source& file, const char* what,
                             const std::string& in) {
  if (f.err() == 0)
    throw FormatError(std::string("file ended early while reading ") + what + " (" + f.what() + ")" + in, tensor,
                      what);
  throw IoError(f.err(), std::string("reading the ") + what + " of tensor " + printable_name(tensor) + " failed",
                file.name());
}
}  // namespace

void rethrow_read(const ReadFailure& f, const std::string& tensor, const Source& src, const char* what) {
  throw_read(f, tensor, src, what, "");
}

void rethrow_read(const ReadFailure& f, const tz::IndexEntry& entry, const Source& src, const char* what) {
  const Source& file = *src.locate(entry.header_offset).part;  // the shard holding it, if sharded
  throw_read(f, entry.name, file, what, &file != &src ? " in " + file.name() : std::string());
}

}  // namespace ts
