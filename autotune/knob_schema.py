"""A declarative table of a config's knobs, and everything that derives from it.

A ``KnobSchema`` lists ``Knob`` entries: name, type, allowed values, default, help, command-line
flag, how the tuner searches it (``Search``), when it matters (``When``) and whether it acts only
through a GPU. From the table come the config record (``KnobSchema.record``, a frozen
dataclass), validation to one canonical form (``normalize``), the Optuna search space
(``suggest``) and each knob's command-line words (``Knob.argv`` and ``Knob.read``);
``autotune.knob_options`` makes Typer options of them.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Callable, Iterable

from autotune.backends.base import Config, ConfigError
from autotune.errors import AutotuneError
from autotune.units import parse_size, size_text

if TYPE_CHECKING:
    import optuna

KINDS = ("plain", "size", "path")
TYPES = (int, float, str, bool)


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()  # a knob's default: none, every config gives it; its moot value: the default


@dataclass(frozen=True)
class When:
    """A knob matters only while the config (the values of knobs ``keys``) passes ``holds``;
    ``text`` says when."""

    keys: tuple[str, ...]
    holds: Callable[[Config], bool]
    text: str


def when_in(key: str, *values: Any) -> When:
    return When((key,), lambda config: config[key] in values, f"with {key} {' or '.join(map(str, values))}")


def when_positive(key: str) -> When:
    return When((key,), lambda config: config[key] > 0, f"with {key} above 0")


def when_true(key: str) -> When:
    return When((key,), lambda config: config[key] is True, f"with {key}")


def when_all(*conditions: When) -> When:
    """Every one of ``conditions``."""
    return When(tuple(key for c in conditions for key in c.keys),
                lambda config: all(c.holds(config) for c in conditions), " and ".join(c.text for c in conditions))


@dataclass(frozen=True)
class Search:
    """How the tuner samples a knob: one of ``values`` (the knob's choices if none are given;
    keep their order, a stored study refuses a parameter whose choices changed), or a range
    ``low``..``high`` by ``step``; for the ``objectives`` named only, or for every one."""

    values: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    step: float | None = None
    objectives: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.low is None) != (self.high is None):
            raise TypeError("a searched range needs low and high")

    @property
    def ranged(self) -> bool:
        return self.low is not None


@dataclass(frozen=True)
class Knob:
    """One knob. ``kind`` "size": bytes, written ``16G`` on a command line; "path": a file path,
    absolute in the canonical form, "" for none. Where ``when`` does not hold the knob cannot
    matter and takes ``moot`` (the default unless given)."""

    name: str
    type: type
    default: Any = UNSET
    help: str = ""
    choices: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    kind: str = "plain"
    flag: str = ""  # "": --name-with-dashes
    search: Search | None = None
    when: When | None = None
    moot: Any = UNSET
    gpu_only: bool = False

    @property
    def option(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def negative(self) -> str:
        """A true-or-false knob's second switch: ``--no-...``."""
        return "--no-" + self.option.removeprefix("--")

    @property
    def required(self) -> bool:
        return self.default is UNSET

    @property
    def moot_value(self) -> Any:
        return self.default if self.moot is UNSET else self.moot

    def check(self, value: Any) -> Any:
        """The value in its canonical type, or a ConfigError naming the knob."""
        if self.type is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{self.name} must be true or false, not {value!r}")
        elif self.type is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{self.name} must be an integer, not {value!r}")
        elif self.type is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{self.name} must be a number, not {value!r}")
            value = float(value)
        elif not isinstance(value, str) and not self.choices:
            raise ConfigError(f"{self.name} must be {'a file path' if self.kind == 'path' else 'text'}, not {value!r}")
        if self.choices and value not in self.choices:
            raise ConfigError(f"{self.name} must be one of {', '.join(map(str, self.choices))}, not {value!r}")
        if self.low is not None and self.high is not None:
            if not self.low <= value <= self.high:
                raise ConfigError(f"{self.name} must be within [{self.low:g}, {self.high:g}], not {value}")
        elif self.low is not None and value < self.low:
            raise ConfigError(f"{self.name} must be at least {self.low:g}, not {value}")
        elif self.high is not None and value > self.high:
            raise ConfigError(f"{self.name} must be at most {self.high:g}, not {value}")
        return value

    def argv(self, value: Any) -> list[str]:
        """The command-line words that set the knob to a checked value (none for an empty path)."""
        if self.type is bool:
            return [self.option if value else self.negative]
        if self.kind == "size":
            return [self.option, size_text(value)]
        if self.type is float:
            return [self.option, repr(value)]
        return [self.option, str(value)] if value != "" else []

    def read(self, flag: str, text: str) -> Any:
        """The value a command line's word gives the knob (unchecked); a ConfigError names ``flag``."""
        if self.kind == "size":
            try:
                return parse_size(text, flag)
            except AutotuneError as exc:
                raise ConfigError(str(exc)) from None
        if self.type in (int, float):
            try:
                return self.type(text)
            except ValueError:
                raise ConfigError(f"{flag} expects {'an integer' if self.type is int else 'a number'}, "
                                  f"not {text!r}") from None
        return text

    def sample(self, trial: optuna.Trial, search: Search) -> Any:
        if search.low is None or search.high is None:  # not ranged
            return trial.suggest_categorical(self.name, list(search.values or self.choices))
        if self.type is int:
            return trial.suggest_int(self.name, int(search.low), int(search.high), step=int(search.step or 1))
        return trial.suggest_float(self.name, search.low, search.high, step=search.step)


