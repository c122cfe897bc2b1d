"""Mixed precision: bf16 and fp16 autocast training of every modality stays finite and close to
float32, the kernel accumulates in float32, and the trainer's `mixed_precision` option.

Tolerances. A short run (6 AdamW steps, the same init, batches and noise) is compared step by
step with its float32 twin. Autocast rounds each matmul's inputs to the half type: unit round-off
2^-8 (bf16) and 2^-11 (fp16); over a few layers and six steps the observed loss deviation was at
most 0.31% (bf16, audio) and 0.02% (fp16) on this machine. The bounds, 2% (bf16) and 0.5% (fp16),
leave that margin several times over and still fail on a real precision bug: a float16 overflow
gives inf, a lost float32 accumulation or normalisation gives errors of whole percents.
"""

import pytest
import torch

from qgfd_hf import qgfd_attention, qgfd_attention_reference
from test_modeling_qgfd import build, perturb

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

RTOL = {torch.bfloat16: 0.02, torch.float16: 0.005}


def _short_run(kind, dtype, steps=6):
    torch.manual_seed(0)
    model, batch = build(kind)
    perturb(model, 0)  # off the zero-initialised output layers, so that the network's precision shows in the loss
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    losses = []
    for step in range(steps):
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = model.compute_loss(batch, generator=torch.Generator().manual_seed(step))["loss"]
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in params if p.grad is not None), f"{kind} {dtype}: non-finite gradient at step {step}"
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return torch.tensor(losses, dtype=torch.float64)


@pytest.mark.parametrize("kind", ["image", "text", "audio", "video", "tabular", "shared"])
def test_autocast_training_is_finite_and_close_to_float32(kind):
    reference = _short_run(kind, None)
    for dtype in (torch.bfloat16, torch.float16):
        losses = _short_run(kind, dtype)
        assert torch.isfinite(losses).all(), (kind, dtype, losses)
        rel = ((losses - reference).abs() / reference.abs()).max().item()
        assert rel <= RTOL[dtype], f"{kind} {dtype}: loss {rel:.2%} from float32 (allowed {RTOL[dtype]:.1%})"
    assert not torch.equal(_short_run(kind, torch.bfloat16), reference)  # autocast really ran in bf16


@pytest.mark.parametrize("graph", ["attention", "keys"])
def test_kernel_error_in_half_precision_does_not_grow_with_steps(graph):
    """V~ = sum_k c_k W_k is accumulated in float32 (and the key graph normalised in float32): the
    half-precision error against a float64 reference stays at one rounding of the output, T = 1 or 16."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 64, 16, dtype=torch.float64) for _ in range(3))
    for dtype in (torch.bfloat16, torch.float16):
        for steps in (1, 16):
            for mix in ("seed", "recurrent"):
                ref = qgfd_attention_reference(q, k, v, steps=steps, alpha=0.9, graph=graph, mix=mix)
                out = qgfd_attention(q.to(dtype), k.to(dtype), v.to(dtype), steps=steps, alpha=0.9, graph=graph, mix=mix)
                assert out.dtype == dtype
                err = (out.double() - ref).abs().max().item()
                assert err <= 2 * torch.finfo(dtype).eps * ref.abs().max().item(), (dtype, steps, mix, err)


def _trainer_losses(tmp_path, name, mixed_precision):
    from accelerate.state import AcceleratorState, GradientState

    from test_syncs import _train

    AcceleratorState._reset_state(True)  # accelerate keeps one state per process: a new precision needs a fresh one
    GradientState._reset_state()
    torch.manual_seed(0)
    trainer = _train(str(tmp_path / name), 4, log_every=1)
    trainer.args.mixed_precision = mixed_precision
    try:
        metrics = trainer.train()
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    return [r["loss"] for r in metrics["log_history"]]


def test_trainer_mixed_precision_bf16_and_fp16_refused_on_cpu(tmp_path):
    fp32 = _trainer_losses(tmp_path, "no", "no")
    bf16 = _trainer_losses(tmp_path, "bf16", "bf16")
    assert all(torch.isfinite(torch.tensor(bf16)))
    assert bf16 != fp32 and bf16 == pytest.approx(fp32, rel=RTOL[torch.bfloat16])
    with pytest.raises(ValueError, match="fp16.*needs a GPU"):
        _trainer_losses(tmp_path, "fp16", "fp16")
