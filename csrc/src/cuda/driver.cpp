#include "tensorstream/cuda/driver.hpp"

#include <dlfcn.h>

#include <mutex>

#include "tensorstream/settings.hpp"

namespace ts::cuda {

namespace {

struct Loaded {
  Driver table{};
  std::string error;  // empty: the table is usable
};

// The library to open: libcuda.so.1, or TENSORSTREAM_CUDA_LIBRARY (tests point it elsewhere).
std::string library_name() { return settings().cuda_library; }

template <typename F>
bool bind(void* lib, const char* symbol, F& slot, std::string& error) {
  void* p = dlsym(lib, symbol);
  if (!p) {
    error = "the CUDA driver has no " + std::string(symbol) + " (a driver too old for this build)";
    return false;
  }
  slot = reinterpret_cast<F>(p);
  return true;
}

bool bind_all(void* lib, Driver& d, std::string& e) {
  return bind(lib, "cuInit", d.Init, e) && bind(lib, "cuDriverGetVersion", d.DriverGetVersion, e) &&
         bind(lib, "cuGetErrorString", d.GetErrorString, e) && bind(lib, "cuGetErrorName", d.GetErrorName, e) &&
         bind(lib, "cuDeviceGet", d.DeviceGet, e) && bind(lib, "cuDeviceGetCount", d.DeviceGetCount, e) &&
         bind(lib, "cuDeviceGetName", d.DeviceGetName, e) &&
         bind(lib, "cuDevicePrimaryCtxRetain", d.DevicePrimaryCtxRetain, e) &&
         bind(lib, "cuDevicePrimaryCtxRelease_v2", d.DevicePrimaryCtxRelease, e) &&
         bind(lib, "cuCtxPushCurrent_v2", d.CtxPushCurrent, e) && bind(lib, "cuCtxPopCurrent_v2", d.CtxPopCurrent, e) &&
         bind(lib, "cuMemHostAlloc", d.MemHostAlloc, e) && bind(lib, "cuMemFreeHost", d.MemFreeHost, e) &&
         bind(lib, "cuStreamCreate", d.StreamCreate, e) && bind(lib, "cuStreamDestroy_v2", d.StreamDestroy, e) &&
         bind(lib, "cuStreamSynchronize", d.StreamSynchronize, e) && bind(lib, "cuEventCreate", d.EventCreate, e) &&
         bind(lib, "cuEventDestroy_v2", d.EventDestroy, e) && bind(lib, "cuEventRecord", d.EventRecord, e) &&
         bind(lib, "cuEventQuery", d.EventQuery, e) && bind(lib, "cuEventSynchronize", d.EventSynchronize, e) &&
         bind(lib, "cuMemcpyHtoDAsync_v2", d.MemcpyHtoDAsync, e) &&
         bind(lib, "cuMemcpyDtoHAsync_v2", d.MemcpyDtoHAsync, e);
}

Loaded load() {
  Loaded out;
  const std::string name = library_name();
  void* lib = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);  // kept open for the process's life
  if (!lib) {
    const char* why = dlerror();
    out.error = "the CUDA driver library " + name + " could not be loaded (" + (why ? why : "unknown reason") +
                "): no NVIDIA driver is installed or visible here";
    return out;
  }
  if (!bind_all(lib, out.table, out.error)) return out;
  CUresult rc = out.table.Init(0);
  if (rc != kSuccess) {
    const char* text = nullptr;
    if (out.table.GetErrorString(rc, &text) != kSuccess) text = nullptr;
    out.error = "cuInit failed (" + std::to_string(rc) + (text ? std::string(": ") + text : std::string()) + ")";
    if (rc == kErrorNoDevice) out.error += ": the driver sees no CUDA device";
  }
  return out;
}

const Loaded& loaded() {
  static std::once_flag once;
  static Loaded* state = nullptr;  // never freed: other static destructors may still use the driver
  std::call_once(once, [] { state = new Loaded(load()); });
  return *state;
}

}  // namespace

const Driver& driver() {
  const Loaded& l = loaded();
  if (!l.error.empty()) throw CudaUnavailableError(0, "CUDA is unavailable: " + l.error);
  return l.table;
}

bool available(std::string* why) {
  const Loaded& l = loaded();
  if (why) *why = l.error;
  return l.error.empty();
}

std::string describe(CUresult code) {
  const Loaded& l = loaded();
  if (!l.error.empty()) return "CUDA error " + std::to_string(code);
  const char* name = nullptr;
  const char* text = nullptr;
  if (l.table.GetErrorName(code, &name) != kSuccess) name = nullptr;
  if (l.table.GetErrorString(code, &text) != kSuccess) text = nullptr;
  std::string out = name ? name : "CUDA error " + std::to_string(code);
  if (text) out += std::string(": ") + text;
  return out;
}

void check(CUresult code, const char* what) {
  if (code != kSuccess) throw CudaError(code, std::string(what) + " failed: " + describe(code));
}

DriverInfo driver_info() {
  DriverInfo info;
  info.available = available(&info.error);
  if (!info.available) return info;
  const Driver& d = driver();
  if (d.DriverGetVersion(&info.driver_version) != kSuccess) info.driver_version = 0;
  if (d.DeviceGetCount(&info.devices) != kSuccess) info.devices = 0;
  return info;
}

PrimaryContext::PrimaryContext(int ordinal) : ordinal_(ordinal) {
  const Driver& d = driver();
  int count = 0;
  check(d.DeviceGetCount(&count), "cuDeviceGetCount");
  if (ordinal < 0 || ordinal >= count)
    throw CudaUnavailableError(kErrorInvalidDevice, "CUDA is unavailable: there is no device cuda:" +
                                                        std::to_string(ordinal) + " (this machine has " +
                                                        std::to_string(count) + ")");
  check(d.DeviceGet(&dev_, ordinal), "cuDeviceGet");
  char name[256] = {};
  if (d.DeviceGetName(name, sizeof(name) - 1, dev_) == kSuccess) name_ = name;
  check(d.DevicePrimaryCtxRetain(&ctx_, dev_), "cuDevicePrimaryCtxRetain");
}

PrimaryContext::~PrimaryContext() {
  if (ctx_) driver().DevicePrimaryCtxRelease(dev_);
}

ScopedContext::ScopedContext(const PrimaryContext& ctx) {
  check(driver().CtxPushCurrent(ctx.get()), "cuCtxPushCurrent");
}

ScopedContext::~ScopedContext() {
  CUcontext popped = nullptr;
  driver().CtxPopCurrent(&popped);
}

}  // namespace ts::cuda
