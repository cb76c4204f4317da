"""ZPAQ context mixing (libzpaq through the `zpaq` binding): the codec of Parameter Golf's per-group serializer.

The records ran `lrzip -z -L 9`, whose back end is libzpaq; here the same library is called in
memory, single-threaded (one block: deterministic output, whatever the machine's core count).

An archive carries its own decoder program, so a hostile one could decode to far more than the
container promises or never stop. libzpaq has no output limit, so decompression runs in a forked
child under an address-space limit and a deadline; anything else than exactly `raw_size` bytes in
time is a CodecError. libzpaq skips bytes between blocks, so the stream is framed by the archive's
length (4 bytes little-endian) to reject trailing data.
"""

from __future__ import annotations

import os
import resource
import select
import signal
import time
from dataclasses import dataclass
from typing import ClassVar

import zpaq

from bytegolf.codecs.base import Codec, CodecError, StreamInfo
from bytegolf.errors import ConfigError

_MODEL_MEMORY = 1 << 30  # what libzpaq may allocate for its models at level 5, beyond the output
_MIN_SECONDS = 30.0
_BYTES_PER_SECOND = 50_000  # slowest decoding speed allowed before the deadline (level 5 runs ≈ 200 kB/s)


def _vm_bytes() -> int:
    """This process's current virtual size (the child's limit is set above it)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def _decompress_bounded(data: bytes, raw_size: int) -> bytes:
    """zpaq.decompress in a child process limited to raw_size + model memory and a deadline."""
    limit = _vm_bytes() + 2 * raw_size + _MODEL_MEMORY
    deadline = time.monotonic() + max(_MIN_SECONDS, raw_size / _BYTES_PER_SECOND)
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: decode, send (status, bytes), exit without running the parent's handlers
        os.close(rfd)
        status = b"E"
        try:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            out = zpaq.decompress(data, threads=1)
            status, payload = (b"O", out) if len(out) == raw_size else (b"S", str(len(out)).encode())
        except BaseException as exc:  # reported to the parent as text
            payload = f"{type(exc).__name__}: {exc}".encode()[:500]
        try:
            view = memoryview(status + payload)
            while view:
                view = view[os.write(wfd, view) :]
        finally:
            os._exit(0)
    os.close(wfd)
    chunks, n = [], 0
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([rfd], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                raise CodecError(f"zpaq: decoding did not finish in time ({raw_size} bytes expected)")
            chunk = os.read(rfd, min(1 << 20, raw_size + 2 - n))
            if not chunk:
                break
            n += len(chunk)
            if n > raw_size + 1:
                os.kill(pid, signal.SIGKILL)
                raise CodecError(f"zpaq: stream decodes to more than the expected {raw_size} bytes")
            chunks.append(chunk)
    finally:
        os.close(rfd)
        os.waitpid(pid, 0)
    msg = b"".join(chunks)
    if msg[:1] == b"O":
        return msg[1:]
    if msg[:1] == b"S":
        got = int(msg[1:])
        what = f"more than the expected {raw_size} bytes" if got > raw_size else f"{got} bytes, expected {raw_size}"
        raise CodecError(f"zpaq: stream decodes to {what}")
    detail = msg[1:].decode(errors="replace") or "the decoder ran out of memory or was killed"
    raise CodecError(f"zpaq: corrupt stream ({detail})")


@dataclass(frozen=True)
class Zpaq(Codec):
    """ZPAQ at `level` 1..5 (5: the strongest context-mixing model), one block, single-threaded."""

    name: ClassVar[str] = "zpaq"
    level: int = 5

    def __post_init__(self) -> None:
        if isinstance(self.level, bool) or not isinstance(self.level, int) or not 1 <= self.level <= 5:
            raise ConfigError(f"codec zpaq: level must be an int in 1..5, got {self.level!r}")

    def compress(self, data: bytes, info: StreamInfo = StreamInfo()) -> bytes:
        archive = zpaq.compress(bytes(data), level=self.level, threads=1, hints=False)
        return len(archive).to_bytes(4, "little") + archive

    def decompress(self, data: bytes, raw_size: int, info: StreamInfo = StreamInfo()) -> bytes:
        if len(data) < 4:
            raise CodecError(f"zpaq: stream ends early ({len(data)} bytes, no length prefix)")
        n = int.from_bytes(data[:4], "little")
        if n != len(data) - 4:
            what = "ends early" if n > len(data) - 4 else f"has {len(data) - 4 - n} trailing bytes"
            raise CodecError(f"zpaq: stream {what} (archive of {n} bytes declared, {len(data) - 4} present)")
        if n == 0:
            if raw_size:
                raise CodecError(f"zpaq: empty archive, expected {raw_size} bytes")
            return b""
        return _decompress_bounded(bytes(data[4:]), raw_size)
