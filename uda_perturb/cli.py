"""``uda-perturb`` command line: train, eval, predict, list, demo, study."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML recipe: a path or a packaged name (see `uda-perturb list recipes`)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, e.g. --set train.iters=2000 (repeatable)")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import a module first: one that registers your own methods, add-ons, backbones or "
                        "datasets (repeatable)")


def _import_modules(modules: Sequence[str]) -> None:
    """``--import``: the user's modules, imported before the recipe is read so their registrations count."""
    import importlib

    from .errors import ConfigError

    for m in modules:
        try:
            importlib.import_module(m)
        except ImportError as exc:
            raise ConfigError(f"--import {m}: {exc}") from None


def cmd_train(args: argparse.Namespace) -> int:
    """``uda-perturb train``: after an interrupt (checkpoint written) exit 128 + signal (130 SIGINT, 143 SIGTERM)."""
    from .config import load_config
    from .engine import Trainer, TrainingInterrupted

    _import_modules(args.imports)
    cfg = load_config(args.config, args.overrides)
    run_dir = Path(args.run_dir or Path("runs") / cfg.name)
    trainer = Trainer(cfg, run_dir, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress,
                      allow_fresh=args.allow_fresh)
    try:
        results = trainer.fit()
    except TrainingInterrupted as exc:
        print(exc, file=sys.stderr)
        return 128 + exc.signum
    finally:
        trainer.close()
    if trainer.info.is_main:
        for res in results.values():
            if "table" in res:
                print(res["table"], "\n")
        print(f"run folder: {run_dir}")
    return 0


def _load_segmentor(cfg, checkpoint: str):
    from .engine import build_model
    from .engine.checkpoint import load_segmentor_state, segmentor_file
    from .errors import CheckpointError
    from .models.weights import checkpoint_format

    if Path(checkpoint).is_dir():
        chosen = segmentor_file(checkpoint)
        what = ("the finished run's weights" if chosen.name == "segmentor.pt" else
                "the run's latest save: segmentor.pt is written when the run ends")
        print(f"using {chosen} ({what})", file=sys.stderr)
        checkpoint = str(chosen)
    seg = build_model(cfg)
    try:
        state = load_segmentor_state(checkpoint)
    except CheckpointError:  # an mmseg checkpoint (DAFormer, MIC) keeps its tensors under state_dict
        from .engine.checkpoint import read_torch_file

        obj = read_torch_file(checkpoint)  # a file that is no torch file, or holds objects, is refused here
        if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
            raise
        state = obj["state_dict"]
    if checkpoint_format(state) in ("deeplabv2", "deeplabv2_vgg", "mmseg_uda"):  # AdaptSegNet's, ADVENT's, DAFormer's
        return _load_reference_model(seg, cfg, checkpoint)
    mismatch = state_mismatch(seg.state_dict(), state)
    if mismatch:
        config = Path(checkpoint).resolve().parent / "config.yaml"
        fix = (f"evaluate it with its run's own recipe: {config}" if config.is_file() else
               "use the recipe it was trained with (its run folder's config.yaml)")
        raise CheckpointError(f"checkpoint {checkpoint} does not fit the recipe's model ({cfg.model.backbone}/"
                              f"{cfg.model.head}, {cfg.model.num_classes} classes): {mismatch}; {fix}")
    seg.load_state_dict(state)
    return seg.eval()


def _load_reference_model(seg, cfg, checkpoint: str):
    """A model saved by AdaptSegNet's, ADVENT's, DAFormer's or MIC's trainer, mapped onto the recipe's network;
    refused unless every backbone tensor and every head loads, and the recipe normalises as those models expect
    (caffe; imagenet for DAFormer / MIC)."""
    from .errors import CheckpointError
    from .models.weights import load_segmentor_weights

    report = load_segmentor_weights(seg, checkpoint)
    if report["missing"] or not report["heads_loaded"]:
        raise CheckpointError(f"checkpoint {checkpoint} ({report['format']} format) does not fill the recipe's "
                              f"model: {len(report['missing'])} backbone tensors missing, heads "
                              f"{'loaded' if report['heads_loaded'] else 'not all loaded'} (skipped: "
                              f"{report['skipped_head'][:2]}); check model.multi_level, model.num_classes and "
                              "model.backbone")
    from .engine.trainer import check_normalization

    check_normalization(cfg, seg)
    extra = f"; not used: {', '.join(report['unexpected'][:4])}" if report["unexpected"] else ""
    print(f"{checkpoint}: {report['format']} model, {report['loaded']} tensors loaded, "
          f"{seg.backbone.input_normalization} normalisation{extra}", file=sys.stderr)
    return seg.eval()


