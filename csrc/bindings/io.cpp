// Loader, Writer and features(). Every blocking call releases the GIL.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings.hpp"
#include "interruptible.hpp"
#include "tensorstream/features.hpp"
#include "tensorstream/loader.hpp"
#include "tensorstream/writer.hpp"

namespace py = pybind11;

namespace tsb {

namespace {

std::vector<ts::LoadRequest> to_requests(const std::vector<std::tuple<size_t, uintptr_t, uint64_t>>& in) {
  std::vector<ts::LoadRequest> out;
  out.reserve(in.size());
  for (const auto& [entry, addr, nbytes] : in)
    out.push_back(ts::LoadRequest{entry, reinterpret_cast<uint8_t*>(addr), nbytes});
  return out;
}

using RecordTuple = std::tuple<py::bytes, int, int, std::string, std::vector<uint64_t>, uintptr_t, uint64_t, bool>;

std::vector<ts::WriteRecord> to_records(const std::vector<RecordTuple>& in) {
  std::vector<ts::WriteRecord> out;
  out.reserve(in.size());
  for (const auto& [name, type, module_idx, dtype, shape, addr, nbytes, is_meta] : in) {
    if (type < 0 || type > 2) throw std::invalid_argument("tensor_type must be 0, 1 or 2");
    if (module_idx < 0 || module_idx > 0xffff) throw std::invalid_argument("module_idx must fit in 16 bits");
    ts::WriteRecord r;
    r.spec.name = std::string(name);
    r.spec.tensor_type = static_cast<uint8_t>(type);
    r.spec.module_idx = static_cast<uint16_t>(module_idx);
    r.spec.dtype = dtype;
    r.spec.shape = shape;
    r.spec.data_length = nbytes;
    r.spec.is_meta = is_meta;
    r.data = reinterpret_cast<const uint8_t*>(addr);
    out.push_back(std::move(r));
  }
  return out;
}

}  // namespace

void register_io(py::module_& m) {
  py::class_<ts::Loader>(m, "Loader")
      .def(py::init([](std::shared_ptr<ts::Source> src, std::string backend, unsigned threads, size_t chunk_bytes,
                       unsigned queue_depth) {
             return new ts::Loader(std::move(src), ts::EngineOptions{backend, threads, chunk_bytes, queue_depth});
           }),
           py::arg("source"), py::arg("backend") = "auto", py::arg("threads") = 0, py::arg("chunk_bytes") = 0,
           py::arg("queue_depth") = 0)
      .def_property_readonly("backend", &ts::Loader::backend)
      .def(
          "load",
          [](ts::Loader& self, const ts::tz::Index& index,
             const std::vector<std::tuple<size_t, uintptr_t, uint64_t>>& requests, bool verify_hash) {
            auto reqs = to_requests(requests);
            struct Resume {  // a Ctrl-C stops this load only: the loader stays usable
              ts::Loader& loader;
              ~Resume() { loader.resume(); }
            } resume{self};
            return call_interruptible([&] { return self.load(index, reqs, verify_hash); },
                                      [&] { self.interrupt(); });
          },
          py::arg("index"), py::arg("requests"), py::arg("verify_hash") = false)
      .def(
          "check_in_place",
          [](ts::Loader& self, const ts::tz::Index& index,
             const std::vector<std::tuple<size_t, uintptr_t, uint64_t>>& requests, bool verify_hash) {
            auto reqs = to_requests(requests);
            struct Resume {
              ts::Loader& loader;
              ~Resume() { loader.resume(); }
            } resume{self};
            auto check = [&] { return self.check_in_place(index, reqs, verify_hash); };
            // Without hashing, a local file's check reads a few headers at most: no helper thread.
            if (!verify_hash && !may_wait(self.source())) return call_without_gil(check);
            return call_interruptible(check, [&] { self.interrupt(); });
          },
          py::arg("index"), py::arg("requests"), py::arg("verify_hash") = false,
          "As load(), for data already at each request's address (a mapping of the file): headers "
          "checked, hashes computed where the data lies, nothing copied.")
      .def("cancel", &ts::Loader::cancel,
           "Stop the running load (from any thread) and refuse later ones: they raise LoadCancelled.")
      .def_property_readonly("cancelled", &ts::Loader::cancelled)
      .def_property_readonly("progress", &ts::Loader::progress, "Data bytes read so far by the running load.")
      .def("stats", [](const ts::Loader& self) {
        const auto& s = self.stats();
        py::dict d;
        d["bytes"] = s.bytes;
        d["reads"] = s.reads;
        d["queued_bytes"] = s.queued_bytes;
        d["header_seconds"] = s.header_seconds;
        d["data_seconds"] = s.data_seconds;
        d["hash_seconds"] = s.hash_seconds;
        d["decrypt_seconds"] = s.decrypt_seconds;
        return d;
      });

  py::class_<ts::Writer>(m, "Writer")
      .def(py::init<int, unsigned>(), py::arg("fd"), py::arg("threads") = 0)
      .def(
          "write",
          [](ts::Writer& self, const std::vector<RecordTuple>& records) {
            auto recs = to_records(records);
            release_gil nogil;
            self.write(recs);
          },
          py::arg("records"))
      .def("close", &ts::Writer::close, py::call_guard<release_gil>(),
           "Finish the file: for a streamed writer, send the prologue and complete the object.")
      .def("abort", &ts::Writer::abort, py::call_guard<release_gil>(),
           "Abandon a streamed object (nothing is left behind); no effect on file writers.")
      .def_property_readonly("tensor_count", &ts::Writer::tensor_count)
      .def_property_readonly("tensor_size", &ts::Writer::tensor_size)
      .def_property_readonly("end_offset", &ts::Writer::end_offset)
      .def_property_readonly("version", &ts::Writer::version);

  m.def("features", [] {
    auto f = ts::features();
    py::dict d;
    d["version"] = f.version;
    d["io_uring"] = f.io_uring;
    d["io_uring_error"] = f.io_uring_error;
    d["default_backend"] = f.default_backend;
    d["hardware_threads"] = f.hardware_threads;
    return d;
  });
}

}  // namespace tsb
