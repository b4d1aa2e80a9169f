"""servegym evaluate: policies over seeds, paired comparisons, clear errors."""

from __future__ import annotations

import pytest

from servegym.cli import main
from servegym.experiments.evaluate import evaluate, format_comparison, run_policy
from servegym.experiments.stats import paired_difference
from servegym.sim.config import apply_overrides, load_scenario

SHORT = apply_overrides(load_scenario("default"), ["duration_s=120", "workload.rate_rps=8"])


def test_builtin_round_robin_equals_the_round_robin_policy() -> None:
    builtin = run_policy("builtin", "Routing-v0", SHORT, seed=2)
    policy = run_policy("round_robin", "Routing-v0", SHORT, seed=2)
    assert builtin == policy


def test_policies_see_the_same_requests_and_pairing_is_exact() -> None:
    results = evaluate(["round_robin", "cheapest"], "Routing-v0", SHORT, [0, 1, 2])
    rr, cheap = results
    # Same seeds, same requests: the arrival counts agree seed by seed.
    assert rr.values("requests") == cheap.values("requests")
    assert rr.values("requests") != [rr.values("requests")[0]] * 3
    diff = paired_difference(cheap.values("token_cost_usd"), rr.values("token_cost_usd"))
    assert diff.mean < 0  # the cheapest backend costs less than a round robin over all three
    table = format_comparison(results, baseline="round_robin")
    assert "paired differences" in table and "cheapest" in table


def test_cli_evaluate_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "evaluate",
            "--env",
            "Autoscaling-v0",
            "--policies",
            "hpa",
            "--baseline",
            "static",
            "--seeds",
            "0",
            "1",
            "--duration",
            "120",
            "--param",
            "hpa.target_utilisation=0.6",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "hpa" in out and "static" in out and "p95 s" in out
    assert "only 2 seeds" in out and "%" in out and "e+0" not in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--env", "Routing-v0", "--policies", "hpa"], "does not expose"),
        (["--policies", "nope"], "unknown policy"),
        (["--env", "Nope-v0", "--policies", "hpa"], "unknown environment"),
        (["--policies", "hpa", "--param", "oops"], "policy.argument=value"),
        # a value the policy's constructor rejects, an argument it lacks or needs: one line, exit 2
        (["--env", "Routing-v0", "--policies", "random", "--param", "random.seed=abc"], "rejected its arguments"),
        (["--policies", "clairvoyant", "--param", "clairvoyant.foo=1"], "has no argument 'foo'"),
        (["--policies", "scheduled"], "needs the argument 'schedule'"),
        (["--policies", "hpa", "--param", "hpa.layout=1"], "comes from the environment's observations"),
        # what would distort the results silently
        (["--policies", "hpa", "--param", "hpx.tolerance=0.2"], "'hpx' is not among the evaluated policies"),
        (["--policies", "hpa", "hpa"], "--policies repeats hpa"),
        (["--policies", "hpa", "--seeds", "1", "1"], "--seeds repeats 1"),
        (["--env", "Platform-v0", "--policies", "hpa+"], "has an empty name"),
        (["--policies", "hpa", "pool.max_replicas=64"], "put key=value overrides before the options"),
    ],
)
def test_cli_evaluate_errors_name_the_problem(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", "--seeds", "0", "--duration", "60", *args]) == 2
    assert message in capsys.readouterr().err


def test_cli_evaluate_warns_about_few_seeds_on_stderr_too(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["evaluate", "--env", "Routing-v0", "--policies", "jsq", "--duration", "60"]
    assert main([*args, "--seeds", "0", "1"]) == 0
    captured = capsys.readouterr()
    # stdout may go to a file: the warning is on stderr as well as in the table
    assert "servegym evaluate: warning: this evaluation has only 2 seeds" in captured.err
    assert "warning: this evaluation has only 2 seeds" in captured.out
    assert main([*args, "--seeds", "0", "1", "2"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_cli_evaluate_override_after_seeds_gets_the_same_hint(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--policies", "hpa", "--seeds", "0", "pool.max_replicas=-1"])
    assert exit_.value.code == 2
    assert "put key=value overrides before the options" in capsys.readouterr().err
