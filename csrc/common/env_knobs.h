// Environment variables that the host code reads (README, "Performance": the measurement
// knobs), parsed in one place so that every one of them rejects a malformed value the same
// way instead of ignoring it.
#pragma once
#include <cstdint>

namespace lmkan {

// The integer value of environment variable `name`, or `fallback` where it is unset or empty.
// A value that is not an integer in [lo, hi] raises ValueError: "<name> must be an integer
// <what> in [lo, hi]<hint>, got '<value>'" (`what` e.g. "number of KiB", `hint` e.g. " (e.g.
// 99 or 163)"; both may be empty). Reads the environment at every call: callers that read a
// knob once per process keep the value themselves.
int64_t env_int(const char* name, int64_t lo, int64_t hi, int64_t fallback, const char* what = "",
                const char* hint = "");

}  // namespace lmkan
