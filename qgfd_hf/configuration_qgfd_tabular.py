# coding=utf-8
"""Configuration of the tabular diffusion model: `QGFDTabularConfig` ("qgfd_tabular"), its column kinds and latent spaces.
"""

from __future__ import annotations

from typing import Optional, Sequence

from .configuration_qgfd import QGFDConfig, _check_choice, _check_int
from .configuration_qgfd_denoiser import _check_dict_list, _list_or_none

TABULAR_LATENT_SPACES = ("columns", "mlp")
COLUMN_KINDS = ("float", "int", "category")
NUMERIC_TRANSFORMS = ("quantile", "standard")
MAX_ONE_HOT = 16  # widest default token: categories beyond it get fixed random codes


class QGFDTabularConfig(QGFDConfig):
    """Config of `TabularQGFDDiffusionModel`: rows of a table <-> latents.

    Two latent spaces:

    - `"columns"` (default; TabDDPM's choice within Gaussian diffusion): one token per column,
      so the denoiser attends across columns and the latent is sized by the table. A numeric
      column's token is its normalised value (`numeric_transform`), a categorical column's a
      fixed code of its category (K = 2: -1 / +1; K <= latent_dim: a +-1 one-hot; wider: fixed
      random codes), decoded by the nearest code. Encoding and decoding are fixed maps:
      nothing to learn besides the denoiser.
    - `"mlp"` (the seed's): a frozen random MLP of the standardised features to `num_tokens`
      tokens of width `latent_dim`, and a learned MLP decoder (numeric columns only).

    Args:
        num_features (`int`, defaults to 8): F, columns per row (taken from `columns` when given).
        columns (`list[dict]`, *optional*): the table's schema, one dict per column:
            `{"name": str, "kind": "float" | "int" | "category", "categories": [...]}`
            (`categories`, JSON values, for "category" columns only; the model sees a
            category as its index in this list). Default: F float columns named
            `feature_names`, else `feature_0`, ...
        feature_names (`list[str]`, *optional*): column names (the pipeline returns rows as
            column -> value); with `columns`, they must agree.
        latent_space (`str`, defaults to `"columns"`): `"columns"` or `"mlp"` (see above).
        numeric_transform (`str`, defaults to `"quantile"`): "columns" latents: `"quantile"`
            (the empirical CDF of the training column, then the standard normal quantile:
            skewed columns become Gaussian, decoded values stay in the training range) or
            `"standard"` ((x - mean) / std).
        num_quantiles (`int`, defaults to 1000): knots of the quantile transform per column.
        label_column (`str`, *optional*): "columns" latents: a categorical column generated
            first, drawn from its training frequencies, with the other columns generated given
            it (class-conditional, as TabDDPM): its token stays clean while training (and out of
            the loss) and is held fixed while sampling.
        num_tokens (`int`, *optional*): "mlp" latents: L, tokens the features map to (default
            8); "columns" has one token per column (a different value raises).
        tabular_hidden_dim (`int`, defaults to 256): "mlp" latents: hidden width of the encoder
            and decoder MLPs.
        **kwargs: `QGFDConfig` arguments. `latent_dim`, the token width, defaults to 1 for
            "columns" when no categorical column has more than 2 categories, else to the most
            categories (at most 16); to `d_model` for "mlp".

    Example:
        >>> cfg = QGFDTabularConfig(columns=[{"name": "age", "kind": "int"}, {"name": "x", "kind": "float"},
        ...                                  {"name": "color", "kind": "category", "categories": ["red", "green", "blue"]}],
        ...                         d_model=32, num_heads=4, num_layers=2, d_ff=64)
        >>> cfg.num_features, cfg.num_latent_tokens(), cfg.latent_dim
        (3, 3, 3)
        >>> QGFDTabularConfig(latent_space="mlp", num_features=4, num_tokens=2, d_model=32, num_heads=4,
        ...                   num_layers=2, d_ff=64).latent_dim
        32
    """

    model_type = "qgfd_tabular"
    _fixed_modality = "tabular"

    def __init__(
        self,
        num_features: Optional[int] = None,
        columns: Optional[Sequence[dict]] = None,
        feature_names: Optional[Sequence[str]] = None,
        latent_space: str = "columns",
        numeric_transform: str = "quantile",
        num_quantiles: int = 1000,
        label_column: Optional[str] = None,
        num_tokens: Optional[int] = None,
        tabular_hidden_dim: int = 256,
        **kwargs,
    ):
        _check_dict_list("columns", columns, "one {'name': str, 'kind': ...} per column")
        self.num_features = num_features
        self.columns = [dict(c) for c in columns] if columns is not None else None
        self.feature_names = _list_or_none("feature_names", feature_names, "strings")
        self.latent_space = latent_space
        self.numeric_transform = numeric_transform
        self.num_quantiles = num_quantiles
        self.label_column = label_column
        self.num_tokens = num_tokens
        self.tabular_hidden_dim = tabular_hidden_dim
        super().__init__(**kwargs)

    def _validate_modality(self):
        _check_choice("latent_space", self.latent_space, TABULAR_LATENT_SPACES)
        _check_choice("numeric_transform", self.numeric_transform, NUMERIC_TRANSFORMS)
        _check_int("num_quantiles", self.num_quantiles, minimum=2)
        _check_int("tabular_hidden_dim", self.tabular_hidden_dim)
        if self.backbone_config is not None:
            raise ValueError("The tabular model has no pretrained encoder; pass backbone_config=None.")
        self._resolve_columns()
        F = self.num_features
        if self.label_column is not None:
            if not isinstance(self.label_column, str):
                raise ValueError(f"`label_column` must be a column name (str) or None, got {self.label_column!r}.")
            kinds = {c["name"]: c["kind"] for c in self.columns}
            if kinds.get(self.label_column) != "category" or self.latent_space != "columns":
                raise ValueError(
                    f"`label_column`={self.label_column!r} must name a categorical column of latent_space='columns' latents; "
                    f"the columns are {kinds}, latent_space={self.latent_space!r}."
                )
        if self.latent_space == "mlp":
            if any(c["kind"] == "category" for c in self.columns):
                raise ValueError(
                    "latent_space='mlp' (the seed's MLP latents) takes numeric columns only; categorical columns "
                    f"{[c['name'] for c in self.columns if c['kind'] == 'category']} need latent_space='columns'."
                )
            self.num_tokens = 8 if self.num_tokens is None else self.num_tokens
            _check_int("num_tokens", self.num_tokens)
            if self.latent_dim is None:
                self.latent_dim = self.d_model
            return
        if self.num_tokens is not None and self.num_tokens != F:
            raise ValueError(
                f"`num_tokens`={self.num_tokens} applies to latent_space='mlp'; latent_space='columns' has one token "
                f"per column ({F}). Pass num_tokens=None, or latent_space='mlp'."
            )
        self.num_tokens = F
        if self.latent_dim is None:
            widest = max([len(c["categories"]) for c in self.columns if c["kind"] == "category"] + [1])
            self.latent_dim = 1 if widest <= 2 else min(widest, MAX_ONE_HOT)

    def _resolve_columns(self):
        """`columns`, `num_features` and `feature_names`, made consistent (and checked)."""
        if self.columns is None:
            F = 8 if self.num_features is None else self.num_features
            _check_int("num_features", F)
            names = self.feature_names
            if names is not None and (len(names) != F or not all(isinstance(n, str) for n in names)):
                raise ValueError(f"`feature_names` must be {F} strings, got {names!r}.")
            names = list(names or [f"feature_{i}" for i in range(F)])
            self.columns = [{"name": n, "kind": "float"} for n in names]
            self.num_features, self.feature_names = F, names
            return
        if not self.columns:
            raise ValueError("`columns` must name at least one column, got [].")
        for i, c in enumerate(self.columns):
            if not isinstance(c.get("name"), str) or c.get("kind") not in COLUMN_KINDS:
                raise ValueError(f"`columns[{i}]` must be {{'name': str, 'kind': one of {COLUMN_KINDS}}}, got {c!r}.")
            cats = c.get("categories")
            if c["kind"] == "category":
                if not isinstance(cats, (list, tuple)) or len(cats) < 1 or len(set(map(repr, cats))) != len(cats):
                    raise ValueError(f"Column {c['name']!r} is categorical: `categories` must be a list of distinct values, got {cats!r}.")
                c["categories"] = list(cats)
            elif cats is not None:
                raise ValueError(f"Column {c['name']!r} is {c['kind']}: only 'category' columns take `categories`.")
        names = [c["name"] for c in self.columns]
        if len(set(names)) != len(names):
            raise ValueError(f"`columns` has duplicate names: {names}.")
        if self.num_features is not None and self.num_features != len(names):
            raise ValueError(f"`num_features`={self.num_features} disagrees with the {len(names)} `columns`.")
        if self.feature_names is not None and list(self.feature_names) != names:
            raise ValueError(f"`feature_names` {self.feature_names!r} disagree with the names in `columns` {names!r}.")
        self.num_features, self.feature_names = len(names), names

    def num_latent_tokens(self) -> int:
        return self.num_tokens


QGFDTabularConfig.register_for_auto_class()

__all__ = ["COLUMN_KINDS", "MAX_ONE_HOT", "NUMERIC_TRANSFORMS", "QGFDTabularConfig", "TABULAR_LATENT_SPACES"]
