"""The training loop: iteration-based, exactly resumable, distributed, mixed precision."""
from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Optional, cast

import numpy as np
import torch
from tqdm.auto import tqdm

from ..class_balance import resolve_class_weights
from ..config import ConfigError, ExperimentConfig, dataset_entries, dump_yaml, to_dict
from ..errors import UserError
from ..methods import UDAMethod, build_method
from ..metrics import EntropyMeter, subset_indices
from ..models.segmentor import Segmentor, build_segmentor
from ..models.weights import load_segmentor_weights
from .checkpoint import FORMAT, load_checkpoint, rng_state, save_atomic, set_rng_state
from .distributed import (
    DistInfo,
    any_rank,
    average_gradients,
    broadcast_parameters,
    cleanup,
    gather_objects,
    init_distributed,
)
from .evaluate import evaluate
from .loaders import build_dataset, eval_loader, stream
from .optim import build_optimizers, set_poly_lr
from .run_folder import CHECKPOINT, clear_run, holds_run, truncate_metrics


class TrainingInterrupted(RuntimeError):
    """Raised after SIGINT/SIGTERM once the checkpoint of the last finished iteration is written;
    ``signum`` is the signal (the CLI exits with ``128 + signum``: 130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, message: str, signum: int = signal.SIGINT) -> None:
        super().__init__(message)
        self.signum = int(signum)


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; ``deterministic`` also asks torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def resolve_device(name: str, info: DistInfo) -> torch.device:
    """``auto`` -> CUDA if available; under torchrun each rank takes its local GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", info.local_rank)
    return torch.device(name)


def build_model(cfg: ExperimentConfig) -> Segmentor:
    """The configured segmentor, with init weights loaded when ``model.weights`` is set."""
    m = cfg.model
    seg = build_segmentor(m.head, backbone=m.backbone, num_classes=m.num_classes, multi_level=m.multi_level,
                          backbone_kwargs=m.backbone_options, head_kwargs=m.head_options)
    if m.weights:
        r = load_segmentor_weights(seg, m.weights)
        head = f"; head skipped ({len(r['skipped_head'])} tensors do not fit)" if r["skipped_head"] else ""
        print(f"weights {m.weights} ({r['format']} format): {r['loaded']} tensors loaded, {len(r['missing'])} "
              f"backbone tensors missing, {len(r['unexpected'])} unexpected{head}", file=sys.stderr)
    check_normalization(cfg, seg)
    return seg


def method_of(cfg: ExperimentConfig, segmentor: Segmentor) -> UDAMethod:
    """``cfg``'s method on ``segmentor``; a value its constructor refuses is a ``ConfigError`` naming the keys."""
    try:
        return build_method(cfg.method.name, segmentor, cfg.method.addons, cfg.method.options)
    except UserError:
        raise
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"method {cfg.method.name!r} refused its settings (method.options, method.addons): "
                          f"{exc}") from None


def check_normalization(cfg: ExperimentConfig, segmentor: Segmentor) -> None:
    """Refuse a recipe whose input normalisation contradicts the one the backbone's weights expect."""
    want = getattr(segmentor.backbone, "input_normalization", None)
    if want is None:
        return
    for key, dcfg in dataset_entries(cfg):
        if dcfg.transforms.normalize != want:
            raise ConfigError(f"config key '{key}.transforms.normalize' is {dcfg.transforms.normalize!r}, but the "
                              f"weights of backbone {cfg.model.backbone!r} expect {want!r}: set it to {want!r}")


