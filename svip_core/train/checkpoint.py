"""Checkpoints written atomically and loaded without unpickling: safetensors for weights,
``torch.load(weights_only=True)`` for optimiser, scheduler and RNG state."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_weights(model: torch.nn.Module, path) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _atomic(Path(path), lambda p: save_file(state, str(p)))


def load_weights(model: torch.nn.Module, path) -> None:
    model.load_state_dict(load_file(str(path)))


def save_checkpoint(folder, model, optimizer, scheduler, state: dict) -> None:
    """One epoch's checkpoint: weights, then trainer state; ``state.json`` last marks it complete."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_weights(model, folder / "last.safetensors")
    trainer = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
               "torch_rng": torch.get_rng_state()}
    _atomic(folder / "last_trainer.pt", lambda p: torch.save(trainer, p))
    _atomic(folder / "state.json", lambda p: p.write_text(json.dumps(state, indent=1)))


def load_checkpoint(folder, model, optimizer, scheduler) -> dict | None:
    folder = Path(folder)
    if not (folder / "state.json").exists():
        return None
    load_weights(model, folder / "last.safetensors")
    trainer = torch.load(folder / "last_trainer.pt", weights_only=True)
    optimizer.load_state_dict(trainer["optimizer"])
    scheduler.load_state_dict(trainer["scheduler"])
    torch.set_rng_state(trainer["torch_rng"])
    return json.loads((folder / "state.json").read_text())
