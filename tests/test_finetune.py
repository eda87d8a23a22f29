"""Fine-tuning from another run (`init_from` / `--init-from`) and the feature loss on the FC's output
(`feature_source: logits`)."""

from __future__ import annotations

import json

import pytest
import torch
from _data import CIFAR_DIR as DATA
from test_trainer import small_cfg as trainer_cfg

from training.data import eval_batches
from training.losses import BayesianFeatureLoss
from training.trainer import Trainer

MINI = DATA / "cifar10_mini.npz"
pytestmark = pytest.mark.skipif(not MINI.exists(), reason="cifar10_mini.npz not available")


def small_cfg(**kw):
    """test_trainer's small config, one epoch with the feature loss on throughout (a fine-tuning stage)."""
    return trainer_cfg(**{"epochs": 1, "feature_fraction": 1.0, **kw})


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A trained (b)-style run: binary, no Bayesian losses."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("src")
    Trainer(small_cfg(lam=0.0, theta=0.0), str(DATA), out).fit(progress=False)
    return out / "checkpoint.pt"


def _class_means(tr: Trainer, use_logits: bool) -> torch.Tensor:
    """Independent reference: class means of eval-mode features over the training images."""
    tr.model.eval()
    feats, labels = [], []
    with torch.no_grad():
        for xb, yb in eval_batches(tr.train, 50):
            x = tr.norm(xb)
            feats.append(tr.model(x) if use_logits else tr.model.features(x))
            labels.append(yb)
    f, y = torch.cat(feats), torch.cat(labels)
    return torch.stack([f[y == c].mean(0) if (y == c).any() else torch.zeros(f.shape[1]) for c in range(10)])


def test_init_from_loads_weights_and_starts_a_fresh_schedule(source_run, tmp_path):
    src = torch.load(source_run, weights_only=True)
    tr = Trainer(small_cfg(lam=1e-5, theta=1e-2, init_from=source_run), str(DATA), tmp_path / "ft")
    for k, v in tr.model.state_dict().items():
        assert torch.equal(v, src["model"][k]), k
    assert tr.epoch == 0 and tr.step == 0
    assert all(not s for s in tr.optimizer.state.values())  # no optimizer state carried over
    # the source had no prior: mu starts from the loaded weights (mean |X| per filter), not from random ones
    first = tr.kernel_loss.layers[0].weight.detach()
    assert torch.allclose(tr.kernel_loss.mu[0].detach(), first.abs().flatten(1).mean(1), rtol=1e-5)
    # the source had no feature loss: centers start at the class means of the training features
    assert torch.allclose(tr.feature_loss.centers, _class_means(tr, use_logits=False), atol=1e-5)
    last = tr.fit(progress=False)
    assert last["epoch"] == 1 and last["feature_on"]
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["init_from"] == str(source_run)


def test_init_from_carries_the_bayesian_state_of_a_bonn_run(tmp_path):
    torch.set_num_threads(1)
    Trainer(small_cfg(lam=1e-5, theta=1e-2), str(DATA), tmp_path / "a").fit(progress=False)
    src = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    tr = Trainer(small_cfg(lam=1e-5, theta=1e-2, init_from=tmp_path / "a" / "checkpoint.pt"), str(DATA),
                 tmp_path / "ft")
    for k, v in tr.kernel_loss.state_dict().items():
        assert torch.equal(v, src["kernel_loss"][k]), k
    for k, v in tr.feature_loss.state_dict().items():
        assert torch.equal(v, src["feature_loss"][k]), k
    # a different feature source has a different meaning (and size): its centers are recomputed instead
    lg = Trainer(small_cfg(lam=1e-5, theta=1e-2, feature_source="logits",
                           init_from=tmp_path / "a" / "checkpoint.pt"), str(DATA), tmp_path / "lg")
    assert lg.feature_loss.centers.shape == (10, 10)
    assert torch.allclose(lg.feature_loss.centers, _class_means(lg, use_logits=True), atol=1e-4)


def test_init_from_refuses_other_nets_and_other_files(source_run, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="binary=True differs"):
        Trainer(small_cfg(binary=False, lam=0.0, theta=0.0, init_from=source_run), str(DATA), tmp_path / "x")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        Trainer(small_cfg(init_from=junk), str(DATA), tmp_path / "y")
    with monkeypatch.context() as m:  # an error with an empty message still gives a one-line reason
        def load_fails_silently(*args, **kwargs):
            raise RuntimeError()

        m.setattr(torch, "load", load_fails_silently)
        with pytest.raises(ValueError, match=r"cannot read it \(RuntimeError\)"):
            Trainer(small_cfg(init_from=junk), str(DATA), tmp_path / "e")
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a bonn-serve training checkpoint"):
        Trainer(small_cfg(init_from=tmp_path / "other.pt"), str(DATA), tmp_path / "z")


