"""Tiny-model scenarios run by ``tests/test_distributed.py`` in one process (imported) and in
two (``torchrun --nproc_per_node 2 --standalone tests/dist_worker.py OUT``, gloo on the CPU).

In the launched run every scenario writes its result under ``OUT`` from the main process:
``d_full.pt`` (discriminator after an uninterrupted run, and what the main process logged),
``d_resumed.pt`` (resumed from the one-process checkpoint in ``OUT/ckpt_from1``),
``ckpt_from2/`` (a run stopped at ``STOP`` for the one-process side to resume), ``critic.pt``
and ``bank.pt`` (sharded fake banks, one of them a single batch, so that the second process
gathers nothing).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)

from mmdisco import distributed as dist  # noqa: E402
from mmdisco.config import CriticConfig, DiscriminatorConfig  # noqa: E402
from mmdisco.guidance.critic import Critic, train_critic  # noqa: E402
from mmdisco.guidance.conditional import ConditionalDiscriminator  # noqa: E402
from mmdisco.guidance.train import Conditions, train_discriminator  # noqa: E402
from mmdisco.guidance.bank import fake_bank  # noqa: E402
from mmdisco.guidance.sampler import SamplerSettings  # noqa: E402
from support.tiny_guides import AUDIO, VIDEO, bases, data, make_d  # noqa: E402
# λ > 0: the double backward through D runs under DDP too
CFG = DiscriminatorConfig(steps=10, batch_size=8, checkpoint_every=4, log_every=2, eval_every=10,
                  heldout=8, denoise_weight=0.1)
CRITIC = CriticConfig(steps=6, batch_size=8, heldout=8, warmup_steps=2, checkpoint_every=3,
                      log_every=3, eval_every=6, width=8, time_dim=16, dim=8)
STOP = 6   # the interrupted runs stop here (a checkpoint step of neither schedule: forced)
BANK = dict(num_pairs=10, batch_size=3, seed=5)   # 4 batches, the last of 1
BANK_SETTINGS = SamplerSettings(steps=4, eta=1.0)


def train(ckpt: Path, accelerator=None, stop_at: int | None = None, logs: list | None = None):
    """``(D, summary)`` of a discriminator run over the fixed tiny data."""
    base_a, base_v = bases()
    real_a, real_v = data(40)
    fake_a, fake_v = data(40, seed=1)
    D = make_d()
    summary = train_discriminator(
        D, base_a, base_v, real_a=real_a, real_v=real_v, fake_a=fake_a, fake_v=fake_v, cfg=CFG,
        checkpoint_dir=ckpt, seed=7, accelerator=accelerator, stop_at=stop_at,
        log=None if logs is None else (lambda step, stats: logs.append((step, stats))))
    return D, summary


def train_conditional(ckpt: Path, accelerator=None) -> ConditionalDiscriminator:
    """A text-conditional discriminator through the same loop: 3 prompts, condition dropout."""
    base_a, base_v = bases()
    real_a, real_v = data(40)
    fake_a, fake_v = data(40, seed=1)
    joint = torch.randn((3, 6), generator=torch.Generator().manual_seed(2))
    conditions = Conditions(joint, torch.arange(40) % 3, torch.arange(40).flip(0) % 3,
                            dropout=0.3)
    torch.manual_seed(1)
    D = ConditionalDiscriminator(cond_dim=6, audio_shape=AUDIO, video_shape=VIDEO, width=8,
                                 time_dim=16, head_hidden=16)
    train_discriminator(D, base_a, base_v, real_a=real_a, real_v=real_v, fake_a=fake_a,
                        fake_v=fake_v, cfg=CFG, checkpoint_dir=ckpt, seed=7,
                        accelerator=accelerator, conditions=conditions)
    return D


def critic_run(ckpt: Path, accelerator=None) -> Critic:
    base_a, base_v = bases()
    real_a, real_v = data(40)
    torch.manual_seed(3)
    C = Critic(audio_shape=AUDIO, video_shape=VIDEO, width=8, time_dim=16, dim=8)
    train_critic(C, real_a=real_a, real_v=real_v, alphas_a=base_a.alphas_cumprod(),
                 alphas_v=base_v.alphas_cumprod(), cfg=CRITIC, checkpoint_dir=ckpt, seed=3,
                 accelerator=accelerator)
    return C


def bank(**overrides) -> tuple[torch.Tensor, torch.Tensor]:
    base_a, base_v = bases()
    return fake_bank(base_a, base_v, BANK_SETTINGS, **{**BANK, **overrides})[:2]


def main(out: Path) -> None:
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    assert dist.world_size() == accelerator.num_processes == int(os.environ["WORLD_SIZE"])
    logs: list = []
    D, _ = train(out / "ckpt_full", accelerator, logs=logs)
    if dist.is_main():
        torch.save({"state": D.state_dict(), "logs": logs}, out / "d_full.pt")
    assert (not logs) != dist.is_main(), "log must be called on the main process only"
    D, summary = train(out / "ckpt_from1", accelerator)
    if dist.is_main():
        torch.save({"state": D.state_dict(), "resumed_from": summary["resumed_from"]},
                   out / "d_resumed.pt")
    _, summary = train(out / "ckpt_from2", accelerator, stop_at=STOP)
    assert summary["stopped_at"] == STOP
    Dc = train_conditional(out / "ckpt_cond", accelerator)
    if dist.is_main():
        torch.save(Dc.state_dict(), out / "d_cond.pt")
    C = critic_run(out / "ckpt_critic", accelerator)
    if dist.is_main():
        torch.save(C.state_dict(), out / "critic.pt")
    audio, video = bank()
    small = bank(num_pairs=2)   # one batch: the second process has nothing to sample
    if dist.is_main():
        torch.save({"audio": audio, "video": video, "small": small,
                    "mine": dist.batch_shard(BANK["num_pairs"], BANK["batch_size"])},
                   out / "bank.pt")
    dist.barrier()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
