"""scripts/gpu_sweep.py: the compact data upload round-trips, and a whole sweep runs (here on the CPU)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_sweep", ROOT / "scripts" / "gpu_sweep.py")
gpu_sweep = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_sweep)


def _smooth_images(n: int, seed: int) -> np.ndarray:
    """Photo-like (smooth) images: JPEG q75 keeps them within a few grey levels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    base = rng.uniform(40, 200, (n, 1, 1, 3)) + rng.uniform(-40, 40, (n, 1, 1, 3)) * (xx + yy)[None, :, :, None]
    return np.clip(base, 0, 255).astype(np.uint8)


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "cifar"
    d.mkdir()
    for split, n in (("train", 96), ("test", 32)):
        y = (np.arange(n) % 10).astype(np.uint8)
        np.savez(d / f"cifar10_{split}.npz", x=_smooth_images(n, n), y=y)
    return d


SMALL = "batch_size=32,compile=false,channels_last=false,threads=1"  # a run spec's overrides for CPU tests


def sweep_args(tmp_path: Path, packed: Path, runs: list[str], tag: str = "", **kw) -> argparse.Namespace:
    """`gpu_sweep.py run` arguments for a CPU sweep: a generous budget, so only the planner's cap decides."""
    args = dict(packed=packed, out=str(tmp_path / f"out{tag}"), budget_s=900.0, margin_s=4.0, restart_s=6.0,
                safety=0.9, provisional_epochs=1000, work=str(tmp_path / f"work{tag}"), no_mps=True, device="cpu",
                light=False, epochs=None, resume_from=None, max_epochs=None, run=runs)
    return argparse.Namespace(**{**args, **kw})


def test_pack_unpack_round_trip(data_dir, tmp_path):
    packed = tmp_path / "packed.npz"
    gpu_sweep.pack(data_dir, packed)
    out = tmp_path / "decoded"
    gpu_sweep.unpack(packed, out)
    for split in ("train", "test"):
        a, b = np.load(data_dir / f"cifar10_{split}.npz"), np.load(out / f"cifar10_{split}.npz")
        assert b["x"].shape == a["x"].shape and b["x"].dtype == np.uint8
        np.testing.assert_array_equal(b["y"], a["y"])
        assert np.abs(b["x"].astype(int) - a["x"].astype(int)).mean() < 2.0


def test_parse_run_spec():
    name, cfg, ov = gpu_sweep.parse_run("b1=training/configs/binary_wrn22_16_adam.yaml:seed=1,lam=1.0e-5")
    assert (name, cfg, ov) == ("b1", Path("training/configs/binary_wrn22_16_adam.yaml"),
                               {"seed": "1", "lam": "1.0e-5"})
    assert gpu_sweep.parse_run("a=x.yaml") == ("a", Path("x.yaml"), {})


def test_sweep_runs_every_config_on_one_schedule(data_dir, tmp_path, capsys):
    """Two runs share one planned epoch count; a run that cannot start is retried once and left out."""
    packed = tmp_path / "packed.npz"
    gpu_sweep.pack(data_dir, packed)
    # a cap: the plan is 4 epochs however slow or loaded this machine is
    args = sweep_args(tmp_path, packed, max_epochs=4, runs=[
        f"a=training/configs/bonn_wrn22_16_adam.yaml:{SMALL}",
        f"b=training/configs/binary_wrn22_16_adam.yaml:{SMALL},seed=1",
        f"bad=training/configs/bonn_wrn22_16_adam.yaml:{SMALL},lam=-1"])
    assert gpu_sweep.run(args) == 0
    log = capsys.readouterr().out
    assert "[bad] retrying with compile: false" in log
    assert "every run trains 4 epochs" in log  # one schedule for every run
    for name in ("a", "b"):
        with tarfile.open(tmp_path / "out" / f"{name}.tar.gz") as tar:
            members = {m.name for m in tar.getmembers()}
            assert {f"{name}/checkpoint.pt", f"{name}/metrics.jsonl", f"{name}/config.json"} <= members
            cfg = json.load(tar.extractfile(f"{name}/config.json"))
            recs = [json.loads(line) for line in tar.extractfile(f"{name}/metrics.jsonl").read().splitlines()]
        epochs = [r["epoch"] for r in recs if r["kind"] == "epoch"]
        assert cfg["epochs"] == 4 and epochs == [1, 2, 3, 4]  # resumed, finished
    with tarfile.open(tmp_path / "out" / "bad.tar.gz") as tar:
        assert not any(m.name.endswith("checkpoint.pt") for m in tar.getmembers())


