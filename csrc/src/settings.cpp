#include "tensorstream/settings.hpp"

#include <pthread.h>

#include <cerrno>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <stdexcept>

namespace ts {

namespace {

// One setting: how to parse text into its field (std::invalid_argument, without the name, for a
// bad value) and how to show the field.
struct Field {
  const char* key;
  const char* env;
  const char* kind;
  std::function<void(Settings&, const std::string&)> set;
  std::function<std::string(const Settings&)> get;
};

unsigned parse_uint(const std::string& v, unsigned lo, unsigned hi) {
  const std::string range = "an integer from " + std::to_string(lo) + " to " + std::to_string(hi);
  char* end = nullptr;
  errno = 0;
  unsigned long long n = std::strtoull(v.c_str(), &end, 10);
  if (v.empty() || v[0] == '-' || v[0] == '+' || *end || errno || n < lo || n > hi)
    throw std::invalid_argument("must be " + range + ", not '" + v + "'");
  return static_cast<unsigned>(n);
}

double parse_seconds(const std::string& v) {
  char* end = nullptr;
  double d = std::strtod(v.c_str(), &end);
  if (v.empty() || *end || !(d >= 0) || d > 1e9)
    throw std::invalid_argument("must be a non-negative number of seconds, not '" + v + "'");
  return d;
}

bool parse_bool(const std::string& v) {
  for (const char* yes : {"1", "on", "true", "yes"})
    if (v == yes) return true;
  for (const char* no : {"0", "off", "false", "no"})
    if (v == no) return false;
  throw std::invalid_argument("must be 0 or 1 (or on/off), not '" + v + "'");
}

Field uint_field(const char* key, const char* env, unsigned Settings::*m, unsigned lo, unsigned hi) {
  return {key, env, "int", [=](Settings& s, const std::string& v) { s.*m = parse_uint(v, lo, hi); },
          [=](const Settings& s) { return std::to_string(s.*m); }};
}

Field seconds_field(const char* key, const char* env, double Settings::*m) {
  return {key, env, "float", [=](Settings& s, const std::string& v) { s.*m = parse_seconds(v); },
          [=](const Settings& s) { return std::to_string(s.*m); }};
}

Field bool_field(const char* key, const char* env, bool Settings::*m) {
  return {key, env, "bool", [=](Settings& s, const std::string& v) { s.*m = parse_bool(v); },
          [=](const Settings& s) { return std::string(s.*m ? "1" : "0"); }};
}

// A text setting; `choices` empty: any text.
Field text_field(const char* key, const char* env, std::string Settings::*m, std::vector<std::string> choices) {
  auto set = [=](Settings& s, const std::string& v) {
    if (choices.empty()) {
      s.*m = v;
      return;
    }
    std::string list;
    for (const auto& c : choices) {
      if (v == c) {
        s.*m = v;
        return;
      }
      list += (list.empty() ? "" : ", ") + c;
    }
    throw std::invalid_argument("must be one of " + list + ", not '" + v + "'");
  };
  return {key, env, "str", set, [=](const Settings& s) { return s.*m; }};
}

const std::vector<Field>& fields() {
  static const std::vector<Field> table = {
      text_field("io_backend", "TENSORSTREAM_IO_BACKEND", &Settings::io_backend, {"auto", "uring", "posix"}),
      uint_field("threads", "TENSORSTREAM_THREADS", &Settings::threads, 0, 1024),
      uint_field("chunk_mb", "TENSORSTREAM_CHUNK_MB", &Settings::chunk_mb, 1, 1024),
      uint_field("queue_depth", "TENSORSTREAM_QUEUE_DEPTH", &Settings::queue_depth, 0, 4096),
      bool_field("uring_async", "TENSORSTREAM_URING_ASYNC", &Settings::uring_async),
      uint_field("http_connections", "TENSORSTREAM_HTTP_CONNECTIONS", &Settings::http_connections, 0, 1024),
      uint_field("http_retries", "TENSORSTREAM_HTTP_RETRIES", &Settings::http_retries, 0, 1000),
      seconds_field("http_timeout", "TENSORSTREAM_HTTP_TIMEOUT", &Settings::http_timeout),
      seconds_field("http_deadline", "TENSORSTREAM_HTTP_DEADLINE", &Settings::http_deadline),
      seconds_field("http_open_timeout", "TENSORSTREAM_HTTP_OPEN_TIMEOUT", &Settings::http_open_timeout),
      uint_field("ring_mb", "TENSORSTREAM_RING_MB", &Settings::ring_mb, 1, 1u << 20),
      uint_field("ring_slots", "TENSORSTREAM_RING_SLOTS", &Settings::ring_slots, 1, 1024),
      uint_field("ring_lanes", "TENSORSTREAM_RING_LANES", &Settings::ring_lanes, 1, 64),
      uint_field("pinned_mb", "TENSORSTREAM_PINNED_MB", &Settings::pinned_mb, 0, 1u << 22),
      seconds_field("pinned_idle_s", "TENSORSTREAM_PINNED_IDLE_S", &Settings::pinned_idle_s),
      uint_field("cuda_streams", "TENSORSTREAM_CUDA_STREAMS", &Settings::cuda_streams, 0, 64),
      text_field("cuda_library", "TENSORSTREAM_CUDA_LIBRARY", &Settings::cuda_library, {}),
      text_field("device_standin", "TENSORSTREAM_DEVICE_STANDIN", &Settings::device_standin, {}),
      bool_field("huge_pages", "TENSORSTREAM_HUGE_PAGES", &Settings::huge_pages),
      text_field("s3_addressing", "TENSORSTREAM_S3_ADDRESSING", &Settings::s3_addressing, {"auto", "path", "virtual"}),
      uint_field("s3_part_mb", "TENSORSTREAM_S3_PART_MB", &Settings::s3_part_mb, 5, 5120),
      uint_field("s3_upload_concurrency", "TENSORSTREAM_S3_UPLOAD_CONCURRENCY", &Settings::s3_upload_concurrency, 1,
                 256),
      text_field("progress", "TENSORSTREAM_PROGRESS", &Settings::progress,
                 {"auto", "0", "1", "on", "off", "true", "false", "yes", "no"}),
  };
  return table;
}

const Field* find(const std::string& key) {
  for (const auto& f : fields())
    if (key == f.key) return &f;
  return nullptr;
}

// Sets a field from text; a bad value is named by `who`.
void apply(const Field& f, Settings& s, const std::string& value, const std::string& who) {
  try {
    f.set(s, value);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(who + " " + e.what());
  }
}

using Raw = std::vector<std::optional<std::string>>;

// What the environment says now (an empty variable counts as unset).
Raw read_environment() {
  Raw raw;
  for (const auto& f : fields()) {
    const char* v = std::getenv(f.env);
    raw.push_back(v && *v ? std::optional<std::string>(v) : std::nullopt);
  }
  return raw;
}

struct State {
  std::mutex mu;
  bool parsed = false;
  Raw raw;            // the environment when last parsed
  Settings from_env;  // defaults, then that environment
  std::map<std::string, std::string> overrides;
};

State& state() {
  static State* s = [] {
    auto* made = new State;  // never destroyed: loads may run while the process exits
    // A child of fork() gets the lock free, whatever another thread of the parent was doing.
    pthread_atfork([] { state().mu.lock(); }, [] { state().mu.unlock(); }, [] { state().mu.unlock(); });
    return made;
  }();
  return *s;
}

// The environment's settings, parsed again when a variable changed. Caller holds the lock.
const Settings& environment_settings(State& st) {
  Raw raw = read_environment();
  if (st.parsed && raw == st.raw) return st.from_env;
  Settings s;
  for (size_t i = 0; i < fields().size(); ++i)
    if (raw[i]) apply(fields()[i], s, *raw[i], fields()[i].env);
  st.from_env = s;
  st.raw = std::move(raw);
  st.parsed = true;
  return st.from_env;
}

}  // namespace

Settings settings() {
  State& st = state();
  std::lock_guard<std::mutex> lock(st.mu);
  Settings s = environment_settings(st);
  for (const auto& [key, value] : st.overrides) apply(*find(key), s, value, key);
  return s;
}

void configure(const std::map<std::string, std::optional<std::string>>& values, bool replace) {
  Settings probe;
  for (const auto& [key, value] : values) {
    const Field* f = find(key);
    if (!f) throw std::invalid_argument("unknown setting '" + key + "'");
    if (value) apply(*f, probe, *value, key);
  }
  State& st = state();
  std::lock_guard<std::mutex> lock(st.mu);
  if (replace) st.overrides.clear();
  for (const auto& [key, value] : values) {
    if (value)
      st.overrides[key] = *value;
    else
      st.overrides.erase(key);
  }
}

std::map<std::string, std::string> overrides() {
  State& st = state();
  std::lock_guard<std::mutex> lock(st.mu);
  return st.overrides;
}

std::vector<SettingInfo> describe_settings() {
  const Settings now = settings();
  const std::map<std::string, std::string> code = overrides();
  const Raw env = read_environment();
  std::vector<SettingInfo> out;
  for (size_t i = 0; i < fields().size(); ++i) {
    const Field& f = fields()[i];
    std::string origin = code.count(f.key) ? "configure" : env[i] ? "environment" : "default";
    out.push_back({f.key, f.env, f.get(now), f.kind, origin});
  }
  return out;
}

}  // namespace ts
