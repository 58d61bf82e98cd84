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

/// What `obj` is, for an error message: its type (and device, for a DLPack producer outside host
/// memory), or a numpy array's dtype (saying so when it is big-endian).
inline std::string describe(nb::handle obj) {
    if (!is_numpy_array(obj)) {
        nb::handle tp = obj.type();
        std::string module = nb::cast<std::string>(tp.attr("__module__")), name = nb::cast<std::string>(tp.attr("__qualname__"));
        std::string what = module == "builtins" ? name : module + "." + name;
        if (nb::hasattr(obj, "__dlpack_device__")) {
            try {
                nb::tuple dev = nb::cast<nb::tuple>(obj.attr("__dlpack_device__")());
                int kind = nb::cast<int>(dev[0]);
                if (kind != nb::device::cpu::value && kind != nb::device::cuda_host::value)
                    what += " in device memory (DLPack device type " + std::to_string(kind) + ")";
            } catch (const nb::python_error&) {  // not a usable DLPack producer: its type says enough
            }
        }
        return what;
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
template <class Array>
std::pair<const int32_t*, int32_t> checked_slots(const RequestTable& t, const Array& a, const char* name = "slots") {
    auto [p, n] = checked<int32_t>(a, name);
    for (int32_t i = 0; i < n; ++i) t.check_slot(p[i]);
    return {p, n};
}

/// `obj` as a read-only host array (numpy, or any DLPack producer: a torch CPU tensor), or a
/// TypeError naming `name` and what to pass instead.
inline AnyArray array_arg(nb::handle obj, const char* name, const char* expected) {
    AnyArray a;
    if (!nb::try_cast<AnyArray>(obj, a, /*convert=*/false))
        throw TypeInputError(std::string(name) + ": expected " + expected + ", got " + describe(obj));
    return a;
}

/// A slot array argument: an int32 array of live slots of `t` (a list gets a TypeError saying so).
inline std::pair<const int32_t*, int32_t> slots_arg(const RequestTable& t, nb::handle obj, const char* name, AnyArray& keep) {
    keep = array_arg(obj, name, "a 1-D int32 numpy array of request slots (a scheduler output, or np.array(..., dtype=np.int32))");
    return checked_slots(t, keep, name);
}

/// Integer values as int32: a list of ints, or a 1-D integer array in host memory (numpy, or any
/// DLPack producer such as a torch CPU tensor). int32 arrays are read in place; other integer
/// dtypes are converted value by value, and a value outside int32 is a ValueError naming it (a
/// checked conversion, never a wrap). Floats and bools are a TypeError.
struct Int32Values {
    const int32_t* data = nullptr;
    int64_t size = 0;
    std::vector<int32_t> converted;  ///< the values, unless read in place
    AnyArray array;                  ///< keeps an array read in place alive
};

inline Int32Values int32_values(nb::handle obj, const char* name) {
    Int32Values v;
    auto out_of_range = [&](int64_t i, const std::string& value) {
        throw InputError(std::string(name) + ": value " + value + " at index " + std::to_string(i) +
                         " is outside the int32 range [-2147483648, 2147483647]");
    };
    AnyArray a;
    if (!nb::try_cast<AnyArray>(obj, a, /*convert=*/false)) {  // one DLPack import, not two
        if (!nb::isinstance<nb::sequence>(obj) || nb::isinstance<nb::str>(obj) || nb::hasattr(obj, "__dlpack__"))
            throw TypeInputError(std::string(name) + ": expected a list of ints or a 1-D integer array in host memory, got " +
                                 describe(obj));
        int64_t i = 0;
        for (nb::handle h : nb::iter(obj)) {
            if (!PyLong_Check(h.ptr()) || PyBool_Check(h.ptr()))
                throw TypeInputError(std::string(name) + ": every value must be an int, got " + describe(h) + " at index " +
                                     std::to_string(i));
            int overflow = 0;
            long long x = PyLong_AsLongLongAndOverflow(h.ptr(), &overflow);
            if (overflow || x < std::numeric_limits<int32_t>::min() || x > std::numeric_limits<int32_t>::max())
                out_of_range(i, nb::str(h).c_str());
            v.converted.push_back(static_cast<int32_t>(x));
            ++i;
        }
        v.data = v.converted.data();
        v.size = static_cast<int64_t>(v.converted.size());
        return v;
    }
    const nb::dlpack::dtype d = a.dtype();
    const auto code = static_cast<nb::dlpack::dtype_code>(d.code);
    if ((code != nb::dlpack::dtype_code::Int && code != nb::dlpack::dtype_code::UInt) || d.lanes != 1 ||
        (d.bits != 8 && d.bits != 16 && d.bits != 32 && d.bits != 64))
        throw TypeInputError(std::string(name) + ": expected integer values, got an array of dtype " + dtype_str(d));
    if (a.ndim() != 1) throw TypeInputError(std::string(name) + ": expected a 1-D array, got " + std::to_string(a.ndim()) + "-D");
    const int64_t n = static_cast<int64_t>(a.shape(0)), stride = n > 1 ? a.stride(0) : 1;
    if (d == nb::dtype<int32_t>() && stride == 1) {  // in place
        v.array = a;
        v.data = static_cast<const int32_t*>(a.data());
        v.size = n;
        return v;
    }
    const char* base = static_cast<const char*>(a.data());
    const int64_t step = stride * static_cast<int64_t>(d.bits / 8);
    v.converted.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
        const char* p = base + i * step;
        int64_t x = 0;
        uint64_t u = 0;
        bool is_unsigned = code == nb::dlpack::dtype_code::UInt;
        switch (d.bits) {
            case 8: is_unsigned ? u = *reinterpret_cast<const uint8_t*>(p) : x = *reinterpret_cast<const int8_t*>(p); break;
            case 16: is_unsigned ? u = *reinterpret_cast<const uint16_t*>(p) : x = *reinterpret_cast<const int16_t*>(p); break;
            case 32: is_unsigned ? u = *reinterpret_cast<const uint32_t*>(p) : x = *reinterpret_cast<const int32_t*>(p); break;
            default: is_unsigned ? u = *reinterpret_cast<const uint64_t*>(p) : x = *reinterpret_cast<const int64_t*>(p); break;
        }
        if (is_unsigned) {
            if (u > static_cast<uint64_t>(std::numeric_limits<int32_t>::max())) out_of_range(i, std::to_string(u));
            x = static_cast<int64_t>(u);
        } else if (x < std::numeric_limits<int32_t>::min() || x > std::numeric_limits<int32_t>::max()) {
            out_of_range(i, std::to_string(x));
        }
        v.converted[static_cast<size_t>(i)] = static_cast<int32_t>(x);
    }
    v.data = v.converted.data();
    v.size = n;
    return v;
}

/// A caller-owned output buffer: writable, in host memory, `ndim` dimensions, int32 (or int64
/// where `allow_int64`), with contiguous rows. Anything else is a TypeError saying what to pass.
/// We write into it and never keep or reallocate it.
struct OutBuffer {
    nb::ndarray<> array;  ///< keeps the buffer alive during the call
    void* data = nullptr;
    bool is_int64 = false;
    int64_t rows = 0, cols = 1;  ///< shape (cols = 1 for 1-D)
    int64_t row_stride = 1;      ///< elements between rows (2-D)
};

inline OutBuffer out_buffer(nb::handle obj, const char* name, size_t ndim, bool allow_int64) {
    const std::string want = std::string(ndim == 2 ? "a 2-D" : "a 1-D") + (allow_int64 ? " int32 or int64" : " int32") +
                             " numpy array or torch tensor in host memory";
    OutBuffer b;
    if (!nb::try_cast<nb::ndarray<>>(obj, b.array, /*convert=*/false)) {
        nb::ndarray<nb::ro> ro;
        if (nb::try_cast<nb::ndarray<nb::ro>>(obj, ro, false))
            throw TypeInputError(std::string(name) + ": the buffer is read-only; pass a writable one (we fill it in place)");
        throw TypeInputError(std::string(name) + ": expected " + want + ", got " + describe(obj));
    }
    const nb::ndarray<>& a = b.array;
    if (a.device_type() != nb::device::cpu::value && a.device_type() != nb::device::cuda_host::value)
        throw TypeInputError(std::string(name) + ": the buffer must be in host memory (DLPack device type " +
                             std::to_string(a.device_type()) + " given): fill a CPU tensor (pinned for a fast copy), "
                             "then copy it with .to(device, non_blocking=True)");
    b.is_int64 = allow_int64 && a.dtype() == nb::dtype<int64_t>();
    if (a.dtype() != nb::dtype<int32_t>() && !b.is_int64)
        throw TypeInputError(std::string(name) + ": expected " + want + ", got dtype " + dtype_str(a.dtype()) +
                             " (no silent conversion)");
    if (a.ndim() != ndim)
        throw TypeInputError(std::string(name) + ": expected " + want + ", got " + std::to_string(a.ndim()) + "-D");
    b.rows = static_cast<int64_t>(a.shape(0));
    if (ndim == 2) {
        b.cols = static_cast<int64_t>(a.shape(1));
        b.row_stride = b.rows > 1 ? a.stride(0) : b.cols;
        if ((b.cols > 1 && a.stride(1) != 1) || b.row_stride < b.cols)
            throw TypeInputError(std::string(name) + ": rows must be contiguous (inner stride 1); use a contiguous buffer");
    } else if (b.rows > 1 && a.stride(0) != 1) {
        throw TypeInputError(std::string(name) + ": the buffer must be contiguous (stride 1)");
    }
    b.data = a.data();
    return b;
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
