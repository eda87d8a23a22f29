"""Trainer: data pipeline, exact resume, a smoke run with export, and the `bonn-serve train` CLI."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bonn_serve.datasets import DatasetError, load_cifar10
from training.binarize import binary_layers, changed_fraction, latent_signs
from training.data import augment, load_split, train_batches
from training.trainer import Trainer, cosine_factor, make_config, milestone_epochs, step_factor

from _data import CIFAR_DIR as DATA  # noqa: E402
MINI = DATA / "cifar10_mini.npz"
needs_mini = pytest.mark.skipif(not MINI.exists(), reason="cifar10_mini.npz not available")


def small_cfg(**kw):
    base = dict(name="t", epochs=2, batch_size=32, limit_train=128, limit_test=64, layout="mini",
                log_every=2, eval_batch=64, feature_fraction=0.5, export=False, channels_last=False)
    base.update(kw)
    return make_config(base)


# ----------------------------------------------------------------------------------------------- data
def test_augment_is_a_padded_crop_with_optional_flip():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    out = augment(x, g)
    g2 = torch.Generator().manual_seed(0)
    oy = torch.randint(0, 9, (16,), generator=g2)
    ox = torch.randint(0, 9, (16,), generator=g2)
    flip = torch.rand(16, generator=g2) < 0.5
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(16):
        crop = padded[i, :, oy[i]:oy[i] + 32, ox[i]:ox[i] + 32]
        torch.testing.assert_close(out[i], crop.flip(-1) if flip[i] else crop)
    assert flip.any() and (~flip).any()


def test_rank_shards_partition_each_global_batch():
    from training.data import Split

    split = Split(torch.arange(96, dtype=torch.uint8).view(96, 1, 1, 1).expand(96, 3, 32, 32).contiguous(),
                  torch.arange(96) % 10)
    ids = lambda b: set(int(v) for v in b[0][:, 0, 4:28, 4:28].amax(dim=(1, 2)))  # noqa: E731 (crop keeps id)
    single = [ids(b) for b in train_batches(split, 32, seed=5, epoch=1)]
    r0 = [ids(b) for b in train_batches(split, 32, seed=5, epoch=1, rank=0, world=2)]
    r1 = [ids(b) for b in train_batches(split, 32, seed=5, epoch=1, rank=1, world=2)]
    assert len(single) == 3
    for s, a, b in zip(single, r0, r1):
        assert a | b == s and not a & b and len(a) == len(b) == 16
    again = [ids(b) for b in train_batches(split, 32, seed=5, epoch=1)]
    assert again == single
    assert [ids(b) for b in train_batches(split, 32, seed=5, epoch=2)] != single
    with pytest.raises(ValueError):
        next(train_batches(split, 33, seed=5, epoch=1, world=2))


def test_python_batches_layout(tmp_path):
    rng = np.random.default_rng(0)
    for name, n in [*((f"data_batch_{i}", 4) for i in range(1, 6)), ("test_batch", 3)]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        with open(tmp_path / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": list(rng.integers(0, 10, n))}, f)
    x, y = load_cifar10(tmp_path, "train")
    assert x.shape == (20, 32, 32, 3) and y.shape == (20,)
    with open(tmp_path / "data_batch_1", "rb") as f:
        first = pickle.load(f)[b"data"][0]
    np.testing.assert_array_equal(x[0].transpose(2, 0, 1).reshape(-1), first)
    assert load_cifar10(tmp_path, "test")[0].shape == (3, 32, 32, 3)
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(DatasetError, match="data_batch_3"):
        load_cifar10(tmp_path, "train")


def _write_batch(path: Path, data, labels) -> None:
    with open(path, "wb") as f:
        pickle.dump({b"data": data, b"labels": labels}, f)


def test_python_batches_with_bad_values_are_refused_not_wrapped(tmp_path):
    """A cast to uint8 would turn 300 into 44 and floats in [0, 1] into 0 without a word."""
    ok = np.zeros((2, 3072), np.uint8)
    for data, labels, words in ((ok.astype(np.int64) + 300, [0, 1], "uint8 pixels"),
                                (ok.astype(np.float32) + 0.5, [0, 1], "uint8 pixels"),
                                ([[300] * 3072] * 2, [0, 1], "uint8 pixels"),
                                (ok, [0.0, 2.7], "whole numbers"),
                                (ok, [0, 10], "labels outside")):
        _write_batch(tmp_path / "test_batch", data, labels)
        with pytest.raises(DatasetError, match=words):
            load_cifar10(tmp_path, "test")
    _write_batch(tmp_path / "test_batch", ok.astype(np.int64) + 255, [0.0, 3.0])  # in range: fine
    x, y = load_cifar10(tmp_path, "test")
    assert x.dtype == np.uint8 and int(x.max()) == 255 and y.tolist() == [0, 3]
    _write_batch(tmp_path / "test_batch", np.zeros((0, 3072), np.uint8), [])
    with pytest.raises(DatasetError, match="no images"):
        load_cifar10(tmp_path, "test")


def test_layout_is_detected_per_split(tmp_path):
    """The test split as npz and the training split as python batches, in one directory."""
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "cifar10_test.npz", x=rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8),
             y=np.array([1, 2, 3], np.uint8))
    for i in range(1, 6):
        _write_batch(tmp_path / f"data_batch_{i}", rng.integers(0, 256, (2, 3072), dtype=np.uint8), [4, 5])
    assert load_cifar10(tmp_path, "test")[0].shape == (3, 32, 32, 3)
    assert load_cifar10(tmp_path, "train")[1].tolist() == [4, 5] * 5
    (tmp_path / "data_batch_1").rename(tmp_path / "elsewhere")
    with pytest.raises(DatasetError, match="data_batch_1"):  # names the missing file
        load_cifar10(tmp_path, "train")
    for i in range(2, 6):
        (tmp_path / f"data_batch_{i}").unlink()
    with pytest.raises(DatasetError, match="cifar10_train.npz"):  # no training split at all: never mini
        load_cifar10(tmp_path, "train")


def test_bad_data_dir_gives_clear_error(tmp_path):
    with pytest.raises(DatasetError, match="no cifar10"):
        load_cifar10(tmp_path, "train")
    with pytest.raises(DatasetError, match="does not exist"):
        load_cifar10(tmp_path / "nope", "train")
    (tmp_path / "cifar10_train.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="cannot read"):
        load_cifar10(tmp_path, "train")
    with pytest.raises(DatasetError, match="split"):
        load_cifar10(tmp_path, "val")


def test_config_validation():
    with pytest.raises(ValueError, match="unknown config keys"):
        make_config({"lamda": 1.0})
    with pytest.raises(ValueError, match="arch"):
        make_config({"arch": "vgg"})
    with pytest.raises(ValueError, match="lam"):
        make_config({"lam": -1})
    assert cosine_factor(0, 10) == 1.0 and cosine_factor(10, 10) == pytest.approx(0.0)
    assert cosine_factor(5, 10) == pytest.approx(0.5)
    for bad in ({"lr_schedule": "linear"}, {"lr_milestones": [0.6, 0.3]}, {"lr_milestones": [0.3, 1.0]},
                {"lr_milestones": ["soon"]}, {"lr_gamma": 0.0}, {"lr_gamma": 1.5}):
        with pytest.raises(ValueError, match="lr_"):
            make_config(bad)


def test_step_schedule_is_the_wrn_recipe():
    # 0.3/0.6/0.8 of 200 epochs are the WRN code's milestones; the lr is x0.2 after each
    cuts = milestone_epochs([0.3, 0.6, 0.8], 200)
    assert cuts == [60, 120, 160]
    spe = 391
    assert step_factor(0, spe, cuts, 0.2) == 1.0
    assert step_factor(60 * spe - 1, spe, cuts, 0.2) == 1.0      # last step of epoch 60
    assert step_factor(60 * spe, spe, cuts, 0.2) == pytest.approx(0.2)
    assert step_factor(120 * spe, spe, cuts, 0.2) == pytest.approx(0.04)
    assert step_factor(200 * spe, spe, cuts, 0.2) == pytest.approx(0.008)
    assert milestone_epochs([0.3, 0.6, 0.8], 20) == [6, 12, 16]  # `--epochs` scales them
    # a 1-epoch run: 0.3 rounds to epoch 0, and a cut "after epoch 0" would run the whole run at x0.2
    assert milestone_epochs([0.3, 0.6, 0.8], 1) == [1, 1, 1]
    assert step_factor(0, spe, milestone_epochs([0.3, 0.6, 0.8], 1), 0.2) == 1.0


@needs_mini
def test_step_schedule_cuts_the_lr_at_the_epoch_boundary_and_resumes(tmp_path):
    torch.set_num_threads(1)
    cfg = small_cfg(lr_schedule="step", lr_milestones=[0.5], lr_gamma=0.1, lr=0.05, epochs=2)
    a = Trainer(cfg, str(DATA), tmp_path / "a")
    a.fit(progress=False)
    recs = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if r["kind"] == "step"]
    lrs = {e: [r["lr"] for r in steps if r["epoch"] == e] for e in (1, 2)}
    assert lrs[1] and lrs[2]
    assert lrs[1] == pytest.approx([0.05] * len(lrs[1])) and lrs[2] == pytest.approx([0.005] * len(lrs[2]))
    # lr_end: the lr the next epoch starts with
    assert [r["lr_end"] for r in _epoch_records(tmp_path / "a")] == [pytest.approx(0.005), pytest.approx(0.005)]
    pa, pc = _params(a), _params(_resumed_after_epoch_1(cfg, tmp_path))
    assert all(torch.equal(pa[k], pc[k]) for k in pa)


# -------------------------------------------------------------------------------------------- training
def _params(tr: Trainer) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v.clone() for k, v in tr.model.state_dict().items()}
    if tr.kernel_loss is not None:
        out.update({f"kernel.{k}": v.clone() for k, v in tr.kernel_loss.state_dict().items()})
    if tr.feature_loss is not None:
        out.update({f"feature.{k}": v.clone() for k, v in tr.feature_loss.state_dict().items()})
    return out


def _resumed_after_epoch_1(cfg: dict, tmp_path: Path) -> Trainer:
    """The run stopped after epoch 1 (in tmp_path/b), then resumed from its checkpoint to the end."""
    b = Trainer(cfg, str(DATA), tmp_path / "b")
    b.fit(epochs=1, progress=False)
    c = Trainer(cfg, str(DATA), tmp_path / "b")
    c.resume(tmp_path / "b" / "checkpoint.pt")
    c.fit(progress=False)
    return c


def _epoch_records(run: Path) -> list[dict]:
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if r["kind"] == "epoch"]


@needs_mini
def test_resume_equals_uninterrupted_training(tmp_path):
    torch.set_num_threads(1)
    cfg = small_cfg(dropout=0.2)  # dropout: the torch RNG state must be restored too
    a = Trainer(cfg, str(DATA), tmp_path / "a")
    a.fit(progress=False)
    b = Trainer(cfg, str(DATA), tmp_path / "b")
    b.fit(epochs=1, progress=False)
    ckpt = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)  # plain tensors only
    assert ckpt["epoch"] == 1 and ckpt["step"] == 4
    assert set(ckpt["kernel_loss"]) and set(ckpt["feature_loss"]) == {"centers", "sigma"}
    torch.manual_seed(999)  # a fresh process would have a different RNG state
    c = Trainer(cfg, str(DATA), tmp_path / "b")
    c.resume(tmp_path / "b" / "checkpoint.pt")
    c.fit(progress=False)
    pa, pc = _params(a), _params(c)
    assert pa.keys() == pc.keys()
    for k in pa:
        assert torch.equal(pa[k], pc[k]), k
    ra, rb = _epoch_records(tmp_path / "a"), _epoch_records(tmp_path / "b")
    assert len(ra) == len(rb) == 2
    for key in ("train_ce", "train_kernel", "train_feature", "test_acc", "test_loss"):
        assert ra[1][key] == rb[1][key], key
    assert ra[1]["feature_on"] and not ra[0]["feature_on"]


@needs_mini
def test_smoke_training_logs_plots_and_exports(tmp_path):
    torch.set_num_threads(1)
    cfg = small_cfg(export=True, epochs=2, limit_train=256, batch_size=64, channels_last=True)
    tr = Trainer(cfg, str(DATA), tmp_path / "run")
    last = tr.fit(progress=False)
    recs = _epoch_records(tmp_path / "run")
    assert [r["epoch"] for r in recs] == [1, 2]
    for r in recs:
        for key in ("train_ce", "train_kernel", "test_acc", "bc_mean", "alpha_mean", "images_per_s"):
            assert np.isfinite(r[key]), key
    steps = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("grad_ratio" in s and s["grad_ratio"] > 0 for s in steps)
    assert 0 <= last["test_acc"] <= 1
    assert (tmp_path / "run" / "run_curves.png").stat().st_size > 0
    assert (tmp_path / "run" / "run_weight_hist.png").stat().st_size > 0
    assert (tmp_path / "run" / "model.bonn").stat().st_size > 0
    # every reconstruction vector stayed positive, so alpha > 0 for the packer
    assert all(float(m.recon.detach().min()) > 0 for m in tr.kernel_loss.layers)


@needs_mini
def test_full_precision_and_baseline_configs(tmp_path):
    torch.set_num_threads(1)
    fp_cfg = small_cfg(binary=False, lam=0.0, theta=0.0, epochs=1, export=True)
    fp = Trainer(fp_cfg, str(DATA), tmp_path / "fp")
    assert fp.kernel_loss is None and fp.feature_loss is None
    fp.fit(progress=False)
    assert (tmp_path / "fp" / "model.onnx").stat().st_size > 0
    base = Trainer(small_cfg(lam=0.0, theta=0.0, epochs=1), str(DATA), tmp_path / "bin")
    assert base.kernel_loss is None and base.feature_loss is None
    assert {g["name"]: g["lr_scale"] for g in base.optimizer.param_groups}["slow"] == 0.1


@needs_mini
def test_cli_train_refuses_to_overwrite_and_resumes(tmp_path, capsys):
    from bonn_serve.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("arch: wrn22-16\nepochs: 2\nbatch_size: 32\nlimit_train: 64\nlimit_test: 32\n"
                   "export: false\nchannels_last: false\n")
    out = tmp_path / "run"
    args = ["train", "--config", str(cfg), "--data-dir", str(DATA), "--layout", "mini", "--out", str(out),
            "--no-progress"]
    assert main(args + ["--epochs", "1"]) == 0
    with pytest.raises(SystemExit, match="exists"):
        main(args)
    assert json.loads((out / "config.json").read_text())["binary_conv_dtype"] == "float32"
    # a finished run resumes on its own length: nothing to do, and it says how to go further
    assert main(args + ["--resume"]) == 0
    assert "pass --epochs N" in capsys.readouterr().out
    assert [r["epoch"] for r in _epoch_records(out)] == [1]
    # a run may continue with bfloat16 binary convolutions (the option is not part of the checkpoint)
    assert main(args + ["--resume", "--epochs", "2", "--binary-conv-dtype", "bfloat16"]) == 0
    assert [r["epoch"] for r in _epoch_records(out)] == [1, 2]
    assert json.loads((out / "config.json").read_text())["binary_conv_dtype"] == "bfloat16"
    with pytest.raises(SystemExit, match="--stop-after must be >= 1"):
        main(args + ["--resume", "--stop-after", "0"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("lamda: 3\n")
    with pytest.raises(SystemExit, match="unknown config keys"):
        main(["train", "--config", str(bad), "--data-dir", str(DATA), "--out", str(tmp_path / "x")])


@needs_mini
def test_cli_resume_keeps_the_saved_schedule_length_unless_told(tmp_path):
    """A run started with `--epochs 3` (YAML: 2) and stopped resumes on its 3-epoch schedule; the YAML's length
    would move the cosine (or the step schedule's cuts) under it."""
    from bonn_serve.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("arch: wrn22-16\nepochs: 2\nbatch_size: 32\nlimit_train: 64\nlimit_test: 32\n"
                   "export: false\nchannels_last: false\nlog_every: 1\n")
    args = ["train", "--config", str(cfg), "--data-dir", str(DATA), "--layout", "mini", "--no-progress",
            "--no-plots"]
    assert main(args + ["--out", str(tmp_path / "a"), "--epochs", "3", "--stop-after", "1"]) == 0
    assert main(args + ["--out", str(tmp_path / "a"), "--resume"]) == 0
    assert [r["epoch"] for r in _epoch_records(tmp_path / "a")] == [1, 2, 3]
    assert json.loads((tmp_path / "a" / "config.json").read_text())["epochs"] == 3
    assert main(args + ["--out", str(tmp_path / "b"), "--epochs", "3", "--stop-after", "1"]) == 0
    assert main(args + ["--out", str(tmp_path / "b"), "--resume", "--epochs", "2"]) == 0  # told: 2
    assert [r["epoch"] for r in _epoch_records(tmp_path / "b")] == [1, 2]
    # the same trajectory up to the stop: the lr of epoch 2's first step is the 3-epoch cosine's in run a
    recs = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    first2 = next(r for r in recs if r["kind"] == "step" and r["epoch"] == 2)
    assert first2["lr"] == pytest.approx(0.1 * cosine_factor(first2["step"] - 1, 3 * 2))


@needs_mini
@pytest.mark.parametrize("change", [{"lr": 0.05}, {"optimizer": "adam"}, {"nu": 1e-3}, {"lr_milestones": [0.5]},
                                    {"latent_weight_decay": 5e-4}, {"seed": 1}, {"batch_size": 64},
                                    {"limit_test": 32}, {"latent_init_scale": 0.1}])
def test_resume_refuses_other_hyper_parameters(tmp_path, change):
    """`--resume` continues the same run; a changed optimizer, lr, prior or data order would silently make it
    another one (an SGD state loaded into AdamW, a cosine from another lr). Implementation options may change."""
    torch.set_num_threads(1)
    cfg = small_cfg(limit_train=64)
    Trainer(cfg, str(DATA), tmp_path / "a").fit(epochs=1, progress=False)
    with pytest.raises(ValueError, match=f"checkpoint {next(iter(change))}=.*--init-from"):
        Trainer(make_config({**cfg, **change}), str(DATA), tmp_path / "x").resume(tmp_path / "a" / "checkpoint.pt")
    other = Trainer(make_config({**cfg, "threads": 2, "compile": False}), str(DATA), tmp_path / "y")
    other.resume(tmp_path / "a" / "checkpoint.pt")
    assert other.epoch == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@needs_mini
def test_resume_on_cuda_restores_the_dropout_generator(tmp_path):
    """On a GPU dropout draws from CUDA's generator: without it in the checkpoint a resumed run diverges."""
    cfg = small_cfg(dropout=0.2, device="cuda")
    a = Trainer(cfg, str(DATA), tmp_path / "a")
    a.fit(progress=False)
    Trainer(cfg, str(DATA), tmp_path / "b").fit(epochs=1, progress=False)
    torch.cuda.manual_seed(999)  # a fresh process would have another CUDA generator state
    c = Trainer(cfg, str(DATA), tmp_path / "b")
    c.resume(tmp_path / "b" / "checkpoint.pt")
    c.fit(progress=False)
    pa, pc = _params(a), _params(c)
    assert all(torch.equal(pa[k].cpu(), pc[k].cpu()) for k in pa)


@needs_mini
def test_load_split_limit_is_fixed_and_mixed():
    s1 = load_split(str(DATA), "train", "mini", limit=100)
    s2 = load_split(str(DATA), "train", "mini", limit=100)
    assert torch.equal(s1.x, s2.x) and s1.x.shape == (100, 3, 32, 32) and s1.x.dtype == torch.uint8
    assert len(torch.unique(s1.y)) > 5


def test_shipped_configs_are_valid():
    import yaml

    paths = sorted(Path(__file__).resolve().parents[1].joinpath("training", "configs").glob("*.yaml"))
    assert len(paths) >= 3
    for p in paths:
        cfg = make_config(yaml.safe_load(p.read_text()))
        assert cfg["name"] == p.stem
        if cfg["name"].startswith("bonn_"):  # the paper's values, unless the name says which one differs
            named = re.search(r"_lam1e(\d)$", cfg["name"])
            lam = float(f"1e-{named.group(1)}") if named else 1e-4
            assert (cfg["lam"], cfg["nu"], cfg["theta"], cfg["slow_lr_scale"]) == (lam, 1e-4, 1e-2, 0.1)
        if cfg["name"].startswith("binary_"):
            assert cfg["binary"] and cfg["lam"] == 0 and cfg["theta"] == 0
        if cfg["name"].startswith("kernel_"):  # the kernel prior alone
            assert cfg["binary"] and cfg["lam"] > 0 and cfg["theta"] == 0
        if cfg["name"].startswith("ablate_feature_"):  # the feature loss alone
            assert cfg["binary"] and cfg["lam"] == 0 and cfg["theta"] > 0
        if cfg["name"].startswith("fp_"):
            assert not cfg["binary"]


@needs_mini
def test_adam_variant_trains_and_resumes_exactly(tmp_path):
    torch.set_num_threads(1)
    cfg = small_cfg(optimizer="adam", lr=2e-3, limit_train=64, epochs=2)
    a = Trainer(cfg, str(DATA), tmp_path / "a")
    a.fit(progress=False)
    assert isinstance(a.optimizer, torch.optim.AdamW)
    pa, pc = _params(a), _params(_resumed_after_epoch_1(cfg, tmp_path))
    assert all(torch.equal(pa[k], pc[k]) for k in pa)
    assert all(np.isfinite(r["train_ce"]) for r in _epoch_records(tmp_path / "a"))


def _one_step_grads(tr, xb, yb):
    tr.optimizer.step = lambda: None  # compare the gradients of one step, not the update
    m = {k: float(v) for k, v in tr.train_step(xb, yb, True, measure=True).items()}
    return m, {n: p.grad.detach().clone() for n, p in tr.model.named_parameters() if p.grad is not None}


@needs_mini
@pytest.mark.parametrize("binary", [False, True])
def test_compiled_training_step_matches_eager(tmp_path, binary):
    """`compile: true` (torch.compile of the training forward and of the kernel loss) computes the same losses and gradients as eager
    mode and keeps checkpoints interchangeable. Full precision agrees to float rounding. A binary net cannot:
    the compiled stem conv differs by ~1e-5, which flips the sign of a handful of near-zero activations, and
    the flips multiply layer by layer (2, 8, 32, 74 in the first four blocks), so the binary check is on the
    loss values and the direction of the whole gradient."""
    torch.set_num_threads(1)
    cfg = small_cfg(channels_last=True, limit_train=64, feature_fraction=1.0, binary=binary,
                    lam=1e-4 if binary else 0.0)
    eager = Trainer(cfg, str(DATA), tmp_path / "e")
    comp = Trainer({**cfg, "compile": True}, str(DATA), tmp_path / "c")
    comp.model.load_state_dict(eager.model.state_dict())
    xb, yb = next(iter(train_batches(eager.train, 32, 0, 0, 0, 1, 0)))
    me, ge = _one_step_grads(eager, xb, yb)
    mc, gc = _one_step_grads(comp, xb, yb)
    assert ge.keys() == gc.keys() and len(ge) > 10
    assert comp.state_dict()["model"].keys() == eager.state_dict()["model"].keys()
    if not binary:
        for key in ("ce", "feature"):
            assert mc[key] == pytest.approx(me[key], rel=1e-4), key
        for n in ge:
            # 1 % of the tensor's largest entry: BN backward sums ~30k terms with cancellation, in another order
            assert float((ge[n] - gc[n]).abs().max()) <= 1e-2 * float(ge[n].abs().max()) + 1e-6, n
        return
    assert mc["kernel"] == pytest.approx(me["kernel"], rel=1e-5)  # depends on the weights only
    for key in ("ce", "feature"):
        assert mc[key] == pytest.approx(me[key], rel=2e-2), key
    fe = torch.cat([g.flatten() for g in ge.values()])
    fc = torch.cat([gc[n].flatten() for n in ge])
    assert float(F.cosine_similarity(fe, fc, dim=0)) > 0.9


# ------------------------------------------------------------------------------------- device and budget
def test_planned_epochs_fills_the_budget():
    from training.trainer import planned_epochs

    assert planned_epochs(2, 10.0, 95.0) == 11        # 9 more whole epochs fit
    assert planned_epochs(2, 10.0, 5.0, floor=2) == 2  # none fits: stop where we are
    assert planned_epochs(0, 0.0, 1.0) >= 1            # a zero measurement cannot divide by zero


def test_device_choice_is_validated():
    from training.trainer import resolve_device

    with pytest.raises(ValueError, match="device"):
        make_config({"device": "tpu"})
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto", world=2).type == "cpu"  # DDP here is gloo on CPU
    with pytest.raises(ValueError, match="gloo"):
        resolve_device("cuda", world=2)
    if not torch.cuda.is_available():
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(ValueError, match="no GPU"):
            resolve_device("cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown on a machine without a GPU")
def test_cli_train_without_gpu_says_so(tmp_path):
    from bonn_serve.cli import main

    cfg = tmp_path / "c.yaml"
    cfg.write_text("arch: wrn22-16\nepochs: 1\n")
    with pytest.raises(SystemExit, match="no GPU"):
        main(["train", "--config", str(cfg), "--data-dir", str(DATA), "--out", str(tmp_path / "r"),
              "--device", "cuda"])


@needs_mini
def test_time_budget_fixes_the_schedule_after_two_epochs(tmp_path, monkeypatch):
    """With a budget the cosine length is set once, from the second epoch's measured time, and saved."""
    import training.trainer as tr_mod

    clock = {"t": 1000.0}
    monkeypatch.setattr(tr_mod.time, "time", lambda: clock["t"])
    tr = Trainer(small_cfg(epochs=50, limit_train=64, feature_fraction=0.5), str(DATA), tmp_path)
    real_run_epoch = tr.run_epoch

    def timed_epoch(progress=True):  # every epoch "takes" 10 s of the fake clock
        clock["t"] += 10.0
        return real_run_epoch(progress)

    tr.run_epoch = timed_epoch
    last = tr.fit(progress=False, time_budget_s=45.0, plot=False)
    # after 2 epochs (20 s) 25 s are left: 2 more epochs fit, so the schedule is 4 epochs, not 50
    assert tr.cfg["epochs"] == 4 and tr.total_steps == 4 * tr.steps_per_epoch
    assert tr.feature_start == 2  # the feature-loss window follows the new length
    assert last["epoch"] == 4 and last["lr_end"] == pytest.approx(0.0, abs=1e-12)
    assert json.loads((tmp_path / "config.json").read_text())["epochs"] == 4
    recs = _epoch_records(tmp_path)
    assert [r.get("planned_epochs") for r in recs] == [None, 4, None, None]
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["config"]["epochs"] == 4


def _fake_clock_epochs(monkeypatch, tr: Trainer, seconds: float) -> None:
    """Every epoch of `tr` "takes" `seconds` of a fake clock; nothing else advances it."""
    import training.trainer as tr_mod

    clock = {"t": 1000.0}
    monkeypatch.setattr(tr_mod.time, "time", lambda: clock["t"])
    real_run_epoch = tr.run_epoch

    def timed_epoch(progress=True):
        clock["t"] += seconds
        return real_run_epoch(progress)

    tr.run_epoch = timed_epoch


@needs_mini
def test_time_budget_honours_stop_after_and_never_replans_a_resumed_run(tmp_path, monkeypatch):
    cfg = small_cfg(epochs=50, limit_train=64, feature_fraction=0.5)
    tr = Trainer(cfg, str(DATA), tmp_path)
    _fake_clock_epochs(monkeypatch, tr, 10.0)
    tr.fit(epochs=3, progress=False, time_budget_s=1000.0, plot=False)  # the plan (~100 epochs) must not lift
    assert tr.epoch == 3 and tr.stopped_early and tr.cfg["epochs"] == 100  # the --stop-after 3
    again = Trainer(cfg, str(DATA), tmp_path)
    again.resume(tmp_path / "checkpoint.pt")
    _fake_clock_epochs(monkeypatch, again, 10.0)
    again.fit(progress=False, time_budget_s=25.0, plot=False)  # resumed past epoch 2: no new plan
    assert again.cfg["epochs"] == 100 and again.epoch == 5 and again.stopped_early  # stopped by the budget
    assert [r.get("planned_epochs") for r in _epoch_records(tmp_path)] == [None, 100, None, None, None]


@needs_mini
def test_only_a_finished_schedule_is_exported(tmp_path):
    """--stop-after leaves a resumable checkpoint, not a model: its weights are not the annealed ones."""
    cfg = small_cfg(export=True, limit_train=64)
    tr = Trainer(cfg, str(DATA), tmp_path)
    tr.fit(epochs=1, progress=False, plot=False)
    assert tr.stopped_early and not (tmp_path / "model.bonn").exists()
    with pytest.raises(ValueError, match="must be >= 1"):
        tr.fit(epochs=0, progress=False)
    done = Trainer(cfg, str(DATA), tmp_path)
    done.resume(tmp_path / "checkpoint.pt")
    done.fit(progress=False, plot=False)
    assert not done.stopped_early and (tmp_path / "model.bonn").exists()


# ------------------------------------------------------------------------- prior_update: sgd (method §11)
def _assert_resume_exact_and_other_prior_update_refused(cfg: dict, tmp_path: Path, other: str) -> None:
    """A run interrupted after epoch 1 and resumed equals the uninterrupted run (network and Bayesian state);
    resuming its checkpoint under prior_update `other` is refused."""
    a = Trainer(cfg, str(DATA), tmp_path / "a")
    a.fit(progress=False)
    c = _resumed_after_epoch_1(cfg, tmp_path)
    for x, y in zip([*a.model.parameters(), *a.kernel_loss.parameters(), *a.feature_loss.parameters()],
                    [*c.model.parameters(), *c.kernel_loss.parameters(), *c.feature_loss.parameters()]):
        assert torch.equal(x, y)
    with pytest.raises(ValueError, match="prior_update"):
        Trainer({**cfg, "prior_update": other}, str(DATA), tmp_path / "x").resume(tmp_path / "b" / "checkpoint.pt")


@needs_mini
def test_prior_update_sgd_keeps_the_papers_gradient_steps_and_resumes_exactly(tmp_path):
    """With Adam, the prior's mu/sigma move ~lr per step whatever their gradient's size; `prior_update: sgd`
    moves them by lr x gradient (the paper's rule), a tiny step at lambda = nu = 1e-4, and still resumes
    exactly."""
    torch.set_num_threads(1)
    moved = {}
    for mode in ("optimizer", "sgd"):
        cfg = small_cfg(optimizer="adam", lr=2e-3, limit_train=64, epochs=2, prior_update=mode)
        tr = Trainer(cfg, str(DATA), tmp_path / mode)
        mu0 = torch.cat([m.detach().clone() for m in tr.kernel_loss.mu])
        tr.fit(epochs=1, progress=False)
        moved[mode] = float((torch.cat([m.detach() for m in tr.kernel_loss.mu]) - mu0).abs().max())
        assert all(m.grad is not None and float(m.grad.abs().max()) > 0 for m in tr.kernel_loss.mu)
        assert (tr.prior_optimizer is None) == (mode == "optimizer")
    assert moved["optimizer"] > 1e-4  # Adam: a sizeable fraction of lr per step
    assert moved["sgd"] < 1e-6        # lr x a gradient of order lambda * nu / sigma^2 (below float32's ulp here)
    # resume: an interrupted run equals the uninterrupted one, prior optimizer state included
    cfg = small_cfg(optimizer="adam", lr=2e-3, limit_train=64, epochs=2, prior_update="sgd")
    _assert_resume_exact_and_other_prior_update_refused(cfg, tmp_path, "optimizer")


@needs_mini
def test_gpu_checkpoint_resumes_on_cpu_with_cpu_optimizer_flags(tmp_path):
    """A checkpoint written by a CUDA run carries fused-AdamW flags; on the CPU they follow the CPU's choice."""
    torch.set_num_threads(1)
    cfg = small_cfg(optimizer="adam", lr=2e-3, limit_train=64, epochs=2)
    a = Trainer(cfg, str(DATA), tmp_path / "a")
    a.fit(epochs=1, progress=False)
    ckpt = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    for g in ckpt["optimizer"]["param_groups"]:
        g["fused"] = True  # as a GPU run saves them
    ckpt["config"]["device"] = "cuda"
    torch.save(ckpt, tmp_path / "gpu.pt")
    b = Trainer(cfg, str(DATA), tmp_path / "b")
    b.resume(tmp_path / "gpu.pt")
    assert b.epoch == 1 and not any(g.get("fused") for g in b.optimizer.param_groups)
    b.fit(progress=False)
    assert b.epoch == 2


def test_cpu_checkpoint_takes_this_runs_optimizer_flags_before_loading(tmp_path, monkeypatch):
    """The other way round (a CPU campaign continued on a GPU): torch places each state's `step` by the flags in
    the groups it loads, and a fused CUDA AdamW fails unless `step` sits on the GPU. So the saved groups must
    carry this run's flags when torch sees them, not be patched afterwards."""
    torch.set_num_threads(1)
    cfg = small_cfg(optimizer="adam", lr=2e-3, limit_train=64, epochs=2)
    a = Trainer(cfg, str(DATA), tmp_path / "a")
    a.fit(epochs=1, progress=False)
    ckpt = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    assert not any(g.get("fused") for g in ckpt["optimizer"]["param_groups"])
    b = Trainer(cfg, str(DATA), tmp_path / "b")
    for g in b.optimizer.param_groups:
        g["fused"] = True  # as on a CUDA device (torch also has a fused AdamW on the CPU)
    seen = []
    load = torch.optim.Optimizer.load_state_dict
    monkeypatch.setattr(torch.optim.Optimizer, "load_state_dict",
                        lambda opt, sd: (seen.append([g.get("fused") for g in sd["param_groups"]]), load(opt, sd))[1])
    b.resume(tmp_path / "a" / "checkpoint.pt")
    assert seen[0] == [True] * len(b.optimizer.param_groups)
    assert all(g["fused"] for g in b.optimizer.param_groups)
    b.fit(progress=False)
    assert b.epoch == 2


# ------------------------------------------------------------------------------------ stopping, resuming
def _signal_during_epochs(monkeypatch, tr: Trainer, signals: int) -> None:
    """Make the trainer's first epoch send itself `signals` SIGTERMs right before it ends."""
    import os
    import signal

    run_epoch = tr.run_epoch
    calls = []

    def patched(progress):
        rec = run_epoch(progress)
        if not calls:
            for _ in range(signals):
                os.kill(os.getpid(), signal.SIGTERM)
        calls.append(1)
        return rec

    monkeypatch.setattr(tr, "run_epoch", patched)


@needs_mini
def test_a_signal_stops_after_the_epoch_checkpoint_and_resume_continues(tmp_path, monkeypatch, capsys):
    import signal

    torch.set_num_threads(1)
    before = signal.getsignal(signal.SIGTERM)
    cfg = small_cfg(epochs=3, export=True)
    tr = Trainer(cfg, str(DATA), tmp_path / "run")
    _signal_during_epochs(monkeypatch, tr, 1)
    last = tr.fit(progress=False)
    assert tr.stopped_early and last["epoch"] == 1 and "SIGTERM: stopping after" in capsys.readouterr().out
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert not (tmp_path / "run" / "model.bonn").exists()  # a stopped run is not finished: no export
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored
    again = Trainer(cfg, str(DATA), tmp_path / "run")
    again.resume(tmp_path / "run" / "checkpoint.pt")
    assert again.fit(progress=False)["epoch"] == 3 and not again.stopped_early
    assert [r["epoch"] for r in _epoch_records(tmp_path / "run")] == [1, 2, 3]
    assert (tmp_path / "run" / "model.bonn").exists()


@needs_mini
def test_a_second_signal_stops_at_once(tmp_path, monkeypatch):
    import signal

    torch.set_num_threads(1)
    before = signal.getsignal(signal.SIGTERM)
    tr = Trainer(small_cfg(epochs=2), str(DATA), tmp_path / "run")
    _signal_during_epochs(monkeypatch, tr, 2)
    with pytest.raises(KeyboardInterrupt, match="before the epoch finished"):
        tr.fit(progress=False)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()  # the unfinished epoch is lost, as announced
    assert signal.getsignal(signal.SIGTERM) is before


@needs_mini
def test_resume_drops_log_records_written_after_the_checkpoint(tmp_path, capsys):
    import shutil

    torch.set_num_threads(1)
    cfg = small_cfg(epochs=3)
    run = tmp_path / "run"
    a = Trainer(cfg, str(DATA), run)
    a.fit(epochs=1, progress=False)
    shutil.copy(run / "checkpoint.pt", tmp_path / "epoch1.pt")
    a.fit(epochs=2, progress=False)
    with open(run / "metrics.jsonl", "a") as f:  # a killed epoch 3: a step record and a line cut mid-write
        f.write(json.dumps({"kind": "step", "epoch": 3, "step": a.step + 2, "ce": 1.0}) + "\n")
        f.write('{"kind": "step", "ep')
    b = Trainer(cfg, str(DATA), run)
    b.resume(run / "checkpoint.pt")
    assert "dropped 2 records" in capsys.readouterr().out
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(r.get("step", 0) for r in recs) == b.step == 8
    c = Trainer(cfg, str(DATA), run)  # back to an older checkpoint: epoch 2 is dropped and trained again
    c.resume(tmp_path / "epoch1.pt")
    assert [r["epoch"] for r in _epoch_records(run)] == [1]
    c.fit(progress=False)
    assert [r["epoch"] for r in _epoch_records(run)] == [1, 2, 3]
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if '"kind": "step"' in line]
    assert steps == sorted(set(steps))  # no step logged twice


