"""Training loop for BONN and its baselines: Bayesian losses, cosine schedule, exact resume, CPU DDP (gloo).

One `Trainer` owns the model, the Bayesian loss modules, the optimizer and the run directory. Everything that
changes during training is saved each epoch as plain tensors/dicts (`torch.save`) and restored with
`torch.load(weights_only=True)`; batch order and augmentation derive from (seed, epoch), so resuming replays
exactly the run that was interrupted.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .binarize import (BinaryConv2d, binary_layers, changed_fraction, latent_signs, scale_latent_init,
                       set_binary_conv_dtype)
from .data import Normalizer, Split, eval_batches, hold_out, load_split, train_batches
from .losses import BayesianFeatureLoss, BayesianKernelLoss, bimodality, clamp_recon_
from .models import ARCHS, build_model

DEFAULTS: dict[str, Any] = dict(
    name="run", arch="wrn22-16", binary=True, num_classes=10, dropout=0.0,
    seed=0, epochs=10, batch_size=128,
    lr_schedule="cosine", lr_milestones=(0.3, 0.6, 0.8), lr_gamma=0.2,
    optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, latent_weight_decay=0.0,
    slow_lr_scale=0.1, latent_init_scale=1.0,
    lam=1e-4, nu=1e-4, theta=1e-2, center_alpha=0.5, feature_fraction=0.25, prior_update="optimizer",
    channels_last=True, compile=False, threads=1, device="auto", log_every=50, eval_batch=500,
    layout="auto", limit_train=None, limit_test=None, val_size=0, export=True, hist_layers=3,
    binary_conv_dtype="float32", feature_source="pooled", init_from=None,
)
FEATURE_SOURCES = ("pooled", "logits")
# What `--resume` refuses to change: the net, the losses, the optimizer and its schedule, the data and its order.
RESUME_MUST_MATCH = (
    "arch", "binary", "num_classes", "dropout", "seed", "batch_size", "limit_train", "limit_test", "val_size",
    "optimizer", "lr", "momentum", "nesterov", "weight_decay", "latent_weight_decay", "slow_lr_scale",
    "latent_init_scale", "lr_schedule", "lr_milestones", "lr_gamma",
    "lam", "nu", "theta", "center_alpha", "feature_fraction", "prior_update", "feature_source",
)
LR_SCHEDULES = ("cosine", "step")  # step: the WRN recipe's x0.2 at 60/120/160 of 200 epochs (method 17)
PRIOR_UPDATES = ("optimizer", "sgd", "closed_form")  # how the kernel prior's mu/sigma move (method 5, 16)
CONV_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def make_config(overrides: dict[str, Any]) -> dict[str, Any]:
    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown config keys: {sorted(unknown)}")
    cfg = {**DEFAULTS, **{k: v for k, v in overrides.items() if v is not None or k.startswith("limit_")}}
    # YAML reads "1e-5" (no dot) as a string; coerce the numeric keys so such a typo cannot slip through.
    for key, kind in (("lam", float), ("nu", float), ("theta", float), ("lr", float), ("weight_decay", float),
                      ("latent_weight_decay", float), ("latent_init_scale", float),
                      ("momentum", float), ("slow_lr_scale", float), ("center_alpha", float),
                      ("feature_fraction", float), ("dropout", float), ("epochs", int), ("batch_size", int),
                      ("seed", int), ("val_size", int)):
        try:
            cfg[key] = kind(cfg[key])
        except (TypeError, ValueError):
            raise ValueError(f"{key} must be a number, got {cfg[key]!r}") from None
    if cfg["arch"] not in ARCHS:
        raise ValueError(f"unknown arch {cfg['arch']!r}; choose from {sorted(ARCHS)}")
    if cfg["optimizer"] not in ("sgd", "adam"):
        raise ValueError("optimizer must be 'sgd' or 'adam'")
    for key in ("lam", "nu", "theta", "lr", "weight_decay", "latent_weight_decay"):
        if float(cfg[key]) < 0:
            raise ValueError(f"{key} must be >= 0")
    if not 0.0 < cfg["latent_init_scale"] <= 1e3:
        raise ValueError(f"latent_init_scale must be in (0, 1000], got {cfg['latent_init_scale']}")
    if cfg["latent_init_scale"] != 1.0 and cfg["init_from"] is not None:
        raise ValueError("latent_init_scale scales a fresh initialisation; with init_from the weights come from "
                         "the source checkpoint, so leave it at 1")
    if int(cfg["val_size"]) < 0:
        raise ValueError("val_size must be >= 0")
    if int(cfg["epochs"]) < 1 or int(cfg["batch_size"]) < 1:
        raise ValueError("epochs and batch_size must be >= 1")
    if not 0.0 <= float(cfg["feature_fraction"]) <= 1.0:
        raise ValueError("feature_fraction must be in [0, 1]")
    if cfg["lr_schedule"] not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {list(LR_SCHEDULES)}")
    try:
        cfg["lr_milestones"] = [float(m) for m in cfg["lr_milestones"]]
        cfg["lr_gamma"] = float(cfg["lr_gamma"])
    except (TypeError, ValueError):
        raise ValueError("lr_milestones must be a list of numbers and lr_gamma a number") from None
    ms = cfg["lr_milestones"]
    if any(not 0.0 < m < 1.0 for m in ms) or any(b <= a for a, b in itertools.pairwise(ms)):
        raise ValueError(f"lr_milestones must rise strictly inside (0, 1) (fractions of the epochs), got {ms}")
    if not 0.0 < cfg["lr_gamma"] <= 1.0:
        raise ValueError(f"lr_gamma must be in (0, 1], got {cfg['lr_gamma']}")
    if cfg["prior_update"] not in PRIOR_UPDATES:
        raise ValueError(f"prior_update must be one of {list(PRIOR_UPDATES)}")
    if cfg["device"] not in ("auto", "cpu", "cuda"):
        raise ValueError("device must be 'auto', 'cpu' or 'cuda'")
    if cfg["binary_conv_dtype"] not in CONV_DTYPES:
        raise ValueError(f"binary_conv_dtype must be one of {sorted(CONV_DTYPES)}")
    if cfg["feature_source"] not in FEATURE_SOURCES:
        raise ValueError(f"feature_source must be one of {list(FEATURE_SOURCES)}")
    if cfg["init_from"] is not None:
        cfg["init_from"] = str(cfg["init_from"])
    return cfg


def bf16_is_native(device: torch.device) -> bool:
    """Whether bfloat16 convolutions run on native hardware (AVX512-BF16/AMX on CPU) rather than emulated."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_device(name: str, world: int = 1) -> torch.device:
    """'auto' picks the GPU when there is one. Distributed training (gloo) is CPU only."""
    if world > 1:
        if name == "cuda":
            raise ValueError("distributed training here uses gloo on CPU; run with device cpu/auto")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda asked for, but torch sees no GPU")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def planned_epochs(done: int, secs_per_epoch: float, secs_left: float, floor: int = 1) -> int:
    """How many epochs in all fit a time budget, given the measured time of one epoch (train + eval)."""
    return max(done + int(secs_left // max(secs_per_epoch, 1e-9)), floor)


def cosine_factor(step: int, total: int) -> float:
    """lr multiplier: cosine from 1 to 0 over `total` steps."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


def milestone_epochs(milestones: list[float], epochs: int) -> list[int]:
    """The epochs after which a step schedule cuts the lr: fractions of the run, so `--epochs` scales them
    as it scales a cosine (0.3/0.6/0.8 of 200 are the WRN recipe's 60/120/160)."""
    return [max(1, round(m * epochs)) for m in milestones]  # >= 1: a cut "after epoch 0" would skip full lr


def step_factor(step: int, steps_per_epoch: int, milestones: list[int], gamma: float) -> float:
    """lr multiplier: gamma for every milestone epoch already finished."""
    done_epochs = step // max(steps_per_epoch, 1)
    return gamma ** sum(done_epochs >= e for e in milestones)


class StopRequest:
    """SIGINT/SIGTERM during `fit` ask for a clean stop: the current epoch finishes, its checkpoint is written
    and `fit` returns (continue with `--resume`). A second signal stops at once, losing the unfinished epoch.
    Handlers are installed only in the main thread (Python delivers signals there) and restored on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():  # restore once: a second signal restores early
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            self.__exit__()
            raise KeyboardInterrupt(f"stopped by signal {signum} before the epoch finished")
        self.requested = True
        print(f"\n{signal.Signals(signum).name}: stopping after this epoch's checkpoint "
              "(send it again to stop now and lose the unfinished epoch)", flush=True)


class Trainer:
    def __init__(self, cfg: dict[str, Any], data_dir: str, out_dir: str | Path, load_init: bool = True):
        """`load_init=False`: the caller is about to `resume`, which replaces every state `init_from` would set,
        so the source checkpoint is neither read nor required to still exist."""
        self.cfg = cfg
        self.out = Path(out_dir)
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.device = resolve_device(str(cfg["device"]), self.world)
        torch.manual_seed(int(cfg["seed"]))
        self.spec = ARCHS[cfg["arch"]]["input"]
        self.model = build_model(cfg["arch"], binary=bool(cfg["binary"]), num_classes=int(cfg["num_classes"]),
                                 dropout=float(cfg["dropout"])).to(self.device)
        if cfg["latent_init_scale"] != 1.0:
            scale_latent_init(self.model, float(cfg["latent_init_scale"]))
        # The latent signs as initialised (a fresh start only): the epoch log says how many have changed since,
        # which tells a net that learns its binary weights from one that trains around random ones (method 19).
        self._signs_init = None if cfg["init_from"] else latent_signs(self.model)
        self._signs_prev = self._signs_init if self._signs_init is not None else latent_signs(self.model)
        init = self._load_init(cfg["init_from"]) if cfg["init_from"] and load_init else None
        if cfg["channels_last"]:
            self.model = self.model.to(memory_format=torch.channels_last)
        conv_dtype = CONV_DTYPES[cfg["binary_conv_dtype"]]
        n_binary = set_binary_conv_dtype(self.model, conv_dtype)
        if n_binary and conv_dtype == torch.bfloat16 and not bf16_is_native(self.device) and self.rank == 0:
            print("warning: binary_conv_dtype bfloat16 on hardware without native bfloat16: it is emulated "
                  "and likely slower than float32", flush=True)
        # torch.compile fuses the many small elementwise ops (BN, sign, STE masks, PReLU, adds) around the
        # convolutions: 1.45x faster per training step on this CPU. Only the training forward is compiled;
        # evaluation and export use the plain module, and state_dict keys are unchanged.
        self.train_forward = (torch.compile(self.model.forward_with_features) if cfg["compile"]
                              else self.model.forward_with_features)
        self.kernel_loss = (BayesianKernelLoss(self.model, cfg["lam"], cfg["nu"])
                            if cfg["binary"] and cfg["lam"] > 0 else None)
        # The kernel loss is ~25 small elementwise ops per binary layer; compiled, each layer is a few kernels
        # (on a GPU, launches dominate an eager step).
        self.kernel_fn = (torch.compile(self.kernel_loss) if cfg["compile"] and self.kernel_loss is not None
                          else self.kernel_loss)
        self.feature_loss = None
        if cfg["theta"] > 0:
            dim = self.model.feature_dim if cfg["feature_source"] == "pooled" else int(cfg["num_classes"])
            self.feature_loss = BayesianFeatureLoss(int(cfg["num_classes"]), dim,
                                                    cfg["theta"], cfg["center_alpha"]).to(self.device)
        self.optimizer, self.prior_optimizer = self._make_optimizers()
        self.norm = Normalizer(self.spec.mean, self.spec.std, bool(cfg["channels_last"])).to(self.device)
        train = load_split(data_dir, "train", cfg["layout"], cfg["limit_train"])
        # val_size > 0: tune on held-out training images (same ones for every run), never on the test set.
        train, val = hold_out(train, int(cfg["val_size"]), int(cfg["num_classes"]))
        self.train = train.to(self.device)
        self.val = val.to(self.device) if len(val) else None
        self.test = load_split(data_dir, "test", cfg["layout"], cfg["limit_test"]).to(self.device)
        self.steps_per_epoch = len(self.train) // int(cfg["batch_size"])
        if self.steps_per_epoch < 1:
            raise ValueError(f"{len(self.train)} training images < one batch of {cfg['batch_size']}")
        self.set_epochs(int(cfg["epochs"]))
        self.epoch = 0   # next epoch to run
        self.step = 0    # optimizer steps done
        self.hist_idx = self._hist_layer_indices()
        if init is not None:
            self._init_bayesian_state(init)

    # ----- setup -------------------------------------------------------------------------------------------
    def set_epochs(self, epochs: int) -> None:
        """Schedule length: the cosine (or the step schedule) spans `epochs`; the feature loss covers its last
        fraction."""
        self.cfg["epochs"] = int(epochs)
        self.total_steps = self.steps_per_epoch * int(epochs)
        self.feature_start = int(round(int(epochs) * (1.0 - float(self.cfg["feature_fraction"]))))

    def _load_init(self, path: str) -> dict[str, Any]:
        """Fine-tuning start: the network weights of another run's checkpoint (same arch, binary, classes).
        Everything else starts fresh: optimizer, schedule, step count. The kernel prior, built next, reads
        its initial mu/sigma from these weights unless `_init_bayesian_state` finds them in the checkpoint."""
        ckpt = read_checkpoint(path, f"init_from {path}")
        for key in ("arch", "binary", "num_classes"):
            saved = ckpt["config"].get(key, DEFAULTS[key])
            if saved != self.cfg[key]:
                raise ValueError(f"init_from {path}: checkpoint {key}={saved!r} differs from config "
                                 f"{self.cfg[key]!r}")
        self.model.load_state_dict(ckpt["model"])
        return ckpt

    @torch.no_grad()
    def _init_bayesian_state(self, ckpt: dict[str, Any]) -> None:
        """Carry the source run's Bayesian state over where it has the same meaning; otherwise start the feature
        centers at the class means of the training features (the loss may be on from the first fine-tuning
        step, and centers at 0 would pull every feature towards the origin)."""
        if self.kernel_loss is not None and ckpt.get("kernel_loss"):
            self.kernel_loss.load_state_dict(ckpt["kernel_loss"])
        if self.feature_loss is None:
            return
        source = ckpt["config"].get("feature_source", "pooled")
        saved = ckpt.get("feature_loss") or {}
        if saved and source == self.cfg["feature_source"]:
            self.feature_loss.load_state_dict(saved)
            return
        self.model.eval()
        sums = torch.zeros_like(self.feature_loss.centers)
        counts = torch.zeros(sums.shape[0], dtype=sums.dtype, device=sums.device)
        for xb, yb in eval_batches(self.train, int(self.cfg["eval_batch"])):
            f = self._feature(*self.model.forward_with_features(self.norm(xb)))
            sums.index_add_(0, yb, f)
            counts.index_add_(0, yb, torch.ones_like(yb, dtype=sums.dtype))
        self.feature_loss.centers.copy_(sums / counts.clamp(min=1)[:, None])

    def _feature(self, logits: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """The vector the Bayesian feature loss models: the pooled feature that feeds the FC (default), or
        the FC's output (`feature_source: logits`, the other reading of 'applied to the FC layer')."""
        return logits if self.cfg["feature_source"] == "logits" else pooled

    def _make_optimizers(self) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer | None]:
        """The network's optimizer, and with `prior_update: sgd` a plain-SGD one for the Bayesian parameters
        (the kernel prior's mu, sigma and the feature loss's sigma; docs/method.md section 11)."""
        cfg = self.cfg
        latent, recon, decay, no_decay = [], [], [], []
        for m in self.model.modules():
            for pname, p in m.named_parameters(recurse=False):
                if isinstance(m, BinaryConv2d):
                    (latent if pname == "weight" else recon).append(p)
                elif isinstance(m, (nn.Conv2d, nn.Linear)) and pname == "weight":
                    decay.append(p)
                else:
                    no_decay.append(p)  # BN, PReLU, biases
        mu: list[nn.Parameter] = []
        sigmas: list[nn.Parameter] = []
        if self.kernel_loss is not None:
            if cfg["prior_update"] == "closed_form":
                # refit after every step (train_step), so no optimizer owns them and they take no gradient
                for q in (*self.kernel_loss.mu, *self.kernel_loss.sigma):
                    q.requires_grad_(False)
            else:
                mu += list(self.kernel_loss.mu)
                sigmas += list(self.kernel_loss.sigma)
        if self.feature_loss is not None:
            sigmas.append(self.feature_loss.sigma)
        wd, s = float(cfg["weight_decay"]), float(cfg["slow_lr_scale"])
        separate = cfg["prior_update"] == "sgd"
        # w (recon) and every sigma learn at 0.1x the base lr (paper section 3.1.3). Latent binary weights get
        # no weight decay by default (only their signs matter; the kernel prior is their regulariser);
        # `latent_weight_decay` gives them the WRN recipe's decay, the paper's likely setting (method section 15).
        groups = [dict(params=decay, weight_decay=wd, lr_scale=1.0, name="decay"),
                  dict(params=latent, weight_decay=float(cfg["latent_weight_decay"]), lr_scale=1.0, name="latent"),
                  dict(params=no_decay + ([] if separate else mu), weight_decay=0.0, lr_scale=1.0, name="other"),
                  dict(params=recon + ([] if separate else sigmas), weight_decay=0.0, lr_scale=s, name="slow")]
        if cfg["optimizer"] == "adam":
            # Adam's L2 is not decoupled; use AdamW semantics for the decayed group. On a GPU the fused
            # kernel updates every tensor in one launch.
            main = torch.optim.AdamW(self._groups(groups), lr=float(cfg["lr"]), weight_decay=0.0,
                                     fused=self.device.type == "cuda")
        else:
            main = torch.optim.SGD(self._groups(groups), lr=float(cfg["lr"]), momentum=float(cfg["momentum"]),
                                   nesterov=bool(cfg["nesterov"]))
        prior_groups = self._groups([dict(params=mu, weight_decay=0.0, lr_scale=1.0, name="prior_mu"),
                                     dict(params=sigmas, weight_decay=0.0, lr_scale=s, name="prior_sigma")])
        # Plain gradient steps, as the paper's update rules (Eqs. 17-18): the step follows the gradient's size,
        # which Adam's normalisation would discard.
        prior = torch.optim.SGD(prior_groups, lr=float(cfg["lr"])) if separate and prior_groups else None
        return main, prior

    def _groups(self, groups: list[dict]) -> list[dict]:
        groups = [g for g in groups if g["params"]]
        for g in groups:
            g["lr"] = float(self.cfg["lr"]) * g["lr_scale"]
        return groups

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [o for o in (self.optimizer, self.prior_optimizer) if o is not None]

    def _hist_layer_indices(self) -> list[int]:
        n = len(binary_layers(self.model))
        k = min(int(self.cfg["hist_layers"]), n)
        if k <= 0:
            return []
        return sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(k)})

    def all_params(self) -> list[nn.Parameter]:
        return [p for o in self.optimizers for g in o.param_groups for p in g["params"]]

    def lr_factor(self) -> float:
        """The schedule's lr multiplier after `self.step` optimizer steps."""
        if self.cfg["lr_schedule"] == "step":
            cuts = milestone_epochs(self.cfg["lr_milestones"], int(self.cfg["epochs"]))
            return step_factor(self.step, self.steps_per_epoch, cuts, float(self.cfg["lr_gamma"]))
        return cosine_factor(self.step, self.total_steps)

    def set_lr(self) -> float:
        f = self.lr_factor()
        for g in (g for o in self.optimizers for g in o.param_groups):
            g["lr"] = float(self.cfg["lr"]) * g["lr_scale"] * f
        return float(self.cfg["lr"]) * f

    # ----- state -------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": "bonn-serve-train/1",
            "config": dict(self.cfg),
            "epoch": self.epoch, "step": self.step,
            "model": self.model.state_dict(),
            "kernel_loss": self.kernel_loss.state_dict() if self.kernel_loss is not None else {},
            "feature_loss": self.feature_loss.state_dict() if self.feature_loss is not None else {},
            "optimizer": self.optimizer.state_dict(),
            "prior_optimizer": self.prior_optimizer.state_dict() if self.prior_optimizer is not None else {},
            "scheduler": {"step": self.step, "total_steps": self.total_steps},
            # CUDA's generator too: dropout on a GPU draws from it, so a GPU run resumes exactly only with it
            "rng": {"torch": torch.get_rng_state(),
                    **({"cuda": torch.cuda.get_rng_state()} if self.device.type == "cuda" else {})},
        }

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        if ckpt.get("format") != "bonn-serve-train/1":
            raise ValueError("not a bonn-serve training checkpoint")
        # `--resume` continues the same run: everything that shapes its trajectory must match. Only the schedule
        # length (`--epochs`) and how it is computed (threads, device, compile, bfloat16 convs) may change; a new
        # stage with other hyper-parameters is `--init-from`. Keys older checkpoints lack take their default.
        for key in RESUME_MUST_MATCH:
            saved, own = _comparable(ckpt["config"].get(key, DEFAULTS[key])), _comparable(self.cfg[key])
            if saved != own:
                raise ValueError(f"checkpoint {key}={saved!r} differs from config {own!r} (--resume continues "
                                 f"the same run; start a new stage from it with --init-from)")
        # A fine-tuning run resumed with the command that started it (--init-from SRC --resume) is fine; SRC may be
        # gone by then, only this run's checkpoint is read. Another SRC would misstate where the run came from.
        saved_init = ckpt["config"].get("init_from")
        if self.cfg.get("init_from") is None:
            self.cfg["init_from"] = saved_init  # config.json keeps the record
        elif str(self.cfg["init_from"]) != str(saved_init):
            raise ValueError(f"checkpoint init_from={saved_init!r} differs from --init-from {str(self.cfg['init_from'])!r} "
                             "(--resume continues the run that was started from the former)")
        self.model.load_state_dict(ckpt["model"])
        if self.kernel_loss is not None:
            self.kernel_loss.load_state_dict(ckpt["kernel_loss"])
        if self.feature_loss is not None:
            self.feature_loss.load_state_dict(ckpt["feature_loss"])
        # This run's config decides the group hyper-parameters (lr_scale, weight decay), and its device the
        # implementation flags (fused, foreach, capturable). Both go into the saved groups *before* loading:
        # torch places each state's `step` by those flags, and a fused CUDA AdamW needs it on the GPU, so a
        # checkpoint written on a CPU would otherwise fail its first step there.
        own_keys = ("lr_scale", "weight_decay", "fused", "foreach", "capturable")
        for opt, saved in zip(self.optimizers, (ckpt["optimizer"], ckpt.get("prior_optimizer"))):
            for g, own in zip(saved["param_groups"], opt.param_groups):
                g.update({k: own[k] for k in own_keys if k in own})
            opt.load_state_dict(saved)
        torch.set_rng_state(ckpt["rng"]["torch"])
        if "cuda" in ckpt["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"])
        self.epoch, self.step = int(ckpt["epoch"]), int(ckpt["step"])

    def save_checkpoint(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        # CPU tensors: a checkpoint written on a GPU opens with a plain torch.load on any machine
        with open(tmp, "wb") as f:
            torch.save(_to_cpu(self.state_dict()), f)
            f.flush()
            os.fsync(f.fileno())  # on disk before it replaces the only other copy (a host crash, not just a kill)
        os.replace(tmp, path)

    def resume(self, path: Path, keep_epochs: bool = True) -> None:
        """Continue the run saved at `path`. keep_epochs: on the schedule length it was saved with (which a
        `--time-budget` plan or an earlier `--epochs` may have set); False keeps this trainer's (`--epochs`)."""
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        self.load_state_dict(ckpt)
        if keep_epochs:
            self.set_epochs(int(ckpt["config"]["epochs"]))
        if self.rank == 0:
            self._trim_log()

    def _trim_log(self) -> None:
        """Drop the metrics records written after the checkpoint (the unfinished epoch of a stopped run, or
        every later epoch when resuming from an older checkpoint), so that the resumed run's log reads as one
        uninterrupted run. A line cut off mid-write is dropped too."""
        log = self.out / "metrics.jsonl"
        if not log.exists():
            return
        kept, dropped = [], 0
        for line in log.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                dropped += 1
                continue
            if rec.get("step", 0) > self.step or rec.get("epoch", 0) > self.epoch:
                dropped += 1
            else:
                kept.append(line + "\n")
        if dropped:
            tmp = log.with_suffix(".tmp")
            tmp.write_text("".join(kept))
            os.replace(tmp, log)
            print(f"metrics.jsonl: dropped {dropped} records written after the checkpoint "
                  f"(epoch {self.epoch}, step {self.step})", flush=True)

    # ----- distributed helpers -----------------------------------------------------------------------------
    def _sync_grads(self) -> None:
        if self.world == 1:
            return
        params = [p for p in self.all_params()]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat.div_(self.world)
        off = 0
        for p in params:
            n = p.numel()
            part = flat[off:off + n].view_as(p)
            if p.grad is not None:
                p.grad.copy_(part)
            elif bool(part.any()):  # another rank had a gradient for it
                p.grad = part.clone(memory_format=torch.preserve_format)
            # else: no rank had one (sigma_m before the feature loss starts): leave None, as a single process
            # would, so Adam neither counts a step nor decays it
            off += n

    def _sync_buffers(self) -> None:
        """BN running statistics follow rank 0 (as DDP's broadcast_buffers)."""
        if self.world == 1:
            return
        for b in self.model.buffers():
            dist.broadcast(b, 0)

    def _update_centers(self, f: torch.Tensor, y: torch.Tensor) -> None:
        diff, count = self.feature_loss.center_deltas(f, y)
        if self.world > 1:
            packed = torch.cat([diff, count[:, None]], 1)
            dist.all_reduce(packed)
            diff, count = packed[:, :-1], packed[:, -1]
        self.feature_loss.apply_center_update(diff, count)

    # ----- one step / one epoch ----------------------------------------------------------------------------
    def train_step(self, xb: torch.Tensor, yb: torch.Tensor, feature_on: bool,
                   measure: bool) -> dict[str, torch.Tensor | float]:
        """One optimizer step. Returns detached 0-d tensors (no host sync, which would stall a GPU queue);
        on `measure` steps also the gradient ratio as a float."""
        self._sync_buffers()
        lr = self.set_lr()
        x = self.norm(xb)
        logits, pooled = self.train_forward(x)
        feats = self._feature(logits, pooled)
        ce = F.cross_entropy(logits, yb)
        loss = ce
        out: dict[str, torch.Tensor | float] = {"ce": ce.detach(),
                                                "acc": (logits.detach().argmax(1) == yb).float().mean()}
        if self.kernel_loss is not None:
            kern = self.kernel_fn()
            loss = loss + kern
            out["kernel"] = kern.detach()
        if self.feature_loss is not None and feature_on:
            feat = self.feature_loss(feats, yb)
            loss = loss + feat
            out["feature"] = feat.detach()
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        self._sync_grads()
        if measure:
            out.update(self._grad_ratios())
        for opt in self.optimizers:
            opt.step()
        self.step += 1
        if self.model.binary:
            clamp_recon_(self.model)
        if self.kernel_loss is not None:
            if self.cfg["prior_update"] == "closed_form":
                self.kernel_loss.fit_prior_()
            else:
                self.kernel_loss.clamp_()
        if self.feature_loss is not None:
            self.feature_loss.clamp_()
            # Centers are tracked from the start (they do not touch the network) so they are meaningful when
            # the feature loss switches on; the update follows the optimizer step (paper Alg. 1 line 15).
            self._update_centers(feats, yb)
        out["lr"] = lr
        return out

    @torch.no_grad()
    def _grad_ratios(self) -> dict[str, float]:
        """||dL_kernel/dX|| / ||dL_rest/dX|| over all latent binary weights (rest = cross-entropy, plus the
        feature loss in the fine-tuning phase), using the closed-form kernel gradient (Eq. 13)."""
        if self.kernel_loss is None:
            return {}
        gk = self.kernel_loss.grad_wrt_weights()
        layers = self.kernel_loss.layers
        nk = math.sqrt(sum(float(g.square().sum()) for g in gk))
        nr = math.sqrt(sum(float((lay.weight.grad - g).square().sum()) for lay, g in zip(layers, gk)))
        return {"grad_ratio": nk / max(nr, 1e-30)}

    def run_epoch(self, progress: bool = True) -> dict[str, float]:
        from tqdm import tqdm

        cfg = self.cfg
        epoch = self.epoch
        feature_on = self.feature_loss is not None and epoch >= self.feature_start
        self.model.train()
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        start_step = self.step - epoch * self.steps_per_epoch
        batches = train_batches(self.train, int(cfg["batch_size"]), int(cfg["seed"]), epoch,
                                self.rank, self.world, start_step)
        bar = tqdm(batches, total=self.steps_per_epoch - start_step, desc=f"{cfg['name']} ep {epoch + 1}",
                   disable=not progress or self.rank != 0, mininterval=10.0, dynamic_ncols=True)
        t0 = time.time()
        n_img = 0
        for xb, yb in bar:
            measure = (self.step % int(cfg["log_every"])) == 0
            m = self.train_step(xb, yb, feature_on, measure)
            n_img += len(yb) * self.world
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
            if measure:  # the only host syncs inside an epoch
                if self.rank == 0:
                    self.log({"kind": "step", "epoch": epoch + 1, "step": self.step,
                              **{k: float(v) for k, v in m.items()}})
                ips = n_img / max(time.time() - t0, 1e-9)
                bar.set_postfix({k: f"{float(sums[k]) / counts[k]:.4g}" for k in ("ce", "kernel", "feature", "acc")
                                 if k in sums} | {"img/s": f"{ips:.0f}"}, refresh=False)
        self._sync_buffers()  # the last step's BN statistics update happened per rank
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.time() - t0
        res = {f"train_{k}": float(v) / counts[k] for k, v in sums.items() if k not in ("lr",)}
        # device: a run resumed across machines says which epochs ran where (model cards read it)
        res.update(epoch_time_s=dt, images_per_s=n_img / max(dt, 1e-9), feature_on=feature_on,
                   device=self.device.type, lr_end=self.lr_factor() * float(cfg["lr"]))
        return res

    @torch.no_grad()
    def evaluate(self, split: Split | None = None, prefix: str = "test") -> dict[str, float]:
        split = split or self.test
        self.model.eval()
        correct, loss_sum = 0, 0.0
        with _full_fp32():  # measured in float32 on every device, as the engine and onnxruntime compute
            for xb, yb in eval_batches(split, int(self.cfg["eval_batch"])):
                logits = self.model(self.norm(xb))
                loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
                correct += int((logits.argmax(1) == yb).sum())
        n = len(split)
        return {f"{prefix}_acc": correct / n, f"{prefix}_loss": loss_sum / n, f"{prefix}_n": n}

    def evaluate_all(self) -> dict[str, float]:
        """Test metrics, and validation metrics when the run holds a validation set out."""
        out = self.evaluate()
        if self.val is not None:
            out.update(self.evaluate(self.val, "val"))
        return out

    @torch.no_grad()
    def weight_stats(self) -> dict[str, Any]:
        layers = binary_layers(self.model)
        if not layers:
            return {}
        stats = [bimodality(lay.weight) for lay in layers]
        out: dict[str, Any] = {
            "bc_mean": sum(s["bc"] for s in stats) / len(stats),
            "kurtosis_mean": sum(s["kurtosis"] for s in stats) / len(stats),
            "near_mode_mean": sum(s["near_mode"] for s in stats) / len(stats),
            "alpha_mean": sum(float(lay.alpha) for lay in layers) / len(layers),
            # the latent weights' scale: weight decay shrinks it, and with it the prior's sigma (method section 15)
            "latent_abs_mean": sum(float(lay.weight.abs().mean()) for lay in layers) / len(layers),
            # fraction of all latent signs that changed since the last record (one epoch), and since the start
            "sign_flips": changed_fraction(self._signs_prev, signs := latent_signs(self.model)),
            "bc_per_layer": [round(s["bc"], 4) for s in stats],
            "hist": {},
        }
        if self._signs_init is not None:
            out["sign_changed_from_init"] = changed_fraction(self._signs_init, signs)
        self._signs_prev = signs
        for i in self.hist_idx:
            w = layers[i].weight.detach().flatten()
            lim = float(w.abs().quantile(0.995)) if w.numel() < 2**24 else float(w.abs().max())
            counts = torch.histc(w, bins=80, min=-lim, max=lim)
            out["hist"][f"layer{i}"] = {"lim": lim, "counts": [int(c) for c in counts]}
        if self.kernel_loss is not None:
            out["prior_mu_mean"] = float(torch.cat([m.detach() for m in self.kernel_loss.mu]).mean())
            out["prior_sigma_mean"] = float(torch.cat([s.detach() for s in self.kernel_loss.sigma]).mean())
        return out

    # ----- logging / driver --------------------------------------------------------------------------------
    def log(self, record: dict[str, Any]) -> None:
        with open(self.out / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def fit(self, epochs: int | None = None, progress: bool = True, export: bool | None = None,
            time_budget_s: float | None = None, plot: bool = True) -> dict[str, Any]:
        """Train until `epochs` (default: the config's) epochs are done; returns the last epoch record.
        The schedule is always the config's: `epochs` < cfg["epochs"] stops part-way (resumable).

        With `time_budget_s`, the schedule is fitted to the budget instead: after the second epoch of this
        call (the first pays for compilation) the cosine length becomes as many epochs as the measured epoch
        time allows, and the loop stops early if an epoch would overrun anyway (the checkpoint resumes)."""
        if epochs is not None and int(epochs) < 1:
            raise ValueError(f"epochs (--stop-after) must be >= 1, got {epochs}")
        limit = None if epochs is None else int(epochs)  # --stop-after: stop there, whatever the schedule
        stop_at = min(limit or int(self.cfg["epochs"]), int(self.cfg["epochs"]))
        t_start = time.time()
        # The budget fixes the schedule once, at epoch 2 of the run. A run resumed past that keeps the length it
        # was planned with (re-planning there would move the lr and the feature loss's start under it) and only
        # stops early if the budget runs out.
        plan_at = 2 if time_budget_s is not None and self.epoch < 2 else None
        if time_budget_s is not None and plan_at is None and self.rank == 0:
            print(f"--time-budget: resumed at epoch {self.epoch}, past the planning epoch; the schedule keeps its "
                  f"{self.cfg['epochs']} epochs and the run stops when the budget runs out", flush=True)
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            _write_atomic(self.out / "config.json", json.dumps(self.cfg, indent=2))
            if self.epoch == 0 and self.step == 0:
                self.log({"kind": "init", "epoch": 0, **self.evaluate_all(), **self.weight_stats()})
        self._signs_prev = latent_signs(self.model)  # the weights this call starts from (a resume's included)
        last: dict[str, Any] = {}
        self.stopped_early = False
        overhead_s = 0.0  # checkpoint + plot time of the previous epoch: part of what an epoch costs
        with StopRequest() as stop:
            while self.epoch < stop_at:
                t_epoch = time.time()
                rec = self.run_epoch(progress)
                self.epoch += 1
                if self.rank == 0:
                    last = {"kind": "epoch", "epoch": self.epoch, "step": self.step, **rec, **self.evaluate_all(),
                            **self.weight_stats(), "time": time.time()}
                    if self.kernel_loss is not None:
                        last["kernel_value"] = self.kernel_loss.value()
                if time_budget_s is not None:
                    per_epoch = time.time() - t_epoch + overhead_s
                    left = time_budget_s - (time.time() - t_start)
                    if self.epoch == plan_at:
                        planned = planned_epochs(self.epoch, per_epoch, left, floor=self.epoch)
                        self.set_epochs(planned)
                        stop_at = min(planned, limit) if limit else planned
                        last["planned_epochs"] = planned
                        if self.rank == 0:  # the schedule changed: keep config.json in step with the checkpoint
                            _write_atomic(self.out / "config.json", json.dumps(self.cfg, indent=2))
                    elif left < per_epoch:
                        stop_at = self.epoch  # out of time: stop here, resumable
                t_after = time.time()
                if self.rank == 0:
                    self.log(last)
                    self.save_checkpoint(self.out / "checkpoint.pt")
                    if plot:
                        self._plot()
                overhead_s = time.time() - t_after
                if self._any_rank(stop.requested) and self.epoch < stop_at:
                    self.stopped_early = True  # checkpoint written: `--resume` continues from here
                    return last
                if self.world > 1:
                    dist.barrier()
        # Only a run that finished its schedule is exported: a `--stop-after` or out-of-budget stop is resumable,
        # and its weights are not the annealed model.
        self.stopped_early = self.epoch < int(self.cfg["epochs"])
        if self.rank == 0 and not self.stopped_early and (self.cfg["export"] if export is None else export):
            self.export()
        return last

    def _any_rank(self, flag: bool) -> bool:
        """True when `flag` is set on any rank (a signal may reach the ranks at different moments)."""
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def _plot(self) -> None:
        try:
            from .plots import plot_run
            plot_run(self.out)
        except Exception as e:  # plotting must never kill a long run
            print(f"[plots] skipped: {e}", flush=True)

    def export(self) -> Path:
        """Write model.bonn (binary) or model.onnx (full precision) into the run directory."""
        from .export import export_bonn, export_onnx

        model = build_model(self.cfg["arch"], binary=bool(self.cfg["binary"]),
                            num_classes=int(self.cfg["num_classes"]), dropout=float(self.cfg["dropout"]))
        model.load_state_dict(self.model.state_dict())  # contiguous NCHW copy for the exporters
        model.eval()
        last = self.evaluate_all()
        prov = {"trained": True, "run": self.cfg["name"], "epochs": self.epoch, "steps": self.step,
                "config": dict(self.cfg), "torch_test_acc": last["test_acc"]}
        if "val_acc" in last:
            prov["torch_val_acc"] = last["val_acc"]
        if self.model.binary:
            path = self.out / "model.bonn"
            digest = export_bonn(model, path, self.cfg["arch"], provenance=prov)
            info = {"exported": str(path), "sha256": digest, "bytes": path.stat().st_size}
            print(json.dumps(info), flush=True)
        else:
            path = self.out / "model.onnx"
            export_onnx(model, path, arch=self.cfg["arch"])
            print(json.dumps({"exported": str(path), "bytes": path.stat().st_size}), flush=True)
        return path


@contextlib.contextmanager
def _full_fp32():
    """TF32 off inside (CUDA on Ampere and later uses it for float convs and matmuls by default, a 10-bit
    mantissa): a GPU's logged test accuracy is then the float32 one. Training itself may keep TF32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def read_checkpoint(path: str | Path, label: str) -> dict[str, Any]:
    """A training checkpoint written by this trainer, on the CPU; anything else is a ValueError naming `label`."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    # unreadable, truncated, or refused by weights_only: one message for all
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{label}: cannot read it ({(str(e).splitlines() or [type(e).__name__])[0]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != "bonn-serve-train/1":
        raise ValueError(f"{label}: not a bonn-serve training checkpoint")
    return ckpt


def _write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so that a reader (or a crash) sees the old file or the new one, never half."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _comparable(value: Any) -> Any:
    """A config value as checkpoints and YAML both give it (milestones: tuple in DEFAULTS, list once saved)."""
    return [float(v) for v in value] if isinstance(value, (list, tuple)) else value


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj
