"""A trial's child process: ``python -m autotune.isolation.child_main JOB RESULTS``.

JOB is a JSON file ``{"target": "package.module[:object]", "common": {...}, "items": [...]}``.
The target offers ``setup(common) -> (state, info)`` (load what all items share, e.g. a
model) and ``run(state, item) -> dict`` (measure one item: ``decode_tps`` and
``prefill_tps`` sample lists, ``extra``, and ``load_seconds`` where an item loads its own). Each step appends one JSON line
to RESULTS as soon as it is done, so the parent (``autotune.isolation.trial_process``) keeps
what finished even when a later item crashes or hangs:

- ``{"kind": "ready", "info": {...}, "seconds": s}`` after setup,
- ``{"kind": "item", "value": {...}, "seconds": s}`` per item,
- ``{"kind": "error", "error": "Type: message"}`` when the target raised (exit status 1).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

# Between items: the parent starts the next item's VRAM peak when it sees a result line
# (it polls every 50 ms), so the next item must not allocate before that.
ITEM_GAP_S = 0.15


def _target(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr) if attr else module


def main(job_path: str, results_path: str) -> int:
    job = json.loads(Path(job_path).read_text(encoding="utf-8"))
    with open(results_path, "a", encoding="utf-8") as out:

        def emit(record: dict[str, Any]) -> None:
            out.write(json.dumps(record) + "\n")
            out.flush()

        try:
            target = _target(job["target"])
            started = time.perf_counter()
            state, info = target.setup(job["common"])
            emit({"kind": "ready", "info": info, "seconds": time.perf_counter() - started})
            for index, item in enumerate(job["items"]):
                if index:
                    time.sleep(ITEM_GAP_S)
                started = time.perf_counter()
                value = target.run(state, item)
                emit({"kind": "item", "value": value, "seconds": time.perf_counter() - started})
        except Exception as exc:
            traceback.print_exc()
            emit({"kind": "error", "error": f"{type(exc).__name__}: {exc}"})
            return 1
    return 0


if __name__ == "__main__":
    status = main(sys.argv[1], sys.argv[2])
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: native libraries (CUDA, OpenMP) can crash in it, after the
    # results are already safe on disk.
    os._exit(status)
