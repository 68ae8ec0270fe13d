"""Freed heap pages go back to the OS between steps only when there are enough of them to matter."""

import pytest

from rlhfkit.runtime import process


@pytest.mark.parametrize("free, trims", [(process.TRIM_FROM_BYTES - 1, 0), (process.TRIM_FROM_BYTES, 1)])
def test_the_heap_is_trimmed_from_the_threshold_on(monkeypatch, free, trims):
    calls = []
    monkeypatch.setattr(process, "_malloc_trim", lambda pad: calls.append(pad))
    monkeypatch.setattr(process, "_free_heap", lambda: free)
    process.release_freed_memory()
    assert len(calls) == trims


def test_without_a_free_heap_reading_every_call_trims(monkeypatch):
    calls = []
    monkeypatch.setattr(process, "_malloc_trim", lambda pad: calls.append(pad))
    monkeypatch.setattr(process, "_free_heap", None)
    process.release_freed_memory()
    assert calls == [0]


def test_the_free_heap_is_read_where_glibc_has_mallinfo2():
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        pytest.skip("no C library to ask")
    reader = process._free_heap_reader(libc)
    if not hasattr(libc, "mallinfo2"):
        assert reader is None
    else:
        assert isinstance(reader(), int) and reader() >= 0
