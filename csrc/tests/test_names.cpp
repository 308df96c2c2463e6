// Names and dtypes as the parsers decode them: paths, clashes between paths, torch dtype names.
#include <string>
#include <vector>

#include "check.hpp"
#include "tensorstream/errors.hpp"
#include "tensorstream/format/names.hpp"
#include "tensorstream/format/tensorizer.hpp"

namespace {

using namespace ts;
using namespace ts::tz;

std::string field_of(const std::string& raw) {
  try {
    decode_name(raw);
  } catch (const FormatError& e) {
    return e.field();
  }
  return "accepted";
}

std::string clash(const std::vector<std::string>& raws) {
  std::vector<IndexEntry> entries;
  for (const auto& r : raws) {
    IndexEntry e;
    e.name = r;
    e.path = decode_name(r);
    entries.push_back(e);
  }
  try {
    check_paths(entries);
  } catch (const FormatError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(names_decode_into_paths) {
  auto plain = decode_name("layer.0.weight");
  CHECK(plain.size() == 1 && !plain[0].is_index && plain[0].key == "layer.0.weight");
  auto p = decode_name("\x1e[\"model\",0,\"w\\u00e9\"]");
  CHECK(p.size() == 3 && p[0].key == "model" && p[1].is_index && p[1].index == 0 && p[2].key == "w\xc3\xa9");
  CHECK(decode_name("\x1e[18446744073709551615]")[0].index == 18446744073709551615ull);
  CHECK(decode_name("caf\xc3\xa9")[0].key == "caf\xc3\xa9");
}

TEST(names_that_are_not_paths_are_refused) {
  for (const std::string raw : {std::string(""), std::string("\xff\xfe"), std::string("\xed\xa0\x80"),
                                std::string("\xc0\xaf"), std::string("\x1e[\"a\",]"), std::string("\x1e{\"a\":1}"),
                                std::string("\x1e[\"a\",-1]"), std::string("\x1e[\"a\",1.5]"),
                                std::string("\x1e[\"a\",1e3]"), std::string("\x1e[\"a\",true]"),
                                std::string("\x1e[null]"), std::string("\x1e[[\"a\"]]"), std::string("\x1e\"a\""),
                                std::string("\x1e[]"), std::string("\x1e[\"a\",\n0]"), std::string("\x1e"),
                                std::string("\x1e[18446744073709551616]")})
    CHECK(field_of(raw) == "name");
  std::string deep = "\x1e[";
  for (int i = 0; i < 257; ++i) deep += (i ? ",0" : "0");
  CHECK(field_of(deep + "]") == "name");
}

TEST(paths_that_clash_are_refused_whatever_their_order) {
  CHECK(clash({"w", "b", "\x1e[\"m\",0]", "\x1e[\"m\",1]"}).empty());
  CHECK(clash({"w", "w"}).find("used twice") != std::string::npos);
  CHECK(clash({"a", "\x1e[\"a\"]"}).find("used twice") != std::string::npos);  // one path, two spellings
  CHECK(clash({"\x1e[\"a\",\"b\"]", "\x1e[\"a\"]"}).find("prefix") != std::string::npos);
  CHECK(clash({"a", "z", "\x1e[\"a\",0]"}).find("prefix") != std::string::npos);
  CHECK(clash({"\x1e[\"a\",\"k\"]", "\x1e[\"a\",5]", "\x1e[\"a\",0]"}).find("mixes") != std::string::npos);
  CHECK(clash({"\x1e[0]", "x"}).find("mixes") != std::string::npos);  // the top level too
}

TEST(dtype_strings_name_torch_types) {
  CHECK(torch_dtype_name("<f4") == "float32");
  CHECK(torch_dtype_name("|b1") == "bool");
  CHECK(torch_dtype_name("=i8") == "int64");
  CHECK(torch_dtype_name("<c16") == "complex128");
  CHECK(torch_dtype_name(std::string("<V2\0torch.bfloat16", 18)) == "bfloat16");
  CHECK(torch_dtype_name(std::string("|V1\0torch.float8_e4m3fn", 23)) == "float8_e4m3fn");
  CHECK(torch_dtype_name(std::string("<V2\0torch.half", 14)) == "half");
  std::string why;
  for (const std::string bad :
       {std::string("<q4"), std::string("<f3"), std::string(">f4"), std::string(""), std::string("f4"),
        std::string("<f"), std::string("<f123"), std::string("|f4"), std::string("<V2\0torch.nonsense", 18),
        std::string("<V2\0torch.float32", 17), std::string("|V1\0torch.qint8", 15),
        std::string("<V2\0numpy.float16", 17), std::string("<i2\0torch.bfloat16", 18),
        std::string("<V2\0torch.__class__", 19)}) {
    why.clear();
    CHECK(torch_dtype_name(bad, &why).empty());
    CHECK(!why.empty());
  }
}