# ------------------------------------------------------------------ latent-weight decay (method section 15)
@needs_mini
def test_latent_weight_decay_is_the_sgd_l2_step_on_latent_weights_only(tmp_path):
    """`latent_weight_decay` adds wd * X to the latent binary weights' gradient and nothing else: after one
    Nesterov-SGD step from the same start on the same batch, the two runs differ by exactly
    -lr * (1 + momentum) * wd * X0 on the latent weights, and not at all elsewhere."""
    torch.set_num_threads(1)
    wd = 0.05
    cfg = small_cfg(lam=0.0, theta=0.0, limit_train=64)
    plain = Trainer(cfg, str(DATA), tmp_path / "p")
    decayed = Trainer({**cfg, "latent_weight_decay": wd}, str(DATA), tmp_path / "d")
    decayed.model.load_state_dict(plain.model.state_dict())
    groups = {g["name"]: g["weight_decay"] for g in decayed.optimizer.param_groups}
    assert groups["latent"] == wd and groups["decay"] == cfg["weight_decay"] and groups["other"] == 0.0
    latent = {id(lay.weight) for lay in binary_layers(plain.model)}
    x0 = {n: p.detach().clone() for n, p in plain.model.named_parameters()}
    xb, yb = next(iter(train_batches(plain.train, 32, 0, 0, 0, 1, 0)))
    for tr in (plain, decayed):
        tr.train_step(xb, yb, False, measure=False)
    lr, m = plain.optimizer.param_groups[0]["lr"], cfg["momentum"]
    n_latent = 0
    for (n, p), q in zip(plain.model.named_parameters(), decayed.model.parameters()):
        expected = -lr * (1 + m) * wd * x0[n] if id(p) in latent else torch.zeros_like(p)
        torch.testing.assert_close(q.detach() - p.detach(), expected, rtol=1e-4, atol=1e-7, msg=n)
        n_latent += id(p) in latent
    assert n_latent == 18
    with pytest.raises(ValueError, match="latent_weight_decay"):
        make_config({"latent_weight_decay": -1})


