"""CPU decoder for frame folders (root/<class>/<video>/<frame>.jpg): a VideoDecoder whose
"path" is the folder and whose frame i is the i-th image in frame_files order (numbers in names compared as numbers)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .decode import VideoDecodeError, check_frame_indices
from .formats import frame_files


class FrameFolderDecoder:
    """decode(folder, indices) -> uint8 RGB [len(indices), H, W, 3], read with PIL."""

    def decode(self, path: str | os.PathLike, indices) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        folder = Path(path)
        if not folder.is_dir():
            raise FileNotFoundError(f"frame folder not found: {folder}")
        names = frame_files(folder)
        idx = check_frame_indices(folder, indices, len(names))
        out, loaded = [], {}
        for i in idx.tolist():
            if i not in loaded:  # TSN may repeat a frame in short videos
                p = folder / names[i]
                try:
                    with Image.open(p) as im:
                        loaded[i] = np.asarray(im.convert("RGB"))
                except (OSError, UnidentifiedImageError, SyntaxError) as e:
                    raise VideoDecodeError(p, f"unreadable frame image ({type(e).__name__}: {e})") from e
            out.append(loaded[i])
        if len({f.shape for f in out}) > 1:
            raise VideoDecodeError(folder, f"frames have different sizes: {sorted({f.shape for f in out})}")
        return np.stack(out)
