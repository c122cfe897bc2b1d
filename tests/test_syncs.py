"""No host reads (device synchronisations on a GPU) in the hot paths.

On a GPU every read of a tensor's value on the host (`.item()`, `bool(t)`, `int(t)`,
`float(t)`, `if t:`, `.tolist()`, `.cpu()`, `nonzero`, boolean-mask indexing) waits for the
device to finish the queued work. On the CPU nothing waits, but the same calls happen, so
`HostReads` counts them here: a `TorchDispatchMode` sees `aten._local_scalar_dense` (which
`.item()`, `bool`, `int`, `float` and `if t:` all go through, checked in `test_counter_sees_every_read`)
and the ops whose output size depends on values (`nonzero`, `masked_select`, `equal`,
`unique`, bool-mask `index`), and a `TorchFunctionMode` sees `.tolist()`, `.cpu()` and
`.numpy()` (on the CPU they read without dispatching). The hot paths: a denoiser forward, a
kernel call, a sampler step, a training step. The CUDA test at the end runs the same paths
under `torch.cuda.set_sync_debug_mode("error")`; it is skipped without a GPU.
"""

import os
import traceback

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from qgfd_hf import QGFDDiffusionBackbone, DiffusionConfig, make_sampler, qgfd_attention
from qgfd_hf.attention_qgfd import value_checks
from qgfd_hf.training.ema import EMAModel
from test_modeling_qgfd import build, condition

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

_ops = torch.ops.aten
_READ_OPS = {
    _ops._local_scalar_dense.default, _ops.nonzero.default, _ops.masked_select.default, _ops.equal.default,
    _ops.is_nonzero.default, _ops._unique2.default, _ops.unique_dim.default, _ops.unique_consecutive.default,
}
_READ_METHODS = {"tolist", "cpu", "numpy"}
# Not counted, because they read CPU tensors in a GPU run too (no device sync): AdamW's step
# counter (`capturable=False`), and the data loaders' samplers (a shuffle per epoch, accelerate's
# seeds). Also not counted: transformers' own mask shortcut (`masking_utils`: T5's encoder checks
# `padding_mask.all()` in eager mode so that SDPA can drop an all-ones mask; skipped under
# torch.compile), one read per call of the text models' condition encoder.
_NOT_COUNTED = tuple(
    os.sep + p
    for p in (os.path.join("torch", "optim") + os.sep, os.path.join("torch", "utils", "data") + os.sep,
              os.path.join("accelerate", "data_loader.py"), os.path.join("transformers", "masking_utils.py"))
)


class _Dispatch(TorchDispatchMode):
    def __init__(self, sink):
        super().__init__()
        self.sink = sink

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        bool_index = func is _ops.index.Tensor and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (args[1] if len(args) > 1 else [])
        )
        if func in _READ_OPS or bool_index:
            self.sink(str(func))
        return func(*args, **kwargs)


class _Function(TorchFunctionMode):
    def __init__(self, sink):
        super().__init__()
        self.sink = sink

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", None) in _READ_METHODS:
            self.sink(func.__name__)
        return func(*args, **(kwargs or {}))


class HostReads:
    """Context manager: `reads` lists (what, where) for every host read of a tensor inside it."""

    def __init__(self):
        self.reads = []

    def _sink(self, what):
        stack = traceback.extract_stack()[:-3]
        if any(part in frame.filename for frame in stack[-8:] for part in _NOT_COUNTED):
            return
        where = next((f"{f.filename.split(os.sep)[-1]}:{f.lineno} {f.line}" for f in reversed(stack) if "qgfd_hf" in f.filename), "?")
        self.reads.append((what, where))

    def __enter__(self):
        self._modes = [_Function(self._sink), _Dispatch(self._sink)]
        for m in self._modes:
            m.__enter__()
        return self

    def __exit__(self, *exc):
        for m in reversed(self._modes):
            m.__exit__(*exc)


def test_counter_sees_every_read():
    x = torch.randn(4)
    reads = [
        lambda: x[0].item(), lambda: bool(x[0] > 0), lambda: int(x[0]), lambda: float(x[0]),
        lambda: 1 if x.sum() else 0, lambda: x.tolist(), lambda: x.cpu(), lambda: x.nonzero(),
        lambda: x[x > 0], lambda: torch.isfinite(x).all().item(),
    ]
    for read in reads:
        with HostReads() as h:
            read()
        assert len(h.reads) >= 1, read
    with HostReads() as h:  # work that stays on the device is not counted
        (x * 2).softmax(0).sum()
    assert h.reads == []


# ----------------------------------------------------------------------------------------
# The hot paths, with the value checks as the trainer and the samplers run them: off
# ----------------------------------------------------------------------------------------


