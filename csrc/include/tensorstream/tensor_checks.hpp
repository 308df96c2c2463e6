// What every load does before and after moving data, whatever the destination: validating the
// requests, reading and checking the per-tensor headers, resolving keys, and comparing hashes.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tensorstream/cancel.hpp"
#include "tensorstream/crypto.hpp"
#include "tensorstream/format/tensorizer.hpp"
#include "tensorstream/hash.hpp"
#include "tensorstream/io/engine.hpp"
#include "tensorstream/io/source.hpp"
#include "tensorstream/loader.hpp"

namespace ts {

// One tensor's parsed header, its digest, a hasher already fed with the header (with
// verify_hash), and the key of an encrypted tensor with data.
struct TensorCheck {
  tz::TensorHeader header;
  HeaderDigest digest;
  std::unique_ptr<TensorHasher> hasher;
  const crypto::SecretKey* key = nullptr;
};

// std::invalid_argument for a request naming no entry, a wrong size or a null destination.
void check_requests(const tz::Index& index, const std::vector<LoadRequest>& reqs);
// KeyRequiredError / CryptographyError when the key and the file's encryption disagree.
void check_encryption(bool encrypted, const crypto::KeySource& keys, const std::string& file);

// Reads every request's per-tensor header (in batches of bounded scratch), parses and checks it
// against its index entry; with `verify`, feeds it to the tensor's hasher (and checks tensors
// without data at once). `reads` is increased by the reads issued. `cancel` (may be null) is
// checked before each batch: Cancelled. An index without per-tensor headers (safetensors)
// reads nothing: std::invalid_argument with `verify`, else checks without hashes. `with_first`
// (may be null) are reads done in the same engine run as the first batch of headers (a remote
// source then fetches a small tensor's header and data in one request); the caller checks them.
// The checks of requests whose file has no per-tensor headers (safetensors): nothing to read.
std::vector<TensorCheck> checks_without_headers(const std::vector<LoadRequest>& reqs);

std::vector<TensorCheck> read_headers(ReadEngine& engine, const Source& src, const tz::Index& index,
                                      const std::vector<LoadRequest>& reqs, bool verify, crypto::KeySource& keys,
                                      uint64_t& reads, const CancelToken* cancel = nullptr,
                                      const std::vector<ReadOp>* with_first = nullptr);

// The digests of the tensors at index positions `entries`, one small read per header from `src`.
std::vector<HeaderDigest> read_digests(const Source& src, const tz::Index& index, const std::vector<size_t>& entries);
// The digests of a load's checks, in request order.
// The digests are moved out of `checks`, which keep their headers.
std::vector<HeaderDigest> digests_of(std::vector<TensorCheck>& checks);

// Throws HashMismatchError naming `name` and the `file` (or URL) if the hasher disagrees with
// the stored hashes.
void finish_check(TensorCheck& c, const std::string& name, const std::string& file);

// A failed read as the error a user sees: FormatError if the source ended early, else IoError.
[[noreturn]] void rethrow_read(const ReadFailure& f, const std::string& tensor, const Source& src,
                               const char* what);
// The same for the tensor of `entry`, naming the file that holds it (a shard of a ShardSource).
[[noreturn]] void rethrow_read(const ReadFailure& f, const tz::IndexEntry& entry, const Source& src,
                               const char* what);

}  // namespace ts
