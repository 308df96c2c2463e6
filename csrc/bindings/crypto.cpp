// Keys in and out of the core: derive_key(), (Device)Loader.set_decryption(), Writer.set_encryption().
// Secret bytes are copied straight from the Python bytes object and wiped after use here.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <optional>
#include <string>

#include "bindings.hpp"
#include "nogil.hpp"
#include "tensorstream/crypto.hpp"
#include "tensorstream/device/device_loader.hpp"
#include "tensorstream/loader.hpp"
#include "tensorstream/writer.hpp"

namespace py = pybind11;

namespace tsb {

namespace {

// A std::string copy of secret bytes that is wiped when it goes away.
struct SecretString {
  std::string s;
  explicit SecretString(const py::bytes& b) {
    char* p = nullptr;
    Py_ssize_t n = 0;
    if (PyBytes_AsStringAndSize(b.ptr(), &p, &n) != 0) throw py::error_already_set();
    s.assign(p, static_cast<size_t>(n));
  }
  ~SecretString() { ts::crypto::wipe(s.data(), s.size()); }
};

ts::crypto::SecretKey key_from(const py::bytes& b) {
  SecretString k(b);
  return ts::crypto::SecretKey(k.s.data(), k.s.size());
}

ts::crypto::PwHash pwhash_from(const py::bytes& salt, uint64_t opslimit, uint64_t memlimit) {
  std::string raw(salt);
  if (raw.size() != ts::crypto::kSaltBytes)
    throw std::invalid_argument("a salt is " + std::to_string(ts::crypto::kSaltBytes) + " bytes, not " +
                                std::to_string(raw.size()));
  ts::crypto::PwHash p;
  p.opslimit = opslimit;
  p.memlimit = memlimit;
  std::memcpy(p.salt.data(), raw.data(), raw.size());
  ts::crypto::check_pwhash(p);
  return p;
}

// Loader.set_decryption / DeviceLoader.set_decryption.
template <typename L>
void add_set_decryption(py::class_<L> cls) {
  cls.def(
      "set_decryption",
      [](L& self, std::optional<py::bytes> key, std::optional<py::bytes> passphrase) {
        if (key && passphrase) throw std::invalid_argument("give a key or a passphrase, not both");
        if (key) self.keys().set_key(SecretString(*key).s);
        else if (passphrase) self.keys().set_passphrase(SecretString(*passphrase).s);
        else self.keys().clear();
      },
      py::arg("key") = py::none(), py::arg("passphrase") = py::none(),
      "Key (32 bytes) or passphrase for encrypted files; neither: forget them.");
}

}  // namespace

void register_crypto(py::module_& m) {
  m.def(
      "derive_key",
      [](const py::bytes& passphrase, const py::bytes& salt, uint64_t opslimit, uint64_t memlimit) {
        SecretString pass(passphrase);
        auto params = pwhash_from(salt, opslimit, memlimit);
        std::optional<ts::crypto::SecretKey> key;
        {
          release_gil nogil;
          key.emplace(ts::crypto::derive_key(pass.s, params));
        }
        return py::bytes(reinterpret_cast<const char*>(key->data()), ts::crypto::kKeyBytes);
      },
      py::arg("passphrase"), py::arg("salt"), py::arg("opslimit"), py::arg("memlimit"),
      "Argon2id v1.3 key (32 bytes) from a passphrase, as tensorizer's EncryptionParams.from_string derives it.");

  add_set_decryption(py::reinterpret_borrow<py::class_<ts::Loader>>(m.attr("Loader")));
  add_set_decryption(py::reinterpret_borrow<py::class_<ts::DeviceLoader>>(m.attr("DeviceLoader")));

  auto writer = py::reinterpret_borrow<py::class_<ts::Writer>>(m.attr("Writer"));
  writer.def(
      "set_encryption",
      [](ts::Writer& self, const py::bytes& key, uint64_t opslimit, uint64_t memlimit, const py::bytes& salt) {
        std::optional<ts::crypto::PwHash> kdf;
        if (py::len(salt)) kdf = pwhash_from(salt, opslimit, memlimit);
        self.set_encryption(key_from(key), kdf);
      },
      py::arg("key"), py::arg("opslimit") = 0, py::arg("memlimit") = 0, py::arg("salt") = py::bytes(),
      "Encrypt every record written from now on; salt and limits are stored for passphrase keys.");
}

}  // namespace tsb
