"""What differs between running on the host's CPU and on a CUDA GPU, in one place.

``HostDevice`` and ``CudaDevice`` implement ``Device``: synchronizing, streams ("lanes") for
work beside the compute stream, pinned host memory, how a decode step's selections reach
the host, the lent slots' arena and the DMA prefetch's stager. ``platforms.select_platform``
builds one of them once; the engine, the expert cache and the prefetcher only call it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Callable, ClassVar, Protocol, Sequence

import torch

from autotune.cache_runtime.lent_slots import LentArena
from autotune.cache_runtime.selection_feed import HostSelections, SelectionFeed, SelectionRing

if TYPE_CHECKING:
    from autotune.cache_runtime.dma_prefetch import DmaStager


class CopyEvent(Protocol):
    """Says when work queued beside the compute stream has finished (a ``torch.cuda.Event``)."""

    def query(self) -> bool: ...

    def synchronize(self) -> None: ...


class Done:
    """The event of work already finished when it was queued (the host copies at once)."""

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        pass


class Lane(ABC):
    """Where work beside the compute stream runs."""

    @abstractmethod
    def fork(self, work: Callable[[], None]) -> None:
        """Run ``work`` after everything queued on the compute stream so far."""

    @abstractmethod
    def copy_behind(self, work: Callable[[], None]) -> CopyEvent:
        """``fork``, and an event that says when ``work`` has finished."""

    @abstractmethod
    def join(self) -> None:
        """Make the compute stream wait for the lane's work so far."""


class InlineLane(Lane):
    """The host runs the work at once, in its own order."""

    def fork(self, work: Callable[[], None]) -> None:
        work()

    def copy_behind(self, work: Callable[[], None]) -> CopyEvent:
        work()
        return Done()

    def join(self) -> None:
        pass


class StreamLane(Lane):
    """A CUDA stream of its own."""

    def __init__(self, device: torch.device, priority: int = 0):
        self.stream = torch.cuda.Stream(device, priority=priority)

    def fork(self, work: Callable[[], None]) -> None:
        self.stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.stream):
            work()

    def copy_behind(self, work: Callable[[], None]) -> CopyEvent:
        queued = torch.cuda.Event()
        queued.record()
        self.stream.wait_event(queued)
        with torch.cuda.stream(self.stream):
            work()
        done = torch.cuda.Event()
        done.record(self.stream)
        return done

    def join(self) -> None:
        torch.cuda.current_stream().wait_stream(self.stream)


