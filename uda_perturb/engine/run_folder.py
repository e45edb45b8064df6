"""The run folder: what a run writes there, how ``--overwrite`` replaces it (and nothing else), and how a
resume cuts the metrics log back to the checkpoint."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

CHECKPOINT = "checkpoint.pt"
# Everything a run writes into its folder (fingerprint*.json: a benchmark's record of the settings of the run it
# started and finished there); ``--overwrite`` removes these and refuses a folder holding more.
RUN_FILES = ("config.yaml", "metrics.jsonl", CHECKPOINT, "results.json", "segmentor.pt", "class_weights.json",
             "fingerprint.json", "fingerprint.started.json")
RUN_DIRS = ("tb",)


def is_run_entry(path: Path) -> bool:
    """Whether ``path`` (an entry of a run folder) is something a run writes, stale save temporaries included."""
    name = path.name
    if path.is_dir():
        return name in RUN_DIRS
    return name in RUN_FILES or name.startswith(f".{CHECKPOINT}.")


def holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` already holds a run (a checkpoint or a metrics log)."""
    return (run_dir / CHECKPOINT).exists() or (run_dir / "metrics.jsonl").exists()


def clear_run(run_dir: Path) -> None:
    """Remove a previous run's files from ``run_dir``; refuse (naming them) when it holds anything else."""
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise FileExistsError(f"--run-dir {run_dir} is a file, not a folder")
    foreign = sorted(p.name + ("/" if p.is_dir() else "") for p in run_dir.iterdir() if not is_run_entry(p))
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise FileExistsError(f"--overwrite refuses to clear {run_dir}: it holds files no run writes ({shown}); "
                              "choose another --run-dir or move them")
    for p in run_dir.iterdir():
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def truncate_metrics(path: Path, iteration: int) -> int:
    """Keep the records of ``path`` up to ``iteration`` (those a resumed run will not write again); returns
    how many records were dropped."""
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            it = json.loads(line).get("iteration", 0)
        except json.JSONDecodeError:  # a line cut by a kill mid-write
            dropped += 1
            continue
        if it <= iteration:
            kept.append(line)
        else:
            dropped += 1
    path.write_text("".join(k + "\n" for k in kept))
    return dropped
