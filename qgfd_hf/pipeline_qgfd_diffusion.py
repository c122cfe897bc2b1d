# coding=utf-8
"""`pipeline("qgfd-diffusion")`: sample real data from a QGFD diffusion model.

`_forward` batches the samples and draws all starting noise; the denoising loop is
`scheduling_qgfd_sampling.sample_loop` (reached through the model's `diffusion_sample`): the network
predicts once per timestep and the sampler moves the latents.

Every QGFD diffusion model exposes the same contract, which is all this pipeline uses:
`config.modality` (the shared model: `active_modality`), `is_conditional`, `latent_shape(batch_size)`,
`encode_condition(**tokenized) -> (cond_tokens, cond_mask)`,
`diffusion_sample(n, cond_tokens, cond_mask, schedule=..., x_T=..., ...)` (the sampling loop),
`decode_latents(latents)`, `postprocess(latents, data, output_type, tokenizer)` (the model turns
its decoded data into the outputs: strings, PIL images, waveforms, frames or rows), `get_schedule()`.
The pipeline has no branch per modality; it never imports a model file.
"""

from __future__ import annotations

import math
from typing import List, Optional, Union

import torch
from transformers import Pipeline
from transformers.utils import logging

from .scheduling_qgfd import TIMESTEP_SPACINGS
from .scheduling_qgfd_sampling import check_sampler

logger = logging.get_logger(__name__)

OUTPUT_TYPES = ("data", "np", "latent")
PIPELINE_TASK = "qgfd-diffusion"


def default_num_inference_steps(sampler, num_timesteps: int) -> int:
    """The denoising steps a sampler takes when `num_inference_steps` is not given: all T for
    `"ddpm"`, min(20, T - 1) for `"dpmsolver++"` (it places n + 1 grid points on the T timesteps),
    else (DDIM, a diffusers scheduler) min(50, T)."""
    T = num_timesteps
    if sampler == "ddpm":
        return T
    return min(20, T - 1) if sampler == "dpmsolver++" else min(50, T)


