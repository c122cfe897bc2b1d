"""Every transformers method qgfd_hf wraps (qgfd_hf/patching_hooks_qgfd.py) is needed: one test per wrapper.

Each test (a) shows the behaviour with the wrapper, then (b) puts transformers' original method back
for a moment (`original(...)`; the originals are saved on the classes, `_qgfd_originals`) and shows
the failure the wrapper prevents. docs/patching.md ("Which transformers methods qgfd_hf wraps, and
why") lists the same failures.
"""

import contextlib
import json

import pytest
import torch

import qgfd_hf
from qgfd_hf import patching_hooks_qgfd
from transformers import GenerationMixin, PreTrainedConfig, PreTrainedModel

# `import qgfd_hf` leaves transformers alone; transformers' own routes to "qgfd" (attn_implementation="qgfd",
# Model(config), set_attn_implementation) need it registered first, as a user does.
qgfd_hf.register_qgfd_attention()

pytestmark = pytest.mark.usefixtures("one_thread")

WRAPPED = {
    PreTrainedModel: ("post_init", "set_attn_implementation", "get_correct_attn_implementation", "_initialize_weights"),
    GenerationMixin: ("_prepare_cache_for_generation",),
    PreTrainedConfig: ("to_dict", "validate_output_attentions", "output_attentions"),
}


@contextlib.contextmanager
def original(owner: type, name: str):
    """transformers' own `owner.name` in place of qgfd_hf's wrapper, for the `with` block.

    `validate_output_attentions` is also held by the `__class_validators__` of config classes made
    `@strict` before the wrapper was installed; those lists get the original back too."""
    wrapper, saved = owner.__dict__[name], owner._qgfd_originals[name]
    validators = []
    if name == "validate_output_attentions":
        todo = [owner]
        while todo:
            cls = todo.pop()
            todo.extend(cls.__subclasses__())
            held = cls.__dict__.get("__class_validators__")
            if held and any(v is wrapper for v in held):
                validators.append((cls, held))
                cls.__class_validators__ = [saved if v is wrapper else v for v in held]
    setattr(owner, name, saved)
    try:
        yield
    finally:
        setattr(owner, name, wrapper)
        for cls, held in validators:
            cls.__class_validators__ = held


def _defined_in_qgfd_hf(value) -> bool:
    fn = value.fset if isinstance(value, property) else value
    return "qgfd_hf" in getattr(getattr(fn, "__code__", None), "co_filename", "")


def test_every_wrapped_method_is_listed_here_and_wraps_a_saved_original():
    """The wrappers this file tests are all the methods qgfd_hf put on these classes, each defined in
    patching_hooks_qgfd.py, and each one's original is saved."""
    for owner, names in WRAPPED.items():
        ours = {name for name, value in vars(owner).items() if _defined_in_qgfd_hf(value)}
        assert ours == set(names), owner
        for name in names:
            wrapper, saved = owner.__dict__[name], owner._qgfd_originals[name]
            fn = wrapper.fset if isinstance(wrapper, property) else wrapper
            assert fn.__code__.co_filename == patching_hooks_qgfd.__file__, (owner, name)
            assert not _defined_in_qgfd_hf(saved), (owner, name)
    assert set(patching_hooks_qgfd._MODEL_METHODS) == set(WRAPPED[PreTrainedModel])
    assert set(patching_hooks_qgfd._CONFIG_METHODS) == set(WRAPPED[PreTrainedConfig])


def _vit_config(**kwargs):
    from transformers import ViTConfig

    return ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, image_size=16,
                     patch_size=8, **kwargs)


def _pixels():
    return torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def _longt5(**kwargs):
    from transformers import LongT5Config, LongT5Model

    return LongT5Model(LongT5Config(d_model=32, d_kv=8, d_ff=32, num_layers=1, num_heads=4, vocab_size=50, **kwargs))


def test_post_init_prepares_layers_so_a_learned_alpha_loads(tmp_path):
    """Without the `post_init` wrapper a model loaded with `attn_implementation="qgfd"` has no
    `qgfd_alpha` when its weights are loaded: the learned alpha is dropped as an unexpected key, and
    the first forward raises; and LongT5 (its encoder's local attention bypasses the interface) is
    built as "qgfd" where it must be refused."""
    from transformers import ViTModel

    model = qgfd_hf.patch_model(ViTModel(_vit_config()), steps=1, alpha=0.3, learnable_alpha=True)
    with torch.no_grad():
        model.layers[0].attention.qgfd_alpha.logit.copy_(torch.tensor([-1.0, 0.0, 0.5, 1.0]))
    model.save_pretrained(tmp_path)

    loaded = ViTModel.from_pretrained(tmp_path)  # config.json says attn_implementation="qgfd"
    assert torch.equal(loaded.layers[0].attention.qgfd_alpha.logit, torch.tensor([-1.0, 0.0, 0.5, 1.0]))
    loaded(_pixels())

    with pytest.raises(ValueError, match="QGFD cannot be put into LongT5"):
        _longt5(attn_implementation="qgfd")

    with original(PreTrainedModel, "post_init"):
        loaded = ViTModel.from_pretrained(tmp_path)
        assert _longt5(attn_implementation="qgfd").encoder.config._attn_implementation == "qgfd"
    assert not any("qgfd" in name for name, _ in loaded.named_parameters())
    with pytest.raises(ValueError, match="learnable alpha"):
        loaded(_pixels())


