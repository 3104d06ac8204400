"""The Triton tiles compiled for an H100 (sm_90, offline: Triton's own ptxas) convert no
integer to float on the GPU's slow conversion pipe (I2F): studies/quant_types, "Since".

``autotune.studies.sass_counts`` runs in a process of its own: the other test modules load
the kernels in Triton's interpreter, which cannot compile them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

from autotune.cache_runtime.dequant import BLOCK_SIZES  # noqa: E402

CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


@pytest.mark.skipif(not CUOBJDUMP.exists(), reason="this Triton ships no cuobjdump")
def test_no_tile_converts_on_the_slow_pipe() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    done = subprocess.run([sys.executable, "-m", "autotune.studies.sass_counts"], capture_output=True, text=True,
                          env=env, timeout=600, check=True)
    rows = [line.split() for line in done.stdout.splitlines()[1:]]
    slow = {row[0]: int(row[2]) for row in rows}
    assert sorted(slow) == sorted(BLOCK_SIZES)
    assert {qtype: n for qtype, n in slow.items() if n} == {}