def evaluate_splits(segmentor: Segmentor, cfg: ExperimentConfig, info: Optional[DistInfo] = None,
                    device: torch.device | str = "cpu", autocast_dtype: Optional[torch.dtype] = None,
                    title: str = "", progress: bool = False) -> dict[str, dict]:
    """Per-class IoU, mIoU and class-group mIoUs of ``segmentor`` on every split of ``cfg.data.eval``;
    each result also holds its markdown ``table``. ``progress`` prints one line per split as it finishes."""
    info = info or DistInfo()
    results = {}
    for name, dcfg in cfg.data.eval.items():
        start = time.time()
        ds = build_dataset(dcfg, train=False, key=f"data.eval.{name}")
        ds_info = cast(Any, ds).info
        loader = eval_loader(ds, cfg.eval.batch_size, info, cfg.data.num_workers)
        meter = EntropyMeter()
        cm = evaluate(segmentor, loader, ds_info.num_classes, ds_info.classes, cfg.eval.size, cfg.eval.flip,
                      tuple(cfg.eval.scales), device, autocast_dtype, entropy=meter)
        subsets = {g: subset_indices(ds_info.classes, cls) for g, cls in cfg.eval.class_groups.items()}
        results[name] = cm.as_dict(subsets)
        results[name]["mean_entropy"] = round(100.0 * meter.mean(), 2)  # label-free; percent of log K
        results[name]["table"] = cm.to_markdown(f"{name} {title}".strip())
        if progress:
            print(f"eval {name}: {len(cast(Any, ds))} images, mIoU {results[name]['miou']:.1f}, "
                  f"{time.time() - start:.1f} s", flush=True)
    return results


def progress_line(iteration: int, stop: int, logs: dict[str, float], seconds: float, done: int) -> str:
    """``iter 40/600  loss 1.23 (seg 1.1, mix 0.13)  lr 2.5e-04  s/it 0.45  eta 4m12s``: one line of a log."""
    losses = {k.split("/")[-1]: v for k, v in logs.items() if k.startswith("g/")}
    per_it = seconds / max(done, 1)
    eta = int(per_it * (stop - iteration))
    terms = ", ".join(f"{k} {v:.3g}" for k, v in losses.items())
    return (f"iter {iteration}/{stop}  loss {sum(losses.values()):.4g} ({terms})  lr {logs.get('lr', 0.0):.2e}  "
            f"s/it {per_it:.2f}  eta {eta // 60}m{eta % 60:02d}s{attack_rises(logs)}")


def attack_rises(logs: dict[str, float]) -> str:
    """``  attack rise source/classifier +0.12 source/discriminator +3.4``: how much the attack raised each
    objective's loss at f* over clean (0: that objective did nothing); empty without a gradient attack."""
    parts = [f"{k[len('perturb/'):-len('_rise')].replace('_', '/', 1)} {v:+.3g}" for k, v in logs.items()
             if k.startswith("perturb/") and k.endswith("_rise")]
    return f"  attack rise {' '.join(parts)}" if parts else ""


