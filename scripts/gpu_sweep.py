#!/usr/bin/env python3
"""Train several configs side by side on one borrowed GPU host, inside a fixed time budget.

Two steps, because such a host is bare (no data, nothing to download) and takes a small upload:

    # here: CIFAR-10 as JPEG bytes (q75, 4:2:0 like the source files; ~300 B/image after xz; the decoded
    # pixels differ from the npz by 0.25 grey levels on average), 18 MB instead of 141 MB
    python scripts/gpu_sweep.py pack --data-dir ../shared/data/cifar10 --out .devdata/cifar10_q75.npz

    # there: decode once, start one `bonn-serve train` process per run, time two epochs of each, resume all
    # with the one epoch count the slowest fits in the time left, bundle each run dir as OUT/<name>.tar.gz
    python3 scripts/gpu_sweep.py run --packed .devdata/cifar10_q75.npz --out $OUT --budget-s 500 \
        --run bonn=training/configs/bonn_wrn22_16_adam.yaml --run b1=training/configs/binary_wrn22_16_adam.yaml:seed=1

A run that dies before its first checkpoint (say torch.compile fails on that host's torch) is restarted
once with `compile: false`. Each new checkpoint is bundled into OUT as it lands, so a call killed at its limit
still returns every run at its last epoch (--light bundles once, at the end). Back here, `unbundle` turns the
bundles into run dirs that continue with `bonn-serve train --resume`; `bundle` packs run dirs started here for a
loan to continue (`run --resume-from`).
The accuracy it logs there is on the re-encoded test images; measure the model here on the real ones
(`bonn-serve eval`).
"""

from __future__ import annotations

import argparse
import io
import json
import lzma
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bonn_serve.datasets import load_cifar10  # numpy only
from training.plots import read_metrics  # matplotlib only when plotting


# ----------------------------------------------------------------------------------------------- pack
def pack(data_dir: Path, out: Path, quality: int = 75) -> None:
    from PIL import Image

    arrays = {}
    for split in ("train", "test"):
        x, y = load_cifar10(str(data_dir), split)
        blobs = []
        for img in x:
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, "JPEG", quality=quality, subsampling=2)
            blobs.append(buf.getvalue())
        sizes = np.array([len(b) for b in blobs], dtype=np.int64)
        # xz over the concatenation removes the ~600-byte JFIF header every file repeats
        arrays[f"{split}_jpeg"] = np.frombuffer(lzma.compress(b"".join(blobs)), dtype=np.uint8)
        arrays[f"{split}_sizes"] = sizes
        arrays[f"{split}_y"] = y.astype(np.uint8)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)
    print(f"{out}: {out.stat().st_size / 1e6:.1f} MB")


def unpack(packed: Path, data_dir: Path) -> None:
    """Decode to the npz layout the trainer reads (uncompressed, so loading is instant)."""
    from PIL import Image

    z = np.load(packed)
    data_dir.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        raw = lzma.decompress(z[f"{split}_jpeg"].tobytes())
        ends = np.cumsum(z[f"{split}_sizes"])
        starts = ends - z[f"{split}_sizes"]
        x = np.stack([np.asarray(Image.open(io.BytesIO(raw[s:e])).convert("RGB")) for s, e in zip(starts, ends)])
        np.savez(data_dir / f"cifar10_{split}.npz", x=x, y=z[f"{split}_y"])
        print(f"{split}: {x.shape}", flush=True)


# ------------------------------------------------------------------------------------------------ run
def parse_run(spec: str) -> tuple[str, Path, dict[str, str]]:
    """NAME=CONFIG.yaml[:key=value[,key=value...]]"""
    name, rest = spec.split("=", 1)
    cfg, _, extra = rest.partition(":")
    overrides = dict(kv.split("=", 1) for kv in extra.split(",") if kv)
    return name, Path(cfg), overrides


