"""Two CPU processes (gloo) train the same BONN on a few hundred images and must end bit-identical."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from _data import CIFAR_DIR as DATA  # noqa: E402
pytestmark = pytest.mark.skipif(not (DATA / "cifar10_mini.npz").exists(), reason="no cifar10_mini.npz")


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    from training.trainer import Trainer, make_config

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        cfg = make_config(dict(name="ddp", epochs=2, batch_size=64, limit_train=256, limit_test=64,
                               layout="mini", feature_fraction=0.5, export=False, channels_last=False,
                               log_every=2))
        tr = Trainer(cfg, str(DATA), out_dir)
        tr.fit(progress=False)
        state = {f"model.{k}": v for k, v in tr.model.state_dict().items()}
        state.update({f"kernel.{k}": v for k, v in tr.kernel_loss.state_dict().items()})
        state.update({f"feature.{k}": v for k, v in tr.feature_loss.state_dict().items()})
        state["step"] = torch.tensor(tr.step)
        torch.save(state, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _adam_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    from training.trainer import Trainer, make_config

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        cfg = make_config(dict(name="ddp", optimizer="adam", lr=2e-3, epochs=2, batch_size=64, limit_train=128,
                               limit_test=64, layout="mini", feature_fraction=0.5, export=False,
                               channels_last=False))
        tr = Trainer(cfg, str(DATA), out_dir)
        sigma_m = tr.feature_loss.sigma
        before = sigma_m.detach().clone()
        tr.fit(epochs=1, progress=False)  # the feature loss is off in epoch 1 of 2
        seen = {opt.state[sigma_m].get("step", torch.tensor(0.0)) for opt in tr.optimizers if sigma_m in opt.state}
        torch.save({"unchanged": torch.equal(sigma_m.detach(), before), "steps": [float(s) for s in seen]},
                   os.path.join(out_dir, f"adam{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_leave_an_unused_parameter_alone(tmp_path):
    """Before the feature loss starts, sigma_m has no gradient on any rank. Filling it with zeros for the
    all-reduce must not hand it to AdamW, which would count steps (and decay it) where one process would not."""
    out = tmp_path / "run"
    out.mkdir()
    mp.spawn(_adam_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    for rank in (0, 1):
        got = torch.load(out / f"adam{rank}.pt", weights_only=True)
        assert got["unchanged"] and got["steps"] == []


def test_two_gloo_ranks_stay_identical(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True)
    r0 = torch.load(out / "rank0.pt", weights_only=True)
    r1 = torch.load(out / "rank1.pt", weights_only=True)
    assert int(r0["step"]) == 8  # 256 images / global batch 64 x 2 epochs
    assert r0.keys() == r1.keys()
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    # the centers moved (the all-reduced update ran) and training changed the weights
    assert float(r0["feature.centers"].abs().sum()) > 0
    assert (out / "metrics.jsonl").exists() and (out / "checkpoint.pt").exists()
