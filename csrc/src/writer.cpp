#include "tensorstream/writer.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <mutex>
#include <stdexcept>
#include <thread>

#include "tensorstream/encryptor.hpp"
#include "tensorstream/errors.hpp"
#include "tensorstream/hash.hpp"
#include "tensorstream/io/engine.hpp"
#include "tensorstream/runtime.hpp"

namespace ts {

namespace {

constexpr uint64_t kWriteBlock = 1u << 20;  // hashed then written while it is in cache

std::vector<uint8_t> encode_entries(const std::vector<tz::IndexEntry>& entries, bool tagged) {
  std::vector<uint8_t> out;
  for (const auto& e : entries) tz::append_index_entry(out, e, tagged);
  return out;
}

}  // namespace

Writer::Writer(int fd, unsigned threads)
    : threads_(threads ? threads : default_threads()), next_(tz::kFileHeaderSize + tz::kWriterMetadataLen) {
  fd_ = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (fd_ < 0) throw IoError(errno, "cannot duplicate descriptor", "");
  header_.version = 1;
  header_.metadata_len = tz::kWriterMetadataLen;
}

Writer::Writer(std::unique_ptr<StreamSink> sink, unsigned threads)
    : sink_(std::move(sink)),
      threads_(threads ? threads : default_threads()),
      next_(tz::kFileHeaderSize + tz::kWriterMetadataLen) {
  if (!sink_) throw std::invalid_argument("no sink to write to");
  header_.version = 1;
  header_.metadata_len = tz::kWriterMetadataLen;
}

Writer::~Writer() {
  if (fd_ >= 0) ::close(fd_);
  abort();
}

void Writer::abort() noexcept {
  if (!sink_) return;
  sink_->abort();
  sink_.reset();
  aborted_ = true;
}

void Writer::close() {
  if (aborted_) throw std::runtime_error("the upload was abandoned after an error: nothing was stored");
  if (sink_) {
    try {
      const uint64_t zero = 0;  // the terminator after the last record
      sink_->append(reinterpret_cast<const uint8_t*>(&zero), sizeof zero);
      std::vector<uint8_t> head = prologue();
      sink_->finish(head.data(), head.size());
    } catch (...) {
      abort();
      throw;
    }
    sink_.reset();
    return;
  }
  if (fd_ < 0) return;
  int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) throw IoError(errno, "closing the written file failed", "");
}

void Writer::pwrite_all(const void* data, size_t n, uint64_t offset) const {
  const auto* p = static_cast<const uint8_t*>(data);
  while (n) {
    size_t want = std::min<size_t>(n, 1u << 30);
    ssize_t w = ::pwrite(fd_, p, want, static_cast<off_t>(offset));
    if (w < 0) {
      if (errno == EINTR) continue;
      throw IoError(errno, "write failed", "");
    }
    p += w;
    n -= static_cast<size_t>(w);
    offset += static_cast<uint64_t>(w);
  }
}

void Writer::write(const std::vector<WriteRecord>& records) {
  if (aborted_) throw std::runtime_error("the upload was abandoned after an error: nothing was stored");
  if (fd_ < 0 && !sink_) throw std::runtime_error("writer is closed");
  // Lay out every record and its index entry first; refuse before writing if the index overflows.
  std::vector<tz::IndexEntry> added;
  std::vector<tz::BuiltHeader> headers;
  std::vector<tz::CryptInfo> crypts(key_ ? records.size() : 0);
  uint32_t version = header_.version;
  bool versioned = versioned_;
  uint64_t pos = next_, data_bytes = 0;
  for (const auto& rec : records) {
    const auto& s = rec.spec;
    if (!s.is_meta && s.data_length && !rec.data)
      throw std::invalid_argument("record " + printable_name(s.name) + " has no data");
    bool long_shape = tz::has_long_dim(s.shape);
    if (key_) crypts[headers.size()] = plan_encryption(s.is_meta ? 0 : s.data_length, kdf_);
    headers.push_back(tz::build_tensor_header(s, long_shape, key_ ? &crypts[headers.size()] : nullptr));
    tz::IndexEntry e;
    e.entry_version = long_shape ? 5 : 1;
    e.name = s.name;
    e.tensor_type = s.tensor_type;
    e.dtype = s.dtype;
    e.shape = s.shape;
    e.header_offset = pos;
    e.data_offset = pos + headers.back().bytes.size();
    e.data_length = s.is_meta ? 0 : s.data_length;
    pos = e.data_offset + e.data_length;
    data_bytes += e.data_length;
    version = std::max(version, tz::record_version(s));
    versioned = versioned || long_shape;
    added.push_back(std::move(e));
  }
  // The index size so far is kept, so that many small writes cost no more than one large one;
  // it is counted again only when the entries' encoding changes (the first long shape).
  const bool recode = versioned != versioned_;
  const uint64_t before = recode ? encode_entries(entries_, versioned).size() : index_bytes_;
  const std::vector<uint8_t> added_bytes = encode_entries(added, versioned);  // checked, then written
  const uint64_t index_after = before + added_bytes.size();
  if (index_after > tz::kWriterMetadataLen)
    throw std::length_error("too many tensors: the index would exceed its " +
                            std::to_string(tz::kWriterMetadataLen) + " bytes");

  if (sink_) {
    try {
      hash_then_stream(records, added, headers, crypts);
    } catch (...) {
      abort();  // a streamed object cannot be patched later: nothing half-written is kept
      throw;
    }
  } else {
    hash_and_write(records, added, headers, crypts);
  }

  const bool whole = recode || entries_.empty();
  entries_.insert(entries_.end(), std::make_move_iterator(added.begin()), std::make_move_iterator(added.end()));
  index_bytes_ = index_after;
  header_.version = version;
  versioned_ = versioned;
  header_.tensor_size += data_bytes;
  header_.tensor_count = entries_.size();
  next_ = pos;
  if (!sink_) commit_prologue(added_bytes, whole);
}

