"""The DMA prefetch's host thread against a mailbox written by hand (as the decode step
writes it): copies of predicted non-resident experts with their rows' tags, entries in
(step, layer) order, copies skipped when the compute side has passed their layer, and a
jump to the newest step when the thread falls behind."""

from __future__ import annotations

import os
import threading
import time
from typing import Callable

import pytest
import torch

if not torch.cuda.is_available():  # the module's kernels are made for the interpreter when first imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

from autotune.cache_runtime.dma_prefetch import DmaStager, DriverCopies, tag  # noqa: E402

N_LAYERS, N_EXPERT, K, DEPTH = 4, 6, 2, 1


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the stager did not get there"
        time.sleep(0.001)


def publish(mailbox: torch.Tensor, seq: int, layer: int, experts: list[int]) -> None:
    """What the step's publish kernel does: the predictions that read home (else -1), then the step's number."""
    mailbox[layer, :K] = torch.tensor(experts)
    mailbox[layer, K] = seq


def test_the_stager_thread_copies_in_step_and_layer_order() -> None:
    home = [tuple(torch.randint(0, 255, (N_EXPERT, n), dtype=torch.uint8) for n in (8, 8, 16))
            for _ in range(N_LAYERS)]
    ring = tuple(torch.zeros((DEPTH + 1) * K, m.shape[1], dtype=torch.uint8) for m in home[0])
    tags = torch.full(((DEPTH + 1) * K,), -1, dtype=torch.int64)
    mailbox = torch.zeros(N_LAYERS, K + 1, dtype=torch.int64)
    stager = DmaStager(mailbox, tags, ring, home, DEPTH, copy_stream=None)
    stager.start()
    try:
        def landed(seq: int, layer: int, j: int, e: int) -> bool:
            row = (layer % (DEPTH + 1)) * K + j
            return int(tags[row]) == tag(seq, layer, e, N_LAYERS, N_EXPERT)

        publish(mailbox, 1, 1, [-1, 5])  # step 1, layer 1: the first prediction is in a slot, 5 is copied
        wait_until(lambda: landed(1, 1, 1, 5))
        assert int(tags[2]) == -1 and stager.copied == 1
        assert all(torch.equal(r[3], h[5]) for r, h in zip(ring, home[1]))
        # layer 3's entry is there before layer 2's: the compute side has passed layer 2
        publish(mailbox, 1, 3, [0, 1])
        publish(mailbox, 1, 2, [4, 2])
        wait_until(lambda: landed(1, 3, 0, 0) and landed(1, 3, 1, 1))
        assert stager.late == 1 and stager.copied == 3
        # the next entry the thread sees is step 5's: it goes on from there
        publish(mailbox, 5, 1, [1, 2])
        wait_until(lambda: landed(5, 1, 0, 1) and landed(5, 1, 1, 2))
        assert stager.late == 2 and stager.copied == 5
    finally:
        stager.close()


def test_a_paused_stager_queues_nothing() -> None:
    home = [tuple(torch.zeros(N_EXPERT, 8, dtype=torch.uint8) for _ in range(3)) for _ in range(N_LAYERS)]
    ring = tuple(torch.zeros((DEPTH + 1) * K, 8, dtype=torch.uint8) for _ in range(3))
    tags = torch.full(((DEPTH + 1) * K,), -1, dtype=torch.int64)
    mailbox = torch.zeros(N_LAYERS, K + 1, dtype=torch.int64)
    stager = DmaStager(mailbox, tags, ring, home, DEPTH, copy_stream=None)
    stager.start()
    try:
        with stager.paused():
            publish(mailbox, 1, 1, [1, 2])
            time.sleep(0.05)
            assert stager.copied == 0 and (tags == -1).all()
        wait_until(lambda: stager.copied == 2)
    finally:
        stager.close()


@pytest.mark.gpu  # the CUDA driver's copies
def test_driver_copies_land_before_their_tag_on_another_thread() -> None:
    home = [tuple(torch.randint(0, 255, (N_EXPERT, n), dtype=torch.uint8).pin_memory() for n in (4096, 4096, 8192))
            for _ in range(N_LAYERS)]
    ring = tuple(torch.zeros(2, m.shape[1], dtype=torch.uint8, device="cuda") for m in home[0])
    tags = torch.full((2,), -1, dtype=torch.int64, device="cuda")
    stream = torch.cuda.Stream()
    copies = DriverCopies(ring, home, tags, stream)

    def work() -> None:
        copies.bind_thread()
        copies.copy(1, 2, 4)
        copies.write_tag(1, 12345)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    stream.synchronize()
    assert tags.tolist() == [-1, 12345]
    assert all(torch.equal(r[1].cpu(), h[4]) for r, h in zip(ring, home[2]))
    assert all(int(r[0].abs().sum()) == 0 for r in ring)


def test_a_failed_stager_thread_is_raised_in_the_decode_thread() -> None:
    """A copy that fails (here a torch error) stops the thread; the caller hears of it."""
    home = [tuple(torch.zeros(N_EXPERT, 8, dtype=torch.uint8) for _ in range(3)) for _ in range(N_LAYERS)]
    ring = tuple(torch.zeros((DEPTH + 1) * K, 4, dtype=torch.uint8) for _ in range(3))  # rows too short
    tags = torch.full(((DEPTH + 1) * K,), -1, dtype=torch.int64)
    mailbox = torch.zeros(N_LAYERS, K + 1, dtype=torch.int64)
    stager = DmaStager(mailbox, tags, ring, home, DEPTH, copy_stream=None)
    stager.start()
    try:
        stager.raise_if_failed()  # nothing yet
        publish(mailbox, 1, 1, [1, 2])
        wait_until(lambda: stager.error is not None)
        with pytest.raises(RuntimeError, match="DMA prefetch stopped"):
            stager.raise_if_failed()
    finally:
        stager.close()