def state_mismatch(model: dict, state: dict) -> str:
    """What keeps ``state`` from loading into a model whose state dict is ``model`` ("" when it fits): the
    number of classes, the first tensors whose shapes differ, missing and unexpected counts."""
    parts = []
    shapes = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in model.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    heads = [(a, b) for k, a, b in shapes if k.startswith("head.") and k.endswith(".weight") and len(a) >= 1]
    if heads and heads[-1][0][0] != heads[-1][1][0]:
        parts.append(f"it predicts {heads[-1][0][0]} classes, the recipe {heads[-1][1][0]}")
    if shapes:
        shown = "; ".join(f"{k} {a} vs {b}" for k, a, b in shapes[:3])
        parts.append(f"{len(shapes)} tensors differ in shape (checkpoint vs recipe: {shown}"
                     + (", ..." if len(shapes) > 3 else "") + ")")
    missing, unexpected = set(model) - set(state), set(state) - set(model)
    if missing:
        parts.append(f"{len(missing)} tensors missing (first: {sorted(missing)[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first: {sorted(unexpected)[0]})")
    return ", ".join(parts)


def cmd_eval(args: argparse.Namespace) -> int:
    """``uda-perturb eval``: per-class IoU tables of a checkpoint on the recipe's eval splits."""
    from .config import load_config
    from .engine.trainer import evaluate_splits

    _import_modules(args.imports)
    cfg = load_config(args.config, args.overrides)
    for res in evaluate_splits(_load_segmentor(cfg, args.checkpoint), cfg, progress=True).values():
        print(res["table"], "\n")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """``uda-perturb predict``: colour-coded predictions and overlays as PNGs."""
    from PIL import Image

    from .config import load_config
    from .data.io import read_rgb
    from .data.transforms import Normalize
    from .engine.evaluate import predict_logits
    from .visualize import colorize, overlay

    _import_modules(args.imports)
    cfg = load_config(args.config, args.overrides)
    seg = _load_segmentor(cfg, args.checkpoint)
    palette = _palette_for(cfg)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    norm = Normalize(cfg.data.source.transforms.normalize)
    for path in image_paths(args.images):
        image = read_rgb(path)
        x, _ = norm(image, None)
        pred = predict_logits(seg, x[None], image.shape[-2:], cfg.eval.size).argmax(1)[0]
        colour = colorize(pred, palette)
        stem = Path(path).stem
        Image.fromarray(colour).save(out / f"{stem}_pred.png")
        rgb = (image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        Image.fromarray(overlay(rgb, colour)).save(out / f"{stem}_overlay.png")
        print(f"{path} -> {out / (stem + '_pred.png')}")
    return 0


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def image_paths(items: Sequence[str]) -> list[Path]:
    """Images named on the command line; a folder stands for its images (sorted, not recursive). Anything
    that is not an image file is refused, naming it."""
    from .errors import DataError

    out: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"folder {item} holds no image ({', '.join(IMAGE_SUFFIXES)})")
            out += found
        elif not item.is_file():
            raise FileNotFoundError(f"image not found: {item}")
        elif item.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(f"{item} is not an image file ({', '.join(IMAGE_SUFFIXES)})")
        else:
            out.append(item)
    return out


def _palette_for(cfg):
    """The palette of the first configured dataset that can be opened (random colours otherwise)."""
    from .engine.loaders import build_dataset

    for dcfg in list(cfg.data.eval.values()) + [cfg.data.source]:
        try:
            return build_dataset(dcfg, train=False).info.palette
        except (FileNotFoundError, KeyError):
            continue
    rng = np.random.default_rng(0)
    return [tuple(int(v) for v in rng.integers(0, 255, 3)) for _ in range(cfg.model.num_classes)]


DEMO_SEEDS, DEMO_THREADS = (0, 1, 2), 2  # as uda_perturb.demo (not imported here: it loads torch)
CHECKPOINT_HELP = ("a run folder (its segmentor.pt, the final weights, or while it runs its checkpoint.pt, the "
                   "latest save), or either file")