@needs_mini
def test_prior_update_closed_form_refits_mu_sigma_each_step_and_resumes_exactly(tmp_path):
    """`prior_update: closed_form` keeps mu/sigma out of every optimizer and sets them from the weights after
    each step (method section 16); the run resumes exactly and refuses another prior_update."""
    torch.set_num_threads(1)
    cfg = small_cfg(prior_update="closed_form", limit_train=64, epochs=2)
    tr = Trainer(cfg, str(DATA), tmp_path / "one")
    owned = {id(p) for p in tr.all_params()}
    assert tr.prior_optimizer is None
    assert not any(id(q) in owned or q.requires_grad for q in (*tr.kernel_loss.mu, *tr.kernel_loss.sigma))
    xb, yb = next(iter(train_batches(tr.train, 32, 0, 0, 0, 1, 0)))
    w0 = [lay.weight.detach().clone() for lay in tr.kernel_loss.layers]
    tr.train_step(xb, yb, True, measure=True)
    for layer, w, mu, sigma in zip(tr.kernel_loss.layers, w0, tr.kernel_loss.mu, tr.kernel_loss.sigma):
        assert not torch.equal(layer.weight, w)  # the step moved the weights, and the prior followed them
        a = layer.weight.detach().flatten(1).abs()
        torch.testing.assert_close(mu.detach(), a.mean(1))
        torch.testing.assert_close(sigma.detach(), a.std(1, unbiased=False))
    _assert_resume_exact_and_other_prior_update_refused(cfg, tmp_path, "sgd")


