"""The ``servegym`` command line.

``servegym simulate`` runs a scenario (a shipped one by name, or a YAML file) with
optional ``key=value`` overrides and prints its KPI table; ``--out DIR`` also writes the
telemetry: request records and interval metrics (CSV or Parquet), replica lifecycles,
incidents, KPIs as JSON, the resolved scenario, and spans in the Chrome trace format.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import yaml

from servegym import __version__
from servegym.sim.config import (
    ConfigError,
    ScenarioConfig,
    apply_overrides,
    check_run_size,
    expected_requests,
    load_scenario,
    scenario_to_dict,
)
from servegym.sim.platform import Platform
from servegym.sim.telemetry import (
    format_kpi_table,
    intervals_to_columns,
    trace_summary,
    write_chrome_trace,
    write_table,
)
from servegym.sim.workload import TraceError

__all__ = ["TELEMETRY_FILES", "check_out_dir", "main", "write_telemetry"]

LARGE_RUN_REQUESTS = 1_000_000
"""Above this many expected requests, ``simulate`` says up front how much work the run is."""


# What write_telemetry() may write into its directory (requests and intervals in either format).
TELEMETRY_FILES = (
    "requests.csv",
    "requests.parquet",
    "intervals.csv",
    "intervals.parquet",
    "replicas.csv",
    "incidents.json",
    "kpis.json",
    "scenario.yaml",
    "trace.json",
)


def check_out_dir(out: Path, overwrite: bool = False) -> Path | None:
    """Refuse an output directory that would mix this run's telemetry with other files.

    Called before the run, so a bad ``--out`` costs no simulation: a missing directory is
    created here (one that cannot be created fails now, not after the run), and an existing
    one must be writable. A directory holding only telemetry files may be reused with
    ``overwrite``: the old files are removed, so a CSV run after a Parquet run does not
    leave the Parquet tables behind. Returns the outermost directory it created (None if
    none), so a run that fails can remove what it made (:func:`_remove_created`).
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file: give a directory (it is created if missing)")
    if not out.is_dir():
        created = out.absolute()
        while not created.parent.exists():
            created = created.parent
        try:
            out.mkdir(parents=True)
        except OSError as exc:
            raise ValueError(f"--out {out} cannot be created: {exc.strerror or exc}") from None
        return created
    if not os.access(out, os.W_OK | os.X_OK):
        raise ValueError(f"--out {out} is not writable")
    present = sorted(p.name for p in out.iterdir())
    if not present:
        return None
    others = [name for name in present if name not in TELEMETRY_FILES]
    if others:
        raise ValueError(
            f"--out {out} holds files that are not servegym telemetry ({', '.join(others[:5])}): "
            "choose another directory"
        )
    if not overwrite:
        raise ValueError(f"--out {out} already holds telemetry ({', '.join(present)}): pass --overwrite to replace it")
    for name in present:
        (out / name).unlink()
    return None


def _remove_created(out: Path, created: Path | None) -> None:
    """Remove the directories :func:`check_out_dir` created for ``out``, if they are still empty (no debris)."""
    if created is None:
        return
    path = out.absolute()
    while True:
        with contextlib.suppress(OSError):
            path.rmdir()
        if path == created or path == path.parent:
            return
        path = path.parent


