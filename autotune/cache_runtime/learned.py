"""Learned placement: routing counts that seed which experts start in VRAM slots.

Two sources, keyed by the model's fingerprint:
- the user's store: what ``autotune serve`` saw on this machine (``placement_dir()``, in the
  user data dir; ``AUTOTUNE_DATA_DIR`` moves it), saved as it serves;
- a placement file named by the config (``--placement FILE``): the counts a tuner's trials
  ran with, frozen with its winner, so the exported command reproduces them on any machine.

The rule (``seed_counts``): the source that covers more routing selections seeds the
placement; a tie goes to the file. A serve seeded from a file saves counts that include the
file's, so from its first save on the user's own counts take over, and keep what the file
gave them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import platformdirs

from autotune.errors import AutotuneError

DATA_DIR_ENV = "AUTOTUNE_DATA_DIR"
PLACEMENT_FORMAT = "autotune-placement-1"


def data_dir() -> Path:
    """autotune's user data dir (``AUTOTUNE_DATA_DIR`` moves it)."""
    return Path(os.environ.get(DATA_DIR_ENV) or platformdirs.user_data_dir("autotune", appauthor=False))


def placement_dir() -> Path:
    return data_dir() / "placement"


def counts_path(fingerprint: str) -> Path:
    return placement_dir() / f"{fingerprint}.npy"


def load_counts(fingerprint: str, shape: tuple[int, int]) -> np.ndarray | None:
    """The user's stored counts, or None when there are none (or they belong to another shape)."""
    path = counts_path(fingerprint)
    try:
        counts = np.load(path)
    except (OSError, ValueError):
        return None
    return counts.astype(np.float64) if counts.shape == shape else None


def replace_atomically(path: Path, write) -> Path:
    """Write through a temporary file and a rename: a crash leaves the previous file whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_counts(fingerprint: str, counts: np.ndarray) -> Path:
    """Write the user's counts atomically."""
    return replace_atomically(counts_path(fingerprint), lambda f: np.save(f, np.asarray(counts, dtype=np.float64)))


def placement_json(counts: np.ndarray, fingerprint: str, source: str) -> dict:
    """A placement as JSON: the counts, whose model they are, and where they came from."""
    return {"format": PLACEMENT_FORMAT, "model_fingerprint": fingerprint, "source": source,
            "counts": np.asarray(counts, dtype=np.float64).tolist()}


def write_placement(path: Path, counts: np.ndarray, fingerprint: str, source: str) -> Path:
    """Write a placement file atomically."""
    text = json.dumps(placement_json(counts, fingerprint, source)).encode()
    return replace_atomically(Path(path), lambda f: f.write(text))


def counts_of_placement(data: object, fingerprint: str, shape: tuple[int, int], where: str) -> np.ndarray:
    """The counts of a placement (as ``placement_json`` writes it) for this model, or an
    AutotuneError that says, in one line, why ``where`` does not hold them."""
    if not isinstance(data, dict) or data.get("format") != PLACEMENT_FORMAT:
        raise AutotuneError(f"{where} is not an autotune placement file")
    if data.get("model_fingerprint") != fingerprint:
        raise AutotuneError(f"{where} holds the placement of another model (fingerprint "
                            f"{data.get('model_fingerprint')}, not {fingerprint})")
    try:
        counts = np.asarray(data["counts"], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise AutotuneError(f"{where}: its counts are not a table of numbers") from None
    if counts.shape != shape:
        raise AutotuneError(f"{where}: counts of shape {counts.shape}, the model has {shape} (layers, experts)")
    return counts


def read_placement(path: str | Path, fingerprint: str, shape: tuple[int, int]) -> np.ndarray:
    """The counts of a placement file for this model; a missing, unreadable or foreign file
    is an AutotuneError with a one-line reason."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AutotuneError(f"placement file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise AutotuneError(f"cannot read placement file {path}: {exc}") from None
    return counts_of_placement(data, fingerprint, shape, f"placement file {path}")


def seed_counts(fingerprint: str, shape: tuple[int, int], placement: str | Path | None) -> tuple[np.ndarray | None, str]:
    """The counts that seed a start, and whose they are (the rule in the module docstring).
    ``placement``: the config's placement file (None or "": the user's store alone)."""
    user = load_counts(fingerprint, shape)
    tuned = read_placement(placement, fingerprint, shape) if placement else None
    if tuned is not None and (user is None or tuned.sum() >= user.sum()):
        return tuned, "the placement file's counts"
    if user is not None:
        return user, "this machine's saved counts"
    return None, "no counts"


def model_fingerprint(path: str | Path) -> str:
    from autotune.model_info import inspect_model

    return inspect_model(path).fingerprint
