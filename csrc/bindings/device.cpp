// DeviceLoader (the pinned ring pipeline), PinnedBuffer and cuda_driver(). Every blocking call releases
// the GIL.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings.hpp"
#include "interruptible.hpp"
#include "tensorstream/cuda/copier.hpp"
#include "tensorstream/cuda/driver.hpp"
#include "tensorstream/device/device_loader.hpp"

namespace py = pybind11;

namespace tsb {

namespace {

using Request = std::tuple<size_t, uintptr_t, uint64_t>;

std::unique_ptr<ts::DeviceLoader> make_loader(std::shared_ptr<ts::Source> src, int device, const std::string& copier,
                                              const ts::RingOptions& ring_in, const ts::EngineOptions& engine,
                                              const ts::HostCopierOptions& host) {
  release_gil nogil;  // the driver may take a while to start
  const ts::RingOptions ring = ring_in.resolved();
  auto c = ts::make_copier(copier, device, ring.streams, ring.slots, host);
  return std::make_unique<ts::DeviceLoader>(std::move(src), engine, ring, std::move(c));
}

py::dict stats_dict(const ts::DeviceLoadStats& s) {
  py::dict d;
  d["bytes"] = s.bytes;
  d["reads"] = s.reads;
  d["turns"] = s.turns;
  d["copies"] = s.copies;
  d["slot_turns"] = s.slot_turns;
  d["ring_bytes"] = s.ring_bytes;
  d["header_seconds"] = s.header_seconds;
  d["data_seconds"] = s.data_seconds;
  d["alloc_seconds"] = s.alloc_seconds;
  d["slot_wait_seconds"] = s.slot_wait_seconds;
  d["hash_seconds"] = s.hash_seconds;
  d["decrypt_seconds"] = s.decrypt_seconds;
  return d;
}

// Page-locked host memory from the driver (portable: pinned for every context), freed when the
// Python object goes away. Exposes the buffer protocol (torch.frombuffer keeps it alive).
class PinnedBuffer {
 public:
  PinnedBuffer(int device, size_t bytes) : ctx_(device), bytes_(bytes) {
    ts::cuda::ScopedContext scope(ctx_);
    ts::cuda::check(ts::cuda::driver().MemHostAlloc(&data_, bytes ? bytes : 1, ts::cuda::kMemHostAllocPortable),
                    "cuMemHostAlloc (staging buffer)");
  }
  ~PinnedBuffer() {
    try {
      ts::cuda::ScopedContext scope(ctx_);
      ts::cuda::driver().MemFreeHost(data_);
    } catch (...) {
    }
  }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  void* data() const { return data_; }
  size_t size() const { return bytes_; }

 private:
  ts::cuda::PrimaryContext ctx_;
  size_t bytes_;
  void* data_ = nullptr;
};

}  // namespace

void register_device(py::module_& m) {
  py::class_<ts::DeviceLoader>(m, "DeviceLoader")
      .def(py::init([](std::shared_ptr<ts::Source> src, int device, const std::string& copier, uint64_t ring_bytes,
                       unsigned slots, uint64_t slot_bytes, unsigned streams, unsigned lanes,
                       const std::string& backend, unsigned threads, size_t chunk_bytes, unsigned queue_depth,
                       unsigned copy_delay_us, uint64_t fail_copy_at, bool discard, bool background) {
             if (device < 0) throw std::invalid_argument("device must be a CUDA ordinal >= 0");
             ts::RingOptions ring{ring_bytes, slots, slot_bytes, streams, lanes};
             ts::EngineOptions engine{backend, threads, chunk_bytes, queue_depth};
             ts::HostCopierOptions host{background, copy_delay_us, fail_copy_at, discard};
             return make_loader(std::move(src), device, copier, ring, engine, host);
           }),
           py::arg("source"), py::arg("device") = 0, py::arg("copier") = "cuda", py::arg("ring_bytes") = 0,
           py::arg("slots") = 0, py::arg("slot_bytes") = 0, py::arg("streams") = 0, py::arg("lanes") = 0,
           py::arg("backend") = "auto", py::arg("threads") = 0, py::arg("chunk_bytes") = 0,
           py::arg("queue_depth") = 0, py::arg("copy_delay_us") = 0, py::arg("fail_copy_at") = 0,
           py::arg("discard") = false, py::arg("background") = true)
      .def_property_readonly("backend", &ts::DeviceLoader::backend)
      .def_property_readonly("copier", [](const ts::DeviceLoader& self) { return self.copier().name(); })
      .def_property_readonly("ring_bytes", [](const ts::DeviceLoader& self) { return self.ring().ring_bytes; })
      .def_property_readonly("slot_bytes", [](const ts::DeviceLoader& self) { return self.ring().slot_bytes; })
      .def_property_readonly("slots", [](const ts::DeviceLoader& self) { return self.ring().slots; })
      .def_property_readonly("streams", [](const ts::DeviceLoader& self) { return self.ring().streams; })
      .def_property_readonly("lanes", [](const ts::DeviceLoader& self) { return self.ring().lanes; })
      .def(
          "load",
          [](ts::DeviceLoader& self, const ts::tz::Index& index, const std::vector<Request>& requests,
             bool verify_hash) {
            std::vector<ts::LoadRequest> reqs;
            reqs.reserve(requests.size());
            for (const auto& [entry, addr, nbytes] : requests)
              reqs.push_back(ts::LoadRequest{entry, reinterpret_cast<uint8_t*>(addr), nbytes});
            struct Resume {  // a Ctrl-C stops this load only: the loader stays usable
              ts::DeviceLoader& loader;
              ~Resume() { loader.resume(); }
            } resume{self};
            return call_interruptible([&] { return self.load(index, reqs, verify_hash); },
                                      [&] { self.interrupt(); });
          },
          py::arg("index"), py::arg("requests"), py::arg("verify_hash") = false)
      .def("cancel", &ts::DeviceLoader::cancel,
           "Stop the running load (from any thread) and refuse later ones: they raise LoadCancelled.")
      .def_property_readonly("cancelled", &ts::DeviceLoader::cancelled)
      .def_property_readonly("progress", &ts::DeviceLoader::progress, "Data bytes read into the ring so far by the running load.")
      .def("stats", [](const ts::DeviceLoader& self) { return stats_dict(self.stats()); });

  py::class_<PinnedBuffer>(m, "PinnedBuffer", py::buffer_protocol())
      .def(py::init([](size_t bytes, int device) {
             release_gil nogil;
             return std::make_unique<PinnedBuffer>(device, bytes);
           }),
           py::arg("bytes"), py::arg("device") = 0)
      .def_property_readonly("size", &PinnedBuffer::size)
      .def_buffer([](PinnedBuffer& b) {
        return py::buffer_info(b.data(), 1, py::format_descriptor<uint8_t>::format(), 1,
                               {static_cast<py::ssize_t>(b.size())}, {1});
      });

  m.def("cuda_driver", [] {
    ts::cuda::DriverInfo info;
    {
      release_gil nogil;
      info = ts::cuda::driver_info();
    }
    py::dict d;
    d["available"] = info.available;
    d["error"] = info.error;
    d["driver_version"] = info.driver_version;
    d["devices"] = info.devices;
    return d;
  });
}

}  // namespace tsb
