"""Follow the frame structure of a zstd stream without decompressing it.

A zstd stream whose last frame lacks its end (its final block, or the 4-byte content
checksum) can still decompress to the complete content: the decompressor does not say
that the frame was unfinished. This tracker reads only the framing (RFC 8878 section 3.1:
frame headers, block headers, skippable frames) so an upload can be refused when it does
not end on a frame boundary. Pure logic: bytes in, verdict out.
"""

from __future__ import annotations

ZSTD_MAGIC = 0xFD2FB528
SKIPPABLE_MIN, SKIPPABLE_MAX = 0x184D2A50, 0x184D2A5F
_DICT_ID_BYTES = (0, 1, 2, 4)
_FCS_BYTES = (0, 2, 4, 8)


class ZstdFrameError(ValueError):
    pass


class ZstdFrameTracker:
    def __init__(self) -> None:
        self._state = "magic"
        self._need = 4  # bytes to collect for the current parse state
        self._got = bytearray()
        self._skip = 0  # payload bytes to pass over before the next parse state
        self._after_skip = "magic"
        self._checksum = False
        self.frames = 0

    @property
    def complete(self) -> bool:
        """True when the stream so far ends exactly at the end of a frame."""
        return self.frames > 0 and self._state == "magic" and not self._got and not self._skip

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._skip:
                step = min(self._skip, len(view))
                self._skip -= step
                view = view[step:]
                if not self._skip:
                    self._enter(self._after_skip)
                continue
            take = min(self._need - len(self._got), len(view))
            self._got += view[:take]
            view = view[take:]
            if len(self._got) == self._need:
                field, self._got = bytes(self._got), bytearray()
                self._parse(field)

    def _enter(self, state: str) -> None:
        if state == "magic":
            self.frames += 1 if self._state in ("block_end", "skippable_end") else 0
        self._state = state
        self._need = {"magic": 4, "descriptor": 1, "block": 3, "skip_size": 4}.get(state, 0)

    def _skip_then(self, count: int, state: str) -> None:
        if count:
            self._skip, self._after_skip = count, state
        else:
            self._enter(state)

    def _parse(self, field: bytes) -> None:
        value = int.from_bytes(field, "little")
        if self._state == "magic":
            if value == ZSTD_MAGIC:
                self._enter("descriptor")
            elif SKIPPABLE_MIN <= value <= SKIPPABLE_MAX:
                self._enter("skip_size")
            else:
                raise ZstdFrameError("not a zstd frame (bad magic number)")
        elif self._state == "skip_size":
            self._state = "skippable_end"
            self._skip_then(value, "magic")
        elif self._state == "descriptor":
            if value & 0x08:
                raise ZstdFrameError("reserved bit set in zstd frame header")
            single_segment = bool(value & 0x20)
            self._checksum = bool(value & 0x04)
            fcs = _FCS_BYTES[value >> 6] or (1 if single_segment else 0)
            rest = (0 if single_segment else 1) + _DICT_ID_BYTES[value & 0x03] + fcs
            self._skip_then(rest, "block")
        elif self._state == "block":
            last, block_type, size = value & 1, (value >> 1) & 3, value >> 3
            if block_type == 3:
                raise ZstdFrameError("reserved zstd block type")
            payload = 1 if block_type == 1 else size
            if last:
                self._state = "block_end"
                self._skip_then(payload + (4 if self._checksum else 0), "magic")
            else:
                self._skip_then(payload, "block")
