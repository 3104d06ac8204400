"""The expert cache's ``cpu`` and ``auto`` miss modes: a decode step's selected experts that the
device does not hold are computed on the CPU (``CpuExperts``, ggml's kernels over the experts'
home stacks in host memory, in place), while the device computes the ones it holds.

Per layer, after the router, in stream order on the compute stream:
1. which selections the device computes is decided on the device, so the device's kernels and
   the host agree whatever moves meanwhile: ``cpu``, the experts in a VRAM slot; ``auto``, also
   those whose entry points at a prefetched copy (anything but home); with ``pcie_share``, also
   that share of the rest (the last in selection order), read from their home over PCIe while
   the CPU computes the others;
2. the experts' input, the ids, the weights and that choice go to host buffers (pinned on a
   GPU), followed by an event;
3. the device's expert kernels run their share (the others skipped);
4. the host waits for the event, computes the rest, and the sum is added into the hidden
   state (``add``).

So the host takes part in every layer of a decode step. On a GPU, step 2 is a kernel that
writes the host buffers and a flag, and step 4's add a kernel that waits for the host's flag
(``flag_handoff``): captured (``graph.HostServedDecodeGraph``, ``host_actions`` set), the step
stays one graph and the host serves its layers after the launch; run eagerly, the host serves
each layer before queuing its add. On the CPU, steps 2 and 4 are plain copies and an add.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from autotune.cache_runtime.cpu_experts import Biases, CpuExperts
from autotune.cache_runtime.devices import CopyEvent, Device, Done
from autotune.cache_runtime.expert_table import ExpertTable
from autotune.cache_runtime.ggml_cpu import CpuBackend
from autotune.cache_runtime.graph import HostActions
from autotune.cache_runtime.weights import LayerWeights

if TYPE_CHECKING:
    from autotune.cache_runtime.flag_handoff import FlagHandoff


def _host_biases(lw: LayerWeights) -> Biases:
    """The layer's expert biases as the CPU reads them: float32 copies in host memory of their own."""
    return tuple(None if b is None else b.detach().to("cpu", torch.float32, copy=True)
                 for b in (lw.gate_exps_b, lw.up_exps_b, lw.down_exps_b))


@dataclass
class CpuCounters:
    """Host-side totals of the experts the CPU computed."""

    experts: int = 0  # selections computed on the CPU
    bytes: int = 0  # expert weights the CPU read for them
    wait_s: float = 0.0  # the host waiting for the device's router output
    compute_s: float = 0.0  # the CPU computing experts (and the host's bookkeeping around it)


