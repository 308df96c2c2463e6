// Sources and the parsed index.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings.hpp"
#include "interruptible.hpp"
#include "tensorstream/index_reader.hpp"
#include "tensorstream/errors.hpp"
#include "tensorstream/format/safetensors.hpp"
#include "tensorstream/format/tensorizer.hpp"
#include "tensorstream/io/engine.hpp"
#include "tensorstream/io/medium.hpp"
#include "tensorstream/io/source.hpp"
#include "tensorstream/tensor_checks.hpp"

namespace py = pybind11;

namespace tsb {

namespace {

py::str lenient_str(const std::string& raw) {
  PyObject* s = PyUnicode_DecodeUTF8(raw.data(), static_cast<Py_ssize_t>(raw.size()), "surrogateescape");
  if (!s) throw py::error_already_set();
  return py::reinterpret_steal<py::str>(s);
}

// The buffer view (and through it the exporting object) lives as long as the source.
std::shared_ptr<ts::MemorySource> memory_source(py::buffer b) {
  auto* info = new py::buffer_info(b.request());
  std::shared_ptr<void> owner(info, [](py::buffer_info* p) {
    py::gil_scoped_acquire gil;
    delete p;
  });
  return std::make_shared<ts::MemorySource>(static_cast<const uint8_t*>(info->ptr),
                                            static_cast<uint64_t>(info->size * info->itemsize), owner);
}

}  // namespace

void register_format(py::module_& m) {
  py::class_<ts::Source, std::shared_ptr<ts::Source>>(m, "Source")
      .def_property_readonly("size", &ts::Source::size)
      .def_property_readonly("name", &ts::Source::name)
      .def(
          "read_into",
          [](const ts::Source& s, uint64_t offset, py::buffer b) {
            py::buffer_info info = b.request(true);
            size_t n = static_cast<size_t>(info.size * info.itemsize);
            ts::CancelToken stop;
            auto read = [&] {
              s.read_exact(offset, info.ptr, n, &stop);
              return true;
            };
            if (!may_wait(s)) {  // files and memory: no helper thread per call (slices read many)
              release_gil nogil;
              read();
              return;
            }
            call_interruptible(read, [&] { stop.interrupt(); });  // Ctrl-C stops a remote read
          },
          py::arg("offset"), py::arg("buffer"),
          "Fill a writable buffer with the bytes at offset; FormatError if the source ends first.")
      .def(
          "read_many",
          [](const ts::Source& s, const std::vector<std::pair<uint64_t, py::buffer>>& ranges) {
            std::vector<ts::ReadOp> ops;
            std::vector<py::buffer_info> views;  // held until the run ends
            for (const auto& [offset, b] : ranges) {
              views.push_back(b.request(true));
              const auto n = static_cast<uint64_t>(views.back().size * views.back().itemsize);
              if (offset > s.size() || n > s.size() - offset)
                throw ts::FormatError("file ends before byte " + std::to_string(offset + n), "", "file_size");
              ops.push_back({offset, n, static_cast<uint8_t*>(views.back().ptr)});
            }
            ts::CancelToken stop;
            auto read = [&] {
              auto engine = ts::make_engine(s, ts::EngineOptions{});
              engine->set_cancel(&stop);
              try {
                engine->run(ops, [](const ts::Piece&) {});
              } catch (const ts::ReadFailure& f) {
                ts::rethrow_read(f, "", s, "range");
              }
              return true;
            };
            if (!may_wait(s)) {
              release_gil nogil;
              read();
              return;
            }
            call_interruptible(read, [&] { stop.interrupt(); });
          },
          py::arg("ranges"),
          "Fill every (offset, writable buffer) pair in one engine run: parallel reads for files, "
          "parallel range requests over the host's kept connections for URLs.")
      .def("__repr__", [](const ts::Source& s) { return "<tensorstream Source " + s.name() + ">"; });
  m.def(
      "medium",
      [](const ts::Source& s) {
        if (s.fd() < 0) throw std::invalid_argument("only a local file has a medium to probe");
        ts::Medium md;
        {
          release_gil nogil;
          md = ts::probe_medium(s.fd(), s.size());
        }
        py::dict d;
        d["resident"] = md.resident;
        d["rotational"] = md.rotational;
        d["kind"] = ts::describe_medium(md);
        d["queue_depth"] = ts::auto_queue_depth(md);
        return d;
      },
      py::arg("source"),
      "What a local file lies on (page-cache share, spinning or not) and the io_uring queue depth "
      "TENSORSTREAM_QUEUE_DEPTH=0 picks for it.");
  m.def(
      "resident_share",
      [](uintptr_t address, uint64_t length, uint64_t samples) {
        return ts::resident_in(reinterpret_cast<const void*>(address), length, samples, 1);
      },
      py::arg("address"), py::arg("length"), py::arg("samples") = 16,
      "The share of `samples` pages spread over [address, address + length), a file mapping of this "
      "process, that the page cache holds (mincore: nothing is read).");
  py::class_<ts::FileSource, ts::Source, std::shared_ptr<ts::FileSource>>(m, "FileSource")
      .def(py::init<const std::string&>(), py::arg("path"), py::call_guard<release_gil>())
      .def_static("from_fd", &ts::FileSource::from_fd, py::arg("fd"), py::call_guard<release_gil>());
  py::class_<ts::MemorySource, ts::Source, std::shared_ptr<ts::MemorySource>>(m, "MemorySource")
      .def(py::init(&memory_source), py::arg("buffer"));

  py::class_<ts::ShardSource, ts::Source, std::shared_ptr<ts::ShardSource>>(m, "ShardSource",
      "Sources of one kind (files, or URLs of one host) laid end to end: the shards of a checkpoint, read "
      "by one engine run with their indexes joined (join_indexes).")
      .def(py::init<std::vector<std::shared_ptr<ts::Source>>, std::string>(), py::arg("parts"), py::arg("name"))
      .def_property_readonly("parts", &ts::ShardSource::parts)
      .def_property_readonly("starts", &ts::ShardSource::starts, "Where each part starts, then the total size.");

  py::class_<ts::tz::IndexEntry>(m, "Entry")
      .def_property_readonly("name", [](const ts::tz::IndexEntry& e) { return py::bytes(e.name); })
      .def_readonly("tensor_type", &ts::tz::IndexEntry::tensor_type)
      .def_property_readonly("dtype", [](const ts::tz::IndexEntry& e) { return lenient_str(e.dtype); })
      .def_property_readonly("shape",
                             [](const ts::tz::IndexEntry& e) {
                               py::tuple t(e.shape.size());
                               for (size_t i = 0; i < e.shape.size(); ++i) t[i] = py::int_(e.shape[i]);
                               return t;
                             })
      .def_property_readonly("path",
                             [](const ts::tz::IndexEntry& e) {  // decoded and checked by the parser
                               py::tuple t(e.path.size());
                               for (size_t i = 0; i < e.path.size(); ++i)
                                 t[i] = e.path[i].is_index ? py::object(py::int_(e.path[i].index))
                                                           : py::object(py::str(e.path[i].key));
                               return t;
                             })
      .def_readonly("torch_dtype", &ts::tz::IndexEntry::torch_dtype)
      .def_readonly("itemsize", &ts::tz::IndexEntry::itemsize)
      .def_readonly("header_offset", &ts::tz::IndexEntry::header_offset)
      .def_readonly("data_offset", &ts::tz::IndexEntry::data_offset)
      .def_readonly("data_length", &ts::tz::IndexEntry::data_length)
      .def_readonly("entry_version", &ts::tz::IndexEntry::entry_version)
      .def_property_readonly("is_meta", &ts::tz::IndexEntry::is_meta)
      .def("__repr__", [](const ts::tz::IndexEntry& e) -> std::string {
        return "<Entry " + ts::printable_name(e.name) + " " + ts::printable_name(e.dtype) + ">";
      });

  py::class_<ts::tz::Index, std::shared_ptr<ts::tz::Index>>(m, "Index", py::dynamic_attr())
      .def_property_readonly("version", [](const ts::tz::Index& i) { return i.header.version; })
      .def_property_readonly("feature_flags", [](const ts::tz::Index& i) { return i.header.feature_flags; })
      .def_property_readonly("tensor_size", [](const ts::tz::Index& i) { return i.header.tensor_size; })
      .def_property_readonly("metadata_len", [](const ts::tz::Index& i) { return i.header.metadata_len; })
      .def_property_readonly("encrypted", [](const ts::tz::Index& i) { return i.header.encrypted(); })
      .def_property_readonly("versioned_headers",
                             [](const ts::tz::Index& i) { return i.header.versioned_headers(); })
      .def_property_readonly("format",
                             [](const ts::tz::Index& i) {
                               return i.format == ts::tz::Format::kSafetensors ? "safetensors" : "tensorizer";
                             })
      .def_property_readonly("metadata",
                             [](const ts::tz::Index& i) {
                               py::dict d;
                               for (const auto& [k, v] : i.metadata) d[lenient_str(k)] = lenient_str(v);
                               return d;
                             })
      .def_readonly("file_size", &ts::tz::Index::file_size)
      .def_property_readonly(
          "entries",
          [](py::object self) -> py::object {
            // Converted once and kept: an index never changes, and callers index it per tensor.
            py::dict attrs = self.attr("__dict__");
            if (!attrs.contains("_entries")) attrs["_entries"] = py::cast(self.cast<const ts::tz::Index&>().entries);
            return attrs["_entries"];
          },
          "The index entries, in file order (one list, made on first access).")
      .def("__len__", [](const ts::tz::Index& i) { return i.entries.size(); });

  m.def(
      "read_index",
      [](const std::shared_ptr<ts::Source>& src) {
        ts::CancelToken stop;  // Ctrl-C stops reading the index as it stops a load
        auto read = [&] { return std::make_shared<ts::tz::Index>(ts::read_any_index(*src, &stop)); };
        if (!may_wait(*src)) return call_without_gil(read);  // a file or memory: no helper thread
        return call_interruptible(read, [&] { stop.interrupt(); });
      },
      py::arg("source"), "The index of a tensorizer or safetensors source, the format picked by its first bytes.");
  m.def(
      "join_indexes",
      [](const std::vector<std::shared_ptr<ts::tz::Index>>& parts, const ts::ShardSource& whole) {
        std::vector<const ts::tz::Index*> raw;
        for (const auto& p : parts) {
          if (!p) throw std::invalid_argument("join_indexes: an index is None");
          raw.push_back(p.get());
        }
        return std::make_shared<ts::tz::Index>(ts::join_indexes(raw, whole));
      },
      py::arg("indexes"), py::arg("whole"),
      "The safetensors indexes of a ShardSource's parts as one index of the whole (offsets from its start).");
}

}  // namespace tsb