def test_set_attn_implementation_prepares_layers_at_once():
    """Without the `set_attn_implementation` wrapper, `set_attn_implementation("qgfd")` only changes
    the config: a learnable alpha has no parameter to give an optimizer, and the first forward raises;
    LongT5 is switched to "qgfd" where it must be refused (and left as it was)."""
    from transformers import ViTModel

    def switch():
        model = ViTModel(_vit_config())
        model.config.qgfd = {"steps": 1, "alpha": 0.3, "learnable_alpha": True}
        model.set_attn_implementation("qgfd")
        return model

    model = switch()
    assert [n for n, _ in model.named_parameters() if "qgfd" in n] == ["layers.0.attention.qgfd_alpha.logit"]
    model(_pixels())

    longt5 = _longt5()
    with pytest.raises(ValueError, match="QGFD cannot be put into LongT5"):
        longt5.set_attn_implementation("qgfd")
    assert longt5.encoder.config._attn_implementation != "qgfd"

    with original(PreTrainedModel, "set_attn_implementation"):
        model = switch()
        _longt5().set_attn_implementation("qgfd")  # no refusal
    assert model.config._attn_implementation == "qgfd"
    assert not any("qgfd" in n for n, _ in model.named_parameters())
    with pytest.raises(ValueError, match="learnable alpha"):
        model(_pixels())


def _data2vec_vision():
    from transformers import Data2VecVisionConfig, Data2VecVisionModel

    return Data2VecVisionModel(Data2VecVisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                                    intermediate_size=32, image_size=16, patch_size=8,
                                                    attn_implementation="qgfd"))


def _gpt_neo():
    from transformers import GPTNeoConfig, GPTNeoModel

    return GPTNeoModel(GPTNeoConfig(hidden_size=32, num_heads=4, num_layers=2, attention_types=[[["global", "local"], 1]],
                                    vocab_size=50, attn_implementation="qgfd"))


def test_get_correct_attn_implementation_refuses_and_prepares_before_layers_are_built():
    """Without the `get_correct_attn_implementation` wrapper, a model class that picks its attention
    class by implementation name fails to build with a bare `KeyError: 'qgfd'`: Data2VecVision
    (bypasses the interface) instead of a `ValueError` naming the architecture, and GPT-Neo (QGFD
    at module level) instead of a QGFD model."""
    from transformers.models.gpt_neo import modeling_gpt_neo

    with pytest.raises(ValueError, match="QGFD cannot be put into Data2VecVisionModel"):
        _data2vec_vision()
    assert qgfd_hf.is_qgfd_patched(_gpt_neo())

    classes = modeling_gpt_neo.GPT_NEO_ATTENTION_CLASSES
    added = classes.pop("qgfd")  # as in a process that has not built a "qgfd" GPT-Neo yet
    try:
        with original(PreTrainedModel, "get_correct_attn_implementation"):
            with pytest.raises(KeyError, match="qgfd"):
                _data2vec_vision()
            with pytest.raises(KeyError, match="qgfd"):
                _gpt_neo()
    finally:
        classes["qgfd"] = added


def test_initialize_weights_starts_a_missing_learnable_alpha_at_its_value(tmp_path):
    """Without the `_initialize_weights` wrapper, a learnable alpha that the checkpoint lacks keeps
    whatever memory it was given (transformers' `_init_weights` does not know `QGFDAlpha`)."""
    from transformers import ViTModel

    ViTModel(_vit_config()).save_pretrained(tmp_path)  # a plain checkpoint: no qgfd_alpha.logit
    settings = {"steps": 1, "alpha": 0.3, "alpha_max": 1.0, "learnable_alpha": True}

    model = qgfd_hf.from_pretrained_qgfd(ViTModel, tmp_path, qgfd=settings)
    torch.testing.assert_close(model.layers[0].attention.qgfd_alpha().detach(), torch.full((4,), 0.3))

    with original(PreTrainedModel, "_initialize_weights"):
        model = qgfd_hf.from_pretrained_qgfd(ViTModel, tmp_path, qgfd=settings)
    alpha = model.layers[0].attention.qgfd_alpha().detach()
    assert not torch.allclose(alpha, torch.full((4,), 0.3)), alpha


