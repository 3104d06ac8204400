"""ggml's CPU backend through ctypes: the kernels llama.cpp computes with on the CPU.

Only what the CPU expert path needs is bound: contexts that describe tensors, the ops it
builds graphs from, and a CPU backend with a thread count. A tensor can be bound to memory
that already exists (a torch tensor's, such as the experts' pinned home) through a CPU buffer
over that pointer, so ggml reads the bytes where they are; or hold a copy rearranged by
ggml-cpu's CPU_REPACK buffer type (llama.cpp's default for CPU weights: rows interleaved for
its gemv/gemm kernels, still quantized) where that type covers the op.

ggml is reached through libllama's handle, as ``backends.llama_cpp.buft_overrides`` explains
(opening a library by path could load a second ggml). Every function gets its own ctypes
prototype, so nothing is declared on that shared handle; the calls release the GIL.
"""

from __future__ import annotations

import ctypes
import functools
from ctypes import c_bool, c_int, c_int64, c_size_t, c_void_p

import torch
from gguf import GGMLQuantizationType

TENSOR_ALIGNMENT = 32  # ggml's: the start of memory a CPU buffer wraps
GRAPH_SIZE = 16  # nodes a graph may hold (the expert graph has six, nine with biases)
REPACK_BUFFER_TYPE = b"CPU_REPACK"  # ggml-cpu's name for it
GGML_MAX_N_THREADS = 512  # ggml.h: the size of a thread pool's cpu mask
GGML_STATUS_SUCCESS = 0


class _InitParams(ctypes.Structure):
    """``struct ggml_init_params`` (ggml.h)."""

    _fields_ = [("mem_size", c_size_t), ("mem_buffer", c_void_p), ("no_alloc", c_bool)]


class _ThreadpoolParams(ctypes.Structure):
    """``struct ggml_threadpool_params`` (ggml.h); ``ggml_threadpool_params_init`` fills it."""

    _fields_ = [("cpumask", c_bool * GGML_MAX_N_THREADS), ("n_threads", c_int), ("prio", c_int),
                ("poll", ctypes.c_uint32), ("strict_cpu", c_bool), ("paused", c_bool)]


class _Api:
    """The bound functions, named as in ggml.h without the ``ggml_`` prefix."""

    def __init__(self, lib: ctypes.CDLL):
        def bind(name: str, restype, *argtypes):
            return ctypes.CFUNCTYPE(restype, *argtypes)((name, lib))

        self.init = bind("ggml_init", c_void_p, _InitParams)
        self.free = bind("ggml_free", None, c_void_p)
        self.tensor_overhead = bind("ggml_tensor_overhead", c_size_t)
        self.graph_overhead_custom = bind("ggml_graph_overhead_custom", c_size_t, c_size_t, c_bool)
        self.new_tensor_2d = bind("ggml_new_tensor_2d", c_void_p, c_void_p, c_int, c_int64, c_int64)
        self.new_tensor_3d = bind("ggml_new_tensor_3d", c_void_p, c_void_p, c_int, c_int64, c_int64, c_int64)
        self.nbytes = bind("ggml_nbytes", c_size_t, c_void_p)
        self.get_data = bind("ggml_get_data", c_void_p, c_void_p)
        self.mul_mat_id = bind("ggml_mul_mat_id", c_void_p, c_void_p, c_void_p, c_void_p, c_void_p)
        self.swiglu_split = bind("ggml_swiglu_split", c_void_p, c_void_p, c_void_p, c_void_p)
        self.swiglu_oai = bind("ggml_swiglu_oai", c_void_p, c_void_p, c_void_p, c_void_p, ctypes.c_float,
                               ctypes.c_float)
        self.add_id = bind("ggml_add_id", c_void_p, c_void_p, c_void_p, c_void_p, c_void_p)
        self.new_graph_custom = bind("ggml_new_graph_custom", c_void_p, c_void_p, c_size_t, c_bool)
        self.build_forward_expand = bind("ggml_build_forward_expand", None, c_void_p, c_void_p)
        self.backend_cpu_init = bind("ggml_backend_cpu_init", c_void_p)
        self.backend_cpu_set_n_threads = bind("ggml_backend_cpu_set_n_threads", None, c_void_p, c_int)
        self.backend_graph_compute = bind("ggml_backend_graph_compute", c_int, c_void_p, c_void_p)
        self.backend_free = bind("ggml_backend_free", None, c_void_p)
        self.backend_cpu_buffer_from_ptr = bind("ggml_backend_cpu_buffer_from_ptr", c_void_p, c_void_p, c_size_t)
        self.backend_tensor_alloc = bind("ggml_backend_tensor_alloc", c_int, c_void_p, c_void_p, c_void_p)
        self.backend_buffer_free = bind("ggml_backend_buffer_free", None, c_void_p)
        self.backend_buffer_get_base = bind("ggml_backend_buffer_get_base", c_void_p, c_void_p)
        self.backend_buft_name = bind("ggml_backend_buft_name", ctypes.c_char_p, c_void_p)
        self.backend_buft_alloc_buffer = bind("ggml_backend_buft_alloc_buffer", c_void_p, c_void_p, c_size_t)
        self.backend_tensor_set = bind("ggml_backend_tensor_set", None, c_void_p, c_void_p, c_size_t, c_size_t)
        self.backend_cpu_reg = bind("ggml_backend_cpu_reg", c_void_p)
        self.backend_reg_dev_get = bind("ggml_backend_reg_dev_get", c_void_p, c_void_p, c_size_t)
        self.backend_reg_get_proc_address = bind("ggml_backend_reg_get_proc_address", c_void_p, c_void_p,
                                                 ctypes.c_char_p)
        self.backend_dev_supports_op = bind("ggml_backend_dev_supports_op", c_bool, c_void_p, c_void_p)
        params = ctypes.POINTER(_ThreadpoolParams)
        self.threadpool_params_init = bind("ggml_threadpool_params_init", None, params, c_int)
        self.threadpool_new = bind("ggml_threadpool_new", c_void_p, params)
        self.threadpool_free = bind("ggml_threadpool_free", None, c_void_p)
        self.backend_cpu_set_threadpool = bind("ggml_backend_cpu_set_threadpool", None, c_void_p, c_void_p)