def cmd_list(args: argparse.Namespace) -> int:
    """``uda-perturb list``: registry contents, packaged recipes and studies."""
    import uda_perturb as up

    from .config import list_recipes

    regs = up.registries()
    kinds = [args.kind] if args.kind else [*regs, "recipes", "studies"]
    for kind in kinds:
        if kind == "recipes":
            names = list_recipes()
        elif kind == "studies":
            from .study.spec import packaged_studies

            names = packaged_studies()
        elif kind in regs:
            names = regs[kind].list(args.include)
        else:
            import difflib

            from .errors import UnknownNameError

            close = difflib.get_close_matches(kind, [*regs, "recipes", "studies"], n=1)
            raise UnknownNameError(f"unknown kind {kind!r}" + (f"; did you mean {close[0]!r}?" if close else "")
                                   + f" (kinds: {', '.join([*regs, 'recipes', 'studies'])})")
        print(f"{kind}: {', '.join(names)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``uda-perturb demo``: the README's main job."""
    from .demo import run_demo

    run_demo(args.out, iters=args.iters if not args.quick else 20, seeds=args.seeds if not args.quick else [0],
             progress=not args.no_progress, adapt_iters=args.adapt_iters if not args.quick else 6,
             threads=args.demo_threads)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``uda-perturb`` argument parser."""
    ap = argparse.ArgumentParser(prog="uda-perturb", description="UDA for semantic segmentation by pointwise "
                                 "adversarial feature perturbation (APODA) and its baselines.")
    ap.add_argument("--debug", action="store_true", help="show the traceback of user errors too")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice, all cores). On 2 busy cores "
                    "1 thread can be several times faster; results differ in the last bits with the thread count")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a method from a YAML recipe")
    _add_config_args(p)
    p.add_argument("--run-dir", help="run folder (default runs/<name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir from its checkpoint "
                   "(an error when there is none, unless --allow-fresh)")
    p.add_argument("--allow-fresh", action="store_true", help="with --resume: start from iteration 0 when the run "
                   "folder has no checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --run-dir (only the files a run "
                   "writes; a folder holding anything else is refused)")
    p.add_argument("--no-progress", action="store_true", help="no progress output at all (by default a terminal "
                   "gets a progress bar, a log file a plain line every train.log_every iterations)")
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("eval", help="evaluate a checkpoint on the recipe's eval splits (per-class IoU)")
    _add_config_args(p)
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("predict", help="colour-coded predictions and overlays for images")
    _add_config_args(p)
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--out", default="predictions", help="folder for <image>_pred.png and <image>_overlay.png")
    p.add_argument("images", nargs="+", help="image files, or folders standing for the images in them")
    p.set_defaults(func=cmd_predict)
    p = sub.add_parser("list", help="list registries, packaged recipes and packaged studies")
    p.add_argument("kind", nargs="?", help="backbones, heads, discriminators, attacks, defenses, methods, "
                                           "datasets, addons, recipes or studies")
    p.add_argument("--include", default="*", help="fnmatch filter")
    p.set_defaults(func=cmd_list)
    p = sub.add_parser("demo", help="per seed, warm-start source-only on the embedded synthetic data, then "
                       "compare source-only, a BatchNorm control and APODA trained on from it")
    p.add_argument("--iters", type=int, default=300, help="warm-start iterations")
    p.add_argument("--adapt-iters", type=int, default=None, help="iterations of each method after the warm start "
                   "(default iters / 3)")
    p.add_argument("--seeds", type=int, nargs="+", default=list(DEMO_SEEDS), help="seeds, each with its own warm "
                   "start; the reading names a difference a finding only beyond twice its spread over them")
    p.add_argument("--threads", dest="demo_threads", type=int, default=DEMO_THREADS, help="torch threads (default "
                   f"{DEMO_THREADS}: the numbers depend on it, so the demo fixes it)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--quick", action="store_true", help="20 iterations, seed 0: a smoke test")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("study", help="run / status / report of a study file: a comparison over methods and seeds, "
                                     "here or on a SLURM cluster (uda-perturb study -h)")
    p.add_argument("study_args", nargs=argparse.REMAINDER)
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``uda-perturb`` and ``python -m uda_perturb``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    from .errors import UserError

    debug = "--debug" in argv[:1]
    try:
        if argv[:1] == ["study"]:  # argparse's REMAINDER drops leading options: hand them over untouched
            from .study import main as study_main

            return int(study_main(argv[1:]) or 0)
        args = build_parser().parse_args(argv)
        debug = args.debug
        _set_threads(getattr(args, "threads", None))
        return int(args.func(args) or 0)
    except (UserError, FileNotFoundError, FileExistsError) as exc:
        if debug:
            raise
        print(f"uda-perturb: error: {exc}", file=sys.stderr)
        return 2


def _set_threads(threads: Optional[int]) -> None:
    """``--threads N``: torch's intra-op threads (default: torch's own choice)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


if __name__ == "__main__":
    sys.exit(main())
