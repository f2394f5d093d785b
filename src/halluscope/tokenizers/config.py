"""Tokenizer configs: plain dataclasses that round-trip through a model folder's config.json,
and the tiny / small / base presets for images and clips.

A config's `kind` ("image" | "video") says what it tokenizes; `arch` says how:
"vqgan" (taming's image VQGAN), "framewise" (that VQGAN applied to each frame of a clip),
"vqgan3d" (a spatiotemporal VQGAN with 3D convolutions) or "tats" (TATS's 3D VQGAN, import only).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from halluscope.errors import UserError
from halluscope.validate import ConfigError, choice, flag, number, whole, wholes

OWNER = "tokenizer config"
# (least, most) of the sizes: generous for any tokenizer this workbench can run; a value past
# them is a mistake or an attack (1e8 residual blocks, a negative width, no levels at all).
SIZE_LIMITS = {"resolution": (1, 8192), "frames": (1, 4096), "in_channels": (1, 64), "out_ch": (1, 64),
               "ch": (1, 4096), "num_res_blocks": (0, 64), "z_channels": (1, 4096), "embed_dim": (1, 4096),
               "n_embed": (1, 1 << 24)}
MAX_LEVELS = 8  # entries of ch_mult

# How convolutions see past a border. "zeros" is taming's (and every imported checkpoint's)
# and trains fastest on a CPU. "replicate" gives a flat region the same code near a border, or
# in the first and last latent frames, as in the middle: tokens that repeat when the picture
# repeats, which token-level probes need (the demo uses it). The parameters are the same.
PADDINGS = ("zeros", "replicate")
QUANTIZERS = ("vq", "gumbel", "l2")  # see VQGANConfig.quantizer


def check_fields(cfg, kind: str, arch: str) -> None:
    """Types and ranges of the fields the image and 3D VQGAN configs share (and of those only
    one has), normalizing lists to tuples, before a module is built from them."""
    cfg.kind = choice(OWNER, "kind", cfg.kind, (kind,))
    cfg.arch = choice(OWNER, "arch", cfg.arch, (arch,))
    for name, (least, most) in SIZE_LIMITS.items():
        if hasattr(cfg, name):
            setattr(cfg, name, whole(OWNER, name, getattr(cfg, name), least, most))
    cfg.ch_mult = wholes(OWNER, "ch_mult", cfg.ch_mult, 1, 64, range(1, MAX_LEVELS + 1))
    cfg.dropout = number(OWNER, "dropout", cfg.dropout, 0.0, 1.0, below_most=True)
    cfg.beta = number(OWNER, "beta", cfg.beta, 0.0, 1e3)
    cfg.legacy = flag(OWNER, "legacy", cfg.legacy)
    cfg.causal = flag(OWNER, "causal", cfg.causal)
    cfg.padding = choice(OWNER, "padding", cfg.padding, PADDINGS)
    if cfg.resolution < 2 ** (len(cfg.ch_mult) - 1):
        raise ConfigError(OWNER, f"resolution {cfg.resolution} is smaller than the {2 ** (len(cfg.ch_mult) - 1)} "
                                 f"pixels one token covers with {len(cfg.ch_mult)} levels (ch_mult)")


@dataclass
class VQGANConfig:
    """taming's VQModel: `ddconfig` fields plus `n_embed` / `embed_dim` (its YAML's names)."""

    kind: str = "image"
    arch: str = "vqgan"
    resolution: int = 64
    in_channels: int = 3
    out_ch: int = 3
    ch: int = 32  # a multiple of 32: taming's GroupNorm has 32 groups
    ch_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    attn_resolutions: tuple[int, ...] = ()
    z_channels: int = 32
    embed_dim: int = 32
    n_embed: int = 256
    dropout: float = 0.0
    beta: float = 0.25  # commitment weight
    # taming trained with the commitment weight on the wrong term (legacy=True); it only
    # changes training, so imports keep taming's value and our own runs use the fixed one.
    legacy: bool = False
    # "vq" (VectorQuantizer2) | "gumbel" (GumbelQuantize, import only) | "l2" (LlamaGen's: the
    # nearest code by direction, z and codes L2-normalised, tokens decoded from the unit codes)
    quantizer: str = "vq"
    padding: str = "zeros"  # see PADDINGS
    # A row-causal encoder (causal.py): token row i sees only pixel rows above the end of its
    # band, so the top rows' tokens do not depend on the rest. Off in taming's (and imports).
    causal: bool = False

    def __post_init__(self) -> None:
        check_fields(self, "image", "vqgan")
        if self.ch % 32:  # taming's GroupNorm has 32 groups
            raise ConfigError(OWNER, f"ch must be a multiple of 32, got {self.ch}")
        self.attn_resolutions = wholes(OWNER, "attn_resolutions", self.attn_resolutions, 1, 8192, range(0, 17))
        self.quantizer = choice(OWNER, "quantizer", self.quantizer, QUANTIZERS)

    @property
    def grid(self) -> tuple[int, int]:
        side = self.resolution // 2 ** (len(self.ch_mult) - 1)
        return (side, side)


@dataclass
class FramewiseConfig:
    """An image VQGAN applied to each of `frames` frames: grid (frames, h, w)."""

    image: VQGANConfig = field(default_factory=VQGANConfig)
    frames: int = 16
    kind: str = "video"
    arch: str = "framewise"

    def __post_init__(self) -> None:
        if not isinstance(self.image, VQGANConfig):
            raise ConfigError(OWNER, f"image must be an image VQGAN config, got {self.image!r}"[:200])
        self.frames = whole(OWNER, "frames", self.frames, *SIZE_LIMITS["frames"])
        self.kind = choice(OWNER, "kind", self.kind, ("video",))
        self.arch = choice(OWNER, "arch", self.arch, ("framewise",))

    @property
    def resolution(self) -> int:
        return self.image.resolution

    @property
    def grid(self) -> tuple[int, int, int]:
        return (self.frames, *self.image.grid)


@dataclass
class VQGAN3DConfig:
    """A 3D-convolution VQGAN. Each level but the last halves the axes whose factor in
    `downsample` (dt, dh, dw) is not yet reached, earliest levels first, so 16 frames at 128²
    with (4, 8, 8) and four levels give a (4, 16, 16) grid. `patch` folds pixels into channels
    before the first convolution (and unfolds them after the last): a cheap extra downsampling
    that keeps full-resolution 3D convolutions, the dominant cost on a CPU, out of the model."""

    kind: str = "video"
    arch: str = "vqgan3d"
    resolution: int = 64
    frames: int = 16
    in_channels: int = 3
    ch: int = 32
    ch_mult: tuple[int, ...] = (1, 2, 2)
    num_res_blocks: int = 1
    downsample: tuple[int, int, int] = (4, 4, 4)
    patch: tuple[int, int, int] = (1, 1, 1)
    mid_attention: bool = False  # attention over t*h*w latents: costly, off in the presets
    padding: str = "zeros"  # see PADDINGS
    z_channels: int = 32
    embed_dim: int = 32
    n_embed: int = 512
    dropout: float = 0.0
    beta: float = 0.25
    legacy: bool = False
    # A time-causal encoder (causal.py): latent frame j sees only the frames up to the end of
    # its window, so the first latent frames' tokens do not depend on the frames after them.
    causal: bool = False

    def __post_init__(self) -> None:
        check_fields(self, "video", "vqgan3d")
        self.downsample = wholes(OWNER, "downsample", self.downsample, 1, 1 << 12, (3,))
        self.patch = wholes(OWNER, "patch", self.patch, 1, 64, (3,))
        self.mid_attention = flag(OWNER, "mid_attention", self.mid_attention)
        self.level_strides()  # validate early, with the user's numbers in the message

    def level_strides(self) -> list[tuple[int, int, int]]:
        """The (t, h, w) stride of the downsampling after each level but the last."""
        levels = len(self.ch_mult) - 1
        steps = []
        for axis, (d, p) in zip("thw", zip(self.downsample, self.patch)):
            if d % p or not _is_power_of_two(d // p) or int(math.log2(d // p)) > levels:
                raise UserError(f"vqgan3d: downsample {tuple(self.downsample)} with patch {tuple(self.patch)} "
                                f"needs each {axis} factor / patch to be a power of two of at most 2^{levels} "
                                f"(ch_mult has {levels + 1} levels)")
            steps.append(int(math.log2(d // p)))
        return [tuple(2 if lvl < s else 1 for s in steps) for lvl in range(levels)]

    @property
    def grid(self) -> tuple[int, int, int]:
        dt, dh, dw = self.downsample
        if self.frames % dt or self.resolution % dh or self.resolution % dw:
            raise UserError(f"vqgan3d: {self.frames} frames at {self.resolution}² do not divide by {tuple(self.downsample)}")
        return (self.frames // dt, self.resolution // dh, self.resolution // dw)


def _is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


# F.pad modes of TATS's `padding_type` ("constant" pads zeros); its own choices.
TATS_PADDINGS = ("replicate", "constant", "reflect", "circular")


@dataclass
class TATSConfig:
    """TATS's 3D VQGAN (tokenizers/tats.py), with its own hyper-parameter names. Level i of
    max(log2 downsample) halves each axis whose factor is not yet reached, so 16 frames at 128²
    with (4, 8, 8) give a (4, 16, 16) grid. Imported only: its training is TATS's."""

    kind: str = "video"
    arch: str = "tats"
    resolution: int = 128
    frames: int = 16
    n_hiddens: int = 32
    downsample: tuple[int, int, int] = (4, 8, 8)
    norm_type: str = "batch"  # "group": GroupNorm(32 groups); "batch": BatchNorm (eval statistics)
    padding_type: str = "replicate"  # the encoder's first and strided convolutions; see TATS_PADDINGS
    n_codes: int = 16384
    embedding_dim: int = 256

    def __post_init__(self) -> None:
        self.kind = choice(OWNER, "kind", self.kind, ("video",))
        self.arch = choice(OWNER, "arch", self.arch, ("tats",))
        self.resolution = whole(OWNER, "resolution", self.resolution, *SIZE_LIMITS["resolution"])
        self.frames = whole(OWNER, "frames", self.frames, *SIZE_LIMITS["frames"])
        self.n_hiddens = whole(OWNER, "n_hiddens", self.n_hiddens, 1, 4096)
        self.n_codes = whole(OWNER, "n_codes", self.n_codes, *SIZE_LIMITS["n_embed"])
        self.embedding_dim = whole(OWNER, "embedding_dim", self.embedding_dim, *SIZE_LIMITS["embed_dim"])
        self.norm_type = choice(OWNER, "norm_type", self.norm_type, ("group", "batch"))
        self.padding_type = choice(OWNER, "padding_type", self.padding_type, TATS_PADDINGS)
        self.downsample = wholes(OWNER, "downsample", self.downsample, 1, 1 << 12, (3,))
        if not all(map(_is_power_of_two, self.downsample)) or max(self.downsample) < 2:
            raise ConfigError(OWNER, f"downsample must be three powers of two, at least one above 1, "
                                     f"got {list(self.downsample)}")
        if self.levels > MAX_LEVELS:
            raise ConfigError(OWNER, f"downsample {list(self.downsample)} needs {self.levels} levels; "
                                     f"at most {MAX_LEVELS} are supported")
        if self.norm_type == "group" and (2 * self.n_hiddens) % 32:  # the narrowest normalised width
            raise ConfigError(OWNER, f"norm_type group needs 2·n_hiddens divisible by 32, got n_hiddens "
                                     f"{self.n_hiddens}")
        dt, dh, dw = self.downsample
        if self.frames % dt or self.resolution % dh or self.resolution % dw:
            raise ConfigError(OWNER, f"{self.frames} frames at {self.resolution}² do not divide by downsample "
                                     f"{list(self.downsample)}")

    @property
    def levels(self) -> int:
        """Strided convolutions in the encoder (transposed ones in the decoder)."""
        return int(math.log2(max(self.downsample)))

    def level_strides(self) -> list[tuple[int, int, int]]:
        """The (t, h, w) stride of each level, in the encoder's order, which the decoder shares:
        an axis is strided at the first log2(factor) levels."""
        steps = [int(math.log2(d)) for d in self.downsample]
        return [tuple(2 if level < s else 1 for s in steps) for level in range(self.levels)]

    @property
    def grid(self) -> tuple[int, int, int]:
        dt, dh, dw = self.downsample
        return (self.frames // dt, self.resolution // dh, self.resolution // dw)


CONFIGS = {"vqgan": VQGANConfig, "framewise": FramewiseConfig, "vqgan3d": VQGAN3DConfig, "tats": TATSConfig}


def config_to_dict(cfg) -> dict:
    return asdict(cfg)


def config_from_dict(d: dict):
    """Rebuild a config from config.json; unknown or missing `arch` is one clear error."""
    arch = d.get("arch")
    if arch not in CONFIGS:
        raise UserError(f"tokenizer config has arch {arch!r}; expected one of {sorted(CONFIGS)}")
    cls = CONFIGS[arch]
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise UserError(f"tokenizer config ({arch}) has unknown keys {unknown}")
    kwargs = dict(d)
    if arch == "framewise" and isinstance(d.get("image"), dict):
        kwargs["image"] = config_from_dict({"arch": "vqgan", **d["image"]})
    return cls(**kwargs)


# ----------------------------------------------------------------------------- presets

# Sized so that `tiny` trains to a useful quality within minutes on a laptop CPU (64² images,
# 16-frame 64² clips); `small` and `base` are for a GPU and larger resolutions. Low-dimensional
# codes (embed_dim 8) keep far more of a codebook in use than 32-dimensional ones early on.
IMAGE_PRESETS = {
    "tiny": dict(resolution=64, ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, z_channels=32, embed_dim=8, n_embed=256),
    "small": dict(resolution=128, ch=64, ch_mult=(1, 1, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
                  z_channels=64, embed_dim=64, n_embed=1024),
    "base": dict(resolution=256, ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,),
                 z_channels=256, embed_dim=256, n_embed=1024),
}
VIDEO_PRESETS = {
    "tiny": dict(resolution=64, frames=16, ch=32, ch_mult=(1, 2), num_res_blocks=1, downsample=(4, 4, 4),
                 patch=(2, 4, 4), z_channels=32, embed_dim=8, n_embed=512),
    "small": dict(resolution=128, frames=16, ch=64, ch_mult=(1, 2, 2, 4), num_res_blocks=1, downsample=(4, 8, 8),
                  patch=(1, 1, 1), z_channels=64, embed_dim=64, n_embed=1024),
    "base": dict(resolution=128, frames=16, ch=128, ch_mult=(1, 2, 2, 4), num_res_blocks=2, downsample=(4, 8, 8),
                 patch=(1, 1, 1), mid_attention=True, z_channels=256, embed_dim=256, n_embed=4096),
}


def preset(kind: str, name: str, **overrides):
    """The named preset for `kind` ("image" | "video"), with `overrides` (e.g. resolution)."""
    table = {"image": IMAGE_PRESETS, "video": VIDEO_PRESETS}.get(kind)
    if table is None:
        raise UserError(f"unknown tokenizer kind {kind!r}; expected 'image' or 'video'")
    if name not in table:
        raise UserError(f"unknown {kind} preset {name!r}; expected one of {sorted(table)}")
    params = {**table[name], **{k: v for k, v in overrides.items() if v is not None}}
    cls = VQGANConfig if kind == "image" else VQGAN3DConfig
    return cls(**params)
