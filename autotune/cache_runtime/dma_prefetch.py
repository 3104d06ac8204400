"""Prefetch copies made by the DMA engines (``prefetch_engine="dma"``), issued by a host thread.

The SM copy programs of ``prefetch.py`` slow the compute kernels beside them (up to 2x for
the same bytes, ``studies/expert_cache/copy_interference``); the DMA engines barely do. A DMA
copy's addresses are fixed when it is issued, and the predictions are made on the device
inside the captured step, so the host issues the copies:

1. the step's side stream writes each layer's predicted experts that are not in a slot (the
   others as -1) and the step's number into a *mailbox* in pinned host memory
   (``publish_kernel``);
2. a host thread (``DmaStager``) reads the mailbox in step and layer order and, for each
   expert there, queues on a copy stream the copy home -> ring row, then the row's tag:
   (step, layer, expert);
3. on the compute stream, right after layer m's router, ``prefetch.ring_claim_kernel`` points
   layer m's entries at the ring rows whose tag names this step and layer (the copy has
   landed) and whose expert is still read from home. An entry not claimed reads home.

Why a row is never overwritten while the compute stream may read it: the mailbox entry of
(step s, layer m) is written after the compute stream passed layer m - d's router; the host
handles entries in increasing (step, layer) order, and reuses layer m's rows only for layer
m + d + 1 of the same step or a later one, so the compute stream has finished the previous
user of those rows (layer m) before the copy starts. A tag names its step and layer, so only
that layer of that step claims the row: an old tag is never claimed again, and a copy that
lands too late is never used. A torn mailbox read only copies the wrong experts: the tags say
which expert each row holds.

Which experts are in slots is read from the device's own expert table when the predictions are
published, not from the host's view: the host runs steps ahead of the device and commits a
rebalance's admissions before the device's table says so, and a copy it skipped for an expert
the device still reads from home left the claim waiting in vain (run 8 in studies/expert_cache).
The table only changes between steps, so the claim sees the residency the publish saw.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
import triton
import triton.language as tl

IDLE_SPIN_S = 0.002  # spin this long for the next mailbox entry, then sleep between looks
IDLE_SLEEP_S = 0.0005
SWITCH_INTERVAL_S = 0.0002  # the GIL's hand-over interval while a stager runs (Python's default: 5 ms)


@triton.jit
def publish_kernel(pred_ptr, table_ptr, home_ptr, seq_ptr, mailbox_addr, layer,
                   TOP_K: tl.constexpr, K_PAD: tl.constexpr):
    """Write layer's predicted experts that read home (-1 for those in slots), then the step's
    number, into its mailbox row (host memory; written through to it, not kept in the GPU's
    cache). ``table_ptr``/``home_ptr``: the layer's rows. Triton passes an address below 2**31
    as an i32, so it is widened before it becomes a pointer."""
    mailbox = mailbox_addr.to(tl.int64).to(tl.pointer_type(tl.int64)) + layer * (TOP_K + 1)
    j = tl.arange(0, K_PAD)
    ok = j < TOP_K
    e = tl.load(pred_ptr + j, mask=ok, other=0).to(tl.int64)
    at_home = tl.load(table_ptr + e * 3, mask=ok, other=0) == tl.load(home_ptr + e * 3, mask=ok, other=1)
    tl.store(mailbox + j, tl.where(at_home, e, -1), mask=ok, cache_modifier=".wt")
    tl.store(mailbox + TOP_K, tl.load(seq_ptr), cache_modifier=".wt")


def tag(seq: int, layer: int, expert: int, n_layers: int, n_expert: int) -> int:
    """What a ring row's tag says once expert's copy for (step seq, layer) has landed."""
    return (seq * n_layers + layer) * n_expert + expert


class TorchCopies:
    """Copies and tags through torch ops, done at once (the CPU path, whose stager runs in the
    prefetcher's own calls)."""

    def __init__(self, ring: tuple[torch.Tensor, ...], home: list[tuple[torch.Tensor, ...]], tags: torch.Tensor):
        self.ring, self.home, self.tags = ring, home, tags

    def bind_thread(self) -> None:
        """Nothing to set up on the calling thread."""

    def copy(self, row: int, layer: int, expert: int) -> None:
        for dst, src in zip(self.ring, self.home[layer]):
            dst[row].copy_(src[expert])

    def write_tag(self, row: int, value: int) -> None:
        self.tags[row] = value


class DriverCopies:
    """Copies and tags queued on ``stream`` through the CUDA driver, called by ctypes.

    A driver call takes a microsecond or two, a torch op tens: on the GPU (run 7 in
    studies/expert_cache) the stager queued a layer's copies about 30 µs after the step had
    published its predictions. The tag is written by ``cuStreamWriteValue64`` after the
    copies, in stream order and behind a memory fence, so a tag is seen only after its bytes.
    The driver is called with the GIL held (``PyDLL``): its calls only queue work, and
    releasing the GIL around each would hand it to the decode thread every time.
    """

    def __init__(self, ring: tuple[torch.Tensor, ...], home: list[tuple[torch.Tensor, ...]], tags: torch.Tensor,
                 stream: torch.cuda.Stream):
        self.lib = ctypes.PyDLL("libcuda.so.1")
        self.ring_addr = [[m[i].data_ptr() for m in ring] for i in range(ring[0].shape[0])]
        self.home_addr = [[[m[e].data_ptr() for m in mats] for e in range(mats[0].shape[0])] for mats in home]
        self.nbytes = [[m[0].nbytes for m in mats] for mats in home]
        self.tag_addr = [tags[i].data_ptr() for i in range(tags.numel())]
        self.stream = ctypes.c_void_p(stream.cuda_stream)
        self.ctx = ctypes.c_void_p()
        self._check(self.lib.cuCtxGetCurrent(ctypes.byref(self.ctx)), "cuCtxGetCurrent")
        if not self.ctx.value:
            raise RuntimeError("no current CUDA context: create the copier after torch has used the GPU")
        self.memcpy = self.lib.cuMemcpyHtoDAsync_v2
        self.memcpy.argtypes = [ctypes.c_uint64, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        self.write_value = getattr(self.lib, "cuStreamWriteValue64_v2", None) or self.lib.cuStreamWriteValue64
        self.write_value.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint]

    def bind_thread(self) -> None:
        """Make the context torch uses current on the calling thread (driver calls need it)."""
        self._check(self.lib.cuCtxSetCurrent(self.ctx), "cuCtxSetCurrent")

    def copy(self, row: int, layer: int, expert: int) -> None:
        for dst, src, n in zip(self.ring_addr[row], self.home_addr[layer][expert], self.nbytes[layer]):
            self._check(self.memcpy(dst, src, n, self.stream), "cuMemcpyHtoDAsync")

    def write_tag(self, row: int, value: int) -> None:
        self._check(self.write_value(self.stream, self.tag_addr[row], value, 0), "cuStreamWriteValue64")

    def _check(self, result: int, call: str) -> None:
        if result != 0:
            name = ctypes.c_char_p()
            self.lib.cuGetErrorName(result, ctypes.byref(name))
            raise RuntimeError(f"{call} failed: {(name.value or b'?').decode()} ({result})")


class DmaStager:
    """Queues the copies of predicted non-resident experts (see the module).

    On the GPU ``start`` runs a daemon thread that reads the mailbox; on the CPU the
    prefetcher calls ``stage`` itself, in step order.
    """

    def __init__(self, mailbox: torch.Tensor, tags: torch.Tensor, ring: tuple[torch.Tensor, ...],
                 home: list[tuple[torch.Tensor, ...]], depth: int, copy_stream: torch.cuda.Stream | None):
        self.mailbox, self.depth = mailbox, depth
        self.n_layers, width = mailbox.shape
        self.k = width - 1
        self.n_expert = home[0][0].shape[0]
        self.copies = (TorchCopies(ring, home, tags) if copy_stream is None
                       else DriverCopies(ring, home, tags, copy_stream))
        self.copied = 0  # experts copied
        self.late = 0  # mailbox entries skipped: the compute stream had passed the layer, or a newer step overwrote it
        self._issue = threading.Lock()  # held while queueing a layer's copies; capture holds it to pause
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: Exception | None = None  # what stopped the thread
        self._switch_interval = sys.getswitchinterval()

    def start(self) -> None:
        """Read the mailbox on a thread from now on (its entries so far are old)."""
        sys.setswitchinterval(min(self._switch_interval, SWITCH_INTERVAL_S))
        self._thread = threading.Thread(target=self._run, args=(int(self.mailbox[1, self.k]) + 1,),
                                        name="autotune-dma-prefetch", daemon=True)
        self._thread.start()

    def stage(self, seq: int, layer: int, experts: np.ndarray) -> None:
        """Queue the copies of ``experts`` predicted for (step seq, layer), each followed by its
        row's tag (-1: in a slot, nothing to copy)."""
        base = (layer % (self.depth + 1)) * self.k
        for j, e in enumerate(experts.tolist()):
            if e >= 0:
                self.copies.copy(base + j, layer, e)
                self.copies.write_tag(base + j, tag(seq, layer, e, self.n_layers, self.n_expert))
                self.copied += 1

    @contextmanager
    def paused(self) -> Iterator[None]:
        """No copy is queued inside (a CUDA graph capture must not see another thread's work)."""
        with self._issue:
            yield

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            sys.setswitchinterval(self._switch_interval)

    def raise_if_failed(self) -> None:
        """Raise what stopped the thread, if anything did (the step would go on without prefetch)."""
        if self.error is not None:
            raise RuntimeError(f"DMA prefetch stopped: {self.error}") from self.error

    def _run(self, seq: int) -> None:
        try:
            self._stage_published(seq)
        except Exception as exc:  # noqa: BLE001 - kept for the decode thread, which raises it
            self.error = exc

    def _stage_published(self, seq: int) -> None:
        box = self.mailbox.numpy()
        first = layer = 1  # layer 0 has no prediction
        self.copies.bind_thread()
        with torch.inference_mode():
            while not self._stop.is_set():
                published = self._wait_for(box, layer, seq)
                if published is None:
                    return
                if published > seq:  # behind: a newer step overwrote this layer's entry
                    self.late += 1
                    seq = published
                if self._passed(box, seq, layer):
                    self.late += 1
                else:
                    experts = box[layer, :self.k].copy()
                    with self._issue:
                        self.stage(seq, layer, experts)
                layer += 1
                if layer == self.n_layers:
                    seq, layer = seq + 1, first

    def _wait_for(self, box: np.ndarray, layer: int, seq: int) -> int | None:
        """The step number in layer's mailbox row once it reaches seq (None: stopped)."""
        started = time.perf_counter()
        while not self._stop.is_set():
            published = int(box[layer, self.k])
            if published >= seq:
                return published
            time.sleep(0 if time.perf_counter() - started < IDLE_SPIN_S else IDLE_SLEEP_S)
        return None

    def _passed(self, box: np.ndarray, seq: int, layer: int) -> bool:
        """Whether the compute stream has already run layer's router in step seq (a copy is too late)."""
        ahead = layer + self.depth
        return ahead < self.n_layers and int(box[ahead, self.k]) >= seq
