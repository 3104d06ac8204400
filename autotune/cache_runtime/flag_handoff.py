"""A decode step's layer handed to the host and back through flags in pinned host memory, so
the step stays one CUDA graph while the CPU computes each layer's misses (``cpu_misses``).

Per layer, in stream order:
1. ``publish_kernel`` writes the layer's expert input, selected ids, routing weights and the
   device's choice into the host buffers, then (behind a system-scope fence) the layer's
   number into the ``READY`` flag; the number is the device's count of publishes so far;
2. the device's expert kernels run their share;
3. ``await_kernel`` spins on the ``DONE`` flag until it holds that number, then adds the host
   buffer ``y`` into the hidden state.

The host, after launching the step, serves the layers in order (``take``, compute, ``give``):
it spins until ``READY`` holds the next number, computes the misses into ``y``, and writes the
number into ``DONE``. The host writes ``y`` before ``DONE`` (x86 keeps stores in order), and a
layer's buffers are rewritten only after the device has read them: the next publish follows
the await in stream order. No graph launch, event or copy lies between the device's part of a
layer and the host's (a chain of graphs cut at each handoff, which this replaced, decoded 24%
slower: studies/hybrid, call 10).

Where the host fails, ``abort`` releases every waiting ``await_kernel`` (they add nothing) and
puts the host's count back in step with the device's. An await that gives up (the host never
answered) sets ``FAILED``, and the host refuses to serve on from there.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import torch
import triton
import triton.language as tl

if TYPE_CHECKING:
    from autotune.cache_runtime.devices import Device

# the flags' slots (constexpr: the kernels read them too)
READY, DONE, ABORT, FAILED = (tl.constexpr(slot) for slot in range(4))
# the host's share is read in one round of loads up to this width (each round waits on PCIe)
MAX_BLOCK = 8192
AWAIT_WARPS = 8
# an await gives up after this many reads of DONE (each crosses PCIe: a microsecond or more),
# so a step whose host died ends with FAILED set rather than hanging the device
MAX_SPINS = 5_000_000
HOST_TIMEOUT_S = 30.0  # the host gives up on a publish after this long (the device hung or died)
SPINS_PER_CLOCK_CHECK = 4096


@triton.jit
def _fence_system(value, FENCE: tl.constexpr):
    """``value``, once this thread's earlier stores are visible to the host (``FENCE``: off in
    Triton's interpreter, where there is no PTX and every store is already the host's)."""
    if FENCE:
        value = tl.inline_asm_elementwise("fence.sc.sys;\n\tmov.b64 $0, $1;", "=l,l", [value],
                                          dtype=tl.int64, is_pure=False, pack=1)
    return value


@triton.jit
def publish_kernel(x_ptr, ids_ptr, weights_ptr, on_device_ptr, seq_ptr, x_addr, ids_addr, weights_addr,
                   on_device_addr, flags_addr, N: tl.constexpr, K: tl.constexpr, K_PAD: tl.constexpr,
                   BLOCK: tl.constexpr, FENCE: tl.constexpr):
    """Step 1 of the module's list (one program). The host buffers are given by address (an
    address below 2**31 arrives as an i32, hence the widening)."""
    host_x = tl.multiple_of(x_addr.to(tl.int64).to(tl.pointer_type(tl.float32)), 16)  # pinned: page-aligned
    host_ids = ids_addr.to(tl.int64).to(tl.pointer_type(tl.int64))
    host_weights = weights_addr.to(tl.int64).to(tl.pointer_type(tl.float32))
    host_on_device = on_device_addr.to(tl.int64).to(tl.pointer_type(tl.int8))
    flags = flags_addr.to(tl.int64).to(tl.pointer_type(tl.int64))
    for start in range(0, N, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        ok = offs < N
        tl.store(host_x + offs, tl.load(x_ptr + offs, mask=ok).to(tl.float32), mask=ok, cache_modifier=".wt")
    j = tl.arange(0, K_PAD)
    ok = j < K
    tl.store(host_ids + j, tl.load(ids_ptr + j, mask=ok).to(tl.int64), mask=ok, cache_modifier=".wt")
    tl.store(host_weights + j, tl.load(weights_ptr + j, mask=ok).to(tl.float32), mask=ok, cache_modifier=".wt")
    tl.store(host_on_device + j, tl.load(on_device_ptr + j, mask=ok).to(tl.int8), mask=ok, cache_modifier=".wt")
    one = tl.arange(0, 1)
    seq = tl.load(seq_ptr + one) + 1
    tl.store(seq_ptr + one, seq)
    seq = _fence_system(seq, FENCE)
    tl.debug_barrier()  # every thread's stores are fenced before the flag is written
    tl.store(flags + READY + one, seq, cache_modifier=".wt")


@triton.jit
def await_kernel(h_ptr, seq_ptr, y_addr, flags_addr, max_spins, N: tl.constexpr, BLOCK: tl.constexpr):
    """Step 3 of the module's list (one program): wait for the host's ``DONE``, add ``y`` to ``h``."""
    host_y = tl.multiple_of(y_addr.to(tl.int64).to(tl.pointer_type(tl.float32)), 16)  # pinned: page-aligned
    flags = flags_addr.to(tl.int64).to(tl.pointer_type(tl.int64))
    expected = tl.load(seq_ptr)
    done = tl.load(flags + DONE, volatile=True)
    abort = tl.load(flags + ABORT, volatile=True)
    spins = 0
    while (done != expected) & (abort == 0) & (spins < max_spins):
        done = tl.load(flags + DONE, volatile=True)
        abort = tl.load(flags + ABORT, volatile=True)
        spins += 1
    served = done == expected
    if done != expected:
        tl.store(flags + FAILED, 1, cache_modifier=".wt")
    for start in range(0, N, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        ok = offs < N
        y = tl.load(host_y + offs, mask=ok & served, other=0.0, volatile=True)
        h = tl.load(h_ptr + offs, mask=ok)
        tl.store(h_ptr + offs, (h.to(tl.float32) + y).to(h.dtype), mask=ok)


def block(n: int) -> int:
    """The kernels' block for a hidden state of ``n`` values."""
    return min(triton.next_power_of_2(n), MAX_BLOCK)


