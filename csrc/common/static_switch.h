// Compile-time switches: a runtime value from a fixed set becomes a template argument, in one
// place instead of hand-written if/else chains at every launch.
//
//   switch_value<1, 2, 4>(k, [&](auto k_c) { launch<decltype(k_c)::value>(args); });
//   const auto fn = switch_value<4, 8, 16>(tile, [](auto tile_c) {
//     return &kernel<decltype(tile_c)::value>;
//   });
//
// (k_c is a std::integral_constant; decltype(k_c)::value is a constant expression.)
//
// The body is instantiated once per listed value and its result returned. A value outside the
// list means the caller skipped a check: it raises instead of running another variant.
#pragma once
#include <type_traits>
#include <utility>

#include <c10/util/Exception.h>

namespace lmkan {

template <int kFirst, int... kRest, typename Body>
auto switch_value(int value, Body&& body) {
  if (value == kFirst) return body(std::integral_constant<int, kFirst>{});
  if constexpr (sizeof...(kRest) > 0) {
    return switch_value<kRest...>(value, std::forward<Body>(body));
  } else {
    TORCH_CHECK(false, "lmkan: no compiled variant for ", value, " (internal error)");
    return body(std::integral_constant<int, kFirst>{});  // not reached: TORCH_CHECK throws
  }
}

}  // namespace lmkan