class Device(ABC):
    """One device's ways; ``torch_device``: where the model's tensors live."""

    is_host: ClassVar[bool]  # its memory is the host's (experts there need no copy in host memory)
    captures_graphs: ClassVar[bool]  # a decode step can be captured as a CUDA graph

    def __init__(self, torch_device: torch.device):
        self.torch_device = torch_device

    @abstractmethod
    def synchronize(self) -> None:
        """Wait for every queued kernel and copy."""

    @abstractmethod
    def release_cached(self) -> None:
        """Wait for the device, then give its allocator's unused memory back."""

    @abstractmethod
    def host_copies(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """The experts' home in host memory, where this device's kernels read them."""

    @abstractmethod
    def upload(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Host tensors on the device, in stream order."""

    @abstractmethod
    def host_buffer(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """Host memory the device copies into asynchronously."""

    @abstractmethod
    def record(self) -> CopyEvent:
        """An event that says when the work queued on the compute stream so far has finished."""

    @abstractmethod
    def lane(self, priority: int = 0) -> Lane:
        """A new lane for work beside the compute stream."""

    @abstractmethod
    def selections(self, n_layers: int, top_k: int, ring: int) -> SelectionFeed:
        """How decode steps' selections reach the host (``ring``: steps that may be in flight)."""

    @abstractmethod
    def lent_arena(self, per_layer: Sequence[int], shapes: Sequence[torch.Size]) -> LentArena:
        """The lent slots' arena (``lent_slots``)."""

    @abstractmethod
    def dma_stager(self, mailbox: torch.Tensor, tags: torch.Tensor, ring: tuple[torch.Tensor, ...],
                   home: list[tuple[torch.Tensor, ...]], depth: int) -> DmaStager:
        """The DMA prefetch's stager, running."""

    @abstractmethod
    def publish(self, stager: DmaStager, mailbox: torch.Tensor, seq: torch.Tensor, layer: int,
                pred: torch.Tensor, table: torch.Tensor, home: torch.Tensor) -> None:
        """Hand ``layer``'s predicted experts (``pred``) that read home to the stager;
        ``table``/``home``: the layer's rows of the expert table and of the home addresses."""


class HostDevice(Device):
    """The CPU: everything runs at once, in the host's order."""

    is_host = True
    captures_graphs = False

    def synchronize(self) -> None:
        pass

    def release_cached(self) -> None:
        pass

    def host_copies(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        return tensors  # the file's memory map

    def upload(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return list(tensors)

    def host_buffer(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype)

    def record(self) -> CopyEvent:
        return Done()

    def lane(self, priority: int = 0) -> Lane:
        return InlineLane()

    def selections(self, n_layers: int, top_k: int, ring: int) -> SelectionFeed:
        return HostSelections()

    def lent_arena(self, per_layer: Sequence[int], shapes: Sequence[torch.Size]) -> LentArena:
        return LentArena(per_layer, shapes, self.torch_device)

    def dma_stager(self, mailbox: torch.Tensor, tags: torch.Tensor, ring: tuple[torch.Tensor, ...],
                   home: list[tuple[torch.Tensor, ...]], depth: int) -> DmaStager:
        from autotune.cache_runtime.dma_prefetch import DmaStager

        return DmaStager(mailbox, tags, ring, home, depth, copy_stream=None)  # staged in publish

    def publish(self, stager: DmaStager, mailbox: torch.Tensor, seq: torch.Tensor, layer: int,
                pred: torch.Tensor, table: torch.Tensor, home: torch.Tensor) -> None:
        pred = pred.long()
        at_home = table[pred, 0] == home[pred, 0]
        stager.stage(int(seq), layer, torch.where(at_home, pred, -1).numpy())


class CudaDevice(Device):
    """A CUDA GPU: side streams, pinned host memory, events polled rather than waited on."""

    is_host = False
    captures_graphs = True

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.torch_device)

    def release_cached(self) -> None:
        torch.cuda.synchronize(self.torch_device)
        torch.cuda.empty_cache()

    def host_copies(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        from autotune.cache_runtime.host_memory import copy_into_arenas, pin_with_threads

        pin_with_threads()
        return copy_into_arenas(tensors)

    def upload(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [t.pin_memory().to(self.torch_device, non_blocking=True) for t in tensors]

    def host_buffer(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, pin_memory=True)

    def record(self) -> CopyEvent:
        event = torch.cuda.Event()
        event.record()
        return event

    def lane(self, priority: int = 0) -> Lane:
        return StreamLane(self.torch_device, priority)

    def selections(self, n_layers: int, top_k: int, ring: int) -> SelectionFeed:
        return SelectionRing(self.host_buffer((ring, n_layers, top_k), torch.int64))

    def lent_arena(self, per_layer: Sequence[int], shapes: Sequence[torch.Size]) -> LentArena:
        return LentArena(per_layer, shapes, self.torch_device, guard_room=True)

    def dma_stager(self, mailbox: torch.Tensor, tags: torch.Tensor, ring: tuple[torch.Tensor, ...],
                   home: list[tuple[torch.Tensor, ...]], depth: int) -> DmaStager:
        from autotune.cache_runtime.dma_prefetch import DmaStager

        # its own stream: on the cache's copy stream, a rebalance's copies wait for every step the
        # host has queued, and prefetch copies queued behind them would land steps too late
        stager = DmaStager(mailbox, tags, ring, home, depth, torch.cuda.Stream(self.torch_device))
        stager.start()
        return stager

    def publish(self, stager: DmaStager, mailbox: torch.Tensor, seq: torch.Tensor, layer: int,
                pred: torch.Tensor, table: torch.Tensor, home: torch.Tensor) -> None:
        import triton

        from autotune.cache_runtime.dma_prefetch import publish_kernel

        k = pred.numel()
        publish_kernel[(1,)](pred, table, home, seq, mailbox.data_ptr(), layer, TOP_K=k,
                             K_PAD=triton.next_power_of_2(k))
