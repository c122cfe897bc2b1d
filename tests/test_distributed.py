"""Sharded training on 2 CPU processes (gloo): FSDP2 (`torch.distributed.fsdp.fully_shard`) of a
QGFD diffusion model gives the losses and weights of a single process, and a sharded checkpoint
(`torch.distributed.checkpoint`) resumes to the same run (a new model and optimizer load it).

Why not through `accelerate launch` here: accelerate 1.15 builds FSDP only for GPU-type
distributed setups; on the CPU (`ACCELERATE_USE_CPU=1`) it runs MULTI_CPU, i.e. DDP, even with
`distributed_type: FSDP` (QGFDTrainer refuses that, see `test_trainer_refuses_fsdp_that_accelerate_drops`).
So this test shards the model with PyTorch's FSDP2 directly, as accelerate's FSDP2 plugin does on
GPUs (`fully_shard` on each block, then on the model). DDP against one process through the trainer:
`tests/training/test_trainer.py::test_two_processes_match_one_process`.

This file is also the script the subprocess tests run:
    python -m torch.distributed.run --nproc_per_node 2 tests/test_distributed.py OUT
"""

import argparse
import json
import os
import subprocess
import sys

import pytest
import torch

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
sys.path[:0] = [REPO, TESTS, os.path.join(TESTS, "training")]  # test_trainer.py's tiny model

from test_modeling_qgfd import build, perturb  # noqa: E402

STEPS, SAVE_AT, BATCH = 4, 2, 4


def make_model_and_data():
    torch.manual_seed(0)
    model, _ = build("pixels")
    perturb(model, 0)
    model.train()
    rows = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(3)) * 2 - 1
    return model, rows


def train_steps(model, opt, rows, start, stop, rank=0, world=1):
    """Steps start..stop-1 on global batches of BATCH rows; each process takes its BATCH / world rows
    (t and noise are drawn for the whole batch, then sliced: the same numbers as one process)."""
    import torch.distributed as dist

    losses = []
    for step in range(start, stop):
        batch = rows[(step * BATCH) % len(rows):][:BATCH]
        g = torch.Generator().manual_seed(step)
        t = torch.randint(0, model.config.num_timesteps, (BATCH,), generator=g)
        noise = torch.randn(model.latent_shape(BATCH), generator=g)
        part = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
        model._draw_t_and_noise = lambda x0, generator: (t[part], noise[part])
        loss = model({"pixel_values": batch[part]})["loss"]  # through forward: FSDP gathers the parameters in its hooks
        loss.backward()  # FSDP reduce-scatters the mean of the processes' gradients
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss = loss.detach()
        if world > 1:
            dist.all_reduce(loss)
            loss /= world
        losses.append(loss.item())
    return losses


def _sharded(rank, world):
    """The model with FSDP2 on each block and on the whole (as accelerate's FSDP2 plugin wraps), and its AdamW."""
    from torch.distributed.fsdp import fully_shard

    model, rows = make_model_and_data()
    for block in model.backbone.blocks:
        fully_shard(block)
    fully_shard(model)
    return model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3), rows