class Trainer:
    """Train ``cfg.method`` into ``run_dir``. A run folder holding a run is never overwritten silently:
    pass ``resume=True`` to continue it (an error when it has no checkpoint, unless ``allow_fresh``) or
    ``overwrite=True`` to replace it (only the files a run writes; a folder holding anything else is refused)."""

    def __init__(self, cfg: ExperimentConfig, run_dir: str | Path, resume: bool = False, overwrite: bool = False,
                 progress: bool = True, allow_fresh: bool = False) -> None:
        self.cfg, self.run_dir, self.progress = cfg, Path(run_dir), progress
        self.info = init_distributed("cuda" if cfg.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
        self.device = resolve_device(cfg.device, self.info)
        seed_everything(cfg.seed, cfg.deterministic)
        seg = build_model(cfg)
        self.method: UDAMethod = method_of(cfg, seg)
        self._prepare_run_dir(resume, overwrite, allow_fresh)  # after the method: a refused option leaves no folder
        if cfg.train.sync_bn and self.info.enabled:
            self.method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.method)
        self.method.to(self.device).train()
        if cfg.train.channels_last:
            self.method.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        broadcast_parameters([self.method], self.info)
        self.optimizers = build_optimizers(self.method, cfg.train)
        self.autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.train.precision]
        use_scaler = cfg.train.precision == "fp16" and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.method.backward = self._backward
        self.method.input_normalization = cfg.data.source.transforms.normalize
        self.source = build_dataset(cfg.data.source, train=True, key="data.source")
        self.target = build_dataset(cfg.data.target, train=True, key="data.target")
        self._set_class_weights()
        self.iteration = 0
        self.train_seconds = 0.0  # cumulative over resumed segments
        # this process's CPU time over the same segments: unlike wall time, hardly changed by other jobs sharing
        # the machine (what a benchmark's cost column needs); None once resumed from a checkpoint without it
        self.train_cpu_seconds: Optional[float] = 0.0
        self._stop_signal: Optional[int] = None
        self._segment_start: Optional[float] = None
        self._segment_cpu_start: Optional[float] = None
        if resume and (self.run_dir / CHECKPOINT).is_file():
            ckpt = load_checkpoint(self.run_dir / CHECKPOINT, to_dict(cfg))
            self._restore(ckpt)
            saved_iters = int(ckpt["config"]["train"]["iters"])
            if self.info.is_main and saved_iters != cfg.train.iters:
                print(f"train.iters changed from {saved_iters} to {cfg.train.iters}: the run continues to "
                      f"{cfg.train.iters} and its poly lr schedule is recomputed for that length from iteration "
                      f"{self.iteration} on", file=sys.stderr)
            if self.info.is_main:
                truncate_metrics(self.run_dir / "metrics.jsonl", self.iteration)
                print(f"resuming from iteration {self.iteration} of {self.stop_iteration} "
                      f"(checkpoint {self.run_dir / CHECKPOINT})", file=sys.stderr)
        if self.info.is_main:
            (self.run_dir / "config.yaml").write_text(dump_yaml(cfg))

    def _set_class_weights(self) -> None:
        weights = resolve_class_weights(self.cfg.train.class_weights, self.source, self.method.num_classes)
        self.method.set_class_weights(weights)
        if weights is not None and self.info.is_main:
            names = getattr(getattr(self.source, "info", None), "classes", None) or range(len(weights))
            (self.run_dir / "class_weights.json").write_text(
                json.dumps({str(n): round(float(w), 4) for n, w in zip(names, weights)}, indent=1))

    # ------------------------------------------------------------------ run folder and checkpoints
    @property
    def stop_iteration(self) -> int:
        """Where this run stops: ``train.stop_at`` when set, else ``train.iters``."""
        return min(self.cfg.train.stop_at or self.cfg.train.iters, self.cfg.train.iters)

    def _prepare_run_dir(self, resume: bool, overwrite: bool, allow_fresh: bool) -> None:
        has_run = holds_run(self.run_dir)
        if has_run and not resume and not overwrite:
            raise FileExistsError(f"run folder {self.run_dir} already holds a run; pass --resume to continue it "
                                  "or --overwrite to replace it")
        if resume and not (self.run_dir / CHECKPOINT).is_file() and not allow_fresh:
            raise FileNotFoundError(f"--resume: no checkpoint in {self.run_dir} to resume from; add --allow-fresh "
                                    "to start from iteration 0 when there is none")
        if self.info.is_main:
            if overwrite and not resume:
                clear_run(self.run_dir)
            self.run_dir.mkdir(parents=True, exist_ok=True)

    def state_dict(self, rng_per_rank: Optional[list] = None) -> dict[str, Any]:
        """Everything a resume needs: weights, optimisers, scaler, RNG states (every rank's under torchrun: each
        rank draws its own augmentations and masks), iteration, config."""
        return {"format": FORMAT, "config": to_dict(self.cfg), "iteration": self.iteration,
                "train_seconds": self.train_seconds + self._segment_seconds(),
                "train_cpu_seconds": self._cpu_seconds(),
                "method": self.method.state_dict(),
                "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
                "scaler": self.scaler.state_dict(), "rng": rng_state(),
                "rng_per_rank": rng_per_rank or [rng_state()]}

    def save_checkpoint(self) -> Optional[Path]:
        """Write ``checkpoint.pt`` atomically (rank 0 writes; every rank must call it, as it gathers the ranks'
        RNG states) and return its path."""
        states = gather_objects(rng_state(), self.info)
        if not self.info.is_main:
            return None
        return save_atomic(self.state_dict(states), self.run_dir / CHECKPOINT)

    def _restore(self, ckpt: dict[str, Any]) -> None:
        self.method.load_state_dict(ckpt["method"])
        for k, o in self.optimizers.items():
            o.load_state_dict(ckpt["optimizers"][k])
        self.scaler.load_state_dict(ckpt["scaler"])
        per_rank = ckpt.get("rng_per_rank") or [ckpt["rng"]]
        if len(per_rank) == self.info.world_size:
            set_rng_state(per_rank[self.info.rank])
        else:  # another number of processes: the run goes on, but cannot replay the same draws
            set_rng_state(ckpt["rng"])
            if self.info.is_main:
                print(f"checkpoint holds RNG states of {len(per_rank)} processes, this job has "
                      f"{self.info.world_size}: training continues, but not bit-identically", file=sys.stderr)
        self.iteration = int(ckpt["iteration"])
        self.train_seconds = float(ckpt.get("train_seconds", 0.0))
        cpu = ckpt.get("train_cpu_seconds")
        self.train_cpu_seconds = float(cpu) if cpu is not None else None

    def _segment_seconds(self) -> float:
        return time.time() - self._segment_start if self._segment_start is not None else 0.0

    def _cpu_seconds(self) -> Optional[float]:
        """CPU time of this process's training so far (all its threads; data-loader workers not included)."""
        if self.train_cpu_seconds is None:
            return None
        running = time.process_time() - self._segment_cpu_start if self._segment_cpu_start is not None else 0.0
        return self.train_cpu_seconds + running

    # ------------------------------------------------------------------ one step
    def _backward(self, loss: torch.Tensor) -> None:
        self.scaler.scale(loss / self.cfg.train.accumulate).backward()

    def _to_device(self, batch: dict) -> dict:
        out = {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        if self.cfg.train.channels_last:
            for key in ("image", "image_unjittered"):
                if key in out:
                    out[key] = out[key].contiguous(memory_format=torch.channels_last)
        return out

    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def train_step(self, source_iter, target_iter) -> dict[str, float]:
        """One optimisation step (``accumulate`` micro-batches, gradient averaging across ranks)."""
        lr = set_poly_lr(self.optimizers, self.iteration, self.cfg.train)
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        logs: dict[str, float] = {}
        for _ in range(self.cfg.train.accumulate):
            s = self._to_device(next(source_iter))
            t = self._to_device(next(target_iter)) if self.method.wants_target_batches else None
            with self._autocast():
                result = self.method.training_step(s, t)
            for k, v in result.flat().items():
                logs[k] = logs.get(k, 0.0) + v / self.cfg.train.accumulate
        average_gradients([self.method], self.info)
        for opt in self.optimizers.values():
            self.scaler.step(opt)
        self.scaler.update()
        broadcast_parameters([self.method], self.info, buffers_only=True)
        self.method.after_optimizer_step(self.iteration + 1)
        logs["lr"] = lr
        return logs

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, dict]:
        """Evaluate the segmentor on every configured split; returns ``{split: metrics dict}``."""
        return evaluate_splits(self.method.segmentor, self.cfg, self.info, self.device, self.autocast_dtype,
                               f"@ iteration {self.iteration}", progress=self.progress and self.info.is_main)

    def _log(self, record: dict[str, Any], writer: Any = None) -> None:
        if not self.info.is_main:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if writer is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "iteration" and math.isfinite(v):
                    writer.add_scalar(k, v, record["iteration"])

    # ------------------------------------------------------------------ the loop
    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stop_signal = signum

    def fit(self) -> dict[str, dict]:
        """Train to ``train.stop_at`` (default ``train.iters``), evaluate, save; returns final metrics.
        A resumed run that had already finished says so and returns its recorded results."""
        cfg = self.cfg
        stop = self.stop_iteration
        done = self.run_dir / "results.json"
        if self.iteration >= stop and done.is_file():
            recorded = json.loads(done.read_text())
            if recorded.get("iteration") == self.iteration:
                if self.info.is_main:
                    print(f"run in {self.run_dir} already finished at iteration {self.iteration}; nothing to do",
                          file=sys.stderr)
                return recorded.get("results", {})
        acc = cfg.train.accumulate
        src = stream(self.source, cfg.data.batch_size, cfg.seed, self.iteration * acc, self.info, cfg.data.num_workers,
                     cfg.data.rare_class_sampling, self.method.num_classes, cfg.data.source.transforms)
        tgt = stream(self.target, cfg.data.batch_size, cfg.seed + 1, self.iteration * acc, self.info,
                     cfg.data.num_workers)
        writer = _tensorboard(self.run_dir) if self.info.is_main else None
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        show = self.progress and self.info.is_main
        plain = show and not sys.stdout.isatty()  # a log file gets plain lines, not tqdm's carriage returns
        bar = tqdm(total=stop, initial=self.iteration, disable=not show or plain, desc=f"{cfg.method.name}",
                   dynamic_ncols=True)
        self._segment_start = time.time()
        self._segment_cpu_start = time.process_time()
        first = self.iteration
        try:
            while self.iteration < stop:
                # statistics only for the steps that are logged (results are the same either way)
                self.method.record_stats = ((self.iteration + 1) % max(cfg.train.log_every, 1) == 0
                                            or self.iteration + 1 == stop)
                logs = self.train_step(src, tgt)
                self.iteration += 1
                bar.update(1)
                if self.iteration % max(cfg.train.log_every, 1) == 0 or self.iteration == stop:
                    bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in logs.items()
                                     if k.startswith("g/") or k == "lr" or k.endswith("_rise")}, refresh=False)
                    self._log({"iteration": self.iteration, "time": self.train_seconds + self._segment_seconds(),
                               **logs}, writer)
                    if plain:
                        print(progress_line(self.iteration, stop, logs, self._segment_seconds(),
                                            self.iteration - first), flush=True)
                if any_rank(self._stop_signal is not None, self.info, self.device):  # all ranks stop together
                    self._stop_signal = self._stop_signal or signal.SIGTERM
                    self.save_checkpoint()
                    raise TrainingInterrupted(f"stopped by signal {self._stop_signal} after iteration "
                                              f"{self.iteration}; checkpoint saved in {self.run_dir}",
                                              self._stop_signal)
                if cfg.train.checkpoint_every and self.iteration % cfg.train.checkpoint_every == 0:
                    self.save_checkpoint()
                if cfg.train.eval_every and self.iteration % cfg.train.eval_every == 0 and self.iteration < stop:
                    self._log({"iteration": self.iteration, "eval": _strip(self.evaluate())}, writer)
        finally:
            bar.close()
            for s, h in old.items():
                signal.signal(s, h)
            if writer is not None:
                writer.close()
        self.save_checkpoint()
        self.train_seconds += self._segment_seconds()
        self.train_cpu_seconds = self._cpu_seconds()
        self._segment_start = self._segment_cpu_start = None
        results = self.evaluate() if cfg.data.eval else {}
        if self.info.is_main:
            if results:
                self._log({"iteration": self.iteration, "eval": _strip(results)})
            (self.run_dir / "results.json").write_text(json.dumps(
                {"iteration": self.iteration, "final_checkpoint": True, "results": _strip(results),
                 "train_seconds": self.train_seconds, "train_cpu_seconds": self.train_cpu_seconds}, indent=2))
            torch.save(self.method.segmentor.state_dict(), self.run_dir / "segmentor.pt")
        return results

    def close(self) -> None:
        """Release the process group (distributed runs)."""
        cleanup(self.info)


def _strip(results: dict[str, dict]) -> dict[str, dict]:
    return {k: {kk: vv for kk, vv in v.items() if kk != "table"} for k, v in results.items()}


def _tensorboard(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed: JSON lines only
        return None
    return SummaryWriter(str(run_dir / "tb"))
