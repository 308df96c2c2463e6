// The settings object (settings(), configure(), the overrides, their listing for features()) and
// the runtime (runtime_info(), shutdown_runtime()).
#include <pybind11/stl.h>

#include "bindings.hpp"
#include "nogil.hpp"
#include "tensorstream/cuda/host_pool.hpp"
#include "tensorstream/runtime.hpp"
#include "tensorstream/settings.hpp"

namespace py = pybind11;

namespace tsb {

namespace {

py::object typed(const ts::SettingInfo& s) {
  if (s.kind == "int") return py::int_(std::stoull(s.value));
  if (s.kind == "float") return py::float_(std::stod(s.value));
  if (s.kind == "bool") return py::bool_(s.value == "1");
  return py::str(s.value);
}

}  // namespace

void register_settings(py::module_& m) {
  m.def(
      "settings",
      [] {
        py::dict out;
        for (const auto& s : ts::describe_settings()) out[py::str(s.key)] = typed(s);
        return out;
      },
      "The settings in effect: defaults, then TENSORSTREAM_* variables, then configure().");
  m.def(
      "describe_settings",
      [] {
        py::list out;
        for (const auto& s : ts::describe_settings())
          out.append(py::dict(py::arg("key") = s.key, py::arg("env") = s.env, py::arg("value") = typed(s),
                              py::arg("origin") = s.origin));
        return out;
      },
      "Every setting: keyword, variable, effective value and where it came from.");
  m.def("configure", &ts::configure, py::arg("values"), py::arg("replace") = false,
        "Override settings by keyword (text values; None drops an override).");
  m.def("setting_overrides", &ts::overrides, "The overrides configure() holds now.");
  m.def("runtime_info", [] {
    const ts::RuntimeInfo r = ts::runtime_info();
    return py::dict(py::arg("workers") = r.workers, py::arg("threads_started") = r.threads_started,
                    py::arg("jobs") = r.jobs, py::arg("rings_made") = r.rings_made, py::arg("rings_kept") = r.rings_kept,
                    py::arg("pid") = r.pid);
  });
  m.def(
      "host_pool_info",
      [] {
        const ts::HostPoolInfo i = ts::host_pool_info();
        return py::dict(py::arg("blocks_made") = i.blocks_made, py::arg("blocks_freed") = i.blocks_freed,
                        py::arg("takes") = i.takes, py::arg("in_use_bytes") = i.in_use_bytes,
                        py::arg("idle_bytes") = i.idle_bytes, py::arg("limit_bytes") = i.limit_bytes,
                        py::arg("idle_seconds") = i.idle_seconds);
      },
      "The process's pool of ring slots (pinned memory on CUDA): blocks made, freed, in use, idle.");
  m.def("release_pinned_memory", &ts::release_idle_host_blocks, py::call_guard<release_gil>(),
        "Free every idle ring slot the process keeps; returns the bytes freed.");
  m.def("shutdown_runtime", &ts::shutdown_runtime, py::arg("wait_s") = 2.0,
        py::call_guard<release_gil>(),
        "Stop the runtime's workers (idle ones at once); a later load starts new ones.");
}

}  // namespace tsb
