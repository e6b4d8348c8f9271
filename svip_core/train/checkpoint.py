"""Checkpoints written atomically and loaded without unpickling: safetensors for weights,
``torch.load(weights_only=True)`` for optimiser, scheduler and RNG state. Under DDP, rank 0 alone reads a
checkpoint and every rank resumes from what it read (``agreed_checkpoint``)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist
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


def position(state: dict) -> str:
    """Where a checkpoint stands, in words: "after epoch E", or "at batch B of epoch E" inside one."""
    if state.get("batches"):
        return f"at batch {state['batches']} of epoch {state['epoch'] + 1}"
    return f"after epoch {state['epoch']}"


def _place(epoch: int, batches: int = 0) -> str:
    """The end of a rank file's name: the checkpoint's place (after ``epoch``, or ``batches`` into the next)."""
    return f"_epoch{epoch}.pt" if not batches else f"_epoch{epoch}_batch{batches}.pt"


def _rank_file(folder, rank: int, epoch: int, batches: int = 0) -> Path:
    return Path(folder) / f"rng_rank{rank}{_place(epoch, batches)}"


def save_rng(folder, rank: int, epoch: int, batches: int = 0, partial: dict | None = None) -> None:
    """Each rank's RNG state (dropout differs per rank), so a resumed run draws what the first run would; inside an
    epoch (``batches`` of epoch + 1 done) also the rank's ``partial`` sums of that epoch so far (tensors)."""
    rng = {"torch": torch.get_rng_state(), "epoch": torch.tensor(epoch), "batches": torch.tensor(batches),
           **(partial or {})}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    _atomic(_rank_file(folder, rank, epoch, batches), lambda p: torch.save(rng, p))


def save_checkpoint(folder, model, optimizer, scheduler, scaler, state: dict, ema=None) -> None:
    """A checkpoint at an epoch's end or inside one (rank 0, after every rank saved its RNG): weights (and their
    moving average, ``ema``), then trainer state; ``state.json`` is written last and marks the checkpoint
    complete."""
    folder = Path(folder)
    save_weights(model, folder / "last.safetensors")
    if ema is not None:
        save_weights(ema, folder / "last_ema.safetensors")
    trainer = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict()}
    _atomic(folder / "last_trainer.pt", lambda p: torch.save(trainer, p))
    _atomic(folder / "state.json", lambda p: p.write_text(json.dumps(state, indent=1)))
    current = _place(state["epoch"], state.get("batches", 0))
    for old in folder.glob("rng_rank*_epoch*.pt"):
        if not old.name.endswith(current):
            old.unlink(missing_ok=True)


def read_state(folder) -> dict | None:
    """The state of the last complete checkpoint in ``folder`` (None when there is none)."""
    path = Path(folder) / "state.json"
    return json.loads(path.read_text()) if path.exists() else None


def mark_finished(folder, state: dict) -> None:
    """Record that the run ended normally: a later job in this folder is a forced re-run, not a resume."""
    _atomic(Path(folder) / "state.json", lambda p: p.write_text(json.dumps({**state, "finished": True}, indent=1)))


def resumable(folder, identity: str | None) -> tuple[bool, str]:
    """Whether the checkpoint in ``folder`` may be resumed by the run ``identity``, and why not."""
    state = read_state(folder)
    if state is None:
        return False, ""
    if state.get("identity") != identity:
        return False, f"it was written by another run (identity {state.get('identity')}, this run is {identity})"
    if state.get("finished"):
        return False, "that run finished; a forced re-run trains from scratch"
    return True, ""


def read_checkpoint(folder, world: int) -> dict:
    """Everything a resume needs, read once: the state, weights, optimiser and scheduler state, and the RNG
    state (and inside an epoch, the epoch's partial sums) of each of the ``world`` ranks at the state's place."""
    folder = Path(folder)
    state = read_state(folder)
    ema = folder / "last_ema.safetensors"
    return {"state": state, "weights": load_file(str(folder / "last.safetensors")),
            "ema": load_file(str(ema)) if ema.exists() else None,
            "trainer": torch.load(folder / "last_trainer.pt", weights_only=True, map_location="cpu"),
            "rng": [torch.load(_rank_file(folder, r, state["epoch"], state.get("batches", 0)), weights_only=True,
                               map_location="cpu") for r in range(world)]}


def agreed_checkpoint(folder, identity: str | None) -> tuple[dict | None, str]:
    """The checkpoint this run resumes (None: start fresh) and why another one is not resumed, the same on every
    rank: rank 0 decides and reads, the others receive what it read. Ranks reading ``folder`` on their own could
    see different epochs through a shared filesystem's caches, and then resume different states."""
    rank, world = dist.get_rank(), dist.get_world_size()
    found: list = [None, "", None]
    if rank == 0:
        try:
            resume, why_not = resumable(folder, identity)
            found = [read_checkpoint(folder, world) if resume else None, why_not, None]
        except (OSError, ValueError, KeyError, RuntimeError) as e:    # every rank fails, none waits for rank 0
            found = [None, "", f"{type(e).__name__}: {e}"]
    dist.broadcast_object_list(found, src=0)
    if found[2]:
        raise RuntimeError(f"the checkpoint in {folder} cannot be read ({found[2]}). Fix: delete that folder to "
                           "train from scratch")
    return found[0], found[1]


def restore_checkpoint(checkpoint: dict, model, optimizer, scheduler, scaler, rank: int, ema=None) -> dict:
    """Load ``read_checkpoint``'s weights (and their moving average into ``ema``), optimiser, scheduler, loss
    scaler and this rank's RNG; returns the trainer state."""
    model.load_state_dict(checkpoint["weights"])
    if ema is not None:
        if checkpoint.get("ema") is None:
            raise ValueError("the checkpoint holds no moving average of the weights (train.ema)")
        ema.load_state_dict(checkpoint["ema"])
    optimizer.load_state_dict(checkpoint["trainer"]["optimizer"])
    scheduler.load_state_dict(checkpoint["trainer"]["scheduler"])
    if checkpoint["trainer"]["scaler"]:
        scaler.load_state_dict(checkpoint["trainer"]["scaler"])
    rng = checkpoint["rng"][rank]
    checkpoint["state"]["partial"] = {k: v for k, v in rng.items() if k not in ("torch", "cuda", "epoch", "batches")}
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return checkpoint["state"]
