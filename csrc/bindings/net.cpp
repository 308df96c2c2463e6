// HTTP(S) and S3: the source, the request signer and the multipart writer. Absent members when
// the core was built without libcurl (`_native.HttpSource` is then None).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings.hpp"
#include "interruptible.hpp"
#ifdef TENSORSTREAM_WITH_CURL
#include "tensorstream/format/tensorizer.hpp"
#include "tensorstream/net/http.hpp"
#include "tensorstream/net/s3.hpp"
#include "tensorstream/net/sigv4.hpp"
#include "tensorstream/writer.hpp"
#endif

namespace py = pybind11;

namespace tsb {

#ifdef TENSORSTREAM_WITH_CURL
namespace {

ts::HttpOptions options(std::shared_ptr<const ts::SigV4Signer> signer, std::string display, std::string ca_bundle,
                        std::string ca_path, bool insecure) {
  ts::HttpOptions o = ts::HttpOptions::from_env();
  o.signer = std::move(signer);
  o.display = std::move(display);
  o.ca_bundle = std::move(ca_bundle);
  o.ca_path = std::move(ca_path);
  o.insecure = insecure;
  return o;
}

}  // namespace

void register_net(py::module_& m) {
  py::class_<ts::SigV4Signer, std::shared_ptr<ts::SigV4Signer>>(m, "SigV4Signer")
      .def(py::init([](std::string key_id, std::string secret, std::string token, std::string region,
                       std::string service) {
             return std::make_shared<ts::SigV4Signer>(
                 ts::AwsCredentials{std::move(key_id), std::move(secret), std::move(token)}, std::move(region),
                 std::move(service));
           }),
           py::arg("access_key_id"), py::arg("secret_access_key"), py::arg("session_token") = "",
           py::arg("region") = "us-east-1", py::arg("service") = "s3")
      .def_property_readonly("access_key_id", &ts::SigV4Signer::access_key_id)
      .def_property_readonly("region", &ts::SigV4Signer::region)
      .def(
          "set_credentials",
          [](const ts::SigV4Signer& s, std::string key_id, std::string secret, std::string token) {
            s.set_credentials(ts::AwsCredentials{std::move(key_id), std::move(secret), std::move(token)});
          },
          py::arg("access_key_id"), py::arg("secret_access_key"), py::arg("session_token") = "",
          "Sign every later request with these credentials (re-resolved temporary ones).")
      .def(
          "sign",
          [](const ts::SigV4Signer& s, const std::string& method, const std::string& url,
             const std::vector<ts::Header>& headers, const std::string& payload_sha256_hex, int64_t when) {
            auto t = s.sign_traced(method, url, headers, payload_sha256_hex, static_cast<std::time_t>(when));
            py::dict d;
            d["headers"] = t.added;
            d["canonical_request"] = t.canonical_request;
            d["string_to_sign"] = t.string_to_sign;
            d["signature"] = t.signature;
            return d;
          },
          py::arg("method"), py::arg("url"), py::arg("headers"), py::arg("payload_sha256_hex"), py::arg("when"),
          "The headers that sign one request, with the canonical request and string to sign.")
      .def("__repr__", [](const ts::SigV4Signer& s) {
        return "<SigV4Signer key " + s.access_key_id() + " region " + s.region() + ">";
      });

  py::class_<ts::HttpSource, ts::Source, std::shared_ptr<ts::HttpSource>>(m, "HttpSource")
      .def(py::init([](std::string url, std::shared_ptr<const ts::SigV4Signer> signer, std::string display,
                       std::string ca_bundle, std::string ca_path, bool insecure) {
             auto o = options(std::move(signer), std::move(display), std::move(ca_bundle), std::move(ca_path), insecure);
             ts::CancelToken stop;  // Ctrl-C stops the opening as it stops a load
             return call_interruptible([&] { return std::make_shared<ts::HttpSource>(url, o, &stop); },
                                       [&] { stop.interrupt(); });
           }),
           py::arg("url"), py::kw_only(), py::arg("signer") = nullptr, py::arg("display") = "",
           py::arg("ca_bundle") = "", py::arg("ca_path") = "", py::arg("insecure") = false)
      .def_property_readonly("etag", &ts::HttpSource::etag, "The ETag the size probe's reply gave (\"\" if none).")
      .def_property_readonly("last_modified", &ts::HttpSource::last_modified,
                             "The Last-Modified the size probe's reply gave (\"\" if none).");

  m.def(
      "host_concurrency",
      [] {
        py::list out;
        for (const auto& h : ts::host_concurrency()) {
          py::dict d;
          d["host"] = h.host;
          d["connections"] = h.connections;
          d["settled"] = h.settled;
          d["fixed"] = h.fixed;
          d["measured"] = h.measured;
          out.append(d);
        }
        return out;
      },
      "Range requests in flight per host: the level in use, whether the ramp settled, and the "
      "bytes/s measured at each level tried.");
  m.def("close_idle_connections", &ts::close_idle_connections, py::call_guard<release_gil>(),
        "Close the connections kept for later loads; returns the connection sets made so far.");

  m.def(
      "multipart_writer",
      [](std::string url, std::shared_ptr<const ts::SigV4Signer> signer, std::string display, std::string ca_bundle,
         std::string ca_path, bool insecure, size_t part_bytes, unsigned parallel, unsigned threads) {
        auto o = options(std::move(signer), std::move(display), std::move(ca_bundle), std::move(ca_path), insecure);
        release_gil nogil;
        auto upload = std::make_unique<ts::MultipartUpload>(
            std::move(url), std::move(o), ts::tz::kFileHeaderSize + ts::tz::kWriterMetadataLen, part_bytes, parallel);
        return std::make_unique<ts::Writer>(std::move(upload), threads);
      },
      py::arg("url"), py::kw_only(), py::arg("signer") = nullptr, py::arg("display") = "", py::arg("ca_bundle") = "",
      py::arg("ca_path") = "", py::arg("insecure") = false, py::arg("part_bytes") = 16u << 20,
      py::arg("parallel") = 8, py::arg("threads") = 0,
      "A Writer that streams a .tensors file to an S3 object with a multipart upload.");

  py::class_<ts::MultipartUpload, std::shared_ptr<ts::MultipartUpload>>(m, "MultipartUpload")
      .def(py::init([](std::string url, std::shared_ptr<const ts::SigV4Signer> signer, std::string display,
                       std::string ca_bundle, std::string ca_path, bool insecure, size_t part_bytes,
                       unsigned parallel) {
             auto o = options(std::move(signer), std::move(display), std::move(ca_bundle), std::move(ca_path), insecure);
             release_gil nogil;
             return std::make_shared<ts::MultipartUpload>(std::move(url), std::move(o), 0, part_bytes, parallel);
           }),
           py::arg("url"), py::kw_only(), py::arg("signer") = nullptr, py::arg("display") = "",
           py::arg("ca_bundle") = "", py::arg("ca_path") = "", py::arg("insecure") = false,
           py::arg("part_bytes") = 16u << 20, py::arg("parallel") = 8,
           "An S3 object written in order: append() bytes, then finish() completes it or abort() drops it.")
      .def(
          "append",
          [](ts::MultipartUpload& u, py::buffer b) {
            py::buffer_info info = b.request();
            release_gil nogil;
            u.append(static_cast<const uint8_t*>(info.ptr), static_cast<size_t>(info.size * info.itemsize));
          },
          py::arg("data"))
      .def(
          "finish", [](ts::MultipartUpload& u) { u.finish(nullptr, 0); }, py::call_guard<release_gil>())
      .def("abort", &ts::MultipartUpload::abort, py::call_guard<release_gil>())
      .def_property_readonly("bytes_sent", &ts::MultipartUpload::bytes_sent)
      .def_property_readonly("parts_sent", &ts::MultipartUpload::parts_sent);
}
#else
void register_net(py::module_&) {}
#endif

}  // namespace tsb