def test_fixed_schedule_continues_across_loans(data_dir, tmp_path, monkeypatch, capsys):
    """--epochs N: a loan that ends early (simulated by --stop-after 1) leaves bundles that the next loan
    resumes on the same N-epoch schedule, ending with every epoch logged once."""
    packed = tmp_path / "packed.npz"
    gpu_sweep.pack(data_dir, packed)
    def loan(n: int) -> argparse.Namespace:
        return sweep_args(tmp_path, packed, tag=str(n), epochs=3,
                          resume_from=str(tmp_path / "out1") if n == 2 else None,
                          runs=[f"a=training/configs/bonn_wrn22_16_adam.yaml:{SMALL}",
                                f"s=training/configs/binary_wrn22_16_adam.yaml:{SMALL},epochs=2"])  # shorter cosine

    launch = gpu_sweep.Sweep.launch
    monkeypatch.setattr(gpu_sweep.Sweep, "launch", lambda self, name, extra: launch(self, name, [*extra, "--stop-after", "1"]))
    assert gpu_sweep.run(loan(1)) == 0
    monkeypatch.setattr(gpu_sweep.Sweep, "launch", launch)
    assert gpu_sweep.run(loan(2)) == 0
    assert "[a] resuming at 1/3" in capsys.readouterr().out
    for name, total in (("a", 3), ("s", 2)):
        for n, want in ((1, [1]), (2, list(range(1, total + 1)))):
            with tarfile.open(tmp_path / f"out{n}" / f"{name}.tar.gz") as tar:
                recs = [json.loads(line) for line in tar.extractfile(f"{name}/metrics.jsonl").read().splitlines()]
                assert json.load(tar.extractfile(f"{name}/config.json"))["epochs"] == total
            assert [r["epoch"] for r in recs if r["kind"] == "epoch"] == want


def test_a_loan_killed_before_its_final_bundling_still_returns_each_run(data_dir, tmp_path, monkeypatch, capsys):
    """The device call's limit can fall below --budget-s (idle time counts against the loan), and a killed
    driver writes no final bundles. Each new checkpoint is bundled into OUT as it lands, so the runs come back
    at their last epoch and continue here."""
    torch = pytest.importorskip("torch")
    packed = tmp_path / "packed.npz"
    gpu_sweep.pack(data_dir, packed)

    def killed(self):
        raise KeyboardInterrupt("the call's limit")
    monkeypatch.setattr(gpu_sweep.Sweep, "stop", killed)
    runs = [f"a=training/configs/bonn_wrn22_16_adam.yaml:{SMALL}",
            f"b=training/configs/binary_wrn22_16_adam.yaml:{SMALL}"]
    with pytest.raises(KeyboardInterrupt):
        gpu_sweep.run(sweep_args(tmp_path, packed, epochs=2, runs=runs))
    assert "->" not in capsys.readouterr().out  # the final bundling never ran
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.tar.gz", "b.tar.gz"]  # no temp files left
    gpu_sweep.unbundle_runs(sorted((tmp_path / "out").glob("*.tar.gz")), tmp_path / "back")
    for name in ("a", "b"):
        run_dir = tmp_path / "back" / name
        assert torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)["epoch"] == 2  # the last
        assert [r["epoch"] for r in gpu_sweep.epoch_records(run_dir)] == [1, 2]


