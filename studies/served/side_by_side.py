"""Served speed, side by side: the tuner's exported command against llama-server, over HTTP.

Every command is started fresh and measured by the same client (``autotune.served``:
non-streamed ``/v1/completions``, decode as (t(N) - t(1)) / (N - 1), peak VRAM from NVML) in
ROUNDS rotating rounds. The winner's command (``--winner``, as ``autotune export`` printed it)
is measured twice in each round, in a user data directory of its own made empty for the
round: a first start (no routing counts saved on the machine: what a new user gets) and,
right after, a restart (the counts the first start saved at its exit). Each ``--reference``
is a llama-server command line, or another ``autotune serve`` command: a variant of the
winner (an A/B in the same rounds), measured once a round as a first start. Medians, spreads
and the ratios of the winner and of each variant to the fastest llama-server reference whose
peak fits the cap go to OUT.json.

Usage (GPU machine): python3 studies/served/side_by_side.py MODEL OUT.json CAP_GIB --winner CMD
    --reference NAME=CMD ... [--rounds 2] [--prompt 512] [--gen 128] [--repetitions 3]
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import tempfile
from pathlib import Path

from autotune.model_info import inspect_model
from autotune.served import ServeFailed, measure_command

FIRST, RESTART = "winner, first start", "winner, after a restart"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("out")
    parser.add_argument("cap_gib", type=float, help="the cap: the best reference is the fastest whose peak fits it")
    parser.add_argument("--winner", required=True, help="the exported command")
    parser.add_argument("--reference", nargs="*", default=[], help="NAME=llama-server command")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--prompt", type=int, default=512)
    parser.add_argument("--gen", type=int, default=128)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--deadline", type=float, default=300.0)
    args = parser.parse_args()
    n_vocab = inspect_model(args.model).n_vocab
    references = dict(spec.split("=", 1) for spec in args.reference)
    samples: dict[str, list[dict]] = {FIRST: [], RESTART: [], **{name: [] for name in references}}

    def measure(name: str, command: str, env: dict[str, str] | None = None) -> None:
        try:
            figures = measure_command(shlex.split(command), n_prompt=args.prompt, n_gen=args.gen,
                                      repetitions=args.repetitions, n_vocab=n_vocab, deadline_s=args.deadline,
                                      env=env)
        except ServeFailed as exc:
            print(f"{name}: failed: {exc}", flush=True)
            samples[name].append({"error": str(exc)})
            return
        samples[name].append(figures.to_json())
        peak = figures.peak_vram_bytes
        print(f"{name}: decode {figures.decode_tps}, prefill {figures.prefill_tps} tok/s, peak "
              f"{peak / 2**30 if peak else float('nan'):.2f} GiB, start {figures.start_seconds:.1f} s", flush=True)
        cache = (figures.server_stats or {}).get("cache")
        if cache:
            print(f"  served cache: hit rate {cache['hit_rate']:.3f} (with prefetch {cache['effective_hit_rate']:.3f}), "
                  f"CPU {cache['cpu_experts_per_token']:.1f} experts/token, PCIe "
                  f"{cache['pcie_bytes_per_token'] / 1e6:.1f} MB/token over {cache['tokens']} tokens", flush=True)

    names = list(references)
    for round_number in range(args.rounds):
        order = ["winner"] + names
        shift = round_number % len(order)
        for name in order[shift:] + order[:shift]:
            if name == "winner":
                with tempfile.TemporaryDirectory(prefix="served-user-") as data:
                    measure(FIRST, args.winner, {"AUTOTUNE_DATA_DIR": data})
                    measure(RESTART, args.winner, {"AUTOTUNE_DATA_DIR": data})
            elif _is_autotune(references[name]):
                with tempfile.TemporaryDirectory(prefix="served-user-") as data:
                    measure(name, references[name], {"AUTOTUNE_DATA_DIR": data})
            else:
                measure(name, references[name])
    summary = {name: _summary(runs) for name, runs in samples.items()}
    variants = [name for name in names if _is_autotune(references[name])]
    fitting = [name for name in names if name not in variants and summary[name]["decode_median"]
               and (summary[name]["peak_gib"] or 0) <= args.cap_gib]
    best_reference = max(fitting,
                         key=lambda name: summary[name]["decode_median"], default=None)
    ratios = {}
    if best_reference:
        for name in (FIRST, RESTART, *variants):
            if summary[name]["decode_median"]:
                ratios[f"{name} / {best_reference}"] = summary[name]["decode_median"] / summary[best_reference]["decode_median"]
    result = {"model": str(args.model), "cap_gib": args.cap_gib, "best_fitting_reference": best_reference,
              "workload": {"prompt": args.prompt, "gen": args.gen,
                                                     "repetitions": args.repetitions, "rounds": args.rounds},
              "commands": {FIRST: args.winner, RESTART: args.winner, **references},
              "summary": summary, "ratios_of_decode_medians": ratios, "runs": samples}
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({"summary": summary, "ratios": ratios}, indent=2))


def _is_autotune(command: str) -> bool:
    """Whether a reference is another ``autotune serve`` command (a variant of the winner, an
    A/B in the same rounds) rather than a llama-server baseline the ratios are taken against."""
    return Path(shlex.split(command)[0]).name == "autotune"


def _summary(runs: list[dict]) -> dict:
    """Medians over every repetition of every run, the decode range, and the largest peak."""
    ok = [run for run in runs if "error" not in run]
    decode = [x for run in ok for x in run["decode_tps"]["samples"]]
    prefill = [x for run in ok for x in run["prefill_tps"]["samples"]]
    peaks = [run["peak_vram_bytes"] for run in ok if run["peak_vram_bytes"]]
    return {"decode_median": statistics.median(decode) if decode else None,
            "decode_range": [min(decode), max(decode)] if decode else None,
            "prefill_median": statistics.median(prefill) if prefill else None,
            "peak_gib": max(peaks) / 2**30 if peaks else None, "runs": len(ok), "failed": len(runs) - len(ok)}


if __name__ == "__main__":
    main()
