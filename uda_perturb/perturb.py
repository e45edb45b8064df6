"""Pointwise adversarial perturbation of feature maps (APODA) and the defense built on it.

``Perturber`` holds the settings; ``perturb_and_defend`` is the one-call entry point that any UDA loop
adds on the features it already computed (no extra backbone pass).
"""
from __future__ import annotations

import difflib
import functools
import inspect
from dataclasses import dataclass, replace
from typing import Any, Mapping, Optional, Sequence, cast

import torch
from torch import nn

from .attack_combination import (
    COMBINE_MODES,
    TINY,
    balanced_direction,
    balanced_l2,
    objective_gradients,
    position_norm,
    unit_direction,
    unit_l2,
)
from .classifier_modules import align_corners_of, modules_behind
from .defense_pass import defense_logits, needs_reference
from .first_step import FIRST_STEP_MODES, can_reuse, check_discriminator_output, reuses_discriminator_output
from .losses import IGNORE_INDEX
from .model_state import frozen_state
from .models.discriminators import DISCRIMINATOR_INPUTS, DiscriminatorSpace
from .objective_context import Classifier, ObjectiveContext, Upsampler
from .objective_spec import ObjectiveSpec, Term, resolve
from .objective_stats import ObjectiveTracker, finite
from .perturb_checks import check_inputs, check_label_values, logits_of
from .perturb_geometry import advance, project, radius, random_start
from .perturb_result import PerturbResult, PerturbStats, _summary
from .registry import ATTACKS, DEFENSES

NORMS = ("l2", "linf")
EPS_MODES = ("absolute", "relative")
__all__ = ["Perturber", "PerturbResult", "PerturbStats", "perturb_and_defend"]


