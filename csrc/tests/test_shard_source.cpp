// Sources laid end to end (the shards of a checkpoint): numbering, reads that cross parts, the
// file engines reading pieces of several files in one run, and the shards' indexes joined.
#include <unistd.h>

#include <atomic>
#include <cstring>

#include "check.hpp"
#include "temp_file.hpp"
#include "tensorstream/errors.hpp"
#include "tensorstream/index_reader.hpp"
#include "tensorstream/io/engine.hpp"
#include "tensorstream/io/source.hpp"
#include "tensorstream/loader.hpp"

using namespace ts;

namespace {

// Bytes that differ from file to file: part `k`, byte i.
std::vector<uint8_t> bytes_of(int k, size_t n) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(i * 13 + k * 101 + (i >> 10));
  return v;
}

// A safetensors file of one F32 tensor `name` of `count` elements, the data counting up from `first`.
std::vector<uint8_t> st_file(const std::string& name, size_t count, uint8_t first) {
  const std::string header = R"({")" + name + R"(":{"dtype":"F32","shape":[)" + std::to_string(count) +
                             R"(],"data_offsets":[0,)" + std::to_string(count * 4) + R"(]},"__metadata__":{"part":")" +
                             name + R"("}})";
  std::vector<uint8_t> f(8);
  uint64_t n = header.size();
  std::memcpy(f.data(), &n, 8);
  f.insert(f.end(), header.begin(), header.end());
  for (size_t i = 0; i < count * 4; ++i) f.push_back(static_cast<uint8_t>(first + i));
  return f;
}

}  // namespace

TEST(shard_source_numbers_its_parts_end_to_end) {
  auto a = bytes_of(1, 1000), c = bytes_of(3, 3000);
  std::vector<uint8_t> none;
  auto pa = std::make_shared<MemorySource>(a.data(), a.size(), nullptr);
  auto pb = std::make_shared<MemorySource>(none.data(), 0, nullptr);  // an empty part is skipped over
  auto pc = std::make_shared<MemorySource>(c.data(), c.size(), nullptr);
  ShardSource whole({pa, pb, pc}, "ckpt");
  CHECK(whole.size() == 4000);
  CHECK(whole.name() == "ckpt" && whole.kind() == "memory");
  CHECK((whole.starts() == std::vector<uint64_t>{0, 1000, 1000, 4000}));
  auto at = whole.locate(999);
  CHECK(at.part == pa.get() && at.offset == 999 && at.end == 1000);
  at = whole.locate(1000);
  CHECK(at.part == pc.get() && at.offset == 0 && at.end == 4000);
  // A read across the boundary is split between the parts.
  std::vector<uint8_t> got(200);
  whole.read_exact(900, got.data(), got.size());
  CHECK(std::memcmp(got.data(), a.data() + 900, 100) == 0);
  CHECK(std::memcmp(got.data() + 100, c.data(), 100) == 0);
  CHECK_THROWS(whole.read_exact(3990, got.data(), 20), FormatError);
}

TEST(shard_source_refuses_parts_read_differently) {
  auto a = bytes_of(1, 100);
  auto path = temp_file(a);
  auto mem = std::make_shared<MemorySource>(a.data(), a.size(), nullptr);
  auto file = std::make_shared<FileSource>(path);
  CHECK_THROWS(ShardSource({mem, file}, "mixed"), std::invalid_argument);
  CHECK_THROWS(ShardSource({}, "none"), std::invalid_argument);
  CHECK_THROWS(ShardSource({file, nullptr}, "null"), std::invalid_argument);
  auto inner = std::make_shared<ShardSource>(std::vector<std::shared_ptr<Source>>{file, file}, "inner");
  CHECK_THROWS(ShardSource({inner}, "nested"), std::invalid_argument);
  unlink(path.c_str());
}

