"""The per-token accounting of issue 27 (part 4): bytes per channel, the bound, the fraction."""

from autotune.studies.token_bound import Bandwidths, token_bound


def test_bytes_per_channel_and_the_fractions_of_the_bound() -> None:
    stats = {"tokens": 10, "slots_per_layer": [4, 4], "top_k": 8, "misses": 40, "served_by_prefetch": 10,
             "pcie_bytes_per_token": 5e6, "ram_bytes_per_token": 30e6}
    bound = token_bound(stats, expert_bytes=10**6, dense_bytes=10**8, seconds_per_token=0.01,
                        bandwidths=Bandwidths(vram=1e12, pcie=5e10, ram=1e10))
    # 160 selections, 40 missed, 10 of those served from a prefetched copy in VRAM: 130 experts
    assert bound["bytes_per_token"] == {"vram": 113_000_000, "pcie": 5_000_000, "ram": 30_000_000}
    assert bound["bound_ms"] == {"vram": 0.113, "pcie": 0.1, "ram": 3.0}
    assert bound["of_overlapped_bound"] == 0.3 and bound["of_serial_bound"] == 0.321
