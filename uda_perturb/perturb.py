"""Pointwise adversarial perturbation of feature maps (APODA) and the defense built on it.

``Perturber`` holds the settings; ``perturb_and_defend`` is the one-call entry point that any UDA loop
adds on the features it already computed (no extra backbone pass).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from .losses import IGNORE_INDEX
from .model_state import frozen_state
from .models.discriminators import DISCRIMINATOR_INPUTS
from .objective_context import Classifier, ObjectiveContext
from .registry import ATTACKS, DEFENSES, Registry

NORMS = ("l2", "linf")
EPS_MODES = ("absolute", "relative")
DOMAINS = ("source", "target")
_TINY = 1e-12

ObjectiveSpec = Union[str, Mapping[str, Any], nn.Module, Sequence[Union[str, Mapping[str, Any], nn.Module]]]


@dataclass
class PerturbStats:
    """Summary of one perturbation: per-position L2 norms of ``f* - f`` and the share of positions moved."""

    mean_norm: float
    max_norm: float
    mean_relative_norm: float
    fraction_perturbed: float
    attack_loss_before: float
    attack_loss_after: Optional[float] = None


@dataclass
class PerturbResult:
    """What ``perturb_and_defend`` returns. ``loss`` trains the classifier (``perturbed`` is detached)."""

    perturbed: torch.Tensor
    loss: torch.Tensor
    losses: dict[str, torch.Tensor]
    stats: PerturbStats
    adv_logits: torch.Tensor


@dataclass
class _Term:
    name: str
    weight: float
    module: nn.Module


def _resolve(registry: Registry, spec: ObjectiveSpec, weights: Optional[Mapping[str, float]]) -> list[_Term]:
    """Turn names / ``{name: weight}`` / ``{"name":..., "weight":..., **kw}`` / modules into weighted terms."""
    if isinstance(spec, (str, nn.Module)):
        spec = [spec]
    elif isinstance(spec, Mapping) and "name" not in spec:  # {name: weight}
        spec = [{"name": k, "weight": v} for k, v in spec.items()]
    elif isinstance(spec, Mapping):
        spec = [spec]
    terms = []
    for item in spec:
        if isinstance(item, nn.Module):
            name, weight, module = type(item).__name__, 1.0, item
        elif isinstance(item, str):
            name, weight, module = item, 1.0, registry.build(item)
        else:
            cfg = dict(item)
            weight = float(cfg.pop("weight", 1.0))
            name = cfg["name"]
            module = registry.build(cfg)
        if weights and name in weights:
            weight = float(weights[name])
        terms.append(_Term(name, weight, module))
    if not terms:
        raise ValueError(f"at least one {registry.kind} is needed")
    return terms


def _position_norm(x: torch.Tensor) -> torch.Tensor:
    return x.float().norm(dim=1, keepdim=True)


def _summary(delta: torch.Tensor, f0: torch.Tensor, moved: torch.Tensor, loss_before: float,
             loss_after: Optional[float]) -> PerturbStats:
    """Per-position norms of the displacement ``delta`` of ``f0``, and the share of positions ``moved``."""
    norms = _position_norm(delta)
    rel = norms / (_position_norm(f0) + _TINY)
    return PerturbStats(float(norms.mean()), float(norms.max()), float(rel.mean()), float(moved.float().mean()),
                        loss_before, loss_after)


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
        discriminator_input: what D sees: ``softmax`` of logits, ``entropy`` map, or ``features``.
        channels_last: run the attack's passes on channels-last features (same values; on CPU the input
            gradient of a dilated ASPP head is about 3x faster this way).
        track_attack_loss: also evaluate the attack objective at ``f*`` (``stats.attack_loss_after``); this
            costs one more discriminator pass, so it is off by default.
    """

    def __init__(self, attacks: Optional[ObjectiveSpec] = None, defenses: Optional[ObjectiveSpec] = None, *,
                 eps: float = 0.1, steps: int = 1, alpha: Optional[float] = None, norm: str = "l2",
                 eps_mode: str = "relative", random_start: bool = False, project: bool = True,
                 bn_mode: str = "eval", discriminator_input: str = "softmax",
                 attack_weights: Optional[Mapping[str, float]] = None,
                 defense_weights: Optional[Mapping[str, float]] = None,
                 ignore_index: int = IGNORE_INDEX, channels_last: bool = True,
                 track_attack_loss: bool = False) -> None:
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
        if discriminator_input not in DISCRIMINATOR_INPUTS:
            raise ValueError(f"discriminator_input must be one of {DISCRIMINATOR_INPUTS}, got {discriminator_input!r}")
        self.eps, self.steps, self.norm, self.eps_mode = float(eps), int(steps), norm, eps_mode
        self.alpha = float(alpha) if alpha is not None else self.eps / self.steps
        self.random_start, self.project, self.bn_mode = random_start, project, bn_mode
        self.discriminator_input, self.ignore_index = discriminator_input, ignore_index
        self.channels_last, self.track_attack_loss = channels_last, track_attack_loss
        self._attack_spec, self._defense_spec = attacks, defenses
        self._attack_weights, self._defense_weights = attack_weights, defense_weights
        self.attack_terms = _resolve(ATTACKS, attacks, attack_weights) if attacks is not None else None
        self.defense_terms = _resolve(DEFENSES, defenses, defense_weights) if defenses is not None else None
        self._default_terms: dict[str, list[_Term]] = {}

    # ----------------------------------------------------------------------------------------- helpers
    def _attacks_for(self, discriminator: Optional[nn.Module]) -> list[_Term]:
        if self.attack_terms is not None:
            return self.attack_terms
        key = f"attacks:{discriminator is not None}"
        if key not in self._default_terms:  # built once: the default recipe depends only on having a D
            names = ["classifier"] + (["discriminator"] if discriminator is not None else [])
            self._default_terms[key] = _resolve(ATTACKS, names, self._attack_weights)
        return self._default_terms[key]

    def _defenses_for(self, domain: str) -> list[_Term]:
        if self.defense_terms is not None:
            return self.defense_terms
        key = f"defenses:{domain}"
        if key not in self._default_terms:
            self._default_terms[key] = _resolve(DEFENSES, "ce" if domain == "source" else "kl", self._defense_weights)
        return self._default_terms[key]

    def _radius(self, f0: torch.Tensor, value: float) -> torch.Tensor:
        """Per-position radius ``B x 1 x h x w`` (or a scalar tensor for absolute eps)."""
        if self.eps_mode == "absolute":
            return torch.tensor(value, dtype=torch.float32, device=f0.device)
        scale = _position_norm(f0)
        if self.norm == "linf":
            scale = scale / f0.shape[1] ** 0.5
        return value * scale

    def _direction(self, g: torch.Tensor) -> torch.Tensor:
        if self.norm == "l2":
            return g / (_position_norm(g) + _TINY)
        return g.sign()

    def _project(self, delta: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
        if self.norm == "l2":
            n = _position_norm(delta)
            return delta * torch.clamp(radius / (n + _TINY), max=1.0)
        return torch.maximum(torch.minimum(delta, radius), -radius)

    def _random_start(self, f0: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
        if self.norm == "l2":
            d = torch.randn(f0.shape, device=f0.device, dtype=torch.float32)
            u = torch.rand((f0.shape[0], 1, *f0.shape[2:]), device=f0.device)
            return d / (_position_norm(d) + _TINY) * radius * u
        return (torch.rand(f0.shape, device=f0.device) * 2 - 1) * radius

    def _validate(self, features: torch.Tensor, labels: Optional[torch.Tensor], domain: str,
                  discriminator: Optional[nn.Module], attacks: list[_Term], defenses: list[_Term]) -> None:
        if not isinstance(features, torch.Tensor) or features.dim() != 4:
            shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise ValueError(f"features must be a B x C x h x w tensor, got {shape}")
        if not features.is_floating_point():
            raise TypeError(f"features must be floating point, got {features.dtype}")
        if not bool(torch.isfinite(features).all()):
            raise ValueError("features contain NaN or Inf; refusing to perturb them")
        if domain not in DOMAINS:
            raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")
        if labels is not None:
            if labels.dim() != 3 or labels.shape[0] != features.shape[0]:
                raise ValueError(f"labels must be B x H x W with B={features.shape[0]}, got {tuple(labels.shape)}")
            if labels.is_floating_point():
                raise TypeError(f"labels must be an integer tensor, got {labels.dtype}")
        controls = [t.name for t in attacks if getattr(t.module, "gradient_free", False)]
        if controls and len(attacks) > 1:
            raise ValueError(f"control perturbation {controls[0]!r} replaces the attacks: use it alone, not with "
                             f"{[t.name for t in attacks if t.name not in controls]}")
        for t in attacks:
            if getattr(t.module, "needs_discriminator", False) and discriminator is None:
                raise ValueError(f"attack {t.name!r} needs a discriminator: pass discriminator=...")
        for t in defenses:
            if getattr(t.module, "needs_labels", False) and labels is None:
                raise ValueError(f"defense {t.name!r} needs labels (source data); use 'kl', 'entropy' or "
                                 "'pseudo_ce' on target data")

    @staticmethod
    def _check_label_values(labels: torch.Tensor, num_classes: int, ignore_index: int) -> None:
        bad = (labels != ignore_index) & ((labels < 0) | (labels >= num_classes))
        if bool(bad.any()):
            vals = sorted(set(labels[bad].unique().tolist()))[:10]
            raise ValueError(f"labels hold values {vals} outside [0, {num_classes}) other than the ignore "
                             f"index {ignore_index}")

    @staticmethod
    def _attack_loss(terms: list[_Term], ctx: ObjectiveContext, f: torch.Tensor,
                     logits: Optional[torch.Tensor] = None) -> torch.Tensor:
        logits = ctx.classifier(f) if logits is None else logits
        return sum(t.weight * t.module(ctx, f, logits) for t in terms)  # type: ignore[return-value]

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
        A gradient-free control (``random``, ``dropout``) in place of the attacks displaces the features
        directly: no gradient pass, the same radius.
        """
        attacks = self._attacks_for(discriminator)
        self._validate(features, labels, domain, discriminator, attacks, self._defenses_for(domain))
        f0 = features.detach()
        if getattr(attacks[0].module, "gradient_free", False):
            return self._control(attacks[0], f0, classifier, labels, domain, discriminator, clean_logits,
                                 output_size, class_weights, pixel_weights)
        modules = [m for m in (classifier, discriminator) if isinstance(m, nn.Module)]
        with frozen_state(*modules, bn_mode=self.bn_mode), torch.enable_grad():
            radius = self._radius(f0, self.eps)
            alpha = self._radius(f0, self.alpha)
            delta = self._random_start(f0, radius) if self.random_start else torch.zeros_like(f0, dtype=torch.float32)
            moved = torch.zeros((f0.shape[0], 1, *f0.shape[2:]), dtype=torch.bool, device=f0.device)
            # Scaling the loss by the number of positions keeps fp16 gradients of a pixel-mean loss from
            # underflowing; the direction is normalised, so the scale does not change the result.
            scale = float(f0.shape[0] * f0.shape[2] * f0.shape[3])
            ctx: Optional[ObjectiveContext] = None
            loss_before = 0.0
            for step in range(self.steps):
                f = (f0.float() + delta).to(f0.dtype)
                if self.channels_last:  # input gradients of (dilated) convs are several times faster so
                    f = f.contiguous(memory_format=torch.channels_last)
                f = f.requires_grad_(True)
                logits = classifier(f)
                if ctx is None:
                    if clean_logits is None:
                        if self.random_start:
                            with torch.no_grad():
                                clean_logits = classifier(f0)
                        else:
                            clean_logits = logits
                    if labels is not None:
                        self._check_label_values(labels, clean_logits.shape[1], self.ignore_index)
                    ctx = ObjectiveContext(classifier, domain, clean_logits.detach(), labels, discriminator,
                                           self.discriminator_input, output_size, self.ignore_index,
                                           class_weights, pixel_weights)
                loss = self._attack_loss(attacks, ctx, f, logits)
                if step == 0:
                    loss_before = float(loss.detach())
                (g,) = torch.autograd.grad(loss * scale, f)
                g = g.float()
                moved |= _position_norm(g) > 0
                delta = delta + alpha * self._direction(g)
                if self.project:
                    delta = self._project(delta, radius)
            delta = delta * moved  # positions without gradient (ignored pixels) stay put
            perturbed = (f0.float() + delta).to(f0.dtype).contiguous().detach()
            loss_after = None
            if measure:
                with torch.no_grad():
                    loss_after = float(self._attack_loss(attacks, ctx, perturbed))  # type: ignore[arg-type]
        assert ctx is not None
        return perturbed, _summary(delta, f0, moved, loss_before, loss_after), ctx

    def _control(self, term: _Term, f0: torch.Tensor, classifier: Classifier, labels: Optional[torch.Tensor],
                 domain: str, discriminator: Optional[nn.Module], clean_logits: Optional[torch.Tensor],
                 output_size: Optional[tuple[int, int]], class_weights: Optional[torch.Tensor],
                 pixel_weights: Optional[torch.Tensor]) -> tuple[torch.Tensor, PerturbStats, ObjectiveContext]:
        """f* of a gradient-free control: one displacement at the attack's radius, no backward pass."""
        if clean_logits is None:
            modules = [m for m in (classifier,) if isinstance(m, nn.Module)]
            with torch.no_grad(), frozen_state(*modules, bn_mode=self.bn_mode):
                clean_logits = classifier(f0)
        if labels is not None:
            self._check_label_values(labels, clean_logits.shape[1], self.ignore_index)
        ctx = ObjectiveContext(classifier, domain, clean_logits.detach(), labels, discriminator,
                               self.discriminator_input, output_size, self.ignore_index, class_weights, pixel_weights)
        with torch.no_grad():
            delta = term.module.displacement(f0.float(), self._radius(f0, self.eps), self.norm)  # type: ignore
        perturbed = (f0.float() + delta).to(f0.dtype).contiguous().detach()
        return perturbed, _summary(delta, f0, _position_norm(delta) > 0, 0.0, None), ctx

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
        adv_logits = classifier(perturbed)
        if self.track_attack_loss:
            with torch.no_grad(), frozen_state(discriminator):  # attack loss at f*, from the defense's own pass
                stats.attack_loss_after = float(
                    self._attack_loss(self._attacks_for(discriminator), ctx, perturbed, adv_logits.detach()))
        losses = {t.name: t.weight * t.module(ctx, adv_logits) for t in self._defenses_for(domain)}
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
    perturber = Perturber(attacks, defenses, eps=eps, steps=steps, **settings)
    return perturber(features, classifier, labels=labels, domain=domain, discriminator=discriminator,
                     clean_logits=clean_logits, output_size=output_size, class_weights=class_weights,
                     pixel_weights=pixel_weights)
