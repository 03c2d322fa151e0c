"""Scaling out: sharding helpers, per-item seeds, two processes (torchrun, gloo on the CPU) that
match one, resume across process counts, and a DVC local remote round trip."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dist_worker as w
from mmdisco import distributed as dist
from mmdisco.guidance.bank import fake_bank
from mmdisco.guidance.loss import DiscriminatorLoss
from mmdisco.guidance.sampler import Guide, SamplerSettings, sample_joint, sample_single
from mmdisco.seeds import item_generators, item_seeds
from support.project import run

ROOT = Path(__file__).resolve().parents[1]
TOL = dict(rtol=1e-4, atol=1e-5)   # DDP's averaged gradient vs the whole batch's: float rounding
EPS32 = torch.finfo(torch.float32).eps


# --------------------------------------------------------------------------- float rounding
@contextlib.contextmanager
def float32_noise():
    """Inside: ``torch.randn`` asked for float64 draws float32 and widens it (the sampler's own
    draws and diffusers' ``randn_tensor`` both call it). torch fills a float64 tensor from other
    bits of the generator, so the same seed would give other numbers; with this, a float64 run
    of a sampling uses exactly the noise of its float32 run and only the arithmetic differs."""
    randn = torch.randn

    def widened(*args, dtype=None, **kwargs):
        if dtype is torch.float64:
            return randn(*args, dtype=torch.float32, **kwargs).to(torch.float64)
        return randn(*args, dtype=dtype, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "randn", widened)
        yield


def float32_error_bound(base, kind: str, steps: int, seeds) -> float:
    """What float32 arithmetic alone may change in a sample of ``base`` (absolute).

    The first step computes ``x̂_0 = (x_T − σ_T ε)/sqrt(ᾱ_T)`` (in ``TinyBase.eps`` and in
    the scheduler), where ``x_T ≈ σ_T ε`` cancel: rounding ``x_T``, ``ε`` and the difference
    costs at most ~``EPS32 · (|x_T| + |ε|) ≈ 2 · EPS32 · max|x_T|`` (``ε ≈ x_T`` at ``t = T``),
    and dividing by ``sqrt(ᾱ_T)`` (5e-5 for this schedule: a factor 2e4) carries it into ``x̂_0``
    and the sample. Later steps have ``ᾱ_t`` closer to 1 and clip ``x̂_0`` to [−1, 1], which
    only shrinks errors. Hence ``2 · EPS32 · max|x_T| / sqrt(ᾱ_T)``; a sample computed with
    another item's noise, the bug these tests look for, moves by O(1) instead."""
    scheduler = base.make_scheduler(kind)
    scheduler.set_timesteps(steps)
    alpha_t = float(base.alphas_cumprod()[int(scheduler.timesteps[0])])
    x_t = torch.cat([torch.randn((1, *base.latent_shape), generator=g)
                     for g in item_generators(seeds, base.modality)])
    return 2 * EPS32 * float(x_t.abs().max()) / alpha_t ** 0.5


def assert_float32_rounding_apart(got, want, exact, bounds) -> None:
    """``got`` and ``want`` (tuples of tensors): float32 runs of one sampling with different
    batch sizes; ``exact``: that sampling in float64 (float64's own rounding is 2^-29 times
    float32's, so it stands for the exact result), batched like ``want``.

    Both float32 runs evaluate the same formulas on the same noise; only the batched kernels
    (convolutions, matmuls) choose their blocking, hence their summation order, by the tensor
    shapes, batch included, and round differently. So each run is a float32 rounding of the
    exact result, ``err = max|want − exact|`` away from it (measured: it holds this machine's
    own rounding, whatever the CPU), and the two are within ``2 · err`` of each other (triangle
    inequality, both errors of one size). ``err`` itself must stay below the error the
    arithmetic predicts (``float32_error_bound``): that shows the float64 run is the same
    sampling, and the tolerance float32 rounding, far below a batching bug's O(1)."""
    for g, w_, x, bound in zip(got, want, exact, bounds):
        assert x.dtype == torch.float64 and g.dtype == w_.dtype == torch.float32
        err = float((w_.to(torch.float64) - x).abs().max())
        diff = float((g - w_).abs().max())
        assert err <= bound, f"float32 error {err:.3g}, predicted at most {bound:.3g}"
        assert diff <= 2 * err, f"batch sizes differ by {diff:.3g}, float32 error {err:.3g}"


# --------------------------------------------------------------------------- one process
@pytest.mark.parametrize("world", [1, 2, 3, 5])
@pytest.mark.parametrize("n", [0, 1, 7, 10])
def test_shards_are_disjoint_cover_everything_and_balanced(n, world):
    parts = [dist.shard(n, rank_=r, world=world) for r in range(world)]
    assert [i for p in parts for i in p] == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    batches = [dist.batch_shard(n, 3, rank_=r, world=world) for r in range(world)]
    assert sorted(b for bs in batches for b in bs) == dist.batches(n, 3)
    with pytest.raises(ValueError):
        dist.shard(n, rank_=world, world=world)


def test_a_single_process_resolves_auto_to_the_first_gpu_and_named_devices_as_named(monkeypatch):
    assert dist.device("cpu") == torch.device("cpu")
    assert dist.device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dist.device() == dist.device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dist.device("auto") == torch.device("cuda")
    assert dist.device("cpu") == torch.device("cpu")


def test_one_process_is_rank_zero_of_one_and_gathers_in_item_order():
    assert (dist.world_size(), dist.rank(), dist.is_main()) == (1, 0, True)
    assert dist.accelerator() is None
    gpu = torch.cuda.is_available()
    assert dist.device() == torch.device("cuda" if gpu else "cpu")   # auto: the first GPU
    x = torch.arange(12.0).reshape(4, 3)
    out = dist.gather_items(x, [2, 0, 3, 1], 4)
    assert torch.equal(out[[2, 0, 3, 1]], x)
    with pytest.raises(ValueError, match="exactly once"):
        dist.gather_items(x, [0, 0, 1, 2], 4)
    (a,), infos = dist.map_batches(lambda lo, hi: ((torch.arange(lo, hi),), hi - lo), 7, 3)
    assert torch.equal(a, torch.arange(7)) and infos == [3, 3, 1]
    dist.barrier()


@pytest.mark.parametrize("kind,eta", [("ddim", 1.0), ("ddpm", 0.0)])
def test_item_seeds_make_each_sample_independent_of_its_batch(kind, eta):
    """A batch's samples depend only on its items' seeds: the same batch computed anywhere
    (another call, another process) is the same bits. Another batch size gives the same
    samples up to float32 rounding (``assert_float32_rounding_apart``)."""
    base_a, base_v = w.bases()
    seeds = item_seeds(3, 5)
    assert seeds == item_seeds(3, 7)[:5] and item_seeds(3, 3, start=2) == seeds[2:]
    plain = SamplerSettings(steps=4, kind=kind, eta=eta)
    restarted = SamplerSettings(steps=4, kind=kind, eta=eta, restarts=1, restart_steps=1)

    def guided(bases=(base_a, base_v), D=None, **kw):
        guide = Guide(w.make_d() if D is None else D, 1.0, 1.0)
        return sample_joint(*bases, restarted, guides=[guide], **kw)

    a, v = guided(num_samples=5, item_seeds=seeds, batch_size=2)   # batches [0, 2), [2, 4), [4, 5)
    # the same batch in another call, which is what another process does: bit for bit
    a_b, v_b = guided(num_samples=2, item_seeds=seeds[2:4])
    assert torch.equal(a_b, a[2:4]) and torch.equal(v_b, v[2:4])
    # other batch sizes: one batch of 5, and items 3 and 4 (two batches above) as one batch
    a1, v1 = guided(num_samples=5, item_seeds=seeds, batch_size=5)
    a2, v2 = guided(num_samples=2, item_seeds=seeds[3:])
    with float32_noise():
        a64, v64 = guided([b.double() for b in w.bases()], w.make_d().double(), num_samples=5,
                          item_seeds=seeds, batch_size=2, dtype=torch.float64)
    bounds = [float32_error_bound(b, kind, 4, seeds) for b in (base_a, base_v)]
    assert_float32_rounding_apart((a1, v1), (a, v), (a64, v64), bounds)
    assert_float32_rounding_apart((a2, v2), (a[3:], v[3:]), (a64[3:], v64[3:]), bounds)
    # unguided, each modality is sample_single with the same item seeds, bit for bit
    a0, v0 = sample_joint(base_a, base_v, plain, num_samples=5, item_seeds=seeds, batch_size=2)
    ref_a = sample_single(base_a, plain, num_samples=5, item_seeds=seeds, batch_size=2)
    ref_v = sample_single(base_v, plain, num_samples=5, item_seeds=seeds, batch_size=2)
    assert torch.equal(a0, ref_a) and torch.equal(v0, ref_v)
    assert not torch.equal(a0[0], a0[1])   # distinct items, distinct noise
    with pytest.raises(ValueError, match="either"):
        sample_single(base_a, plain, num_samples=5, item_seeds=seeds, generator=torch.Generator())
    with pytest.raises(ValueError, match="one per sample"):
        sample_joint(base_a, base_v, plain, num_samples=4, item_seeds=seeds)


def test_shared_loss_over_equal_parts_averages_to_the_whole_batch():
    base_a, base_v = w.bases()
    real_a, real_v = w.data(8)
    fake_a, fake_v = w.data(8, seed=1)
    loss_fn = DiscriminatorLoss(0.1)

    def loss_and_grads(part):
        D = w.make_d()
        gen = torch.Generator().manual_seed(0)
        loss, _ = loss_fn(D, base_a, base_v, real_a, real_v, fake_a, fake_v, gen, part=part)
        loss.backward()
        return loss.detach(), [p.grad for p in D.parameters()], gen.get_state()

    whole, g_whole, state = loss_and_grads(None)
    parts = [loss_and_grads(slice(r * 4, (r + 1) * 4)) for r in range(2)]
    torch.testing.assert_close((parts[0][0] + parts[1][0]) / 2, whole)
    for k, g in enumerate(g_whole):
        torch.testing.assert_close((parts[0][1][k] + parts[1][1][k]) / 2, g, rtol=1e-4, atol=1e-6)
    assert all(torch.equal(p[2], state) for p in parts)   # the same draws, whatever the part


# --------------------------------------------------------------------------- two processes
@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """One torchrun launch of ``dist_worker.py`` with 2 processes, after the 1-process side
    has written the checkpoint that the 2-process side resumes."""
    out = tmp_path_factory.mktemp("dist")
    _, stopped = w.train(out / "ckpt_from1", stop_at=w.STOP)
    assert stopped["stopped_at"] == w.STOP
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MMDISCO_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           str(ROOT / "tests" / "dist_worker.py"), str(out)]
    proc = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return out


