// Environment knobs (env_knobs.h).
#include "common/env_knobs.h"

#include <c10/util/Exception.h>

#include <cerrno>
#include <cstdlib>

namespace lmkan {

int64_t env_int(const char* name, int64_t lo, int64_t hi, int64_t fallback, const char* what,
                const char* hint) {
  const char* env = std::getenv(name);
  if (env == nullptr || *env == '\0') return fallback;
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(env, &end, 10);
  TORCH_CHECK_VALUE(end != env && *end == '\0' && errno == 0 && v >= lo && v <= hi, name,
                    " must be an integer", *what != '\0' ? " " : "", what, " in [", lo, ", ", hi,
                    "]", hint, ", got '", env, "'");
  return static_cast<int64_t>(v);
}

}  // namespace lmkan
