"""Cost models: what a layer costs at a given number of kept input and output channels.

The knapsack never looks inside a layer; it asks a :class:`CostModel` for
``layer_cost(layer, c_in, c_out)``. Three ship with fxprune: :class:`FlopsCost`,
:class:`ParamsCost` and :class:`fxprune.deploy.LatencyTable` (measured on the runtime the
model ships on). Anything with a ``name`` and that one method plugs in. :class:`WithFixedCost`
adds the constant a per-layer model misses on one model (:func:`fit_fixed_cost`).
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import numbers
from dataclasses import dataclass, field
from typing import Callable, Protocol, runtime_checkable

from .checks import check_number
from .errors import ArgumentError, ArgumentTypeError


__all__ = ["CostModel", "FlopsCost", "ParamsCost", "WithFixedCost", "LayerSpec",
           "LayerKind", "LAYER_KINDS", "fit_fixed_cost", "fixed_cost_of", "layer_key",
           "layer_keys", "LATENCY_COSTS", "pricing_hypothetical_widths",
           "pricing_hypothetically"]

#: the cost names a recipe (``prune.cost``) prices by with a measurement on this machine: a
#: latency table, and that table with its fitted fixed cost. A method takes the measured cost
#: model (:func:`fxprune.deploy.latency_cost`), never the name.
LATENCY_COSTS = ("latency", "latency+fixed")


def torch_pad(begins, ends) -> list[int]:
    """``F.pad``'s list for pads given per spatial dim (``begins``, ``ends``, first dim first):
    the last dim's pair first, as ``F.pad`` and ``nn.ConstantPadNd`` read it."""
    return [p for b, e in zip(reversed(begins), reversed(ends)) for p in (b, e)]


