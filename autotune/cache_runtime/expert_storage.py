"""Where a table entry points, for ops that read experts as tensors (``TorchOps``): a map from
each piece of expert storage's gate address to its stacks and index. Kernels that read the
table's addresses themselves need no map (``Unmapped``), so nothing is registered for them."""

from __future__ import annotations

from typing import Iterable

import torch

from autotune.cache_runtime.weights import QTensor

Stacks = tuple[torch.Tensor, ...]  # gate, up, down stacks of expert-sized rows


class StorageMap:
    def __init__(self):
        self._where: dict[int, tuple[Stacks, int]] = {}

    def register(self, stacks: Iterable[Stacks]) -> None:
        """Make ``resolve`` find the experts stored in each of ``stacks``."""
        for mats in stacks:
            for i in range(len(mats[0])):
                self._where[mats[0][i].data_ptr()] = (mats, i)

    def forget(self, stacks: Iterable[Stacks]) -> None:
        """Undo ``register`` for storage about to be freed."""
        for mats in stacks:
            for i in range(len(mats[0])):
                self._where.pop(mats[0][i].data_ptr(), None)

    def resolve(self, gate_address: int, like: tuple[QTensor, QTensor, QTensor]) -> tuple[QTensor, ...]:
        """The matrices of the expert whose gate rows start at ``gate_address``."""
        mats, index = self._where[gate_address]
        return tuple(QTensor(m[index], q.qtype, q.cols) for m, q in zip(mats, like))


class Unmapped(StorageMap):
    """No map: the kernels read the table's addresses (``stacks`` are never even iterated)."""

    def register(self, stacks: Iterable[Stacks]) -> None:
        pass

    def forget(self, stacks: Iterable[Stacks]) -> None:
        pass

    def resolve(self, gate_address: int, like: tuple[QTensor, QTensor, QTensor]) -> tuple[QTensor, ...]:
        raise RuntimeError("these kernels read experts through the table: nothing is mapped")
