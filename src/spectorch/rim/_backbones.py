"""Recurrent backbones for RIMs: a convolutional GRU, an hourglass, a U-Net, Putzky's cell.

Every backbone maps ``(x, score, h)`` to ``(update, h)``: ``x`` and ``score`` have
shape ``(B, channels, *spatial)``, the update has the shape of ``x``, and ``h`` is the
recurrent state (``None`` on the first call means zeros of the right shape).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from spectorch import checks

__all__ = ["ConvGRU", "ConvRNN", "Hourglass", "Unet", "get_activation"]

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "tanh": torch.tanh,
    "relu": F.relu,
    "elu": F.elu,
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,
    "leaky_relu": F.leaky_relu,
}


def get_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation function called ``name`` (``tanh``, ``relu``, ``elu``, ``silu``, ...)."""
    try:
        return _ACTIVATIONS[str(name).lower()]
    except KeyError:
        raise ValueError(
            f"activation must be one of {sorted(_ACTIVATIONS)}, got {name!r}"
        ) from None


def _check_dimensions(dimensions: Any) -> int:
    if isinstance(dimensions, bool) or dimensions not in (0, 1, 2, 3):
        raise ValueError(f"dimensions must be 0, 1, 2 or 3, got {dimensions!r}")
    return int(dimensions)


_positive = checks.positive_int


def _check_resampling(owner: str, dimensions: Any, **sizes: Any) -> int:
    """Check the arguments a resampling backbone shares; return the dimensions."""
    d = _check_dimensions(dimensions)
    if d == 0:
        raise ValueError(f"{owner} needs dimensions 1, 2 or 3 (it resamples)")
    for name, value in sizes.items():
        _positive(name, value)
    return d