def write_config(src: Path, dst: Path, name: str, overrides: dict[str, str]) -> None:
    import yaml

    cfg = yaml.safe_load(src.read_text()) or {}
    cfg.update({k: yaml.safe_load(v) for k, v in overrides.items()})
    cfg["name"] = name
    dst.write_text(yaml.safe_dump(cfg, sort_keys=False))


def start_mps() -> bool:
    """CUDA MPS lets the runs' small kernels share the GPU at once instead of time-slicing. Optional: if it
    does not start or a CUDA context cannot open through it, it is shut down and the runs go on without."""
    env = {**os.environ, "CUDA_MPS_PIPE_DIRECTORY": "/tmp/mps", "CUDA_MPS_LOG_DIRECTORY": "/tmp/mps-log"}
    for d in ("/tmp/mps", "/tmp/mps-log"):
        os.makedirs(d, exist_ok=True)
    try:
        subprocess.run(["nvidia-cuda-mps-control", "-d"], env=env, check=True, timeout=20)
        probe = subprocess.run([sys.executable, "-c", "import torch; print(float(torch.ones(4, device='cuda').sum()))"],
                               env=env, timeout=90, capture_output=True, text=True, check=False)
        if probe.returncode == 0 and probe.stdout.strip() == "4.0":
            os.environ.update(env)
            return True
        subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", text=True, env=env, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        pass
    return False


def epoch_records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [r for r in read_metrics(path) if r.get("kind") == "epoch"] if path.exists() else []


class Sweep:
    """The runs' processes: launch, restart once without torch.compile if a run dies before any checkpoint."""

    def __init__(self, work: Path, data_dir: Path, specs: list[str], device: str, snapshot_to: Path | None = None):
        self.work, self.data_dir, self.device = work, data_dir, device
        self.runs = {name: (cfg, ov) for name, cfg, ov in map(parse_run, specs)}
        self.procs: dict[str, subprocess.Popen] = {}
        self.extra: dict[str, list[str]] = {}  # each run's last launch arguments (a retry repeats them)
        self.retried: set[str] = set()
        self.snapshot_to = snapshot_to  # where each new checkpoint is bundled at once (None: only at the end)
        self.snapshotted: dict[str, int] = {}  # run -> mtime_ns of the checkpoint last bundled

    def run_dir(self, name: str) -> Path:
        return self.work / "runs" / name

    def launch(self, name: str, extra: list[str]) -> None:
        cfg_src, overrides = self.runs[name]
        run_dir = self.run_dir(name)
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg = self.work / f"{name}.yaml"
        write_config(cfg_src, cfg, name, overrides)
        self.extra[name] = extra
        cmd = [sys.executable, "-m", "training.cli_train", "--config", str(cfg), "--data-dir", str(self.data_dir),
               "--out", str(run_dir), "--device", self.device, "--no-export", "--no-progress", "--no-plots", *extra]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TORCHINDUCTOR_COMPILE_THREADS": "4"}
        with open(run_dir / "train.log", "a") as log:  # the child keeps its own copy of the descriptor
            log.write(f"$ {' '.join(cmd)}\n")
            log.flush()
            self.procs[name] = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)

    def wait(self, until: float, t0: float) -> None:
        """Until every run has exited or `until` passes; print progress every 30 s."""
        last_report = 0.0
        while self.procs and time.time() < until:
            time.sleep(2)
            for name, p in list(self.procs.items()):
                rc = p.poll()
                if rc is None:
                    continue
                del self.procs[name]
                print(f"[{name}] exited {rc} at t={time.time() - t0:.0f}s", flush=True)
                if rc and not (self.run_dir(name) / "checkpoint.pt").exists() and name not in self.retried:
                    self.retried.add(name)
                    print(f"[{name}] retrying with compile: false", flush=True)
                    self.runs[name][1]["compile"] = "false"
                    self.launch(name, self.extra[name])
            self.snapshot()
            if time.time() - last_report > 30:
                last_report = time.time()
                print(f"t={time.time() - t0:.0f}s " + " ".join(f"{n}:{progress(self.run_dir(n))}" for n in self.runs),
                      flush=True)

    def snapshot(self) -> None:
        """Bundle every run whose checkpoint is new since the last look into snapshot_to. A loan cut short
        (the call's limit can be below the budget asked for) then still returns each run's last epoch. The
        trainer replaces checkpoint.pt atomically and resume trims the log to it, so any moment is consistent."""
        if self.snapshot_to is None:
            return
        for name in self.runs:
            ckpt = self.run_dir(name) / "checkpoint.pt"
            mtime = ckpt.stat().st_mtime_ns if ckpt.exists() else None
            if mtime is None or self.snapshotted.get(name) == mtime:
                continue
            self.snapshotted[name] = mtime
            bundle = self.snapshot_to / f"{name}.tar.gz"
            tmp = bundle.with_name(f".{bundle.name}.tmp")  # a kill mid-write leaves the previous bundle whole
            write_bundle(self.run_dir(name), tmp, [*RESUMABLE, "train.log"])
            os.replace(tmp, bundle)

    def stop(self) -> None:
        for name, p in self.procs.items():  # past the deadline: stop, keep the last checkpoint
            print(f"[{name}] still running at the deadline; stopping it", flush=True)
            p.terminate()
        for p in self.procs.values():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs.clear()


