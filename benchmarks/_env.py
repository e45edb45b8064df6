"""Shared by benchmark scripts: machine/version facts and writing results (markdown + JSON)."""
from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def environment() -> dict[str, Any]:
    """Versions and machine facts recorded next to every result."""
    import torchvision

    return {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_results(name: str, payload: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write ``results/<name>.json`` and ``results/<name>.md`` (markdown gets an environment footer)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    env = payload.setdefault("environment", environment())
    js, md = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    js.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    footer = "\n".join(f"- {k}: `{v}`" for k, v in env.items())
    md.write_text(markdown.rstrip() + "\n\n## Environment\n\n" + footer + "\n")
    return js, md
