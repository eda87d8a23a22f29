"""`python -m training.signs`: latent sign changes read from checkpoints agree with what the trainer logged."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from training.signs import main, rows
from training.trainer import Trainer, make_config

from _data import CIFAR_DIR as DATA  # noqa: E402

needs_mini = pytest.mark.skipif(not (DATA / "cifar10_mini.npz").exists(), reason="needs ../shared CIFAR-10 mini")


def _cfg(**kw):
    base = dict(name="t", epochs=2, batch_size=32, limit_train=128, limit_test=64, layout="mini", log_every=2,
                eval_batch=64, export=False, channels_last=False, lam=0.0, theta=0.0, lr=0.5)
    return make_config({**base, **kw})


@needs_mini
def test_signs_from_checkpoints_match_the_epoch_log(tmp_path, capsys):
    torch.set_num_threads(1)
    run = tmp_path / "run"
    cfg = _cfg(latent_init_scale=0.1)
    Trainer(cfg, str(DATA), run).fit(epochs=1, progress=False)
    shutil.copy(run / "checkpoint.pt", tmp_path / "ep1.pt")
    tr = Trainer(cfg, str(DATA), run, load_init=False)
    tr.resume(run / "checkpoint.pt")
    tr.fit(progress=False)
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    ep1, ep2 = [r for r in logged if r["kind"] == "epoch"]
    r1, r2 = rows([tmp_path / "ep1.pt", run / "checkpoint.pt"], per_layer=True)
    assert (r1["epoch"], r2["epoch"]) == (1, 2)
    assert r1["from_start"] == ep1["sign_changed_from_init"] > 0 and r1["from_previous"] is None
    assert r2["from_start"] == ep2["sign_changed_from_init"]
    assert r2["from_previous"] == ep2["sign_flips"] > 0
    assert len(r2["layers"]) == 18 and all(0 <= v <= 1 for v in r2["layers"])
    assert main([str(tmp_path / "ep1.pt"), str(run / "checkpoint.pt")]) == 0
    assert "| 2 |" in capsys.readouterr().out


@needs_mini
def test_fine_tuning_runs_have_no_start_and_bad_files_are_usage_errors(tmp_path):
    torch.set_num_threads(1)
    Trainer(_cfg(epochs=1), str(DATA), tmp_path / "src").fit(progress=False)
    Trainer(_cfg(epochs=1, init_from=str(tmp_path / "src" / "checkpoint.pt")), str(DATA),
            tmp_path / "ft").fit(progress=False)
    (row,) = rows([tmp_path / "ft" / "checkpoint.pt"], per_layer=True)
    assert row["from_start"] is None and "layers" not in row
    Trainer(_cfg(epochs=1, binary=False), str(DATA), tmp_path / "fp").fit(progress=False)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    for bad, msg in ((tmp_path / "fp" / "checkpoint.pt", "full-precision"), (tmp_path / "junk.pt", "cannot read"),
                     (tmp_path / "missing.pt", "cannot read")):
        with pytest.raises(SystemExit, match=msg):
            main([str(bad)])
