"""Export never deletes what it did not write, and never runs code from the policy it exports.

``overwrite`` replaces a bundle servegym exported, and only that: a directory holding any
other file is refused by name, with or without it (``out=.`` in a directory holding
``mlflow.db`` included). A policy whose files carry a crafted pickle — a local policy
directory or an MLflow run's ``policy/`` artifact — is refused before anything runs.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import joblib
import mlflow
import numpy as np
import pytest
from sklearn.tree import DecisionTreeClassifier
from stable_baselines3 import PPO

import servegym.envs  # noqa: F401 - registers the environments
from servegym.agents.distill import DistilledTreePolicy
from servegym.agents.io import save_policy
from servegym.agents.sb3 import SB3Policy
from servegym.deploy import runtime
from servegym.deploy.export import ExportError, export_policy
from servegym.envs.features import Layout
from servegym.experiments.export import app, export_source
from servegym.policies import HPA, scaling_kwargs
from servegym.sim.config import load_scenario


def _hpa() -> HPA:
    return HPA(**scaling_kwargs(load_scenario("default")))


def _export_cli(monkeypatch: pytest.MonkeyPatch, *overrides: str) -> None:
    monkeypatch.setattr(sys, "argv", ["servegym export", *overrides])
    app()


def _tree(layout_source: str = "servegym/Autoscaling-v0") -> DistilledTreePolicy:
    layout: Layout = gym.make(layout_source, duration_s=60.0).unwrapped.layout  # type: ignore[attr-defined]
    X = np.random.default_rng(0).uniform(layout.low, np.minimum(layout.high, 50.0), size=(100, len(layout.names)))
    tree = DecisionTreeClassifier(max_depth=2, random_state=0).fit(X, (X[:, 2] > 0.5).astype(int) * 4)
    return DistilledTreePolicy(layout, [tree], "discrete")


# -- overwrite replaces only a bundle ------------------------------------------------------------


def test_overwrite_refuses_a_directory_holding_a_users_file(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "b"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        _export_cli(monkeypatch, "run=heuristic:hpa", f"out={out}", "overwrite=true")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"servegym export: error: out={out} holds notes.txt, which servegym did not export there")
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # nothing written beside it either


def test_out_dot_never_touches_the_current_directory(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "mlflow.db").write_bytes(b"SQLite format 3\x00 runs of a week")
    (tmp_path / "spec.json").write_text('{"openapi": "3.1.0"}')  # a bundle file's name, not a bundle's content
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        _export_cli(monkeypatch, "run=heuristic:hpa", "out=.", "overwrite=true")
    err = capsys.readouterr().err
    assert f"out={tmp_path} holds spec.json, mlflow.db, which servegym did not export there" in err
    assert (tmp_path / "mlflow.db").read_bytes() == b"SQLite format 3\x00 runs of a week"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db", "spec.json"]


def test_out_dot_in_an_empty_directory_writes_the_bundle_there(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    _export_cli(monkeypatch, "run=heuristic:hpa", "out=.", "mlflow.log_model=false")
    assert runtime.load(tmp_path).kind == "hpa"
    _export_cli(monkeypatch, "run=heuristic:hpa", "out=.", "overwrite=true", "params.target_utilisation=0.5")
    assert runtime.load(tmp_path).spec["policy"]["params"]["target_utilisation"] == 0.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["servegym_runtime.py", "spec.json"]


@pytest.mark.parametrize(
    "plant",
    [
        lambda out: (out / "weights.npz").write_bytes(b"somebody's weights"),  # a bundle's name, no bundle spec
        lambda out: (out / "sub").mkdir(),
        lambda out: (out / "weights.npz").symlink_to(out.parent / "elsewhere.npz"),
    ],
    ids=["bundle_name_without_spec", "directory", "symlink"],
)
def test_what_is_not_a_bundle_is_refused_by_name(tmp_path: Path, plant: Callable[[Path], Any]) -> None:
    out = tmp_path / "b"
    out.mkdir()
    plant(out)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(ExportError, match=f"holds {before[0]}, which servegym did not export there"):
        export_policy(_hpa(), out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == before


def test_a_file_as_out_is_refused_and_kept(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    out.write_text("a file")
    with pytest.raises(ExportError, match="is a file, not a directory"):
        export_policy(_hpa(), out, overwrite=True)
    assert out.read_text() == "a file"


def test_overwrite_replaces_a_bundle_with_its_bytecode_and_drops_files_it_no_longer_has(tmp_path: Path) -> None:
    env = gym.make("servegym/Autoscaling-v0", duration_s=60.0)
    model = PPO("MlpPolicy", env, policy_kwargs={"net_arch": [8]}, seed=0, device="cpu")
    layout: Layout = env.unwrapped.layout  # type: ignore[attr-defined]
    out = export_policy(SB3Policy(model, "ppo", layout), tmp_path / "b")
    assert (out / "policy.onnx").is_file()
    with pytest.raises(ExportError, match=r"already holds a policy bundle .*: pass overwrite=true"):
        export_policy(_hpa(), out)
    (out / "__pycache__").mkdir()  # a service imported servegym_runtime from the bundle directory
    (out / "__pycache__" / "servegym_runtime.cpython-311.pyc").write_bytes(b"\x00")
    (out / ".servegym-export-k2j4").mkdir()  # an interrupted export's temporary directory

    export_policy(_hpa(), out, overwrite=True)
    assert runtime.load(out).kind == "hpa"
    assert sorted(p.name for p in out.iterdir()) == ["servegym_runtime.py", "spec.json"]


def test_a_failed_export_leaves_the_old_bundle(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    out = export_policy(_hpa(), tmp_path / "b")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def damaged(directory: Path) -> None:
        raise runtime.BundleError(f"{directory}: damaged")

    monkeypatch.setattr(runtime, "load", damaged)  # the new bundle fails its check before it replaces anything
    with pytest.raises(runtime.BundleError):
        export_policy(_hpa(), out, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# -- no code from the exported policy's files ----------------------------------------------------


class Payload:
    """Unpickling this writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def test_exporting_a_crafted_policy_directory_runs_nothing(tmp_path: Path) -> None:
    directory = save_policy(_tree(), tmp_path / "policy")
    marker = tmp_path / "PWNED"
    joblib.dump([Payload(marker)], directory / "distilled_trees.joblib")
    with pytest.raises(ExportError, match=r"distilled_trees\.joblib: refused, it references builtins\.exec"):
        export_source(str(directory), tmp_path / "b", log_model=False)
    assert not marker.exists()
    assert not (tmp_path / "b").exists()