# ------------------------------------------------------ latent init scale and sign changes (method section 19)
@needs_mini
def test_latent_init_scale_scales_the_latent_weights_and_recon_only(tmp_path):
    """The scale multiplies the fresh latent weights (same signs, so the same binary net) and re-initialises
    recon to the new mean |X|; every other parameter and the RNG stream are untouched (1.0 = the old init)."""
    torch.set_num_threads(1)
    cfg = small_cfg(lam=0.0, theta=0.0)
    plain = Trainer(cfg, str(DATA), tmp_path / "p")
    scaled = Trainer(make_config({**cfg, "latent_init_scale": 0.01}), str(DATA), tmp_path / "s")
    latent = {id(lay.weight) for lay in binary_layers(plain.model)}
    recon = {id(lay.recon) for lay in binary_layers(plain.model)}
    for (n, p), q in zip(plain.model.named_parameters(), scaled.model.parameters()):
        if id(p) in latent:
            torch.testing.assert_close(q, 0.01 * p, msg=n)
        elif id(p) not in recon:
            assert torch.equal(p, q), n
    for lay in binary_layers(scaled.model):
        assert torch.allclose(lay.recon, lay.weight.abs().mean().expand_as(lay.recon))
    assert all(torch.equal(a, b) for a, b in zip(latent_signs(plain.model), latent_signs(scaled.model)))
    after_scaled = torch.get_rng_state()
    Trainer(cfg, str(DATA), tmp_path / "q")  # seeds itself: the same state after it means no extra random draws
    assert torch.equal(torch.get_rng_state(), after_scaled)
    for bad in (0, -1, 1e4):
        with pytest.raises(ValueError, match="latent_init_scale"):
            make_config({"latent_init_scale": bad})
    with pytest.raises(ValueError, match="latent_init_scale.*init_from"):
        make_config({"latent_init_scale": 0.1, "init_from": "x.pt"})


