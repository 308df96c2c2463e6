// Shared declarations of the binding files. Only csrc/bindings/ includes pybind11.
#pragma once
#include <pybind11/pybind11.h>

namespace tsb {
void register_errors(pybind11::module_& m);
void register_format(pybind11::module_& m);
void register_io(pybind11::module_& m);
void register_net(pybind11::module_& m);  // after register_format and register_io
void register_device(pybind11::module_& m);  // after register_format
void register_crypto(pybind11::module_& m);  // after register_io and register_device: adds methods
void register_digests(pybind11::module_& m);  // after register_io and register_device
void register_settings(pybind11::module_& m);
}  // namespace tsb
