"""A recorded routing trace on disk: which experts each token selected, per layer, and whose.

One ``.npz`` (numpy's zip of arrays, read without pickle) holding:

- ``ids``: (tokens, layers, k) int16, the selected expert ids of every token the engine
  processed, in order (prompt tokens and decode steps alike; a token's k ids in the router's
  order, hottest first);
- ``phase``: (tokens,) int8, each token's ``Phase``: 0 a decode step, 2 the first token of a
  prompt (one ``Engine.prefill`` call, which is where a request starts), 1 the prompt's others;
- ``meta``: a JSON string ``{"format": "autotune-routing-trace-1", "model_fingerprint": ...,
  "n_layers": ..., "n_expert": ..., "k": ...}``.

``autotune serve --record-trace FILE`` writes one; ``Engine(..., replay=trace)`` replays it in
place of the router (``replay``); ``studies.cache_simulation`` replays it through the cache's
policies. Torch-free.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Iterator

import numpy as np

from autotune.cache_runtime.learned import replace_atomically
from autotune.errors import AutotuneError

TRACE_FORMAT = "autotune-routing-trace-1"


class Phase(IntEnum):
    """What a traced token was to the engine."""

    DECODE = 0
    PREFILL = 1
    PREFILL_START = 2


@dataclass(frozen=True)
class Trace:
    ids: np.ndarray  # (tokens, layers, k) int16
    phase: np.ndarray  # (tokens,) int8 Phase
    fingerprint: str  # the model's (model_info's fingerprint)
    n_expert: int

    @property
    def n_tokens(self) -> int:
        return self.ids.shape[0]

    @property
    def n_layers(self) -> int:
        return self.ids.shape[1]

    @property
    def k(self) -> int:
        return self.ids.shape[2]

    def decode_ids(self) -> np.ndarray:
        """(decode steps, layers, k): the tokens whose selections the expert cache counts."""
        return self.ids[self.phase == Phase.DECODE]

    def calls(self) -> Iterator[tuple[Phase, int]]:
        """The engine calls that processed the trace, in order: (PREFILL_START, prompt tokens)
        for a prefill, (DECODE, 1) for a decode step."""
        starts = np.flatnonzero(self.phase != Phase.PREFILL)
        ends = np.append(starts[1:], self.n_tokens)
        for start, end in zip(starts.tolist(), ends.tolist()):
            yield Phase(int(self.phase[start])), end - start

    def check_model(self, fingerprint: str, n_layers: int, n_expert: int, k: int, where: str = "the trace") -> None:
        """An AutotuneError unless the trace was recorded on this model (same fingerprint and shape)."""
        if self.fingerprint != fingerprint:
            raise AutotuneError(f"{where} was recorded on another model (fingerprint {self.fingerprint}, "
                                f"not {fingerprint})")
        if (self.n_layers, self.n_expert, self.k) != (n_layers, n_expert, k):
            raise AutotuneError(f"{where} has {self.n_layers} layers, {self.n_expert} experts, top-{self.k}; "
                                f"the model {n_layers}, {n_expert}, top-{k}")


def write_trace(path: str | Path, trace: Trace) -> Path:
    """Write ``trace`` atomically (a crash leaves the previous file whole)."""
    meta = {"format": TRACE_FORMAT, "model_fingerprint": trace.fingerprint, "n_layers": trace.n_layers,
            "n_expert": trace.n_expert, "k": trace.k}
    buffer = io.BytesIO()
    np.savez(buffer, ids=trace.ids.astype(np.int16), phase=trace.phase.astype(np.int8), meta=np.array(json.dumps(meta)))
    return replace_atomically(Path(path), lambda f: f.write(buffer.getvalue()))


def read_trace(path: str | Path) -> Trace:
    """The trace in ``path``; a missing, unreadable or malformed file is a one-line AutotuneError."""
    where = f"trace file {path}"
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in ("ids", "phase", "meta")}
    except FileNotFoundError:
        raise AutotuneError(f"{where} does not exist") from None
    except KeyError as exc:
        raise AutotuneError(f"{where} lacks {exc}: not an autotune routing trace") from None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise AutotuneError(f"cannot read {where}: {exc}") from None
    try:
        meta = json.loads(str(arrays["meta"]))
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or meta.get("format") != TRACE_FORMAT:
        raise AutotuneError(f"{where} is not an autotune routing trace ({TRACE_FORMAT})")
    ids, phase = arrays["ids"], arrays["phase"]
    n_expert = meta.get("n_expert")
    if ids.ndim != 3 or phase.shape != ids.shape[:1] or not isinstance(n_expert, int) \
            or (ids.shape[1], ids.shape[2]) != (meta.get("n_layers"), meta.get("k")):
        raise AutotuneError(f"{where}: ids of shape {ids.shape} and phases of shape {phase.shape} "
                            f"do not match its header {meta}")
    if ids.size and not (0 <= ids.min() and ids.max() < n_expert):
        raise AutotuneError(f"{where}: expert ids outside [0, {n_expert})")
    if not np.isin(phase, list(Phase)).all():
        raise AutotuneError(f"{where}: phases other than {[int(p) for p in Phase]}")
    previous = np.concatenate([[Phase.DECODE], phase[:-1]])
    if ((phase == Phase.PREFILL) & (previous == Phase.DECODE)).any():
        raise AutotuneError(f"{where}: a prompt token (phase 1) without its prompt's first (phase 2) before it")
    return Trace(ids.astype(np.int16), phase.astype(np.int8), str(meta.get("model_fingerprint")), n_expert)