def test_bundle_with_unsafe_path_is_refused(tmp_path):
    bad = tmp_path / "bad.tar.gz"
    (tmp_path / "f").write_text("x")
    with tarfile.open(bad, "w:gz") as tar:
        tar.add(tmp_path / "f", arcname="../escape")
    with tarfile.open(bad) as tar, pytest.raises(ValueError, match="unsafe path"):
        gpu_sweep.safe_extract(tar, tmp_path / "dest")


def test_light_bundles_carry_the_exported_model_not_the_checkpoint(data_dir, tmp_path):
    """--light: a 64-wide checkpoint with its Adam state (~50 MB) is over what a loan sends back per file, so the
    bundle holds the served file instead (model.bonn for binary runs, model.onnx for FP), checked here."""
    pytest.importorskip("onnx")
    from bonn_serve.format import read_bonn

    packed = tmp_path / "packed.npz"
    gpu_sweep.pack(data_dir, packed)
    args = sweep_args(tmp_path, packed, light=True, max_epochs=2, runs=[
        f"bin=training/configs/bonn_wrn22_16_adam.yaml:{SMALL}", f"fp=training/configs/fp_wrn22_16_adam.yaml:{SMALL}"])
    assert gpu_sweep.run(args) == 0
    for name, served in (("bin", "model.bonn"), ("fp", "model.onnx")):
        bundle = tmp_path / "out" / f"{name}.tar.gz"
        with tarfile.open(bundle) as tar:
            members = {m.name for m in tar.getmembers()}
            assert f"{name}/{served}" in members and f"{name}/checkpoint.pt" not in members
            gpu_sweep.safe_extract(tar, tmp_path / "x")
    assert read_bonn(tmp_path / "x" / "bin" / "model.bonn").header["model"]["arch"] == "wrn22-16"


def test_campaign_moves_between_here_and_a_loan(data_dir, tmp_path, monkeypatch, capsys):
    """A run started on a loan comes back (`unbundle`), is re-bundled here (`bundle`) and finishes on the next
    loan on the same schedule: every epoch logged once, as if it had never moved."""
    packed = tmp_path / "packed.npz"
    gpu_sweep.pack(data_dir, packed)
    runs = [f"a=training/configs/bonn_wrn22_16_adam.yaml:{SMALL}"]
    launch = gpu_sweep.Sweep.launch
    monkeypatch.setattr(gpu_sweep.Sweep, "launch", lambda self, name, extra: launch(self, name, [*extra, "--stop-after", "1"]))
    assert gpu_sweep.run(sweep_args(tmp_path, packed, tag="1", epochs=2, runs=runs)) == 0
    monkeypatch.setattr(gpu_sweep.Sweep, "launch", launch)

    here = tmp_path / "runs"
    gpu_sweep.unbundle_runs([tmp_path / "out1" / "a.tar.gz"], here)
    assert (here / "a" / "checkpoint.pt").exists()
    gpu_sweep.bundle_runs([here / "a"], tmp_path / "to_loan")
    with tarfile.open(tmp_path / "to_loan" / "a.tar.gz") as tar:
        assert sorted(m.name for m in tar.getmembers()) == ["a/checkpoint.pt", "a/config.json", "a/metrics.jsonl"]

    assert gpu_sweep.run(sweep_args(tmp_path, packed, tag="2", epochs=2, runs=runs,
                                    resume_from=str(tmp_path / "to_loan"))) == 0
    assert "[a] resuming at 1/2" in capsys.readouterr().out
    with tarfile.open(tmp_path / "out2" / "a.tar.gz") as tar:
        recs = [json.loads(line) for line in tar.extractfile("a/metrics.jsonl").read().splitlines()]
    assert [r["epoch"] for r in recs if r["kind"] == "epoch"] == [1, 2]


def test_bundle_refuses_a_run_dir_that_cannot_resume(tmp_path):
    run_dir = tmp_path / "half"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{}")
    with pytest.raises(SystemExit, match="missing checkpoint.pt, metrics.jsonl"):
        gpu_sweep.bundle_runs([run_dir], tmp_path / "out")
    assert not (tmp_path / "out" / "half.tar.gz").exists()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
