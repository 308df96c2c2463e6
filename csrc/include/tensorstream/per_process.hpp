// One object per process, for what a process keeps (worker threads, kept connections): made on
// first use and made again in a child of fork(), which never touches the parent's (its threads,
// sockets and rings are the parent's). An object handed over or left behind is never destroyed
// here: threads or handles may still refer to it.
#pragma once
#include <pthread.h>
#include <unistd.h>

#include <mutex>
#include <new>

namespace ts {

template <class T>
class PerProcess {
 public:
  // This process's object (made on first use).
  static T& get() {
    static const bool registered = pthread_atfork(nullptr, nullptr, [] {
      mu_ = new (mu_) std::mutex;  // whatever a parent thread held, the child's lock is free
      obj_ = nullptr;              // the parent's object is left alone
    }) == 0;
    (void)registered;
    std::lock_guard<std::mutex> lock(*mu_);
    if (!obj_ || pid_ != ::getpid()) {
      obj_ = new T;
      pid_ = ::getpid();
    }
    return *obj_;
  }
  // Hands the current object over (null when there is none, or when it is a parent's); the next
  // get() makes a new one.
  static T* release() {
    std::lock_guard<std::mutex> lock(*mu_);
    T* p = pid_ == ::getpid() ? obj_ : nullptr;
    obj_ = nullptr;
    return p;
  }

 private:
  static inline std::mutex* mu_ = new std::mutex;  // never destroyed: used until the very end
  static inline T* obj_ = nullptr;
  static inline pid_t pid_ = 0;
};

}  // namespace ts
