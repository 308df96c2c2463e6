// Every TENSORSTREAM_* setting, in one typed object. Values come from the environment, read in one
// place (settings.cpp); configure() overrides them from code. settings() re-parses the environment
// only when one of its TENSORSTREAM_* variables changed since the last call, so a process that
// changes its environment (tests do) sees the change at its next load.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace ts {

struct Settings {
  std::string io_backend = "auto";  // TENSORSTREAM_IO_BACKEND: auto | uring | posix
  unsigned threads = 0;             // TENSORSTREAM_THREADS: runtime read workers; 0: one per core (<= 32)
  unsigned chunk_mb = 8;            // TENSORSTREAM_CHUNK_MB: file read chunk
  unsigned queue_depth = 0;         // TENSORSTREAM_QUEUE_DEPTH: reads in flight per io_uring worker; 0: auto
  bool uring_async = false;         // TENSORSTREAM_URING_ASYNC: queue every read with IOSQE_ASYNC
  unsigned http_connections = 0;    // TENSORSTREAM_HTTP_CONNECTIONS: requests in flight per host; 0: auto
  unsigned http_retries = 5;        // TENSORSTREAM_HTTP_RETRIES
  double http_timeout = 30;         // TENSORSTREAM_HTTP_TIMEOUT (seconds)
  double http_deadline = 0;         // TENSORSTREAM_HTTP_DEADLINE (seconds; 0: none)
  double http_open_timeout = 60;    // TENSORSTREAM_HTTP_OPEN_TIMEOUT (seconds)
  unsigned ring_mb = 256;           // TENSORSTREAM_RING_MB
  unsigned ring_slots = 4;          // TENSORSTREAM_RING_SLOTS
  unsigned ring_lanes = 2;          // TENSORSTREAM_RING_LANES
  unsigned pinned_mb = 1024;        // TENSORSTREAM_PINNED_MB: host memory the slot pool keeps
  double pinned_idle_s = 60;        // TENSORSTREAM_PINNED_IDLE_S: idle slots freed after this; 0: kept
  unsigned cuda_streams = 0;        // TENSORSTREAM_CUDA_STREAMS; 0: one per slot, up to 4
  std::string cuda_library = "libcuda.so.1";  // TENSORSTREAM_CUDA_LIBRARY
  std::string device_standin;       // TENSORSTREAM_DEVICE_STANDIN (parsed by the Python layer)
  bool huge_pages = false;          // TENSORSTREAM_HUGE_PAGES
  std::string s3_addressing = "auto";  // TENSORSTREAM_S3_ADDRESSING: auto | path | virtual
  unsigned s3_part_mb = 16;            // TENSORSTREAM_S3_PART_MB (at least 5)
  unsigned s3_upload_concurrency = 8;  // TENSORSTREAM_S3_UPLOAD_CONCURRENCY
  std::string progress = "auto";       // TENSORSTREAM_PROGRESS: auto, or on/off (0/1, ...)
};

// One setting as listed to users: its keyword (configure()), variable, and value as text.
struct SettingInfo {
  std::string key;
  std::string env;
  std::string value;   // the effective value
  std::string kind;    // "int", "float", "bool" or "str"
  std::string origin;  // "default", "environment" or "configure"
};

// The settings in effect now: defaults, then the environment, then configure(). Throws
// std::invalid_argument naming the variable when the environment holds a bad value.
Settings settings();

// Overrides from code, by keyword (e.g. "http_connections" -> "8"); a value of nullopt drops the
// keyword's override. With `replace`, every override not named is dropped too. Throws
// std::invalid_argument naming the keyword for an unknown keyword or a bad value; nothing
// changes then.
void configure(const std::map<std::string, std::optional<std::string>>& values, bool replace = false);

// The current overrides (to restore them later), and every setting as listed to users.
std::map<std::string, std::string> overrides();
std::vector<SettingInfo> describe_settings();

}  // namespace ts