class QGFDDiffusionPipeline(Pipeline):
    """Sample from a QGFD diffusion model: strings, PIL images, waveforms, video frames or table rows.

    Call arguments:
        inputs (`str` or `list[str]`, *optional*): conditioning texts, for conditional models
            only (one sample set per text); unconditional models take none.
        num_samples (`int`, defaults to 1): samples per conditioning text, or in all for
            an unconditional model (default with `class_labels`: one sample per label).
        class_labels (`int`, `list[int]` or `"unconditional"`, *optional*): class-conditional models
            (`config.num_classes`; tables with a `label_column`: indices of its categories): the
            class of each sample, or one int for all `num_samples`. Without them each sample's
            label is drawn from the training labels' frequencies (`config.class_frequencies`,
            recorded by `qgfd-hf train`; tables: their label column's), with the sampling
            `seed` / `generator`, after the starting noise; a model saved without recorded
            frequencies samples unconditionally instead (its null label), as before.
            `"unconditional"`: the null label, explicitly (image, audio and video models trained
            with `cond_dropout_prob` > 0; no guidance).
        guidance_scale (`float`, defaults to 1.0): classifier-free guidance, out_u + s (out_c - out_u),
            the conditional and unconditional passes in one batched forward; 1 = the conditional
            model, larger = closer to the condition and less diverse. Needs a model trained with
            `cond_dropout_prob` > 0 (text: against the learned null source text).
        num_inference_steps (`int`, *optional*): denoising steps (network evaluations),
            1..`num_timesteps`; by default all for `"ddpm"`, 50 for `"ddim"` and a diffusers
            scheduler, 20 for `"dpmsolver++"` (fewer if trained with fewer).
        sampler (defaults to `"ddim"`): `"ddim"`, `"ddpm"`, `"dpmsolver++"` (DPM-Solver++(2M), as
            diffusers' `DPMSolverMultistepScheduler`), or a diffusers `SchedulerMixin` instance on
            the model's schedule (`qgfd_hf.diffusers_scheduler(cls, model.get_schedule(),
            model.config.prediction_type)`; needs `pip install qgfd_hf[diffusers]`).
        timestep_spacing (`str`, defaults to `"linspace"`): `"linspace"`, `"leading"` or `"trailing"`,
            as diffusers (`scheduling_qgfd.inference_timesteps`); steps_offset (`int`, defaults to 0):
            shifts `"leading"`. A diffusers scheduler takes both from its own config instead.
        eta (`float`, defaults to 0.0): DDIM's eta (0 = deterministic given the starting noise).
        generator (`torch.Generator`, *optional*) or seed (`int`, *optional*): for reproducible samples.
        batch_size (`int`, *optional*): how many samples go through the network at once.
        output_type (`str`, defaults to `"data"`): `"data"` (strings, PIL images, waveforms,
            frames, rows), `"np"` (numpy arrays), or `"latent"` (the sampled latents).
        progress_bar (`bool`, defaults to `True`): show the sampler's progress bar.

    Returns a list with one entry per sample (per text, a list of `num_samples` entries):
    text `{"generated_text": str}`; image `{"image": PIL.Image}`; audio
    `{"audio": np.ndarray [N], "sampling_rate": int}`; video `{"frames": np.ndarray [F, H, W, C]}`;
    tabular `{"row": {column: value}}` (categories as their values, integer columns as ints). With `output_type="np"`: `{"np": array}` (images
    `[H, W, C]` and video `[F, H, W, C]` floats in [0, 1], audio `[N]`, tables `[num_features]` (categories as indices),
    text the token ids `[L]`); with `"latent"`: `{"latent": tensor}`.

    Example:
        >>> from transformers import pipeline
        >>> import qgfd_hf  # "qgfd-diffusion" is registered when the folder's QGFD config is read
        >>> pipe = pipeline("qgfd-diffusion", model="path/to/saved/model")  # doctest: +SKIP
        >>> pipe(num_samples=4, seed=0)[0]["image"]  # doctest: +SKIP
        >>> pipe(class_labels=[3, 7], guidance_scale=4.0, num_inference_steps=50, seed=0)  # class-conditional  # doctest: +SKIP
        >>> pipe("a source sentence", guidance_scale=2.0)  # conditional text, against the null text  # doctest: +SKIP
    """

    _load_tokenizer = None  # loaded when the folder has one (text models need it)
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False

    def _sanitize_parameters(
        self,
        num_samples=None,
        num_inference_steps=None,
        sampler=None,
        timestep_spacing=None,
        steps_offset=None,
        eta=None,
        generator=None,
        seed=None,
        output_type=None,
        progress_bar=None,
        sample_batch_size=None,
        max_length=None,
        class_labels=None,
        guidance_scale=None,
        **kwargs,
    ):
        if kwargs:
            raise ValueError(f"Unknown argument(s) {sorted(kwargs)} for the qgfd-diffusion pipeline.")
        preprocess, forward, postprocess = {}, {}, {}
        if num_samples is not None:
            if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
                raise ValueError(f"`num_samples` must be an int >= 1, got {num_samples!r}.")
            preprocess["num_samples"] = num_samples
        if max_length is not None:
            if isinstance(max_length, bool) or not isinstance(max_length, int) or not 1 <= max_length < 2**63:
                raise ValueError(f"`max_length` must be an int in [1, 2**63) (tokens of a conditioning text), got {max_length!r}.")
            preprocess["max_length"] = max_length
        if class_labels is not None:
            preprocess["class_labels"] = class_labels  # checked against the model in `preprocess`
        if guidance_scale is not None:
            preprocess["guidance_scale"] = guidance_scale
        if num_inference_steps is not None:
            if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) or num_inference_steps <= 0:
                raise ValueError(f"`num_inference_steps` must be an int >= 1, got {num_inference_steps!r}.")
            forward["num_inference_steps"] = num_inference_steps
        if sampler is not None:
            forward["sampler"] = check_sampler(sampler)  # a name, or a diffusers scheduler
        if timestep_spacing is not None:
            if timestep_spacing not in TIMESTEP_SPACINGS:
                raise ValueError(f"Unknown timestep_spacing {timestep_spacing!r}; allowed: {', '.join(map(repr, TIMESTEP_SPACINGS))}.")
            forward["timestep_spacing"] = timestep_spacing
        if steps_offset is not None:
            if isinstance(steps_offset, bool) or not isinstance(steps_offset, int) or steps_offset < 0:
                raise ValueError(f"`steps_offset` must be an int >= 0, got {steps_offset!r}.")
            forward["steps_offset"] = steps_offset
        if eta is not None:
            forward["eta"] = eta
        if generator is not None and seed is not None:
            raise ValueError("Pass either `generator` or `seed`, not both.")
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
                raise ValueError(f"`seed` must be an int in [0, 2**63), got {seed!r}.")
            forward["seed"] = seed
        if generator is not None:
            if not isinstance(generator, torch.Generator):
                raise ValueError(f"`generator` must be a torch.Generator, got {type(generator).__name__}.")
            forward["generator"] = generator
        if progress_bar is not None:
            if not isinstance(progress_bar, bool):  # "no" would read as True
                raise ValueError(f"`progress_bar` must be True or False, got {progress_bar!r}.")
            forward["progress_bar"] = progress_bar
        if sample_batch_size is not None:
            if isinstance(sample_batch_size, bool) or not isinstance(sample_batch_size, int) or sample_batch_size < 1:
                raise ValueError(f"`batch_size` must be an int >= 1, got {sample_batch_size!r}.")
            forward["batch_size"] = sample_batch_size
        if output_type is not None:
            if output_type not in OUTPUT_TYPES:
                raise ValueError(f"Unknown output_type {output_type!r}; allowed: {', '.join(map(repr, OUTPUT_TYPES))}.")
            postprocess["output_type"] = output_type
        return preprocess, forward, postprocess

    def __init__(self, *args, **kwargs):
        # `batch_size` means samples per network call here, not the DataLoader batching of Pipeline.
        if "batch_size" in kwargs:
            kwargs["sample_batch_size"] = kwargs.pop("batch_size")
        super().__init__(*args, **kwargs)
        if not all(hasattr(self.model, name) for name in ("diffusion_sample", "decode_latents", "postprocess", "is_conditional")):
            model_type = getattr(getattr(self.model, "config", None), "model_type", None)
            raise ValueError(
                f"pipeline('qgfd-diffusion') samples QGFD diffusion models (model_type qgfd_text, qgfd_image, ...); "
                f"got a {type(self.model).__name__} (model_type {model_type!r}). To put QGFD attention into that model, "
                "use qgfd_hf.patch_model(model) or from_pretrained(..., attn_implementation='qgfd')."
            )

    def __call__(self, inputs: Optional[Union[str, List[str]]] = None, **kwargs):
        if "batch_size" in kwargs:
            kwargs["sample_batch_size"] = kwargs.pop("batch_size")
        pre, fwd, post = self._sanitize_parameters(**kwargs)
        pre = {**self._preprocess_params, **pre}
        fwd = {**self._forward_params, **fwd}
        post = {**self._postprocess_params, **post}
        model_inputs = self.preprocess(inputs, **pre)
        model_outputs = self.forward(model_inputs, **fwd)
        return self.postprocess(model_outputs, **post)

    # 1. Conditioning: validate and tokenize.
    def preprocess(self, inputs=None, num_samples: Optional[int] = None, max_length: Optional[int] = None, class_labels=None,
                   guidance_scale=1.0):
        model = self.model
        single = isinstance(inputs, str)
        if num_samples is None:
            many = isinstance(class_labels, (list, tuple)) or (isinstance(class_labels, torch.Tensor) and class_labels.dim() == 1)
            num_samples = len(class_labels) if many and not model.is_conditional else 1
        if model.is_conditional:
            if inputs is None:
                raise ValueError(
                    f"This {model.config.modality} model is conditional: pass conditioning text, e.g. pipe('a source sentence')."
                )
            texts = [inputs] if single else inputs
            if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(x, str) for x in texts):
                raise ValueError(f"Conditioning must be a string or a non-empty list of strings, got {inputs!r}.")
            if self.tokenizer is None:
                raise ValueError("A conditional model needs its tokenizer: save it with the model or pass `tokenizer=`.")
            max_length = max_length or getattr(model.config, "max_length", None)
            enc = self.tokenizer(
                list(texts), return_tensors="pt", padding=True, truncation=max_length is not None, max_length=max_length
            )
            unk = getattr(self.tokenizer, "unk_token_id", None)
            if unk is not None and bool((enc["input_ids"] == unk).any()):
                hit = [t for t, ids in zip(texts, enc["input_ids"]) if bool((ids == unk).any())]
                logger.warning(
                    f"{len(hit)} conditioning text(s) hold words outside the tokenizer's vocabulary, read as "
                    f"{self.tokenizer.unk_token!r}: {', '.join(map(repr, hit[:3]))}" + (" ..." if len(hit) > 3 else "")
                )
            cond = {k: enc[k].repeat_interleave(num_samples, dim=0) for k in ("input_ids", "attention_mask")}
            _check_noise_fits(model, len(texts) * num_samples, num_samples)
            labels, scale = model.check_guidance(len(texts) * num_samples, class_labels, guidance_scale)
            return {"cond_inputs": cond, "num_texts": len(texts), "num_samples": num_samples, "single": single,
                    "class_labels": labels, "guidance_scale": scale}
        if inputs is not None:
            raise ValueError(
                f"This {model.config.modality} model is unconditional and takes no conditioning input, got {inputs!r}; "
                "use `num_samples=` to choose how many samples."
            )
        _check_noise_fits(model, num_samples, num_samples)
        labels, scale = model.check_guidance(num_samples, class_labels, guidance_scale)
        if isinstance(class_labels, str):  # "unconditional" (checked): handed to the model as is
            labels = class_labels
        return {"cond_inputs": None, "num_texts": None, "num_samples": num_samples, "single": False, "class_labels": labels,
                "guidance_scale": scale}

    # 2. The denoising loop, in batches.
    def _forward(
        self,
        model_inputs,
        num_inference_steps: Optional[int] = None,
        sampler="ddim",
        timestep_spacing: Optional[str] = None,
        steps_offset: Optional[int] = None,
        eta: float = 0.0,
        generator: Optional[torch.Generator] = None,
        seed: Optional[int] = None,
        progress_bar: bool = True,
        batch_size: Optional[int] = None,
    ):
        model = self.model
        schedule = model.get_schedule().to(self.device)
        T = schedule.num_timesteps
        if num_inference_steps is not None and num_inference_steps > T:
            raise ValueError(f"`num_inference_steps` must be in [1, {T}] (the trained steps), got {num_inference_steps}.")
        if num_inference_steps is None and sampler != "ddpm":  # DDPM: None is all T steps
            num_inference_steps = default_num_inference_steps(sampler, T)
        if seed is not None:
            generator = torch.Generator().manual_seed(seed)
        cond = model_inputs["cond_inputs"]
        total = cond["input_ids"].shape[0] if cond is not None else model_inputs["num_samples"]
        batch_size = batch_size or total
        # All starting noise is drawn first, so that with DDIM (eta = 0) a sample does not
        # depend on `batch_size`.
        noise_device = generator.device if generator is not None else torch.device("cpu")
        x_T = torch.randn(model.latent_shape(total), generator=generator, device=noise_device, dtype=torch.float32)
        labels, scale = model_inputs["class_labels"], model_inputs["guidance_scale"]
        if labels is None and getattr(model, "num_classes", None) is not None:
            # The default of a class-conditional model: labels drawn from its training frequencies,
            # for all samples at once (independent of `batch_size`); None where none were recorded.
            labels = model.draw_class_labels(total, generator)
        latents = []
        for start in range(0, total, batch_size):
            n = min(batch_size, total - start)
            cond_tokens = cond_mask = None
            if cond is not None:
                chunk = {k: v[start : start + n].to(self.device) for k, v in cond.items()}
                cond_tokens, cond_mask = model.encode_condition(**chunk)
            guidance = {} if scale == 1.0 else {"guidance_scale": scale}
            if labels is not None:
                guidance["class_labels"] = labels if isinstance(labels, str) else labels[start : start + n]

            latents.append(
                # The model's own sampling entry point (text models add Diffusion-LM's clamping
                # there when configured); the loop itself is scheduling_qgfd_sampling.sample_loop.
                model.diffusion_sample(
                    n,
                    cond_tokens,
                    cond_mask,
                    schedule=schedule,
                    sampler=sampler,
                    num_inference_steps=num_inference_steps,
                    timestep_spacing=timestep_spacing,
                    steps_offset=steps_offset,
                    eta=eta,
                    generator=generator,
                    progress=progress_bar,
                    x_T=x_T[start : start + n],
                    **guidance,
                )
            )
        latents = torch.cat(latents)
        return {**model_inputs, "latents": latents, "data": model.decode_latents(latents)}

    # 3. Data out, in the modality's own form: the model converts its own outputs.
    def postprocess(self, model_outputs, output_type: str = "data"):
        items = self.model.postprocess(model_outputs["latents"], model_outputs["data"], output_type=output_type, tokenizer=self.tokenizer)
        k = model_outputs["num_texts"]
        if k is None:
            return items
        n = model_outputs["num_samples"]
        grouped = [items[i * n : (i + 1) * n] for i in range(k)]
        return grouped[0] if model_outputs["single"] else grouped


def _check_noise_fits(model, total: int, num_samples: int) -> None:
    """The starting noise of `total` samples must be a tensor torch can index (fewer than 2**63 values)."""
    per_sample = math.prod(model.latent_shape(1))
    if total * per_sample >= 2**63:
        raise ValueError(
            f"`num_samples`={num_samples} asks for {total} samples of {per_sample} latent values each, more than a tensor "
            "can hold (2**63 values); sample fewer, in several calls."
        )


def register_pipeline():
    """Register `"qgfd-diffusion"` with transformers' pipeline registry (done with the first QGFD config, `registration_qgfd.register_models`)."""
    from transformers import AutoModel
    from transformers.pipelines import PIPELINE_REGISTRY

    if PIPELINE_TASK not in PIPELINE_REGISTRY.get_supported_tasks():
        PIPELINE_REGISTRY.register_pipeline(PIPELINE_TASK, pipeline_class=QGFDDiffusionPipeline, pt_model=AutoModel, type="multimodal")