@needs_mini
def test_epoch_log_counts_latent_sign_changes_across_a_resume(tmp_path):
    """sign_flips: the fraction of latent signs that changed during the epoch; sign_changed_from_init: since the
    seed's initialisation. Both recomputed from the checkpoints, also for an epoch run after a resume."""
    torch.set_num_threads(1)
    cfg = small_cfg(lam=0.0, theta=0.0, epochs=2, lr=0.5)
    run = tmp_path / "r"
    Trainer(cfg, str(DATA), run).fit(epochs=1, progress=False)
    signs1 = latent_signs(_model_from(run / "checkpoint.pt", cfg, tmp_path))
    tr = Trainer(cfg, str(DATA), run, load_init=False)
    tr.resume(run / "checkpoint.pt")
    tr.fit(progress=False)
    signs2 = latent_signs(tr.model)
    init = latent_signs(Trainer(cfg, str(DATA), tmp_path / "fresh").model)
    r1, r2 = _epoch_records(run)
    assert r1["sign_flips"] == r1["sign_changed_from_init"] == changed_fraction(init, signs1) > 0
    assert r2["sign_flips"] == changed_fraction(signs1, signs2) > 0
    assert r2["sign_changed_from_init"] == changed_fraction(init, signs2)


def _model_from(ckpt: Path, cfg: dict, tmp_path: Path):
    tr = Trainer(cfg, str(DATA), tmp_path / "load", load_init=False)
    tr.resume(ckpt)
    return tr.model
