"""Which routing counts the ``cache`` backend's trials run with, and how its winner keeps them.

Trials seed their placement as ``learned.seed_counts`` rules, from the trials' placement file
and the user's own counts: the file holds counts learned once per model from decode of a
seeded prompt no measurement uses (the first child that needs it learns it), and lives in
the trial store (``$AUTOTUNE_TRIAL_STORE``, else the user cache dir), apart from the user's
counts, which trials never write. The tuner's parent (predicting VRAM) and its children
(allocating it) name the same file through ``with_trial_placement``.

A winner's counts are frozen into a placement file of its own (``keep_winner``), in the user
data dir, which its exported command names (``--placement FILE``): a fresh start of that
command, on a machine with no counts of its own, seeds the placement the trials measured.
The database keeps the same counts with the winner (``restore_winner`` writes the file again
where it is gone).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import platformdirs

from autotune.backends.base import Config
from autotune.cache_runtime.learned import data_dir, placement_json, seed_counts, write_placement

TRIAL_STORE_ENV = "AUTOTUNE_TRIAL_STORE"


def trial_store() -> Path:
    return Path(os.environ.get(TRIAL_STORE_ENV) or platformdirs.user_cache_dir("autotune", appauthor=False)) / "trials"


def trial_placement_path(fingerprint: str) -> Path:
    return trial_store() / "placement" / f"{fingerprint}.json"


def with_trial_placement(config: Config, fingerprint: str) -> Config:
    """The config as a trial runs it: naming the trials' placement file once it exists."""
    path = trial_placement_path(fingerprint)
    if not config.get("learned_placement", True) or config.get("placement") or not path.exists():
        return config
    return {**config, "placement": str(path)}


def winners_dir() -> Path:
    return data_dir() / "winners"


def keep_winner(config: Config, fingerprint: str, shape: tuple[int, int], study_name: str) -> tuple[Config, dict[str, Any]]:
    """The winner's config naming a placement file of its own that holds the counts its trials
    seeded from, and the same counts for the database; unchanged where it used none."""
    if not config.get("learned_placement", True):
        return config, {}
    counts, source = seed_counts(fingerprint, shape, with_trial_placement(config, fingerprint).get("placement"))
    if counts is None:
        return config, {}
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", study_name).strip("-") or "winner"
    path = write_placement(winners_dir() / f"{name}.json", counts, fingerprint, f"{source}, kept for the winner of study {study_name}")
    return {**config, "placement": str(path)}, {"placement": placement_json(counts, fingerprint, source)}


def restore_winner(config: Config, kept: dict[str, Any]) -> None:
    """Write the winner's placement file again from the database where it is gone."""
    path, data = config.get("placement"), kept.get("placement")
    if not path or not data or Path(path).exists():
        return
    write_placement(Path(path), data["counts"], data["model_fingerprint"], data["source"])
