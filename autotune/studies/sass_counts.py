"""The decode GEMV's machine code per weight type, compiled for an H100 (sm_90) on any machine.

Triton ships ``ptxas`` and ``cuobjdump``, so ``gemv_kernel`` compiles for sm_90 without a GPU.
For each type this prints the SASS instructions per weight element of one kernel (8 rows of
one warp each, one chunk of super-blocks), the conversions on the GPU's slow conversion pipe
(I2F, as opposed to I2FP, which Q4_0's codes use), the barriers (layout conversions through
shared memory) and the global loads. A diagnosis, not a speed: the figures that count are
``run.sh``'s.

Usage: python -m autotune.studies.sass_counts [TYPE ...]   (default: every type the runtime reads)
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import tempfile
from pathlib import Path

import triton
from gguf import GGMLQuantizationType as QType
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from autotune.cache_runtime import triton_gemv
from autotune.cache_runtime.dequant import BLOCK_SIZES
from autotune.cache_runtime.iq_grids import GRID_TYPES
from autotune.cache_runtime.triton_tiles import SUPERBLOCK_BYTES, TILE_GROUPS

K, WARPS, ROUNDS = 2048, 8, 2
CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


def gemv_sass(qtype: str, cols: int = K) -> tuple[list[str], int]:
    """The SASS opcodes of gemv_kernel for ``qtype`` rows of ``cols`` elements and the weight
    elements one thread reads in a chunk."""
    superblocks = min(32 // TILE_GROUPS[qtype] * ROUNDS, triton.next_power_of_2(triton.cdiv(cols, 256)))
    grid = qtype in GRID_TYPES
    signature = {"x_ptr": "*fp32", "norm_ptr": "*fp32", "eps": "fp32", "w0_ptr": "*u8", "w1_ptr": "*u8", "n0": "i32",
                 "resid_ptr": "*fp32", "out_ptr": "*fp32", "N": "i32", "K": "constexpr", "row_stride": "i32",
                 "iq_grid": "*fp32" if grid else "constexpr", "QT": "constexpr", "SB_BYTES": "constexpr",
                 "HAS_NORM": "constexpr", "HAS_RESID": "constexpr", "R": "constexpr", "S": "constexpr",
                 "BLOCK_K": "constexpr"}
    constants = {"K": cols, "QT": int(QType[qtype]), "SB_BYTES": SUPERBLOCK_BYTES[qtype], "HAS_NORM": False,
                 "HAS_RESID": False, "R": WARPS, "S": superblocks, "BLOCK_K": triton.next_power_of_2(cols)} | ({} if grid else {"iq_grid": None})
    # as a launch specializes them: torch's allocations are 16-byte aligned, and so are the
    # row lengths in bytes and the row counts where they are multiples of 16
    row_bytes = cols // 32 * SUPERBLOCK_BYTES[qtype] // 8
    aligned = [name for name, kind in signature.items() if kind.startswith("*")] + ["n0", "N"]
    aligned += ["row_stride"] if row_bytes % 16 == 0 else []
    attrs = {(list(signature).index(name),): [["tt.divisibility", 16]] for name in aligned}
    kernel = triton.compile(ASTSource(triton_gemv.gemv_kernel, signature, constants, attrs),
                            target=GPUTarget("cuda", 90, 32), options={"num_warps": WARPS})
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(kernel.asm["cubin"])
        cubin.flush()
        sass = subprocess.run([str(CUOBJDUMP), "-sass", cubin.name], capture_output=True, text=True, check=True).stdout
    opcodes = re.findall(r"/\*[0-9a-f]{4}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)", sass)
    return opcodes, WARPS * superblocks * 256 // (32 * WARPS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("types", nargs="*", default=sorted(BLOCK_SIZES))
    parser.add_argument("--cols", type=int, default=K, help="row length (gpt-oss: 2880)")
    args = parser.parse_args()
    print(f"{'type':8s} {'instr/elem':>10s} {'I2F':>5s} {'BAR':>5s} {'LDG':>5s}  (gemv_kernel, K={args.cols}, sm_90)")
    for qtype in args.types:
        if args.cols % BLOCK_SIZES[qtype][0]:
            print(f"{qtype:8s} rows of {args.cols} are not whole blocks of this type")
            continue
        opcodes, elements = gemv_sass(qtype, args.cols)
        counts = collections.Counter(op.split(".")[0] for op in opcodes)
        print(f"{qtype:8s} {len(opcodes) / elements:10.1f} {counts['I2F']:5d} {counts['BAR']:5d} {counts['LDG']:5d}")


if __name__ == "__main__":
    main()
