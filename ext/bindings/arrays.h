// ext/bindings/arrays.h: arrays across the binding: checked inputs, fresh outputs, zero-copy views.
//
// Arrays coming in are never converted: a wrong dtype, shape or layout raises TypeError naming the
// argument. Arrays going out are either zero-copy read-only views owned by a C++ object, or fresh
// arrays that own their data.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "request_table.h"

namespace tllm::bindings {

namespace nb = nanobind;

template <class T>
using RoView = nb::ndarray<nb::numpy, const T, nb::ndim<1>>;
template <class T>
using OutArray = nb::ndarray<nb::numpy, T, nb::ndim<1>>;
using AnyArray = nb::ndarray<nb::ro, nb::device::cpu>;

/// An array argument as the caller gave it. Overload resolution accepts any object, so that
/// `checked` refuses a wrong one with a one-line TypeError naming the argument, the expected array
/// and what was given (nanobind's own error lists the signatures and cannot say why a big-endian
/// array does not fit).
struct ArrayArg {
    nb::handle obj;
};

template <class T>
const char* dtype_name();
template <>
inline const char* dtype_name<int32_t>() { return "int32"; }
template <>
inline const char* dtype_name<int64_t>() { return "int64"; }

inline std::string dtype_str(nb::dlpack::dtype d) {
    const char* kind = "unknown";
    switch (static_cast<nb::dlpack::dtype_code>(d.code)) {
        case nb::dlpack::dtype_code::Int: kind = "int"; break;
        case nb::dlpack::dtype_code::UInt: kind = "uint"; break;
        case nb::dlpack::dtype_code::Float: kind = "float"; break;
        case nb::dlpack::dtype_code::Bool: return "bool";
        case nb::dlpack::dtype_code::Complex: kind = "complex"; break;
        default: break;
    }
    return std::string(kind) + std::to_string(d.bits);
}

/// What was given instead of an array, for messages: its type, and the reason a numpy array of a
/// fitting dtype is refused (byte order).
inline bool is_numpy_array(nb::handle obj) {
    nb::handle tp = obj.type();
    return nb::cast<std::string>(tp.attr("__module__")) == "numpy" && nb::cast<std::string>(tp.attr("__qualname__")) == "ndarray";
}

inline std::string describe(nb::handle obj) {
    if (!is_numpy_array(obj)) {
        nb::handle tp = obj.type();
        std::string module = nb::cast<std::string>(tp.attr("__module__")), name = nb::cast<std::string>(tp.attr("__qualname__"));
        return module == "builtins" ? name : module + "." + name;
    }
    nb::object dtype = obj.attr("dtype");
    std::string str = nb::cast<std::string>(nb::str(dtype.attr("str")));
    if (!str.empty() && str[0] == '>')
        return "a big-endian numpy array (dtype " + str + "); convert it with .astype(its dtype.newbyteorder('='))";
    return "a numpy array of dtype " + nb::cast<std::string>(nb::str(dtype));
}

/// Borrowed, checked view of a 1-D contiguous array of T (no conversion, no copy).
template <class T>
std::pair<const T*, int32_t> checked(const AnyArray& a, const char* name) {
    if (a.dtype() != nb::dtype<T>())
        throw TypeInputError(std::string(name) + ": expected a numpy array of dtype " + dtype_name<T>() +
                             " (no silent conversion), got " + dtype_str(a.dtype()));
    if (a.ndim() != 1) throw TypeInputError(std::string(name) + ": expected a 1-D array, got " + std::to_string(a.ndim()) + "-D");
    if (a.shape(0) > 1 && a.stride(0) != 1)
        throw TypeInputError(std::string(name) + ": array must be C-contiguous (no silent copies); use np.ascontiguousarray");
    if (a.shape(0) > static_cast<size_t>(std::numeric_limits<int32_t>::max())) throw InputError(std::string(name) + ": too long");
    return {static_cast<const T*>(a.data()), static_cast<int32_t>(a.shape(0))};
}

/// `checked` for an argument that may be any object: TypeError unless it is a CPU array.
template <class T>
std::pair<const T*, int32_t> checked(const ArrayArg& arg, const char* name) {
    AnyArray a;
    if (!nb::try_cast<AnyArray>(arg.obj, a, /*convert=*/false))
        throw TypeInputError(std::string(name) + ": expected an " + dtype_name<T>() + " numpy array, got " + describe(arg.obj));
    return checked<T>(a, name);
}

/// Slots of live requests of `t`.
inline std::pair<const int32_t*, int32_t> checked_slots(const RequestTable& t, const ArrayArg& a, const char* name = "slots") {
    auto [p, n] = checked<int32_t>(a, name);
    for (int32_t i = 0; i < n; ++i) t.check_slot(p[i]);
    return {p, n};
}

/// A fresh numpy array that owns a moved-in vector.
template <class T>
OutArray<T> to_numpy(std::vector<T>&& v) {
    auto* heap = new std::vector<T>(std::move(v));
    nb::capsule owner(heap, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
    return OutArray<T>(heap->data(), {heap->size()}, owner);
}
template <class T>
OutArray<T> to_numpy(const std::vector<T>& v) { return to_numpy(std::vector<T>(v)); }

/// f(slot) for each of the live `slots` of `t`, as a fresh int32 array (the `*_batch` queries).
template <class F>
OutArray<int32_t> per_slot(const RequestTable& t, const ArrayArg& slots, F f) {
    auto [p, n] = checked_slots(t, slots);
    std::vector<int32_t> out(static_cast<size_t>(n));
    for (int32_t i = 0; i < n; ++i) out[static_cast<size_t>(i)] = f(p[i]);
    return to_numpy(std::move(out));
}

/// The sum of f(slot) over the live `slots` of `t` (the `*_sum` queries: no array).
template <class F>
int64_t sum_per_slot(const RequestTable& t, const ArrayArg& slots, F f) {
    auto [p, n] = checked_slots(t, slots);
    int64_t total = 0;
    for (int32_t i = 0; i < n; ++i) total += f(p[i]);
    return total;
}

/// Zero-copy read-only view of `n` entries at `p`, kept alive by `owner`.
template <class T>
RoView<T> view(const T* p, size_t n, nb::handle owner) { return RoView<T>(p, {n}, owner); }

template <class T>
OutArray<T> gather_col(const T* col, const int32_t* slots, int32_t n) {
    std::vector<T> v(static_cast<size_t>(n));
    for (int32_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = col[slots[i]];
    return to_numpy(std::move(v));
}

}  // namespace tllm::bindings

namespace nanobind::detail {
template <>
struct type_caster<tllm::bindings::ArrayArg> {
    NB_TYPE_CASTER(tllm::bindings::ArrayArg, const_name("numpy.ndarray"))
    bool from_python(handle src, uint8_t, cleanup_list*) noexcept {
        value.obj = src;
        return true;
    }
    static handle from_cpp(const tllm::bindings::ArrayArg& a, rv_policy, cleanup_list*) noexcept { return a.obj.inc_ref(); }
};
}  // namespace nanobind::detail
