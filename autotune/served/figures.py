"""The figures a served command gives, and the one error measuring it raises."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from autotune.backends.base import Measurement
from autotune.errors import AutotuneError


class ServeFailed(AutotuneError):
    """The served command did not serve: it exited (with its status and last line of output),
    did not answer within the deadline, or answered other than asked."""


@dataclass
class ServedFigures:
    """Throughput measured over HTTP, the server's peak VRAM and how long it took to start."""

    decode_tps: Measurement
    prefill_tps: Measurement
    peak_vram_bytes: int | None  # NVML peak of the server's process group; None without a GPU
    start_seconds: float  # from spawn until /health answered ok
    # ``autotune serve``'s own statistics after the requests (``GET /v1/stats``: the expert
    # cache's hit rate, its CPU experts per token...); None for llama-server
    server_stats: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def summary(data: dict[str, Any]) -> str:
        """``decode X, prefill Y tok/s`` of figures stored as ``to_json`` writes them."""
        return f"decode {data['decode_tps']['mean']:.1f}, prefill {data['prefill_tps']['mean']:.1f} tok/s"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ServedFigures":
        return cls(
            decode_tps=Measurement(**data["decode_tps"]),
            prefill_tps=Measurement(**data["prefill_tps"]),
            peak_vram_bytes=data.get("peak_vram_bytes"),
            start_seconds=float(data["start_seconds"]),
            server_stats=data.get("server_stats"),
        )
