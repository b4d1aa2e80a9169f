"""The runtime alone: hash checks, input checks with clear errors, and no heavy imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from servegym.deploy import runtime
from servegym.deploy.export import export_policy
from servegym.policies import HPA, scaling_kwargs
from tests.deploy.conftest import Recorded


@pytest.fixture()
def hpa_bundle(recorded: Recorded, tmp_path: Path) -> Path:
    return export_policy(HPA(**scaling_kwargs(recorded.scenario)), tmp_path / "hpa")


@pytest.fixture()
def net_bundle(recorded: Recorded, tmp_path: Path) -> Path:
    """A small PPO network (untrained: these tests are about the files and the inputs)."""
    import gymnasium as gym
    from stable_baselines3 import PPO

    from servegym.deploy.export import export_sb3

    env = gym.make("servegym/Autoscaling-v0", duration_s=60.0)
    model = PPO("MlpPolicy", env, policy_kwargs={"net_arch": [16]}, seed=0, device="cpu")
    rms = (recorded.interval.mean(axis=0).astype(np.float64), recorded.interval.var(axis=0).astype(np.float64))
    return export_sb3(model, recorded.interval_layout, tmp_path / "ppo", obs_rms=rms)


def test_tampered_weights_are_refused(net_bundle: Path) -> None:
    path = net_bundle / "weights.npz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(runtime.BundleError, match=r"weights\.npz: tampered, sha256 .* does not match"):
        runtime.load(net_bundle)


def test_tampered_runtime_module_is_refused(net_bundle: Path) -> None:
    path = net_bundle / "servegym_runtime.py"
    path.write_text(path.read_text() + "\n# edited\n")
    with pytest.raises(runtime.BundleError, match=r"servegym_runtime\.py: tampered"):
        runtime.load(net_bundle)


def test_edited_spec_is_refused(hpa_bundle: Path) -> None:
    path = hpa_bundle / "spec.json"
    spec = json.loads(path.read_text())
    spec["policy"]["params"]["target_utilisation"] = 0.99
    path.write_text(json.dumps(spec))
    with pytest.raises(runtime.BundleError, match=r"spec\.json: tampered, spec_sha256"):
        runtime.load(hpa_bundle)


@pytest.mark.parametrize("name", ["weights.npz", "policy.onnx", "servegym_runtime.py", "spec.json"])
def test_missing_file_is_refused(net_bundle: Path, name: str) -> None:
    (net_bundle / name).unlink()
    with pytest.raises(runtime.BundleError, match=f"incomplete bundle, {name} is missing"):
        runtime.load(net_bundle)


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(runtime.BundleError, match="not a directory"):
        runtime.load(tmp_path / "nowhere")
    (tmp_path / "spec.json").write_text("{not json")
    with pytest.raises(runtime.BundleError, match="not readable JSON"):
        runtime.load(tmp_path)


def _rehash(bundle: Path) -> None:
    """Record the files' current hashes in spec.json: damage the hashes cannot catch (written before hashing)."""
    spec = json.loads((bundle / "spec.json").read_text())
    spec["files"] = {name: runtime.file_sha256(bundle / name) for name in spec["files"]}
    spec["spec_sha256"] = runtime.spec_digest(spec)
    (bundle / "spec.json").write_text(json.dumps(spec))


@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_a_truncated_weights_file_is_one_clear_error(net_bundle: Path, cut: float) -> None:
    path = net_bundle / "weights.npz"
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)])
    _rehash(net_bundle)
    with pytest.raises(runtime.BundleError, match=r"weights\.npz: damaged, not a readable \.npz archive of arrays"):
        runtime.load(net_bundle)


def test_weights_that_are_not_an_archive_are_one_clear_error(net_bundle: Path) -> None:
    np.save(net_bundle / "weights.npz", np.zeros(3))  # np.save appends .npy: write the bytes under the bundle's name
    (net_bundle / "weights.npz").write_bytes((net_bundle / "weights.npz.npy").read_bytes())
    (net_bundle / "weights.npz.npy").unlink()
    _rehash(net_bundle)
    with pytest.raises(runtime.BundleError, match=r"weights\.npz: damaged, .* \(it holds a single unnamed array\)"):
        runtime.load(net_bundle)


@pytest.mark.parametrize(("literal", "shown"), [("NaN", "nan"), ("Infinity", "inf"), ("-1e999", "-inf")])
def test_a_spec_with_a_non_finite_number_names_where(hpa_bundle: Path, literal: str, shown: str) -> None:
    path = hpa_bundle / "spec.json"
    spec = json.loads(path.read_text())
    spec["policy"]["params"]["target_utilisation"] = "__here__"
    path.write_text(json.dumps(spec).replace('"__here__"', literal))
    pattern = rf"spec\.json: policy\.params\.target_utilisation is {shown}, not a finite number"
    with pytest.raises(runtime.BundleError, match=pattern):
        runtime.load(hpa_bundle)


