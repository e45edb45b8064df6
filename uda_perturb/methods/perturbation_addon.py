"""The APODA perturbation defense as an add-on to any method (registry ``ADDONS``, name ``perturbation``).

It perturbs the main features the method already computed (no extra backbone pass), attacking with the
classifier and, when the method has one, its main discriminator (in whatever space that D looks at), each
objective's direction normalised before they are combined (``combine: balanced``), and
adds ``lambda_source * CE(F(f_s*), y_s) + lambda_target * KL(p(f_t) || p(f_t*))`` to the generator loss.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import nn

from ..classifier_modules import align_corners_of
from ..losses import SOURCE_LABEL, TARGET_LABEL, bce_to, upsample
from ..models.segmentor import SegmentorOutput
from ..objective_stats import finite
from ..perturb import Perturber
from ..perturb_result import PerturbStats
from ..registry import ADDONS
from .base import StepState, UDAMethod

LEVELS = ("main", "aux")


@ADDONS.register("perturbation")
class PerturbationAddon(nn.Module):
    """Pointwise feature perturbation + defense on both domains.

    Args:
        lambda_source, lambda_target: weights of the two defense losses (0 disables a side).
        lambda_mixed: weight of the defense on a self-training method's mixed images (default
            ``lambda_source``): labelled like source, with the method's per-pixel label weights.
        source_attacks, target_attacks: attack objectives; ``None`` = classifier (+ discriminator if the
            method has one and ``use_discriminator``).
        source_defenses, target_defenses: default ``ce`` and ``kl``.
        d_on_perturbed: also train the discriminator on predictions of the perturbed features (main level).
        levels: ``["main"]`` (default) or ``["main", "aux"]``: the auxiliary head of a multi-level segmentor
            (DeepLab-v2's layer3 classifier, as AdaptSegNet and ADVENT) is attacked and defended on its own
            features too, with the method's aux discriminator, its losses weighted by the method's
            ``seg_aux_weight`` (0.1 by default), as its aux segmentation loss is (our choice; the APODA paper's
            method section was not available to us).
        **perturber: settings of :class:`~uda_perturb.Perturber` (``eps``, ``steps``, ``norm``, ``eps_mode``,
            ``combine``...). ``combine`` defaults to ``balanced``: the classifier and the discriminator each set
            half of the step's direction (``sum``: the earlier rule, where whichever gradient is larger at the
            moment decides: the classifier's while D is untrained, often D's later).

    What each attack objective did goes to ``metrics.jsonl`` (:func:`objective_metrics`): its loss at the clean
    features (``{side}_{objective}_clean``) and its rise at ``f*`` (``_rise``: the attack's effect, also on the
    progress line), and where measured the step's cosine with its direction (``_cos``), its gradient-norm share
    (``_share``) and the cosine between the objectives' own directions (``{side}_directions_cos``).
    """

    def __init__(self, lambda_source: float = 1.0, lambda_target: float = 0.1, lambda_mixed: Optional[float] = None,
                 source_attacks: Optional[Sequence[Any]] = None, target_attacks: Optional[Sequence[Any]] = None,
                 source_defenses: Sequence[Any] = ("ce",), target_defenses: Sequence[Any] = ("kl",),
                 use_discriminator: bool = True, d_on_perturbed: bool = False, levels: Sequence[str] = ("main",),
                 **perturber: Any) -> None:
        super().__init__()
        if not levels or any(v not in LEVELS for v in levels) or len(set(levels)) != len(levels):
            raise ValueError(f"perturbation levels must be distinct names of {LEVELS}, got {list(levels)}")
        self.levels = list(levels)
        self.lambda_source, self.lambda_target = lambda_source, lambda_target
        self.lambda_mixed = lambda_source if lambda_mixed is None else lambda_mixed
        self.use_discriminator, self.d_on_perturbed = use_discriminator, d_on_perturbed
        self.source_attacks, self.target_attacks = source_attacks, target_attacks
        self.perturber_kwargs = perturber
        self.source_defenses, self.target_defenses = list(source_defenses), list(target_defenses)
        Perturber(source_attacks, self.source_defenses, **perturber)  # validate settings at construction
        self._perturbers: dict[tuple[str, str], Perturber] = {}
        # the last step's perturbed features and their logits, for ``d_on_perturbed``
        self._perturbed: dict[str, torch.Tensor] = {}
        self._adv_logits: dict[str, torch.Tensor] = {}

    @property
    def needs_target(self) -> bool:
        """Whether the method must forward target images for this add-on."""
        return self.lambda_target > 0

    def _perturber(self, domain: str, space: str) -> Perturber:
        key = (domain, space)
        if key not in self._perturbers:
            # attacks None: Perturber's default recipe (classifier, plus discriminator when one is passed)
            attacks = self.source_attacks if domain == "source" else self.target_attacks
            defenses = self.source_defenses if domain == "source" else self.target_defenses
            self._perturbers[key] = Perturber(attacks, defenses, discriminator_input=space, **self.perturber_kwargs)
        return self._perturbers[key]

    def forward(self, method: UDAMethod, state: StepState) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        losses: dict[str, torch.Tensor] = {}
        stats: dict[str, float] = {}
        self._adv_logits, self._perturbed = {}, {}
        for level in self.levels:
            lv_losses, lv_stats = self._level(method, state, level)
            suffix = "" if level == "main" else f"_{level}"
            losses.update({k + suffix: v for k, v in lv_losses.items()})
            stats.update({k + suffix: v for k, v in lv_stats.items()})
        return losses, stats

    def _level(self, method: UDAMethod, state: StepState,
               level: str) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """One level's defense on every side (source, target, mixed)."""
        disc = method.discriminators[level] if self.use_discriminator and level in method.discriminators else None
        space = method.discriminator_space
        if level == "main":
            classifier, weight_of_level = method.segmentor.classifier, 1.0
        else:
            if method.segmentor.aux_head is None:
                raise ValueError("perturbation levels include 'aux' but the segmentor has no aux head "
                                 "(model.multi_level: true)")
            classifier, weight_of_level = method.segmentor.aux_head, method.seg_aux_weight

        def view(out: SegmentorOutput) -> SegmentorOutput:
            if level == "main":
                return out
            assert out.aux_features is not None and out.aux_logits is not None
            return SegmentorOutput(out.aux_features, out.aux_logits)

        losses, stats = {}, {}
        # (name, perturber domain, output, labels, pixel weights, output size, loss weight)
        sides: list[tuple[str, str, SegmentorOutput, Optional[torch.Tensor], Optional[torch.Tensor],
                          Optional[tuple[int, int]], float]]
        sides = [("source", "source", view(state.source), state.labels, None, None, self.lambda_source)]
        if state.target is not None:
            sides.append(("target", "target", view(state.target), None, None, state.target_size, self.lambda_target))
        if state.mixed is not None:
            sides.append(("mixed", "source", view(state.mixed), state.mixed_labels, state.mixed_weights, None,
                          self.lambda_mixed))
        # the method's own D forward on the target maps, where the attack would build the very same D input
        d_outputs = {}
        if disc is not None and level in state.target_discriminator_outputs and self._same_maps(method, classifier):
            d_outputs["target"] = state.target_discriminator_outputs[level]
        # label-based defense CEs keep the class balance of the method's own losses
        weights = {"source": method.class_weights,
                   "mixed": method.class_weights if getattr(method, "mix_class_weights", False) else None}
        for name, domain, out, labels, pixel_weights, size, weight in sides:
            if weight <= 0:
                continue
            perturber = self._perturber(domain, space)
            # the objectives' statistics only on steps the trainer logs (the setting given, else off)
            perturber.objective_stats = self.perturber_kwargs.get("objective_stats") if method.record_stats else False
            res = perturber(
                out.features, classifier, labels=labels, domain=domain, discriminator=disc,
                clean_logits=out.logits, output_size=size, class_weights=weights.get(name),
                pixel_weights=pixel_weights, clean_discriminator_output=d_outputs.get(name))
            losses[f"def_{name}"] = weight_of_level * weight * res.loss
            stats[f"{name}_norm"] = res.stats.mean_norm
            stats[f"{name}_moved"] = res.stats.fraction_perturbed
            if res.stats.attack_loss_after is not None:
                stats[f"{name}_attack_gain"] = res.stats.attack_loss_after - res.stats.attack_loss_before
            stats.update(objective_metrics(name, res.stats))
            if level == "main":
                self._adv_logits[name] = res.adv_logits.detach()
                self._perturbed[name] = res.perturbed
        return losses, stats

    def _same_maps(self, method: UDAMethod, classifier: nn.Module) -> bool:
        """Whether the attack builds D's input as the method does: no upsampling of its own in the settings, and
        the classifier's declared convention the method's."""
        if {"upsample", "align_corners"} & set(self.perturber_kwargs):
            return False
        return align_corners_of([classifier]) == method.align_corners

    def discriminator_losses(self, method: UDAMethod, state: StepState) -> dict[str, torch.Tensor]:
        """With ``d_on_perturbed``: the main D also learns perturbed source -> 0, perturbed target -> 1."""
        disc = method.discriminators["main"] if "main" in method.discriminators else None
        if not self.d_on_perturbed or disc is None or not {"source", "target"} <= set(self._adv_logits):
            return {}
        assert state.target_size is not None
        views = []
        for domain, size in (("source", state.source_size), ("target", state.target_size)):
            up = upsample(self._adv_logits[domain], size, method.align_corners)
            views.append(method.discriminator_view(self._perturbed[domain], up))
        return {"d_perturbed": 0.5 * bce_to(disc(views[0]), SOURCE_LABEL) + 0.5 * bce_to(disc(views[1]), TARGET_LABEL)}


def objective_metrics(side: str, stats: PerturbStats) -> dict[str, float]:
    """The measured per-objective statistics of one perturbation as flat metrics (unmeasured ones left out)."""
    out: dict[str, float] = {}
    for objective, part in stats.objectives.items():
        for suffix, value in (("clean", part.loss_clean), ("rise", part.rise), ("cos", part.step_cosine),
                              ("share", part.grad_share)):
            if finite(value):
                out[f"{side}_{objective}_{suffix}"] = value
    if len(stats.direction_cosine) == 1:
        (value,) = stats.direction_cosine.values()
        if finite(value):
            out[f"{side}_directions_cos"] = value
    return out
