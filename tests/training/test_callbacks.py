"""Tests for `qgfd_hf/training/callbacks.py`: the alpha warm-up driven by a real `transformers.Trainer` run."""

import pytest
import torch
import torch.nn as nn
from transformers import Trainer, TrainingArguments

from qgfd_hf import QGFDMultiheadAttention, QGFDWarmupCallback


class TinyRegressor(nn.Module):
    """One QGFD self-attention layer and a linear head; records the alpha each forward uses."""

    def __init__(self, alpha=0.8, warmup_steps=4):
        super().__init__()
        self.attn = QGFDMultiheadAttention(16, 2, qgfd_steps=1, qgfd_alpha=alpha, warmup_steps=warmup_steps)
        self.head = nn.Linear(16, 1)
        self.seen = []  # (training, alpha) of every forward

    def forward(self, x, labels=None):
        self.seen.append((self.training, float(self.attn.qgfd_alpha())))
        y = self.head(self.attn(x)).mean(1).squeeze(-1)  # (B,)
        return {"loss": nn.functional.mse_loss(y, labels), "logits": y}


class ToyData(torch.utils.data.Dataset):
    def __init__(self, n, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 5, 16, generator=g)
        self.y = torch.randn(n, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


def test_warmup_callback_ramps_alpha_in_a_trainer_run(tmp_path):
    torch.manual_seed(0)
    model = TinyRegressor(alpha=0.8, warmup_steps=4)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=6,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        learning_rate=1e-3,
        eval_strategy="steps",
        eval_steps=2,
        per_device_eval_batch_size=2,
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=ToyData(24), eval_dataset=ToyData(2, seed=1),
                      callbacks=[QGFDWarmupCallback()])
    trainer.train()

    train_alphas = [a for training, a in model.seen if training]
    eval_alphas = [a for training, a in model.seen if not training]
    # Optimizer step n (two micro-batches each) uses alpha * min(1, n / warmup_steps).
    want = [0.8 * min(1.0, n / 4) for n in range(6) for _ in range(2)]
    assert train_alphas == pytest.approx(want)
    # Evaluation (after steps 2, 4 and 6) is in eval mode: full alpha, even mid-warm-up.
    assert eval_alphas and eval_alphas == pytest.approx([0.8] * len(eval_alphas))
    assert model.attn.qgfd_alpha.step == 5


def test_warmup_callback_sets_the_step_on_every_qgfd_module():
    model = nn.ModuleList([TinyRegressor(), TinyRegressor()])
    state = type("State", (), {"global_step": 3})()
    QGFDWarmupCallback().on_step_begin(None, state, None, model=model)
    assert [m.attn.qgfd_alpha.step for m in model] == [3, 3]
