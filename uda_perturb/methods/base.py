"""What every UDA method shares: the step template, typed step results, discriminator plumbing."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch import nn

from ..losses import SOURCE_LABEL, TARGET_LABEL, bce_to, seg_ce, upsample
from ..models.discriminators import discriminator_input
from ..models.segmentor import Segmentor, SegmentorOutput
from ..registry import DISCRIMINATORS


@dataclass
class StepState:
    """Everything one step computed, shared by the method's losses and by add-ons (no second backbone pass).

    Logits in ``source``/``target`` are at feature resolution; ``source_size``/``target_size`` are the input
    sizes every pixel loss upsamples to.
    """

    source: SegmentorOutput
    labels: torch.Tensor
    source_size: tuple[int, int]
    target: Optional[SegmentorOutput] = None
    target_size: Optional[tuple[int, int]] = None
    # self-training: the student on mixed images, their labels and per-pixel label weights (B x H x W)
    mixed: Optional[SegmentorOutput] = None
    mixed_labels: Optional[torch.Tensor] = None
    mixed_weights: Optional[torch.Tensor] = None
    # self-training: the teacher's pseudo-labels and their weights on the target batch (B x H x W), and the
    # image it labelled (the target image without photometric jitter), for add-ons such as MIC
    pseudo_labels: Optional[torch.Tensor] = None
    pseudo_weights: Optional[torch.Tensor] = None
    teacher_image: Optional[torch.Tensor] = None
    # the step's batches as the trainer handed them over, for add-ons that read images (feature distance)
    source_batch: Optional[dict] = None
    target_batch: Optional[dict] = None
    # each level's D output on the target maps in G's adversarial loss, with its graph: the perturbation add-on's
    # first attack step reuses it instead of a D forward of its own
    target_discriminator_outputs: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class StepResult:
    """Losses of one training step (floats, for logging) and the perturbation statistics if any."""

    generator_losses: dict[str, float]
    discriminator_losses: dict[str, float] = field(default_factory=dict)
    perturbation: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.generator_losses.values())

    def flat(self) -> dict[str, float]:
        """One flat mapping for progress bars and JSON logs."""
        out = {f"g/{k}": v for k, v in self.generator_losses.items()}
        out.update({f"d/{k}": v for k, v in self.discriminator_losses.items()})
        out.update({f"perturb/{k}": v for k, v in self.perturbation.items()})
        return out


def sum_losses(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    """The sum of the loss terms, in their order (as built-in ``sum``, typed)."""
    terms = list(losses.values())
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total


@contextlib.contextmanager
def no_param_grads(module: Optional[nn.Module]) -> Iterator[None]:
    """Temporarily stop ``module``'s parameters from collecting gradients (D while training G)."""
    if module is None:
        yield
        return
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class UDAMethod(nn.Module):
    """Base class of methods (registry ``METHODS``).

    ``training_step(source_batch, target_batch)`` runs the forward passes, computes the generator losses
    (the method's own plus every add-on's), calls ``self.backward`` on them, then on the discriminator losses,
    and returns a :class:`StepResult`. It never calls an optimizer: the trainer steps, schedules, accumulates
    and synchronises. Batches are dicts with ``image`` and (source) ``label``.
    """

    uses_target: bool = True
    discriminator_space: str = "softmax"
    # how the images are normalised (``data.*.transforms.normalize``); the trainer sets it, so that methods
    # that augment batches (DACS's colour jitter) can go back to RGB in [0, 1]
    input_normalization: str = "imagenet"
    # whether this step's statistics will be logged: the trainer sets it before each step (only every
    # train.log_every-th step is logged), so that add-ons skip statistics nobody reads (the attack's per-objective
    # losses at f* cost a discriminator forward)
    record_stats: bool = True

    def __init__(self, segmentor: Segmentor, addons: Sequence[nn.Module] = (), seg_aux_weight: float = 0.1) -> None:
        super().__init__()
        self.segmentor = segmentor
        self.discriminators = nn.ModuleDict()
        self.addons = nn.ModuleList(addons)
        self.seg_aux_weight = seg_aux_weight
        # per-class weights of the supervised source CE (None = plain CE); not saved: the config recreates them
        self.register_buffer("class_weights", None, persistent=False)
        self.backward: Callable[[torch.Tensor], None] = lambda loss: loss.backward()

    # ------------------------------------------------------------------ helpers for subclasses
    @property
    def num_classes(self) -> int:
        assert self.segmentor.num_classes is not None
        return self.segmentor.num_classes

    @property
    def align_corners(self) -> bool:
        """How every pixel loss and D's input upsample logits: the network's convention
        (:attr:`Segmentor.align_corners`: ``False`` on the DAFormer / SegFormer heads as mmseg, else ``True``)."""
        return self.segmentor.align_corners

    def add_discriminators(self, name: str = "fc", weights: Sequence[float] = (0.001, 0.0002), ndf: int = 64,
                           space: Optional[str] = None) -> None:
        """One discriminator per level (main, and aux when the segmentor is multi-level)."""
        space = space or self.discriminator_space
        in_ch = self.segmentor.backbone.out_channels if space == "features" else self.num_classes
        self.discriminator_space = space
        self.adv_weights = {"main": weights[0]}
        self.discriminators["main"] = DISCRIMINATORS.build(name, in_channels=in_ch, ndf=ndf)
        if self.segmentor.aux_head is not None:
            aux_ch = self.segmentor.backbone.aux_channels if space == "features" else self.num_classes
            self.discriminators["aux"] = DISCRIMINATORS.build(name, in_channels=aux_ch, ndf=ndf)
            self.adv_weights["aux"] = weights[1] if len(weights) > 1 else weights[0] / 5

    def levels(self, out: SegmentorOutput, size: tuple[int, int]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """``{level: (features, upsampled logits)}`` for main and (if present) aux."""
        ac = self.align_corners
        levels = {"main": (out.features, upsample(out.logits, size, ac))}
        if out.aux_logits is not None and out.aux_features is not None:
            levels["aux"] = (out.aux_features, upsample(out.aux_logits, size, ac))
        return levels

    @property
    def wants_target_batches(self) -> bool:
        """Whether the trainer must hand over target batches: the method uses them, or an add-on does."""
        return self.uses_target or any(getattr(a, "needs_target", False) for a in self.addons)

    def discriminator_view(self, features: torch.Tensor, up_logits: torch.Tensor) -> torch.Tensor:
        """What this method's discriminators look at (softmax, entropy map or features)."""
        return discriminator_input(self.discriminator_space, features, up_logits)

    def adversarial_loss(self, state: StepState) -> dict[str, torch.Tensor]:
        """G's adversarial terms: target predictions labelled *source* by each frozen discriminator."""
        assert state.target is not None and state.target_size is not None
        losses = {}
        for level, (feat, logits) in self.levels(state.target, state.target_size).items():
            d = self.discriminators[level]
            with no_param_grads(d):
                out = d(self.discriminator_view(feat, logits))
            state.target_discriminator_outputs[level] = out
            losses[f"adv_{level}"] = self.adv_weights[level] * bce_to(out, SOURCE_LABEL)
        return losses

    def discriminator_loss(self, state: StepState) -> dict[str, torch.Tensor]:
        """Each discriminator on detached inputs: 0.5 * BCE(D(source), 0) + 0.5 * BCE(D(target), 1)."""
        assert state.target is not None and state.target_size is not None
        losses = {}
        src = self.levels(state.source, state.source_size)
        tgt = self.levels(state.target, state.target_size)
        for level, d in self.discriminators.items():
            s_in = self.discriminator_view(*[t.detach() for t in src[level]])
            t_in = self.discriminator_view(*[t.detach() for t in tgt[level]])
            losses[f"d_{level}"] = 0.5 * bce_to(d(s_in), SOURCE_LABEL) + 0.5 * bce_to(d(t_in), TARGET_LABEL)
        return losses

    def set_class_weights(self, weights: Optional[torch.Tensor]) -> None:
        """Weight the supervised source CE per class (``None`` for plain CE). The perturbation add-on passes
        the same weights to its label-based ``ce`` defense; attacks and the other defenses stay unweighted."""
        if weights is not None:
            if weights.dim() != 1 or weights.numel() != self.num_classes:
                raise ValueError(f"class weights must be a vector of {self.num_classes}, got {tuple(weights.shape)}")
            weights = weights.detach().float().to(next(self.segmentor.parameters()).device)
        self.class_weights = weights

    def source_ce(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One level's supervised CE: logits upsampled to the labels with the network's convention, averaged
        over labelled pixels, class-weighted when :meth:`set_class_weights` was given weights."""
        return seg_ce(logits, labels, weight=self.class_weights, align_corners=self.align_corners)

    def segmentation_loss(self, state: StepState) -> dict[str, torch.Tensor]:
        """:meth:`source_ce` on the main head (+ ``seg_aux_weight`` x the aux head when multi-level)."""
        losses = {"seg": self.source_ce(state.source.logits, state.labels)}
        if state.source.aux_logits is not None:
            losses["seg_aux"] = self.seg_aux_weight * self.source_ce(state.source.aux_logits, state.labels)
        return losses

    # ------------------------------------------------------------------ the step template
    def forward_domains(self, source: dict, target: Optional[dict]) -> StepState:
        """Forward the source batch (and the target batch if the method uses it) once."""
        xs = source["image"]
        state = StepState(self.segmentor.forward_all(xs), source["label"], tuple(xs.shape[-2:]))
        if self.uses_target and target is not None:
            xt = target["image"]
            state.target, state.target_size = self.segmentor.forward_all(xt), tuple(xt.shape[-2:])
        return state

    def generator_losses(self, state: StepState) -> dict[str, torch.Tensor]:
        """The method's own losses for G and F (subclasses extend)."""
        return self.segmentation_loss(state)

    def discriminator_losses(self, state: StepState) -> dict[str, torch.Tensor]:
        """Losses that train the discriminators (empty for methods without one)."""
        return self.discriminator_loss(state) if len(self.discriminators) else {}

    def training_step(self, source: dict, target: Optional[dict] = None) -> StepResult:
        """One forward/backward of every network; the trainer steps the optimizers afterwards."""
        state = self.forward_domains(source, target)
        state.source_batch, state.target_batch = source, target
        g = self.generator_losses(state)
        stats: dict[str, float] = {}
        for addon in self.addons:
            extra, addon_stats = addon(self, state)
            g.update(extra)
            stats.update(addon_stats)
        self.backward(sum_losses(g))
        d = self.discriminator_losses(state)
        for addon in self.addons:
            d.update(getattr(addon, "discriminator_losses", lambda m, s: {})(self, state))
        if d:
            self.backward(sum_losses(d))
        return StepResult({k: float(v.detach()) for k, v in g.items()},
                          {k: float(v.detach()) for k, v in d.items()}, stats)

    def after_optimizer_step(self, step: int) -> None:
        """Called by the trainer after optimiser step ``step`` (1, 2, ...), once the weights are synchronised
        across ranks: the place for EMA teachers. Nothing by default."""

    def discriminator_parameters(self) -> list[nn.Parameter]:
        """Parameters the discriminator optimiser trains."""
        return list(self.discriminators.parameters())
