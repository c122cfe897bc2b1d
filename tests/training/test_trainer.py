"""Tests of the trainer: resume after a kill, 2 processes vs 1, accumulation, EMA, checkpoints, PNG.

The model here is a tiny `PreTrainedModel` with the modality models' training contract
(`compute_loss(batch, generator=None) -> dict(loss=...)`), a QGFD attention layer whose alpha
warms up, and dropout (so RNG handling on resume is exercised). With `deterministic=True` its
loss takes `t` and the noise from the data rows instead of the generator: then runs that see
the same global batches must end with the same weights, whatever the process count.

This file is also the script the subprocess tests run:
    python tests/training/test_trainer.py OUT_DIR --max-steps 12 [--resume] [--deterministic]
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.nn as nn
from transformers import PretrainedConfig, PreTrainedModel

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from qgfd_hf import DDPMBetaSchedule, QGFDMultiheadAttention, q_sample  # noqa: E402
from qgfd_hf.training.ema import EMAModel  # noqa: E402
from qgfd_hf.training.trainer import QGFDTrainer  # noqa: E402
from qgfd_hf.training.arguments import QGFDTrainingArguments  # noqa: E402
from qgfd_hf.training.checkpoints import last_checkpoint, list_checkpoints  # noqa: E402

L, D = 4, 8  # tokens and width of the toy latents


class TinyDiffusionConfig(PretrainedConfig):
    model_type = "tiny-qgfd-trainer-test"

    def __init__(self, width=32, num_timesteps=50, deterministic=False, dropout=0.1, qgfd_warmup_steps=6, modality="tabular", **kwargs):
        self.width, self.num_timesteps, self.deterministic = width, num_timesteps, deterministic
        self.dropout, self.qgfd_warmup_steps, self.modality = dropout, qgfd_warmup_steps, modality
        super().__init__(**kwargs)


class TinyDiffusionModel(PreTrainedModel):
    """eps_theta(x_t, t) on [B, L, D] latents: in-projection, one QGFD self-attention, out-projection."""

    config_class = TinyDiffusionConfig

    def __init__(self, config):
        super().__init__(config)
        w = config.width
        self.proj_in = nn.Linear(D + 1, w)
        self.attn = QGFDMultiheadAttention(w, 4, dropout=config.dropout, qgfd_steps=1, qgfd_alpha=0.5, warmup_steps=config.qgfd_warmup_steps)
        self.drop = nn.Dropout(config.dropout)
        self.proj_out = nn.Linear(w, D)
        self._schedule = None  # built on first use: `from_pretrained` builds modules on the meta device
        self.alphas_seen = []  # the QGFD warm-up factor at each loss call
        self.post_init()

    def compute_loss(self, batch, generator=None):
        x0 = batch["x"]  # (B, L, D)
        B = x0.shape[0]
        if self.config.deterministic:
            t, noise = batch["t"], batch["noise"]
        else:
            t = torch.randint(0, self.config.num_timesteps, (B,), generator=generator, device=x0.device)
            noise = torch.randn(x0.shape, generator=generator, device=x0.device)
        if self._schedule is None:
            self._schedule = DDPMBetaSchedule(self.config.num_timesteps)
        x_t, _ = q_sample(x0, t, self._schedule, noise)
        tt = (t.float() / self.config.num_timesteps)[:, None, None].expand(B, L, 1)
        h = self.proj_in(torch.cat([x_t, tt], -1))  # (B, L, w)
        h = h + self.drop(self.attn(h))
        loss = ((self.proj_out(h) - noise) ** 2).mean()
        self.alphas_seen.append(self.attn.qgfd_alpha.warmup_factor())
        return {"loss": loss, "diffusion_loss": loss, "recon_loss": None}


def make_dataset(n=48, seed=0):
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    return Dataset.from_dict(
        {
            "x": torch.randn(n, L, D, generator=g).tolist(),
            "t": torch.randint(0, 50, (n,), generator=g).tolist(),
            "noise": torch.randn(n, L, D, generator=g).tolist(),
        }
    ).with_format("torch")


def collate(rows):
    return {k: torch.stack([r[k] for r in rows]) for k in ("x", "t", "noise")}


def make_model(seed=0, **kw):
    torch.manual_seed(seed)
    return TinyDiffusionModel(TinyDiffusionConfig(**kw))


def run_training(out, max_steps=12, resume=False, deterministic=False, batch_size=8, accum=1, checkpoint_every=3, progress=False,
                 max_grad_norm=1.0):
    model = make_model(deterministic=deterministic, dropout=0.0 if deterministic else 0.1)
    args = QGFDTrainingArguments(
        out, max_steps=max_steps, batch_size=batch_size, gradient_accumulation_steps=accum, learning_rate=3e-3,
        warmup_steps=2, checkpoint_every=checkpoint_every, keep_last=2, log_every=1, seed=0, progress=progress,
        max_grad_norm=max_grad_norm,
    )
    trainer = QGFDTrainer(model, args, make_dataset(), data_collator=collate, metadata={"dataset": "toy"})
    metrics = trainer.train(resume=resume)
    return trainer, metrics


def saved_weights(out):
    from safetensors.torch import load_file

    return load_file(os.path.join(out, "model", "model.safetensors"))


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


# ----------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------


def test_arguments_are_validated():
    with pytest.raises(ValueError, match="max_steps"):
        QGFDTrainingArguments("o", max_steps=0)
    with pytest.raises(ValueError, match="lr_schedule"):
        QGFDTrainingArguments("o", lr_schedule="step")
    with pytest.raises(ValueError, match="ema_decay"):
        QGFDTrainingArguments("o", ema_decay=1.0)
    with pytest.raises(ValueError, match="mixed_precision"):
        QGFDTrainingArguments("o", mixed_precision="fp8")


def test_trainer_rejects_bad_setups(tmp_path):
    args = QGFDTrainingArguments(str(tmp_path), max_steps=2, batch_size=100, progress=False)
    with pytest.raises(ValueError, match="fewer than one batch"):
        QGFDTrainer(make_model(), args, make_dataset(), collate)
    with pytest.raises(ValueError, match="compute_loss"):
        QGFDTrainer(nn.Linear(2, 2), QGFDTrainingArguments(str(tmp_path)), make_dataset(), collate)
    trainer = QGFDTrainer(make_model(), QGFDTrainingArguments(str(tmp_path / "x"), max_steps=2, batch_size=8, progress=False), make_dataset(), collate)
    with pytest.raises(ValueError, match="no complete checkpoint"):
        trainer.train(resume=True)


def test_training_writes_model_metrics_png_and_checkpoints(tmp_path):
    from PIL import Image

    out = str(tmp_path / "run")
    trainer, metrics = run_training(out, max_steps=9, checkpoint_every=3)
    # The saved folder reloads, with the EMA weights.
    reloaded = TinyDiffusionModel.from_pretrained(os.path.join(out, "model"))
    ema_state = trainer.ema_model_state()
    for k, v in reloaded.state_dict().items():
        torch.testing.assert_close(v, ema_state[k])
    live = trainer.model.state_dict()
    assert any(not torch.equal(live[k], ema_state[k]) for k in trainer.ema.names)  # EMA differs from the live weights
    # Keep the last 2 checkpoints, no temporary folders.
    ckpts = list_checkpoints(os.path.join(out, "checkpoints"))
    assert [os.path.basename(c) for c in ckpts] == ["checkpoint-00000006", "checkpoint-00000009"]
    assert not [n for n in os.listdir(os.path.join(out, "checkpoints")) if n.startswith(".tmp")]
    # metrics.json and the loss PNG.
    with open(os.path.join(out, "metrics.json")) as f:
        saved = json.load(f)
    assert saved["global_step"] == 9 and saved["dataset"] == "toy" and len(saved["log_history"]) == 9
    png = os.path.join(out, "loss.png")
    with open(png, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as im:
        im.verify()
        assert im.format == "PNG" and im.size[0] > 100
    # QGFD alpha warm-up follows optimizer steps: factor = min(1, step / 6) before steps 0..8.
    assert trainer.model.alphas_seen == [min(1.0, s / 6) for s in range(9)]
    # The learning rate warmed up then decayed (cosine) to 0 at the last step.
    lrs = [r["lr"] for r in saved["log_history"]]
    assert lrs[0] < lrs[1] and lrs[-1] == pytest.approx(0.0, abs=1e-12)


def test_ema_decay_and_restore():
    model = nn.Linear(3, 1)
    ema = EMAModel(model, decay=0.9)
    assert ema.current_decay() == pytest.approx(0.1)  # (1 + 0) / (10 + 0): warm start
    w0 = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    torch.testing.assert_close(ema.shadow["weight"], 0.1 * w0 + 0.9 * (w0 + 1))
    ema.copy_to(model)
    torch.testing.assert_close(model.weight.detach(), ema.shadow["weight"])
    ema.restore(model)
    torch.testing.assert_close(model.weight.detach(), w0 + 1)
    state = ema.state_dict()
    other = EMAModel(nn.Linear(3, 1), decay=0.5)
    other.load_state_dict(state)
    assert other.num_updates == 1 and other.decay == 0.9


def test_gradient_accumulation_matches_a_larger_batch(tmp_path):
    """4 rows x 2 micro-steps == 8 rows x 1 step (deterministic loss, same data order)."""
    _, a = run_training(str(tmp_path / "a"), max_steps=6, deterministic=True, batch_size=8, accum=1, checkpoint_every=0)
    _, b = run_training(str(tmp_path / "b"), max_steps=6, deterministic=True, batch_size=4, accum=2, checkpoint_every=0)
    wa, wb = saved_weights(str(tmp_path / "a")), saved_weights(str(tmp_path / "b"))
    assert a["examples_seen"] == b["examples_seen"] == 48
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-5)


def test_stale_temporary_checkpoint_is_ignored_and_cleaned(tmp_path):
    out = str(tmp_path / "run")
    run_training(out, max_steps=3, checkpoint_every=3)
    ckdir = os.path.join(out, "checkpoints")
    # A save killed half way leaves only a temporary folder; resume must not pick it.
    os.makedirs(os.path.join(ckdir, ".tmp-checkpoint-00000099"))
    assert os.path.basename(last_checkpoint(ckdir)) == "checkpoint-00000003"
    run_training(out, max_steps=6, resume=True, checkpoint_every=3)
    assert not os.path.exists(os.path.join(ckdir, ".tmp-checkpoint-00000099"))


def test_killed_run_resumes_to_the_same_weights(tmp_path):
    """SIGKILL a training subprocess after its 2nd checkpoint, resume it, and compare with an
    uninterrupted run of the same seed: same final step, same weights."""
    ref_out, killed_out = str(tmp_path / "ref"), str(tmp_path / "killed")
    _, ref_metrics = run_training(ref_out, max_steps=12, checkpoint_every=3)

    cmd = [sys.executable, os.path.abspath(__file__), killed_out, "--max-steps", "12", "--slow"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckdir = os.path.join(killed_out, "checkpoints")
    deadline = time.time() + 120
    try:
        while time.time() < deadline and proc.poll() is None:
            if len(list_checkpoints(ckdir)) >= 2:  # checkpoint-3 and checkpoint-6 are complete
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not os.path.exists(os.path.join(killed_out, "model"))  # it never finished
    step_at_kill = int(os.path.basename(last_checkpoint(ckdir)).split("-")[1])
    assert 6 <= step_at_kill < 12

    _, resumed_metrics = run_training(killed_out, max_steps=12, resume=True, checkpoint_every=3)
    assert resumed_metrics["global_step"] == ref_metrics["global_step"] == 12
    ref_w, res_w = saved_weights(ref_out), saved_weights(killed_out)
    assert ref_w.keys() == res_w.keys()
    for k in ref_w:
        torch.testing.assert_close(res_w[k], ref_w[k], atol=1e-6, rtol=1e-6)
    # The loss history survives the kill too (it lives in the checkpoint).
    assert [r["step"] for r in resumed_metrics["log_history"]] == list(range(1, 13))
    for a, b in zip(resumed_metrics["log_history"], ref_metrics["log_history"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    """`accelerate launch` with 2 CPU processes (gloo) and the same global batch as 1 process.

    Note: on accelerate 1.x, `accelerate launch --cpu --num_processes 2` starts ONE process
    (huggingface/accelerate#2741); `--multi_gpu` with `ACCELERATE_USE_CPU=1` starts two CPU
    processes through torch.distributed.run, which is what this test does (and checks).
    """
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    _, m1 = run_training(one, max_steps=8, deterministic=True, checkpoint_every=4)
    env = _env()
    env["ACCELERATE_USE_CPU"] = "1"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
        os.path.abspath(__file__), two, "--max-steps", "8", "--deterministic",
    ]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    with open(os.path.join(two, "metrics.json")) as f:
        m2 = json.load(f)
    assert m2["num_processes"] == 2 and m1["num_processes"] == 1
    # Same global batches and a loss that depends only on the rows: the same run up to float round-off.
    for a, b in zip(m1["log_history"], m2["log_history"]):
        assert a["step"] == b["step"] and a["lr"] == pytest.approx(b["lr"])
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    w1, w2 = saved_weights(one), saved_weights(two)
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------------------
# Subprocess entry point
# ----------------------------------------------------------------------------------------


def _child():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--max-steps", type=int, default=12)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--deterministic", action="store_true")
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--slow", action="store_true", help="sleep in each loss call so a test can kill the run mid-way")
    a = p.parse_args()
    if a.slow:
        original = TinyDiffusionModel.compute_loss

        def slow(self, batch, generator=None):
            time.sleep(0.05)
            return original(self, batch, generator)

        TinyDiffusionModel.compute_loss = slow
    run_training(a.out, max_steps=a.max_steps, resume=a.resume, deterministic=a.deterministic, checkpoint_every=3 if not a.deterministic else 4,
                 max_grad_norm=a.max_grad_norm)


if __name__ == "__main__":
    _child()
