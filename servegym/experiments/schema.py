"""Hydra structured configs built from the simulator's own dataclasses.

``servegym.sim.config`` defines every component as a frozen, validated dataclass. OmegaConf
cannot take those as they are (it has no ``Literal``, and tuples are lists in YAML), so
:func:`schema_of` derives from each one an OmegaConf-compatible twin with the same field
names, defaults and nesting: ``Literal[...]`` becomes ``str``, ``tuple[X, ...]`` becomes
``list[X]``, and a field marked ``metadata={"nullable": True}`` becomes ``Optional``
(``duration_s``: a trace replay may leave it to its trace). Registered as the
``schema/scenario`` node, the twin is merged under every scenario YAML, so Hydra rejects
a misspelt key or a mistyped value while composing, naming the full key
(``scenario.pool.max_replica``). Value checks (ranges, the allowed
strings of a ``Literal``) then run in :func:`servegym.sim.config.scenario_from_dict`,
before anything is simulated or trained.

The ``schema/workload`` node is the twin of :class:`~servegym.sim.config.WorkloadConfig`
alone. Every option of the ``workload`` config group lists it first in its defaults
(``- /schema/workload@_here_``): merged over the selected scenario's workload, it resets
every field to the dataclass default before the option's own values, so ``workload=X``
*replaces* the scenario's workload with X's instead of patching it (a scenario's flash
crowds or burst rates would otherwise survive the switch).

The ``schema/open_dict`` node is an empty mapping that is *not* in struct mode. A config
lists it for a mapping whose keys are open-ended (``- /schema/open_dict@hyperparams`` in
an agent file, ``- schema/open_dict@params`` in ``export.yaml``), so
``agent.hyperparams.target_kl=0.01`` adds a key without Hydra's ``+`` prefix. Whether the
name means anything is then checked by servegym itself (the algorithm's or policy's
arguments), with an error that lists the allowed names.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from functools import cache
from typing import Any, Literal, Union, get_args, get_origin

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from servegym.sim.config import ScenarioConfig, WorkloadConfig

__all__ = ["register_configs", "schema_of"]


def _convert_type(tp: Any) -> Any:
    origin = get_origin(tp)
    if origin is Literal:
        return type(get_args(tp)[0])
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        inner = _convert_type(args[0]) if len(args) == 1 else Any
        return typing.Optional[inner]  # noqa: UP045 - OmegaConf needs a runtime Optional object
    if origin is tuple:
        return list[_convert_type(get_args(tp)[0])]  # type: ignore[misc]
    if origin in (dict, typing.Mapping):
        return dict[str, Any]
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return schema_of(tp)
    return tp


def _convert_value(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        schema = schema_of(type(value))
        return schema(**{f.name: _convert_value(getattr(value, f.name)) for f in dataclasses.fields(value)})
    if isinstance(value, tuple):
        return [_convert_value(v) for v in value]
    return value


@cache
def schema_of(cls: type) -> type:
    """The OmegaConf-compatible twin of the simulator dataclass ``cls`` (cached per class)."""
    hints = typing.get_type_hints(cls)
    fields: list[tuple[str, Any, Any]] = []
    for f in dataclasses.fields(cls):
        tp = _convert_type(hints[f.name])
        if f.metadata.get("nullable"):
            # null is resolved by scenario_from_dict (a trace replay's duration_s: its span)
            tp = typing.Optional[tp]  # noqa: UP045 - OmegaConf needs a runtime Optional object
        if f.default is not dataclasses.MISSING:
            default = _convert_value(f.default)
            if isinstance(default, list) or dataclasses.is_dataclass(default):
                # mutable: every instance gets a fresh conversion of the original default
                fields.append((f.name, tp, dataclasses.field(default_factory=_factory(_convert_value, f.default))))
            else:
                fields.append((f.name, tp, dataclasses.field(default=default)))
        elif f.default_factory is not dataclasses.MISSING:
            factory = f.default_factory
            fields.append((f.name, tp, dataclasses.field(default_factory=_factory(_convert_value, factory()))))
        else:
            fields.append((f.name, tp, dataclasses.field(default="???")))  # OmegaConf's MISSING
    name = f"{cls.__name__}Schema"
    schema = dataclasses.make_dataclass(name, fields)
    schema.__module__ = __name__
    # A module attribute under its own name, so pickle (joblib and submitit workers) copies it by reference.
    globals()[name] = schema
    return schema


def _factory(convert: Callable[[Any], Any], value: Any) -> Callable[[], Any]:
    """A default factory returning a fresh converted copy of ``value`` (no default is shared)."""
    return lambda: convert(value)


# Build every schema class at import: an unpickling worker finds them here by name.
schema_of(ScenarioConfig)


def _open_dict() -> DictConfig:
    """An empty mapping that accepts new keys even once Hydra puts the whole config in struct mode."""
    node = OmegaConf.create({})
    OmegaConf.set_struct(node, False)  # its own flag wins over the root's
    return node


def register_configs() -> None:
    """Register the structured scenario and workload schemas and ``schema/open_dict`` with Hydra's ConfigStore.

    Idempotent.
    """
    store = ConfigStore.instance()
    store.store(group="schema", name="open_dict", node=_open_dict())
    store.store(group="schema", name="scenario", node=schema_of(ScenarioConfig), package="scenario")
    store.store(group="schema", name="workload", node=schema_of(WorkloadConfig), package="scenario.workload")
