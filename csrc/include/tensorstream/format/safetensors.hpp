// The safetensors format: an 8-byte little-endian header length, a JSON header, then the data
// of every tensor, back to back. Parsed into the same index records as tensorizer files, with
// no per-tensor headers (Index::format == kSafetensors).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "tensorstream/format/tensorizer.hpp"

namespace ts::st {

inline constexpr uint64_t kLengthSize = 8;
inline constexpr uint64_t kMaxHeaderSize = 100'000'000;  // as the safetensors crate allows

// The dtype string the rest of the core and Python use ("<f4", "<V2\0torch.bfloat16") for a
// safetensors dtype name ("F32", "BF16"); empty if the name is unknown or has sub-byte elements.
std::string dtype_string(const std::string& name);

// Whether the first bytes read of a file look like safetensors: a header length, then '{'.
bool looks_like(const uint8_t* data, size_t size);

// Parses and validates the header (the `header_len` JSON bytes after the length) of a file of
// `file_size` bytes. Throws FormatError naming the tensor and field.
tz::Index parse_header(const uint8_t* json, size_t header_len, uint64_t file_size);

// Checks the 8-byte length against the cap and the file size; returns it.
uint64_t header_length(const uint8_t* data, size_t size, uint64_t file_size);

}  // namespace ts::st
