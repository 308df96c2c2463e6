// The CUDA driver API, loaded at run time from libcuda.so.1 (never linked, no toolkit needed to
// build): the few types and constants the core uses, a table of entry points, the device's
// primary context (the one torch uses) and the errors of this layer.
#pragma once
#include <cstddef>
#include <stdexcept>
#include <string>

namespace ts::cuda {

// The driver's types, as cuda.h declares them (handles are opaque pointers).
using CUresult = int;
using CUdevice = int;
using CUdeviceptr = unsigned long long;
struct CUctx_st;
struct CUstream_st;
struct CUevent_st;
using CUcontext = CUctx_st*;
using CUstream = CUstream_st*;
using CUevent = CUevent_st*;

inline constexpr CUresult kSuccess = 0;             // CUDA_SUCCESS
inline constexpr CUresult kErrorNoDevice = 100;     // CUDA_ERROR_NO_DEVICE
inline constexpr CUresult kErrorInvalidDevice = 101;  // CUDA_ERROR_INVALID_DEVICE
inline constexpr CUresult kErrorNotReady = 600;     // CUDA_ERROR_NOT_READY
inline constexpr unsigned kMemHostAllocPortable = 0x01;  // CU_MEMHOSTALLOC_PORTABLE
inline constexpr unsigned kStreamNonBlocking = 0x1;      // CU_STREAM_NON_BLOCKING
inline constexpr unsigned kEventBlockingSync = 0x1;      // CU_EVENT_BLOCKING_SYNC
inline constexpr unsigned kEventDisableTiming = 0x2;     // CU_EVENT_DISABLE_TIMING

// Entry points, filled with dlsym from the versioned names the driver exports.
struct Driver {
  CUresult (*Init)(unsigned flags);
  CUresult (*DriverGetVersion)(int* version);
  CUresult (*GetErrorString)(CUresult error, const char** str);
  CUresult (*GetErrorName)(CUresult error, const char** str);
  CUresult (*DeviceGet)(CUdevice* device, int ordinal);
  CUresult (*DeviceGetCount)(int* count);
  CUresult (*DeviceGetName)(char* name, int len, CUdevice dev);
  CUresult (*DevicePrimaryCtxRetain)(CUcontext* ctx, CUdevice dev);
  CUresult (*DevicePrimaryCtxRelease)(CUdevice dev);
  CUresult (*CtxPushCurrent)(CUcontext ctx);
  CUresult (*CtxPopCurrent)(CUcontext* ctx);
  CUresult (*MemHostAlloc)(void** p, size_t bytes, unsigned flags);
  CUresult (*MemFreeHost)(void* p);
  CUresult (*StreamCreate)(CUstream* stream, unsigned flags);
  CUresult (*StreamDestroy)(CUstream stream);
  CUresult (*StreamSynchronize)(CUstream stream);
  CUresult (*EventCreate)(CUevent* event, unsigned flags);
  CUresult (*EventDestroy)(CUevent event);
  CUresult (*EventRecord)(CUevent event, CUstream stream);
  CUresult (*EventQuery)(CUevent event);
  CUresult (*EventSynchronize)(CUevent event);
  CUresult (*MemcpyHtoDAsync)(CUdeviceptr dst, const void* src, size_t bytes, CUstream stream);
  CUresult (*MemcpyDtoHAsync)(void* dst, CUdeviceptr src, size_t bytes, CUstream stream);
};

// A failed driver call: `code` is the CUresult (0 when the failure is not a driver result).
class CudaError : public std::runtime_error {
 public:
  CudaError(int code, const std::string& msg) : std::runtime_error(msg), code_(code) {}
  int code() const noexcept { return code_; }

 private:
  int code_;
};

// CUDA cannot be used here at all: no libcuda.so.1, a driver too old for an entry point,
// cuInit failing, or no such device. The message says which.
class CudaUnavailableError : public CudaError {
 public:
  using CudaError::CudaError;
};

// Loads the driver and runs cuInit(0) once per process; throws CudaUnavailableError naming why.
const Driver& driver();
// The same without throwing: whether CUDA can be used, and if not, why.
bool available(std::string* why);
// "CUDA_ERROR_X: description" for a result code (the number alone if the driver is absent).
std::string describe(CUresult code);
// Throws CudaError("<what> failed: <describe(code)>") unless code is kSuccess.
void check(CUresult code, const char* what);

// Driver facts for tensorstream's diagnostics; `available` false leaves the rest empty.
struct DriverInfo {
  bool available = false;
  std::string error;
  int driver_version = 0;  // e.g. 13000 for 13.0
  int devices = 0;
};
DriverInfo driver_info();

// The primary context of one device, retained for the object's lifetime (torch works in it too).
class PrimaryContext {
 public:
  // Throws CudaUnavailableError for a missing device, naming how many there are.
  explicit PrimaryContext(int ordinal);
  ~PrimaryContext();
  PrimaryContext(const PrimaryContext&) = delete;
  PrimaryContext& operator=(const PrimaryContext&) = delete;
  int ordinal() const { return ordinal_; }
  CUcontext get() const { return ctx_; }
  const std::string& device_name() const { return name_; }

 private:
  int ordinal_;
  CUdevice dev_ = 0;
  CUcontext ctx_ = nullptr;
  std::string name_;
};

// Makes a context current on this thread for a scope (push / pop).
class ScopedContext {
 public:
  explicit ScopedContext(const PrimaryContext& ctx);
  ~ScopedContext();
  ScopedContext(const ScopedContext&) = delete;
  ScopedContext& operator=(const ScopedContext&) = delete;
};

}  // namespace ts::cuda
