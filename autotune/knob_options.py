"""Typer options made from a knob schema: ``@knob_options(schema)`` gives a command one option
per knob, where its ``knobs`` parameter stands, with the knob's flag, help and default (which
``--help`` shows). ``knobs`` holds only the knobs given on the command line, so a base config's
values stand for the others; the schema checks the values (``KnobSchema.normalize``)."""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

import typer

from autotune.knob_schema import Knob, KnobSchema

Command = TypeVar("Command", bound=Callable[..., Any])
NOT_GIVEN = ("DEFAULT", "DEFAULT_MAP")  # click's ParameterSource names for an option nobody gave
CONTEXT = "knob_context"  # the parameter that receives Typer's context


def _annotation(knob: Knob) -> Any:
    """A size is text (``16G``, read by ``Knob.read``); other knobs take Typer's types."""
    if knob.kind == "size":
        return Optional[str]
    return Optional[Path] if knob.kind == "path" else Optional[knob.type]


def _parameter(knob: Knob) -> inspect.Parameter:
    shown = not knob.required and knob.default != ""
    default = knob.default if shown else None
    decls = (f"{knob.option}/{knob.negative}",) if knob.type is bool else (knob.option,)
    when = f" (only {knob.when.text})" if knob.when is not None else ""
    metavar = f"[{'|'.join(map(str, knob.choices))}]" if knob.choices else None
    option = typer.Option(default, *decls, help=knob.help + when, show_default=shown, metavar=metavar)
    return inspect.Parameter(knob.name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=_annotation(knob))


def _value(knob: Knob, value: Any) -> Any:
    if knob.kind == "size":
        return knob.read(knob.option, value)
    return str(value) if knob.kind == "path" else value


def _given(context: typer.Context, name: str) -> bool:
    source = context.get_parameter_source(name)
    return source is not None and source.name not in NOT_GIVEN


def knob_options(schema: KnobSchema, exclude: tuple[str, ...] = ()) -> Callable[[Command], Command]:
    """The decorated command takes ``knobs``: the value of each knob given on the command line
    (those in ``exclude`` have no option); its other parameters stay as they are."""
    shown = [knob for knob in schema.knobs if knob.name not in exclude]

    def decorate(command: Command) -> Command:
        signature = inspect.signature(command, eval_str=True)
        own = list(signature.parameters.values())
        clash = {parameter.name for parameter in own} & ({knob.name for knob in shown} | {CONTEXT})
        if clash:
            raise TypeError(f"{command.__name__}: parameters {sorted(clash)} are knobs too")

        @functools.wraps(command)
        def with_knobs(**arguments: Any) -> Any:
            context: typer.Context = arguments.pop(CONTEXT)
            values = {knob.name: (knob, arguments.pop(knob.name)) for knob in shown}
            knobs = {name: _value(knob, value) for name, (knob, value) in values.items() if _given(context, name)}
            return command(**arguments, knobs=knobs)

        at = [parameter.name for parameter in own].index("knobs")
        after = [parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY) for parameter in own[at + 1:]]
        context = inspect.Parameter(CONTEXT, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)
        parameters = own[:at] + [context] + [_parameter(knob) for knob in shown] + after
        with_knobs.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        with_knobs.__annotations__ = {parameter.name: parameter.annotation for parameter in parameters}
        return with_knobs  # type: ignore[return-value]

    return decorate
