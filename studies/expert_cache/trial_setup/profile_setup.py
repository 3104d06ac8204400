"""Where a cache trial child's setup goes: torch, the engine's load, learning the placement,
then a short decode and prefill, timed (and profiled with cProfile unless NOPROF=1).

Usage (GPU machine, project root): python3 studies/expert_cache/trial_setup/profile_setup.py MODEL.gguf
Run it twice: the first run learns the routing counts into a fresh trials' store, the second
reads them from there, as a study's later trial children do.
"""

import cProfile
import io
import os
import pstats
import sys
import tempfile
import time

os.environ.setdefault("AUTOTUNE_TRIAL_STORE", os.path.join(tempfile.gettempdir(), "autotune-profile-trial-store"))
started = time.perf_counter()
import torch  # noqa: E402

torch.zeros(1, device="cuda")
torch.cuda.synchronize()
torch_ready = time.perf_counter()
from autotune.backends.cache.trial import decode_tps, learn_placement, prefill_tps  # noqa: E402
from autotune.cache_runtime.cache_config import CacheConfig  # noqa: E402
from autotune.cache_runtime.engine import Engine  # noqa: E402

config = CacheConfig.from_dict({
    "vram_cap": 16 * 2**30, "rebalance_interval": 0, "decay": 0.95, "eviction": "static", "miss_mode": "zero_copy",
    "prefetch_depth": 0, "prefill_bypass": 32, "slot_split": 0.0, "learned_placement": True, "max_ctx": 4096,
    "chunk_rounds": 2, "gate_up_warps": 4})
profile = cProfile.Profile()
if not os.environ.get("NOPROF"):
    profile.enable()
a = time.perf_counter()
engine = Engine(sys.argv[1], cache_config=config)
b = time.perf_counter()
source = learn_placement(engine)
c = time.perf_counter()
decode = decode_tps(engine, 512, 64, 2)
d = time.perf_counter()
prefill = prefill_tps(engine, 512, 2)
e = time.perf_counter()
profile.disable()
print(f"torch+cuda init {torch_ready - started:.1f}s, Engine {b - a:.1f}s, placement ({source}) {c - b:.1f}s, "
      f"decode {d - c:.1f}s {decode}, prefill {e - d:.1f}s {prefill}")
if not os.environ.get("NOPROF"):
    for key in ("cumulative", "tottime"):
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats(key).print_stats(45)
        print(out.getvalue()[-9000:])
