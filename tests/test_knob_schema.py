"""One table of knobs (``KnobSchema``), everything derived from it: a knob added to a copy of
the cache's table shows up in the config record, validation, the search space, the ``serve``
options, the formatted command and the config parsed back; the real ``autotune serve`` has an
option per cache knob, and a table that cannot work is refused."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import optuna
import pytest
import typer
from typer.testing import CliRunner

from autotune.backends.base import ConfigError
from autotune.backends.cache.backend import CacheBackend
from autotune.backends.cache.commands import FORMATS, format_command, parse_command, serve_argv
from autotune.cache_runtime.cache_config import CACHE_KNOBS, CacheConfig
from autotune.cli import app as autotune_app
from autotune.knob_options import knob_options
from autotune.knob_schema import Knob, KnobSchema, Search, when_all, when_positive

COPY_THREADS = Knob("copy_threads", int, 2, "host threads that queue prefetch copies", low=1,
                    search=Search(values=(1, 2, 4)), when=when_positive("prefetch_depth"))
SCHEMA = dataclasses.replace(CACHE_KNOBS, knobs=CACHE_KNOBS.knobs + (COPY_THREADS,))


def test_the_record_has_a_checked_field_for_the_new_knob():
    record = SCHEMA.record("Record", __name__, "a test record")
    assert record(vram_cap=1).copy_threads == 2
    assert record.from_dict({"vram_cap": 1, "copy_threads": 3, "other": 0}).to_dict()["copy_threads"] == 3
    with pytest.raises(ConfigError, match="copy_threads must be at least 1, not 0"):
        record(vram_cap=1, copy_threads=0)
    assert "copy_threads" not in {field.name for field in dataclasses.fields(CacheConfig)}  # the copy alone has it


def test_validation_refuses_a_bad_value_and_fixes_a_moot_one():
    assert SCHEMA.normalize({"vram_cap": 1, "prefetch_depth": 2, "copy_threads": 4})["copy_threads"] == 4
    assert SCHEMA.normalize({"vram_cap": 1, "copy_threads": 4})["copy_threads"] == 2  # without prefetch: moot
    for bad, message in ((0, "copy_threads must be at least 1"), (1.5, "must be an integer"), (True, "must be an integer")):
        with pytest.raises(ConfigError, match=message):
            SCHEMA.normalize({"vram_cap": 1, "prefetch_depth": 2, "copy_threads": bad})
    with pytest.raises(ConfigError, match="unknown cache config key"):
        CACHE_KNOBS.normalize({"vram_cap": 1, "copy_threads": 4})


def test_the_search_space_samples_it_where_it_matters():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(60):
        trial = study.ask()
        config = SCHEMA.suggest(trial, "decode")
        assert ("copy_threads" in trial.params) == (config.get("prefetch_depth", 0) > 0)
        assert SCHEMA.normalize({"vram_cap": 1, **config}) == SCHEMA.normalize({"vram_cap": 1, **config, **trial.params})
        seen.add(config.get("copy_threads"))
        study.tell(trial, 0.0)
    assert seen == {None, 1, 2, 4}


def test_serve_options_take_it_and_show_its_default():
    app = typer.Typer()
    received: list[dict] = []

    @app.command()
    @knob_options(SCHEMA, exclude=("vram_cap",))
    def serve(model: str, *, knobs: dict, port: int = 8000) -> None:
        received.append(knobs)

    [option] = [param for param in typer.main.get_command(app).params if param.name == "copy_threads"]
    assert (option.opts, option.default, option.show_default) == (["--copy-threads"], 2, True)
    assert option.help == "host threads that queue prefetch copies (only with prefetch_depth above 0)"
    assert not [param for param in typer.main.get_command(app).params if param.name == "vram_cap"]
    runner = CliRunner()
    for args, knobs in ((["--copy-threads", "4", "--prefetch-depth=1"], {"copy_threads": 4, "prefetch_depth": 1}),
                        (["--copy-threads", "2", "--no-learned-placement"], {"copy_threads": 2, "learned_placement": False}),
                        (["--port", "9"], {})):  # a default given is given; none given, none in knobs
        done = runner.invoke(app, ["m.gguf", *args])
        assert done.exit_code == 0, done.output
        assert received.pop() == knobs
    assert runner.invoke(app, ["m.gguf", "--copy-threads", "many"]).exit_code == 2


def test_commands_carry_it_both_ways():
    config = {"vram_cap": 2**34, "prefetch_depth": 2, "copy_threads": 4}
    argv = serve_argv(config, "m.gguf", SCHEMA)
    assert argv[argv.index("--copy-threads") + 1] == "4"
    for fmt in FORMATS:
        assert parse_command(format_command(config, "m.gguf", fmt, SCHEMA), SCHEMA) == (SCHEMA.normalize(config),
                                                                                      Path("m.gguf"))
    with pytest.raises(ConfigError, match="'--copy-threads' is not a knob"):
        parse_command(format_command(config, "m.gguf", "serve", SCHEMA))  # the cache's own table has no such knob
    with pytest.raises(ConfigError, match="--copy-threads expects an integer, not 'many'"):
        parse_command("autotune serve m.gguf --vram-cap 1G --copy-threads many", SCHEMA)


def test_autotune_serve_has_an_option_per_cache_knob_and_a_given_one_overrides_the_base(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    serve = typer.main.get_command(autotune_app).commands["serve"]
    options = {opt for param in serve.params for opt in [*param.opts, *param.secondary_opts]}
    for knob in CACHE_KNOBS.knobs:
        assert knob.option in options and (knob.type is not bool or knob.negative in options)
    served: list[dict] = []
    monkeypatch.setattr("autotune.serve.launch.serve_model", lambda model, config, *rest: served.append(config))
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"vram_cap": 2**30, "max_ctx": 1024, "chunk_rounds": 1}))
    done = CliRunner().invoke(autotune_app, ["serve", "m.gguf", "--config", str(base), "--ctx", "4096"])
    assert done.exit_code == 0, done.output
    assert served.pop() == CACHE_KNOBS.normalize({"vram_cap": 2**30, "chunk_rounds": 1, "max_ctx": 4096})


def test_the_gpu_only_knobs_are_the_tables():
    gpu_only = ("chunk_rounds", "gate_up_warps", "int8_inputs")
    assert CacheBackend.gpu_only_knobs == CACHE_KNOBS.gpu_only == gpu_only


@pytest.mark.parametrize("knobs, message", [
    ((Knob("b", int, 0, when=when_positive("a")), Knob("a", int, 0)), "depends on a, which must come before it"),
    ((Knob("a", int, 0), Knob("b", int, 0, when=when_all(when_positive("a"), when_positive("c"))), Knob("c", int, 0)),
     "depends on c, which must come before it"),
    ((Knob("a", int, 0), Knob("b", int, 0, flag="--a")), "names and flags must differ"),
    ((Knob("a", int, 5, low=0, high=4),), "a must be within"),
    ((Knob("a", int, 0, search=Search(values=(1, "x"))),), "a must be an integer"),
    ((Knob("a", int, 0, search=Search()),), "a search needs values"),
])
def test_a_table_that_cannot_work_is_refused(knobs, message):
    with pytest.raises((TypeError, ConfigError), match=message):
        KnobSchema("test", knobs)


def test_key_value_words_are_read_as_their_flags_read_them():
    config = CACHE_KNOBS.read_assignments(["rebalance_interval=4", "decay=0.8", "lend_prefill_room=True",
                                           "vram_cap=16G", "miss_mode=cpu"])
    assert config == {"rebalance_interval": 4, "decay": 0.8, "lend_prefill_room": True, "vram_cap": 16 * 2**30,
                      "miss_mode": "cpu"}
    for bad in ("rebalance_interval=four", "lend_prefill_room=yes", "no_such_knob=1", "decay"):
        with pytest.raises(ConfigError):
            CACHE_KNOBS.read_assignments([bad])


def test_a_knob_that_needs_two_conditions_is_moot_where_either_fails():
    """``slot_split`` shifts spread slots between layers: moot with whole layers or without learned placement."""
    base = {"vram_cap": 1, "slot_split": 0.5}
    assert CACHE_KNOBS.normalize(base)["slot_split"] == 0.5
    assert CACHE_KNOBS.normalize({**base, "slot_layout": "whole_layers"})["slot_split"] == 0.0
    assert CACHE_KNOBS.normalize({**base, "learned_placement": False})["slot_split"] == 0.0
    assert CACHE_KNOBS.by_name["slot_split"].when.text == "with learned_placement and with slot_layout spread"
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(40):
        trial = study.ask()
        config = {**CACHE_KNOBS.defaults, **CACHE_KNOBS.suggest(trial, "decode")}
        assert ("slot_split" in trial.params) == (config["learned_placement"] and config["slot_layout"] == "spread")
        study.tell(trial, 0.0)