def _conv(dimensions: int, cin: int, cout: int, k: int, *, dilation: int = 1, bias=True):
    """A size-preserving convolution (a Linear layer when ``dimensions`` is 0)."""
    if dimensions == 0:
        return nn.Linear(cin, cout, bias=bias)
    cls = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dimensions - 1]
    return cls(cin, cout, k, padding=dilation * (k - 1) // 2, dilation=dilation, bias=bias)


def _down(dimensions: int, cin: int, cout: int, k: int) -> nn.Module:
    """Halve every (even) spatial size: a stride-2 convolution."""
    cls = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dimensions - 1]
    return cls(cin, cout, k, stride=2, padding=(k - 1) // 2)


def _up(dimensions: int, cin: int, cout: int, k: int) -> nn.Module:
    """Double every spatial size: a stride-2 transposed convolution."""
    cls = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[dimensions - 1]
    return cls(cin, cout, k, stride=2, padding=(k - 1) // 2, output_padding=1)


class ConvGRU(nn.Module):
    """A convolutional gated recurrent unit whose whole state updates every step.

    ``z, r = σ(W [x, h])``, ``h̃ = tanh(W_x x + U (r ⊙ h))``, ``h' = (1 - z) ⊙ h + z ⊙ h̃``
    (Cho et al. 2014), with convolutions in place of matrices; ``dimensions=0`` uses
    dense layers. Returns ``(h', h')``.

    Args:
        in_channels: channels of the input.
        hidden: channels of the state.
        kernel_size: odd kernel width of the gate convolutions.
        dimensions: number of spatial dimensions of the input (0 to 3).
    """

    def __init__(self, in_channels: int, hidden: int, kernel_size: int = 3, dimensions: int = 2):
        super().__init__()
        self.dimensions = _check_dimensions(dimensions)
        self.hidden = _positive("hidden", hidden)
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size!r}")
        self.gates = _conv(self.dimensions, in_channels + hidden, 2 * hidden, kernel_size)
        self.candidate_x = _conv(self.dimensions, in_channels, hidden, kernel_size)
        self.candidate_h = _conv(self.dimensions, hidden, hidden, kernel_size, bias=False)

    def forward(
        self, x: torch.Tensor, h: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if h is None:
            h = x.new_zeros((x.shape[0], self.hidden, *x.shape[2:]))
        z, r = torch.sigmoid(self.gates(torch.cat([x, h], dim=1))).chunk(2, dim=1)
        candidate = torch.tanh(self.candidate_x(x) + self.candidate_h(r * h))
        h = h + z * (candidate - h)
        return h, h


class GRU(ConvGRU):
    """torch-rim's ``GRU`` (``rim.layers.GRU``): the same gated unit as
    :class:`ConvGRU`, with torch-rim's argument names and defaults (dense,
    ``dimensions=0``; 32 hidden units; kernel 5)."""

    def __init__(
        self, in_ch: int, hidden_units: int = 32, kernel_size: int = 5, dimensions: int = 0
    ):
        super().__init__(in_ch, hidden_units, kernel_size, dimensions)


class GRUBlock(nn.Module):
    """torch-rim's ``GRUBlock`` (Morningstar et al. 2019): two :class:`GRU` of
    ``hidden_units // 2`` channels with a ``conv_kernel_size`` convolution and tanh
    between them, and a convolution back to ``in_ch`` channels. The state ``h`` holds
    both GRUs' states along the channels; returns ``(output, h)``.

    torch-rim's block put its first GRU's *old* state back into ``h``, so that GRU
    never remembered anything; here both states update.
    """

    def __init__(
        self,
        in_ch: int,
        hidden_units: int = 32,
        kernel_size: int = 5,
        dimensions: int = 0,
        conv_kernel_size: int = 11,
    ):
        super().__init__()
        self.dimensions = _check_dimensions(dimensions)
        if _positive("hidden_units", hidden_units) % 2:
            raise ValueError(f"hidden_units must be even (two GRUs), got {hidden_units}")
        if conv_kernel_size % 2 != 1:
            raise ValueError(f"conv_kernel_size must be odd, got {conv_kernel_size!r}")
        half = hidden_units // 2
        self.gru1 = GRU(in_ch, half, kernel_size, dimensions)
        self.gru2 = GRU(half, half, kernel_size, dimensions)
        self.hidden_layer = _conv(self.dimensions, half, half, conv_kernel_size, bias=False)
        self.reshape_layer = _conv(self.dimensions, half, in_ch, conv_kernel_size, bias=False)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h_1, h_2 = torch.tensor_split(h, 2, dim=1)
        h_1, _ = self.gru1(x, h_1)
        z, h_2 = self.gru2(torch.tanh(self.hidden_layer(h_1)), h_2)
        return self.reshape_layer(z), torch.cat([h_1, h_2], dim=1)


class _Backbone(nn.Module):
    """Shared plumbing: the saved configuration, padding to a multiple of 2^levels, and
    an output convolution that starts at zero.

    Every backbone's last layer (``output``) starts at zero, so an untrained RIM's
    updates are zero: every step starts as the identity and the RIM starts where its
    initialization puts it. A random last layer makes the first update a random image
    that throws a good start away (about 1 dB on the photograph patches;
    docs/benchmarks.md).
    """

    channels: int
    config: dict[str, Any]
    _multiple: int = 1

    def _pad(self, t: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
        sizes = list(t.shape[2:])
        pad: list[int] = []
        for n in reversed(sizes):
            pad += [0, -n % self._multiple]
        return (F.pad(t, pad) if any(pad) else t), sizes

    def _zero_output(self) -> None:
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def _crop(self, t: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        return t[(..., *(slice(0, n) for n in sizes))]

    def forward(self, x: torch.Tensor, *args: Any):
        """``model(x, score, h=None) -> (update, h)``; torch-rim's form ``model(x, y,
        score, h)`` is accepted too (``y`` unused: the backbones here, like torch-rim's
        defaults, do not condition on the observation)."""
        if len(args) == 3:  # torch-rim: (x, y, score, h)
            _, score, h = args
        elif len(args) in (1, 2):
            score, h = args[0], args[1] if len(args) == 2 else None
        else:
            raise TypeError(
                f"{type(self).__name__} takes (x, score, h=None) or torch-rim's (x, y, "
                f"score, h), got {1 + len(args)} arguments"
            )
        return self._forward(x, score, h)

    def _state_sizes(self, dimensions: Sequence[int]) -> list[int]:
        """Spatial sizes after the zero-padding to a multiple of ``2**levels``."""
        m = self._multiple
        return [-(-int(d) // m) * m for d in dimensions]

    def initialize_hidden_states(self, dimensions: Sequence[int], batch_size: int) -> Any:
        """The zero state of a batch of ``batch_size`` inputs of spatial shape
        ``dimensions``: what the first call with ``h=None`` uses (the same result)."""
        p = next(self.parameters())
        return self._zero_state([int(d) for d in dimensions], int(batch_size), p)

    #: torch-rim's (misspelt) name
    def initalize_hidden_states(self, dimensions: Sequence[int], batch_size: int) -> Any:
        """torch-rim's name of :meth:`initialize_hidden_states`."""
        return self.initialize_hidden_states(dimensions, batch_size)

    def _check_input(self, x: torch.Tensor, score: torch.Tensor) -> None:
        if x.shape != score.shape:
            raise ValueError(
                f"x and score must have the same shape, got {tuple(x.shape)} and "
                f"{tuple(score.shape)}"
            )
        if x.ndim != self.config["dimensions"] + 2 or x.shape[1] != self.channels:
            raise ValueError(
                f"{type(self).__name__} expects x of shape (batch, {self.channels}, "
                f"<{self.config['dimensions']} spatial sizes>), got {tuple(x.shape)}"
            )


#: torch-rim 0.2.9's Hourglass defaults, which its keywords bring along
_TORCH_RIM_HOURGLASS = {
    "dimensions": 1,
    "nf": 32,
    "ch_mult": (2, 2),
    "hidden_units": 32,
    "num_layers": 2,
}


def _hourglass_names(
    extra: dict[str, Any],
    dimensions: int | None,
    features: int | None,
    levels: int | None,
    hidden: int | None,
    layers: int | None,
    multiplier: int | None,
) -> tuple[int, int, int, int | None, int, int]:
    """torch-rim 0.2.9's Hourglass names mapped onto spectorch's. With any of them,
    torch-rim's defaults fill what is not given (:data:`_TORCH_RIM_HOURGLASS`);
    otherwise spectorch's."""
    known = ("nf", "ch_mult", "hidden_units", "num_layers")
    unknown = sorted(set(extra) - set(known))
    if unknown:
        raise TypeError(
            f"Hourglass got unexpected keyword argument(s) {unknown}; torch-rim's names "
            f"accepted here are {list(known)}"
        )
    ours = dict(dimensions=2, features=32, levels=2, hidden=None, layers=1, multiplier=2)
    if extra:
        given = {**_TORCH_RIM_HOURGLASS, **extra}
        mult = [int(m) for m in given["ch_mult"]]
        if not mult or len(set(mult)) != 1:
            raise ValueError(
                f"ch_mult must repeat one multiplier (levels = len(ch_mult)), got {mult}"
            )
        ours = dict(
            dimensions=given["dimensions"],
            features=given["nf"],
            levels=len(mult),
            hidden=given["hidden_units"],
            layers=given["num_layers"],
            multiplier=mult[0],
        )
    passed = dict(
        dimensions=dimensions,
        features=features,
        levels=levels,
        hidden=hidden,
        layers=layers,
        multiplier=multiplier,
    )
    # torch-rim's name -> the spectorch names it sets
    sets = {
        "nf": ("features",),
        "hidden_units": ("hidden",),
        "num_layers": ("layers",),
        "ch_mult": ("levels", "multiplier"),
    }
    both = [f"{k}/{o}" for k in extra for o in sets[k] if passed[o] is not None]
    if both:
        raise TypeError(f"Hourglass: {both} given under both names")
    v = {k: (passed[k] if passed[k] is not None else ours[k]) for k in ours}
    return v["dimensions"], v["features"], v["levels"], v["hidden"], v["layers"], v["multiplier"]


class Hourglass(_Backbone):
    """An encoder, a convolutional GRU at the coarsest scale, and a decoder.

    ``levels`` stride-2 convolutions take the input (``[x, score]``, 2·channels) down,
    a :class:`ConvGRU` with ``hidden`` channels carries the state, and as many
    transposed convolutions come back up. Every level has ``layers`` further
    convolutions. Inputs whose sizes are not multiples of ``2**levels`` are zero-padded
    to the next multiple and the output is cropped back.

    Args:
        channels: channels of x.
        dimensions: spatial dimensions of x (1, 2 or 3).
        features: channels after the input convolution; level i has
            ``features * multiplier**i``.
        levels: number of halvings.
        hidden: channels of the GRU state; default the bottleneck's channels.
        layers: extra convolutions per level.
        kernel_size: odd kernel width.
        multiplier: channel growth per level.
        activation: name of the activation.

    Defaults: ``dimensions=2``, ``features=32``, ``levels=2``, ``hidden`` the
    bottleneck's channels, ``layers=1``, ``multiplier=2``.

    torch-rim's names are accepted too: ``nf`` (``features``), ``ch_mult`` (one
    multiplier per level, all equal here: ``levels = len(ch_mult)``,
    ``multiplier = ch_mult[0]``), ``hidden_units`` (``hidden``) and ``num_layers``
    (``layers``). With any of them, torch-rim's defaults fill the rest
    (``dimensions=1``, ``nf=32``, ``ch_mult=(2, 2)``, ``hidden_units=32``,
    ``num_layers=2``), so that code written for torch-rim builds the same sizes. The
    layers are spectorch's (its GRU, zero-initialised output), not torch-rim's
    weights.
    """

    def __init__(
        self,
        channels: int,
        dimensions: int | None = None,
        *,
        features: int | None = None,
        levels: int | None = None,
        hidden: int | None = None,
        layers: int | None = None,
        kernel_size: int = 3,
        multiplier: int | None = None,
        activation: str = "tanh",
        **torch_rim: Any,
    ):
        super().__init__()
        dimensions, features, levels, hidden, layers, multiplier = _hourglass_names(
            torch_rim, dimensions, features, levels, hidden, layers, multiplier
        )
        d = _check_resampling(
            "Hourglass",
            dimensions,
            channels=channels,
            features=features,
            levels=levels,
            multiplier=multiplier,
        )
        checks.nonnegative_int("layers", layers)
        bottom = features * multiplier**levels
        hidden = bottom if hidden is None else _positive("hidden", hidden)
        self.channels = channels
        self.config = dict(
            channels=channels,
            dimensions=d,
            features=features,
            levels=levels,
            hidden=hidden,
            layers=layers,
            kernel_size=kernel_size,
            multiplier=multiplier,
            activation=activation,
        )
        self._act = get_activation(activation)
        self._multiple = 2**levels
        self.input = _conv(d, 2 * channels, features, kernel_size)
        self.encoder = nn.ModuleList()
        c = features
        for _ in range(levels):
            block = [_conv(d, c, c, kernel_size) for _ in range(layers)]
            self.encoder.append(nn.ModuleList([*block, _down(d, c, c * multiplier, kernel_size)]))
            c *= multiplier
        self.gru = ConvGRU(c, hidden, kernel_size, d)
        self.bottleneck = _conv(d, hidden, c, kernel_size)
        self.decoder = nn.ModuleList()
        for _ in range(levels):
            block = [_conv(d, c // multiplier, c // multiplier, kernel_size) for _ in range(layers)]
            self.decoder.append(nn.ModuleList([_up(d, c, c // multiplier, kernel_size), *block]))
            c //= multiplier
        self.output = _conv(d, c, channels, kernel_size)
        self._zero_output()

    def _zero_state(self, dims: list[int], batch: int, p: torch.Tensor) -> torch.Tensor:
        sizes = [n // self._multiple for n in self._state_sizes(dims)]
        return p.new_zeros((batch, self.config["hidden"], *sizes))

    def _forward(self, x: torch.Tensor, score: torch.Tensor, h: torch.Tensor | None = None):
        self._check_input(x, score)
        z, sizes = self._pad(torch.cat([x, score], dim=1))
        z = self._act(self.input(z))
        for block in self.encoder:
            for layer in block:
                z = self._act(layer(z))
        z, h = self.gru(z, h)
        z = self._act(self.bottleneck(z))
        for block in self.decoder:
            for layer in block:
                z = self._act(layer(z))
        return self._crop(self.output(z), sizes), h


class Unet(_Backbone):
    """A U-Net with a convolutional GRU at every scale and skip connections.

    At scale i (``features * multiplier**i`` channels) a convolution feeds a
    :class:`ConvGRU` whose state is both the recurrent memory of that scale and the
    skip connection into the decoder; a stride-2 convolution goes down to the next
    scale. The decoder goes up with transposed convolutions, concatenating each
    scale's GRU state. The state ``h`` is the tuple of the ``levels + 1`` GRU states.
    Sizes that are not multiples of ``2**levels`` are zero-padded and cropped back.

    Args: as :class:`Hourglass` (``hidden`` is not used: each GRU keeps its scale's
        width).
    """

    def __init__(
        self,
        channels: int,
        dimensions: int = 2,
        *,
        features: int = 32,
        levels: int = 2,
        kernel_size: int = 3,
        multiplier: int = 2,
        activation: str = "tanh",
    ):
        super().__init__()
        d = _check_resampling(
            "Unet",
            dimensions,
            channels=channels,
            features=features,
            levels=levels,
            multiplier=multiplier,
        )
        self.channels = channels
        self.config = dict(
            channels=channels,
            dimensions=d,
            features=features,
            levels=levels,
            kernel_size=kernel_size,
            multiplier=multiplier,
            activation=activation,
        )
        self._act = get_activation(activation)
        self._multiple = 2**levels
        widths = [features * multiplier**i for i in range(levels + 1)]
        self.input = _conv(d, 2 * channels, features, kernel_size)
        self.convs = nn.ModuleList(_conv(d, c, c, kernel_size) for c in widths)
        self.grus = nn.ModuleList(ConvGRU(c, c, kernel_size, d) for c in widths)
        self.downs = nn.ModuleList(
            _down(d, widths[i], widths[i + 1], kernel_size) for i in range(levels)
        )
        self.ups = nn.ModuleList(
            _up(d, widths[i + 1], widths[i], kernel_size) for i in range(levels)
        )
        self.merges = nn.ModuleList(
            _conv(d, 2 * widths[i], widths[i], kernel_size) for i in range(levels)
        )
        self.output = _conv(d, features, channels, kernel_size)
        self._zero_output()

    def _zero_state(self, dims: list[int], batch: int, p: torch.Tensor) -> tuple:
        padded = self._state_sizes(dims)
        return tuple(
            p.new_zeros((batch, gru.hidden, *[n // 2**i for n in padded]))
            for i, gru in enumerate(self.grus)
        )

    def _forward(self, x: torch.Tensor, score: torch.Tensor, h: Sequence | None = None):
        self._check_input(x, score)
        z, sizes = self._pad(torch.cat([x, score], dim=1))
        z = self._act(self.input(z))
        states = list(h) if h is not None else [None] * len(self.grus)
        skips = []
        for i, (conv, gru) in enumerate(zip(self.convs, self.grus, strict=True)):
            z, states[i] = gru(self._act(conv(z)), states[i])
            skips.append(z)
            if i < len(self.downs):
                z = self._act(self.downs[i](z))
        for i in reversed(range(len(self.ups))):
            z = self._act(self.ups[i](z))
            z = self._act(self.merges[i](torch.cat([z, skips[i]], dim=1)))
        return self._crop(self.output(z), sizes), tuple(states)


class ConvRNN(_Backbone):
    """Putzky's RIM cell: conv → GRU → dilated conv → GRU → conv.

    As in the reference RIM for image reconstruction (Putzky & Welling 2017; Lønning
    et al. 2019): a ``kernel_sizes[0]`` convolution with ``features`` channels and
    ReLU, a :class:`ConvGRU` with ``hidden`` channels, a ``kernel_sizes[1]``
    convolution dilated by ``dilation`` with ReLU, a second GRU, and a
    ``kernel_sizes[2]`` convolution to the update. The state is the pair of GRU
    states; there is no resampling, so any size works.

    Args:
        channels: channels of x.
        dimensions: spatial dimensions (0 gives dense layers).
        features: channels of the convolutions.
        hidden: channels of each GRU state.
        kernel_sizes: odd widths of the three convolutions.
        dilation: dilation of the middle convolution.
        activation: name of the activation of the convolutions.
    """

    def __init__(
        self,
        channels: int,
        dimensions: int = 2,
        *,
        features: int = 64,
        hidden: int = 64,
        kernel_sizes: Sequence[int] = (5, 3, 3),
        dilation: int = 2,
        activation: str = "relu",
    ):
        super().__init__()
        d = _check_dimensions(dimensions)
        for name, value in (
            ("channels", channels),
            ("features", features),
            ("hidden", hidden),
            ("dilation", dilation),
        ):
            _positive(name, value)
        kernel_sizes = [int(k) for k in kernel_sizes]
        if len(kernel_sizes) != 3 or any(k < 1 or k % 2 == 0 for k in kernel_sizes):
            raise ValueError(f"kernel_sizes must be three odd ints, got {kernel_sizes!r}")
        self.channels = channels
        self.config = dict(
            channels=channels,
            dimensions=d,
            features=features,
            hidden=hidden,
            kernel_sizes=kernel_sizes,
            dilation=dilation,
            activation=activation,
        )
        self._act = get_activation(activation)
        k0, k1, k2 = kernel_sizes
        self.input = _conv(d, 2 * channels, features, k0)
        self.gru1 = ConvGRU(features, hidden, k1 if d else 1, d)
        self.middle = _conv(d, hidden, features, k1, dilation=dilation)
        self.gru2 = ConvGRU(features, hidden, k1 if d else 1, d)
        self.output = _conv(d, hidden, channels, k2)
        self._zero_output()

    def _zero_state(self, dims: list[int], batch: int, p: torch.Tensor) -> tuple:
        shape = (batch, self.config["hidden"], *dims)
        return p.new_zeros(shape), p.new_zeros(shape)

    def _forward(self, x: torch.Tensor, score: torch.Tensor, h: Sequence | None = None):
        self._check_input(x, score)
        h1, h2 = h if h is not None else (None, None)
        z = self._act(self.input(torch.cat([x, score], dim=1)))
        z, h1 = self.gru1(z, h1)
        z = self._act(self.middle(z))
        z, h2 = self.gru2(z, h2)
        return self.output(z), (h1, h2)


BACKBONES: dict[str, type[_Backbone]] = {
    "hourglass": Hourglass,
    "unet": Unet,
    "convrnn": ConvRNN,
}


def build_backbone(name: str, config: dict[str, Any]) -> nn.Module:
    """Rebuild a backbone from its name and ``config`` (as saved in a checkpoint)."""
    try:
        cls = BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; known: {sorted(BACKBONES)}") from None
    return cls(**config)