def test_kernel_has_no_host_reads():
    q, k, v = (torch.randn(2, 4, 16, 8, requires_grad=True) for _ in range(3))
    alpha = torch.full((4,), 0.3, requires_grad=True)  # a learnable per-head alpha
    mask = torch.rand(2, 1, 16, 16) > 0.2
    with value_checks(False), HostReads() as h:
        for graph in ("attention", "keys"):
            out = qgfd_attention(q, k, v, steps=2, alpha=alpha, graph=graph, attn_mask=mask)
            out = out + qgfd_attention(q, k, v, steps=1, alpha=0.5, graph=graph, is_causal=True)
            out.sum().backward()
    assert h.reads == []


def test_kernel_value_checks_still_on_by_default():
    q = torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        qgfd_attention(q, q, q, steps=1, alpha=torch.tensor([0.5, 1.5]))
    with value_checks(False):  # unchecked: the caller vouches for alpha
        qgfd_attention(q, q, q, steps=1, alpha=torch.tensor([0.5, 0.5]))


def test_backbone_forward_has_no_host_reads():
    cfg = DiffusionConfig(d_model=32, num_heads=4, num_layers=2, d_ff=64, latent_dim=16, qgfd_steps=2)
    net = QGFDDiffusionBackbone(cfg)
    x_t, t = torch.randn(2, 10, 16), torch.tensor([3, 500])
    cond, mask = torch.randn(2, 4, 32), torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    with value_checks(False), HostReads() as h:
        net(x_t, t, cond_tokens=cond, cond_mask=mask).sum().backward()
    assert h.reads == []
    with HostReads() as h:  # on by default: the checks read the inputs, and the count sees them
        net(x_t, t, cond_tokens=cond, cond_mask=mask)
    assert h.reads


def test_patched_model_training_forward_has_no_host_reads():
    """A patched Llama (left padding, a learnable alpha) and ViT: forward + backward, checks on (the default)."""
    import qgfd_hf
    from transformers import LlamaConfig, LlamaForCausalLM, ViTConfig, ViTModel

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64)
    llama = qgfd_hf.patch_model(LlamaForCausalLM(cfg), steps=1, alpha=0.5, learnable_alpha=True).train()
    ids, mask = torch.randint(3, 64, (2, 6)), torch.ones(2, 6, dtype=torch.long)
    mask[0, :2] = 0
    vit = qgfd_hf.patch_model(ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                                 image_size=16, patch_size=4)), steps=2, alpha=0.5)
    with HostReads() as h:
        llama(input_ids=ids, attention_mask=mask, labels=ids, use_cache=False).loss.backward()
        vit(pixel_values=torch.randn(2, 3, 16, 16)).last_hidden_state.sum().backward()
    assert h.reads == []


MODALITIES = ["text", "image", "audio", "video", "tabular", "shared"]


@pytest.mark.parametrize("kind", MODALITIES)
def test_training_step_has_no_host_reads(kind):
    """forward + loss + backward + clip + AdamW + EMA, as one QGFDTrainer micro-step runs it."""
    model, batch = build(kind)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    ema = EMAModel(model, 0.99)
    g = torch.Generator().manual_seed(0)
    model.get_schedule()  # built once, on the CPU, and cached
    for step in range(2):  # the second step: AdamW's state exists
        with value_checks(False), HostReads() as h:
            loss = model.compute_loss(batch, generator=g)["loss"]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            ema.update(model)
        assert h.reads == [], h.reads


def test_class_conditional_training_step_has_no_host_reads():
    """A class-conditional model with label dropout: the labels are checked where they enter, not per step."""
    model, batch = build("pixels", num_classes=3, cond_dropout_prob=0.5)
    model.train()
    batch = dict(batch, class_labels=torch.tensor([0, 1, 2, 1]))
    g = torch.Generator().manual_seed(0)
    model.get_schedule()
    with value_checks(False), HostReads() as h:
        model.compute_loss(batch, generator=g)["loss"].backward()
    assert h.reads == [], h.reads
    with pytest.raises(ValueError, match=r"class_labels. must lie in \[0, 3\)"):  # checks on: the range is read
        model.compute_loss(dict(batch, class_labels=torch.tensor([0, 1, 2, 3])), generator=g)


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0])
def test_guided_sampler_step_has_no_host_reads(guidance_scale):
    """Classifier-free guidance (one batched forward) adds no host reads to a sampler step."""
    model, _ = build("pixels", num_classes=3, cond_dropout_prob=0.1, num_timesteps=50)
    model.eval()
    schedule = model.get_schedule()
    s = make_sampler("dpmsolver++", schedule, num_inference_steps=3)
    denoise = model.make_denoise_fn(None, None, schedule, class_labels=torch.tensor([0, 2]), guidance_scale=guidance_scale)
    x = torch.randn(model.latent_shape(2))
    with torch.no_grad(), value_checks(False), HostReads() as h:
        for t in s.timesteps:
            x = s.step(denoise(s.scale_model_input(x, t), torch.full((2,), t, dtype=torch.long)), t, x)
    assert h.reads == []