@functools.cache
def api() -> _Api:
    """ggml's functions (importing llama_cpp loads its libraries on first use)."""
    import llama_cpp.llama_cpp as llama_api

    return _Api(llama_api._lib)


def cpu_features() -> set[str]:
    """The features this build of ggml's CPU backend has ("AVX2", "REPACK", "OPENMP", ...), as
    llama.cpp's system info lists them."""
    import llama_cpp.llama_cpp as llama_api

    info = llama_api.llama_print_system_info().decode()
    return {part.split("=")[0].strip() for part in info.replace("CPU :", "|").split("|")
            if part.strip().endswith("= 1")}


def ggml_type(name: str) -> int:
    """The ``enum ggml_type`` value of a GGML type name (gguf's enum mirrors it)."""
    return GGMLQuantizationType[name].value


GGML_F32 = ggml_type("F32")
GGML_I32 = ggml_type("I32")


def _checked(pointer: int | None, what: str) -> int:
    if not pointer:
        raise MemoryError(f"ggml could not make {what}")
    return pointer


class Context:
    """A ggml context: tensor and graph descriptions, and with ``alloc`` their data too."""

    def __init__(self, data_bytes: int, n_tensors: int, alloc: bool):
        lib = api()
        size = data_bytes + n_tensors * (lib.tensor_overhead() + TENSOR_ALIGNMENT) \
            + lib.graph_overhead_custom(GRAPH_SIZE, False)
        self.handle = _checked(lib.init(_InitParams(size, None, not alloc)), f"a context of {size} bytes")

    def tensor(self, type_: int, *ne: int) -> int:
        """A new tensor of ``ne`` elements per dimension (ggml order: contiguous dimension first)."""
        lib = api()
        make = {2: lib.new_tensor_2d, 3: lib.new_tensor_3d}[len(ne)]
        return _checked(make(self.handle, type_, *ne), "a tensor")

    def graph(self, output: int) -> int:
        """The graph that computes ``output``."""
        lib = api()
        graph = _checked(lib.new_graph_custom(self.handle, GRAPH_SIZE, False), "a graph")
        lib.build_forward_expand(graph, output)
        return graph

    def close(self) -> None:
        if self.handle:
            api().free(self.handle)
            self.handle = 0


