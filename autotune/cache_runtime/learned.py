"""Learned placement: routing counts persist between runs, keyed by the model's fingerprint.

The counts ((layers, experts) selections seen during decode) live in the user data dir, so
the next start places the experts the model actually uses, with no calibration step.
``AUTOTUNE_DATA_DIR`` overrides the directory (tests, several users on one machine).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import platformdirs

DATA_DIR_ENV = "AUTOTUNE_DATA_DIR"


def placement_dir() -> Path:
    root = os.environ.get(DATA_DIR_ENV) or platformdirs.user_data_dir("autotune", appauthor=False)
    return Path(root) / "placement"


def counts_path(fingerprint: str) -> Path:
    return placement_dir() / f"{fingerprint}.npy"


def load_counts(fingerprint: str, shape: tuple[int, int]) -> np.ndarray | None:
    """The stored counts, or None when there are none (or they belong to another shape)."""
    path = counts_path(fingerprint)
    try:
        counts = np.load(path)
    except (OSError, ValueError):
        return None
    return counts.astype(np.float64) if counts.shape == shape else None


def save_counts(fingerprint: str, counts: np.ndarray) -> Path:
    """Write atomically (a crash leaves the previous file)."""
    path = counts_path(fingerprint)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, np.asarray(counts, dtype=np.float64))
    os.replace(tmp, path)
    return path


def model_fingerprint(path: str | Path) -> str:
    from autotune.model import inspect_model

    return inspect_model(path).fingerprint
