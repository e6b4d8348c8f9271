"""Training under torchrun: DDP (gloo on CPU, NCCL on GPU), seeded, resumable, with early stopping.

Launch: ``torchrun --nproc_per_node=K workflow_scripts/train.py ...`` (also for K=1).
"""
from __future__ import annotations

import csv
import itertools
import json
import logging
import math
import os
import shutil
import signal
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DistributedSampler

from svip_core.atomic import atomic_path
from svip_core.dataset.containers import UNLABELLED
from svip_core.interrupt import holding_stops, pending_stop, stop_now
from svip_core.features.precision import autocast, grad_scaler, set_matmul_precision
from svip_core.logs import progress
from svip_core.model.loss import ranking_loss
from svip_core.model.ranker import attach_tuned_head, build_ranker
from svip_core.model.ranking import hit_at_k, target_rank_stats
from svip_core.train.checkpoint import (
    agreed_checkpoint,
    load_weights,
    mark_finished,
    position,
    restore_checkpoint,
    save_checkpoint,
    save_rng,
    save_weights,
)
from svip_core.train.augment import augment, enabled
from svip_core.train.self_training import Draws, joined, pseudo_labels
from svip_core.train.data import StoreClips, clip_loader, loader_workers, on_device, waited_for

log = logging.getLogger(__name__)
# A run has left chance once its best val top-1 reaches this multiple of a random ranking's; before that,
# epochs without improvement do not count toward early stopping (a slow start is not a plateau).
LEFT_CHANCE = 1.5
METRIC_COLUMNS = ["epoch", "step", "lr", "train_loss", "train_ce", "train_preference", "train_top1", "val_loss",
                  "val_top1", "data_wait_seconds", "train_seconds", "seconds"]
# Wall-clock columns: they differ between identical runs, every other column must not. data_wait_seconds is
# how long the step stood idle waiting for clips, train_seconds the epoch's training, seconds with validation.
TIME_COLUMNS = ("data_wait_seconds", "train_seconds", "seconds")
# The progress bar shows the loss every this many steps: reading it forces the GPU to catch up.
SHOW_LOSS_EVERY = 25


def setup_distributed() -> tuple[int, int, torch.device]:
    """Join torchrun's process group (created for one process too, so every path is the same)."""
    if "RANK" not in os.environ:  # plain `python`: behave as a one-process group
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
    cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed every generator. CPU runs repeat bit for bit either way; ``deterministic`` also makes GPU kernels
    repeat (slower kernels, and cuBLAS needs its workspace setting before CUDA starts)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def param_groups(model: torch.nn.Module, weight_decay: float, lr: float, backbone_lr_scale: float = 1.0) -> list[dict]:
    """No weight decay on biases, norms and other 1-d parameters (tokens and queries included). The tuned
    backbone blocks (``model.tuned_head``) learn at ``backbone_lr_scale`` times the ranker's rate, in groups of
    their own after the ranker's (one schedule scales every group, warmup included)."""
    tuned = {id(p) for p in model.tuned_head.parameters()} if model.tuned_head is not None else set()
    groups = []
    for scale, part in ((1.0, [p for p in model.parameters() if id(p) not in tuned]),
                        (backbone_lr_scale, [p for p in model.parameters() if id(p) in tuned])):
        if not part:
            continue
        decay = [p for p in part if p.requires_grad and p.ndim >= 2 and p.shape[0] > 1]
        no_decay = [p for p in part if p.requires_grad and not (p.ndim >= 2 and p.shape[0] > 1)]
        groups += [{"params": decay, "weight_decay": weight_decay, "lr": lr * scale},
                   {"params": no_decay, "weight_decay": 0.0, "lr": lr * scale}]
    return groups


def weights_checksum(model: torch.nn.Module) -> str:
    """Exact fingerprint of a model's weights, to check that DDP ranks hold the same model."""
    import hashlib

    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


class Resumed(torch.utils.data.Sampler):
    """``sampler``'s order without its first ``skip`` indices: the rest of an epoch a checkpoint stopped inside."""

    def __init__(self, sampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self):
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self):
        return max(0, len(self.sampler) - self.skip)


