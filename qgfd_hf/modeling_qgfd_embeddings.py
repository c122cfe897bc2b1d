# coding=utf-8
"""The embeddings of the QGFD denoiser (as diffusers' `embeddings.py`): sinusoids of positions, of
grid coordinates and of timesteps, `TimestepEmbedding` and `ClassEmbedding` (class labels, with the
null label of classifier-free guidance).

Shapes: `B` batch, `N` positions, `L` tokens, `D` width, `F` frequency width.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def sinusoidal_embedding(positions: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Transformer sinusoids: positions [N] (any real values) -> [N, dim] float32 (cos | sin)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=positions.device) / max(half, 1))
    args = positions.float()[:, None] * freqs[None]  # (N, dim // 2)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (N, 2 * (dim // 2))
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def grid_coordinates(grid, device=None) -> torch.Tensor:
    """The coordinates [prod(grid), k] (long) of the tokens of a row-major k-axis grid."""
    axes = torch.meshgrid(*[torch.arange(n, device=device) for n in grid], indexing="ij")  # k x grid
    return torch.stack(axes, -1).reshape(-1, len(grid))  # (L, k)


def grid_sinusoidal_embedding(grid, dim: int, device=None) -> torch.Tensor:
    """Factorised sinusoids for the tokens of a row-major grid (e.g. frames x rows x columns):
    each axis gets its own share of `dim` (even sizes, the first axis the remainder), its
    coordinate's sinusoids there, concatenated: [prod(grid), dim] float32.

    Example:
        >>> grid_sinusoidal_embedding([4, 2, 2], 32).shape
        torch.Size([16, 32])
    """
    share = 2 * (dim // (2 * len(grid)))
    widths = [dim - share * (len(grid) - 1)] + [share] * (len(grid) - 1)
    coords = grid_coordinates(grid, device)  # (L, k)
    return torch.cat([sinusoidal_embedding(coords[:, a], w) for a, w in enumerate(widths)], dim=-1)  # (L, dim)


class TimestepEmbedding(nn.Module):
    """Timestep embedding: sinusoids of t, then an MLP (DiT's `TimestepEmbedder`).

    Args:
        d_model (`int`): output width.
        frequency_dim (`int`, defaults to 256): width of the sinusoidal features.
        max_period (`float`, defaults to 10000): lowest frequency's period.

    Example:
        >>> emb = TimestepEmbedding(32)
        >>> emb(torch.tensor([0, 999])).shape
        torch.Size([2, 32])
    """

    def __init__(self, d_model: int, frequency_dim: int = 256, max_period: float = 10000.0):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.max_period = max_period
        self.linear_1 = nn.Linear(frequency_dim, d_model)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(d_model, d_model)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freqs = sinusoidal_embedding(t, self.frequency_dim, self.max_period)  # (B, F)
        freqs = freqs.to(self.linear_1.weight.dtype)
        return self.linear_2(self.act(self.linear_1(freqs)))  # (B, D)


class ClassEmbedding(nn.Module):
    """Class-label embedding (DiT's `LabelEmbedder`): `num_classes + 1` rows, the last is the null
    label that classifier-free guidance's unconditional pass (and label dropout in training) uses.

    Args:
        num_classes (`int`): K; labels are 0..K-1, and K is the null label.
        width (`int`): the width of the timestep embedding it is added to.

    Example:
        >>> emb = ClassEmbedding(10, 32)
        >>> emb(torch.tensor([3, emb.null_label])).shape
        torch.Size([2, 32])
    """

    def __init__(self, num_classes: int, width: int):
        super().__init__()
        self.num_classes = num_classes
        self.embedding = nn.Embedding(num_classes + 1, width)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding(labels)  # (B, D)


__all__ = ["ClassEmbedding", "TimestepEmbedding", "grid_coordinates", "grid_sinusoidal_embedding", "sinusoidal_embedding"]