def _child():
    """Train STEPS steps sharded, saving a sharded checkpoint at SAVE_AT; then a new model and
    optimizer (fresh objects, weights re-initialised) load that checkpoint and run the last steps."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict, set_state_dict

    p = argparse.ArgumentParser()
    p.add_argument("out")
    a = p.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    ckpt = os.path.join(a.out, "checkpoint")
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)

    model, opt, rows = _sharded(rank, world)
    losses = train_steps(model, opt, rows, 0, SAVE_AT, rank, world)
    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=ckpt)  # each process writes its own shards
    losses += train_steps(model, opt, rows, SAVE_AT, STEPS, rank, world)
    weights = get_model_state_dict(model, options=full)
    sharded = sum(1 for p in model.parameters() if type(p).__name__ == "DTensor")

    model, opt, rows = _sharded(rank, world)
    msd, osd = get_state_dict(model, opt)
    state = {"model": msd, "optim": osd}
    dcp.load(state, checkpoint_id=ckpt)
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    resumed = train_steps(model, opt, rows, SAVE_AT, STEPS, rank, world)
    resumed_weights = get_model_state_dict(model, options=full)
    if rank == 0:
        torch.save({"weights": weights, "resumed_weights": resumed_weights}, os.path.join(a.out, "weights.pt"))
        with open(os.path.join(a.out, "losses.json"), "w") as f:
            json.dump({"losses": losses, "resumed": resumed, "world": world, "sharded_parameters": sharded}, f)
    dist.destroy_process_group()
    # Every result is on disk. Leave without the interpreter's teardown: there, now and then, a process
    # aborts ("terminate called without an active exception", SIGABRT) after a gloo run with
    # torch.distributed.checkpoint, and torchrun then reports the run failed (docs/distributed.md).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _launch(out, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--rdzv-backend", "c10d",
           "--rdzv-endpoint", "localhost:0", os.path.abspath(__file__), out, *extra]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_fsdp_two_processes_match_one_and_resume(tmp_path):
    out = str(tmp_path)
    model, rows = make_model_and_data()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    single = train_steps(model, opt, rows, 0, STEPS)
    single_weights = model.state_dict()

    _launch(out)
    with open(os.path.join(out, "losses.json")) as f:
        sharded = json.load(f)
    saved = torch.load(os.path.join(out, "weights.pt"))
    assert sharded["world"] == 2 and sharded["sharded_parameters"] > 0  # really FSDP: DTensor parameters
    assert sharded["losses"] == pytest.approx(single, rel=1e-5)
    # Summation order differs (two half-batch gradients, then their mean); AdamW divides by sqrt(v),
    # so a near-zero gradient's round-off moves its weight by up to ~1e-5; 4 steps at lr 1e-3 move weights by up to 4e-3.
    for k, v in saved["weights"].items():
        torch.testing.assert_close(v, single_weights[k], atol=1e-4, rtol=1e-4)
    # Resumed from the sharded checkpoint at step SAVE_AT: the uninterrupted run's last steps.
    assert sharded["resumed"] == pytest.approx(sharded["losses"][SAVE_AT:], rel=1e-6)
    for k, v in saved["resumed_weights"].items():
        torch.testing.assert_close(v, saved["weights"][k], atol=1e-6, rtol=1e-6)


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_deepspeed_zero2_trainer_two_processes_match_one_and_resume(tmp_path):
    """`accelerate launch --use_deepspeed --zero_stage 2` with 2 CPU processes (gloo) running
    `QGFDTrainer` (the tiny model of tests/training/test_trainer.py): the losses and saved weights of one
    process, optimizer states partitioned across the two (one file per process, ZeRO stage 2 in the
    saved DeepSpeed config), and a resume from the step-4 checkpoint ends on the same weights.

    Skipped where deepspeed is not installed (it is not a test requirement: see docs/distributed.md).
    Its first run JIT-compiles DeepSpeed's shared-memory communication op (minutes; cached after)."""
    pytest.importorskip("deepspeed")
    import shutil

    from test_trainer import run_training, saved_weights

    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    clip = 0.05  # not accelerate's default of 1.0; it clips here (step 3's loss 0.99883, against 0.99878 at 1.0)
    _, m1 = run_training(one, max_steps=8, deterministic=True, checkpoint_every=4, max_grad_norm=clip)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("ACCELERATE_USE_CPU", None)  # with it accelerate runs DDP, not DeepSpeed
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--use_deepspeed", "--zero_stage", "2",
           "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", "0", os.path.join(TESTS, "training", "test_trainer.py"), two, "--max-steps", "8", "--deterministic",
           "--max-grad-norm", str(clip)]

    def launch(*extra):
        res = subprocess.run(cmd + list(extra), env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        return res.stderr

    launch()
    with open(os.path.join(two, "metrics.json")) as f:
        m2 = json.load(f)
    assert m2["num_processes"] == 2
    for a, b in zip(m1["log_history"], m2["log_history"], strict=True):
        assert a["step"] == b["step"] and a["lr"] == pytest.approx(b["lr"])
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    w1 = saved_weights(one)
    for k, v in saved_weights(two).items():
        torch.testing.assert_close(v, w1[k], atol=1e-6, rtol=1e-5)
    states = os.path.join(two, "checkpoints", "checkpoint-00000004", "pytorch_model")
    shards = sorted(f for f in os.listdir(states) if f.endswith("_optim_states.pt"))
    assert shards == ["zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt"]
    saved = torch.load(os.path.join(states, shards[0]), weights_only=False)
    assert saved["ds_config"]["zero_optimization"]["stage"] == 2
    assert saved["ds_config"]["gradient_clipping"] == clip  # the trainer's max_grad_norm
    assert saved["ds_config"]["gradient_accumulation_steps"] == 1

    # Interrupted after step 4: the last checkpoint and the final model gone; resume from step 4
    # (which is read, not written again: a run started afresh would rewrite it).
    shutil.rmtree(os.path.join(two, "checkpoints", "checkpoint-00000008"))
    shutil.rmtree(os.path.join(two, "model"))
    written = os.stat(os.path.join(states, shards[0])).st_mtime_ns
    launch("--resume")
    assert os.stat(os.path.join(states, shards[0])).st_mtime_ns == written
    assert os.path.isdir(os.path.join(two, "checkpoints", "checkpoint-00000008"))
    for k, v in saved_weights(two).items():
        torch.testing.assert_close(v, w1[k], atol=1e-6, rtol=1e-5)


def test_trainer_refuses_fsdp_that_accelerate_drops(tmp_path, monkeypatch):
    """`accelerate launch` with an FSDP config sets ACCELERATE_USE_FSDP; on the CPU accelerate then
    runs DDP (or one process) instead: the trainer says so rather than train unsharded."""
    from accelerate.state import AcceleratorState, GradientState

    from test_syncs import _train

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    try:
        with pytest.raises(ValueError, match="asked for FSDP but accelerate set up"):
            _train(str(tmp_path / "run"), 2).train()
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()


if __name__ == "__main__":
    _child()
