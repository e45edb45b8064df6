"""Reading images and label files with errors that name the file."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import DataError
from .label_maps import IGNORE


def read_rgb(path: str | Path) -> torch.Tensor:
    """RGB image as a float tensor ``3 x H x W`` in [0, 1]; unreadable or truncated files raise ``OSError``."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {path}") from None
    except Exception as exc:  # PIL raises several types for corrupt files
        raise OSError(f"cannot read image {path}: {exc}") from exc
    return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)


def read_label_raw(path: str | Path, channel: int | None = None) -> np.ndarray:
    """Raw label ids as an int32 array ``H x W``. ``channel`` selects one channel of a multi-channel label
    (16-bit PNGs are read without loss through torchvision's decoder)."""
    try:
        if channel is None:
            with Image.open(path) as im:
                if im.mode not in ("L", "P", "I", "I;16", "I;16B"):
                    raise OSError(f"label must be a single-channel image, got mode {im.mode}")
                return np.asarray(im, dtype=np.int32).copy()
        import warnings

        from torchvision.io import ImageReadMode, decode_png, read_file

        with warnings.catch_warnings():  # torchvision >= 0.29 flags its decoders as deprecated; they still work
            warnings.simplefilter("ignore", DeprecationWarning)
            data = decode_png(read_file(str(path)), ImageReadMode.UNCHANGED)
        return data[channel].to(torch.int32).numpy()
    except FileNotFoundError:
        raise FileNotFoundError(f"label not found: {path}") from None
    except Exception as exc:
        raise OSError(f"cannot read label {path}: {exc}") from exc


def unknown_ids(raw: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """The raw label values that the LUT does not map (outside it, or mapped to -1)."""
    outside = (raw < 0) | (raw >= len(lut))
    unmapped = np.zeros_like(outside)
    unmapped[~outside] = lut[raw[~outside]] < 0
    return np.unique(raw[outside | unmapped])


def map_label(raw: np.ndarray, lut: np.ndarray, path: str | Path, strict: bool = True) -> torch.Tensor:
    """Apply a LUT (from ``label_maps.lookup_table``). Values outside the map raise ``DataError`` naming the
    file, or with ``strict=False`` become the ignore label (as the references' ``255 *  ones`` init does)."""
    if not strict:
        outside = (raw < 0) | (raw >= len(lut))
        out = np.full(raw.shape, IGNORE, dtype=np.int64)
        mapped = lut[np.where(outside, 0, raw)]
        keep = ~outside & (mapped >= 0)
        out[keep] = mapped[keep]
        return torch.from_numpy(out)
    if raw.min() < 0 or raw.max() >= len(lut):
        bad = np.unique(raw[(raw < 0) | (raw >= len(lut))])[:10].tolist()
        raise DataError(f"label {path}: values {bad} are outside the label map")
    out = lut[raw]
    if (out < 0).any():
        bad = np.unique(raw[out < 0])[:10].tolist()
        raise DataError(f"label {path}: values {bad} are not in the label map")
    return torch.from_numpy(out.astype(np.int64))


__all__ = ["IGNORE", "map_label", "read_label_raw", "read_rgb", "unknown_ids"]