def dead_parameters(model: torch.nn.Module) -> set[str]:
    """Parameters whose gradient is identically zero: the bias of a convolution followed by a
    per-channel GroupNorm, which the norm subtracts again. Their true updates are zero, so
    AdamW turns the float noise of their gradient (~1e-9) into steps of ±lr: they wander
    differently in any two runs that round differently, without changing the function."""
    g = torch.Generator().manual_seed(9)
    a, v = torch.randn((6, *w.AUDIO), generator=g), torch.randn((6, *w.VIDEO), generator=g)
    t = torch.randint(0, 1000, (6,), generator=g)
    model.zero_grad()
    model(a, v, t).pow(2).sum().backward()
    top = max(float(p.grad.abs().max()) for p in model.parameters())
    dead = {n for n, p in model.named_parameters() if float(p.grad.abs().max()) < 1e-6 * top}
    model.zero_grad()
    return dead


def assert_same_model(got: dict, want: torch.nn.Module):
    """Same function (outputs on fixed inputs) and same weights, dead parameters aside."""
    dead = dead_parameters(want)
    assert dead and all(n.endswith("conv.bias") for n in dead), dead
    state = want.state_dict()
    assert got.keys() == state.keys()
    for k in state:
        if k not in dead:
            torch.testing.assert_close(got[k], state[k], **TOL, msg=lambda m: f"{k}: {m}")
    other = type(want)(**want.config)
    other.load_state_dict(got)
    g = torch.Generator().manual_seed(10)
    a, v = torch.randn((6, *w.AUDIO), generator=g), torch.randn((6, *w.VIDEO), generator=g)
    t = torch.randint(0, 1000, (6,), generator=g)
    with torch.no_grad():
        torch.testing.assert_close(other(a, v, t), want(a, v, t), **TOL)


