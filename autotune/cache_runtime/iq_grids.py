"""The lattice grids of the IQ1, IQ2 and IQ3 types, as float32 tables on a device.

Each 8 (IQ1, IQ2) or 4 (IQ3) consecutive weights of these types are one row of a grid
(256 to 2048 rows) picked by an index in the block. The grids are gguf's own
(``gguf.quants``: each class's ``grid`` after ``init_grid``, the values of ggml's packed
``iq2xxs_grid`` and the others); IQ1_M shares IQ1_S's. Both the torch decoders and the
Triton tiles read the same table: one tensor per type and device, made on first use.
"""

from __future__ import annotations

import functools

import torch
from gguf import quants as gguf_quants

from autotune.quants_iq import gguf_grid

# type name -> the gguf class whose grid it reads
_GRID_SOURCES = {"IQ2_XXS": gguf_quants.IQ2_XXS, "IQ2_XS": gguf_quants.IQ2_XS, "IQ2_S": gguf_quants.IQ2_S,
                 "IQ3_XXS": gguf_quants.IQ3_XXS, "IQ3_S": gguf_quants.IQ3_S, "IQ1_S": gguf_quants.IQ1_S,
                 "IQ1_M": gguf_quants.IQ1_S}
GRID_TYPES = tuple(_GRID_SOURCES)


@functools.lru_cache(maxsize=None)
def _grid(source: type, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(gguf_grid(source).copy()).to(device)


def grid_table(qtype: str, device: torch.device | str) -> torch.Tensor:
    """(rows, 8 or 4) float32 grid of ``qtype`` on ``device``, the same tensor every call."""
    try:
        source = _GRID_SOURCES[qtype]
    except KeyError:
        raise ValueError(f"GGML type {qtype} has no grid") from None
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return _grid(source, device)