def _train(out, max_steps, rows=None, log_every=100):
    from datasets import Dataset

    from qgfd_hf.training.trainer import QGFDTrainer
    from qgfd_hf.training.arguments import QGFDTrainingArguments

    model, batch = build("pixels")
    rows = batch["pixel_values"] if rows is None else rows
    data = Dataset.from_dict({"pixel_values": rows.tolist()}).with_format("torch")
    args = QGFDTrainingArguments(out, max_steps=max_steps, batch_size=2, checkpoint_every=0, log_every=log_every, progress=False, ema_decay=0.9)
    collate = lambda rs: {"pixel_values": torch.stack([r["pixel_values"] for r in rs])}  # noqa: E731
    trainer = QGFDTrainer(model, args, data, data_collator=collate)
    trainer.model.get_schedule()
    return trainer


def test_trainer_reads_do_not_grow_with_steps(tmp_path):
    """A whole `QGFDTrainer.train()`: the host reads are the first batch's checks and the logs, not one per step."""
    counts = []
    for steps in (3, 9):
        trainer = _train(str(tmp_path / f"run{steps}"), steps)
        with HostReads() as h:
            trainer.train()
        counts.append(len(h.reads))
    assert counts[0] == counts[1], counts


def test_trainer_still_stops_on_a_non_finite_loss(tmp_path):
    """The loss is checked where the trainer reads it (each log, each checkpoint), naming the step."""
    rows = torch.rand(8, 1, 8, 8) * 2 - 1
    rows[5, 0, 0, 0] = float("nan")  # the first batch is clean, a later one is not
    trainer = _train(str(tmp_path / "run"), 4, rows=rows, log_every=4)
    with pytest.raises(FloatingPointError, match=r"Non-finite loss .* at step \d"):
        trainer.train()


@pytest.mark.parametrize("kind", ["image", "text"])
@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "dpmsolver++"])
def test_sampler_step_has_no_host_reads(kind, sampler):
    """A denoiser call and a sampler step, as `sample_loop` runs them after its first step."""
    model, batch = build(kind, num_timesteps=50)
    model.eval()
    cond_tokens, cond_mask = condition(model, batch)
    schedule = model.get_schedule()
    s = make_sampler(sampler, schedule, num_inference_steps=4, eta=1.0 if sampler == "ddpm" else 0.0)
    denoise = model.make_denoise_fn(cond_tokens, cond_mask, schedule)
    x = torch.randn(model.latent_shape(4))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad(), value_checks(False), HostReads() as h:
        for t in s.timesteps:
            t_batch = torch.full((4,), t, dtype=torch.long)
            x = s.step(denoise(s.scale_model_input(x, t), t_batch), t, x, generator=g)
    assert h.reads == []


def test_sample_loop_reads_only_at_the_ends():
    """`sample_loop` checks its first step and its result: the reads do not grow with the steps."""
    model, _ = build("image", num_timesteps=50)
    model.eval()
    model.get_schedule().alphas_cumprod_host  # built and read once, on the CPU, and cached
    counts = []
    for steps in (2, 6):
        with HostReads() as h:
            model.diffusion_sample(2, num_inference_steps=steps, generator=torch.Generator().manual_seed(0))
        counts.append(len(h.reads))
    assert counts[0] == counts[1] > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_no_syncs_on_cuda():
    """The same hot paths under `set_sync_debug_mode("error")`: any synchronising call raises."""
    device = torch.device("cuda")
    model, batch = build("image", num_timesteps=50)
    model.to(device).train()
    batch = {k: v.to(device) for k, v in batch.items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    g = torch.Generator(device=device).manual_seed(0)
    s = make_sampler("ddim", model.get_schedule(device), num_inference_steps=4)
    q = torch.randn(2, 4, 64, 16, device=device, requires_grad=True)
    model.compute_loss(batch, generator=g)["loss"].backward()  # warm-up: lazy CUDA init syncs once
    opt.step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with value_checks(False):
            qgfd_attention(q, q, q, steps=2, alpha=torch.full((4,), 0.3, device=device)).sum().backward()
            loss = model.compute_loss(batch, generator=g)["loss"]
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            model.eval()
            with torch.no_grad():
                x = torch.randn(model.latent_shape(2), device=device)
                for t in s.timesteps:
                    x = s.step(model.denoise(x, torch.full((2,), t, device=device)), t, x)
    finally:
        torch.cuda.set_sync_debug_mode("default")
