"""The PNG unfiltering kernel of `codecs.png`, compiled by numba (cached on disk next to this file).

In a module of its own so that importing `codecs` does not import numba: `codecs.png` imports it on
the first PNG it decodes, or when a process about to fork workers asks for it (`png.load_kernel`).
"""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(inline="always")
def _paeth(a, b, c):
    """The Paeth predictor, branch-free (mispredicted branches cost more than the arithmetic)."""
    pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
    p = c + (b - c) * np.int32(pb <= pc)
    return p + (a - p) * (np.int32(pa <= pb) & np.int32(pa <= pc))


@numba.njit(nogil=True, cache=True, boundscheck=False)
def unfilter_rows(src, dst, stride, bpp, top):  # pragma: no cover - compiled; tested through callers
    """Reverse the PNG row filters of the rows of `src` (rows of `stride` bytes, filter byte first)
    down to row `top + dst.shape[0]`, only the `dst.shape[1]` leftmost bytes of each; rows from
    `top` on land in `dst`, the rows above pass through a two-row buffer (each row needs only the
    one above it). Returns the index of the first row with an unknown filter type, or -1."""
    n = dst.shape[1]
    zero = np.zeros(n, np.uint8)
    above = np.empty((2, n), np.uint8)
    for r in range(top + dst.shape[0]):
        kind = src[r * stride]
        s = src[r * stride + 1:r * stride + 1 + n]
        d = dst[r - top] if r >= top else above[r & 1]
        if r == 0:
            u = zero
        elif r > top:
            u = dst[r - 1 - top]
        else:
            u = above[(r - 1) & 1]
        if kind == 0:
            for i in range(n):
                d[i] = s[i]
        elif kind == 2:
            for i in range(n):
                d[i] = np.uint8(s[i] + u[i])
        elif kind == 1 or kind == 3 or (kind == 4 and bpp != 3):
            # one channel at a time: the running value stays in a register
            for ch in range(bpp):
                a, c = np.int32(0), np.int32(0)
                for i in range(ch, n, bpp):
                    b = np.int32(u[i])
                    if kind == 1:
                        a = (np.int32(s[i]) + a) & 255
                    elif kind == 3:
                        a = (np.int32(s[i]) + ((a + b) >> 1)) & 255
                    else:
                        a = (np.int32(s[i]) + _paeth(a, b, c)) & 255
                    d[i] = a
                    c = b
        elif kind == 4:
            # RGB Paeth, the common slow case: three independent dependency chains side by side
            a0, a1, a2 = np.int32(0), np.int32(0), np.int32(0)
            c0, c1, c2 = np.int32(0), np.int32(0), np.int32(0)
            for i in range(0, n, 3):
                b0, b1, b2 = np.int32(u[i]), np.int32(u[i + 1]), np.int32(u[i + 2])
                a0 = (np.int32(s[i]) + _paeth(a0, b0, c0)) & 255
                a1 = (np.int32(s[i + 1]) + _paeth(a1, b1, c1)) & 255
                a2 = (np.int32(s[i + 2]) + _paeth(a2, b2, c2)) & 255
                d[i], d[i + 1], d[i + 2] = a0, a1, a2
                c0, c1, c2 = b0, b1, b2
        else:
            return r
    return -1