def agreed_stop(device: torch.device) -> int:
    """The stop signal any rank has received (0: none), the same on every rank (a collective: all call it at the
    same step). SLURM and torchrun signal every rank, but not at the same instant."""
    if dist.get_world_size() == 1:
        return pending_stop()
    flag = torch.tensor([pending_stop()], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def warmup_cosine(warmup: int, total: int, min_ratio: float):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return factor


class PhaseTimer:
    """--debug timing per phase; synchronises CUDA so a phase's time is its own."""

    def __init__(self, enabled: bool, device: torch.device):
        self.enabled, self.device, self.totals = enabled, device, {}

    def mark(self, phase: str, since: float) -> float:
        if not self.enabled:
            return since
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.totals[phase] = self.totals.get(phase, 0.0) + now - since
        return now


def _forward(model, batch, cfg, amp, confident: torch.Tensor | None = None):
    """batch: tensors already on the model's device. ``confident`` (U,) bool: the batch's last U clips are
    unlabelled ones with pseudo targets (self-training), learnt from where confident, at
    ``train.self_training.weight``; logits, target and present are returned for the labelled clips only."""
    valid, target = batch["valid"], batch["target"]
    with amp:
        out = model(batch.get("visual"), batch["geometry"], valid, batch.get("tokens"), batch.get("boxes"))
    logits = out["logits"].float()
    present = valid.any(1)
    weights = (cfg["preference_weight"], cfg["pairwise_weight"], cfg["pairwise_margin"])
    if confident is not None:
        b = len(target) - len(confident)
        pseudo = ranking_loss(logits[b:], target[b:], present[b:], *weights, keep=confident)
        logits, target, present = logits[:b], target[:b], present[:b]
    losses = ranking_loss(logits, target, present, *weights)
    if confident is not None:
        losses["total"] = losses["total"] + cfg["self_training"]["weight"] * pseudo["total"]
    # Training only: validation's loss, which early stopping reads, stays the ranking loss.
    if cfg.get("facing_weight", 0) > 0 and "facing_loss" in out:
        losses["total"] = losses["total"] + cfg["facing_weight"] * out["facing_loss"]
    return logits, target, present, losses


@torch.no_grad()
def validate(model, loader, device, cfg, amp) -> tuple[float, float]:
    """Exact (loss, top-1) over the whole split: each rank's loader holds every world-th clip, sums are
    reduced."""
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    for batch in on_device(loader, device):
        logits, target, present, losses = _forward(model, batch, cfg, amp)
        above, tied = target_rank_stats(logits, target, present)
        sums += torch.stack([losses["total"].double() * len(target), hit_at_k(above, tied, 1).double().sum(),
                             torch.full((), len(target), dtype=torch.float64, device=device)])
    dist.all_reduce(sums)
    model.train()
    loss, hits, n = sums.tolist()
    return loss / max(n, 1), hits / max(n, 1)


def bad_epochs_after(bad_epochs: int, val_top1: float, best_top1: float, val_loss: float, best_loss: float,
                     epoch: int, min_epochs: int, chance: float) -> int:
    """Epochs without improvement after this one (the bests already include it). An epoch improves when its
    val top-1 reaches the best or its val loss is the lowest yet: top-1 on a small split moves in steps as
    large as a slow learner's progress, the loss shows it. Epochs count only from ``min_epochs`` on and once
    the run has left chance, so a slow start is never taken for a plateau."""
    counting = epoch >= min_epochs and best_top1 >= LEFT_CHANCE * chance
    improved = val_top1 >= best_top1 or val_loss <= best_loss
    return 0 if improved or not counting else bad_epochs + 1


def ema_average(decay: float):
    """The moving average's update for ``AveragedModel``: decay ``decay``, but at most (1 + n) / (10 + n) after n
    updates, so that the first weights (random) do not linger in the average of a short run."""
    def average(averaged: torch.Tensor, current: torch.Tensor, updates: torch.Tensor) -> torch.Tensor:
        n = float(updates)
        d = min(decay, (1 + n) / (10 + n))
        return averaged * d + current * (1 - d)
    return average


def schedule(cfg: dict, steps_per_epoch: int) -> tuple[int, int, int]:
    """(epochs, patience, min_epochs) of a run: as configured, or, when ``train.min_steps`` asks for more optimizer
    steps than ``epochs`` hold (a small training set), all three stretched by the same factor, so that a run
    learns for as many steps, and waits as many steps for an improvement, whatever the training set's size."""
    factor = max(1.0, cfg.get("min_steps", 0) / max(1, steps_per_epoch * cfg["epochs"]))
    return tuple(math.ceil(cfg[k] * factor - 1e-9) for k in ("epochs", "patience", "min_epochs"))


def train(store_paths: list[str], out_dir, model_cfg: dict, cfg: dict, debug: bool = False,
          identity: str | None = None, settings: dict | None = None) -> dict:
    """Train the ranker on the stores' train split, select on val; write weights and curves to ``out_dir``.
    ``identity`` names the run (its stage identity): only a checkpoint written under the same one is resumed."""
    rank, world, device = setup_distributed()
    out_dir = Path(out_dir)
    ckpt = out_dir / "checkpoints"
    checkpoint, why_not = agreed_checkpoint(ckpt, identity)
    if checkpoint is None and why_not:
        if rank == 0:
            log.info("not resuming the checkpoint in %s: %s; starting fresh", ckpt, why_not)
            shutil.rmtree(ckpt)
    dist.barrier()                            # nobody reads the checkpoint folder while rank 0 clears it
    seed_everything(cfg["seed"], cfg.get("deterministic", False))
    tuned_blocks = cfg.get("finetune_blocks", 0)
    train_set = StoreClips(store_paths, "train", tuned_blocks, first=cfg.get("clips", 0))
    val_set = StoreClips(store_paths, "val", tuned_blocks)
    visual_dim, geometry_dim = train_set.dims()
    model = build_ranker(model_cfg, visual_dim, geometry_dim, train_set.provenance().get("features"))  # same on every rank
    attach_tuned_head(model, tuned_blocks, train_set.provenance(), cfg.get("checkpoint_blocks", False))
    normalisation = model.fit_normalisation(*train_set.geometry_sample())    # same statistics on every rank
    model = model.to(device)
    chance = val_set.chance_top1()
    torch.manual_seed(cfg["seed"] * 1000 + rank)                             # distinct dropout per rank
    # One process needs no DDP wrapper (its bucketing and hooks cost time every step).
    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else model
    sampler = DistributedSampler(train_set, world, rank, shuffle=True, seed=cfg["seed"], drop_last=False)
    workers = loader_workers(cfg.get("workers", 0), device, int(os.environ.get("LOCAL_WORLD_SIZE", world)))
    loader = clip_loader(train_set, cfg["batch_size"], workers, device, sampler)
    val_loader = clip_loader(val_set, cfg["batch_size"], workers, device, range(rank, len(val_set), world))
    # Self-training (train.self_training): the unlabelled split and the training split's clips after the first
    # train.clips, their labels never read, one batch of them beside each labelled batch.
    wanted = (cfg.get("self_training") or {}).get("weight", 0) > 0
    unlabelled_set = None
    if wanted and cfg.get("clips", 0):
        unlabelled_set = StoreClips(store_paths, ("train", UNLABELLED), tuned_blocks, first=cfg["clips"], rest=True)
    elif wanted:
        unlabelled_set = StoreClips(store_paths, UNLABELLED, tuned_blocks)
    self_training = unlabelled_set is not None and len(unlabelled_set) > 0
    if wanted and not self_training and rank == 0:
        log.info("train.self_training: no unlabelled clips (the dataset's unlabelled split, or training clips after "
                 "the first train.clips = %d) to learn from; training on the labelled ones alone", cfg.get("clips", 0))
    unlabelled_loader = unlabelled = None
    if self_training:
        draws = Draws(len(unlabelled_set), len(loader) * cfg["batch_size"], cfg["seed"], rank, world)
        unlabelled_loader = clip_loader(unlabelled_set, cfg["batch_size"], workers, device, draws)
    steps_per_epoch = math.ceil(len(loader) / cfg["accumulation_steps"])
    epochs, patience, min_epochs = schedule(cfg, steps_per_epoch)
    optimizer = torch.optim.AdamW(param_groups(model, cfg["weight_decay"], cfg["lr"], cfg.get("backbone_lr_scale", 1.0)),
                                  lr=cfg["lr"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(cfg["warmup_steps"], steps_per_epoch * epochs, cfg["min_lr_ratio"]))
    set_matmul_precision(cfg["precision"])
    amp, scaler = autocast(cfg["precision"], device), grad_scaler(cfg["precision"], device)

    # The weights' exponential moving average (train.ema): validated, selected and kept in place of the weights.
    ema = AveragedModel(model, avg_fn=ema_average(cfg["ema"]), use_buffers=True) if cfg.get("ema") else None
    scored = ema.module if ema is not None else model
    state = (restore_checkpoint(checkpoint, model, optimizer, scheduler, scaler, rank, ema) if checkpoint else None) or \
        {"epoch": 0, "step": 0, "best_top1": -1.0, "best_epoch": 0, "best_loss": math.inf, "bad_epochs": 0,
         "history": []}
    state["identity"] = identity
    partial = state.pop("partial", {})                # this rank's sums of an epoch a checkpoint stopped inside
    stopped_by = state.pop("stopped_by", None)
    if (state["epoch"] or state.get("batches")) and rank == 0:
        log.info("resuming %s (step %d%s) from %s (same run identity %s)", position(state), state["step"],
                 f", where {stopped_by} stopped it" if stopped_by else "", ckpt, identity)
    if rank == 0:
        log.info("%d clips to train on, %d to validate on; %d loader worker(s) and %d thread(s) per process, device %s",
                 len(train_set), len(val_set), workers, torch.get_num_threads(), device)
        if epochs != cfg["epochs"]:
            log.info("train.min_steps = %d: %d epochs of %d steps (patience %d, min_epochs %d) in place of %d",
                     cfg["min_steps"], epochs, steps_per_epoch, patience, min_epochs, cfg["epochs"])
        if self_training:
            log.info("self-training on %d unlabelled clips (%d beside each batch; pseudo labels where the %s is at "
                     "least %g sure)", len(unlabelled_set), cfg["batch_size"], "moving average" if ema else "model",
                     cfg["self_training"]["threshold"])
        if tuned_blocks:
            log.info("fine-tuning the backbone's last %d block(s) (%d parameters) at %g x the ranker's learning rate",
                     tuned_blocks, sum(p.numel() for p in model.tuned_head.parameters()), cfg["backbone_lr_scale"])
    writer = None
    if rank == 0:
        from torch.utils.tensorboard import SummaryWriter

        # Scalars are logged per epoch: what a killed run logged after its last checkpoint is purged by epoch.
        writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=state["epoch"] + 1)
    timer = PhaseTimer(debug, device)
    model.train()
    every = cfg.get("checkpoint_every", 0)
    augmenting = enabled(cfg.get("augment"))

    def write_checkpoint(stop: int, batches: int = 0, partial: dict | None = None) -> None:
        """A checkpoint after epoch ``state["epoch"]``, or inside the next one after ``batches`` of its batches with
        each rank's ``partial`` sums: every rank's RNG, then the weights, trainer state and state.json (rank 0),
        which names the stop signal that asked for it, if any. Written whole before a stop takes effect."""
        with holding_stops():
            save_rng(ckpt, rank, state["epoch"], batches, partial)
            dist.barrier()                    # every rank's RNG is on disk before state.json names the place
            if rank == 0:
                save_checkpoint(ckpt, model, optimizer, scheduler, scaler,
                                {**state, **({"batches": batches} if batches else {}),
                                 **({"stopped_by": signal.Signals(stop).name} if stop else {})}, ema)
            dist.barrier()

    def stopping(stop: int, where: dict):
        if rank == 0:
            log.info("%s: checkpoint written %s (step %d)", signal.Signals(stop).name, position(where), where["step"])
        stop_now(stop)

    # Stops wait for a step's end, where every rank agrees to stop and a checkpoint is written (holding_stops).
    with holding_stops():
        for epoch in range(state["epoch"] + 1, epochs + 1):
            if state["bad_epochs"] >= patience:
                if rank == 0:
                    log.info("early stop: %d epochs without a better val top-1 (best %.4g at epoch %d, chance %.3g)",
                             state["bad_epochs"], state["best_top1"], state["best_epoch"], chance)
                break
            sampler.set_epoch(epoch)
            # A resumed epoch starts at the checkpoint's batch: the same samples follow, in the same order.
            done = state.pop("batches", 0)
            batches = loader if not done else clip_loader(train_set, cfg["batch_size"], workers, device,
                                                          Resumed(sampler, done * cfg["batch_size"]))
            if self_training:
                draws.set_epoch(epoch)
                unlabelled = iter(on_device(unlabelled_loader if not done else clip_loader(
                    unlabelled_set, cfg["batch_size"], workers, device, Resumed(draws, done * cfg["batch_size"])), device))
                confident_sums = partial.get("confident", torch.zeros(2, dtype=torch.float64)).to(device)
            sums = partial.get("sums", torch.zeros(5, dtype=torch.float64)).to(device)
            waits: dict[str, float] = {"data_wait": float(partial.get("data_wait", 0.0))}
            start = time.perf_counter() - float(partial.get("seconds", 0.0))
            partial = {}
            bar = progress(total=len(loader), initial=done, desc=f"epoch {epoch}/{epochs}", disable=rank != 0,
                           leave=False)
            optimizer.zero_grad(set_to_none=True)
            t = time.perf_counter()
            for i, batch in enumerate(waited_for(on_device(batches, device), waits), start=done):
                confident = None
                if self_training:
                    extra = next(unlabelled)
                    extra["target"], confident = pseudo_labels(scored, extra, cfg["self_training"]["threshold"], amp)
                    confident_sums += torch.stack([confident.double().sum(), torch.full((), len(confident),
                                                   dtype=torch.float64, device=device)])
                    batch = joined(batch, extra)
                if augmenting:
                    batch = augment(batch, cfg["augment"])
                t = timer.mark("data", t)
                last_micro = (i + 1) % cfg["accumulation_steps"] == 0 or i + 1 == len(loader)
                with (nullcontext() if last_micro or ddp is model else ddp.no_sync()):
                    logits, target, present, losses = _forward(ddp, batch, cfg, amp, confident)
                    t = timer.mark("forward+loss", t)
                    scaler.scale(losses["total"] / cfg["accumulation_steps"]).backward()
                    t = timer.mark("backward", t)
                if last_micro:
                    scaler.unscale_(optimizer)                # clip the true gradients, not the scaled ones
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
                    scaler.step(optimizer)                    # skipped (fp16) when a gradient overflowed
                    scaler.update()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    if ema is not None:
                        ema.update_parameters(model)
                    state["step"] += 1
                    t = timer.mark("optimizer", t)
                # Summed on the device and read once per epoch: a .item() per step would stall the GPU each time.
                above, tied = target_rank_stats(logits.detach(), target, present)
                n = len(target)
                sums += torch.stack([losses["total"].detach().double() * n, losses["ce"].detach().double() * n,
                                     losses["preference"].detach().double() * n, hit_at_k(above, tied, 1).double().sum(),
                                     torch.full((), n, dtype=torch.float64, device=device)])
                bar.update()
                if rank == 0 and (i + 1) % SHOW_LOSS_EVERY == 0:
                    bar.set_postfix(loss=f"{losses['total'].item():.3f}", refresh=False)
                if last_micro:
                    stop = agreed_stop(device)
                    if stop or (every and state["step"] % every == 0 and i + 1 < len(loader)):
                        write_checkpoint(stop, i + 1, {"sums": sums.cpu(), "data_wait": torch.tensor(
                            waits.get("data_wait", 0.0)), "seconds": torch.tensor(time.perf_counter() - start),
                            **({"confident": confident_sums.cpu()} if self_training else {})})
                    if stop:
                        stopping(stop, {**state, "batches": i + 1})
            bar.close()
            dist.all_reduce(sums)
            if self_training:
                dist.all_reduce(confident_sums)
            train_seconds = time.perf_counter() - start
            loss, ce, preference, hits, n = sums.tolist()
            # The module itself, not its DDP wrapper: DDP's forward broadcasts buffers, a collective that a rank with
            # fewer validation batches (or none) would never join.
            val_loss, val_top1 = validate(scored, val_loader, device, cfg, amp)
            row = {"epoch": epoch, "step": state["step"], "lr": scheduler.get_last_lr()[0],
                   "train_loss": loss / n, "train_ce": ce / n, "train_preference": preference / n,
                   "train_top1": hits / n, "val_loss": val_loss, "val_top1": val_top1,
                   "data_wait_seconds": waits["data_wait"], "train_seconds": train_seconds,
                   "seconds": time.perf_counter() - start}
            # The selected epoch: the best val top-1, and among epochs that tie on it (a plateau on a small split
            # ties often) the lowest val loss, not merely the first to reach it.
            tie_loss = val_loss if math.isfinite(val_loss) else math.inf      # a NaN never blocks a later tie
            if (val_top1, -tie_loss) > (state["best_top1"], -state.get("selected_loss", math.inf)):
                state.update(best_top1=val_top1, best_epoch=epoch, selected_loss=tie_loss)
                if rank == 0:
                    save_weights(scored, ckpt / "best.safetensors")
            state["best_loss"] = min(state.get("best_loss", math.inf), val_loss)
            state["bad_epochs"] = bad_epochs_after(state["bad_epochs"], val_top1, state["best_top1"], val_loss,
                                                   state["best_loss"], epoch, min_epochs, chance)
            state["epoch"] = epoch
            state["history"].append(row)
            if rank == 0:
                log.info("epoch %d: " + " ".join(f"{k}=%.4g" for k in METRIC_COLUMNS[1:]), epoch,
                         *[row[k] for k in METRIC_COLUMNS[1:]])
                if self_training:
                    log.info("epoch %d: %.3g of the unlabelled clips were confident enough to learn from", epoch,
                             confident_sums[0].item() / max(1.0, confident_sums[1].item()))
                if debug:
                    log.info("debug timing (s, cumulative): %s",
                             json.dumps({k: round(v, 4) for k, v in timer.totals.items()}))
                for k, v in row.items():
                    if k != "epoch":
                        writer.add_scalar(k, v, epoch)
            # The epoch's checkpoint: weights, trainer state and state.json, whole before a stop takes effect.
            stop = agreed_stop(device)
            write_checkpoint(stop)
            if stop:
                stopping(stop, state)

    # A stop during the final writes takes effect once they are done, before the run is marked finished, so a
    # re-run resumes it (writing them again) instead of training from scratch.
    with holding_stops():
        checksums = [None] * world
        dist.all_gather_object(checksums, weights_checksum(model))
        if rank == 0:
            writer.close()
            _write_curves(out_dir / "metrics.csv", state["history"])
            (out_dir / "model.json").write_text(json.dumps(
                {"model": model_cfg, "visual_dim": visual_dim, "geometry_dim": geometry_dim, "finetune_blocks": tuned_blocks,
                 "train_clips": len(train_set), "best_epoch": state["best_epoch"],
                 "best_val_top1": state["best_top1"], "world_size": world, "rank_weight_checksums": checksums,
                 "identity": identity, "precision": cfg["precision"], "run_settings": settings or {}, "frame_stride": train_set.frame_stride(),
                 "normalisation": normalisation, "val_chance_top1": chance,
                 "features": train_set.provenance()},
                indent=1))
            if len(set(checksums)) != 1:
                raise RuntimeError(f"DDP ranks ended with different weights: {checksums}")
            best = ckpt / "best.safetensors"
            if best.exists():
                load_weights(model, best)
            save_weights(model, out_dir / "model.safetensors")
        # Release DDP's reducer while the group is alive: freeing it after destroy_process_group can hang gloo.
        del ddp, loader, val_loader, unlabelled_loader, unlabelled
        dist.barrier()
        dist.destroy_process_group()
    if rank == 0:
        mark_finished(ckpt, state)
    return state


def _write_curves(path: Path, history: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=METRIC_COLUMNS)
        w.writeheader()
        w.writerows(history)