def tensor_view(tensor: int, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """A torch view of an allocated ggml tensor's data (no copy): valid while its context lives."""
    lib = api()
    raw = (ctypes.c_char * lib.nbytes(tensor)).from_address(lib.get_data(tensor))
    return torch.frombuffer(raw, dtype=dtype).view(shape)


class Binding:
    """ggml tensor ``tensor`` reading ``data``'s memory in place, through a CPU buffer over it."""

    def __init__(self, tensor: int, data: torch.Tensor):
        lib = api()
        nbytes = data.numel() * data.element_size()
        if lib.nbytes(tensor) != nbytes:
            raise ValueError(f"a ggml tensor of {lib.nbytes(tensor)} bytes cannot read {nbytes} bytes")
        if data.device.type != "cpu" or not data.is_contiguous():
            raise ValueError("ggml's CPU kernels read only contiguous host memory")
        if data.data_ptr() % TENSOR_ALIGNMENT:
            raise ValueError(f"host memory at {data.data_ptr():#x} is not {TENSOR_ALIGNMENT}-byte aligned")
        self.data = data  # keeps the memory alive while ggml may read it
        self.buffer = _checked(lib.backend_cpu_buffer_from_ptr(data.data_ptr(), nbytes), "a CPU buffer")
        status = lib.backend_tensor_alloc(self.buffer, tensor, data.data_ptr())
        if status != GGML_STATUS_SUCCESS:
            self.close()
            raise RuntimeError(f"ggml could not bind a tensor to host memory (status {status})")

    def close(self) -> None:
        if self.buffer:
            api().backend_buffer_free(self.buffer)  # frees the wrapper, never the memory it wraps
            self.buffer = 0


def cpu_device() -> int:
    """ggml's CPU device (the first of the CPU backend's registry)."""
    lib = api()
    return _checked(lib.backend_reg_dev_get(lib.backend_cpu_reg(), 0), "the CPU device")


@functools.cache
def repack_buffer_type() -> int | None:
    """ggml-cpu's CPU_REPACK buffer type, among the CPU device's extra buffer types; None
    where this build of ggml has none."""
    lib = api()
    address = lib.backend_reg_get_proc_address(lib.backend_cpu_reg(), b"ggml_backend_dev_get_extra_bufts")
    if not address:
        return None
    extra_bufts = ctypes.CFUNCTYPE(ctypes.POINTER(c_void_p), c_void_p)(address)(cpu_device())
    index = 0
    while extra_bufts[index]:
        if lib.backend_buft_name(extra_bufts[index]) == REPACK_BUFFER_TYPE:
            return extra_bufts[index]
        index += 1
    return None


class RepackedCopy:
    """ggml tensor ``tensor`` in a CPU_REPACK buffer of its own: call ``covers`` with an op
    that reads it to learn whether ggml-cpu repacks the tensor's type and shape for that op
    on this CPU, then ``load`` to fill it (a rearranged, still quantized copy of the bytes)."""

    def __init__(self, tensor: int):
        lib = api()
        buft = repack_buffer_type()
        if buft is None:
            raise RuntimeError("this build of ggml has no CPU_REPACK buffer type")
        self.tensor = tensor
        self.buffer = _checked(lib.backend_buft_alloc_buffer(buft, lib.nbytes(tensor)), "a CPU_REPACK buffer")
        status = lib.backend_tensor_alloc(self.buffer, tensor, lib.backend_buffer_get_base(self.buffer))
        if status != GGML_STATUS_SUCCESS:
            self.close()
            raise RuntimeError(f"ggml could not place a tensor in a CPU_REPACK buffer (status {status})")

    @staticmethod
    def covers(op: int) -> bool:
        """Whether ggml-cpu computes ``op`` with repacked kernels (asks the CPU device)."""
        return api().backend_dev_supports_op(cpu_device(), op)

    def load(self, data: torch.Tensor) -> None:
        """Repack ``data`` (the tensor's bytes in ggml's plain layout) into the buffer."""
        lib = api()
        nbytes = data.numel() * data.element_size()
        if lib.nbytes(self.tensor) != nbytes or data.device.type != "cpu" or not data.is_contiguous():
            raise ValueError(f"a ggml tensor of {lib.nbytes(self.tensor)} bytes cannot load {nbytes} bytes "
                             f"of {'contiguous' if data.is_contiguous() else 'strided'} {data.device} memory")
        lib.backend_tensor_set(self.tensor, data.data_ptr(), 0, nbytes)

    def close(self) -> None:
        if self.buffer:
            api().backend_buffer_free(self.buffer)
            self.buffer = 0


class CpuBackend:
    """ggml's CPU backend, computing graphs on ``n_threads`` threads. One graph at a time:
    the backend keeps one work buffer for them all.

    The backend keeps a thread pool of its own, as llama.cpp's contexts do: without one, each
    graph makes a disposable pool, whose threads ggml starts and joins per graph where it is
    built without OpenMP (with OpenMP, OpenMP's team persists either way)."""

    def __init__(self, n_threads: int):
        self.handle = _checked(api().backend_cpu_init(), "a CPU backend")
        self.threadpool = 0
        self.n_threads = 0
        self.set_threads(n_threads)

    def set_threads(self, n_threads: int) -> None:
        if n_threads < 1:
            raise ValueError(f"the CPU backend needs at least one thread (got {n_threads})")
        lib = api()
        params = _ThreadpoolParams()
        lib.threadpool_params_init(ctypes.byref(params), n_threads)
        threadpool = _checked(lib.threadpool_new(ctypes.byref(params)), f"a pool of {n_threads} threads")
        lib.backend_cpu_set_threadpool(self.handle, threadpool)  # pauses the one it replaces
        lib.backend_cpu_set_n_threads(self.handle, n_threads)
        if self.threadpool:
            lib.threadpool_free(self.threadpool)
        self.threadpool = threadpool
        self.n_threads = n_threads

    def compute(self, graph: int) -> None:
        status = api().backend_graph_compute(self.handle, graph)
        if status != GGML_STATUS_SUCCESS:
            raise RuntimeError(f"ggml's CPU backend failed to compute a graph (status {status})")

    def close(self) -> None:
        if self.handle:
            api().backend_free(self.handle)
            self.handle = 0
        if self.threadpool:
            api().threadpool_free(self.threadpool)
            self.threadpool = 0