def test_exporting_a_run_whose_artifact_is_crafted_runs_nothing(store: str, tmp_path: Path) -> None:
    directory = save_policy(_tree(), tmp_path / "policy")
    marker = tmp_path / "PWNED"
    joblib.dump([Payload(marker)], directory / "distilled_trees.joblib")
    mlflow.set_experiment("servegym")
    with mlflow.start_run() as run:
        mlflow.set_tag("servegym.env", "servegym/Autoscaling-v0")
        mlflow.log_artifacts(str(directory), "policy")
    with pytest.raises(ExportError, match=r"distilled_trees\.joblib: refused, it references builtins\.exec"):
        export_source(run.info.run_id, tmp_path / "b")
    assert not marker.exists()
    assert not (tmp_path / "b").exists()


def test_overwrite_keeps_a_users_files_named_like_a_bundles(tmp_path: Path) -> None:
    # A spec.json from servegym does not make every weights.npz or policy.onnx beside it servegym's:
    # only the files that spec records, with the hashes it records, may be replaced.
    out = tmp_path / "b"
    export_source("heuristic:hpa", out)  # a heuristic bundle: no weights.npz, no policy.onnx
    (out / "weights.npz").write_text("mine")
    (out / "policy.onnx").write_text("mine too")
    with pytest.raises(ExportError, match=r"holds policy\.onnx, weights\.npz, which servegym did not export there"):
        export_source("heuristic:hpa", out, overwrite=True)
    assert (out / "weights.npz").read_text() == "mine" and (out / "policy.onnx").read_text() == "mine too"
    # An edited bundle file is no longer what servegym wrote either.
    (out / "weights.npz").unlink()
    (out / "policy.onnx").unlink()
    (out / runtime.RUNTIME_FILE).write_text("# edited by hand\n")
    with pytest.raises(ExportError, match=r"holds servegym_runtime\.py, which servegym did not export there"):
        export_source("heuristic:hpa", out, overwrite=True)
    assert (out / runtime.RUNTIME_FILE).read_text() == "# edited by hand\n"
