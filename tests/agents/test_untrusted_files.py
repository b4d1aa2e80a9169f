"""Loading a policy directory never runs code from it: each file servegym reads, given a crafted pickle.

Every test plants a payload whose unpickling would create a marker file (``exec`` of an
``open``), in one of the files a policy directory holds, and checks that
:func:`load_policy` refuses the file by name and the marker never appears. The legitimate
files load and decide as before (the round trips below and the learners' own tests).
"""

from __future__ import annotations

import base64
import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle
import gymnasium as gym
import joblib
import numpy as np
import pytest
import torch
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.tree import DecisionTreeClassifier
from stable_baselines3 import A2C, DQN, PPO

import servegym.envs  # noqa: F401 - registers the environments
from servegym.agents.admission import LearnedAdmission
from servegym.agents.bandit import LinearBanditRouter
from servegym.agents.distill import DistilledTreePolicy
from servegym.agents.forecast import WorkloadForecaster
from servegym.agents.io import PolicyLoadError, load_joblib, load_policy, save_policy
from servegym.agents.sb3 import SB3Policy
from servegym.envs.features import Layout


class Payload:
    """Unpickling this writes ``marker``: the proof that a loader ran code from a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "PWNED"


def _refused(directory: Path, file: str, marker: Path) -> None:
    with pytest.raises(PolicyLoadError, match=file.replace(".", r"\.")):
        load_policy(directory)
    assert not marker.exists(), "loading the policy directory ran code from it"


def _autoscaling_layout() -> Layout:
    layout: Layout = gym.make("servegym/Autoscaling-v0", duration_s=60.0).unwrapped.layout  # type: ignore[attr-defined]
    return layout


def _observations(layout: Layout, n: int = 40) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.uniform(layout.low, np.minimum(layout.high, 50.0), size=(n, len(layout.names))).astype(np.float32)


# -- scikit-learn estimators (joblib) ------------------------------------------------------------


def _distilled(tmp_path: Path) -> tuple[Path, str]:
    layout = _autoscaling_layout()
    X = _observations(layout, 200).astype(np.float64)
    tree = DecisionTreeClassifier(max_depth=3, random_state=0).fit(X, (X[:, 2] > 0.5).astype(int) * 6)
    return save_policy(
        DistilledTreePolicy(layout, [tree], "discrete"), tmp_path / "distilled"
    ), "distilled_trees.joblib"


def _admission(tmp_path: Path) -> tuple[Path, str]:
    layout: Layout = gym.make("servegym/Caching-v0", duration_s=60.0).unwrapped.admission  # type: ignore[attr-defined]
    X = np.random.default_rng(1).uniform(layout.low, np.minimum(layout.high, 20.0), size=(200, len(layout.names)))
    # gradient boosting keeps its trees in an array of objects: the nested pickle joblib writes for those
    classifier = GradientBoostingClassifier(n_estimators=3, random_state=0).fit(X, X[:, 0] > X[:, 0].mean())
    return save_policy(LearnedAdmission(layout, classifier), tmp_path / "admission"), "admission_classifier.joblib"


@pytest.mark.parametrize("build", [_distilled, _admission], ids=["distilled_trees", "learned_admission"])
def test_a_crafted_estimator_file_is_refused(build: Callable[[Path], tuple[Path, str]], tmp_path: Path) -> None:
    directory, name = build(tmp_path)
    saved = load_policy(directory)  # servegym's own file loads
    assert type(saved).__name__ in ("DistilledTreePolicy", "LearnedAdmission")
    marker = tmp_path / "PWNED"
    joblib.dump([Payload(marker)], directory / name)
    _refused(directory, name, marker)


def test_a_crafted_array_of_objects_is_refused(tmp_path: Path, marker: Path) -> None:
    """joblib nests a plain pickle for arrays of objects; older joblib read it unrestricted."""
    directory, name = _admission(tmp_path)
    joblib.dump([np.array([Payload(marker)], dtype=object)], directory / name)
    _refused(directory, name, marker)


def test_a_crafted_forecaster_file_is_refused(tmp_path: Path, marker: Path) -> None:
    """The predictive autoscaler's forecaster keeps its regressors in its own joblib file."""
    t = np.arange(600)
    rates = [5.0 + 2.0 * np.sin(2 * np.pi * t / 240.0) + np.random.default_rng(2).normal(0, 0.3, t.size)]
    forecaster = WorkloadForecaster("gradient_boosting", horizon=1, interval_s=15.0, period_s=3600.0, n_estimators=5)
    forecaster.fit(rates)
    assert forecaster.fitted
    forecaster.save(tmp_path / "forecaster")
    history = rates[0][-forecaster.lags :]
    expected = forecaster.predict(history, time_s=9000.0)
    assert expected.source == "model"
    np.testing.assert_array_equal(
        WorkloadForecaster.load(tmp_path / "forecaster").predict(history, 9000.0).mean, expected.mean
    )

    joblib.dump([Payload(marker)], tmp_path / "forecaster" / "forecaster_models.joblib")
    with pytest.raises(PolicyLoadError, match=r"forecaster_models\.joblib: refused, it references builtins\.exec"):
        WorkloadForecaster.load(tmp_path / "forecaster")
    assert not marker.exists()


