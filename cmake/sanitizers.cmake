# Instrumented builds. Included before any target is defined, so the flags reach the core, the C++
# tests and the Python module alike.
#
#   TENSORSTREAM_SANITIZE="address;undefined"  ASan + UBSan (a Python process then needs the ASan
#                                              runtime in LD_PRELOAD; see scripts/sanitize.sh)
#   TENSORSTREAM_SANITIZE="thread"             ThreadSanitizer
#   TENSORSTREAM_FUZZ=ON                       libFuzzer targets in csrc/fuzz (clang only), with the
#                                              core built for coverage, ASan and UBSan

set(TENSORSTREAM_SANITIZE "" CACHE STRING "Sanitizers to build with: address;undefined, or thread")
option(TENSORSTREAM_FUZZ "Build the libFuzzer targets in csrc/fuzz (needs clang)" OFF)

if(TENSORSTREAM_SANITIZE AND TENSORSTREAM_FUZZ)
  message(FATAL_ERROR "TENSORSTREAM_FUZZ brings its own sanitizers: leave TENSORSTREAM_SANITIZE empty")
endif()

if(TENSORSTREAM_SANITIZE)
  if("thread" IN_LIST TENSORSTREAM_SANITIZE AND "address" IN_LIST TENSORSTREAM_SANITIZE)
    message(FATAL_ERROR "ThreadSanitizer cannot be combined with AddressSanitizer")
  endif()
  list(JOIN TENSORSTREAM_SANITIZE "," _ts_san)
  add_compile_options(-fsanitize=${_ts_san} -fno-omit-frame-pointer -g)
  add_link_options(-fsanitize=${_ts_san})
endif()

if(TENSORSTREAM_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "TENSORSTREAM_FUZZ needs clang (e.g. -DCMAKE_CXX_COMPILER=clang++)")
  endif()
  # UB stops the run (libFuzzer saves the input) instead of printing a report and going on.
  set(TS_FUZZ_FLAGS -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g)
  add_compile_options(${TS_FUZZ_FLAGS} -fsanitize=fuzzer-no-link)
  add_link_options(-fsanitize=address,undefined)
endif()
