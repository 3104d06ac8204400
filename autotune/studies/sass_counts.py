"""The decode GEMV's machine code per weight type, compiled for an H100 (sm_90) on any machine.

Triton ships ``ptxas`` and ``cuobjdump``, so ``gemv_kernel`` compiles for sm_90 without a GPU.
For each type this prints the SASS instructions per weight element of one kernel (8 rows of
one warp each, one chunk of super-blocks), the conversions on the GPU's slow conversion pipe
(I2F, as opposed to I2FP, which Q4_0's codes use), the barriers (layout conversions through
shared memory) and the global loads. A diagnosis, not a speed: the figures that count are
``run.sh``'s.

Usage: python -m autotune.studies.sass_counts [--cols N] [--gate-up | --down] [TYPE ...]   (default:
every type the runtime reads; --gate-up, --down: the experts' kernels, on the float input and,
where the type has one, on the 8-bit input of ``triton_int8``)
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
from autotune.cache_runtime.triton_int8 import INT8_TYPES
from autotune.cache_runtime.triton_ops import DOWN_ROWS, DOWN_WARPS, GATE_UP_WARPS, superblocks_per_chunk
from autotune.cache_runtime.triton_tiles import SUPERBLOCK_BYTES

K, WARPS, ROUNDS = 2048, 8, 2
CUOBJDUMP = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


def _opcodes(kernel, signature: dict[str, str], constants: dict, aligned: list[str], warps: int) -> list[str]:
    """The SASS opcodes of ``kernel`` compiled for sm_90 with the pointers and ints named in
    ``aligned`` 16-byte aligned, as a launch specializes them."""
    attrs = {(list(signature).index(name),): [["tt.divisibility", 16]] for name in aligned}
    compiled = triton.compile(ASTSource(kernel, signature, constants, attrs),
                              target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        sass = subprocess.run([str(CUOBJDUMP), "-sass", cubin.name], capture_output=True, text=True, check=True).stdout
    return re.findall(r"/\*[0-9a-f]{4}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)", sass)


def _aligned(signature: dict[str, str], ints: list[str], qtype: str, cols: int) -> list[str]:
    """The arguments a launch specializes as 16-byte aligned: torch's allocations, the row
    lengths in bytes where they are multiples of 16, and the named ints."""
    row_bytes = cols // 32 * SUPERBLOCK_BYTES[qtype] // 8
    return ([name for name, kind in signature.items() if kind.startswith("*")] + ints
            + (["row_stride"] if row_bytes % 16 == 0 else []))


def gemv_sass(qtype: str, cols: int = K) -> tuple[list[str], int]:
    """The SASS opcodes of gemv_kernel for ``qtype`` rows of ``cols`` elements and the weight
    elements one thread reads in a chunk."""
    superblocks = superblocks_per_chunk(qtype, cols, ROUNDS)
    grid = qtype in GRID_TYPES
    signature = {"x_ptr": "*fp32", "norm_ptr": "*fp32", "eps": "fp32", "w0_ptr": "*u8", "w1_ptr": "*u8", "n0": "i32",
                 "resid_ptr": "*fp32", "out_ptr": "*fp32", "N": "i32", "K": "constexpr", "row_stride": "i32",
                 "iq_grid": "*fp32" if grid else "constexpr", "QT": "constexpr", "SB_BYTES": "constexpr",
                 "HAS_NORM": "constexpr", "HAS_RESID": "constexpr", "R": "constexpr", "S": "constexpr",
                 "BLOCK_K": "constexpr"}
    constants = {"K": cols, "QT": int(QType[qtype]), "SB_BYTES": SUPERBLOCK_BYTES[qtype], "HAS_NORM": False,
                 "HAS_RESID": False, "R": WARPS, "S": superblocks, "BLOCK_K": triton.next_power_of_2(cols)} | ({} if grid else {"iq_grid": None})
    opcodes = _opcodes(triton_gemv.gemv_kernel, signature, constants,
                       _aligned(signature, ["n0", "N"], qtype, cols), WARPS)
    return opcodes, WARPS * superblocks * 256 // (32 * WARPS)


def gate_up_sass(qtype: str, cols: int = K, int8: bool = False) -> tuple[list[str], int]:
    """The same for moe_gate_up_kernel (GATE_UP_WARPS virtual rows a program), on the float
    input or (``int8``, the types of ``triton_int8.INT8_TYPES``) the 8-bit one."""
    superblocks = superblocks_per_chunk(qtype, cols, ROUNDS)
    grid = qtype in GRID_TYPES
    signature = {"ids_ptr": "*i32", "on_ptr": "*i32", "xn_ptr": "*fp32", "table_ptr": "*i64", "gate_b_ptr": "*fp32",
                 "up_b_ptr": "*fp32", "h_ptr": "*fp32", "xq_ptr": "*i32", "xd_ptr": "*fp32", "xs_ptr": "*fp32",
                 "n_ff": "i32", "row_stride": "i32", "K": "constexpr", "iq_grid": "*fp32" if grid else "constexpr",
                 "QT": "constexpr", "SB_BYTES": "constexpr", "R": "constexpr", "S": "constexpr", "SKIP": "constexpr",
                 "ACT": "constexpr", "HAS_GATE_BIAS": "constexpr", "HAS_UP_BIAS": "constexpr", "INT8": "constexpr"}
    constants = {"K": cols, "QT": int(QType[qtype]), "SB_BYTES": SUPERBLOCK_BYTES[qtype], "R": GATE_UP_WARPS,
                 "S": superblocks, "SKIP": False, "ACT": "silu", "HAS_GATE_BIAS": False, "HAS_UP_BIAS": False,
                 "INT8": int8} | ({} if grid else {"iq_grid": None})
    opcodes = _opcodes(triton_gemv.moe_gate_up_kernel, signature, constants,
                       _aligned(signature, ["n_ff"], qtype, cols), GATE_UP_WARPS)
    return opcodes, superblocks * 256 // 32


def down_sass(qtype: str, cols: int = 768, int8: bool = False, top_k: int = 8) -> tuple[list[str], int]:
    """The same for moe_down_kernel (rows of ``cols``: the experts' FFN width, 768 on the 30B
    shape; ``top_k`` experts a token), on the float input or (``int8``) the 8-bit one."""
    superblocks = superblocks_per_chunk(qtype, cols, ROUNDS)
    grid = qtype in GRID_TYPES
    k_pad = triton.next_power_of_2(top_k)
    signature = {"h_ptr": "*fp32", "ids_ptr": "*i32", "on_ptr": "*i32", "wts_ptr": "*fp32", "table_ptr": "*i64",
                 "b_ptr": "*fp32", "resid_ptr": "*fp32", "hq_ptr": "*i32", "hd_ptr": "*fp32", "hs_ptr": "*fp32",
                 "D": "i32", "K": "constexpr", "row_stride": "i32", "iq_grid": "*fp32" if grid else "constexpr",
                 "QT": "constexpr", "SB_BYTES": "constexpr", "TOP_K": "constexpr", "K_PAD": "constexpr",
                 "BN": "constexpr", "S": "constexpr", "SKIP": "constexpr", "HAS_BIAS": "constexpr", "INT8": "constexpr"}
    constants = {"K": cols, "QT": int(QType[qtype]), "SB_BYTES": SUPERBLOCK_BYTES[qtype], "TOP_K": top_k,
                 "K_PAD": k_pad, "BN": max(DOWN_ROWS, DOWN_WARPS // k_pad), "S": superblocks, "SKIP": False,
                 "HAS_BIAS": False, "INT8": int8} | ({} if grid else {"iq_grid": None})
    opcodes = _opcodes(triton_gemv.moe_down_kernel, signature, constants, _aligned(signature, ["D"], qtype, cols),
                       DOWN_WARPS)
    return opcodes, superblocks * 256 // 32


def _line(name: str, opcodes: list[str], elements: int) -> str:
    counts = collections.Counter(op.split(".")[0] for op in opcodes)
    return f"{name:14s} {len(opcodes) / elements:10.1f} {counts['I2F']:5d} {counts['BAR']:5d} {counts['LDG']:5d}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("types", nargs="*", default=sorted(BLOCK_SIZES))
    parser.add_argument("--cols", type=int, default=K, help="row length (gpt-oss: 2880)")
    kernels = parser.add_mutually_exclusive_group()
    kernels.add_argument("--gate-up", action="store_true",
                         help="the experts' gate+up kernel instead, and its 8-bit-input path where a type has one")
    kernels.add_argument("--down", action="store_true",
                         help="the experts' down kernel instead (top 8), and its 8-bit-input path where a type has one")
    args = parser.parse_args()
    kernel = "moe_gate_up_kernel" if args.gate_up else "moe_down_kernel" if args.down else "gemv_kernel"
    print(f"{'type':14s} {'instr/elem':>10s} {'I2F':>5s} {'BAR':>5s} {'LDG':>5s}  ({kernel}, K={args.cols}, sm_90)")
    for qtype in args.types:
        if args.cols % BLOCK_SIZES[qtype][0]:
            print(f"{qtype:14s} rows of {args.cols} are not whole blocks of this type")
            continue
        if not (args.gate_up or args.down):
            print(_line(qtype, *gemv_sass(qtype, args.cols)))
            continue
        experts = gate_up_sass if args.gate_up else down_sass
        print(_line(qtype, *experts(qtype, args.cols)))
        if qtype in INT8_TYPES:
            print(_line(f"{qtype}, 8-bit x", *experts(qtype, args.cols, int8=True)))


if __name__ == "__main__":
    main()
