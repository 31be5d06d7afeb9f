"""Checkpoints (written atomically: a crash mid-write never leaves a half-written file) and RNG states."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from tap_fast.atomic_write import write_atomic


def save_atomic(obj, path: str | os.PathLike) -> Path:
    """torch.save(obj) to path, atomically."""
    return write_atomic(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"checkpoint {path} is a directory; name a .pt file in it (best.pt or last.pt)")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # a truncated or foreign file: torch's own message says little
        raise ValueError(f"cannot read checkpoint {path}: not a complete file written by torch.save "
                         f"(truncated, or another kind of file; {type(error).__name__}: {error})") from error
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "config" not in checkpoint:
        raise ValueError(f"{path} is not a tap_fast checkpoint (no 'model'/'config' entries)")
    if not isinstance(checkpoint["config"], dict):  # another project's {"model", "config": args}
        raise ValueError(f"{path} is not a tap_fast checkpoint (its 'config' entry is a "
                         f"{type(checkpoint['config']).__name__}, not the dict tap_fast.train saves)")
    return checkpoint


def load_weights(model, checkpoint: dict, path) -> None:
    """model.load_state_dict(checkpoint["model"]); a ValueError naming path when the weights do not fit
    the model its config describes (an edited or foreign checkpoint): torch's own message is a key dump."""
    state, expected = checkpoint["model"], model.state_dict()
    if not isinstance(state, dict):
        raise ValueError(f"{path}: its 'model' entry is not a state dict ({type(state).__name__})")
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in expected if k in state and getattr(state[k], "shape", None) != expected[k].shape]
    if missing or unexpected or reshaped:
        first = lambda keys: f"{keys[0]}{f' and {len(keys) - 1} more' if len(keys) > 1 else ''}"
        found = [f"{what} {first(keys)}" for what, keys in
                 (("missing", missing), ("unexpected", unexpected), ("other shapes:", reshaped)) if keys]
        config = checkpoint["config"]
        raise ValueError(f"{path}: its weights do not fit the model its saved config describes (head "
                         f"{config.get('head')!r}, backbone {config.get('backbone')!r}: {'; '.join(found)})")
    model.load_state_dict(state)


def rng_states() -> dict:
    """Every random generator a training step could draw from (python, numpy, torch CPU and CUDA)."""
    import random

    import numpy as np

    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def restore_rng_states(states: dict) -> None:
    import random

    import numpy as np

    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if states.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