class FlagHandoff:
    """The flags and the device's count of publishes for one ``CpuMisses`` (see the module)."""

    def __init__(self, device: Device):
        self.device = device
        self.flags = device.host_buffer((4,), torch.int64).zero_()
        self._flags = self.flags.numpy()
        self.seq = torch.zeros(1, dtype=torch.int64, device=device.torch_device)
        self.count = 0  # publishes the host has taken: the device's ``seq`` once a step is served
        self.fence = device.torch_device.type == "cuda"

    def publish(self, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, on_device: torch.Tensor,
                host: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
        """Queue step 1 for one token's ``x`` (n_embd,), ``ids``, ``weights``, ``on_device`` (k,);
        ``host``: the host buffers of x, ids (int64), weights (float32) and on_device (bool)."""
        k = ids.numel()
        publish_kernel[(1,)](x, ids, weights, on_device, self.seq, *(t.data_ptr() for t in host),
                             self.flags.data_ptr(), N=x.numel(), K=k, K_PAD=triton.next_power_of_2(k),
                             BLOCK=block(x.numel()), FENCE=self.fence)

    def await_add(self, h: torch.Tensor, host_y: torch.Tensor) -> None:
        """Queue step 3: ``h`` (n_embd,) += the host buffer ``host_y`` once the host is done."""
        await_kernel[(1,)](h, self.seq, host_y.data_ptr(), self.flags.data_ptr(), MAX_SPINS, N=h.numel(),
                           BLOCK=block(h.numel()), num_warps=AWAIT_WARPS)

    def take(self) -> None:
        """Wait until the device has published the next layer."""
        expected = self.count + 1
        flags = self._flags
        if flags[FAILED]:
            self.abort()
            raise RuntimeError("the device stopped waiting for the CPU's share of a layer")
        if flags[READY] != expected:
            deadline = time.perf_counter() + HOST_TIMEOUT_S
            spins = 0
            while flags[READY] != expected:
                spins += 1
                if spins % SPINS_PER_CLOCK_CHECK == 0 and time.perf_counter() > deadline:
                    self.abort()
                    raise RuntimeError(f"the device published no layer for the CPU in {HOST_TIMEOUT_S:.0f} s")
        self.count = expected

    def give(self) -> None:
        """Tell the device the layer taken last is computed (its ``y`` written)."""
        self._flags[DONE] = self.count

    def abort(self) -> None:
        """Release the device's waits, let it finish, and take up its count again."""
        self._flags[ABORT] = 1
        self.device.synchronize()
        self.count = int(self.seq.item())
        self._flags[:] = np.array([self.count, self.count, 0, 0], dtype=np.int64)
