""" "best": try several codecs on a stream and keep the smallest output.

With `screen` > 0, a blob longer than that is first screened: every candidate compresses its
first `screen` bytes, and only candidates within `margin` (relative) of the smallest screened
output compress the whole blob; the smallest whole output wins. Screening saves the slow
candidates' time on blobs where they are clearly behind; the winner is always measured in full.

The artifact writer (bytegolf.artifact.layout) resolves "best" per blob before the container sees it: each
candidate compresses the blob (bit-packed or one symbol per item, as that candidate prefers), the
smallest wins, and the manifest records the WINNER's codec name and parameters, so a reader never
needs this module. Used directly as a codec (outside the layout) it writes one byte naming the
winning candidate, then the winner's stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from bytegolf.codecs.base import Codec, CodecError, StreamInfo, get_codec
from bytegolf.errors import ConfigError

DEFAULT_CANDIDATES: tuple[str, ...] = ("zstd", "brotli", "lzma", "ans", "raw")  # each with its default params


def candidate_spec(item: Any) -> tuple[str, dict[str, Any]]:
    """A candidate as (name, params) from "name", {"name": n, "params": {...}} or {"name": n, **params}."""
    if isinstance(item, str):
        return item, {}
    if isinstance(item, dict) or hasattr(item, "items"):
        d = dict(item.items())
        name = d.pop("name", None)
        if not isinstance(name, str):
            raise ConfigError(f"codec best: candidate {item!r} has no codec name")
        if "params" in d:
            params = d.pop("params")
            if d or not hasattr(params, "items"):
                raise ConfigError(f"codec best: candidate {item!r} mixes 'params' with other keys")
            return name, dict(params.items())
        return name, d
    raise ConfigError(f"codec best: candidate must be a codec name or a mapping, got {item!r}")


def _plain(item: Any) -> Any:
    """Mappings and lists (e.g. OmegaConf containers) as plain dicts and lists."""
    if hasattr(item, "items"):
        return {str(k): _plain(v) for k, v in item.items()}
    if isinstance(item, (list, tuple)) or (hasattr(item, "__iter__") and not isinstance(item, (str, bytes))):
        return [_plain(v) for v in item]
    return item


@dataclass(frozen=True)
class Best(Codec):
    """Keep the smallest output among `candidates` (codec names, or {name, params} mappings)."""

    name: ClassVar[str] = "best"
    candidates: list[Any] = DEFAULT_CANDIDATES  # type: ignore[assignment]  # a tuple: Hydra schemas need a plain default
    screen: int = 0
    margin: float = 0.01

    def __post_init__(self) -> None:
        if isinstance(self.screen, bool) or not isinstance(self.screen, int) or self.screen < 0:
            raise ConfigError(f"codec best: screen must be an int >= 0 (bytes; 0: no screening), got {self.screen!r}")
        if isinstance(self.margin, bool) or not isinstance(self.margin, (int, float)) or self.margin < 0:
            raise ConfigError(f"codec best: margin must be a number >= 0, got {self.margin!r}")
        if isinstance(self.candidates, (str, bytes)) or not hasattr(self.candidates, "__iter__"):
            raise ConfigError(f"codec best: candidates must be a list, got {self.candidates!r}")
        specs = [candidate_spec(c) for c in self.candidates]
        if not specs or len(specs) > 255:
            raise ConfigError(f"codec best: needs 1..255 candidates, got {len(specs)}")
        if any(name == "best" for name, _ in specs):
            raise ConfigError("codec best: 'best' cannot be its own candidate")
        for name, params in specs:
            get_codec(name, **params)  # a bad candidate is a ConfigError now, not at write time
        object.__setattr__(self, "candidates", [c if isinstance(c, str) else _plain(c) for c in self.candidates])

    def codecs(self) -> list[Codec]:
        """The candidate codecs, in order (ties go to the earlier one)."""
        return [get_codec(name, **params) for name, params in map(candidate_spec, self.candidates)]

    def config(self) -> dict[str, Any]:
        return {
            "candidates": [c if isinstance(c, str) else _plain(c) for c in self.candidates],
            "screen": self.screen,
            "margin": self.margin,
        }

    def compress(self, data: bytes, info: StreamInfo = StreamInfo()) -> bytes:
        best: tuple[int, bytes] | None = None
        for i, codec in enumerate(self.codecs()):
            out = codec.compress(data, info)
            if best is None or len(out) < len(best[1]):
                best = (i, out)
        assert best is not None
        return bytes([best[0]]) + best[1]

    def decompress(self, data: bytes, raw_size: int, info: StreamInfo = StreamInfo()) -> bytes:
        if not data:
            raise CodecError("best: stream ends early (no candidate byte)")
        if data[0] >= len(self.candidates):
            raise CodecError(f"best: candidate {data[0]} out of range ({len(self.candidates)} candidates)")
        try:
            return self.codecs()[data[0]].decompress(data[1:], raw_size, info)
        except CodecError as exc:
            raise CodecError(f"best: {exc}") from None
