"""The comparison's datasets, methods and protocol, shared by ``compare`` and ``ablate`` so that an ablation
can reuse the comparison's warm starts and runs (same overrides, same run folders)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .answers import Question
from .runner import Run, photometric

D = "ndf: 32"
METHODS: dict[str, list[str]] = {
    "source_only": ["method.name=source_only"],
    "source_only+targetBN": ["method.name=source_only", "method.options={target_bn_stats: true}"],
    "adaptsegnet": ["method.name=adaptsegnet", f"method.options={{{D}}}"],
    "advent": ["method.name=advent", f"method.options={{{D}, minent_weights: [0.001]}}"],
    "apoda": ["method.name=apoda", f"method.options={{{D}}}"],
    # APODA's earlier attack rule: the summed objectives' gradient, which follows whichever gradient is larger
    "apoda sum": ["method.name=apoda", f"method.options={{{D}, perturbation: {{combine: sum}}}}"],
    "advent+perturbation": ["method.name=advent", f"method.options={{{D}, minent_weights: [0.001]}}",
                            "method.addons=[perturbation]"],
    # APODA with a random direction at the same per-position radius: does the adversarial direction matter?
    "apoda+random": ["method.name=apoda",
                     f"method.options={{{D}, perturbation: {{source_attacks: [random], target_attacks: [random]}}}}"],
    "dacs": ["method.name=dacs"],
    "dacs+perturbation": ["method.name=dacs", "method.addons=[perturbation]"],  # eps 0.1 relative (default)
    # the perturbation family on DACS: a random direction at the add-on's radius, channel dropout, MIC masking
    "dacs+random": ["method.name=dacs", "method.addons=[{name: perturbation, source_attacks: [random]}]"],
    "dacs+dropout": ["method.name=dacs",
                     "method.addons=[{name: perturbation, source_attacks: [{name: dropout, rate: 0.5}]}]"],
    "dacs+mic": ["method.name=dacs", "method.addons=[mic]"],
    "dacs+mic+perturbation": ["method.name=dacs", "method.addons=[mic, perturbation]"],
    # diagnostic: DACS with the backbone's BatchNorm frozen (running statistics and affine from the warm start),
    # so the strongly augmented mixed images cannot move the statistics the evaluation uses
    "dacs+frozenBN": ["method.name=dacs", "model.backbone_options.bn=frozen"],
    # the other two radii of the add-on's ablation on DACS
    "dacs+perturbation eps0.05": ["method.name=dacs", "method.addons=[{name: perturbation, eps: 0.05}]"],
    "dacs+perturbation eps0.2": ["method.name=dacs", "method.addons=[{name: perturbation, eps: 0.2}]"],
}
DEFAULT_METHODS = ["source_only", "source_only+targetBN", "adaptsegnet", "advent", "apoda", "advent+perturbation"]
# the add-on's radius ablation on DACS, in increasing radius
DACS_RADII = ["dacs", "dacs+perturbation eps0.05", "dacs+perturbation", "dacs+perturbation eps0.2"]
# the questions a comparison answers, as (method, baseline) pairs compared seed by seed
PAIRS = [("apoda", "adaptsegnet"), ("apoda", "apoda+random"), ("dacs+perturbation", "dacs"),
         ("advent+perturbation", "advent"), ("adaptsegnet", "source_only+targetBN"),
         ("source_only+targetBN", "source_only"), ("dacs", "source_only"), ("dacs+frozenBN", "dacs"),
         # the perturbation family on DACS: is the adversarial direction worth its cost over random / dropout /
         # masking, and does the add-on still help on top of MIC?
         ("dacs+perturbation", "dacs+random"), ("dacs+dropout", "dacs"), ("dacs+mic", "dacs"),
         ("dacs+mic+perturbation", "dacs+mic"), ("dacs+random", "dacs"),
         # does the discriminator attack matter (balanced against the summed rule, in which it does not act)?
         ("apoda", "apoda sum"), ("adaptsegnet", "source_only")]
# v4's questions, each a pair above with a criterion fixed before the runs
V4_QUESTIONS = [
    Question("APODA beats AdaptSegNet as the paper claims (+3.5 on GTA5 -> Cityscapes), tail first",
             "apoda - adaptsegnet", min_gain=1.0, tail_over_head=True),
    Question("APODA's adversarial direction beats a random one", "apoda - apoda+random"),
    Question("the discriminator attack matters (balanced against the summed rule)", "apoda - apoda sum",
             measure_only=True),
    Question("the add-on's adversarial direction beats a random one on DACS", "dacs+perturbation - dacs+random"),
    Question("MIC helps DACS", "dacs+mic - dacs"),
    Question("the add-on helps on top of DACS + MIC", "dacs+mic+perturbation - dacs+mic"),
]
V4_METHODS = ["source_only", "adaptsegnet", "apoda", "apoda sum", "apoda+random", "dacs", "dacs+perturbation",
              "dacs+random", "dacs+dropout", "dacs+mic", "dacs+mic+perturbation"]
CAMVID = "../shared/data/camvid"
_DUSK = f"name: camvid, root: {CAMVID}, split: train"
# CamVid protocol: adapt on the first 40 dusk frames, evaluate on the last 22 (and on all 62 beside it)
HELD_OUT_DUSK = [
    "data.target.options={sequences: [0001TP], labelled: false, frames: [6690, 7860]}",
    f"data.eval={{target_dusk_heldout: {{{_DUSK}, options: {{sequences: [0001TP], frames: [7890, 8520]}}, "
    f"transforms: {{normalize: inception}}}}, target_dusk: {{{_DUSK}, options: {{sequences: [0001TP]}}, "
    f"transforms: {{normalize: inception}}}}, source_test: {{name: camvid, root: {CAMVID}, split: test, "
    f"transforms: {{normalize: inception}}}}}}",
]
SETUPS: dict[str, dict[str, Any]] = {
    "camvid": {"recipe": "camvid_day2dusk", "target": "target_dusk", "source": "source_test",
               "groups": ["tail", "head"], "pretrain_iters": 3000, "iters": 500, "batch": 4, "pretrain_batch": 8,
               "pretrain_lr": 0.01, "adapt_lr": 0.0025, "overrides": []},
    "camvid_pretrained": {"recipe": "camvid_day2dusk_pretrained", "target": "target_dusk_heldout",
                          "also": "target_dusk", "source": "source_test", "groups": ["tail", "head"],
                          "pretrain_iters": 600, "iters": 100, "batch": 4, "pretrain_batch": 8,
                          "pretrain_lr": None, "adapt_lr": 1.0e-4, "overrides": HELD_OUT_DUSK,
                          # the v2 method list; the augmented arm only, which the 2-hour budget allows
                          "methods": ["source_only", "source_only+targetBN", "adaptsegnet", "advent", "apoda",
                                      "apoda+random", "dacs", "dacs+perturbation", "advent+perturbation",
                                      "dacs+frozenBN"],
                          "aug": "on"},
    # v3: the length and lr the label-free rule picked on the learning curve (results/curve_camvid_pretrained.md:
    # DACS lr 1e-4, 500 iterations; only that lr was run). At 500 iterations the 2-hour budget holds about four
    # methods x 3 seeds (v2's costs: about 8.4 s per seed-iteration for these four, plus 3 warm starts), so the list
    # keeps questions (a) and (b); add methods with --methods when more time is available. channels_last off: the
    # faster layout for this network with torch 2.14 on CPU.
    "camvid_pretrained_v3": {"recipe": "camvid_day2dusk_pretrained", "target": "target_dusk_heldout",
                             "also": "target_dusk", "source": "source_test", "groups": ["tail", "head"],
                             "pretrain_iters": 600, "iters": 500, "batch": 4, "pretrain_batch": 8,
                             "pretrain_lr": None, "adapt_lr": 1.0e-4,
                             "overrides": HELD_OUT_DUSK + ["train.channels_last=false"],
                             "methods": ["source_only", "dacs", "dacs+perturbation", "dacs+random"], "aug": "on"},
    # synthetic -> real (camvid_rendered2real): the v3 protocol's length, lr and methods, not re-chosen on this
    # regime; evaluation on real Seq05VD (real_test), the rule's source score on rendered 0016E5 val frames
    "camvid_rendered": {"recipe": "camvid_rendered2real", "target": "real_test", "source": "source_test",
                        "groups": ["tail", "head"], "pretrain_iters": 600, "iters": 500, "batch": 4,
                        "pretrain_batch": 8, "pretrain_lr": None, "adapt_lr": 1.0e-4, "overrides": [],
                        "methods": ["source_only", "dacs", "dacs+perturbation", "dacs+random"], "aug": "on",
                        # the rendered -> real gap, measured before any method ran: the report's gap-closed section
                        "gap_record": "setup_camvid_rendered.json"},
    # v4 on the mended regime (source_test held out, full-resolution rendering, real_test pinned to Seq05VD) with
    # the protocol chosen on the rendered source_test (results/setup_camvid_rendered_protocol.md) and the length
    # chosen by the label-free curve (results/curve_camvid_rendered_v4.md); its gap measured first
    # (results/setup_camvid_rendered_v4.md)
    "camvid_rendered_v4": {"recipe": "camvid_rendered2real", "target": "real_test", "source": "source_test",
                           "groups": ["tail", "head"], "pretrain_iters": 600, "iters": 500, "batch": 4,
                           "pretrain_batch": 8, "pretrain_lr": None, "adapt_lr": 1.0e-4,
                           "overrides": ["model.backbone_options.output_stride=16",
                                         "model.head_options={atrous_rates: [1, 2, 3]}"],
                           "methods": V4_METHODS, "aug": "on", "gap_record": "setup_camvid_rendered_v4.json",
                           "questions": V4_QUESTIONS, "budget_hours": 3},
    "synthetic": {"recipe": "synthetic_demo", "target": "target_test", "source": "source_test",
                  "groups": ["tail", "head"], "pretrain_iters": 1500, "iters": 400, "batch": 4, "pretrain_batch": 8,
                  "pretrain_lr": 0.01, "adapt_lr": 0.0025, "overrides": []},
}
ARMS = {"off": [False], "on": [True], "both": [False, True]}


def arm_name(on: bool) -> str:
    """Folder-name part of a photometric augmentation arm."""
    return "aug" if on else "plain"


@dataclass
class Protocol:
    """One resolved comparison protocol: where its runs live and which overrides every run gets.

    Every adaptation run of ``(method, arm, seed)`` starts from the source-only warm start of ``(arm, seed)``
    (or of the first seed with ``shared_warm_start``), trains ``iters`` iterations at ``adapt_lr``, and lives
    in ``work/<method>_<arm>_s<seed>``: any benchmark that builds the same protocol finds the same runs.
    """

    dataset: str
    work: Path
    pre_iters: int
    iters: int
    adapt_lr: float
    extra: Sequence[str] = ()
    shared_warm_start: bool = False
    quick: bool = False

    @property
    def setup(self) -> dict[str, Any]:
        """The dataset's settings in :data:`SETUPS`."""
        return SETUPS[self.dataset]

    @property
    def recipe(self) -> str:
        """The packaged recipe every run trains."""
        return str(self.setup["recipe"])

    def common(self) -> list[str]:
        """Overrides of every run: a checkpoint every 50 iterations (a run cut off continues from it when the
        benchmark is restarted), no evaluation during training, the setup's data protocol."""
        out = ["data.num_workers=0", "train.checkpoint_every=50", "train.eval_every=0", *self.setup["overrides"],
               *self.extra]
        if self.quick and self.dataset == "synthetic":
            out += ["data.eval.target_test.options.length=8", "data.eval.source_test.options.length=8"]
        return out

    def warm_start(self, on: bool, seed: int) -> Run:
        """The source-only warm start of one augmentation arm and seed."""
        lr = [f"train.lr={self.setup['pretrain_lr']}"] if self.setup["pretrain_lr"] is not None else []
        folder = f"pretrain_{arm_name(on)}" + ("" if self.shared_warm_start else f"_s{seed}")
        return Run(f"warm start{' +aug' if on else ''}",
                   self.common() + photometric(on) + ["method.name=source_only", f"train.iters={self.pre_iters}",
                                                      *lr, f"data.batch_size={self.setup['pretrain_batch']}"],
                   self.work / folder, seed)

    def warm_starts(self, arms: Sequence[bool], seeds: Sequence[int]) -> list[Run]:
        """Every warm start the adaptation runs of these arms and seeds need (one per arm when shared)."""
        return [self.warm_start(on, s) for on in arms for s in (seeds[:1] if self.shared_warm_start else seeds)]

    def adapt_overrides(self, weights: Path) -> list[str]:
        """What every adaptation run sets after its method: the start weights, length, lr and batch size."""
        return [f"model.weights={weights}", f"train.iters={self.iters}", f"train.lr={self.adapt_lr}",
                f"data.batch_size={self.setup['batch']}"]

    def adaptation(self, method: str, on: bool, seed: int) -> Run:
        """The run of ``method`` (a :data:`METHODS` key) from the warm start of ``(on, seed)``."""
        weights = self.warm_start(on, seed).run_dir / "segmentor.pt"
        folder = re.sub(r"[^A-Za-z0-9_.]+", "_", method) + f"_{arm_name(on)}_s{seed}"
        return Run(method + (" +aug" if on else ""),
                   self.common() + photometric(on) + METHODS[method] + self.adapt_overrides(weights),
                   self.work / folder, seed)