@dataclass(frozen=True)
class LayerSpec:
    """A costed layer (conv or linear) of a prepared model, described by value.

    ``in_channels``/``out_channels`` are the dense counts. ``groups`` is the dense group count;
    a depthwise conv (``groups == in_channels``) keeps ``groups == c_in == c_out`` when pruned,
    any other grouped conv keeps ``groups`` and shrinks every group equally.
    ``input_shape`` is the full activation shape the layer sees (batch first), which fixes the
    spatial size a latency measurement must use. ``padding``: one count per spatial dim, or,
    where the two ends differ (``padding="same"`` with an even kernel), the begins then the
    ends (ONNX's ``pads`` order); ``padding_mode``: nn.Conv's (``"zeros"``, ``"reflect"``,
    ``"replicate"``, ``"circular"``).
    """

    name: str
    kind: str  # a key of LAYER_KINDS: "conv", "conv_transpose" or "linear"
    in_channels: int
    out_channels: int
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    kernel_size: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1
    bias: bool = True
    dtype: str = "float32"
    padding_mode: str = "zeros"
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        # break111 F14: an unknown kind was priced as a conv, negative counts gave negative
        # FLOPs, list shapes failed as "unhashable", a conv without shapes as an IndexError
        if not isinstance(self.kind, str) or self.kind not in LAYER_KINDS:  # (a list: unhashable)
            raise ArgumentError(f"LayerSpec {self.name!r}: kind is one of {_kind_names()}, got "
                                f"{self.kind!r} (a new kind is a LayerKind in fxprune.cost.LAYER_KINDS)")
        for name in ("in_channels", "out_channels", "groups"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < (name == "groups"):
                raise ArgumentError(f"LayerSpec {self.name!r}: {name} is an integer >= "
                                    f"{int(name == 'groups')}, got {value!r}")
            object.__setattr__(self, name, int(value))
        for name in ("input_shape", "output_shape", "kernel_size", "stride", "padding", "dilation"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__") or any(
                    isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in value):
                # (review115 F9: kernel_size=3 was "'int' object is not iterable", padding="same"
                # became ('s', 'a', 'm', 'e'))
                raise ArgumentError(f"LayerSpec {self.name!r}: {name} is a tuple of integers (one "
                                    f"per dim), got {value!r}")
            object.__setattr__(self, name, tuple(int(v) for v in value))
        spatial = len(self.input_shape) - 2
        if self.layer_kind.spatial and (spatial < 1 or len(self.kernel_size) != spatial
                                      or len(self.output_shape) != len(self.input_shape)):
            raise ArgumentError(f"LayerSpec {self.name!r}: a {self.kind} needs input and output shapes "
                                f"(N, C, spatial...) and a kernel size per spatial dim; got input "
                                f"{self.input_shape}, output {self.output_shape}, kernel "
                                f"{self.kernel_size}")
        if not self.layer_kind.spatial and not (self.input_shape and self.output_shape):
            raise ArgumentError(f"LayerSpec {self.name!r}: a {self.kind} needs its input and output shapes")

    @property
    def layer_kind(self) -> LayerKind:
        """This layer's entry of :data:`LAYER_KINDS`: its formulas and channel layout."""
        return LAYER_KINDS[self.kind]

    @property
    def depthwise(self) -> bool:
        return self.layer_kind.spatial and self.groups > 1 and self.groups == self.in_channels

    def groups_at(self, c_in: int) -> int:
        """The conv's ``groups`` once pruned to ``c_in`` input channels."""
        return c_in if self.depthwise else self.groups

    @property
    def batch(self) -> int:
        return int(self.input_shape[0]) if self.input_shape else 1

    def _channels(self, c_in: int | None, c_out: int | None) -> tuple[int, int]:
        """``(c_in, c_out)``, each the layer's own where None; a negative count raises."""
        c_in = self.in_channels if c_in is None else c_in
        c_out = self.out_channels if c_out is None else c_out
        if c_in < 0 or c_out < 0:
            raise ArgumentError(f"LayerSpec {self.name!r}: channel counts are >= 0, got c_in={c_in}, "
                                f"c_out={c_out}")
        return c_in, c_out

    def macs(self, c_in: int | None = None, c_out: int | None = None) -> int:
        """Multiply-accumulates at ``c_in`` -> ``c_out`` channels (the dense counts where None)."""
        return self.layer_kind.macs(self, *self._channels(c_in, c_out))

    def flops(self, c_in: int | None = None, c_out: int | None = None) -> int:
        # Same convention as torch.utils.flop_counter: 2 FLOPs per multiply-accumulate, bias ignored.
        return 2 * self.macs(c_in, c_out)

    def params(self, c_in: int | None = None, c_out: int | None = None) -> int:
        """Weight and bias parameters at ``c_in`` -> ``c_out`` channels."""
        return self.layer_kind.params(self, *self._channels(c_in, c_out))

    def signature(self) -> str:
        """What fixes this layer's cost apart from its channel counts (a latency cache key)."""
        return self.layer_kind.signature(self)


# ---------------------------------------------------------------------------- layer kinds
# Each kind's formulas, over a LayerSpec and kept counts c_in, c_out (checked >= 0).
def _per_group_in(layer: LayerSpec, c_in: int) -> int:
    return c_in // layer.groups_at(c_in) if c_in else 0


def _bias(layer: LayerSpec, c_out: int) -> int:
    return c_out if layer.bias else 0


def _conv_macs(layer: LayerSpec, c_in: int, c_out: int) -> int:
    # every output position of every output channel reads a k-window of its group's inputs
    positions = layer.output_shape[0] * math.prod(layer.output_shape[2:])
    return positions * c_out * _per_group_in(layer, c_in) * math.prod(layer.kernel_size)


def _conv_transpose_macs(layer: LayerSpec, c_in: int, c_out: int) -> int:
    # every input position scatters a k-window to its group's outputs
    inputs = layer.input_shape[0] * math.prod(layer.input_shape[2:])
    per_group_out = c_out // layer.groups_at(c_in) if c_in else 0
    return inputs * c_in * per_group_out * math.prod(layer.kernel_size)


def _conv_params(layer: LayerSpec, c_in: int, c_out: int) -> int:
    return c_out * _per_group_in(layer, c_in) * math.prod(layer.kernel_size) + _bias(layer, c_out)


def _linear_macs(layer: LayerSpec, c_in: int, c_out: int) -> int:
    # a linear acts on the last dim: every other dim (batch included) is a row
    return math.prod(layer.output_shape[:-1]) * c_in * c_out


def _linear_params(layer: LayerSpec, c_in: int, c_out: int) -> int:
    return c_in * c_out + _bias(layer, c_out)


def _conv_signature(layer: LayerSpec, transposed: bool = False) -> str:
    def dims(values):
        return "x".join(map(str, values))

    k = ("T" if transposed else "") + dims(layer.kernel_size)
    groups = "dw" if layer.depthwise else f"g{layer.groups}"
    mode = "" if layer.padding_mode == "zeros" else f"-{layer.padding_mode}"
    return (f"conv{len(layer.kernel_size)}d[n{layer.batch},{dims(layer.input_shape[2:])}]k{k}"
            f"s{dims(layer.stride)}p{dims(layer.padding)}{mode}d{dims(layer.dilation)}{groups}"
            f"{'b' if layer.bias else ''}:{layer.dtype}")


def _linear_signature(layer: LayerSpec) -> str:
    rows = "x".join(str(s) for s in layer.input_shape[:-1])
    return f"linear[{rows}]{'b' if layer.bias else ''}:{layer.dtype}"


@dataclass(frozen=True)
class LayerKind:
    """What a :class:`LayerSpec`'s ``kind`` means: where its channels sit and how it is priced.

    A rule's ``layer_spec`` names the kind (``fxprune.rules``); the cost models read the
    formulas here, and ``fxprune.deploy`` builds the single-layer models a latency table times
    by the same name (a kind it has no builder for is refused there, before any timing).

    Attributes:
        name: the ``LayerSpec.kind`` string.
        channel_dim: the activation dim holding channels: 1 for ``(N, C, *spatial)``, -1 for
            ``(*rows, C)``.
        spatial: whether the layer has a kernel, stride, padding and dilation per spatial dim
            (and ``groups``); a spec of such a kind needs ``(N, C, *spatial)`` shapes.
        macs, params: ``f(layer, c_in, c_out) -> int`` at kept counts ``c_in``, ``c_out``.
        signature: ``f(layer) -> str``, what fixes the cost apart from the channel counts (a
            latency table's cache key).
    """

    name: str
    channel_dim: int
    spatial: bool
    macs: Callable[[LayerSpec, int, int], int]
    params: Callable[[LayerSpec, int, int], int]
    signature: Callable[[LayerSpec], str]


#: every ``LayerSpec.kind``, by name: supporting a new weight layer's cost is adding an entry
LAYER_KINDS: dict[str, LayerKind] = {kind.name: kind for kind in (
    LayerKind("conv", 1, True, _conv_macs, _conv_params, _conv_signature),
    LayerKind("conv_transpose", 1, True, _conv_transpose_macs, _conv_params,
              functools.partial(_conv_signature, transposed=True)),
    LayerKind("linear", -1, False, _linear_macs, _linear_params, _linear_signature),
)}


def _kind_names() -> str:
    return ", ".join(repr(k) for k in LAYER_KINDS)


_HYPOTHETICAL = contextvars.ContextVar("fxprune_pricing_hypothetical_widths", default=False)


@contextlib.contextmanager
def pricing_hypothetical_widths():
    """Prices asked inside are of widths the method will not choose (what an error message
    says another ``channel_step`` or ``min_kept`` would reach): a cost model warns of nothing
    about them, e.g. a latency table of no width below its grid (break210 F2: a table timed at
    the method's own step was said to need a finer one, and its one warning was spent)."""
    token = _HYPOTHETICAL.set(True)
    try:
        yield
    finally:
        _HYPOTHETICAL.reset(token)


def pricing_hypothetically() -> bool:
    """Whether the prices now asked are hypothetical (:func:`pricing_hypothetical_widths`)."""
    return _HYPOTHETICAL.get()


@runtime_checkable
class CostModel(Protocol):
    """What the knapsack needs to know about cost.

    ``layer_cost(layer, c_in, c_out)`` returns the cost of ``layer`` when it keeps ``c_in``
    input and ``c_out`` output channels, in any unit, as long as it is consistent across
    layers. It should be non-decreasing in both counts. ``name`` labels logs and reports.
    Optionally, ``fixed_cost_for(layers)`` returns a constant (same unit) the model costs
    whatever its widths, added to every total (see :class:`WithFixedCost`), and
    ``as_priced(layer)`` returns the layer as the model prices it (a latency table measured at
    another batch or dtype than the model's example inputs).
    """

    name: str

    def layer_cost(self, layer: LayerSpec, c_in: int, c_out: int) -> float: ...


class FlopsCost:
    """Floating point operations of conv and linear layers (2 per multiply-accumulate)."""

    name = "flops"

    def layer_cost(self, layer: LayerSpec, c_in: int, c_out: int) -> float:
        return float(layer.flops(c_in, c_out))


class ParamsCost:
    """Weight and bias parameters of conv and linear layers. With ``cost="params"`` the
    pruners add the model's other parameters (norms, ...) at their dense count, so the
    budget's fraction is of all parameters and bounds the pruned model's real one."""

    name = "params"

    def layer_cost(self, layer: LayerSpec, c_in: int, c_out: int) -> float:
        if layer.meta.get("repeated_call"):  # a module called again holds no more parameters
            return 0.0
        return float(layer.params(c_in, c_out))


def fit_fixed_cost(dense_cost: float, pruned_cost: float, measured_fraction: float) -> float:
    """The constant a cost model misses, from one pruned model's measured latency.

    A per-layer cost model sums the layers it prices; the real model also spends time on what it
    does not price (adds, concatenation, pooling, the runtime's per-call overhead) and a layer
    timed alone is not timed as it runs inside the model. With the real latency taken as
    proportional to ``priced + F``, one pruned model's measured fraction of the dense latency
    fixes ``F``, in the cost model's units::

        measured_fraction = (pruned_cost + F) / (dense_cost + F)
        F = (measured_fraction * dense_cost - pruned_cost) / (1 - measured_fraction)

    ``F > 0`` when the real model keeps more of its latency than the priced layers predict,
    ``F < 0`` when it keeps less. Costs are the model's total under the cost model (dense and
    pruned, ``0 < pruned_cost < dense_cost``); the fraction is measured latency pruned / dense.

    Raises ``ValueError`` when ``pruned_cost`` is not below ``dense_cost`` or the measured
    fraction is not in (0, 1): a pruned model that measured no faster than dense fixes no
    constant (time it again on an idle machine, or prune it further).

    >>> fit_fixed_cost(10.0, 4.0, 0.5)  # (0.5 * 10 - 4) / 0.5
    2.0
    """
    for name, v in (("dense_cost", dense_cost), ("pruned_cost", pruned_cost),
                    ("measured_fraction", measured_fraction)):
        check_number(name, v)
    dense_cost, pruned_cost, m = float(dense_cost), float(pruned_cost), float(measured_fraction)
    if not 0 < pruned_cost < dense_cost:
        raise ArgumentError(f"pruned_cost must be in (0, dense_cost={dense_cost:g}), got "
                            f"{pruned_cost:g}: calibrate with a model pruned below the dense one")
    if not 0 < m < 1:
        raise ArgumentError(f"the pruned model measured {m:.3f} of the dense latency; a fixed cost "
                            "needs one in (0, 1): time it again on an idle machine, or prune it further")
    return (m * dense_cost - pruned_cost) / (1 - m)


@dataclass(frozen=True)
class WithFixedCost:
    """``base`` plus a constant ``fixed_cost`` that no channel choice changes, fitted for one
    model (:func:`fit_fixed_cost`; measured by :func:`fxprune.deploy.calibrate_cost`).

    Layer costs are ``base``'s; the knapsack adds ``fixed_cost`` to the model's total, so a
    target of 0.5 means half of ``priced + fixed_cost``: the fraction of the real latency when
    the fit holds. ``layers`` are the signatures of the layers it was fitted on, in order:
    pricing another model raises ``ValueError`` (fit it again for that model).
    """

    base: CostModel
    fixed_cost: float
    layers: tuple[str, ...]
    #: how it was fitted (dense ms, measured and predicted fractions, backend...), for reports
    fit: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        # a list of keys would never equal the tuple the check builds: a false "another model"
        object.__setattr__(self, "layers", tuple(self.layers))

    @property
    def name(self) -> str:
        return f"{self.base.name}+fixed"

    def layer_cost(self, layer: LayerSpec, c_in: int, c_out: int) -> float:
        return self.base.layer_cost(layer, c_in, c_out)

    def fixed_cost_for(self, layers) -> float:
        """``fixed_cost``, after checking ``layers`` (LayerSpecs) are the ones it was fitted on,
        as ``base`` prices them: a table timed at its own batch ignores the example batch."""
        given = layer_keys(layers, self.base)
        if given != self.layers and layer_keys(layers) != self.layers:  # (older fits: raw keys)
            def undtyped(keys):
                return [k.rpartition(":")[0] for k in keys]

            if undtyped(given) == undtyped(self.layers):  # the model was cast since (break44 #3)
                now, then = next((a.rpartition(":")[2], b.rpartition(":")[2])
                                 for a, b in zip(given, self.layers) if a != b)
                raise ArgumentError(
                    f"this {self.name} cost was fitted on this model's layers at {then}, and they "
                    f"are {now} now (cast since the fit): its constant comes from latency measured "
                    f"at {then}; fit it again after the cast with "
                    "fxprune.deploy.calibrate_cost(cost_model, prepared)")
            first = next((f"layer {i}: {a!r} here, {b!r} when fitted"
                          for i, (a, b) in enumerate(zip(given, self.layers)) if a != b),
                         f"{len(given)} costed layers here, {len(self.layers)} when fitted")
            raise ArgumentError(
                f"this {self.name} cost was fitted on another model ({first}); fit it again for "
                "this model with fxprune.deploy.calibrate_cost(cost_model, prepared)")
        return self.fixed_cost


def layer_key(layer: LayerSpec) -> str:
    """A layer's name, dense widths and cost signature: what a fitted constant is tied to."""
    return f"{layer.name}:{layer.in_channels}x{layer.out_channels}:{layer.signature()}"


def layer_keys(layers, cost_model=None) -> tuple[str, ...]:
    """:func:`layer_key` of every costed layer (LayerSpecs, e.g. ``fxprune.layer_specs(pm)``),
    in order, each as ``cost_model`` prices it (its ``as_priced``, where it has one): the
    ``layers`` a :class:`WithFixedCost` is tied to. Raises ``TypeError`` for a model (pass
    ``fxprune.layer_specs(model)``)."""
    try:
        specs = list(layers)
    except TypeError:  # a model that is not a container
        specs = None
    if specs is None or not all(isinstance(s, LayerSpec) for s in specs):
        raise ArgumentTypeError(f"layer_keys takes LayerSpecs, got {type(layers).__name__}: pass "
                                "fxprune.layer_specs(model), not the model")
    as_priced = getattr(cost_model, "as_priced", None) or (lambda spec: spec)
    return tuple(layer_key(as_priced(s)) for s in specs)


def fixed_cost_of(cost_model, layers) -> float:
    """The constant ``cost_model`` adds to a model with these costed ``layers`` (0 for a cost
    model without one)."""
    fixed = getattr(cost_model, "fixed_cost_for", None)
    if fixed is None:
        return 0.0
    value = fixed(layers)
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):  # a 0-d tensor or array
        value = value.item()  # (review115 F4: worked before the check below)
    # break111 F13: inf became "budget is nan" in the knapsack, None a bare float() TypeError
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not math.isfinite(value)):
        name = getattr(cost_model, "name", type(cost_model).__name__)
        raise ArgumentError(f"the cost model {name!r} gives fixed_cost_for(layers) = {value!r}; it "
                            "must return a finite number (0 where the model costs nothing beyond "
                            "its layers)")
    return float(value)
