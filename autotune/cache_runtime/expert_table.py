"""Where every expert's weights are: a device table of addresses the kernels read.

``table[layer, expert]`` holds three int64 addresses (gate, up, down rows of that expert,
in the file's quantized layout). Kernels load an entry and cast it to a pointer, so an
expert can live in any memory the GPU reads (a VRAM slot, pinned host memory) and moving
it is one table write, with no CUDA graph re-capture.
"""

from __future__ import annotations

import torch

from autotune.cache_runtime.weights import LayerWeights

GATE, UP, DOWN = 0, 1, 2


class ExpertTable:
    def __init__(self, layers: list[LayerWeights], device: torch.device):
        addresses = [
            [[stack.data[e].data_ptr() for stack in (lw.gate_exps, lw.up_exps, lw.down_exps)]
             for e in range(lw.gate_exps.data.shape[0])]
            for lw in layers
        ]
        self.table = torch.tensor(addresses, dtype=torch.int64, device=device)

    def point(self, layer: int, expert: int, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> None:
        """Make the kernels read this expert from these tensors (which the caller keeps alive)."""
        entry = torch.tensor([gate.data_ptr(), up.data_ptr(), down.data_ptr()], dtype=torch.int64)
        self.table[layer, expert].copy_(entry, non_blocking=False)
