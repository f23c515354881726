"""Memory primitives for the kernels that numba does not offer: unaligned 64-bit loads and stores,
and memcpy.

Byte loops in numba run one byte per iteration (LLVM does not vectorise a loop whose trip count
depends on the data it reads). The scanner, the hashes and the copies read 8 bytes at a time
instead: `load_u64(buf, i)` is the little-endian word at byte i, whatever its alignment, and
`copy_bytes` is LLVM's memcpy (the byte loop it replaces copied 1.2 GB/s, memcpy 9 GB/s).

Like numba's own indexing with bounds checks off, none of these checks its indices: the caller
guarantees `0 <= i` and `i + 8 <= len(buf)` (loads, stores) or that both spans lie inside their
arrays (copies). Arrays must be contiguous uint8.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.cpython.unsafe.numbers import trailing_zeros
from numba.extending import intrinsic

from engine.compiled import kernel

__all__ = ["copy_bytes", "first_byte", "load_prefix", "load_u32", "load_u64", "store_u32", "store_u64",
           "trailing_zeros"]

_I64 = ir.IntType(64)


def _byte_pointer(context: Any, builder: Any, array_type: Any, array: Any, index: Any) -> Any:
    data = context.make_array(array_type)(context, builder, array).data
    return builder.gep(data, [index])


@intrinsic
def load_u64(typingctx: Any, buf: Any, i: Any) -> Any:
    """The 8 bytes buf[i:i + 8] as a little-endian uint64 (an unaligned load)."""
    sig = types.uint64(buf, i)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        ptr = _byte_pointer(context, builder, signature.args[0], args[0], args[1])
        return builder.load(builder.bitcast(ptr, _I64.as_pointer()), align=1)

    return sig, codegen


@intrinsic
def store_u64(typingctx: Any, buf: Any, i: Any, value: Any) -> Any:
    """buf[i:i + 8] = the uint64 `value`, little-endian (an unaligned store)."""
    sig = types.void(buf, i, types.uint64)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        ptr = _byte_pointer(context, builder, signature.args[0], args[0], args[1])
        value = context.cast(builder, args[2], signature.args[2], types.uint64)
        builder.store(value, builder.bitcast(ptr, _I64.as_pointer()), align=1)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _memcpy(typingctx: Any, dst: Any, at: Any, src: Any, start: Any, length: Any) -> Any:
    sig = types.void(dst, at, src, start, length)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        to = _byte_pointer(context, builder, signature.args[0], args[0], args[1])
        frm = _byte_pointer(context, builder, signature.args[2], args[2], args[3])
        count = context.cast(builder, args[4], signature.args[4], types.int64)
        cgutils.raw_memcpy(builder, to, frm, count, 1)
        return context.get_dummy_value()

    return sig, codegen


@kernel(inline=True)
def load_u32(buf, i):  # type: ignore[no-untyped-def]
    """buf[i:i + 4] as a little-endian int64 (byte loads: safe up to the buffer's last byte)."""
    return (np.int64(buf[i]) | (np.int64(buf[i + 1]) << 8) | (np.int64(buf[i + 2]) << 16)
            | (np.int64(buf[i + 3]) << 24))


@kernel(inline=True)
def store_u32(buf, i, value):  # type: ignore[no-untyped-def]
    """buf[i:i + 4] = the low 32 bits of `value`, little-endian."""
    buf[i] = value & 0xFF
    buf[i + 1] = (value >> 8) & 0xFF
    buf[i + 2] = (value >> 16) & 0xFF
    buf[i + 3] = (value >> 24) & 0xFF


@kernel(inline=True)
def copy_bytes(dst, at, src, start, length):  # type: ignore[no-untyped-def]
    """dst[at:at + length] = src[start:start + length] (the spans must not overlap); returns at + length."""
    if length > 0:
        _memcpy(dst, np.int64(at), src, np.int64(start), np.int64(length))
    return at + length


@kernel(inline=True)
def first_byte(marks):  # type: ignore[no-untyped-def]
    """The index (0-7) of the lowest byte of `marks` whose high bit is set; 8 when there is none."""
    if marks == np.uint64(0):
        return np.uint64(8)
    return np.uint64(trailing_zeros(marks)) >> np.uint64(3)


@kernel(inline=True)
def load_prefix(buf, i, n):  # type: ignore[no-untyped-def]
    """The first min(n, 8) bytes of buf[i:i + n] as a little-endian uint64, zero-padded (one load when 8
    bytes fit in the buffer; the bytes past n are masked off)."""
    i = np.uint64(i)
    n = np.uint64(n)
    if n == np.uint64(0):
        return np.uint64(0)
    if i + np.uint64(8) <= np.uint64(len(buf)):
        word = load_u64(buf, i)
        if n >= np.uint64(8):
            return word
        return word & ((np.uint64(1) << (n << np.uint64(3))) - np.uint64(1))
    word = np.uint64(0)
    stop = n if n < np.uint64(8) else np.uint64(8)
    j = np.uint64(0)
    while j < stop:
        word |= np.uint64(buf[i + j]) << (j << np.uint64(3))
        j += np.uint64(1)
    return word