def run(args: argparse.Namespace) -> int:
    """Phase 1 trains every run 2 epochs of a long provisional schedule (the cosine is flat there) and times
    them; phase 2 resumes all with one common epoch count, the most the slowest run fits before the deadline,
    so every run has the same schedule."""
    t0 = time.time()
    deadline = t0 + args.budget_s
    work = Path(args.work)
    data_dir = work / "data"
    unpack(args.packed, data_dir)
    mps = (not args.no_mps) and start_mps()
    print(f"MPS: {'on' if mps else 'off'}; t={time.time() - t0:.0f}s before training", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # --light runs are bundled once, at the end: their checkpoints are too big to come back (export_model)
    sweep = Sweep(work, data_dir, args.run, args.device, snapshot_to=None if args.light else out)
    if args.epochs:
        fixed_schedule(sweep, args, deadline, t0)
    else:
        fitted_schedule(sweep, args, deadline, t0)
    sweep.stop()
    if mps:
        subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", text=True, timeout=20, check=False)
    for name in sweep.runs:
        run_dir = sweep.run_dir(name)
        state = export_model(run_dir) if args.light else ["checkpoint.pt"]
        write_bundle(run_dir, out / f"{name}.tar.gz", [*state, "metrics.jsonl", "config.json", "train.log"])
        print(f"[{name}] {progress(run_dir)} -> {name}.tar.gz", flush=True)
    print(f"total {time.time() - t0:.0f}s", flush=True)
    return 0


RESUMABLE = ("checkpoint.pt", "metrics.jsonl", "config.json")  # what `train --resume` needs of a run dir


def write_bundle(run_dir: Path, bundle: Path, files) -> None:
    """run_dir's files (those present) as <run_dir name>/<file> in a .tar.gz: the unit a loan carries."""
    with tarfile.open(bundle, "w:gz") as tar:
        for f in files:
            if (run_dir / f).exists():
                tar.add(run_dir / f, arcname=f"{run_dir.name}/{f}")


def bundle_runs(run_dirs: list[Path], out: Path) -> None:
    """Local run dirs -> OUT/<name>.tar.gz, so a campaign started here continues on a loan (`run --resume-from
    OUT --epochs N --run <name>=CONFIG`, carrying OUT). Refuses a dir that `train --resume` could not continue."""
    out.mkdir(parents=True, exist_ok=True)
    for run_dir in run_dirs:
        missing = [f for f in RESUMABLE if not (run_dir / f).exists()]
        if missing:
            raise SystemExit(f"{run_dir}: not resumable, missing {', '.join(missing)}")
        write_bundle(run_dir, out / f"{run_dir.name}.tar.gz", RESUMABLE)
        print(f"[{run_dir.name}] {progress(run_dir)} -> {out / run_dir.name}.tar.gz", flush=True)


def unbundle_runs(bundles: list[Path], into: Path) -> None:
    """A loan's bundles -> INTO/<name>/, replacing what is there, to continue here with `train --resume`."""
    into.mkdir(parents=True, exist_ok=True)
    for bundle in bundles:
        with tarfile.open(bundle) as tar:
            safe_extract(tar, into)
        name = bundle.name.removesuffix(".tar.gz")
        print(f"[{name}] {progress(into / name)} in {into / name}", flush=True)


def export_model(run_dir: Path) -> list[str]:
    """The last checkpoint as the served file: model.bonn (binary) or model.onnx (FP). For --light bundles: a
    64-wide checkpoint with its Adam state is ~50 MB, over the 16 MB a loan can send back per file."""
    ckpt = run_dir / "checkpoint.pt"
    if not ckpt.exists():
        return []
    cfg = json.loads((run_dir / "config.json").read_text())
    target = ["--out", str(run_dir / "model.bonn")] if cfg.get("binary", True) else \
        ["--onnx-fp", str(run_dir / "model.onnx")]
    cmd = [sys.executable, "-m", "bonn_serve", "export", "--arch", cfg["arch"], "--checkpoint", str(ckpt), *target]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    print(f"[{run_dir.name}] export rc={done.returncode} {done.stdout.strip()} {done.stderr.strip()[-400:]}",
          flush=True)
    return [Path(target[1]).name] if done.returncode == 0 else []


def fixed_schedule(sweep: Sweep, args: argparse.Namespace, deadline: float, t0: float) -> None:
    """A campaign longer than one loan: every run follows the same `--epochs` cosine, starts from its bundle in
    --resume-from when there is one (a past loan's output), and trains until the deadline; the bundles it
    writes continue on the next loan. A run spec's own `epochs=N` overrides `--epochs`, so one loan can carry
    a long campaign and a shorter sweep side by side."""
    for name, (_, overrides) in sweep.runs.items():
        epochs = str(overrides.get("epochs", args.epochs))
        bundle = Path(args.resume_from) / f"{name}.tar.gz" if args.resume_from else None
        if bundle and bundle.exists():
            with tarfile.open(bundle) as tar:
                safe_extract(tar, sweep.run_dir(name).parent)
            print(f"[{name}] resuming at {progress(sweep.run_dir(name))}", flush=True)
            sweep.launch(name, ["--resume", "--epochs", epochs])
        else:
            sweep.launch(name, ["--epochs", epochs])
    sweep.wait(deadline - args.margin_s, t0)


def safe_extract(tar: tarfile.TarFile, dest: Path) -> None:
    """Regular files and folders only, none outside dest (by hand: tarfile's 'data' filter needs Python ≥ 3.11.4)."""
    members = [m for m in tar.getmembers() if m.isfile() or m.isdir()]
    for m in members:
        if Path(m.name).is_absolute() or ".." in Path(m.name).parts:
            raise ValueError(f"unsafe path in bundle: {m.name}")
    tar.extractall(dest, members=members)


def fitted_schedule(sweep: Sweep, args: argparse.Namespace, deadline: float, t0: float) -> None:
    """One sweep, one schedule: fit the common epoch count to the time this loan has."""
    phase1 = ["--epochs", str(args.provisional_epochs), "--stop-after", "2"]
    for name in sweep.runs:
        sweep.launch(name, phase1)
    sweep.wait(deadline - args.margin_s, t0)
    t_phase1 = time.time() - t0
    per_epoch = max((r[1]["time"] - r[0]["time"] for r in map(epoch_records, map(sweep.run_dir, sweep.runs))
                     if len(r) >= 2), default=None)
    done = [n for n in sweep.runs if len(epoch_records(sweep.run_dir(n))) >= 2]
    if per_epoch is None or not done:
        print("no run finished 2 epochs; nothing to plan", flush=True)
    else:
        left = deadline - args.margin_s - time.time() - args.restart_s
        epochs = 2 + max(int(args.safety * left / per_epoch), 0)
        if args.max_epochs:
            epochs = min(epochs, max(args.max_epochs, 2))
        print(f"phase 1 took {t_phase1:.0f}s; slowest epoch {per_epoch:.1f}s; {left:.0f}s left -> "
              f"every run trains {epochs} epochs", flush=True)
        phase2 = ["--resume", "--epochs", str(epochs)]
        for name in done:
            sweep.launch(name, phase2)
        sweep.wait(deadline - args.margin_s, t0)


def progress(run_dir: Path) -> str:
    """'epoch/schedule test acc [val acc] (epoch seconds)' from the run's metrics log."""
    recs = epoch_records(run_dir)
    if not recs:
        return "starting"
    last = recs[-1]
    total = json.loads((run_dir / "config.json").read_text())["epochs"]
    val = f" val {100 * last['val_acc']:.2f}%" if "val_acc" in last else ""
    return f"{last['epoch']}/{total} {100 * last['test_acc']:.2f}%{val} ({last['epoch_time_s']:.1f}s)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="CIFAR-10 npz directory -> one compact file of JPEG bytes")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("run", help="decode, train the runs side by side, bundle the run dirs")
    r.add_argument("--packed", type=Path, required=True)
    r.add_argument("--out", required=True, help="folder for <name>.tar.gz bundles")
    r.add_argument("--run", action="append", required=True, help="NAME=CONFIG.yaml[:key=value,...]")
    r.add_argument("--budget-s", type=float, required=True, help="wall-clock seconds for everything")
    r.add_argument("--margin-s", type=float, default=20.0, help="kept back for stopping and bundling")
    r.add_argument("--restart-s", type=float, default=30.0, help="estimated cost of the phase-2 restart")
    # 0.85: runs sharing one GPU slow down once all of them train (round 5: planned 7.5 s/epoch, got ~9 s)
    r.add_argument("--safety", type=float, default=0.85, help="fraction of the measured time rate to plan on")
    r.add_argument("--epochs", type=int, help="fixed schedule for a campaign over several loans (no fitting)")
    r.add_argument("--resume-from", help="folder of bundles from an earlier loan to continue (with --epochs)")
    r.add_argument("--max-epochs", type=int, help="never plan more epochs than this (a loan longer than needed)")
    r.add_argument("--provisional-epochs", type=int, default=1000)
    r.add_argument("--work", default="/tmp/gpu_sweep")
    r.add_argument("--no-mps", action="store_true")
    r.add_argument("--device", default="cuda", help="cpu for a dry run of the whole sweep here")
    r.add_argument("--light", action="store_true",
                   help="bundle the exported model instead of checkpoint.pt (not resumable; for big nets)")
    b = sub.add_parser("bundle", help="local run dirs -> OUT/<name>.tar.gz, to continue them on a loan")
    b.add_argument("run_dirs", nargs="+", type=Path)
    b.add_argument("--out", type=Path, required=True)
    u = sub.add_parser("unbundle", help="a loan's bundles -> INTO/<name>/, to continue them here")
    u.add_argument("bundles", nargs="+", type=Path)
    u.add_argument("--into", type=Path, required=True)
    a = ap.parse_args()
    if a.cmd == "pack":
        pack(a.data_dir, a.out)
        return 0
    if a.cmd == "bundle":
        bundle_runs(a.run_dirs, a.out)
        return 0
    if a.cmd == "unbundle":
        unbundle_runs(a.bundles, a.into)
        return 0
    return run(a)


if __name__ == "__main__":
    sys.exit(main())