def test_two_processes_train_the_same_discriminator_as_one(launched, tmp_path):
    logs: list = []
    D, _ = w.train(tmp_path / "ckpt", logs=logs)
    two = torch.load(launched / "d_full.pt", weights_only=True)
    assert_same_model(two["state"], D)
    # the main process logged the whole global batch's figures (the shares' mean)
    assert [s for s, _ in two["logs"]] == [s for s, _ in logs]
    for (_, got), (_, want) in zip(two["logs"], logs):
        assert got.keys() == want.keys()
        for k in ("loss", "bce", "dsm", "acc_real", "acc_fake", "grad_norm", "lr"):
            assert got[k] == pytest.approx(want[k], rel=1e-4, abs=1e-6), k


def test_two_processes_train_the_same_conditional_discriminator_as_one(launched, tmp_path):
    assert_same_model(torch.load(launched / "d_cond.pt", weights_only=True),
                      w.train_conditional(tmp_path / "ckpt"))


def test_resume_across_process_counts_ends_with_the_same_weights(launched, tmp_path):
    D_full, _ = w.train(tmp_path / "full")
    # checkpoint of 1 process (stopped at STOP), resumed by 2
    two = torch.load(launched / "d_resumed.pt", weights_only=True)
    assert two["resumed_from"] == w.STOP
    assert_same_model(two["state"], D_full)
    # checkpoint of 2 processes, resumed by 1
    ckpt = tmp_path / "from2"
    shutil.copytree(launched / "ckpt_from2", ckpt)
    D, summary = w.train(ckpt)
    assert summary["resumed_from"] == w.STOP
    assert_same_model(D.state_dict(), D_full)