void Writer::hash_and_write(const std::vector<WriteRecord>& records, const std::vector<tz::IndexEntry>& added,
                            std::vector<tz::BuiltHeader>& headers, std::vector<tz::CryptInfo>& crypts) {
  // Hashed and written in parallel; large records first so the threads finish together.
  std::vector<size_t> order(records.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return added[a].data_length > added[b].data_length;
  });
  std::atomic<size_t> next{0};
  std::exception_ptr error;
  std::mutex error_mu;
  auto worker = [&](size_t) {
    for (size_t k; (k = next.fetch_add(1)) < order.size();) {
      size_t i = order[k];
      try {
        // Data first, block by block, each block written while it is still in cache from
        // hashing; the header, which carries the hashes, last.
        TensorHasher h;
        hash_built_header(h, headers[i]);
        const uint8_t* data = records[i].data;
        if (key_ && added[i].data_length) {
          encrypt_data(data, added[i].data_length, crypts[i], *key_, h, [&](const uint8_t* p, size_t len, uint64_t at) {
            pwrite_all(p, len, added[i].data_offset + at);
          });
          tz::set_header_macs(headers[i], crypts[i].macs);
        }
        for (uint64_t at = 0, n = key_ ? 0 : added[i].data_length; at < n; at += kWriteBlock) {
          size_t len = static_cast<size_t>(std::min<uint64_t>(kWriteBlock, n - at));
          h.update(data + at, len);
          pwrite_all(data + at, len, added[i].data_offset + at);
        }
        auto sha = h.sha256();
        tz::set_header_hashes(headers[i], h.crc32(), sha.data());
        pwrite_all(headers[i].bytes.data(), headers[i].bytes.size(), added[i].header_offset);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mu);
        if (!error) error = std::current_exception();
        next = order.size();
      }
    }
  };
  run_on_workers(std::min<size_t>(threads_, order.size()), worker);
  if (error) std::rethrow_exception(error);
}

// Hashes every record in parallel, then hands headers and data to the sink in file order.
void Writer::hash_then_stream(const std::vector<WriteRecord>& records, const std::vector<tz::IndexEntry>& added,
                              std::vector<tz::BuiltHeader>& headers, std::vector<tz::CryptInfo>& crypts) {
  std::atomic<size_t> next{0};
  std::exception_ptr error;
  std::mutex error_mu;
  auto worker = [&](size_t) {
    for (size_t i; (i = next.fetch_add(1)) < records.size();) {
      try {
        TensorHasher h;
        hash_built_header(h, headers[i]);
        if (key_ && added[i].data_length) {
          encrypt_data(records[i].data, added[i].data_length, crypts[i], *key_, h, nullptr);  // MACs only
          tz::set_header_macs(headers[i], crypts[i].macs);
        } else if (added[i].data_length) {
          h.update(records[i].data, added[i].data_length);
        }
        auto sha = h.sha256();
        tz::set_header_hashes(headers[i], h.crc32(), sha.data());
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mu);
        if (!error) error = std::current_exception();
        next = records.size();
      }
    }
  };
  run_on_workers(std::min<size_t>(threads_, records.size()), worker);
  if (error) std::rethrow_exception(error);
  for (size_t i = 0; i < records.size(); ++i) {
    sink_->append(headers[i].bytes.data(), headers[i].bytes.size());
    if (key_ && added[i].data_length)  // sealed again, chunk by chunk: the header with the MACs goes first
      reseal_data(records[i].data, added[i].data_length, crypts[i], *key_,
                  [&](const uint8_t* p, size_t len, uint64_t) { sink_->append(p, len); });
    else if (added[i].data_length)
      sink_->append(records[i].data, added[i].data_length);
  }
}

void Writer::set_encryption(const crypto::SecretKey& key, const std::optional<crypto::PwHash>& kdf) {
  if (!entries_.empty()) throw std::logic_error("encryption must be set before the first write");
  if (kdf) crypto::check_pwhash(*kdf);
  key_ = key;
  kdf_ = kdf;
  header_.version = std::max<uint32_t>(header_.version, 3);  // the first version with encryption
  header_.feature_flags |= tz::kFlagEncrypted;
}

void Writer::commit_prologue(const std::vector<uint8_t>& tail, bool whole) {
  const uint64_t zero = 0;
  pwrite_all(&zero, sizeof zero, next_);  // terminator; the next record overwrites it
  if (whole) {
    std::vector<uint8_t> head = prologue();
    pwrite_all(head.data(), head.size(), 0);
    return;
  }
  // Only what changed: the new entries after the old ones, then the file header.
  pwrite_all(tail.data(), tail.size(), tz::kFileHeaderSize + index_bytes_ - tail.size());
  if (versioned_) header_.feature_flags |= tz::kFlagVersionedHeaders;
  std::vector<uint8_t> head = tz::build_file_header(header_);
  head.resize(tz::kFileHeaderSize, 0);
  pwrite_all(head.data(), head.size(), 0);
}

// The file header followed by the index, padded to the space reserved for it.
std::vector<uint8_t> Writer::prologue() {
  if (versioned_) header_.feature_flags |= tz::kFlagVersionedHeaders;
  std::vector<uint8_t> out = tz::build_file_header(header_);
  out.resize(tz::kFileHeaderSize, 0);
  for (const auto& e : entries_) tz::append_index_entry(out, e, versioned_);
  out.resize(tz::kFileHeaderSize + tz::kWriterMetadataLen, 0);
  return out;
}

}  // namespace ts
