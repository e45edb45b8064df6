"""Pointwise adversarial perturbation of feature maps (APODA) and the defense built on it.

``Perturber`` holds the settings; ``perturb_and_defend`` is the one-call entry point that any UDA loop
adds on the features it already computed (no extra backbone pass).
"""
from __future__ import annotations

import contextlib
import difflib
import inspect
from typing import Any, Mapping, Optional, cast

import torch
from torch import nn

from .attack_combination import (
    COMBINE_MODES,
    ObjectiveTracker,
    balanced_direction,
    objective_gradients,
    position_norm,
    unit_direction,
    unit_l2,
)
from .losses import IGNORE_INDEX
from .model_state import frozen_state
from .models.discriminators import DISCRIMINATOR_INPUTS, DiscriminatorSpace
from .objective_context import Classifier, ObjectiveContext
from .objective_spec import ObjectiveSpec, Term, resolve
from .perturb_checks import check_inputs, check_label_values, logits_of
from .perturb_geometry import project, radius, random_start
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
        align_corners: how logits are upsampled to pixel size for the pixel losses: ``True`` (default, the DeepLab-v2
            references: AdaptSegNet, ADVENT, DACS) or ``False`` (torchvision's and mmseg's models).
        combine: how several attack objectives make one step (one objective: all three are the same).
            ``"balanced"`` (default): each objective's own input gradient is turned into its per-position
            direction (L2: divided by its norm over channels; Linf: its sign), the directions are summed with the
            ``attack_weights``, and the sum is normalised as one objective's gradient would be. Each objective
            then counts by its weight, not by the size of its gradient: on our models the classifier's input
            gradient is 40-230x the discriminator's, and the summed loss steps in the classifier's direction
            alone (cosine 0.9998), leaving the discriminator attack without effect. Costs one more backward
            through the classifier per extra objective (the forward is shared).
            ``"sum"``: the gradient of the weighted sum of the objectives, normalised (the rule before
            ``balanced``; bit for bit the earlier results).
            ``"separate"``: one ``f*`` per objective, each at the full radius; the defense loss is the mean of
            the defense over them, so it costs one more defense pass (classifier forward and backward) per extra
            objective. ``perturbed`` and ``adv_logits`` then hold the objectives' results one after another
            along the batch dimension (``n_objectives * B``), in the order of ``attacks``.
        objective_stats: fill ``stats.objectives`` (per-objective step cosine and gradient-norm ratio). ``None``
            (default): whenever it is free, i.e. with several objectives under ``balanced`` or ``separate``;
            ``True`` also under ``sum``, at the cost of one backward per objective.
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
                 align_corners: bool = True) -> None:
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
        if defense_bn_mode not in ("train", "eval"):
            raise ValueError(f"defense_bn_mode must be 'train' or 'eval', got {defense_bn_mode!r}")
        self.eps, self.steps, self.norm, self.eps_mode = float(eps), int(steps), norm, eps_mode
        self.alpha = float(alpha) if alpha is not None else self.eps / self.steps
        self.random_start, self.project, self.bn_mode = random_start, project, bn_mode
        self.discriminator_input, self.ignore_index = discriminator_input, ignore_index
        self.channels_last, self.track_attack_loss = channels_last, track_attack_loss
        self.combine, self.objective_stats = combine, objective_stats
        self.defense_bn_mode, self.align_corners = defense_bn_mode, align_corners
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

    def _radius(self, f0: torch.Tensor, value: float) -> torch.Tensor:
        return radius(f0, value, self.eps_mode, self.norm)

    def _direction(self, g: torch.Tensor) -> torch.Tensor:
        return unit_direction(g, self.norm)

    def _project(self, delta: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return project(delta, r, self.norm)

    def _random_start(self, f0: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return random_start(f0, r, self.norm)

    @staticmethod
    def _attack_loss(terms: list[Term], ctx: ObjectiveContext, f: torch.Tensor,
                     logits: Optional[torch.Tensor] = None) -> torch.Tensor:
        logits = ctx.classifier(f) if logits is None else logits
        return sum(t.weight * t.module(ctx, f, logits) for t in terms)  # type: ignore[return-value]

    def _groups(self, attacks: list[Term]) -> list[list[Term]]:
        """The objectives that make one ``f*`` together: all of them, or each alone under ``separate``."""
        if self.combine == "separate" and len(attacks) > 1:
            return [[t] for t in attacks]
        return [attacks]

    def _attack_point(self, f0: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        f = (f0.float() + delta).to(f0.dtype)
        if self.channels_last is not None:
            f = f.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        return f.requires_grad_(True)

    def _step(self, terms: list[Term], values: list[torch.Tensor], f: torch.Tensor, scale: float,
              want_parts: bool) -> tuple[torch.Tensor, Optional[list[tuple[torch.Tensor, torch.Tensor]]]]:
        """``(combined gradient, or sum of directions, before normalisation; each objective's (unit gradient,
        gradient norm) when wanted)`` of one attack step (gradients of the weighted terms)."""
        if len(terms) == 1 or self.combine == "sum":
            loss = cast(torch.Tensor, sum(t.weight * v for t, v in zip(terms, values)))
            each = want_parts and len(terms) > 1
            (g,) = torch.autograd.grad(loss * scale, f, retain_graph=each)
            if not want_parts:
                return g.float(), None
            grads = objective_gradients([t.weight * v for t, v in zip(terms, values)], f, scale) if each \
                else [g.float()]
            return g.float(), [unit_l2(x) for x in grads]
        # balanced: gradients of the weighted terms, so that a negative weight turns its direction round
        grads = objective_gradients([t.weight * v for t, v in zip(terms, values)], f, scale)
        parts = [unit_l2(g) for g in grads]
        combined = balanced_direction(grads, [u for u, _ in parts], [abs(t.weight) for t in terms], self.norm)
        return combined, parts

    # --------------------------------------------------------------------------------------- public API
    def perturb(self, features: torch.Tensor, classifier: Classifier, *, labels: Optional[torch.Tensor] = None,
                domain: str = "source", discriminator: Optional[nn.Module] = None,
                clean_logits: Optional[torch.Tensor] = None, output_size: Optional[tuple[int, int]] = None,
                measure: bool = False, class_weights: Optional[torch.Tensor] = None,
                pixel_weights: Optional[torch.Tensor] = None,
                ) -> tuple[torch.Tensor, PerturbStats, ObjectiveContext]:
        """Return ``(f*, stats, ctx)``: the detached perturbed features and what the attack did.

        Gradients are taken with ``torch.autograd.grad`` with respect to the features only: no parameter
        ``.grad`` is written, and BatchNorm/dropout of the classifier and discriminator are frozen.
        Pass ``clean_logits`` when the caller already has ``classifier(features)``; without them (and without
        a random start) the first attack step's forward pass provides them, so no pass is wasted.
        ``measure=True`` spends one more forward pass to fill ``stats.attack_loss_after``.
        ``class_weights`` weight the label-based ``ce`` defense per class (attacks stay unweighted: an L2
        step is normalised per position, so they only set directions); ``pixel_weights`` (``B x H x W``) weight
        its label pixels, as self-training weighs pseudo-labels.
        Several objectives make one step by the ``combine`` rule; under ``separate`` ``f*`` holds one result
        per objective along the batch dimension. Every objective shares the classifier's forward pass.
        A gradient-free control (``random``, ``dropout``) in place of the attacks displaces the features
        directly: no gradient pass, the same radius.
        """
        attacks = self._attacks_for(discriminator)
        labels = check_inputs(features, labels, domain, discriminator, attacks, self._defenses_for(domain),
                              clean_logits, output_size, self.discriminator_input)
        f0 = features.detach()
        if getattr(attacks[0].module, "gradient_free", False):
            return self._control(attacks[0], f0, classifier, labels, domain, discriminator, clean_logits,
                                 output_size, class_weights, pixel_weights)
        groups = self._groups(attacks)
        want_grads = len(attacks) > 1 and (self.combine != "sum" if self.objective_stats is None
                                           else self.objective_stats)
        tracker = ObjectiveTracker([t.name for t in attacks]) if want_grads else None
        modules = [m for m in (classifier, discriminator) if isinstance(m, nn.Module)]
        with frozen_state(*modules, bn_mode=self.bn_mode), torch.enable_grad():
            radius = self._radius(f0, self.eps)
            alpha = self._radius(f0, self.alpha)
            deltas = [self._random_start(f0, radius) if self.random_start else torch.zeros_like(f0, dtype=torch.float32)
                      for _ in groups]
            moved = [torch.zeros((f0.shape[0], 1, *f0.shape[2:]), dtype=torch.bool, device=f0.device) for _ in groups]
            # Scaling the loss by the number of positions keeps fp16 gradients of a pixel-mean loss from
            # underflowing; the direction is normalised, so the scale does not change the result.
            scale = float(f0.shape[0] * f0.shape[2] * f0.shape[3])
            ctx: Optional[ObjectiveContext] = None
            loss_before = 0.0
            for step in range(self.steps):
                # ``separate`` from f0: every objective starts at the same point, so one pass serves them all
                shared: Optional[list[torch.Tensor]] = None
                if len(groups) > 1 and step == 0 and not self.random_start:
                    f = self._attack_point(f0, deltas[0])
                    logits = logits_of(classifier, f)
                    ctx = self._context(classifier, f0, logits, clean_logits, labels, domain, discriminator,
                                        output_size, class_weights, pixel_weights)
                    values = [t.weight * t.module(ctx, f, logits) for t in attacks]
                    loss_before = float(sum(v.detach() for v in values))
                    shared = objective_gradients(values, f, scale)
                tracked: tuple[list, list, list] = ([], [], [])  # each objective's unit gradient, norm, step
                for i, terms in enumerate(groups):
                    parts: Optional[list[tuple[torch.Tensor, torch.Tensor]]]
                    if shared is not None:
                        combined, parts = shared[i], ([unit_l2(shared[i])] if want_grads else None)
                    else:
                        f = self._attack_point(f0, deltas[i])
                        logits = logits_of(classifier, f)
                        if ctx is None:
                            ctx = self._context(classifier, f0, logits, clean_logits, labels, domain, discriminator,
                                                output_size, class_weights, pixel_weights)
                        values = [t.module(ctx, f, logits) for t in terms]
                        if step == 0:
                            loss_before += float(sum(t.weight * v.detach() for t, v in zip(terms, values)))
                        combined, parts = self._step(terms, values, f, scale, want_grads)
                    moved[i] |= position_norm(combined) > 0
                    direction = self._direction(combined)
                    deltas[i] = deltas[i] + alpha * direction
                    if self.project:
                        deltas[i] = self._project(deltas[i], radius)
                    if parts is not None:
                        tracked[0].extend(u for u, _ in parts)
                        tracked[1].extend(n for _, n in parts)
                        tracked[2].extend([direction] * len(parts))
                if tracker is not None:
                    tracker.record(*tracked)
            deltas = [d * m for d, m in zip(deltas, moved)]  # positions without gradient (ignored pixels) stay put
            chunks = [(f0.float() + d).to(f0.dtype).contiguous().detach() for d in deltas]
            perturbed = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
            loss_after = None
            if measure:
                with torch.no_grad():
                    assert ctx is not None
                    loss_after = 0.0
                    for terms, c in zip(groups, chunks):
                        loss_after += float(self._attack_loss(terms, ctx, c))
        assert ctx is not None
        stats = _summary(torch.cat(deltas), f0.repeat(len(groups), 1, 1, 1), torch.cat(moved), loss_before,
                         loss_after)
        if tracker is not None:
            stats.objectives = tracker.result()
        return perturbed, stats, ctx

    def _context(self, classifier: Classifier, f0: torch.Tensor, logits: torch.Tensor,
                 clean_logits: Optional[torch.Tensor], labels: Optional[torch.Tensor], domain: str,
                 discriminator: Optional[nn.Module], output_size: Optional[tuple[int, int]],
                 class_weights: Optional[torch.Tensor], pixel_weights: Optional[torch.Tensor]) -> ObjectiveContext:
        """The objectives' context, its clean logits from the caller, else from the first attack pass (at f0)."""
        if clean_logits is None:
            if self.random_start:
                with torch.no_grad():
                    clean_logits = classifier(f0)
            else:
                clean_logits = logits
        if labels is not None:
            check_label_values(labels, clean_logits.shape[1], self.ignore_index)
        return ObjectiveContext(classifier, domain, clean_logits.detach(), labels, discriminator,
                                self.discriminator_input, output_size, self.ignore_index, class_weights, pixel_weights,
                                self.align_corners)

    def _control(self, term: Term, f0: torch.Tensor, classifier: Classifier, labels: Optional[torch.Tensor],
                 domain: str, discriminator: Optional[nn.Module], clean_logits: Optional[torch.Tensor],
                 output_size: Optional[tuple[int, int]], class_weights: Optional[torch.Tensor],
                 pixel_weights: Optional[torch.Tensor]) -> tuple[torch.Tensor, PerturbStats, ObjectiveContext]:
        """f* of a gradient-free control: one displacement at the attack's radius, no backward pass."""
        if clean_logits is None:
            modules = [m for m in (classifier,) if isinstance(m, nn.Module)]
            with torch.no_grad(), frozen_state(*modules, bn_mode=self.bn_mode):
                clean_logits = logits_of(classifier, f0)
        if labels is not None:
            check_label_values(labels, clean_logits.shape[1], self.ignore_index)
        ctx = ObjectiveContext(classifier, domain, clean_logits.detach(), labels, discriminator,
                               self.discriminator_input, output_size, self.ignore_index, class_weights, pixel_weights,
                               self.align_corners)
        with torch.no_grad():
            delta = term.module.displacement(f0.float(), self._radius(f0, self.eps), self.norm)  # type: ignore
        perturbed = (f0.float() + delta).to(f0.dtype).contiguous().detach()
        return perturbed, _summary(delta, f0, position_norm(delta) > 0, 0.0, None), ctx

    def forward(self, features: torch.Tensor, classifier: Classifier, *, labels: Optional[torch.Tensor] = None,
                domain: str = "source", discriminator: Optional[nn.Module] = None,
                clean_logits: Optional[torch.Tensor] = None, output_size: Optional[tuple[int, int]] = None,
                class_weights: Optional[torch.Tensor] = None,
                pixel_weights: Optional[torch.Tensor] = None) -> PerturbResult:
        """Perturb ``features`` and return the weighted defense loss on ``classifier(f*)``."""
        perturbed, stats, ctx = self.perturb(features, classifier, labels=labels, domain=domain,
                                             discriminator=discriminator, clean_logits=clean_logits,
                                             output_size=output_size, class_weights=class_weights,
                                             pixel_weights=pixel_weights)
        attacks = self._attacks_for(discriminator)
        groups = [attacks] if getattr(attacks[0].module, "gradient_free", False) else self._groups(attacks)
        chunks = perturbed.chunk(len(groups)) if len(groups) > 1 else (perturbed,)
        modules = [m for m in (classifier,) if isinstance(m, nn.Module)]
        mode = frozen_state(*modules) if self.defense_bn_mode == "eval" else contextlib.nullcontext()
        with mode:  # under ``separate``: one defense pass per objective's f*
            adv = [logits_of(classifier, c) for c in chunks]
        if self.track_attack_loss:
            with torch.no_grad(), frozen_state(discriminator):  # attack loss at f*, from the defense's own pass
                stats.attack_loss_after = sum(float(self._attack_loss(terms, ctx, c, a.detach()))
                                              for terms, c, a in zip(groups, chunks, adv))
        defenses = self._defenses_for(domain)
        if len(adv) == 1:
            adv_logits = adv[0]
            losses = {t.name: t.weight * t.module(ctx, adv_logits) for t in defenses}
        else:  # the defense of each objective's f*, averaged
            adv_logits = torch.cat(adv)
            losses = {t.name: t.weight * sum(t.module(ctx, a) for a in adv) / len(adv) for t in defenses}
        total = sum(losses.values())
        return PerturbResult(perturbed, total, losses, stats, adv_logits)  # type: ignore[arg-type]


def perturb_and_defend(features: torch.Tensor, classifier: Classifier, *, labels: Optional[torch.Tensor] = None,
                       domain: str = "source", discriminator: Optional[nn.Module] = None,
                       attacks: Optional[ObjectiveSpec] = None, defenses: Optional[ObjectiveSpec] = None,
                       eps: float = 0.1, steps: int = 1, clean_logits: Optional[torch.Tensor] = None,
                       output_size: Optional[tuple[int, int]] = None,
                       class_weights: Optional[torch.Tensor] = None, pixel_weights: Optional[torch.Tensor] = None,
                       **settings: Any) -> PerturbResult:
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
    ``"dropout"`` runs a gradient-free control instead of an attack, at the same radius.
    """
    check_settings(settings)
    perturber = Perturber(attacks, defenses, eps=eps, steps=steps, **settings)
    return perturber(features, classifier, labels=labels, domain=domain, discriminator=discriminator,
                     clean_logits=clean_logits, output_size=output_size, class_weights=class_weights,
                     pixel_weights=pixel_weights)


def check_settings(settings: dict[str, Any]) -> None:
    """Refuse a keyword neither ``perturb_and_defend`` nor :class:`Perturber` takes, suggesting the closest."""
    known = [n for n, p in inspect.signature(Perturber.__init__).parameters.items()
             if p.kind == p.KEYWORD_ONLY] + list(inspect.signature(perturb_and_defend).parameters)
    for key in settings:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(f"perturb_and_defend() got an unexpected keyword argument {key!r}{hint}")
