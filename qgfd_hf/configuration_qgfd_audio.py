# coding=utf-8
"""Configuration of the audio diffusion model: `QGFDAudioConfig` ("qgfd_audio") and its latent spaces.
"""

from __future__ import annotations

from typing import Optional, Sequence

from .configuration_qgfd import QGFDConfig, _check_choice, _check_float, _check_int

AUDIO_LATENT_SPACES = ("waveform", "mdct", "spectrogram", "wav2vec2")


def _conv_hop_and_receptive_field(kernels: Sequence[int], strides: Sequence[int]):
    """Hop (total stride) and receptive field, in samples, of a stack of 1-D convolutions."""
    hop, field = 1, 1
    for k, s in zip(kernels, strides):
        field += (k - 1) * hop
        hop *= s
    return hop, field


class QGFDAudioConfig(QGFDConfig):
    """Config of `AudioQGFDDiffusionModel`: waveform frames, or frozen Wav2Vec2 frame latents.

    Args:
        num_samples (`int`, defaults to 16000): N, samples per clip (fixed; sampling makes clips
            of this length).
        sampling_rate (`int`, defaults to 16000): the waveform's sampling rate.
        latent_space (`str`, *optional*): `"waveform"`, `"mdct"`, `"spectrogram"` or `"wav2vec2"`; default
            `"wav2vec2"` when a `backbone_config` is given, else `"waveform"`.

            - `"waveform"`: non-overlapping frames of `frame_size` samples are the tokens,
              `[B, N / frame_size, frame_size]`, divided by `audio_scale`; decoding is the exact
              inverse (as pixel patches are for images). No encoder, nothing to learn.
            - `"mdct"`: the modified discrete cosine transform of the waveform (sine window,
              hop `frame_size`, 50% overlap: critically sampled and exactly invertible by
              overlap-add), one token per frame, `[B, N / frame_size + 1, frame_size]`, each
              frequency bin divided by the square root of its spread in the training clips (fitted with
              `audio_scale`, saved as the adapter's `bin_scale` buffer). A sound's band is then a
              few coordinates, and the denoiser's errors are shaped like the data's spectrum.
            - `"spectrogram"`: the log-magnitude STFT (Hann window of `2 * frame_size`, hop
              `frame_size`), one token per frame, `[B, N / frame_size + 1, frame_size + 1]`,
              each bin standardised by its training mean and std; decoded by Griffin-Lim (the
              phase is re-estimated: magnitudes decode well, samples not sample-exactly).
            - `"wav2vec2"`: the frozen Wav2Vec2's last hidden states x `latent_scale`, decoded to
              the waveform by a learned decoder (`LatentDecoder` + transposed convolution),
              trained by MSE plus `spectral_loss_weight` x a multi-resolution STFT loss. On the
              audio demo's sounds a random (offline) Wav2Vec2 decodes poorly; see
              docs/modality_audio.md.
        frame_size (`int`, *optional*, defaults to 80): `"waveform"` / `"mdct"`: samples per token
            (the hop); must divide `num_samples`.
        audio_scale (`float`, *optional*): the training waveforms' RMS, fitted from
            the data (`AudioQGFDDiffusionModel.fit_audio_scale`) and saved with the model; latents
            are waveform / audio_scale, so about unit spread. None means never fitted: the model
            refuses to encode (train) and decode (sample) until it is fitted.
        spectral_loss_weight (`float`, defaults to 0.0): `"wav2vec2"`: weight of the decoder's
            multi-resolution STFT loss (spectral convergence + log-magnitude L1) beside its MSE.
            0 is the seed's MSE-only decoder; the audio task (`qgfd-hf train` / `demo`) uses 1.
        **kwargs: `QGFDConfig` arguments; with `"wav2vec2"`, `backbone_config` must be a
            Wav2Vec2-style config (`conv_kernel`, `conv_stride`, `hidden_size`).

    Example:
        >>> cfg = QGFDAudioConfig(num_samples=400, frame_size=40, d_model=32, num_heads=4, num_layers=2, d_ff=64)
        >>> cfg.latent_space, cfg.latent_dim, cfg.num_latent_tokens()
        ('waveform', 40, 10)
        >>> from transformers import Wav2Vec2Config
        >>> w = Wav2Vec2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
        ...                    conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 4),
        ...                    num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4)
        >>> cfg = QGFDAudioConfig(backbone_config=w, num_samples=400, d_model=32, num_heads=4, num_layers=2, d_ff=64)
        >>> cfg.latent_space, cfg.num_latent_tokens()
        ('wav2vec2', 19)
    """

    model_type = "qgfd_audio"
    _fixed_modality = "audio"
    pretrained_stacks = ("wav2vec2",)  # denoiser="pretrained": Wav2Vec2's Transformer encoder

    def __init__(
        self,
        num_samples: int = 16000,
        sampling_rate: int = 16000,
        latent_space: Optional[str] = None,
        frame_size: Optional[int] = None,
        audio_scale: Optional[float] = None,
        spectral_loss_weight: float = 0.0,
        **kwargs,
    ):
        self.num_samples = num_samples
        self.sampling_rate = sampling_rate
        self.latent_space = latent_space
        self.frame_size = frame_size
        self.audio_scale = audio_scale
        self.spectral_loss_weight = spectral_loss_weight
        super().__init__(**kwargs)

    def _validate_modality(self):
        if self.latent_space is None:
            self.latent_space = "wav2vec2" if self.backbone_config is not None else "waveform"
        _check_choice("latent_space", self.latent_space, AUDIO_LATENT_SPACES)
        _check_int("sampling_rate", self.sampling_rate)
        _check_int("num_samples", self.num_samples)
        _check_float("spectral_loss_weight", self.spectral_loss_weight, 0.0, None)
        if self.audio_scale is not None:
            _check_float("audio_scale", self.audio_scale, 0.0, None, low_open=True)
        if self.latent_space in ("waveform", "mdct", "spectrogram"):
            if self.backbone_config is not None and self.denoiser != "pretrained":
                raise ValueError(
                    f'latent_space="{self.latent_space}" uses no encoder; pass backbone_config=None (a Wav2Vec2 backbone_config is '
                    'taken only with denoiser="pretrained", as the denoiser), or latent_space="wav2vec2".'
                )
            if self.backbone_qgfd is not None:
                raise ValueError(f'latent_space="{self.latent_space}" has no encoder for `backbone_qgfd` to patch; pass backbone_qgfd=None.')
            self.frame_size = 80 if self.frame_size is None else self.frame_size
            _check_int("frame_size", self.frame_size)
            if self.num_samples % self.frame_size:
                raise ValueError(
                    f"`frame_size`={self.frame_size} must divide `num_samples`={self.num_samples} "
                    f"(the latents are whole frames)."
                )
            width = self.frame_size + 1 if self.latent_space == "spectrogram" else self.frame_size
            self._resolve_latent_dim(width, "frame_size (+ 1 for spectrogram latents: the STFT's bins)")
            return
        if self.frame_size is not None:
            raise ValueError('`frame_size` is for latent_space="waveform", "mdct" or "spectrogram"; with "wav2vec2" the encoder sets the frames. Pass None.')
        self._require_backbone(["conv_kernel", "conv_stride", "hidden_size"], "Wav2Vec2")
        hop, field = self.hop_and_receptive_field()
        if self.num_samples < field:
            raise ValueError(f"`num_samples`={self.num_samples} is shorter than the encoder's receptive field ({field} samples).")
        self._resolve_latent_dim(self.backbone_config.hidden_size, "the Wav2Vec2 hidden size")

    def hop_and_receptive_field(self):
        if self.latent_space == "waveform":
            return self.frame_size, self.frame_size
        if self.latent_space in ("mdct", "spectrogram"):
            return self.frame_size, 2 * self.frame_size
        return _conv_hop_and_receptive_field(self.backbone_config.conv_kernel, self.backbone_config.conv_stride)

    def num_latent_tokens(self) -> int:
        if self.latent_space == "waveform":
            return self.num_samples // self.frame_size
        if self.latent_space in ("mdct", "spectrogram"):
            return self.num_samples // self.frame_size + 1  # frames over the clip padded by one hop each side
        length = self.num_samples
        for k, s in zip(self.backbone_config.conv_kernel, self.backbone_config.conv_stride):
            length = (length - k) // s + 1  # Wav2Vec2's conv output length (no padding)
        return length


QGFDAudioConfig.register_for_auto_class()

__all__ = ["AUDIO_LATENT_SPACES", "QGFDAudioConfig"]
