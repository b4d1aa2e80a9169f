"""Decision rules behind one interface: ``act(observation) -> action`` and ``reset()``.

Heuristics from practice for each decision the platform exposes:

* scaling (target replicas): :class:`StaticScaling`, :class:`HPA`, :class:`KPA`,
  :class:`StepScaling`, :class:`ScheduledScaling`;
* routing (backend index): :class:`RandomRouter`, :class:`RoundRobin`,
  :class:`JoinShortestQueue`, :class:`PowerOfTwoChoices`, :class:`Cheapest`,
  :class:`Strongest`, :class:`DifficultyCascade`;
* caching: admission (:class:`AdmitAll`, :class:`AdmitNone`,
  :class:`FrequencyAdmission`) and the semantic threshold (:class:`FixedThreshold`).

:class:`PolicyController` lets policies drive a simulator run directly. Policies are
also available by short name::

    hpa = make_policy("hpa", **scaling_kwargs(scenario), target_utilisation=0.6)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from servegym.policies.adapter import PolicyController
from servegym.policies.base import Policy, checked_observation, require_features
from servegym.policies.caching import AdmissionAndThreshold, AdmitAll, AdmitNone, FixedThreshold, FrequencyAdmission
from servegym.policies.routing import (
    Cheapest,
    DifficultyCascade,
    JoinShortestQueue,
    PowerOfTwoChoices,
    RandomRouter,
    RoundRobin,
    Strongest,
)
from servegym.policies.scaling import HPA, KPA, ScheduledScaling, StaticScaling, StepScaling, scaling_kwargs

__all__ = [
    "ENV_FILLED_ARGUMENTS",
    "HPA",
    "KPA",
    "POLICIES",
    "AdmissionAndThreshold",
    "AdmitAll",
    "AdmitNone",
    "Cheapest",
    "DifficultyCascade",
    "FixedThreshold",
    "FrequencyAdmission",
    "JoinShortestQueue",
    "Policy",
    "PolicyController",
    "PowerOfTwoChoices",
    "RandomRouter",
    "RoundRobin",
    "ScheduledScaling",
    "StaticScaling",
    "StepScaling",
    "Strongest",
    "build_checked",
    "checked_observation",
    "make_policy",
    "require_features",
    "scaling_kwargs",
]

POLICIES: dict[str, Callable[..., Policy]] = {
    # scaling
    "static": StaticScaling,
    "hpa": HPA,
    "kpa": KPA,
    "step": StepScaling,
    "scheduled": ScheduledScaling,
    # routing
    "random": RandomRouter,
    "round_robin": RoundRobin,
    "jsq": JoinShortestQueue,
    "power_of_two": PowerOfTwoChoices,
    "cheapest": Cheapest,
    "strongest": Strongest,
    "cascade": DifficultyCascade,
    # caching
    "admit_all": AdmitAll,
    "admit_none": AdmitNone,
    "frequency": FrequencyAdmission,
    "fixed_threshold": FixedThreshold,
}
"""Short names of the policies, for configs and the command line."""


def make_policy(name: str, **kwargs: Any) -> Policy:
    """Build the policy registered under ``name`` in :data:`POLICIES` with ``kwargs``."""
    try:
        factory = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; known policies: {', '.join(sorted(POLICIES))}") from None
    policy: Policy = build_checked(name, factory, kwargs)
    return policy


ENV_FILLED_ARGUMENTS = ("layout", "backend_names")
"""Arguments an evaluation fills from the environment's observations, never from the user."""


def build_checked(name: str, factory: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
    """``factory(**kwargs)``, with every way the arguments can be wrong as one ValueError naming ``name``.

    Unknown and missing arguments are found from the signature before the call. The
    constructor's own ValueError (it names the argument) passes through; a TypeError or
    AttributeError from deeper down (a string where a number belongs) becomes one.
    """
    signature = inspect.signature(factory)
    accepted = sorted(signature.parameters)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        settable = [a for a in accepted if a not in ENV_FILLED_ARGUMENTS]
        raise ValueError(f"policy {name!r} has no argument {unknown[0]!r}; it accepts: {', '.join(settable) or 'none'}")
    missing = [
        p for p, spec in signature.parameters.items() if spec.default is inspect.Parameter.empty and p not in kwargs
    ]
    if missing:
        raise ValueError(f"policy {name!r} needs the argument {missing[0]!r}: it has no default")
    try:
        return factory(**kwargs)
    except ValueError:
        raise  # the constructor's own check, which names the argument and its bounds
    except (TypeError, AttributeError, KeyError, IndexError) as exc:
        raise ValueError(f"policy {name!r} rejected its arguments: {exc}") from exc
