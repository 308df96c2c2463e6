// HeaderDigest: checking a copy of a tensor's bytes against the hashes stored in its file
// (TensorDeserializer.verify_module). Every hashing call releases the GIL.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings.hpp"
#include "nogil.hpp"
#include "tensorstream/device/device_loader.hpp"
#include "tensorstream/loader.hpp"
#include "tensorstream/tensor_checks.hpp"

namespace py = pybind11;

namespace tsb {

namespace {

template <class L>
void add_digests(py::class_<L> cls) {
  cls.def(
      "digests", [](const L& self) { return self.digests(); },
      "Digests of the tensors of the last load that succeeded, in request order.");
}

}  // namespace

void register_digests(py::module_& m) {
  py::class_<ts::HeaderDigest>(m, "HeaderDigest")
      .def_readonly("entry", &ts::HeaderDigest::entry)
      .def_property_readonly("has_hashes",
                             [](const ts::HeaderDigest& d) { return d.crc32.has_value() || d.sha256.has_value(); })
      .def_property_readonly(
          "kinds",
          [](const ts::HeaderDigest& d) {
            std::vector<std::string> out;
            if (d.crc32) out.emplace_back("crc32");
            if (d.sha256) out.emplace_back("sha256");
            return out;
          },
          "The hashes the tensor's header stores: 'crc32', 'sha256' (empty: none).")
      .def(
          "matches",
          [](const ts::HeaderDigest& self, uintptr_t address, uint64_t nbytes) {
            if (nbytes && !address) throw std::invalid_argument("null address for a non-empty tensor");
            release_gil nogil;
            return self.matches(reinterpret_cast<const void*>(address), static_cast<size_t>(nbytes));
          },
          py::arg("address"), py::arg("nbytes"),
          "Whether the tensor's header and the nbytes at address give the stored hashes.")
      .def("__repr__", [](const ts::HeaderDigest& d) { return "<HeaderDigest #" + std::to_string(d.entry) + ">"; });

  m.def(
      "read_digests",
      [](const std::shared_ptr<ts::Source>& src, const ts::tz::Index& index, const std::vector<size_t>& entries) {
        release_gil nogil;
        return ts::read_digests(*src, index, entries);
      },
      py::arg("source"), py::arg("index"), py::arg("entries"),
      "Digests of the tensors at these index positions, read from their per-tensor headers.");

  add_digests(py::reinterpret_borrow<py::class_<ts::Loader>>(m.attr("Loader")));
  add_digests(py::reinterpret_borrow<py::class_<ts::DeviceLoader>>(m.attr("DeviceLoader")));
}

}  // namespace tsb
