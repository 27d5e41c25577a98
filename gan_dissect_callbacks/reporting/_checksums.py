"""Compiled CRC-32C checksums for TensorBoard's event files (optional: they need numba).

Every record of an event file carries two masked CRC-32C checksums. Without TensorFlow,
TensorBoard's writer computes them in pure Python, byte by byte, at about 10 MB/s. That is
most of the time our views take to write their images: a dissection's galleries and charts
come to about a megabyte. The writer thread also holds the GIL while it does this. When numba
is there (``pip install "gan_dissect_callbacks[fast]"``, and ``GAN_DISSECT_NUMBA`` is not
``0``), :func:`use_compiled_checksums` points TensorBoard's record writer at a compiled
version of the same function. It returns the same numbers (tested against TensorBoard's own), so
the files are byte for byte the same, and the checksums take about 40 times less time. This
applies to every writer of the process, the training's own logger included. Without numba
nothing changes.

Example:
    >>> from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as theirs
    >>> masked_crc32c(b"event"), theirs(b"event")
    (4127943141, 4127943141)
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from gan_dissect_callbacks.functional import _counting

__all__ = ["masked_crc32c", "use_compiled_checksums"]


def _table() -> np.ndarray:
    """The byte table of CRC-32C (Castagnoli, reflected polynomial ``0x82F63B78``)."""
    table = np.zeros(256, dtype=np.uint32)
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table[byte] = crc
    return table


_TABLE = _table()


def _crc32c_kernel(data: Any, table: Any) -> int:
    crc = np.uint32(0xFFFFFFFF)
    for byte in data:
        crc = table[(crc ^ byte) & np.uint32(0xFF)] ^ (crc >> np.uint32(8))
    return int(crc ^ np.uint32(0xFFFFFFFF))


_compiled: list[Any] = []
_lock = threading.RLock()  # held while installing, which compiles under it too


def _crc32c(data: bytes) -> int:
    if not _compiled:
        with _lock:
            if not _compiled:
                numba = _counting._numba()
                assert numba is not None, "call `_counting.available()` first"
                _compiled.append(numba.njit(nogil=True, cache=True)(_crc32c_kernel))
    return int(_compiled[0](np.frombuffer(data, dtype=np.uint8), _TABLE))


def masked_crc32c(data: bytes) -> int:
    """The masked CRC-32C of ``data`` that an event file stores, as TensorBoard computes it."""
    x = _crc32c(data) if _counting.available() else _python_crc32c(data)
    return ((((x >> 15) | (x << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _python_crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = int(_TABLE[(crc ^ byte) & 0xFF]) ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def use_compiled_checksums() -> bool:
    """Let TensorBoard's record writer use the compiled checksum; whether it now does.

    The kernel is compiled and checked against TensorBoard's own function here, on the calling
    thread, so that no failure can happen later in a writer's thread (where it would stop every
    later write). Nothing changes without numba, or when ``GAN_DISSECT_NUMBA=0``, or on a
    TensorBoard whose writer is laid out differently, or if the check fails. Calling it again
    does nothing more.
    """
    if not _counting.available():
        return False
    try:
        from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as theirs
        from tensorboard.summary.writer import record_writer
    except ImportError:  # a TensorBoard laid out otherwise: leave it alone
        return False
    current = getattr(record_writer, "masked_crc32c", None)
    if current is _guarded:
        return True
    if not callable(current):
        return False
    with _lock:
        try:
            probe = bytes(range(256)) * 3
            if masked_crc32c(probe) != theirs(probe):
                return False
        except Exception:  # numba could not compile it here: TensorBoard keeps its own
            return False
        _fallback[:] = [current]
        record_writer.masked_crc32c = _guarded
    return True


_fallback: list[Any] = []


def _guarded(data: bytes) -> int:
    """:func:`masked_crc32c`, or TensorBoard's own function should it ever fail."""
    try:
        return masked_crc32c(data)
    except Exception:
        return int(_fallback[0](data))
