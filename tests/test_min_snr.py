"""Min-SNR-gamma loss weighting (`QGFDConfig.snr_gamma`, `scheduling_qgfd.min_snr_weights`)."""

import pytest
import torch

from qgfd_hf import ImageQGFDDiffusionModel, QGFDImageConfig
from qgfd_hf.scheduling_qgfd import DDPMBetaSchedule, min_snr_weights

TINY = dict(d_model=32, num_heads=4, num_layers=2, d_ff=64)


def test_weights_follow_the_paper_for_each_target():
    schedule = DDPMBetaSchedule(num_timesteps=100, beta_schedule="cosine")
    t = torch.tensor([0, 10, 50, 99])
    a_bar = schedule.alphas_cumprod[t].double()
    snr = a_bar / (1 - a_bar)
    clipped = torch.clamp(snr, max=5.0)
    assert torch.allclose(min_snr_weights(t, schedule, 5.0, "sample").double(), clipped, rtol=1e-5)
    assert torch.allclose(min_snr_weights(t, schedule, 5.0, "epsilon").double(), clipped / snr, rtol=1e-5)
    assert torch.allclose(min_snr_weights(t, schedule, 5.0, "v").double(), clipped / (snr + 1), rtol=1e-5)
    # low noise (t = 0, SNR >> 5): the clipped weight; high noise (SNR < 5): x0's weight is the SNR itself
    assert snr[0] > 5 and float(min_snr_weights(t[:1], schedule, 5.0, "sample")) == pytest.approx(5.0)
    assert snr[-1] < 5 and float(min_snr_weights(t[-1:], schedule, 5.0, "epsilon")) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="`gamma` must be > 0, got 0"):
        min_snr_weights(t, schedule, 0, "v")


def _model(**kw):
    torch.manual_seed(0)
    cfg = QGFDImageConfig(latent_space="pixels", image_size=4, patch_size=2, num_channels=1, prediction_type="epsilon", **TINY, **kw)
    return ImageQGFDDiffusionModel(cfg)


def test_loss_is_the_plain_mse_without_gamma_and_weighted_with_it(tmp_path):
    x = torch.rand(8, 1, 4, 4)
    plain, huge, weighted = _model(), _model(snr_gamma=1e12), _model(snr_gamma=0.5)
    gen = lambda: torch.Generator().manual_seed(3)
    loss = plain(pixel_values=(x - 0.5) / 0.5, generator=gen()).loss
    # epsilon with gamma above every SNR: every weight is 1, the loss is the plain MSE
    assert torch.allclose(huge(pixel_values=(x - 0.5) / 0.5, generator=gen()).loss, loss, rtol=1e-5)
    assert not torch.allclose(weighted(pixel_values=(x - 0.5) / 0.5, generator=gen()).loss, loss, rtol=1e-3)
    weighted.save_pretrained(tmp_path / "m")
    assert ImageQGFDDiffusionModel.from_pretrained(tmp_path / "m").config.snr_gamma == 0.5
    with pytest.raises(ValueError, match="snr_gamma"):
        _model(snr_gamma=0)