def test_a_parameter_of_the_wrong_type_is_one_clear_error(hpa_bundle: Path) -> None:
    path = hpa_bundle / "spec.json"
    spec = json.loads(path.read_text())
    spec["policy"]["params"]["target_utilisation"] = "high"
    path.write_text(json.dumps(spec))
    _rehash(hpa_bundle)
    with pytest.raises(runtime.BundleError, match=r"the hpa policy's parameters are malformed \(ValueError"):
        runtime.load(hpa_bundle)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_feature_is_named(net_bundle: Path, recorded: Recorded, bad: float) -> None:
    bundle = runtime.load(net_bundle)
    obs = recorded.interval[0].copy()
    obs[8] = bad
    with pytest.raises(runtime.ObservationError, match=r"feature 'latency_p95_s' \(index 8\) is .*not a finite"):
        bundle.decide(obs)
    batch = recorded.interval[:5].copy()
    batch[3, 2] = bad
    with pytest.raises(runtime.ObservationError, match=r"row 3: feature 'utilisation' \(index 2\)"):
        bundle.decide_batch(batch)
    named = dict(zip(bundle.feature_names, recorded.interval[0].tolist(), strict=True))
    named["queue_len"] = bad
    with pytest.raises(runtime.ObservationError, match="feature 'queue_len'"):
        bundle.decide(named)


def test_wrong_shape_and_dtype(net_bundle: Path, recorded: Recorded) -> None:
    bundle = runtime.load(net_bundle)
    with pytest.raises(runtime.ObservationError, match=r"shape \(13,\), expected \(14,\) for the features arrival"):
        bundle.decide(recorded.interval[0][:13])
    with pytest.raises(runtime.ObservationError, match=r"shape \(1, 14\)"):
        bundle.decide(recorded.interval[:1])
    with pytest.raises(runtime.ObservationError, match=r"batch has shape \(14,\), expected \(n, 14\)"):
        bundle.decide_batch(recorded.interval[0])
    with pytest.raises(runtime.ObservationError, match="dtype bool"):
        bundle.decide(np.ones(14, dtype=bool))
    with pytest.raises(runtime.ObservationError, match="dtype <U"):
        bundle.decide(np.array(["1"] * 14))
    with pytest.raises(runtime.ObservationError, match="action mask has shape"):
        bundle.decide(recorded.interval[0], np.ones(3, dtype=bool))


def test_named_features(hpa_bundle: Path, recorded: Recorded) -> None:
    bundle = runtime.load(hpa_bundle)
    obs = recorded.interval[100]
    named = dict(zip(bundle.feature_names, obs.tolist(), strict=True))
    assert bundle.decide(named) == runtime.load(hpa_bundle).decide(obs)
    with pytest.raises(runtime.ObservationError, match=r"unknown feature name\(s\) 'cpu'; this policy reads: arrival"):
        bundle.decide({**named, "cpu": 0.5})
    del named["utilisation"]
    with pytest.raises(runtime.ObservationError, match=r"missing feature\(s\) utilisation"):
        bundle.decide(named)
    with pytest.raises(runtime.ObservationError, match="feature 'queue_len' is '3'"):
        bundle.decide({**dict(zip(bundle.feature_names, obs.tolist(), strict=True)), "queue_len": "3"})
    rows = [dict(zip(bundle.feature_names, o.tolist(), strict=True)) for o in recorded.interval[:50]]
    bundle.reset()
    expected = runtime.load(hpa_bundle).decide_batch(recorded.interval[:50])
    assert bundle.decide_batch(rows).tolist() == expected.tolist()


def test_heuristics_refuse_masks(hpa_bundle: Path, recorded: Recorded) -> None:
    with pytest.raises(runtime.ObservationError, match="takes no action mask"):
        runtime.load(hpa_bundle).decide(recorded.interval[0], np.ones(25, dtype=bool))


def test_runtime_imports_only_numpy_in_a_fresh_interpreter(net_bundle: Path) -> None:
    """The bundle's own copy of the runtime, in an isolated interpreter, loads and decides."""
    code = f"""
import sys
sys.path.insert(0, {str(net_bundle)!r})
import servegym_runtime
policy = servegym_runtime.load({str(net_bundle)!r})
action = policy.decide([0.5] * len(policy.feature_names))
heavy = ["torch", "stable_baselines3", "sb3_contrib", "gymnasium", "simpy", "mlflow", "sklearn", "servegym",
         "onnxruntime", "pandas", "scipy"]
print(action, [m for m in heavy if m in sys.modules or any(k.startswith(m + ".") for k in sys.modules)])
"""
    done = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    action, loaded = done.stdout.rsplit(" ", 1)[0], done.stdout.strip().split(" ", 1)[1]
    assert int(action) in range(49)
    assert loaded == "[]", f"the runtime imported {loaded}"
