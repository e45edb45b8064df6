"""SegFormer's Mix Transformer encoder (MiT-B0 ... B5), the backbone of DAFormer, HRDA and MIC (``mit_b0`` ...
``mit_b5``).

Written here line by line after the reference that DAFormer and MIC train (``mmseg/models/backbones/
mix_transformer.py`` of lhoyer/DAFormer, itself NVlabs/SegFormer's), with its parameter names, so that the
ImageNet weights ``mit_b*.pth`` and the ``backbone.*`` part of a DAFormer / MIC checkpoint load as they are.
Hugging Face ``transformers`` was the issue's first choice; it was not taken because its Segformer layout changed
names between its major versions (``encoder.block.0.0.attention.self.query`` in 4.x, ``stages.0.blocks.0.attention
.q_proj`` in 5.x): a checkpoint mapping through it would follow whichever version is installed. The tests compare
this encoder with ``transformers``' when it is installed (same weights, same four stage outputs), and an HF
snapshot folder (``model.safetensors`` / ``pytorch_model.bin`` in the 4.x layout its files keep) loads here.
"""
from __future__ import annotations

import math
import os
import re
from typing import Optional, Sequence

import torch
from torch import nn

from ..registry import BACKBONES
from .backbones import Backbone

# embed dims, depths (num_heads [1, 2, 5, 8], sr ratios [8, 4, 2, 1], MLP ratio 4 for all)
MIT_SIZES = {"mit_b0": ([32, 64, 160, 256], [2, 2, 2, 2]), "mit_b1": ([64, 128, 320, 512], [2, 2, 2, 2]),
             "mit_b2": ([64, 128, 320, 512], [3, 4, 6, 3]), "mit_b3": ([64, 128, 320, 512], [3, 4, 18, 3]),
             "mit_b4": ([64, 128, 320, 512], [3, 8, 27, 3]), "mit_b5": ([64, 128, 320, 512], [3, 6, 40, 3])}


class DropPath(nn.Module):
    """Stochastic depth (timm's): in training, each sample's residual branch is dropped with probability ``p``
    and kept ones are scaled by ``1 / (1 - p)``. Named ``DropPath`` so that a mean teacher turns it off."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.drop_prob = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class DWConv(nn.Module):
    """The 3x3 depthwise convolution inside the Mix-FFN."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        return self.dwconv(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    """Mix-FFN: fc1, depthwise conv, GELU, fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.dwconv, self.act, self.fc2 = nn.Linear(dim, hidden), DWConv(hidden), nn.GELU(), nn.Linear(hidden,
                                                                                                             dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), h, w)))


class Attention(nn.Module):
    """Efficient self-attention: keys and values from the sequence reduced ``sr_ratio`` times per side."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int) -> None:
        super().__init__()
        self.num_heads, self.scale, self.sr_ratio = num_heads, (dim // num_heads) ** -0.5, sr_ratio
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, dim * 2), nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)  # the reference's default eps (1e-5), not the blocks' 1e-6

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        b, n, c = x.shape
        q = self.q(x).reshape(b, n, self.num_heads, c // self.num_heads).permute(0, 2, 1, 3)
        if self.sr_ratio > 1:
            x = self.norm(self.sr(x.permute(0, 2, 1).reshape(b, c, h, w)).reshape(b, c, -1).permute(0, 2, 1))
        kv = self.kv(x).reshape(b, -1, 2, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = ((q @ kv[0].transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ kv[1]).transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block: attention and Mix-FFN, each residual with stochastic depth."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, drop_path: float) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), Attention(dim, num_heads, sr_ratio)
        self.drop_path = DropPath(drop_path)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), Mlp(dim, dim * 4)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x), h, w))


class OverlapPatchEmbed(nn.Module):
    """Overlapping patch embedding: a strided convolution, then LayerNorm over the tokens."""

    def __init__(self, patch: int, stride: int, in_ch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_ch, dim, kernel_size=patch, stride=stride, padding=patch // 2)
        self.norm = nn.LayerNorm(dim)  # default eps, as the reference

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = self.proj(x)
        h, w = x.shape[-2:]
        return self.norm(x.flatten(2).transpose(1, 2)), h, w


class MixVisionTransformer(Backbone):
    """MiT: four stages at strides 4, 8, 16, 32. Returns ``{"stage1".."stage4", "aux": stage3, "out":
    stage4}``; ``stage_channels`` lists the four widths. Random init as the reference's (``weights=None``), or
    ImageNet / trained weights from a local file: ``mit_b*.pth``, a DAFormer / MIC checkpoint (its
    ``backbone.*``), or a Hugging Face snapshot folder."""

    output_stride = 32

    def __init__(self, embed_dims: Sequence[int], depths: Sequence[int], num_heads: Sequence[int] = (1, 2, 5, 8),
                 sr_ratios: Sequence[int] = (8, 4, 2, 1), drop_path_rate: float = 0.1,
                 weights: Optional[str] = None) -> None:
        super().__init__()
        self.stage_channels = list(embed_dims)
        self.out_channels, self.aux_channels = embed_dims[3], embed_dims[2]
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, sum(depths))]
        cur, in_ch = 0, 3
        for i in range(4):
            setattr(self, f"patch_embed{i + 1}", OverlapPatchEmbed(7 if i == 0 else 3, 4 if i == 0 else 2, in_ch,
                                                                   embed_dims[i]))
            setattr(self, f"block{i + 1}", nn.ModuleList(
                Block(embed_dims[i], num_heads[i], sr_ratios[i], dpr[cur + j]) for j in range(depths[i])))
            setattr(self, f"norm{i + 1}", nn.LayerNorm(embed_dims[i], eps=1e-6))
            cur, in_ch = cur + depths[i], embed_dims[i]
        self.apply(_init_weights)
        if weights:
            load_mit_weights(self, weights)
            self.input_normalization = "imagenet"

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for i in range(1, 5):
            x, h, w = getattr(self, f"patch_embed{i}")(x)
            for blk in getattr(self, f"block{i}"):
                x = blk(x, h, w)
            x = getattr(self, f"norm{i}")(x).reshape(x.shape[0], h, w, -1).permute(0, 3, 1, 2).contiguous()
            out[f"stage{i}"] = x
        return {**out, "aux": out["stage3"], "out": out["stage4"]}


def _init_weights(m: nn.Module) -> None:
    """The reference's ``_init_weights``."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        m.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            m.bias.data.zero_()


