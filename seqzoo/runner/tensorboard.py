"""A minimal TensorBoard event-file writer: scalar summaries, no TensorFlow or tensorboard needed.

An event file is a sequence of TFRecords ``len (uint64 LE), masked_crc32c(len) (uint32 LE),
data, masked_crc32c(data)``, each ``data`` a serialized ``tensorflow.Event`` protobuf:
``Event{wall_time: double = 1, step: int64 = 2, file_version: string = 3, summary: Summary = 5,
session_log: SessionLog = 6}``, ``Summary{repeated Value value = 1}``,
``Value{tag: string = 1, simple_value: float = 2}``.

A resumed run rewrites the run's event files without the events it writes again
(``trim_events``) and starts a new file: the events hold no step twice for any reader
(TensorBoard's ``SessionLog`` START purge, which the Python loader honours, was not enough:
other readers ignore it, and it dropped the records of the resumed step itself).
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from seqzoo.runner.files import write_atomic

EVENTS_GLOB = "events.out.tfevents.*"


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The TFRecord checksum: the CRC rotated right by 15 bits plus a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1  # negative int64 as two's complement
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    """One protobuf field: tag, then length for wire type 2."""
    tag = _varint(number << 3 | wire_type)
    return tag + (_varint(len(payload)) + payload if wire_type == 2 else payload)


def event(
    step: int,
    *,
    wall_time: float,
    file_version: str = "",
    scalars=None,
) -> bytes:
    """A serialized ``Event`` (see the module docstring)."""
    out = _field(1, 1, struct.pack("<d", wall_time)) + _field(2, 0, _varint(step))
    if file_version:
        out += _field(3, 2, file_version.encode())
    if scalars:
        values = b"".join(
            _field(1, 2, _field(1, 2, tag.encode()) + _field(2, 5, struct.pack("<f", value)))
            for tag, value in scalars.items()
        )
        out += _field(5, 2, values)
    return out


def record(data: bytes) -> bytes:
    """``data`` framed as a TFRecord."""
    length = struct.pack("<Q", len(data))
    return (
        length
        + struct.pack("<I", masked_crc32c(length))
        + data
        + struct.pack("<I", masked_crc32c(data))
    )


def records(data: bytes) -> Iterator[bytes]:
    """The ``data`` of each whole TFRecord of a file's bytes, up to the first one cut short or
    failing its checksums (a kill can tear only the last one)."""
    at = 0
    while at + 12 <= len(data):
        header = data[at : at + 8]
        (length,) = struct.unpack("<Q", header)
        end = at + 12 + length + 4
        body = data[at + 12 : end - 4]
        checksums = struct.unpack("<I", data[at + 8 : at + 12]) + struct.unpack(
            "<I", data[end - 4 : end].rjust(4, b"\0")
        )
        if end > len(data) or checksums != (masked_crc32c(header), masked_crc32c(body)):
            return
        yield body
        at = end


def _fields(message: bytes) -> Iterator[tuple[int, int | bytes]]:
    """``(field number, value)`` of each field of a serialized protobuf message: an int for
    varint fields, the bytes of the others."""
    at = 0
    while at < len(message):
        key, at = _read_varint(message, at)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value, at = _read_varint(message, at)
        elif wire_type == 2:
            length, at = _read_varint(message, at)
            value, at = message[at : at + length], at + length
        else:  # 1: 64-bit, 5: 32-bit
            size = 8 if wire_type == 1 else 4
            value, at = message[at : at + size], at + size
        yield number, value


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at, shift = at + 1, shift + 7
        if not byte & 0x80:
            return value, at


def scalar_tags(data: bytes) -> tuple[int, list[str]]:
    """``(step, tags)`` of a serialized ``Event`` (no tags: not a summary)."""
    step, tags = 0, []
    for number, value in _fields(data):
        if number == 2:
            step = value
        elif number == 5:
            tags += [
                dict(_fields(item))[1].decode() for kind, item in _fields(value) if kind == 1
            ]
    return step, tags


def trim_events(logdir: str | Path, keep: Callable[[int, str], bool]) -> None:
    """Rewrite each event file of ``logdir`` (atomically) with only the summaries whose
    ``keep(step, split)`` holds (``split``: the tag up to its ``/``), and the events that are
    not summaries; a torn last record is dropped."""
    for path in sorted(Path(logdir).glob(EVENTS_GLOB)):
        data = path.read_bytes()
        kept = []
        for body in records(data):
            step, tags = scalar_tags(body)
            if all(keep(step, tag.split("/")[0]) for tag in tags):
                kept.append(record(body))
        new = b"".join(kept)
        if new != data:
            write_atomic(path, new)


class EventWriter:
    """Writes scalar events to a new ``events.out.tfevents.*`` file in ``logdir``."""

    def __init__(self, logdir: str | Path):
        now = time.time()  # microseconds in the name: files sort by creation, none is reused
        name = f"events.out.tfevents.{time.time_ns() // 1000}.{socket.gethostname()}"
        self.file = open(Path(logdir) / name, "wb")
        self._write(event(0, wall_time=now, file_version="brain.Event:2"))

    def _write(self, data: bytes) -> None:
        self.file.write(record(data))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """One event holding ``{tag: value}`` at ``step``."""
        self._write(event(step, wall_time=time.time(), scalars=values))
        self.file.flush()

    def close(self) -> None:
        self.file.close()