def test_load_joblib_names_the_reference_and_reads_damage_clearly(tmp_path: Path, marker: Path) -> None:
    joblib.dump({"model": Payload(marker)}, tmp_path / "x.joblib")
    with pytest.raises(PolicyLoadError, match=r"x\.joblib: refused, it references builtins\.exec, which is not"):
        load_joblib(tmp_path / "x.joblib")
    (tmp_path / "cut.joblib").write_bytes((tmp_path / "x.joblib").read_bytes()[:20])
    with pytest.raises(PolicyLoadError, match=r"cut\.joblib: not an estimator file servegym wrote"):
        load_joblib(tmp_path / "cut.joblib")
    assert not marker.exists()


# -- numpy arrays -------------------------------------------------------------------------------


def test_crafted_normalisation_statistics_are_refused(tmp_path: Path, marker: Path) -> None:
    layout = _autoscaling_layout()
    model = PPO("MlpPolicy", gym.make("servegym/Autoscaling-v0", duration_s=60.0), policy_kwargs={"net_arch": [8]})
    rms = (np.zeros(len(layout.names)), np.ones(len(layout.names)))
    directory = save_policy(SB3Policy(model, "ppo", layout, rms), tmp_path / "ppo")
    mean = np.array([Payload(marker)] * len(layout.names), dtype=object)
    np.savez(directory / "obs_rms.npz", mean=mean, var=rms[1])  # type: ignore[arg-type]
    _refused(directory, "obs_rms.npz", marker)


def test_crafted_bandit_state_is_refused(tmp_path: Path, marker: Path) -> None:
    layout: Layout = gym.make("servegym/Routing-v0", duration_s=60.0).unwrapped.layout  # type: ignore[attr-defined]
    backends = [n.removeprefix("busy_") for n in layout.names if n.startswith("busy_")]
    directory = save_policy(LinearBanditRouter(layout, backends), tmp_path / "bandit")
    with np.load(directory / "bandit.npz") as state:
        arrays = {k: state[k] for k in state.files}
    arrays["theta"] = np.array([Payload(marker)], dtype=object)
    np.savez(directory / "bandit.npz", **arrays)  # type: ignore[arg-type]
    _refused(directory, "allow_pickle=False", marker)


# -- stable-baselines3 model.zip -----------------------------------------------------------------


def _sb3(algo: str, tmp_path: Path) -> tuple[Path, SB3Policy]:
    layout = _autoscaling_layout()
    env = gym.make("servegym/Autoscaling-v0", duration_s=60.0)
    cls = {"ppo": PPO, "a2c": A2C, "dqn": DQN}[algo]
    model = cls("MlpPolicy", env, policy_kwargs={"net_arch": [8]}, seed=0, device="cpu")
    policy = SB3Policy(model, algo, layout, env_id="servegym/Autoscaling-v0")
    return save_policy(policy, tmp_path / algo), policy


def _rewrite_zip(path: Path, edit: Callable[[dict[str, bytes]], None]) -> None:
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    edit(members)
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)


