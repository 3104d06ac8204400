"""The flag handoff of a layer to the host and back (``flag_handoff``): the publish kernel
writes the host buffers and the layer's number, the await kernel adds the host's share once
the host's flag holds that number, and gives up (adding nothing) when told to or when the
host never answers. On the CPU under Triton's interpreter, where each kernel runs to its end
when launched, so the host's flag is set before the await runs; on the GPU the decode step's
test (``test_expert_cache_triton``) runs the handoff inside a captured graph."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # the module's kernels are made for the interpreter when first imported
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")

from autotune.cache_runtime import flag_handoff  # noqa: E402
from autotune.cache_runtime.devices import CudaDevice, HostDevice  # noqa: E402
from autotune.cache_runtime.flag_handoff import ABORT, DONE, FAILED, READY, FlagHandoff, await_kernel  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
N_EMBD, K = 9000, 8  # n_embd above MAX_BLOCK: the kernels loop


@pytest.fixture
def handoff() -> FlagHandoff:
    return FlagHandoff(CudaDevice(DEVICE) if DEVICE.type == "cuda" else HostDevice(DEVICE))


def host_buffers(device) -> tuple[torch.Tensor, ...]:
    return (device.host_buffer((1, N_EMBD), torch.float32), device.host_buffer((1, K), torch.int64),
            device.host_buffer((1, K), torch.float32), device.host_buffer((1, K), torch.bool))


def synchronize() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def test_a_layer_goes_to_the_host_and_its_share_comes_back(handoff: FlagHandoff) -> None:
    host = host_buffers(handoff.device)
    y = handoff.device.host_buffer((1, N_EMBD), torch.float32)
    h = torch.randn(N_EMBD, device=DEVICE)
    before = h.clone()
    for step in range(1, 3):
        x = torch.randn(N_EMBD, device=DEVICE)
        ids = torch.randperm(64, device=DEVICE)[:K].to(torch.int32)
        weights = torch.rand(K, device=DEVICE)
        on_device = torch.rand(K, device=DEVICE) < 0.5
        handoff.publish(x, ids, weights, on_device, host)
        handoff.take()
        assert handoff.count == step and handoff.flags[int(READY)] == step
        assert torch.equal(host[0][0], x.cpu()) and host[1][0].tolist() == ids.tolist()
        assert torch.equal(host[2][0], weights.cpu()) and host[3][0].tolist() == on_device.tolist()
        y[0] = torch.arange(N_EMBD, dtype=torch.float32) * step
        handoff.give()
        assert handoff.flags[int(DONE)] == step
        handoff.await_add(h, y)
        synchronize()
        before += y[0].to(DEVICE)
        assert torch.allclose(h, before)
    assert handoff.flags[int(FAILED)] == 0


def test_an_await_that_is_aborted_or_never_answered_adds_nothing_and_says_so(handoff: FlagHandoff) -> None:
    y = handoff.device.host_buffer((1, N_EMBD), torch.float32).fill_(1.0)
    h = torch.zeros(N_EMBD, device=DEVICE)
    handoff.seq.fill_(5)  # the device published layer 5; the host answered 4
    handoff.flags[int(DONE)] = 4
    await_kernel[(1,)](h, handoff.seq, y.data_ptr(), handoff.flags.data_ptr(), 3, N=N_EMBD, BLOCK=flag_handoff.block(N_EMBD))
    synchronize()
    assert not h.any() and handoff.flags[int(FAILED)] == 1
    with pytest.raises(RuntimeError, match="stopped waiting"):
        handoff.take()
    assert handoff.count == 5 and handoff.flags.tolist() == [5, 5, 0, 0]  # back in step with the device
    handoff.seq.fill_(6)
    handoff.flags[int(ABORT)] = 1
    await_kernel[(1,)](h, handoff.seq, y.data_ptr(), handoff.flags.data_ptr(), 1 << 30, N=N_EMBD, BLOCK=flag_handoff.block(N_EMBD))
    synchronize()
    assert not h.any() and handoff.flags[int(FAILED)] == 1


def test_the_host_gives_up_on_a_device_that_publishes_nothing(handoff: FlagHandoff, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flag_handoff, "HOST_TIMEOUT_S", 0.05)
    with pytest.raises(RuntimeError, match="published no layer"):
        handoff.take()
    assert handoff.count == 0 and handoff.flags.tolist() == [0, 0, 0, 0]


COMPILE_FOR_SM90 = """
import json, sys
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile
from autotune.cache_runtime import flag_handoff as fh
target = GPUTarget("cuda", 90, 32)
publish = ASTSource(fh.publish_kernel, {
    "x_ptr": "*fp32", "ids_ptr": "*i64", "weights_ptr": "*fp32", "on_device_ptr": "*i1", "seq_ptr": "*i64",
    "x_addr": "i64", "ids_addr": "i64", "weights_addr": "i64", "on_device_addr": "i64", "flags_addr": "i64",
    "N": "constexpr", "K": "constexpr", "K_PAD": "constexpr", "BLOCK": "constexpr", "FENCE": "constexpr"},
    constexprs={"N": 4096, "K": 8, "K_PAD": 8, "BLOCK": 4096, "FENCE": True})
await_ = ASTSource(fh.await_kernel, {"h_ptr": "*fp32", "seq_ptr": "*i64", "y_addr": "i64", "flags_addr": "i64",
                                     "max_spins": "i32", "N": "constexpr", "BLOCK": "constexpr"},
                   constexprs={"N": 4096, "BLOCK": 4096})
json.dump({"publish": compile(publish, target=target, options={"num_warps": 4}).asm["ptx"],
           "await": compile(await_, target=target, options={"num_warps": 8}).asm["ptx"]}, sys.stdout)
"""


def test_the_kernels_compile_for_the_gpu_with_the_flag_written_behind_a_fence() -> None:
    """Compiled for sm_90 by Triton's own ptxas (no GPU needed; the interpreter checks no
    compiler rule): the publish fences its stores system-wide and waits for every thread
    before it writes the flag; the await reads the host's flag and share uncached."""
    import json
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", COMPILE_FOR_SM90], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ptx = json.loads(done.stdout)
    publish = ptx["publish"].splitlines()
    fence = next(i for i, line in enumerate(publish) if "fence.sc.sys" in line)
    barrier = next(i for i, line in enumerate(publish) if "bar.sync" in line)
    flag_store = max(i for i, line in enumerate(publish) if "st.global.wt.b64" in line)
    assert fence < barrier < flag_store
    assert sum("ld.volatile.global" in line for line in ptx["await"].splitlines()) >= 3