def test_two_processes_train_the_same_critic_as_one(launched, tmp_path):
    C = w.critic_run(tmp_path / "ckpt")
    two = torch.load(launched / "critic.pt", weights_only=True)
    assert_same_model(two, C)


def test_sharded_fake_bank_is_exactly_the_one_process_bank(launched):
    audio, video = w.bank()
    two = torch.load(launched / "bank.pt", weights_only=True)
    assert two["mine"] == [(0, 3), (6, 9)]   # the main process sampled half of the batches
    assert torch.equal(two["audio"], audio) and torch.equal(two["video"], video)
    small = w.bank(num_pairs=2)
    assert all(torch.equal(x, y) for x, y in zip(two["small"], small))
    # another batch size (one batch of 10 instead of 3, 3, 3, 1): equal up to float32 rounding
    a1, v1 = w.bank(batch_size=10)
    with float32_noise():
        a64, v64, _ = fake_bank(*(b.double() for b in w.bases()), w.BANK_SETTINGS,
                                dtype=torch.float64, **w.BANK)
    base_a, base_v = w.bases()
    seeds = item_seeds(w.BANK["seed"], w.BANK["num_pairs"])
    bounds = [float32_error_bound(b, "ddim", w.BANK_SETTINGS.steps, seeds) for b in (base_a, base_v)]
    assert_float32_rounding_apart((a1, v1), (audio, video), (a64, v64), bounds)


def test_the_stage_launched_with_torchrun_writes_the_one_process_bank(tmp_path):
    """The documented launch path: ``torchrun ... -m mmdisco.cli sample-fakes`` (2 processes)
    writes the bank that one process computes, once, from the main process."""
    import yaml

    from mmdisco.bases import load_base
    from mmdisco.io import load_tensors, read_json
    from mmdisco.seeds import stage_seed

    for base, name in zip(w.bases(), ("base_audio", "base_video")):
        base.save(tmp_path / "models" / name)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["fakes"].update(num_pairs=7, steps=3, batch_size=2)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MMDISCO_THREADS": "1", "PYTHONPATH": str(ROOT),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           "-m", "mmdisco.cli", "sample-fakes", "--out", "data/fakes"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert proc.stdout.count("sample_fakes: 7 pairs") == 1 and "(2 process(es))" in proc.stdout
    base_a, base_v = (load_base(tmp_path / "models" / n) for n in ("base_audio", "base_video"))
    seed = stage_seed(params["seed"], "sample_fakes")
    audio, video, _ = fake_bank(base_a, base_v, SamplerSettings(steps=3, eta=params["fakes"]["eta"]),
                                num_pairs=7, batch_size=2, seed=seed)
    out = tmp_path / "data" / "fakes"
    assert torch.equal(load_tensors(out / "audio.safetensors")["latents"], audio)
    assert torch.equal(load_tensors(out / "video.safetensors")["latents"], video)
    assert read_json(out / "bank.json")["seeding"] == "per-item"
    assert sorted(p.name for p in out.parent.iterdir()) == ["fakes"]   # no temp or shard leftovers


# --------------------------------------------------------------------------- DVC remote
def test_dvc_local_remote_push_and_pull_round_trip(tmp_path):
    repo, remote = tmp_path / "repo", tmp_path / "remote"
    repo.mkdir()
    git = ["git", "-c", "user.email=t@mmdisco.invalid", "-c", "user.name=t"]
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo)
    (repo / "data").mkdir()
    (repo / "data" / "latents.bin").write_bytes(os.urandom(4096))
    (repo / "data" / "index.json").write_text('{"n": 1}\n')
    run(["dvc", "add", "-q", "data"], repo)
    run(["dvc", "remote", "add", "-d", "store", str(remote)], repo)
    run(git + ["add", "-A"], repo)
    run(git + ["commit", "-qm", "data"], repo)
    want = (repo / "data" / "latents.bin").read_bytes()
    run(["dvc", "push", "-q"], repo)
    assert any(p.is_file() for p in remote.rglob("*"))
    # a fresh clone's situation: neither the workspace copy nor the cache
    shutil.rmtree(repo / "data")
    shutil.rmtree(repo / ".dvc" / "cache")
    run(["dvc", "pull", "-q"], repo)
    assert (repo / "data" / "latents.bin").read_bytes() == want
    assert (repo / "data" / "index.json").read_text() == '{"n": 1}\n'
