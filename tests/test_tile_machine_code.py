"""Every Triton tile compiles for an H100 (sm_90, offline: Triton's own ptxas), and the
32-element block types' decode GEMV keeps one layout from load to product: its only barriers
are the final reduction's (studies/quant_types, "Since"; MXFP4 had a conversion of the whole
tile through shared memory).

``autotune.studies.sass_counts`` runs in a process of its own: the other test modules load
the kernels in Triton's interpreter, which cannot compile them.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

if not torch.cuda.is_available():  # as the other kernel tests: this process interprets
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from autotune.cache_runtime.dequant import BLOCK_SIZES  # noqa: E402
from autotune.studies.sass_counts import CUOBJDUMP  # noqa: E402

ONE_LAYOUT = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL", "IQ4_XS", "MXFP4", "Q8_0", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "F32")


@pytest.mark.skipif(not CUOBJDUMP.exists(), reason="this Triton ships no cuobjdump")
def test_tiles_compile_for_sm90_without_layout_conversions() -> None:
    done = subprocess.run([sys.executable, "-m", "autotune.studies.sass_counts"], capture_output=True, text=True,
                          env={**os.environ, "TRITON_INTERPRET": "0"}, timeout=600, check=True)
    rows = {row[0]: row[1:] for row in (line.split() for line in done.stdout.splitlines()[1:])}
    assert sorted(rows) == sorted(BLOCK_SIZES)
    assert all(float(instructions) > 0 for instructions, *_ in rows.values())
    barriers = {qtype: int(rows[qtype][2]) for qtype in ONE_LAYOUT}
    assert set(barriers.values()) == {barriers["F32"]}, barriers


@pytest.mark.skipif(not CUOBJDUMP.exists(), reason="this Triton ships no cuobjdump")
@pytest.mark.parametrize("kernel, cols, qtype, ratio", [
    ("gate_up", 2048, "Q4_K", 0.6), ("gate_up", 2880, "MXFP4", 0.6), ("gate_up", 2880, "Q4_0", 0.6),
    ("down", 768, "Q6_K", 0.7),  # Q6_K's words take two 16-bit loads each
])
def test_the_8_bit_input_compiles_for_sm90_with_dp4a_fewer_instructions_and_one_layout(
        kernel: str, cols: int, qtype: str, ratio: float) -> None:
    """``triton_int8``'s inline PTX assembles into the GPU's IDP instruction; the 8-bit path takes
    well under the float path's instructions an element, and at most one barrier more: its
    tile sums its blocks within a warp, with no layout conversion inside the chunk loop (the
    first version had 10-16 barriers and ran slower than the float path on the H100)."""
    done = subprocess.run([sys.executable, "-c", (
        f"from autotune.studies.sass_counts import {kernel}_sass\n"
        "for int8 in (False, True):\n"
        f"    ops, elements = {kernel}_sass({qtype!r}, {cols}, int8=int8)\n"
        "    print(len(ops) / elements, sum(op.startswith('IDP') for op in ops),\n"
        "          sum(op.startswith('BAR') for op in ops))\n")],
        capture_output=True, text=True, env={**os.environ, "TRITON_INTERPRET": "0"}, timeout=600, check=True)
    (float_per_element, float_idp, float_bar), (int8_per_element, int8_idp, int8_bar) = (
        (float(a), int(b), int(c)) for a, b, c in (line.split() for line in done.stdout.splitlines()))
    assert float_idp == 0 and int8_idp > 0
    assert int8_per_element < ratio * float_per_element
    assert int8_bar <= float_bar + 1