class Perturber(nn.Module):
    """Pointwise feature perturbation with configurable attack objectives and defense losses.

    Args:
        attacks: objectives to maximise (names, ``{name: weight}``, configs or modules). ``None``: the
            default recipe, ``classifier`` plus ``discriminator`` when a discriminator is given.
        defenses: losses the classifier minimises on perturbed features. ``None``: ``ce`` for source,
            ``kl`` for target.
        eps: radius of each position's ball (absolute, or a fraction of ``||f[b,:,i,j]||_2`` when
            ``eps_mode="relative"``; for ``linf`` the relative radius is ``eps`` times the position's RMS).
        steps: gradient steps K; ``alpha``: step size (default ``eps / steps``, same mode as eps).
        norm: ``"l2"`` (each position's step is its unit gradient over channels) or ``"linf"`` (sign).
        random_start: start from a random point of the ball (needed by the VAT-style ``kl`` objective).
        project: project onto the per-position ball after each step.
        bn_mode: BatchNorm during attack steps: ``"eval"`` (running stats) or ``"batch"`` (buffers restored).
        discriminator_input: what D sees: ``"softmax"`` of the logits (AdaptSegNet's D), ``"self_information"``
            (ADVENT's per-class map ``-p log p / log K``; ``"entropy"`` is its earlier name), ``"features"`` (a
            feature-level D), or a callable ``(features, logits at pixel size) -> D input``. When D's first
            layer tells its channel count, a space that does not fit is refused, naming the one that does.
        channels_last: run the attack's passes on channels-last features (``True``, default), contiguous ones
            (``False``), or in the features' own layout (``None``). The values are the same up to rounding. It
            was chosen when it made a dilated ASPP head's input gradient about 3x faster on CPU; with torch 2.14
            the conversion measured 5-15% slower on both heads timed (DeepLab-v2 ASPP on ResNet-50, DeepLab-v3 on
            EfficientNet-Lite0), so ``None`` is faster there. The default stays so that earlier results are
            reproduced bit for bit.
        track_attack_loss: also evaluate the attack objective at ``f*`` (``stats.attack_loss_after``); this
            costs one more discriminator pass, so it is off by default.
        defense_bn_mode: the classifier's mode in the defense pass ``classifier(f*)``: ``"train"`` (default: the
            caller's mode, so train-mode BatchNorm normalises with the perturbed batch and updates its running
            statistics, and dropout is random) or ``"eval"`` (running statistics, no dropout, BatchNorm buffers
            untouched; gradients still reach the classifier).
        align_corners: how logits are upsampled to pixel size for the pixel losses and D's input: ``True`` (the
            DeepLab-v2 references: AdaptSegNet, ADVENT, DACS) or ``False`` (torchvision's and mmseg's models).
            ``None`` (default): the model's own convention where it declares one (``split_torchvision`` views:
            ``False``), else ``True``.
        upsample: the caller's own upsampler, a callable ``logits -> logits at pixel size`` (AdaptSegNet's
            ``interp = nn.Upsample(size, mode="bilinear")``, i.e. ``align_corners=False``), used for every
            pixel-size map the objectives and defenses build, so that D judges exactly the maps the caller's loop
            trains it on. Replaces ``align_corners`` (giving both is refused).
        combine: how several attack objectives make one step (one objective: all three are the same).
            ``"balanced"`` (default): each objective's own input gradient is turned into its per-position
            direction (L2: divided by its norm over channels; Linf: its sign), the directions are summed with the
            ``attack_weights``, and the sum is normalised as one objective's gradient would be. Each objective
            then counts by its weight, not by the size of its gradient, which differs by orders of magnitude and
            changes as D trains (with an untrained or saturated D the classifier's was 40-230x D's; in training
            a summed step came to follow D). Costs one more backward through the classifier per extra objective
            (the forward is shared).
            ``"sum"``: the gradient of the weighted sum of the objectives, normalised (the rule before
            ``balanced``; bit for bit the earlier results).
            ``"separate"``: one ``f*`` per objective, each at the full radius; the defense loss is the mean of
            the defense over them, so it costs one more defense pass (classifier forward and backward) per extra
            objective. ``perturbed`` and ``adv_logits`` then hold the objectives' results one after another
            along the batch dimension (``n_objectives * B``), in the order of ``attacks``.
        first_step: where the first attack step's gradients come from: ``"auto"`` (default) the graph of the
            caller's ``clean_logits`` (a backward through it, kept for the caller's own; no head forward here)
            where they were computed from ``features`` and the head has no train-mode BatchNorm or dropout, so
            that the two are the same function, else the attack's own forward; ``"caller"``: the caller's graph
            wherever it connects, BatchNorm and dropout in the caller's mode; ``"own"``: always the attack's own
            forward (:mod:`~uda_perturb.first_step`).
        objective_stats: fill ``stats.objectives`` (:class:`~uda_perturb.objective_stats.ObjectiveStats`: each
            objective's loss at the clean features and at ``f*``, the step's cosine with its direction, its
            gradient-norm share) and ``stats.direction_cosine``. ``None`` (default): the losses always (at most
            one more no-grad discriminator forward per call, from the defense pass's logits), the cosines and
            shares where they are free (several objectives under ``balanced`` or ``separate``); ``True``: the
            cosines and shares under ``sum`` too (one more backward per objective); ``False``: nothing.
    """

    def __init__(self, attacks: Optional[ObjectiveSpec] = None, defenses: Optional[ObjectiveSpec] = None, *,
                 eps: float = 0.1, steps: int = 1, alpha: Optional[float] = None, norm: str = "l2",
                 eps_mode: str = "relative", random_start: bool = False, project: bool = True,
                 bn_mode: str = "eval", discriminator_input: DiscriminatorSpace = "softmax",
                 attack_weights: Optional[Mapping[str, float]] = None,
                 defense_weights: Optional[Mapping[str, float]] = None,
                 ignore_index: int = IGNORE_INDEX, channels_last: Optional[bool] = True,
                 track_attack_loss: bool = False, combine: str = "balanced",
                 objective_stats: Optional[bool] = None, defense_bn_mode: str = "train",
                 align_corners: Optional[bool] = None, upsample: Optional[Upsampler] = None,
                 first_step: str = "auto") -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if eps_mode not in EPS_MODES:
            raise ValueError(f"eps_mode must be one of {EPS_MODES}, got {eps_mode!r}")
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps}")
        if int(steps) != steps or steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps}")
        if alpha is not None and not alpha > 0:
            raise ValueError(f"alpha must be positive, got {alpha}")
        if bn_mode not in ("eval", "batch"):
            raise ValueError(f"bn_mode must be 'eval' or 'batch', got {bn_mode!r}")
        if combine not in COMBINE_MODES:
            raise ValueError(f"combine must be one of {COMBINE_MODES}, got {combine!r}")
        if not callable(discriminator_input) and discriminator_input not in DISCRIMINATOR_INPUTS:
            raise ValueError(f"discriminator_input must be one of {DISCRIMINATOR_INPUTS} or a callable, got "
                             f"{discriminator_input!r}")
        if upsample is not None and not callable(upsample):
            raise TypeError("upsample must be a callable logits -> logits at pixel size, got "
                            f"{type(upsample).__name__}")
        if upsample is not None and align_corners is not None:
            raise ValueError("pass upsample= or align_corners=, not both: the upsampler decides how logits are resized")
        if first_step not in FIRST_STEP_MODES:
            raise ValueError(f"first_step must be one of {FIRST_STEP_MODES}, got {first_step!r}")
        if defense_bn_mode not in ("train", "eval"):
            raise ValueError(f"defense_bn_mode must be 'train' or 'eval', got {defense_bn_mode!r}")
        self.eps, self.steps, self.norm, self.eps_mode = float(eps), int(steps), norm, eps_mode
        self.alpha = float(alpha) if alpha is not None else self.eps / self.steps
        self.random_start, self.project, self.bn_mode = random_start, project, bn_mode
        self.discriminator_input, self.ignore_index = discriminator_input, ignore_index
        self.channels_last, self.track_attack_loss = channels_last, track_attack_loss
        self.combine, self.objective_stats = combine, objective_stats
        self.defense_bn_mode, self.align_corners, self.upsample = defense_bn_mode, align_corners, upsample
        self.first_step = first_step
        self._attack_spec, self._defense_spec = attacks, defenses
        self._attack_weights, self._defense_weights = attack_weights, defense_weights
        self.attack_terms = resolve(ATTACKS, attacks, attack_weights) if attacks is not None else None
        self.defense_terms = resolve(DEFENSES, defenses, defense_weights) if defenses is not None else None
        self._default_terms: dict[str, list[Term]] = {}

    # ----------------------------------------------------------------------------------------- helpers
    def _attacks_for(self, discriminator: Optional[nn.Module]) -> list[Term]:
        if self.attack_terms is not None:
            return self.attack_terms
        key = f"attacks:{discriminator is not None}"
        if key not in self._default_terms:  # built once: the default recipe depends only on having a D
            names = ["classifier"] + (["discriminator"] if discriminator is not None else [])
            self._default_terms[key] = resolve(ATTACKS, names, self._attack_weights)
        return self._default_terms[key]

    def _defenses_for(self, domain: str) -> list[Term]:
        if self.defense_terms is not None:
            return self.defense_terms
        key = f"defenses:{domain}"
        if key not in self._default_terms:
            self._default_terms[key] = resolve(DEFENSES, "ce" if domain == "source" else "kl", self._defense_weights)
        return self._default_terms[key]

    def _radius(self, f0: torch.Tensor, value: float, f0_norm: Optional[torch.Tensor] = None) -> torch.Tensor:
        return radius(f0, value, self.eps_mode, self.norm, f0_norm)

    def _groups(self, attacks: list[Term]) -> list[list[Term]]:
        """The objectives that make one ``f*`` together: all of them, or each alone under ``separate``."""
        if self.combine == "separate" and len(attacks) > 1 and not _is_control(attacks):
            return [[t] for t in attacks]
        return [attacks]

    def _attack_point(self, f0: torch.Tensor, delta: Optional[torch.Tensor]) -> torch.Tensor:
        # the clean point (delta None) is f0 itself: a new leaf on the same memory, no copy
        f = f0.detach() if delta is None else (f0.float() + delta).to(f0.dtype)
        if self.channels_last is not None:
            f = f.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        return f.requires_grad_(True)

    def _gradients(self, terms: list[Term], ctx: ObjectiveContext, f: torch.Tensor, logits: torch.Tensor,
                   scale: float, want_each: bool, keep_graph: bool = False) -> _Gradients:
        """``(each objective's unweighted value, the summed gradient or None, each weighted term's gradient or
        None)`` at ``f``: the summed one for one objective or ``sum``, each one's under ``balanced`` (and for the
        statistics when ``want_each``). Scaling the loss by the number of positions keeps fp16 gradients of a
        pixel-mean loss from underflowing; the direction is normalised, so the scale does not change it.
        ``keep_graph``: the graph is the caller's (the first step from its forward), kept for its backward."""
        raw = [t.module(ctx, f, logits) for t in terms]
        weighted = [t.weight * v for t, v in zip(terms, raw)]
        if len(terms) > 1 and self.combine != "sum":  # weighted: a negative weight turns its direction round
            return raw, None, objective_gradients(weighted, f, scale, keep_graph)
        loss = cast(torch.Tensor, sum(weighted))
        each = want_each and len(terms) > 1
        (g,) = torch.autograd.grad(loss * scale, f, retain_graph=each or keep_graph)
        if each:
            return raw, g.float(), objective_gradients(weighted, f, scale, keep_graph)
        return raw, g.float(), [g.float()] if len(terms) == 1 else None

    def _first_pass(self, attacks: list[Term], groups: list[list[Term]], f0: torch.Tensor,
                    delta: Optional[torch.Tensor],
                    call: _Call, reuse: bool, scale: float,
                    want_each: bool) -> tuple[ObjectiveContext, list[_Gradients]]:
        """Step 0 from one point for every group: the caller's own graph (``reuse``: no forward here) or one
        forward at f0 that every objective shares (``separate``: one gradient per objective)."""
        if reuse:
            f, logits = call.features, cast(torch.Tensor, call.clean_logits)
        else:
            f = self._attack_point(f0, delta)
            logits = logits_of(call.classifier, f)
        ctx = self._context(call, f0, logits)
        if reuse and call.discriminator_output is not None:
            ctx = replace(ctx, caller_logits=logits, caller_discriminator_output=call.discriminator_output)
        if len(groups) == 1:
            return ctx, [self._gradients(attacks, ctx, f, logits, scale, want_each, keep_graph=reuse)]
        raw, _, each = self._gradients(attacks, ctx, f, logits, scale, want_each=True, keep_graph=reuse)
        assert each is not None
        return ctx, [([raw[i]], each[i], [each[i]]) for i in range(len(groups))]

    def _combined(self, terms: list[Term], summed: Optional[torch.Tensor], each: Optional[list[torch.Tensor]],
                  want_each: bool) -> tuple[torch.Tensor, Optional[list[tuple[torch.Tensor, torch.Tensor]]]]:
        """The step before its normalisation (the summed gradient, or the ``balanced`` sum of directions: for L2
        without the unit vectors as tensors of their own where every norm is safe), and each objective's
        :func:`unit_l2` when the statistics want them, computed apart so that measuring them changes no step."""
        parts = [unit_l2(g) for g in each] if each is not None and want_each else None
        if summed is not None:
            return summed, parts
        assert each is not None
        weights = [abs(t.weight) for t in terms]
        # the statistics' unit_l2 norms are the ones balanced_l2 takes (where they are safe): not taken twice
        fused = balanced_l2(each, weights, [n for _, n in parts] if parts else None) if self.norm == "l2" else None
        if fused is not None:
            return fused, parts
        units = [u for u, _ in (parts or [unit_l2(g) for g in each])] if self.norm == "l2" else []
        return balanced_direction(each, units, weights, self.norm), parts

    def _step(self, delta: Optional[torch.Tensor], combined: torch.Tensor, size: torch.Tensor, own: bool,
              alpha: torch.Tensor, r: torch.Tensor, want_direction: bool
              ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``(the displacement after this step, its unit direction)``. From the clean point (``delta`` None) the
        step is the displacement, in the ball already unless alpha exceeds eps, and an L2 one is scaled in one
        pass, its direction a tensor only when ``want_direction`` (the statistics). ``own``: ``combined`` is the
        loop's temporary and may be overwritten (a summed gradient may be autograd's view)."""
        if delta is not None:
            direction = unit_direction(combined, self.norm, size, in_place=own)
            return advance(delta, direction, alpha, r, self.norm, self.project), direction
        if self.norm == "l2":
            maybe = combined / (size + TINY) if want_direction else None
            factor = alpha / (size + TINY)
            first = combined.mul_(factor) if own else combined * factor
        else:
            maybe = unit_direction(combined, self.norm, size, in_place=own)
            first = maybe * alpha
        if self.project and self.alpha > self.eps:
            first = project(first, r, self.norm)
        return first, maybe

    def _align(self, heads: Sequence[nn.Module]) -> bool:
        if self.align_corners is not None:
            return self.align_corners
        return align_corners_of(heads)

    # --------------------------------------------------------------------------------------- public API
    def perturb(self, features: torch.Tensor, classifier: Classifier, *, labels: Optional[torch.Tensor] = None,
                domain: str = "source", discriminator: Optional[nn.Module] = None,
                clean_logits: Optional[torch.Tensor] = None, output_size: Optional[tuple[int, int]] = None,
                measure: bool = False, class_weights: Optional[torch.Tensor] = None,
                pixel_weights: Optional[torch.Tensor] = None, modules: Optional[Sequence[nn.Module]] = None,
                clean_discriminator_output: Optional[torch.Tensor] = None,
                ) -> tuple[torch.Tensor, PerturbStats, ObjectiveContext]:
        """Return ``(f*, stats, ctx)``: the detached perturbed features and what the attack did.

        Gradients are taken with ``torch.autograd.grad`` with respect to the features only: no parameter
        ``.grad`` is written, and BatchNorm/dropout of the classifier and discriminator are frozen. The modules
        behind ``classifier`` are found whatever it is (a module, a bound method, a ``functools.partial``, a
        lambda); pass ``modules=[...]`` where they cannot be found (``[]``: it has none).
        Pass ``clean_logits`` when the caller already has ``classifier(features)``; without them (and without
        a random start) the first attack step's forward pass provides them, so no pass is wasted.
        ``clean_discriminator_output``: D's output on the maps this call builds from ``clean_logits`` (the same
        upsampling and discriminator input), taken from the caller's own forward with its graph, e.g. AdaptSegNet's
        adversarial loss on target: when the first step comes from the caller's graph (``first_step``), the
        discriminator objective backs through it instead of running D (a D with BatchNorm or dropout: only with
        ``first_step="caller"``); otherwise it is not used.
        ``measure=True`` spends one more forward pass to fill ``stats.attack_loss_after`` and each objective's
        ``loss_perturbed`` (in the attack's mode).
        ``class_weights`` weight the label-based ``ce`` defense per class (attacks stay unweighted: an L2
        step is normalised per position, so they only set directions); ``pixel_weights`` (``B x H x W``) weight
        its label pixels, as self-training weighs pseudo-labels.
        Several objectives make one step by the ``combine`` rule; under ``separate`` ``f*`` holds one result
        per objective along the batch dimension. Every objective shares the classifier's forward pass.
        A gradient-free control (``random``, ``dropout``) in place of the attacks displaces the features
        directly: no gradient pass, the same radius.
        """
        attacks, call = self._prepare(features, classifier, labels, domain, discriminator, clean_logits, output_size,
                                      class_weights, pixel_weights, modules, clean_discriminator_output)
        return self._perturb(attacks, call, measure)

    def _prepare(self, features: torch.Tensor, classifier: Classifier, labels: Optional[torch.Tensor], domain: str,
                 discriminator: Optional[nn.Module], clean_logits: Optional[torch.Tensor],
                 output_size: Optional[tuple[int, int]], class_weights: Optional[torch.Tensor],
                 pixel_weights: Optional[torch.Tensor], modules: Optional[Sequence[nn.Module]],
                 discriminator_output: Optional[torch.Tensor] = None) -> tuple[list[Term], _Call]:
        """The inputs checked, and the modules behind the classifier found once for the attack and the defense."""
        attacks = self._attacks_for(discriminator)
        labels = check_inputs(features, labels, domain, discriminator, attacks, self._defenses_for(domain),
                              clean_logits, output_size, self.discriminator_input, self.upsample is not None)
        check_discriminator_output(discriminator_output, clean_logits, discriminator)
        heads = modules_behind(classifier, modules)
        return attacks, _Call(features, classifier, heads, labels, domain, discriminator, clean_logits, output_size,
                              class_weights, pixel_weights, self._align(heads), discriminator_output)

    def _perturb(self, attacks: list[Term], call: _Call,
                 measure: bool = False) -> tuple[torch.Tensor, PerturbStats, ObjectiveContext]:
        if _is_control(attacks):
            return self._control(attacks[0], call.features.detach(), call)
        return self._attack(attacks, call.features.detach(), call, measure)

    def _attack(self, attacks: list[Term], f0: torch.Tensor, call: _Call,
                measure: bool) -> tuple[torch.Tensor, PerturbStats, ObjectiveContext]:
        """The attack loop: at each step, each objective's gradient -> their combination -> the step -> the
        projection, for each group of objectives making one ``f*``."""
        groups = self._groups(attacks)
        tracker = ObjectiveTracker([t.name for t in attacks]) if self.objective_stats is not False else None
        want_each = tracker is not None and len(attacks) > 1 and (self.combine != "sum" or bool(self.objective_stats))
        # before the freeze: whether the caller's graph was made in a mode that matters
        reuse = can_reuse(self.first_step, call.heads, call.features, call.clean_logits, self.random_start)
        if not (reuse and reuses_discriminator_output(self.first_step, call.discriminator)):
            call = replace(call, discriminator_output=None)  # D's mode matters (decided before the freeze too)
        with frozen_state(*call.heads, call.discriminator, bn_mode=self.bn_mode), torch.enable_grad():
            f0_norm = position_norm(f0)  # once: the radius, the step size and the statistics all use it
            r, alpha = self._radius(f0, self.eps, f0_norm), self._radius(f0, self.alpha, f0_norm)
            # None: the clean point; every group's displacement is a tensor from the first step on
            deltas: list[Optional[torch.Tensor]] = [random_start(f0, r, self.norm) if self.random_start else None
                                                    for _ in groups]
            moved = [torch.zeros((f0.shape[0], 1, *f0.shape[2:]), dtype=torch.bool, device=f0.device) for _ in groups]
            scale = float(f0.shape[0] * f0.shape[2] * f0.shape[3])
            ctx: Optional[ObjectiveContext] = None
            loss_before, clean = 0.0, [float("nan")] * len(attacks)
            for step in range(self.steps):
                evals: list[_Gradients]
                if step == 0 and (reuse or len(groups) > 1) and not self.random_start:
                    ctx, evals = self._first_pass(attacks, groups, f0, deltas[0], call, reuse, scale, want_each)
                else:
                    evals = []
                    for terms, delta in zip(groups, deltas):
                        f = self._attack_point(f0, delta)
                        logits = logits_of(call.classifier, f)
                        ctx = ctx or self._context(call, f0, logits)
                        evals.append(self._gradients(terms, ctx, f, logits, scale, want_each))
                values = [float(v.detach()) for raw, _, _ in evals for v in raw]
                if step == 0:
                    loss_before = sum(t.weight * v for t, v in zip(attacks, values))
                    clean = values if not self.random_start else clean
                units: list[Optional[tuple[torch.Tensor, torch.Tensor]]] = []
                directions: list[torch.Tensor] = []
                for i, (terms, (_, summed, each)) in enumerate(zip(groups, evals)):
                    combined, parts = self._combined(terms, summed, each, want_each)
                    size = position_norm(combined)  # once: what moved, and the L2 direction
                    moved[i] |= size > 0
                    units += parts if parts is not None else [None] * len(terms)
                    deltas[i], direction = self._step(deltas[i], combined, size, summed is None, alpha, r,
                                                      tracker is not None)
                    if tracker is not None:
                        directions += [cast(torch.Tensor, direction)] * len(terms)
                if tracker is not None:
                    tracker.record([u[0] if u else None for u in units], [u[1] if u else None for u in units],
                                   directions, same_point=len(groups) == 1 or (step == 0 and not self.random_start))
            # positions without gradient (ignored pixels) stay put
            moves = [d if bool(m.all()) else d.mul_(m) for d, m in zip(cast(list[torch.Tensor], deltas), moved)]
            one = len(groups) == 1  # no copies of the buffers for one f*
            stats = _summary(moves[0] if one else torch.cat(moves),
                             f0_norm if one else f0_norm.repeat(len(groups), 1, 1, 1),
                             moved[0] if one else torch.cat(moved), loss_before)
            # f* in each displacement's own buffer (the attack's, float32): no feature-sized allocation
            chunks = [d.add_(f0).to(f0.dtype).contiguous().detach() for d in moves]
            assert ctx is not None
            if measure:
                after = self._measure(groups, ctx, chunks, call.classifier)
                stats.attack_loss_after = sum(t.weight * v for t, v in zip(attacks, after))
            else:
                after = None
        if tracker is not None:
            tracker.set_losses(clean, after if after is not None else [float("nan")] * len(attacks))
            stats.objectives, stats.direction_cosine = tracker.result()
        return (chunks[0] if len(chunks) == 1 else torch.cat(chunks)), stats, ctx

    @staticmethod
    def _measure(groups: list[list[Term]], ctx: ObjectiveContext, chunks: list[torch.Tensor],
                 classifier: Classifier) -> list[float]:
        """Each objective's unweighted value at its ``f*`` (one more forward pass per ``f*``, in the attack's mode)."""
        with torch.no_grad():
            return [float(t.module(ctx, c, logits_of(classifier, c))) for terms, c in zip(groups, chunks)
                    for t in terms]

    def _context(self, call: _Call, f0: torch.Tensor, logits: torch.Tensor) -> ObjectiveContext:
        """The objectives' context, its clean logits from the caller, else from the first attack pass (at f0)."""
        clean_logits = call.clean_logits
        if clean_logits is None:
            if self.random_start:
                with torch.no_grad():
                    clean_logits = logits_of(call.classifier, f0)
            else:
                clean_logits = logits
        if call.labels is not None:
            check_label_values(call.labels, clean_logits.shape[1], self.ignore_index)
        return ObjectiveContext(call.classifier, call.domain, clean_logits.detach(), call.labels, call.discriminator,
                                self.discriminator_input, call.output_size, self.ignore_index, call.class_weights,
                                call.pixel_weights, call.align_corners, self.upsample)

    def _control(self, term: Term, f0: torch.Tensor,
                 call: _Call) -> tuple[torch.Tensor, PerturbStats, ObjectiveContext]:
        """f* of a gradient-free control: one displacement at the attack's radius, no backward pass."""
        logits = call.clean_logits
        if logits is None:
            with torch.no_grad(), frozen_state(*call.heads, bn_mode=self.bn_mode):
                logits = logits_of(call.classifier, f0)
        call = replace(call, clean_logits=logits)
        ctx = self._context(call, f0, logits)
        with torch.no_grad():
            delta = term.module.displacement(f0.float(), self._radius(f0, self.eps), self.norm)  # type: ignore
        perturbed = (f0.float() + delta).to(f0.dtype).contiguous().detach()
        return perturbed, _summary(delta, position_norm(f0), position_norm(delta) > 0, 0.0), ctx

    def forward(self, features: torch.Tensor, classifier: Classifier, *, labels: Optional[torch.Tensor] = None,
                domain: str = "source", discriminator: Optional[nn.Module] = None,
                clean_logits: Optional[torch.Tensor] = None, output_size: Optional[tuple[int, int]] = None,
                class_weights: Optional[torch.Tensor] = None, pixel_weights: Optional[torch.Tensor] = None,
                modules: Optional[Sequence[nn.Module]] = None,
                clean_discriminator_output: Optional[torch.Tensor] = None) -> PerturbResult:
        """Perturb ``features`` and return the weighted defense loss on ``classifier(f*)``.

        The defense compares like with like: where the clean logits at hand may come from another mode than the
        defense pass (a head with BatchNorm or dropout), the clean reference is one more no-grad head forward in
        the defense pass's mode (:mod:`~uda_perturb.defense_pass`), so at ``eps -> 0`` every defense loss -> 0.
        """
        attacks, call = self._prepare(features, classifier, labels, domain, discriminator, clean_logits, output_size,
                                      class_weights, pixel_weights, modules, clean_discriminator_output)
        perturbed, stats, ctx = self._perturb(attacks, call)
        heads = call.heads
        groups = self._groups(attacks)
        chunks = perturbed.chunk(len(groups)) if len(groups) > 1 else (perturbed,)
        f0 = features.detach()
        defenses = self._defenses_for(domain)
        # the clean reference only where something reads it: a defense comparing with the clean prediction, the
        # per-objective statistics or the attack loss at f* (a label-based ce alone does not)
        read = (any(getattr(t.module, "reads_clean", True) for t in defenses) or bool(stats.objectives)
                or self.track_attack_loss)
        reference = read and needs_reference(heads, self.defense_bn_mode, clean_logits is not None, self.bn_mode)
        adv, refs = defense_logits(classifier, chunks, f0, heads, self.defense_bn_mode, reference)
        ctxs = [ctx] * len(adv) if refs is None else [replace(ctx, clean_logits=r) for r in refs]
        if self.track_attack_loss and not _is_control(attacks):
            with torch.no_grad(), frozen_state(discriminator):  # attack loss at f*, from the defense's own pass
                stats.attack_loss_after = sum(float(t.weight * t.module(c, x, a.detach())) for terms, c, x, a
                                              in zip(groups, ctxs, chunks, adv) for t in terms)
        if stats.objectives:
            self._objective_losses(stats, groups, ctxs, f0, chunks, adv, discriminator, refs is not None)
        if len(adv) == 1:
            adv_logits = adv[0]
            losses = {t.name: t.weight * t.module(ctxs[0], adv_logits) for t in defenses}
        else:  # the defense of each objective's f*, averaged
            adv_logits = torch.cat(adv)
            losses = {t.name: t.weight * sum(t.module(c, a) for c, a in zip(ctxs, adv)) / len(adv) for t in defenses}
        total = sum(losses.values())
        return PerturbResult(perturbed, total, losses, stats, adv_logits)  # type: ignore[arg-type]

    @staticmethod
    def _objective_losses(stats: PerturbStats, groups: list[list[Term]], ctxs: list[ObjectiveContext],
                          f0: torch.Tensor, chunks: Sequence[torch.Tensor], adv: list[torch.Tensor],
                          discriminator: Optional[nn.Module], new_reference: bool) -> None:
        """Each objective's loss at ``f*`` from the defense pass's logits, and at the clean features from the
        reference of the same mode when the attack's own clean value came from another mode (or a random start)."""
        names = list(stats.objectives)
        with torch.no_grad(), frozen_state(discriminator):
            k = 0
            for terms, c, x, a in zip(groups, ctxs, chunks, adv):
                for t in terms:
                    s = stats.objectives[names[k]]
                    s.loss_perturbed = float(t.module(c, x, a.detach()))
                    if new_reference or not finite(s.loss_clean):  # not measured at f0 (a random start)
                        s.loss_clean = float(t.module(c, f0, c.clean_logits))
                    k += 1