def write_telemetry(platform: Platform, out: Path, fmt: str = "csv", max_spans: int = 20_000) -> list[Path]:
    """Write everything a run recorded into directory ``out``; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    cols = platform.requests.frame(platform.arrived)
    written = [
        write_table(cols, out / f"requests.{fmt}"),
        write_table(intervals_to_columns(platform.intervals, platform.level_names), out / f"intervals.{fmt}"),
    ]
    replicas = {
        name: [getattr(r, name) for r in platform.pool.replicas]
        for name in ("id", "provision_s", "ready_s", "drain_s", "stop_s", "state")
    }
    written.append(write_table(replicas, out / "replicas.csv"))
    incidents = out / "incidents.json"
    incidents.write_text(json.dumps([asdict(i) for i in platform.incidents], indent=2))
    written.append(incidents)
    kpis = out / "kpis.json"
    kpis.write_text(json.dumps(_json_safe(platform.kpis()), indent=2))
    written.append(kpis)
    scenario = out / "scenario.yaml"
    scenario.write_text(yaml.safe_dump(scenario_to_dict(platform.scenario), sort_keys=False))
    written.append(scenario)
    written.append(
        write_chrome_trace(
            cols,
            platform.pool.replicas,
            platform.incidents,
            [b.name for b in platform.backends],
            platform.level_names,
            out / "trace.json",
            platform.now,
            max_spans,
        )
    )
    return written


def _json_safe(kpis: dict[str, dict[str, float]]) -> dict[str, dict[str, float | None]]:
    return {scope: {k: (None if math.isnan(v) else v) for k, v in row.items()} for scope, row in kpis.items()}


def _simulate(args: argparse.Namespace) -> int:
    scenario: ScenarioConfig = load_scenario(args.scenario, args.overrides)
    if args.seed is not None:
        scenario = replace(scenario, seed=args.seed)
    if args.duration is not None:
        scenario = apply_overrides(scenario, [f"duration_s={args.duration}"])
    check_run_size(scenario)
    expected = expected_requests(scenario)
    if expected > LARGE_RUN_REQUESTS:
        print(
            f"servegym: about {expected:,.0f} requests to simulate (roughly {expected / 100_000 / 60:.0f} min at "
            "100k requests/s)",
            file=sys.stderr,
            flush=True,
        )
    created = check_out_dir(Path(args.out), args.overwrite) if args.out is not None else None
    start = time.perf_counter()
    try:
        platform = Platform(scenario)  # the first build in a process also draws the intent catalogues
        built = time.perf_counter()
        kpis = platform.run()
    except BaseException:
        if args.out is not None:
            _remove_created(Path(args.out), created)
        raise
    elapsed = time.perf_counter() - built
    print(
        f"scenario {scenario.name!r}, seed {scenario.seed}: {scenario.duration_s:g} simulated s, "
        f"{platform.arrived} requests in {elapsed:.2f} s wall ({platform.arrived / max(elapsed, 1e-9):,.0f} "
        f"requests/s; building the platform took {built - start:.2f} s)"
    )
    print(format_kpi_table(kpis, platform.level_names, platform.now))
    overall = kpis["all"]
    if "trace_requests" in overall and overall["requests"] < overall["trace_requests"]:
        print(
            f"servegym: warning: {trace_summary(overall, platform.now).removeprefix('trace: ')}; "
            f"to replay the whole trace, pass duration_s=null or a --duration above {overall['trace_end_s']:g} s",
            file=sys.stderr,
        )
    if args.out is not None:
        files = write_telemetry(platform, Path(args.out), args.format, args.max_spans)
        print(f"telemetry written to {args.out}: " + ", ".join(p.name for p in files))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from servegym.experiments.evaluate import evaluate, format_comparison

    scenario = load_scenario(args.scenario, args.overrides)
    if args.duration is not None:
        scenario = apply_overrides(scenario, [f"duration_s={args.duration}"])
    params: dict[str, dict[str, object]] = {}
    for item in args.param:
        key, sep, raw = item.partition("=")
        policy, dot, name = key.partition(".")
        if not sep or not dot or not policy or not name:
            raise ConfigError(
                f"--param {item!r} is not of the form policy.argument=value (e.g. hpa.target_utilisation=0.6)"
            )
        params.setdefault(policy, {})[name] = yaml.safe_load(raw)
    policies = list(args.policies)
    if args.baseline is not None and args.baseline not in policies:
        policies.insert(0, args.baseline)
    _check_evaluation(policies, args.seeds, params)
    start = time.perf_counter()
    results = evaluate(policies, args.env, scenario, args.seeds, params)
    print(
        f"{args.env} on scenario {scenario.name!r} ({scenario.duration_s:g} s), seeds {args.seeds}, "
        f"{time.perf_counter() - start:.1f} s wall"
    )
    print(format_comparison(results, args.baseline))
    return 0


def _check_evaluation(policies: list[str], seeds: list[int], params: dict[str, dict[str, object]]) -> None:
    """Refuse what would silently distort an evaluation: repeats, misplaced overrides, unused parameters."""
    for policy in policies:
        if "=" in policy:
            raise ConfigError(
                f"--policies {policy!r} looks like a scenario override: put key=value overrides before the options"
            )
    repeated = sorted({p for p in policies if policies.count(p) > 1})
    if repeated:
        raise ConfigError(f"--policies repeats {', '.join(repeated)}: each must appear once")
    repeated_seeds = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated_seeds:
        raise ConfigError(
            f"--seeds repeats {', '.join(map(str, repeated_seeds))}: each must appear once "
            "(a repeated seed would count as independent evidence)"
        )
    named = {name for spec in policies for name in spec.split("+")}
    for policy in params:
        if policy not in named:
            raise ConfigError(
                f"--param {policy}.{next(iter(params[policy]))}: {policy!r} is not among the evaluated policies "
                f"({', '.join(sorted(named))})"
            )


def _count(text: str) -> int:
    """An integer >= 0 (``--max-spans``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is invalid: must be an integer >= 0")
    return value


def _seed(text: str) -> int:
    """A ``--seeds`` value; a ``key=value`` here is an override given after the options."""
    if "=" in text:
        raise argparse.ArgumentTypeError(
            f"{text!r} looks like a scenario override: put key=value overrides before the options"
        )
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None


HYDRA_APPS = {
    "train": "servegym.experiments.train",
    "compare": "servegym.experiments.compare",
    "export": "servegym.experiments.export",
}
"""Subcommands that are Hydra apps: their arguments are Hydra overrides (``key=value``, ``-m``, ``--help``)."""


# Flags after which the command line is not a plain list of overrides: Hydra handles those alone.
_HYDRA_OWN_FLAGS = frozenset(
    {
        *("-h", "--help", "--hydra-help", "-c", "--cfg", "-p", "--package", "--resolve", "-i", "--info"),
        *("-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir", "-sc", "--shell-completion"),
        "--experimental-rerun",
    }
)


def _one_line(message: str) -> str:
    """Hydra's multi-line composition error as one line: options listed inline, its hints dropped."""
    parts: list[str] = []
    options: list[str] = []
    for raw in message.splitlines():
        line = raw.strip()
        if not line or line.startswith(("To append", "Set the environment", "reference_type", "object_type")):
            continue
        if line.startswith("Config search path"):
            break
        if raw.startswith("\t"):
            options.append(line)
            continue
        if options:
            parts[-1] += " " + ", ".join(options)
            options = []
        parts.append(line.rstrip(":.") + (":" if line.endswith(":") else ""))
    if options:
        parts[-1] += " " + ", ".join(options)
    return "; ".join(parts).replace("Schema'", "'")


def _composition_error(command: str, args: list[str]) -> str | None:
    """Compose the app's config with ``args`` as Hydra will; the error as one line, or None.

    Hydra reports a misspelt group option (``agent=ppo2``), key or value in a multi-line
    block that ends in a hint about stack traces. Composing first gives the same check as
    one ``servegym <command>: error:`` line with exit status 2, before any job. A sweep's
    values (``agent=ppo,a2c``) are each composed; ``hydra.*`` overrides, range sweeps and
    Hydra's own flags are left to Hydra.
    """
    from hydra import compose, initialize_config_module
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if any(a in _HYDRA_OWN_FLAGS or (a.startswith("--") and a != "--multirun") for a in args):
        return None
    lines = [a for a in args if a not in ("-m", "--multirun")]
    try:
        overrides = OverridesParser.create().parse_overrides(lines)
    except HydraException:
        return None  # a syntax error: Hydra's own message points at the character
    fixed: list[str] = []
    swept: list[list[str]] = []
    for override in overrides:
        if override.is_hydra_override():
            continue
        if not override.is_sweep_override():
            fixed.append(str(override.input_line))
        elif override.is_discrete_sweep():
            key = override.get_key_element()
            swept.append([f"{key}={value}" for value in override.sweep_string_iterator()])
    candidates = [[*fixed, *(values[0] for values in swept)]]
    for k, values in enumerate(swept):
        rest = [v[0] for j, v in enumerate(swept) if j != k]
        candidates += [[*fixed, *rest, value] for value in values[1:]]
    with initialize_config_module(config_module="servegym.conf", version_base=None):
        for candidate in candidates:
            try:
                compose(config_name=command, overrides=candidate)
            except (HydraException, OmegaConfBaseException) as exc:
                cause = exc.__cause__  # compose() keeps the details (the key, the type) there
                line = _one_line(f"{exc}\n{cause}" if cause is not None and str(cause) not in str(exc) else str(exc))
                moved = [o for o in candidate if o.lstrip("+~").startswith("objective.")]
                if moved:
                    key = moved[0].lstrip("+~").partition("=")[0]
                    line += f" (the objective's prices are scenario keys: write scenario.{key})"
                return line
    return None


def _run_hydra_app(command: str, args: list[str]) -> int:
    """Run the Hydra app behind ``servegym <command>`` with ``args`` as its command line."""
    import importlib

    module = importlib.import_module(HYDRA_APPS[command])
    error = _composition_error(command, args)
    if error is not None:
        print(f"servegym {command}: error: {error}", file=sys.stderr)
        return 2
    saved = sys.argv
    sys.argv = [f"servegym {command}", *args]
    try:
        module.app()
    finally:
        sys.argv = saved
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``servegym`` console script."""
    args_in = sys.argv[1:] if argv is None else argv
    if args_in and args_in[0] in HYDRA_APPS:
        return _run_hydra_app(args_in[0], args_in[1:])
    parser = argparse.ArgumentParser(
        prog="servegym", description="Simulate and optimise an LLM agent-serving platform."
    )
    parser.add_argument("--version", action="version", version=f"servegym {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser(
        "simulate",
        help="run a scenario and print its KPI table",
        description="Run a scenario and print its KPIs. Overrides are dotted keys, e.g. workload.rate_rps=30 "
        "backends.0.capability=0.5 (values are YAML).",
    )
    sim.add_argument("--scenario", default="default", help="a shipped scenario name or a path to a YAML file")
    sim.add_argument("--seed", type=int, default=None, help="override the scenario's seed")
    sim.add_argument("--duration", type=float, default=None, help="override the simulated duration in seconds")
    sim.add_argument("--out", default=None, help="write telemetry into this directory (new or empty)")
    sim.add_argument("--overwrite", action="store_true", help="replace the telemetry already in --out")
    sim.add_argument(
        "--format", choices=("csv", "parquet"), default="csv", help="format of request and interval tables"
    )
    sim.add_argument("--max-spans", type=_count, default=20_000, help="requests written to trace.json")
    sim.add_argument("overrides", nargs="*", metavar="key=value")
    ev = sub.add_parser(
        "evaluate",
        help="evaluate policies over seeds: KPI means with 95%% intervals and paired differences",
        description="Evaluate policies on an environment's decision over seeds (common random numbers). "
        "Policies: scaling: static hpa kpa step scheduled; routing: random round_robin jsq power_of_two "
        "cheapest strongest cascade; caching: admit_all admit_none frequency fixed_threshold; "
        "oracles: oracle_router clairvoyant; builtin (the scenario's own rules). "
        "Join with + for Platform-v0 (e.g. hpa+cascade). Scenario overrides (key=value) go before the options.",
    )
    ev.add_argument("--env", default="Autoscaling-v0", help="Autoscaling-v0, Routing-v0, Caching-v0 or Platform-v0")
    ev.add_argument("--policies", nargs="+", required=True, metavar="POLICY")
    ev.add_argument("--baseline", default=None, help="report paired differences against this policy")
    ev.add_argument("--scenario", default="default", help="a shipped scenario name or a path to a YAML file")
    ev.add_argument("--seeds", nargs="+", type=_seed, default=[0, 1, 2, 3, 4])
    ev.add_argument("--duration", type=float, default=None, help="override the simulated duration in seconds")
    ev.add_argument("--param", action="append", default=[], metavar="policy.arg=value", help="a policy argument")
    ev.add_argument("overrides", nargs="*", metavar="key=value", help="scenario overrides")
    for command in HYDRA_APPS:
        sub.add_parser(command, help=f"Hydra app: servegym {command} key=value ... (see servegym {command} --help)")
    args = parser.parse_args(args_in)
    try:
        return _simulate(args) if args.command == "simulate" else _evaluate(args)
    except (ConfigError, TraceError, ValueError) as exc:
        print(f"servegym: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