class CpuMisses:
    """``layers``: the model's layers, whose expert stacks are the experts' home in host
    memory; ``table`` and ``in_slot``: the cache's expert table and residency (on the device),
    ``home_gate``: (layers, n_expert) the address of every expert's home gate rows, there too;
    ``prefetched``: whether the device also computes experts that point at a prefetched copy
    (``auto``) rather than only those in a slot (``cpu``); ``pcie_share``: the share of the
    other selections the device reads over PCIe itself; ``act``: the experts' gated activation
    (their biases come with ``layers``)."""

    def __init__(self, layers: list[LayerWeights], table: ExpertTable, in_slot: torch.Tensor,
                 home_gate: torch.Tensor, device: Device, threads: int, repack: bool, prefetched: bool,
                 pcie_share: float = 0.0, act: str = "silu"):
        self.device, self.table, self.in_slot, self.prefetched = device, table, in_slot, prefetched
        self.home_gate = home_gate
        self.pcie_share = pcie_share
        self._cpu_count: torch.Tensor | None = None  # with pcie_share: misses -> how many the CPU computes
        self.flags: FlagHandoff | None = None
        if device.captures_graphs:
            from autotune.cache_runtime.flag_handoff import FlagHandoff

            self.flags = FlagHandoff(device)
        self.backend = CpuBackend(threads)
        self.layers: list[CpuExperts] = []
        try:
            for lw in layers:
                self.layers.append(CpuExperts(lw.gate_exps, lw.up_exps, lw.down_exps, self.backend, repack,
                                              _host_biases(lw), act))
        except Exception:
            self.close()
            raise
        n_embd = layers[0].gate_exps.cols
        self.counters = CpuCounters()
        self._x = device.host_buffer((1, n_embd), torch.float32)
        self._y = device.host_buffer((1, n_embd), torch.float32)
        self._ids: torch.Tensor | None = None
        self._weights: torch.Tensor | None = None
        self._on_device: torch.Tensor | None = None
        # numpy views of the host buffers, taken once: the host's part runs 2 x layers times a token
        self._x_np, self._y_np = self._x.numpy()[0], self._y.numpy()[0]
        self._ids_np = self._weights_np = self._on_device_np = np.empty(0)
        self._ready: CopyEvent = Done()
        self._pending: int | None = None  # the layer offloaded and not yet added
        self.host_actions: HostActions | None = None  # set while a decode step is being captured

    def close(self) -> None:
        for layer in self.layers:
            layer.close()
        self.layers = []
        self.backend.close()

    def offload(self, layer: int, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Steps 1 and 2 of the module's list for one token; returns the device's choice (1, k)."""
        selected = ids.reshape(1, -1).long()
        if self.prefetched:
            on_device = self.table.table[layer, :, 0][selected] != self.home_gate[layer][selected]
        else:
            on_device = self.in_slot[layer][selected]
        if self.pcie_share:
            on_device = on_device | self._pcie_reads(~on_device)
        k = selected.shape[1]
        if self._ids is None or self._ids.shape[1] != k:
            self._ids = self.device.host_buffer((1, k), torch.int64)
            self._weights = self.device.host_buffer((1, k), torch.float32)
            self._on_device = self.device.host_buffer((1, k), torch.bool)
            self._ids_np, self._weights_np = self._ids.numpy()[0], self._weights.numpy()[0]
            self._on_device_np = self._on_device.numpy()[0]
        self._pending = layer
        if self.flags is not None:
            self.flags.publish(x.reshape(-1), selected.reshape(-1), weights.reshape(-1), on_device.reshape(-1),
                               (self._x, self._ids, self._weights, self._on_device))
            if self.host_actions is not None:
                self.host_actions.append(lambda: self._serve(layer))
            return on_device
        self._x.copy_(x.reshape(1, -1), non_blocking=True)
        self._ids.copy_(selected, non_blocking=True)
        self._weights.copy_(weights.reshape(1, -1), non_blocking=True)
        self._on_device.copy_(on_device, non_blocking=True)
        self._ready = self.device.record()
        return on_device

    def _pcie_reads(self, missed: torch.Tensor) -> torch.Tensor:
        """Of the misses (1, k), the ``pcie_share`` the device reads over PCIe (rounded to the
        nearest count): the last ones in selection order. Tensor ops only, so it is captured."""
        k = missed.shape[1]
        if self._cpu_count is None or len(self._cpu_count) != k + 1:
            self._cpu_count = torch.tensor([n - int(n * self.pcie_share + 0.5) for n in range(k + 1)],
                                           device=missed.device)
        rank = missed.cumsum(dim=1)  # 1-based rank among the misses
        return missed & (rank > self._cpu_count[rank[:, -1:]])

    def add(self, layer: int, h: torch.Tensor) -> None:
        """Step 4: compute the layer's selections the device skipped and add them to ``h`` (1, n_embd)."""
        if self._pending != layer:
            raise RuntimeError(f"layer {layer}'s experts were not offloaded before their CPU share was asked for")
        self._pending = None
        if self.flags is not None:
            if not h.is_contiguous():
                raise ValueError("the CPU's share is added in place: the hidden state must be contiguous")
            if self.host_actions is None:
                self._serve(layer)  # run eagerly: the host's part now, so the await finds it done
            self.flags.await_add(h.reshape(-1), self._y)
            return
        self._wait()
        self._compute(layer)
        h.add_(self._y)

    def _wait(self) -> None:
        """Wait until the offloaded inputs have reached the host."""
        start = time.perf_counter()
        self._ready.synchronize()
        self.counters.wait_s += time.perf_counter() - start

    def _serve(self, layer: int) -> None:
        """The host's part of a layer with ``flags``: wait for the device's publish, compute the
        misses, tell the device (a replayed step's layers are served after its launch)."""
        start = time.perf_counter()
        self.flags.take()  # releases the device's waits itself where it fails
        self.counters.wait_s += time.perf_counter() - start
        try:
            self._compute(layer)
        except BaseException:
            self.flags.abort()
            raise
        self.flags.give()

    def _compute(self, layer: int) -> None:
        """The host's part of step 4: the layer's misses, summed into the host buffer ``_y``
        (zeros where the device holds every selection)."""
        start = time.perf_counter()
        missed = ~self._on_device_np
        ids = self._ids_np[missed]
        if len(ids):
            experts = self.layers[layer]
            self._y_np[:] = experts.forward_token(self._x_np, ids, self._weights_np[missed])
            self.counters.experts += len(ids)
            self.counters.bytes += len(ids) * experts.expert_bytes
        else:
            self._y_np[:] = 0
        self.counters.compute_s += time.perf_counter() - start
