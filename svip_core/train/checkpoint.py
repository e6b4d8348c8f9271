"""Checkpoints written atomically and loaded without unpickling: safetensors for weights,
``torch.load(weights_only=True)`` for optimiser, scheduler and RNG state."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from svip_core.atomic import atomic_path


def _atomic(path: Path, write) -> None:
    with atomic_path(path) as tmp:
        write(tmp)


def save_weights(model: torch.nn.Module, path) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _atomic(Path(path), lambda p: save_file(state, str(p)))


def load_weights(model: torch.nn.Module, path) -> None:
    model.load_state_dict(load_file(str(path)))


def save_rng(folder, rank: int, epoch: int) -> None:
    """Each rank's RNG state (dropout differs per rank), so a resumed run draws what the first run would."""
    rng = {"torch": torch.get_rng_state(), "epoch": torch.tensor(epoch)}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    _atomic(Path(folder) / f"rng_rank{rank}_epoch{epoch}.pt", lambda p: torch.save(rng, p))


def save_checkpoint(folder, model, optimizer, scheduler, state: dict) -> None:
    """One epoch's checkpoint (rank 0, after every rank saved its RNG): weights, then trainer state;
    ``state.json`` is written last and marks the checkpoint complete."""
    folder = Path(folder)
    save_weights(model, folder / "last.safetensors")
    trainer = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
    _atomic(folder / "last_trainer.pt", lambda p: torch.save(trainer, p))
    _atomic(folder / "state.json", lambda p: p.write_text(json.dumps(state, indent=1)))
    for old in folder.glob("rng_rank*_epoch*.pt"):
        if not old.name.endswith(f"_epoch{state['epoch']}.pt"):
            old.unlink(missing_ok=True)


def read_state(folder) -> dict | None:
    """The state of the last complete checkpoint in ``folder`` (None when there is none)."""
    path = Path(folder) / "state.json"
    return json.loads(path.read_text()) if path.exists() else None


def mark_finished(folder, state: dict) -> None:
    """Record that the run ended normally: a later job in this folder is a forced re-run, not a resume."""
    _atomic(Path(folder) / "state.json", lambda p: p.write_text(json.dumps({**state, "finished": True}, indent=1)))


def load_checkpoint(folder, model, optimizer, scheduler, rank: int) -> dict | None:
    folder = Path(folder)
    state = read_state(folder)
    if state is None:
        return None
    load_weights(model, folder / "last.safetensors")
    trainer = torch.load(folder / "last_trainer.pt", weights_only=True)
    optimizer.load_state_dict(trainer["optimizer"])
    scheduler.load_state_dict(trainer["scheduler"])
    rng = torch.load(folder / f"rng_rank{rank}_epoch{state['epoch']}.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return state