@dataclass(frozen=True)
class KnobSchema:
    """A config's knobs, in order: the order of the record's fields, of the sampler's
    questions and of a command line's flags. ``what`` names the configs in messages;
    ``retired``: knobs since removed, which configs stored by earlier versions may still
    name (``normalize`` drops them)."""

    what: str
    knobs: tuple[Knob, ...]
    retired: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        """A table that cannot work is a programming error, found at import."""
        seen: set[str] = set()
        for knob in self.knobs:
            if knob.type not in TYPES or knob.kind not in KINDS:
                raise TypeError(f"knob {knob.name}: type {knob.type.__name__}, kind {knob.kind!r}")
            for key in knob.when.keys if knob.when is not None else ():
                if key not in seen:
                    raise TypeError(f"knob {knob.name} depends on {key}, which must come before it")
            searched = knob.search.values if knob.search is not None else ()
            if knob.search is not None and not (knob.search.ranged or searched or knob.choices):
                raise TypeError(f"knob {knob.name}: a search needs values, a range or the knob's choices")
            for value in (() if knob.required else (knob.default, knob.moot_value)) + searched:
                knob.check(value)
            seen.add(knob.name)
        flags = [flag for knob in self.knobs for flag in (knob.option, knob.negative)[:1 + (knob.type is bool)]]
        if len(seen) != len(self.knobs) or len(set(flags)) != len(flags):
            raise TypeError(f"the {self.what} knobs' names and flags must differ")

    def __getitem__(self, name: str) -> Knob:
        return self.by_name[name]

    @cached_property
    def by_name(self) -> dict[str, Knob]:
        return {knob.name: knob for knob in self.knobs}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.by_name)

    @property
    def defaults(self) -> Config:
        """Every knob's default, those a config must give left out."""
        return {knob.name: knob.default for knob in self.knobs if not knob.required}

    @property
    def gpu_only(self) -> tuple[str, ...]:
        return tuple(knob.name for knob in self.knobs if knob.gpu_only)

    def check(self, config: Config) -> None:
        """Each value given is of its knob's type and range (no knob required, none made moot)."""
        for name, value in config.items():
            self[name].check(value)

    def read_assignments(self, words: Iterable[str]) -> Config:
        """A config from ``KEY=VALUE`` words (a study script's command line): each value read as
        its knob's flag reads it, a switch as true or false (unchecked, as ``Knob.read``)."""
        config: Config = {}
        for word in words:
            name, sep, text = word.partition("=")
            if not sep or name not in self.names:
                raise ConfigError(f"{word!r} is not KEY=VALUE for a {self.what} knob ({', '.join(self.names)})")
            knob = self[name]
            if knob.type is bool:
                if text.lower() not in ("true", "false"):
                    raise ConfigError(f"{name} is true or false, not {text!r}")
                config[name] = text.lower() == "true"
            else:
                config[name] = knob.read(name, text)
        return config

    def normalize(self, config: Config) -> Config:
        """Every knob, checked and in canonical form: knobs that cannot matter (``Knob.when``)
        at one value, so two configs that run the same way compare equal; paths absolute, so a
        stored config names the same file from any working directory."""
        unknown = sorted(set(config) - set(self.names) - self.retired)
        if unknown:
            raise ConfigError(f"unknown {self.what} config key(s): {', '.join(unknown)}")
        config = {name: value for name, value in config.items() if name not in self.retired}
        for knob in self.knobs:
            if knob.required and knob.name not in config:
                raise ConfigError(f"a {self.what} config needs {knob.name} ({knob.help})")
        given = {**self.defaults, **config}
        out = {knob.name: knob.check(given[knob.name]) for knob in self.knobs}
        for knob in self.knobs:
            if knob.when is not None and not knob.when.holds(out):
                out[knob.name] = knob.moot_value
            elif knob.kind == "path" and out[knob.name]:
                out[knob.name] = os.path.abspath(out[knob.name])
        return out

    def suggest(self, trial: optuna.Trial, objective: str | None,
                without: dict[str, tuple[Any, ...]] | None = None) -> Config:
        """The searched knobs that matter for the values sampled before them, asked of
        ``trial`` in the schema's order; the others are left to their defaults. ``without``:
        values a knob may not take here (a model the choice cannot run)."""
        config: Config = {}
        for knob in self.knobs:
            search = knob.search
            if search is None or (search.objectives and objective not in search.objectives):
                continue
            if knob.when is not None and not knob.when.holds({**self.defaults, **config}):
                continue
            if without and knob.name in without:
                values = tuple(v for v in search.values or knob.choices if v not in without[knob.name])
                search = dataclasses.replace(search, values=values)
            config[knob.name] = knob.sample(trial, search)
        return config

    def record(self, name: str, module: str, doc: str) -> type:
        """A frozen, keyword-only dataclass with a field per knob, which checks its values;
        ``to_dict`` and ``from_dict`` (which ignores keys that are no knob) convert it."""
        schema = self

        def __post_init__(record: Any) -> None:
            schema.check(dataclasses.asdict(record))

        def to_dict(record: Any) -> Config:
            return dataclasses.asdict(record)

        def from_dict(cls: type, data: Config) -> Any:
            return cls(**{key: value for key, value in data.items() if key in schema.by_name})

        fields = [(knob.name, knob.type) if knob.required else (knob.name, knob.type, dataclasses.field(default=knob.default))
                  for knob in self.knobs]
        namespace = {"__post_init__": __post_init__, "to_dict": to_dict, "from_dict": classmethod(from_dict), "__doc__": doc}
        record = dataclasses.make_dataclass(name, fields, namespace=namespace, frozen=True, kw_only=True)
        record.__module__ = module
        return record
