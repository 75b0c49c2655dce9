"""CLI options made from config models, so a field's default and help live in one place.

A command written as `def prune(model: ModelArg, ..., config: PruneConfig)` gets one
option per field of `PruneConfig` (`--nsamples`, `--per-row/--no-per-row`, ...) with the
field's default and description; the parsed values are validated by the model itself
(one-line errors) and the command body receives the config object.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any

import typer
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from llmprune.errors import LLMPruneError, validated

# list fields take repeated options or comma-separated values; dict fields take KEY=VALUE
OPTION_NAMES = {"overrides": "--override", "remove": "--structured"}


def config_options(body: Callable) -> Callable:
    """Replace each config-model parameter of `body` by options for its fields.

    A parameter typed as a union of config models (`PruneConfig | StructuredConfig`)
    gets the options of all of them; the options given pick which one is built.
    """
    signature = inspect.signature(body, eval_str=True)
    own = [p for p in signature.parameters.values() if not is_config(p.annotation)]
    configs = {
        p.name: config_members(p.annotation)
        for p in signature.parameters.values()
        if is_config(p.annotation)
    }
    own_names = {p.name for p in own}
    fields: dict[str, Any] = {}
    for members in configs.values():
        for cls in members:
            for name, field in cls.model_fields.items():
                if name not in own_names:
                    fields.setdefault(name, field)
    parameters = own + [field_parameter(name, field) for name, field in fields.items()]

    @functools.wraps(body)
    def command(**values: Any):
        built = {}
        for argument, members in configs.items():
            cls = chosen_member(members, values, fields)
            built[argument] = validated(cls, config_values(cls, values))
        return body(**{name: values[name] for name in own_names}, **built)

    command.__signature__ = inspect.Signature(parameters)
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    del command.__wrapped__  # typer must read the new signature, not the body's
    return command


def config_members(annotation: Any) -> tuple[type[BaseModel], ...]:
    """The config models a parameter accepts: one, or the members of a union of them."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return (annotation,)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = typing.get_args(annotation)
        if all(isinstance(m, type) and issubclass(m, BaseModel) for m in members):
            return members
    return ()


def is_config(annotation: Any) -> bool:
    return bool(config_members(annotation))


def chosen_member(
    members: tuple[type[BaseModel], ...], values: dict[str, Any], fields: dict[str, Any]
) -> type[BaseModel]:
    """The member whose own options (ones no other member has) were given; the first
    member when none were. Options of two members at once are an error."""
    if len(members) == 1:
        return members[0]
    given = {
        name
        for name, value in values.items()
        if name in fields and value is not None and value != option_default(fields[name])
    }
    picked = {}
    for cls in members:
        others = {n for other in members if other is not cls for n in other.model_fields}
        mine = sorted(given & (set(cls.model_fields) - others))
        if mine:
            picked[cls] = mine
    if len(picked) > 1:
        first, second = (option_name(names[0]) for names in picked.values())
        raise LLMPruneError(f"{first} and {second} do not go together")
    return next(iter(picked), members[0])


def field_default(field) -> Any:
    if field.default is PydanticUndefined:
        return field.default_factory() if field.default_factory else None
    return field.default


def option_default(field) -> Any:
    """What the option holds when absent: the field's default (None for lists and dicts,
    whose own default applies when the config is built)."""
    return None if is_collection(field.annotation) else field_default(field)


def field_parameter(name: str, field) -> inspect.Parameter:
    kind, default = cli_type(field.annotation), option_default(field)
    help_text = field.description or ""
    if is_collection(field.annotation) and field_default(field):
        help_text += f" (default: {shown_default(field_default(field))})"
    option = option_name(name)
    flags = [f"{option}/--no-{option[2:]}"] if kind is bool else [option]
    annotation = Annotated[kind, typer.Option(*flags, help=help_text)]
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
    )


def option_name(field: str) -> str:
    return OPTION_NAMES.get(field, "--" + field.replace("_", "-"))


def shown_default(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def is_collection(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (list, dict)


def cli_type(annotation: Any):
    """The type typer parses for a field; unions and literals are parsed as text and
    validated by the config model."""
    origin = typing.get_origin(annotation)
    if origin in (list, dict):
        return list[str] | None
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return cli_type(args[0]) | None
        return str | None
    if origin is typing.Literal:
        return str
    return annotation


def config_values(cls: type[BaseModel], values: dict[str, Any]) -> dict[str, Any]:
    """The parsed options that belong to `cls`, lists split on commas, dicts from K=V."""
    result = {}
    for name, field in cls.model_fields.items():
        if name not in values:
            continue
        value = values[name]
        origin = typing.get_origin(field.annotation)
        if origin in (list, dict) and value is None:
            continue
        if origin is list:
            value = [part.strip() for item in value for part in item.split(",") if part.strip()]
        elif origin is dict:
            value = dict(key_value(item, name) for item in value)
        result[name] = value
    return result


def key_value(item: str, name: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key or not value:
        raise LLMPruneError(
            f"{option_name(name)} must look like 'PATTERN=0.7' or 'PATTERN=2:4', got {item!r}"
        )
    return key, value