def test_logits_feature_source_puts_the_feature_loss_on_the_fc_output(tmp_path):
    torch.set_num_threads(1)
    tr = Trainer(small_cfg(lam=0.0, theta=1e-2, feature_source="logits"), str(DATA), tmp_path / "r")
    assert tr.feature_loss.centers.shape == (10, 10) and tr.feature_loss.sigma.shape == (10, 10)
    seen: dict[str, torch.Tensor] = {}
    forward, loss_forward = tr.train_forward, tr.feature_loss.forward

    def record_forward(x):
        logits, pooled = forward(x)
        seen["logits"], seen["pooled"] = logits, pooled
        return logits, pooled

    def record_loss(f, y):
        seen["f"] = f
        return loss_forward(f, y)

    tr.train_forward = record_forward
    tr.feature_loss.forward = record_loss
    xb, yb = tr.train.x[:32], tr.train.y[:32]
    before = tr.feature_loss.centers.clone()
    tr.train_step(xb, yb, feature_on=True, measure=False)
    assert seen["f"] is seen["logits"]
    # the centers moved towards the batch's logits by the center-loss rule
    ref = BayesianFeatureLoss(10, 10, 1e-2, 0.5)
    ref.centers.copy_(before)
    ref.update_centers(seen["logits"].detach(), yb)
    assert torch.allclose(tr.feature_loss.centers, ref.centers, atol=1e-6)
    assert not torch.equal(tr.feature_loss.centers, before)


def test_resume_refuses_a_checkpoint_with_another_feature_source(tmp_path):
    torch.set_num_threads(1)
    Trainer(small_cfg(lam=0.0, theta=1e-2), str(DATA), tmp_path / "r").fit(progress=False)
    tr = Trainer(small_cfg(lam=0.0, theta=1e-2, feature_source="logits"), str(DATA), tmp_path / "r")
    with pytest.raises(ValueError, match="feature_source"):
        tr.resume(tmp_path / "r" / "checkpoint.pt")


def test_cli_init_from(source_run, tmp_path):
    from bonn_serve.cli import main

    cfg = tmp_path / "ft.yaml"
    cfg.write_text("arch: wrn22-16\nepochs: 1\nbatch_size: 32\nlimit_train: 64\nlimit_test: 32\nlam: 0\n"
                   "theta: 0.01\nfeature_source: logits\nfeature_fraction: 1.0\nexport: false\n"
                   "channels_last: false\n")
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--data-dir", str(DATA), "--layout", "mini", "--out", str(out),
                 "--no-progress", "--init-from", str(source_run)]) == 0
    assert json.loads((out / "config.json").read_text())["init_from"] == str(source_run)
    # resuming reads only the run's own checkpoint: the source may be gone by then
    moved = tmp_path / "moved.pt"
    source_run.rename(moved)
    try:
        assert main(["train", "--config", str(cfg), "--data-dir", str(DATA), "--layout", "mini", "--out", str(out),
                     "--no-progress", "--init-from", str(source_run), "--resume", "--epochs", "2"]) == 0
    finally:
        moved.rename(source_run)
    assert json.loads((out / "config.json").read_text())["epochs"] == 2
    # resumed without --init-from: the record of where the run came from stays; another source is refused
    assert main(["train", "--config", str(cfg), "--data-dir", str(DATA), "--layout", "mini", "--out", str(out),
                 "--no-progress", "--resume", "--epochs", "3"]) == 0
    assert json.loads((out / "config.json").read_text())["init_from"] == str(source_run)
    with pytest.raises(SystemExit, match="init_from"):
        main(["train", "--config", str(cfg), "--data-dir", str(DATA), "--layout", "mini", "--out", str(out),
              "--no-progress", "--init-from", str(tmp_path / "other.pt"), "--resume", "--epochs", "4"])
    with pytest.raises(SystemExit, match="cannot read"):
        main(["train", "--config", str(cfg), "--data-dir", str(DATA), "--layout", "mini",
              "--out", str(tmp_path / "bad"), "--no-progress", "--init-from", str(tmp_path / "missing.pt")])
