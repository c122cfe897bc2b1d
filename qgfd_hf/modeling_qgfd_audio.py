# coding=utf-8
"""Audio diffusion: `AudioAdapter` (waveform frames, MDCT, log spectrogram or Wav2Vec2 states <->
latents; the learned waveform decoder) and `AudioQGFDDiffusionModel`, with its output conversion (waveforms).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers.utils import logging

from .configuration_qgfd_audio import QGFDAudioConfig
from .modeling_qgfd import QGFDPreTrainedModel, register_model_class
from .modeling_qgfd_adapters import ADAPTERS, LatentDecoder, _get, _ModalityAdapter, _resolve_adapter_config, build_encoder, build_denoiser
from .modeling_qgfd_checks import check_float_tensor

logger = logging.get_logger(__name__)


# ----------------------------------------------------------------------------------------
# The adapter
# ----------------------------------------------------------------------------------------


def multi_resolution_stft_loss(pred: torch.Tensor, target: torch.Tensor, fft_sizes=(64, 256, 1024)) -> torch.Tensor:
    """Multi-resolution STFT loss [Yamamoto et al. 2020, Parallel WaveGAN, Eqs. 4-6] of
    waveforms [B, S]: per resolution, spectral convergence `||M_t - M_p||_F / ||M_t||_F` plus
    the L1 distance of the log magnitudes, averaged over the resolutions (Hann window, hop n/4;
    resolutions longer than the clip are skipped).

    Example:
        >>> x = torch.randn(2, 400)
        >>> float(multi_resolution_stft_loss(x, x))
        0.0
    """
    losses = []
    for n_fft in fft_sizes:
        if n_fft > pred.shape[-1]:
            continue
        window = torch.hann_window(n_fft, device=pred.device, dtype=torch.float32)
        stft = lambda x: torch.stft(x.float(), n_fft, hop_length=n_fft // 4, window=window, return_complex=True).abs()
        mag_p, mag_t = stft(pred), stft(target)  # (B, n_fft / 2 + 1, frames)
        sc = torch.linalg.norm(mag_t - mag_p) / torch.linalg.norm(mag_t).clamp_min(1e-7)
        log_l1 = F.l1_loss(torch.log(mag_p.clamp_min(1e-5)), torch.log(mag_t.clamp_min(1e-5)))
        losses.append(sc + log_l1)
    if not losses:
        raise ValueError(f"Clips of {pred.shape[-1]} samples are shorter than every STFT size {tuple(fft_sizes)}.")
    return torch.stack(losses).mean()


def mdct_basis(frame_size: int) -> torch.Tensor:
    """The MDCT's basis `[M, 2M]` with the sine window folded in (Princen-Bradley), scaled so
    that overlap-adding `coefficients @ basis` frames inverts it exactly (TDAC):
    `C[k, n] = sqrt(2 / M) w[n] cos(pi / M (n + 1/2 + M/2)(k + 1/2))`, `w[n] = sin(pi (n + 1/2) / 2M)`."""
    M = frame_size
    n = torch.arange(2 * M, dtype=torch.float64)
    k = torch.arange(M, dtype=torch.float64)
    window = torch.sin(math.pi * (n + 0.5) / (2 * M))
    return math.sqrt(2 / M) * window[None] * torch.cos(math.pi / M * (n[None] + 0.5 + M / 2) * (k[:, None] + 0.5))


def griffin_lim(magnitude: torch.Tensor, n_fft: int, hop: int, length: int, num_iters: int = 32, momentum: float = 0.99) -> torch.Tensor:
    """A waveform [B, S] whose STFT magnitude approaches `magnitude` [B, n_fft / 2 + 1, J]: fast
    Griffin-Lim [Perraudin et al. 2013, Algorithm 2] from zero phase (deterministic), Hann window."""
    window = torch.hann_window(n_fft, device=magnitude.device, dtype=magnitude.dtype)
    stft = lambda x: torch.stft(x, n_fft, hop_length=hop, window=window, center=True, return_complex=True)
    istft = lambda X: torch.istft(X, n_fft, hop_length=hop, window=window, center=True, length=length)
    angles = torch.ones_like(magnitude, dtype=torch.complex64 if magnitude.dtype == torch.float32 else torch.complex128)
    previous = torch.zeros_like(angles)
    for _ in range(num_iters):
        rebuilt = stft(istft(magnitude * angles))  # (B, K, J)
        accelerated = rebuilt - momentum / (1 + momentum) * previous
        angles = accelerated / accelerated.abs().clamp_min(1e-8)
        previous = rebuilt
    return istft(magnitude * angles)


class AudioAdapter(_ModalityAdapter):
    """Waveforms <-> frame latents.

    - `latent_space="waveform"`: x0 = non-overlapping frames of `frame_size` samples divided by
      `audio_scale`, `[B, N / frame_size, frame_size]`; decoding multiplies back and joins the
      frames: exact, nothing to learn (the audio analogue of pixel patches). `audio_scale` (the
      training clips' RMS) must be fitted first (`fit_audio_scale`): a model that was never
      fitted refuses to encode or decode.
    - `latent_space="mdct"`: x0 = MDCT coefficients of waveform / audio_scale (hop `frame_size`,
      one token per frame, `[B, N / frame_size + 1, frame_size]`), each bin divided by
      `bin_scale` (the square root of its std in the training clips, fitted by
      `fit_audio_scale`); decoding
      (inverse MDCT, overlap-add) is exact.
    - `latent_space="spectrogram"`: x0 = log-magnitude STFT of waveform / audio_scale (Hann
      window of 2 frames, hop `frame_size`, one token per frame, `[B, N / frame_size + 1,
      frame_size + 1]`), each bin standardised by `bin_mean` / `bin_scale` (fitted); decoding
      re-estimates the phase by Griffin-Lim: the magnitudes come back, the waveform only up to
      phase (no sample-exact reconstruction).
    - `latent_space="wav2vec2"`: x0 = the Wav2Vec2 encoder's last hidden states x latent_scale
      [B, L, Dl], frozen; a `LatentDecoder` to hidden states, then a transposed convolution with
      the encoder's hop (total conv stride) and receptive field, cropped or zero-padded to
      `num_samples`, trained by MSE + `spectral_loss_weight` x `multi_resolution_stft_loss`
      (the audio task trains with weight 1).

    Inputs are `input_values` [B, num_samples], waveforms divided by `audio_scale` before
    either encoder (Wav2Vec2 without a fitted scale: as the feature extractor returns them);
    decoded waveforms are [B, num_samples] in the units of `input_values`.

    Example:
        >>> adapter = AudioAdapter(QGFDAudioConfig(num_samples=400, frame_size=40, d_model=32, num_heads=4,
        ...                                        num_layers=2, d_ff=64))
        >>> waves = torch.randn(2, 400) * 0.1
        >>> _ = adapter.fit_audio_scale(waves)
        >>> x0 = adapter.data_to_latents({"input_values": waves})
        >>> x0.shape, torch.allclose(adapter.decode_latents(x0), waves, atol=1e-6)
        (torch.Size([2, 10, 40]), True)
    """

    modality = "audio"

    def __init__(self, config, shared_cfg=None):
        config, pretrained = _resolve_adapter_config("audio", config, shared_cfg)
        super().__init__(config, shared_cfg)
        self.hop, self.receptive_field = config.hop_and_receptive_field()
        if config.latent_space == "mdct":
            self.register_buffer("bin_scale", torch.ones(config.frame_size))  # fitted, saved with the weights
            self._qgfd_init = "bin_scale"  # see QGFDPreTrainedModel._init_weights: 1 until fitted
        if config.latent_space == "spectrogram":
            self.register_buffer("bin_mean", torch.zeros(config.frame_size + 1))  # fitted, saved with the weights
            self.register_buffer("bin_scale", torch.ones(config.frame_size + 1))
            self._qgfd_init = "bin_scale"
        if config.latent_space == "wav2vec2":
            self._set_encoder(build_encoder("audio", config.backbone_config))
            width = config.decoder_width
            self.decoder = LatentDecoder(config.latent_dim, width, config.num_heads, config.decoder_layers, None, config.dropout)
            self.to_waveform = nn.ConvTranspose1d(width, 1, kernel_size=self.receptive_field, stride=self.hop)
        if pretrained is not None:
            self.load_pretrained_encoder(pretrained)

    @property
    def waveform_latents(self) -> bool:
        """Whether the latents are a fixed transform of the waveform (no encoder, nothing learned)."""
        return self.modality_config.latent_space in ("waveform", "mdct", "spectrogram")

    def _basis(self, like: torch.Tensor) -> torch.Tensor:
        """`mdct_basis` (M, 2M) on `like`'s device and dtype, built on first use: a fixed function of
        frame_size, so never a buffer (from_pretrained builds modules on the meta device and leaves
        non-persistent buffers uninitialised)."""
        cache = self.__dict__.setdefault("_mdct_cache", {})
        key = (like.device, like.dtype)
        if key not in cache:
            cache[key] = mdct_basis(self.hop).to(like.device, like.dtype)
        return cache[key]

    def mdct(self, x: torch.Tensor) -> torch.Tensor:
        """[B, S] -> MDCT coefficients [B, S / M + 1, M] (the clip padded by M zeros each side)."""
        M = self.hop
        frames = F.pad(x, (M, M)).unfold(1, 2 * M, M)  # (B, S/M + 1, 2M)
        return frames @ self._basis(x).t()  # (B, J, M)

    def imdct(self, coefficients: torch.Tensor) -> torch.Tensor:
        """MDCT coefficients [B, J, M] -> [B, (J - 1) M] by overlap-add (inverse of `mdct`)."""
        M, (B, J, _) = self.hop, coefficients.shape
        frames = coefficients @ self._basis(coefficients)  # (B, J, 2M)
        wave = F.fold(frames.transpose(1, 2), output_size=(1, (J + 1) * M), kernel_size=(1, 2 * M), stride=(1, M))  # (B, 1, 1, (J+1) M)
        return wave.reshape(B, -1)[:, M : J * M]  # drop the padding: (B, (J - 1) M)

    _LOG_FLOOR = 1e-3  # log(|X| + floor), |X| of waveform / audio_scale

    def log_spectrogram(self, x: torch.Tensor) -> torch.Tensor:
        """[B, S] -> log-magnitude STFT frames [B, S / M + 1, M + 1] (Hann window 2M, hop M)."""
        M = self.hop
        window = torch.hann_window(2 * M, device=x.device, dtype=x.dtype)
        spec = torch.stft(x, 2 * M, hop_length=M, window=window, center=True, return_complex=True)  # (B, M + 1, J)
        return torch.log(spec.abs() + self._LOG_FLOOR).transpose(1, 2)  # (B, J, M + 1)

    def invert_log_spectrogram(self, log_mag: torch.Tensor) -> torch.Tensor:
        """Log-magnitude frames [B, J, M + 1] -> waveform [B, num_samples] (Griffin-Lim)."""
        mag = (log_mag.exp() - self._LOG_FLOOR).clamp_min(0).transpose(1, 2)  # (B, M + 1, J)
        return griffin_lim(mag.float(), 2 * self.hop, self.hop, self.modality_config.num_samples).to(log_mag.dtype)

    def _audio_scale(self, what: str) -> float:
        """The waveforms' scale: fitted (`fit_audio_scale`); for Wav2Vec2 latents None reads
        `input_values` as given (the feature extractor's per-clip normalisation, the seed's way),
        for waveform latents it refuses (the latents' scale would be arbitrary)."""
        scale = self.modality_config.audio_scale
        if scale is not None:
            return float(scale)
        if not self.waveform_latents:
            return 1.0
        raise ValueError(
            f"This audio model's `audio_scale` was never fitted, so it cannot {what}: call "
            "`model.fit_audio_scale(waveforms)` on training clips first (`qgfd-hf train` does it from the data)."
        )

    @torch.no_grad()
    def fit_audio_scale(self, input_values: torch.Tensor) -> float:
        """Set `config.audio_scale` to the RMS of waveforms [N, num_samples]; returns it."""
        self.check_audio(input_values)
        rms = float(input_values.double().pow(2).mean().sqrt())
        if not rms > 1e-8:
            raise ValueError(f"The waveforms are silent (RMS {rms:.3g}); cannot fit an audio scale.")
        if self.modality_config.latent_space == "mdct":
            coef = self.mdct(input_values.double() / rms)  # (N, J, M)
            std = coef.reshape(-1, coef.shape[-1]).std(0)
            # Half-way whitening, sqrt(std): dividing by the std itself turns the loud moments of
            # rarely used bins into 40-sigma outliers (sparse sounds); floored for unused bins.
            self.bin_scale.copy_(std.clamp_min(1e-3 * float(std.max())).sqrt().to(self.bin_scale.dtype))
        if self.modality_config.latent_space == "spectrogram":
            logs = self.log_spectrogram(input_values.double() / rms).reshape(-1, self.hop + 1)  # (N * J, M + 1)
            self.bin_mean.copy_(logs.mean(0).to(self.bin_mean.dtype))
            self.bin_scale.copy_(logs.std(0).clamp_min(1e-3).to(self.bin_scale.dtype))
        self.modality_config.audio_scale = rms
        return rms

    def check_audio(self, input_values) -> None:
        S = self.modality_config.num_samples
        check_float_tensor("input_values", input_values, f"[B, num_samples={S}]", 2)
        if input_values.shape[1] != S:
            raise ValueError(f"`input_values` must have shape [B, {S}] (num_samples), got {list(input_values.shape)}.")

    def audio_to_latents(self, input_values: torch.Tensor) -> torch.Tensor:
        """x0 [B, L, Dl] of waveforms [B, num_samples]."""
        self.check_audio(input_values)
        x = input_values / self._audio_scale("encode (train on) waveforms")
        if self.modality_config.latent_space == "waveform":
            h = x.reshape(x.shape[0], -1, self.hop)  # (B, N / frame, frame)
        elif self.modality_config.latent_space == "mdct":
            h = self.mdct(x) / self.bin_scale.to(x.dtype)  # (B, N / frame + 1, frame)
        elif self.modality_config.latent_space == "spectrogram":
            h = (self.log_spectrogram(x) - self.bin_mean.to(x.dtype)) / self.bin_scale.to(x.dtype)  # (B, N / frame + 1, frame + 1)
        else:
            with self._encoder_context():
                h = self.encoder(x).last_hidden_state  # (B, L, D_w2v)
        return self.to_shared(h * self.modality_config.latent_scale)

    def data_to_latents(self, batch) -> torch.Tensor:
        """x0 [B, L, Dl] from `batch["input_values"]` [B, num_samples]."""
        return self.audio_to_latents(_get(batch, "input_values", "audio"))

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Waveforms [B, num_samples]."""
        scale = self._audio_scale("decode (sample) waveforms")
        return self.decode_scaled(latents) * scale

    def decode_scaled(self, latents: torch.Tensor) -> torch.Tensor:
        """Waveforms [B, num_samples] divided by `audio_scale` (the units the latents see)."""
        h = self.from_shared(latents)  # (B, L, Dm)
        space = self.modality_config.latent_space
        if space == "wav2vec2":
            h = self.decoder(h)  # (B, L, width)
            wave = self.to_waveform(h.transpose(1, 2)).squeeze(1)  # (B, (L - 1) * hop + field)
            S = self.modality_config.num_samples
            return wave[:, :S] if wave.shape[1] >= S else F.pad(wave, (0, S - wave.shape[1]))
        h = h / self.modality_config.latent_scale
        if space == "waveform":
            return h.reshape(h.shape[0], -1)  # (B, L * frame)
        if space == "spectrogram":
            return self.invert_log_spectrogram(h * self.bin_scale.to(h.dtype) + self.bin_mean.to(h.dtype))  # (B, S)
        return self.imdct(h * self.bin_scale.to(h.dtype))  # mdct: (B, (L - 1) * frame)

    def recon_loss(self, batch, x0: torch.Tensor) -> Optional[torch.Tensor]:
        """Wav2Vec2 latents: the decoder's MSE + spectral_loss_weight x the multi-resolution STFT
        loss (None for waveform latents: their decoding is exact)."""
        if self.waveform_latents:
            return None
        target = _get(batch, "input_values", "audio").float() / self._audio_scale("train")
        pred = self.decode_scaled(x0).float()
        loss = F.mse_loss(pred, target)
        weight = self.modality_config.spectral_loss_weight
        if weight > 0:
            loss = loss + weight * multi_resolution_stft_loss(pred, target)
        return loss

# ----------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------


class AudioQGFDDiffusionModel(QGFDPreTrainedModel):
    """Unconditional audio diffusion over waveform frames (`latent_space="waveform"`, exact
    decoding) or over frozen Wav2Vec2 frame latents with a learned waveform decoder.

    - `fit_audio_scale(waveforms)` once on the training clips (waveform latents; the scale is
      saved in the config); until then the model refuses to encode and decode;
    - `data_to_latents({"input_values"})` / `audio_to_latents(input_values)`: waveforms
      [B, num_samples] -> x0 [B, L, latent_dim];
    - `decode_latents(latents)` -> waveforms [B, num_samples], in the units of `input_values`;
    - `compute_loss` adds the decoder's reconstruction loss (Wav2Vec2 latents).

    Example:
        >>> model = AudioQGFDDiffusionModel(QGFDAudioConfig(num_samples=400, frame_size=40, d_model=32,
        ...                                                 num_heads=4, num_layers=2, d_ff=64))
        >>> waves = torch.randn(2, 400) * 0.1
        >>> _ = model.fit_audio_scale(waves)
        >>> model.decode_latents(model.audio_to_latents(waves)).shape
        torch.Size([2, 400])
    """

    config_class = QGFDAudioConfig
    hub_pipeline_tags = ("other", "text-to-audio")  # the model card's pipeline_tag (the Hub has no unconditional audio task)
    pipeline_outputs = ("audio", '[{"audio": float32 array [num_samples], "sampling_rate": int}, ...]', 2)  # the card's example
    main_input_name = "input_values"

    def __init__(self, config: QGFDAudioConfig):
        super().__init__(config)
        self.adapter = AudioAdapter(config)
        self.backbone = build_denoiser(config)
        self.build_condition_embeddings()
        self.post_init()

    def audio_to_latents(self, input_values: torch.Tensor) -> torch.Tensor:
        """x0 [B, L, latent_dim] of waveforms [B, num_samples]."""
        return self.adapter.audio_to_latents(input_values)

    def fit_audio_scale(self, input_values: torch.Tensor) -> float:
        """Store the RMS of training waveforms [N, num_samples] as `config.audio_scale` (waveform
        latents are waveform / audio_scale); returns it."""
        return self.adapter.fit_audio_scale(input_values)

    @property
    def sample_clip_value(self) -> Optional[float]:
        """Waveform latents: clips in [-1, 1] divided by audio_scale (x latent_scale) are bounded by this."""
        cfg = self.config
        if cfg.latent_space != "waveform" or cfg.audio_scale is None:
            return None
        return float(cfg.latent_scale / cfg.audio_scale)

    # -- output conversion (the pipeline's outputs) ------------------------------------------

    @staticmethod
    def outputs_from_data(config, data, output_type: str = "data", tokenizer=None) -> list:
        """Waveforms [B, N] to `{"audio": float32 [N], "sampling_rate": int}`, or `{"np": [N]}`."""
        data = data.float()
        if output_type == "np":
            return [{"np": x} for x in data.numpy()]
        rate = int(getattr(config, "sampling_rate", 16000))
        return [{"audio": x.numpy().astype(np.float32), "sampling_rate": rate} for x in data]


ADAPTERS["audio"] = AudioAdapter
register_model_class(AudioQGFDDiffusionModel)

__all__ = ["AudioAdapter", "AudioQGFDDiffusionModel", "griffin_lim", "mdct_basis", "multi_resolution_stft_loss"]