TEST(file_engines_read_pieces_of_every_part_in_one_run) {
  std::vector<std::vector<uint8_t>> data = {bytes_of(0, 300000), bytes_of(1, 5), bytes_of(2, 700001)};
  std::vector<std::string> paths;
  std::vector<std::shared_ptr<Source>> parts;
  for (const auto& d : data) {
    paths.push_back(temp_file(d));
    parts.push_back(std::make_shared<FileSource>(paths.back()));
  }
  ShardSource whole(parts, "three files");
  const uint64_t b1 = whole.starts()[1], b2 = whole.starts()[2];
  for (const char* backend : {"posix", "uring"}) {
    std::string why;
    if (std::string(backend) == "uring" && !uring_available(&why)) continue;
    EngineOptions o;
    o.backend = backend;
    o.chunk_bytes = 4096 + 17;  // many pieces in each part
    auto engine = make_engine(whole, o);
    CHECK(std::string(engine->name()) == (std::string(backend) == "uring" ? "io_uring" : "posix"));
    std::vector<uint8_t> x(300000 - 7), y(5), z(700001 - 10);
    std::atomic<uint64_t> seen{0};
    engine->run({{b2 + 10, z.size(), z.data()}, {7, x.size(), x.data()}, {b1, y.size(), y.data()}},
                [&](const Piece& p) { seen += p.length; });
    CHECK(seen == x.size() + y.size() + z.size());
    CHECK(std::memcmp(x.data(), data[0].data() + 7, x.size()) == 0);
    CHECK(y == data[1]);
    CHECK(std::memcmp(z.data(), data[2].data() + 10, z.size()) == 0);
    // A read past the end of a part fails with its op (the part is named), whatever follows it.
    std::vector<uint8_t> over(10);
    try {
      engine->run({{b1 + 1, over.size(), over.data()}}, [](const Piece&) {});
      CHECK(false);
    } catch (const ReadFailure& f) {
      CHECK(f.op() == 0 && f.err() == 0);
    }
  }
  for (const auto& p : paths) unlink(p.c_str());
}

TEST(joined_safetensors_indexes_load_through_one_loader) {
  std::vector<std::vector<uint8_t>> files = {st_file("a", 3, 10), st_file("b", 2, 50), st_file("c", 4, 90)};
  std::vector<std::shared_ptr<Source>> parts;
  std::vector<tz::Index> indexes;
  for (const auto& f : files) {
    parts.push_back(std::make_shared<MemorySource>(f.data(), f.size(), nullptr));
    indexes.push_back(read_any_index(*parts.back()));
  }
  auto whole = std::make_shared<ShardSource>(parts, "ckpt");
  tz::Index joined = join_indexes({&indexes[0], &indexes[1], &indexes[2]}, *whole);
  CHECK(joined.entries.size() == 3 && joined.file_size == whole->size());
  CHECK(joined.entries[2].name == "c" && joined.entries[2].data_offset == whole->starts()[2] + indexes[2].entries[0].data_offset);
  CHECK(joined.metadata.size() == 3 && joined.metadata[1].second == "b");
  Loader loader(whole, EngineOptions{});
  std::vector<uint8_t> a(12), c(16);
  loader.load(joined, {LoadRequest{0, a.data(), 12}, LoadRequest{2, c.data(), 16}}, false);
  for (size_t i = 0; i < 12; ++i) CHECK(a[i] == 10 + i);
  for (size_t i = 0; i < 16; ++i) CHECK(c[i] == 90 + i);
  // Indexes that do not match the parts are refused; a name in two shards is a FormatError.
  CHECK_THROWS(join_indexes({&indexes[0], &indexes[1]}, *whole), std::invalid_argument);
  CHECK_THROWS(join_indexes({&indexes[1], &indexes[0], &indexes[2]}, *whole), std::invalid_argument);
  auto again = st_file("a", 2, 0);
  auto twin = std::make_shared<MemorySource>(again.data(), again.size(), nullptr);
  auto twin_index = read_any_index(*twin);
  ShardSource clash({parts[0], twin}, "clash");
  CHECK_THROWS(join_indexes({&indexes[0], &twin_index}, clash), FormatError);
}