@pytest.mark.slow
def test_prepare_cache_for_generation_lets_a_compiled_prefill_trace_as_one_graph():
    """Without the `_prepare_cache_for_generation` wrapper, a compiled chunked prefill (`generate` with
    `compile_config` and `prefill_chunk_size`) is the first QGFD call on the fresh static cache: QGFD
    converts each cache layer there (a `__class__` assignment), which breaks the graph, an error under
    `fullgraph=True`. (Dynamo's capture only, `backend="eager"`.)"""
    import torch._dynamo
    from transformers import CompileConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = qgfd_hf.patch_model(LlamaForCausalLM(config), steps=1, alpha=0.5).eval()
    ids = torch.randint(3, 64, (1, 6), generator=torch.Generator().manual_seed(0))
    kwargs = dict(max_new_tokens=2, do_sample=False, pad_token_id=0, prefill_chunk_size=3, cache_implementation="static")

    def generate():
        compile_config = CompileConfig(fullgraph=True, backend="eager", mode=None)
        compile_config._compile_all_devices = True  # transformers compiles on CPU only when asked to
        torch._dynamo.reset()
        return model.generate(ids, compile_config=compile_config, **kwargs)

    try:
        assert torch.equal(generate(), model.generate(ids, **kwargs))
        with original(GenerationMixin, "_prepare_cache_for_generation"):
            with pytest.raises(Exception, match="__class__"):
                generate()
    finally:
        torch._dynamo.reset()


def test_to_dict_saves_the_qgfd_implementation(tmp_path):
    """Without the `to_dict` wrapper `save_pretrained` writes no `attn_implementation` (transformers
    drops `_attn_implementation_internal`): a saved QGFD model loads back as plain `sdpa`, silently."""
    from transformers import ViTModel

    model = qgfd_hf.patch_model(ViTModel(_vit_config()), steps=2, alpha=0.3)
    model.save_pretrained(tmp_path / "wrapped")
    assert json.loads((tmp_path / "wrapped" / "config.json").read_text())["attn_implementation"] == "qgfd"
    assert qgfd_hf.is_qgfd_patched(ViTModel.from_pretrained(tmp_path / "wrapped"))

    with original(PreTrainedConfig, "to_dict"):
        model.save_pretrained(tmp_path / "original")
    assert "attn_implementation" not in json.loads((tmp_path / "original" / "config.json").read_text())
    loaded = ViTModel.from_pretrained(tmp_path / "original")
    assert loaded.config._attn_implementation == "sdpa" and not qgfd_hf.is_qgfd_patched(loaded)


def test_output_attentions_setter_accepts_true_for_qgfd():
    """Without the `output_attentions` setter wrapper, `config.output_attentions = True` on a QGFD
    model raises (transformers allows it for "eager" only), though QGFD returns its own weights."""
    from transformers import ViTModel

    model = qgfd_hf.patch_model(ViTModel(_vit_config()), steps=2, alpha=0.3)
    model.config.output_attentions = True
    assert model(_pixels()).attentions[0].shape == (1, 4, 5, 5)

    model = qgfd_hf.patch_model(ViTModel(_vit_config()), steps=2, alpha=0.3)
    with original(PreTrainedConfig, "output_attentions"):
        with pytest.raises(ValueError, match="output_attentions"):
            model.config.output_attentions = True


def test_validate_output_attentions_accepts_a_qgfd_config_that_returns_weights(tmp_path):
    """Without the `validate_output_attentions` wrapper, a config with `attn_implementation="qgfd"` and
    `output_attentions=True` fails validation: it cannot be built, nor loaded from a saved folder."""
    from transformers import ViTModel

    model = ViTModel(_vit_config(attn_implementation="qgfd", output_attentions=True))
    assert model(_pixels()).attentions[0].shape == (1, 4, 5, 5)
    model.save_pretrained(tmp_path)
    assert ViTModel.from_pretrained(tmp_path)(_pixels()).attentions[0].shape == (1, 4, 5, 5)

    with original(PreTrainedConfig, "validate_output_attentions"):
        with pytest.raises(Exception, match="output_attentions"):
            _vit_config(attn_implementation="qgfd", output_attentions=True)
        with pytest.raises(Exception, match="output_attentions"):
            ViTModel.from_pretrained(tmp_path)
