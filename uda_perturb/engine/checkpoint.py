"""Atomic, self-describing checkpoints holding everything needed to resume a run exactly."""
from __future__ import annotations

import os
import pickle
import random
import signal
import tempfile
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from ..errors import CheckpointError

FORMAT = "uda_perturb-checkpoint-v1"
# Keys that may differ between the run that wrote a checkpoint and the run that resumes it.
RESUMABLE_DIFFERENCES = ("train.iters", "train.stop_at", "train.eval_every", "train.checkpoint_every",
                         "train.log_every", "data.num_workers", "device", "eval")


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) RNG states, as weights-only-loadable tensors and tuples."""
    kind, keys, pos, has_gauss, cached = cast(Any, np.random.get_state())
    state = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                     cached), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states captured by :func:`rng_state`."""
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


_SAVES = [0]


def _fault_point(fh: Any) -> None:
    """Fault injection for ``benchmarks/fault_injection.py``: with ``UDA_PERTURB_KILL_IN_SAVE=n`` the process
    SIGKILLs itself during its n-th checkpoint save, after the temporary file is half written (never set
    otherwise; a no-op then)."""
    target = os.environ.get("UDA_PERTURB_KILL_IN_SAVE")
    if not target:
        return
    _SAVES[0] += 1
    if _SAVES[0] == int(target):
        fh.truncate(max(fh.tell() // 2, 1))
        fh.flush()
        os.kill(os.getpid(), signal.SIGKILL)


def save_atomic(obj: dict[str, Any], path: str | Path) -> Path:
    """Write to a temporary file in the same folder, fsync, then rename: never a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*"):  # left by a save that was killed (one writer per folder)
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            _fault_point(fh)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: d}


def differing_keys(a: dict, b: dict, allowed: tuple[str, ...] = ()) -> list[str]:
    """The sorted dotted keys in which two nested dicts differ, leaving out each key in ``allowed`` and the keys
    under it (``"eval"`` allows ``eval.scales``)."""
    fa, fb = flatten(a), flatten(b)
    return [k for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)
            and not any(k == r or k.startswith(r + ".") for r in allowed)]


def config_differences(saved: dict, current: dict) -> list[str]:
    """Dotted keys whose values differ, other than those a resume may change."""
    return differing_keys(saved, current, RESUMABLE_DIFFERENCES)


def read_torch_file(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` with errors that name the file: a missing file, a truncated or
    foreign one, and one holding pickled objects (refused for safety: loading them could run code)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with open(path, "rb") as fh:
        head = fh.read(4)
    # torch.save writes a zip archive (PK\x03\x04); files from before torch 1.6 are a pickle (protocol byte 0x80)
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise CheckpointError(f"checkpoint {path} is not a torch file (a run's checkpoint.pt or segmentor.pt)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"checkpoint {path} holds objects other than tensors and plain containers; it was "
                              "refused for safety (unpickling them could run code). Re-save it as a state dict "
                              "of tensors") from exc
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} is truncated or not a torch file ({first})") from exc


def load_checkpoint(path: str | Path, config: dict | None = None) -> dict[str, Any]:
    """A trainer checkpoint, refusing a truncated, unsafe, foreign or other-config file."""
    ckpt = read_torch_file(path)
    if not is_trainer_checkpoint(ckpt):
        raise CheckpointError(f"checkpoint {path} was not written by uda_perturb's trainer (no "
                              f"format {FORMAT!r} record); a segmentor state dict loads with 'eval'/'predict'")
    if config is not None:
        diff = config_differences(ckpt["config"], config)
        if diff:
            a, b = flatten(ckpt["config"]), flatten(config)
            detail = "; ".join(f"{k}: checkpoint {a.get(k)!r} vs config {b.get(k)!r}" for k in diff[:8])
            raise CheckpointError(f"checkpoint {path} comes from another config: {detail}")
    return ckpt


def is_trainer_checkpoint(obj: Any) -> bool:
    """Whether a loaded object is a checkpoint written by the trainer."""
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def segmentor_file(path: str | Path) -> Path:
    """The weights file a ``--checkpoint`` names: the file itself, or in a run folder its ``segmentor.pt`` (the
    final weights, written when the run ends) or else its ``checkpoint.pt`` (the latest save of a run still going
    or cut off)."""
    path = Path(path)
    if not path.is_dir():
        return path
    for name in ("segmentor.pt", "checkpoint.pt"):
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(f"run folder {path} holds neither segmentor.pt (a finished run's weights) nor "
                            "checkpoint.pt (a run's latest save)")


def load_segmentor_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The segmentor weights in ``path``, decided by content: a trainer checkpoint (any name) or a segmentor
    state dict (``segmentor.pt``, renamed or not); a run folder stands for its weights (:func:`segmentor_file`)."""
    path = segmentor_file(path)
    obj = read_torch_file(path)
    if is_trainer_checkpoint(obj):
        method = obj["method"]
        return {k.removeprefix("segmentor."): v for k, v in method.items() if k.startswith("segmentor.")}
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise CheckpointError(f"checkpoint {path} is neither a trainer checkpoint nor a segmentor state dict")
