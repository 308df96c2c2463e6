// The one place where core exceptions become Python exceptions (classes in tensorstream/errors.py).
#include <pybind11/pybind11.h>

#include <stdexcept>

#include "bindings.hpp"
#include "tensorstream/cuda/driver.hpp"
#include "tensorstream/errors.hpp"

namespace py = pybind11;

namespace tsb {

namespace {

py::str text(const std::string& raw) {
  PyObject* s = PyUnicode_DecodeUTF8(raw.data(), static_cast<Py_ssize_t>(raw.size()), "backslashreplace");
  if (!s) throw py::error_already_set();
  return py::reinterpret_steal<py::str>(s);
}

py::object optional_text(const std::string& raw) { return raw.empty() ? py::object(py::none()) : text(raw); }

void raise(const char* cls_name, py::tuple args, py::dict kwargs) {
  py::object cls = py::module_::import("tensorstream.errors").attr(cls_name);
  py::object inst = cls(*args, **kwargs);
  PyErr_SetObject(cls.ptr(), inst.ptr());
}

py::object cuda_code(const ts::cuda::CudaError& e) {
  return e.code() ? py::object(py::int_(e.code())) : py::object(py::none());
}

void translate(std::exception_ptr p) {
  try {
    if (p) std::rethrow_exception(p);
  } catch (const ts::FormatError& e) {
    raise("FormatError", py::make_tuple(text(e.what())),
          py::dict(py::arg("tensor") = optional_text(e.tensor()), py::arg("field") = optional_text(e.field())));
  } catch (const ts::HashMismatchError& e) {
    raise("HashMismatchError", py::make_tuple(text(e.what())), py::dict(py::arg("tensor") = optional_text(e.tensor())));
  } catch (const ts::NetworkError& e) {
    py::object status = e.status() ? py::object(py::int_(e.status())) : py::object(py::none());
    const char* cls = e.status() == 401 || e.status() == 403 ? "AuthenticationError"
                      : e.status() == 404                     ? "NotFoundError"
                                                              : "NetworkError";
    raise(cls, py::make_tuple(text(e.what())),
          py::dict(py::arg("url") = text(e.url()), py::arg("status") = status, py::arg("attempts") = e.attempts()));
  } catch (const ts::KeyRequiredError& e) {
    raise("KeyRequiredError", py::make_tuple(text(e.what())), py::dict());
  } catch (const ts::CryptographyError& e) {
    raise("CryptographyError", py::make_tuple(text(e.what())), py::dict(py::arg("tensor") = optional_text(e.tensor())));
  } catch (const ts::Cancelled& e) {
    raise("LoadCancelled", py::make_tuple(text(e.what())), py::dict());
  } catch (const ts::IoError& e) {
    py::tuple args = e.path().empty() ? py::tuple(py::make_tuple(e.code(), text(e.message())))
                                      : py::tuple(py::make_tuple(e.code(), text(e.message()), text(e.path())));
    PyErr_SetObject(PyExc_OSError, args.ptr());
  } catch (const ts::cuda::CudaUnavailableError& e) {
    raise("CudaUnavailableError", py::make_tuple(text(e.what())), py::dict(py::arg("code") = cuda_code(e)));
  } catch (const ts::cuda::CudaError& e) {
    raise("CudaError", py::make_tuple(text(e.what())), py::dict(py::arg("code") = cuda_code(e)));
  } catch (const std::length_error& e) {
    PyErr_SetString(PyExc_ValueError, e.what());
  }
}

}  // namespace

void register_errors(py::module_& m) { py::register_exception_translator(&translate); }

}  // namespace tsb