def _pickled(obj: Any) -> dict[str, str]:
    """An entry of SB3's ``data`` as SB3 writes a value it cannot store as JSON."""
    return {":type:": "<class 'abc.ABCMeta'>", ":serialized:": base64.b64encode(cloudpickle.dumps(obj)).decode()}


@pytest.mark.parametrize("algo", ["ppo", "a2c", "dqn"])
def test_sb3_policies_round_trip_without_unpickling(algo: str, tmp_path: Path) -> None:
    """Every pickled entry of SB3's data is replaced from servegym's records, and the network decides the same."""
    directory, policy = _sb3(algo, tmp_path)
    with zipfile.ZipFile(directory / "model.zip") as archive:
        data = json.loads(archive.read("data"))
    pickled = {k for k, v in data.items() if isinstance(v, dict) and ":serialized:" in v}
    assert {"policy_class", "observation_space", "action_space"} <= pickled
    # Were any of them unpickled, this payload would run: a load that replaces every one does not care.
    _rewrite_zip(
        directory / "model.zip",
        lambda members: members.update(
            data=json.dumps({**data, **{k: _pickled(Payload(tmp_path / "PWNED")) for k in pickled}}).encode()
        ),
    )
    loaded = load_policy(directory)
    assert not (tmp_path / "PWNED").exists()
    assert isinstance(loaded, SB3Policy)
    assert loaded.model.action_space == policy.model.action_space
    assert type(loaded.model.policy) is type(policy.model.policy)
    obs = _observations(policy.layout)
    assert [loaded.act(o) for o in obs] == [policy.act(o) for o in obs]


def test_sb3_directories_without_servegyms_record_load_from_sb3s_readable_copy(tmp_path: Path) -> None:
    """Directories written before sb3.json kept its record: the spaces and kwargs SB3 stores readably beside pickles."""
    directory, policy = _sb3("a2c", tmp_path)  # A2C pickles its policy kwargs (RMSprop as optimizer class)
    meta = json.loads((directory / "sb3.json").read_text())
    del meta["model"]
    (directory / "sb3.json").write_text(json.dumps(meta))
    loaded = load_policy(directory)
    assert isinstance(loaded, SB3Policy)
    assert type(loaded.model.policy.optimizer) is torch.optim.RMSprop
    obs = _observations(policy.layout)
    assert [loaded.act(o) for o in obs] == [policy.act(o) for o in obs]


def test_an_unknown_pickled_entry_in_sb3_data_is_refused(tmp_path: Path, marker: Path) -> None:
    directory, _ = _sb3("ppo", tmp_path)

    def plant(members: dict[str, bytes]) -> None:
        members["data"] = json.dumps({**json.loads(members["data"]), "surprise": _pickled(Payload(marker))}).encode()

    _rewrite_zip(directory / "model.zip", plant)
    with pytest.raises(PolicyLoadError, match=r"model\.zip: refused, entry 'surprise' is a pickle servegym keeps no"):
        load_policy(directory)
    assert not marker.exists()


def test_a_crafted_tensor_file_is_refused(tmp_path: Path, marker: Path) -> None:
    directory, _ = _sb3("ppo", tmp_path)

    def plant(members: dict[str, bytes]) -> None:
        buffer = io.BytesIO()
        torch.save({"weights": Payload(marker)}, buffer)
        members["policy.pth"] = buffer.getvalue()

    _rewrite_zip(directory / "model.zip", plant)
    with pytest.raises(PolicyLoadError, match=r"model\.zip: refused, a tensor file holds more than tensors"):
        load_policy(directory)
    assert not marker.exists()


def test_a_class_policy_json_names_must_be_a_servegym_policy(tmp_path: Path, marker: Path) -> None:
    """sb3.py imports PPO, whose own load unpickles: policy.json may not name it through servegym."""
    directory, _ = _sb3("ppo", tmp_path)
    for name in ("servegym.agents.sb3:PPO", "servegym.agents.admission:joblib", "servegym.deploy.runtime:load"):
        (directory / "policy.json").write_text(json.dumps({"class": name}))
        with pytest.raises(PolicyLoadError, match="not a servegym policy class"):
            load_policy(directory)
    assert not marker.exists()