_HF = [(r"patch_embeddings\.(\d)\.proj", lambda i: f"patch_embed{int(i) + 1}.proj"),
       (r"patch_embeddings\.(\d)\.layer_norm", lambda i: f"patch_embed{int(i) + 1}.norm"),
       (r"block\.(\d)\.", lambda i: f"block{int(i) + 1}."), (r"^layer_norm\.(\d)", lambda i: f"norm{int(i) + 1}")]
_HF_PARTS = {"layer_norm_1": "norm1", "layer_norm_2": "norm2", "attention.self.query": "attn.q",
             "attention.self.sr": "attn.sr", "attention.self.layer_norm": "attn.norm",
             "attention.output.dense": "attn.proj", "mlp.dense1": "mlp.fc1", "mlp.dense2": "mlp.fc2"}


def from_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Hugging Face Segformer encoder (4.x key layout, as its snapshot files store it) in MiT's names; the
    separate key and value projections are stacked into ``kv`` (keys first, as the reference splits it)."""
    out: dict[str, torch.Tensor] = {}
    for key, v in state.items():
        k = key.removeprefix("segformer.").removeprefix("encoder.")
        if not k.startswith(("patch_embeddings.", "block.", "layer_norm.")):
            continue  # the classification or decode head
        for pattern, repl in _HF:
            k = re.sub(pattern, lambda m, f=repl: f(m.group(1)), k)  # type: ignore[misc]
        for old, new in _HF_PARTS.items():
            k = k.replace(old, new)
        if ".attention.self.key." in k:
            value = state[key.replace(".attention.self.key.", ".attention.self.value.")]
            out[k.replace("attention.self.key", "attn.kv")] = torch.cat([v, value])
        elif ".attention.self.value." not in k:
            out[k] = v
    return out


def read_mit_state(weights: str) -> dict[str, torch.Tensor]:
    """MiT tensors from a file or an HF snapshot folder, in the reference's names (a DAFormer / MIC checkpoint:
    its student ``model.backbone.*``; an mmseg checkpoint: ``backbone.*``; ImageNet ``mit_b*.pth``: its
    classification ``head`` dropped)."""
    from .weights import read_state_dict

    if os.path.isdir(weights):
        st = os.path.join(weights, "model.safetensors")
        if os.path.isfile(st):
            from safetensors.torch import load_file

            return from_hf(load_file(st))
        return from_hf(read_state_dict(os.path.join(weights, "pytorch_model.bin")))
    state = read_state_dict(weights)
    if any(k.startswith(("segformer.", "encoder.patch_embeddings")) for k in state):
        return from_hf(state)
    for prefix in ("model.backbone.", "backbone."):
        if any(k.startswith(prefix) for k in state):
            return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    return {k: v for k, v in state.items() if not k.startswith("head.")}


def load_mit_weights(model: MixVisionTransformer, weights: str) -> None:
    """Load every MiT tensor, refusing in one line a file whose tensors do not fill the encoder exactly."""
    from ..errors import CheckpointError

    state, own = read_mit_state(weights), model.state_dict()
    extra = sorted(set(state) - set(own))
    missing = sorted(set(own) - set(state))
    wrong = sorted(k for k in set(state) & set(own) if state[k].shape != own[k].shape)
    if extra or missing or wrong:
        first = (f"unmapped key {extra[0]!r}" if extra else f"missing key {missing[0]!r}" if missing else
                 f"{wrong[0]!r} has shape {tuple(state[wrong[0]].shape)}, the encoder {tuple(own[wrong[0]].shape)}")
        raise CheckpointError(f"weights {weights!r} do not fit this MiT encoder: {first}")
    model.load_state_dict(state)


def _factory(name: str):  # type: ignore[no-untyped-def]
    dims, depths = MIT_SIZES[name]

    def build(weights: Optional[str] = None, drop_path_rate: float = 0.1) -> MixVisionTransformer:
        return MixVisionTransformer(dims, depths, drop_path_rate=drop_path_rate, weights=weights)

    build.__doc__ = (f"SegFormer's {name.replace('_', '-').upper()} encoder (stage widths {dims}, depths {depths}); "
                     "``weights``: a local file or HF snapshot folder (random init otherwise)")
    return build


for _name in MIT_SIZES:
    BACKBONES.register(_name, _factory(_name))