_Gradients = tuple[list[torch.Tensor], Optional[torch.Tensor], Optional[list[torch.Tensor]]]


@dataclass
class _Call:
    """What one call passes through the attack: the classifier and the modules behind it, and the data."""

    features: torch.Tensor  # as the caller gave them (attached to its graph)
    classifier: Classifier
    heads: list[nn.Module]
    labels: Optional[torch.Tensor]
    domain: str
    discriminator: Optional[nn.Module]
    clean_logits: Optional[torch.Tensor]
    output_size: Optional[tuple[int, int]]
    class_weights: Optional[torch.Tensor]
    pixel_weights: Optional[torch.Tensor]
    align_corners: bool
    discriminator_output: Optional[torch.Tensor] = None  # the caller's D forward on the clean maps, with its graph


def _is_control(attacks: list[Term]) -> bool:
    return bool(getattr(attacks[0].module, "gradient_free", False))


def perturb_and_defend(features: torch.Tensor, classifier: Classifier, *, labels: Optional[torch.Tensor] = None,
                       domain: str = "source", discriminator: Optional[nn.Module] = None,
                       attacks: Optional[ObjectiveSpec] = None, defenses: Optional[ObjectiveSpec] = None,
                       eps: float = 0.1, steps: int = 1, clean_logits: Optional[torch.Tensor] = None,
                       output_size: Optional[tuple[int, int]] = None,
                       class_weights: Optional[torch.Tensor] = None, pixel_weights: Optional[torch.Tensor] = None,
                       modules: Optional[Sequence[nn.Module]] = None,
                       clean_discriminator_output: Optional[torch.Tensor] = None, **settings: Any) -> PerturbResult:
    """Perturb each position of ``features`` adversarially and return the classifier's defense loss.

    Example::

        f = seg.features(x_s)
        out = perturb_and_defend(f, seg.classifier, labels=y_s, domain="source",
                                 attacks=["classifier", "discriminator"], discriminator=D, eps=0.1)
        (seg_loss + out.loss).backward()

    Further keyword ``settings`` go to :class:`Perturber` (``alpha``, ``norm``, ``eps_mode``,
    ``random_start``, ``project``, ``bn_mode``, ``discriminator_input``, ``attack_weights``, ...).
    ``class_weights`` weight the source ``ce`` defense per class, as the training's supervised CE does;
    ``pixel_weights`` weight its label pixels (self-training's mixed labels). ``attacks="random"`` or
    ``"dropout"`` runs a gradient-free control instead of an attack, at the same radius. ``classifier`` may be
    any callable from features to logits; the modules behind it are found and frozen during the attack
    (``modules=[...]`` names them where they cannot be found). ``clean_discriminator_output``: D's output on the
    clean maps from the caller's own forward, which the first attack step then reuses (:meth:`Perturber.perturb`).
    """
    check_settings(settings)
    perturber = Perturber(attacks, defenses, eps=eps, steps=steps, **settings)
    return perturber(features, classifier, labels=labels, domain=domain, discriminator=discriminator,
                     clean_logits=clean_logits, output_size=output_size, class_weights=class_weights,
                     pixel_weights=pixel_weights, modules=modules,
                     clean_discriminator_output=clean_discriminator_output)


def check_settings(settings: dict[str, Any]) -> None:
    """Refuse a keyword neither ``perturb_and_defend`` nor :class:`Perturber` takes, suggesting the closest."""
    known = _known_settings()
    for key in settings:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(f"perturb_and_defend() got an unexpected keyword argument {key!r}{hint}")


@functools.lru_cache(maxsize=1)
def _known_settings() -> tuple[str, ...]:
    """The keywords ``perturb_and_defend`` takes, read once rather than two signatures read in every call."""
    return tuple([n for n, p in inspect.signature(Perturber.__init__).parameters.items()
                  if p.kind == p.KEYWORD_ONLY] + list(inspect.signature(perturb_and_defend).parameters))
