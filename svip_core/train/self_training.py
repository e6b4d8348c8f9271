"""Self-training on clips without a label: the moving average of the weights names each unlabelled clip's VIP,
and where it is confident the model learns that name from the clip as the training augmentations change it.

Labelled VIP clips are scarce and footage is not: tracks of unlabelled clips show how people behave toward
each other, and a ranker that already finds the VIP in most clips can teach itself from the clips where it is
sure (pseudo-labelling with a confidence threshold, as FixMatch; the teacher is the weights' moving average,
``train.ema``, as in Mean Teacher, so a label is not the same step's guess; with ``ema: 0`` it is the model
itself). Only confident clips count, their loss averaged over them (not over every unlabelled clip, as FixMatch
does), and the augmented view the student sees differs from the plain one the teacher saw, so agreeing with
itself is not free. What needs no label reads the unlabelled clips too (``train.facing_weight``'s walking
loss), and the epoch's ``train_loss`` includes their term.
"""
from __future__ import annotations

import torch
from torch.utils.data import Sampler


class Draws(Sampler):
    """``count`` indices into ``size`` items per epoch, for this rank: consecutive random permutations (seeded by
    ``seed`` and the epoch) cut to length, every ``world``-th from ``rank``; an epoch of the labelled loader
    may need more or fewer unlabelled clips than there are. Set the epoch with ``set_epoch``."""

    def __init__(self, size: int, count: int, seed: int, rank: int = 0, world: int = 1):
        self.size, self.count, self.seed, self.rank, self.world, self.epoch = size, count, seed, rank, world, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        rounds = -(-self.count * self.world // self.size)
        order = torch.cat([torch.randperm(self.size, generator=g) for _ in range(rounds)])
        return iter(order[self.rank:self.count * self.world:self.world].tolist())

    def __len__(self):
        return self.count


@torch.no_grad()
def pseudo_labels(teacher: torch.nn.Module, batch: dict, threshold: float, amp) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher in eval mode on an unaugmented batch -> (pseudo target (B,), confident (B,) bool): the person the
    teacher ranks first and whether its softmax over the people present gives them at least ``threshold`` (in a
    clip of two people or more)."""
    was_training = teacher.training
    teacher.eval()
    with amp:
        logits = teacher(batch.get("visual"), batch["geometry"], batch["valid"], batch.get("tokens"),
                         batch.get("boxes"))["logits"].float()                            # (B, N), -inf absent
    teacher.train(was_training)
    present = batch["valid"].any(1)
    probability = torch.softmax(logits.masked_fill(~present, -1e4), -1)
    confidence, target = probability.max(-1)
    # One person is ranked first with certainty and teaches nothing: such a clip is never counted as confident.
    return target, (confidence >= threshold) & (present.sum(-1) >= 2)


def joined(labelled: dict, unlabelled: dict) -> dict:
    """Two batches of the same stores -> one (their clips one after the other): one forward and backward for
    both, as DDP wants."""
    return {k: torch.cat([labelled[k], unlabelled[k]]) for k in labelled if k in unlabelled}
