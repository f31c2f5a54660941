"""Keep ``.train()/.eval()`` meaningful in a traced graph.

torch.fx reads ``self.training`` as a Python bool while tracing, so code that branches on it
(timm's ``BatchNormAct2d`` computing ``training=self.training``, ``F.dropout(x, p,
training=self.training)`` in a model's head) is frozen in the mode the model was traced in:
prepared in train mode, the model would keep normalising with batch statistics after
``.eval()``, and so would the finalized one. ``finalize``'s check cannot see it (the masked
and the pruned model are wrong alike).

So a copy of the model is traced a second time with every module's flag flipped and the two
graphs are compared, node by node, per module whose code made the node (``nn_module_stack``; a
node read from another module counts by that module, not by its position, so a difference
shows in the module whose own code differs):

- a functional dropout whose ``training`` argument follows its module's flag becomes a call of
  the matching ``nn.Dropout`` module, which follows ``.train()/.eval()``;
- any other difference inside a submodule makes that submodule a leaf (one call, so its own
  ``forward`` reads the flag at run time); a leaf without a row in the op table keeps its
  channels whole, with the reason said;
- a difference in the model's own ``forward`` (auxiliary heads) cannot be made a leaf: the
  mode it was prepared in is kept, with a warning naming the line.
"""
from __future__ import annotations

import difflib
import inspect
import operator
import os
import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

def _dropout(cls):
    return lambda a: cls(p=a["p"], inplace=a["inplace"])


#: functional dropouts and the module that does the same while following ``.train()/.eval()``,
#: built from the call's bound arguments
DROPOUT_MODULES = {F.dropout: _dropout(nn.Dropout), F.dropout1d: _dropout(nn.Dropout1d),
                   F.dropout2d: _dropout(nn.Dropout2d), F.dropout3d: _dropout(nn.Dropout3d),
                   F.alpha_dropout: _dropout(nn.AlphaDropout),
                   F.feature_alpha_dropout: _dropout(nn.FeatureAlphaDropout)}
#: torch's own dropouts, ``torch.dropout(input, p, train)``: builtins without a Python signature,
#: each what its module computes at any rank (torch.feature_dropout is not here: which of
#: Dropout1d/2d/3d computes it depends on the input's rank)
_TORCH_DROPOUTS = {torch.dropout: nn.Dropout, torch.alpha_dropout: nn.AlphaDropout,
                   torch.feature_alpha_dropout: nn.FeatureAlphaDropout}
for _f, _cls in _TORCH_DROPOUTS.items():
    DROPOUT_MODULES[_f] = _dropout(_cls)


_REQUIRED = object()
#: the builtins' parameters (name, default), in order: they have no Python signature to bind
_TORCH_DROPOUT_PARAMETERS = (("input", _REQUIRED), ("p", _REQUIRED), ("training", _REQUIRED))
_SDPA_PARAMETERS = (("query", _REQUIRED), ("key", _REQUIRED), ("value", _REQUIRED),
                    ("attn_mask", None), ("dropout_p", 0.0), ("is_causal", False), ("scale", None),
                    ("enable_gqa", False))


def _builtin_arguments(node: fx.Node, parameters: tuple, aliases: dict | None = None) -> dict:
    """A builtin call's arguments by name, defaults filled in (``aliases``: its keyword names
    that are other names here). Raises TypeError for arguments it does not take, or missing."""
    names = [n for n, _ in parameters]
    kwargs = {(aliases or {}).get(k, k): v for k, v in node.kwargs.items()}
    what = getattr(node.target, "__name__", node.target)
    if len(node.args) > len(names) or set(kwargs) - set(names):
        raise TypeError(f"unexpected arguments to {what}")
    a = {n: d for n, d in parameters if d is not _REQUIRED}
    a.update(zip(names, node.args))
    a.update(kwargs)
    if len(a) != len(names):
        raise TypeError(f"missing arguments to {what}")
    return a


def dropout_arguments(node: fx.Node) -> dict:
    """A dropout call's arguments by name (``input``, ``p``, ``training``, ``inplace``...),
    defaults filled in; torch's builtin ``torch.dropout(input, p, train)`` read alike (break94
    #6: it has no signature to bind, and was left frozen in the prepare mode). Raises
    TypeError for arguments the function does not take."""
    if node.target in _TORCH_DROPOUTS:
        a = _builtin_arguments(node, _TORCH_DROPOUT_PARAMETERS, {"train": "training"})
        return {**a, "inplace": False}
    args = inspect.signature(node.target).bind(*node.args, **node.kwargs)
    args.apply_defaults()
    return dict(args.arguments)


#: Python functions torch.fx would trace into: recorded as one call instead, so that their
#: ``training`` argument shows (torchvision's functional stochastic depth)
AUTOWRAP_FUNCTIONS: tuple = ()
try:
    from torchvision.ops import StochasticDepth, stochastic_depth
except ImportError:
    pass
else:
    DROPOUT_MODULES[stochastic_depth] = lambda a: StochasticDepth(p=a["p"], mode=a["mode"])
    AUTOWRAP_FUNCTIONS = (stochastic_depth,)


@dataclass
class ModeDependence:
    """What in a traced graph depends on the modules' ``training`` flags."""

    #: submodule path -> why it is traced as one call (the first source line that differs)
    leaves: dict[str, str] = field(default_factory=dict)
    #: functional dropout nodes of the first graph whose ``training`` follows their module
    dropouts: list[fx.Node] = field(default_factory=list)
    #: the model's own ``forward`` reads the flag here (or None)
    root_line: str | None = None
    #: why the model could not be traced in the other mode (or None)
    unchecked: str | None = None
    #: modules called in one mode only whose own code could not be traced alone in the other
    #: mode, and why (or None)
    heads_unchecked: tuple[list[str], str] | None = None


def mode_dependence(root: nn.Module, graph: fx.Graph, make_tracer, fresh_copy,
                    called: set[str] | None = None) -> ModeDependence:
    """Trace a fresh copy of the model (``fresh_copy()``; not ``root`` again: a model may cache
    a traced value in its modules) with every module's ``training`` flipped, by
    ``make_tracer()`` (a tracer like the one that traced ``root`` into ``graph``), and say what
    differs. ``called``: the paths of the modules that tracing ``graph`` called (the tracer's
    ``called``; the other trace's are read from its tracer). A module called in one mode only
    (GoogLeNet's auxiliary heads) is its caller's difference, not its own (break89 F1: each was
    made a leaf, its channels kept whole); what its own code does with the flag is found by a
    third trace, with only such heads flipped, so that their caller still calls them (break92
    F3: a head's F.dropout(x, p, self.training) was frozen in the mode of the prepare)."""
    other, tracer, failure = _trace_flipped(make_tracer, fresh_copy, lambda name: True)
    if failure is not None:
        return failure
    called_theirs = getattr(tracer, "called", None)
    known = called is not None and called_theirs is not None
    one_mode = called ^ called_theirs if known else set()
    mine_only = called - called_theirs if known else set()  # the heads are in the graph kept
    heads = [name for name in sorted(mine_only) if not any(name.startswith(h + ".") for h in mine_only)]
    found = _differences(root, graph, other, skip=lambda owner: owner in one_mode)
    if heads and not found.leaves:
        inside = lambda name: any(name == h or name.startswith(h + ".") for h in heads)  # noqa: E731
        other2, _, failure = _trace_flipped(make_tracer, fresh_copy, inside)
        if failure is not None:  # the heads alone in the other mode cannot be traced (their
            # caller reads what they return as in this mode; made leaves, the caller may fail
            # too): what the full flip found stands (break93 #1: it was dropped, and a dropout
            # elsewhere stayed in train mode), and the heads' own use of the flag is unchecked
            why = failure.unchecked or next(iter(failure.leaves.values()), "")
            found.heads_unchecked = (heads, why)
        else:
            theirs = _differences(root, graph, other2, skip=lambda owner: not inside(owner))
            found.dropouts += theirs.dropouts
            found.leaves.update(theirs.leaves)
    if found.leaves:  # traced again with these as leaves
        return ModeDependence(leaves=found.leaves)
    return found


def _trace_flipped(make_tracer, fresh_copy, flip):
    """(the graph of a fresh copy with the modules whose path ``flip`` accepts in the other
    mode, the tracer, None), or (None, the tracer, a ModeDependence saying why it could not be
    traced)."""
    tracer = make_tracer()
    flipped = None
    try:
        flipped = fresh_copy()
        for name, m in flipped.named_modules():
            if flip(name):
                m.training = not m.training
        return tracer.trace(flipped), tracer, None
    except Exception as e:  # noqa: BLE001 - a submodule is made a leaf, else the caller warns
        why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        failed = getattr(tracer, "failed_at", None) or []
        if failed and failed[-1][0] and flipped is not None:  # a submodule's other-mode code
            mode = "train" if flipped.get_submodule(failed[-1][0]).training else "eval"
            return None, tracer, ModeDependence(
                leaves={failed[-1][0]: f"its forward cannot be traced in {mode} mode ({why})"})
        return None, tracer, ModeDependence(unchecked=why)


def _differences(root: nn.Module, graph: fx.Graph, other: fx.Graph, skip) -> ModeDependence:
    """Compare the two graphs' nodes per module whose code made them (but the modules ``skip``
    accepts): functional dropouts that follow the flag, modules to make leaves, the root's
    line."""
    mine, theirs = _by_owner(graph), _by_owner(other)
    where_mine, where_theirs = _positions(mine), _positions(theirs)
    differing = {}
    skipped: list[fx.Node] = []  # (their call sites name the line of a root that returns them)
    for owner in dict.fromkeys([*mine, *theirs]):  # graph order (break89 F3: a set's varied)
        if owner and skip(owner):
            skipped += mine.get(owner, []) + theirs.get(owner, [])
            continue
        a, b = mine.get(owner, []), theirs.get(owner, [])
        sa = [_signature(n, where_mine) for n in a]
        sb = [_signature(n, where_theirs) for n in b]
        if sa != sb:
            differing[owner] = (a, b, sa, sb)
    found = ModeDependence()
    for owner, (a, b, sa, sb) in differing.items():
        training = root.get_submodule(owner).training if _has_module(root, owner) else None
        flips = _dropout_flips(a, b, where_mine, where_theirs, training)
        if flips is not None:
            found.dropouts += flips
        else:
            line = _first_line(a, b, sa, sb)
            if line.startswith("node ") and skipped:  # (it returns what such a module gave)
                line = _call_site(root.get_submodule(owner), skipped) or line
            if owner:
                found.leaves[owner] = f"its forward reads self.training at {line}"
            else:
                found.root_line = line
    return found


def dropouts_follow_mode(gm: fx.GraphModule, nodes: list[fx.Node]) -> None:
    """Replace each functional dropout node by a call of an ``nn.Dropout``-family submodule
    (added beside the module that ran it), in the mode the node was traced in."""
    for node in nodes:
        if node.target is F.scaled_dot_product_attention:
            _attention_dropout_follows_mode(gm, node)
            continue
        a = dropout_arguments(node)
        module = DROPOUT_MODULES[node.target](a).train(a["training"])
        target = _new_submodule(gm, node, module)
        with gm.graph.inserting_before(node):
            call = gm.graph.call_module(target, (a["input"],))
        call.meta = dict(node.meta)
        node.replace_all_uses_with(call)
        gm.graph.erase_node(node)
    if nodes:
        gm.recompile()


def _attention_dropout_follows_mode(gm: fx.GraphModule, node: fx.Node) -> None:
    """Give an attention call ``dropout_p = module.training * p`` read from an ``nn.Dropout(p)``
    added beside the module that ran it, which ``.train()``/``.eval()`` set (a plain torch
    module: the finalized model names no fxprune)."""
    p = node.meta.pop("fxprune_dropout_p")
    traced_in_train = _builtin_arguments(node, _SDPA_PARAMETERS)["dropout_p"] != 0
    target = _new_submodule(gm, node, nn.Dropout(p).train(traced_in_train))
    with gm.graph.inserting_before(node):
        holder = gm.graph.get_attr(target)
        flag = gm.graph.call_function(getattr, (holder, "training"))
        rate = gm.graph.call_function(operator.mul, (flag, p))
    for n in (holder, flag, rate):
        n.meta["nn_module_stack"] = dict(node.meta.get("nn_module_stack", {}))
    if len(node.args) > 4:
        args = list(node.args)
        args[4] = rate
        node.args = tuple(args)
    else:
        node.update_kwarg("dropout_p", rate)


def _new_submodule(gm: fx.GraphModule, node: fx.Node, module: nn.Module) -> str:
    """Add ``module`` beside the module whose code made ``node``, under a free name made from
    the node's (a plain name: the finalized model names no fxprune); its path."""
    owner = _owner(node)
    parent = gm.get_submodule(owner) if _has_module(gm, owner) else None
    name, k = f"{node.name}_module", 1
    while parent is not None and hasattr(parent, name):
        name, k = f"{node.name}_module{k}", k + 1
    target = f"{owner}.{name}" if owner else name
    gm.add_submodule(target, module)
    return target


def _has_module(gm: nn.Module, path: str) -> bool:
    try:
        gm.get_submodule(path)
    except AttributeError:
        return False
    return True


def _owner(node: fx.Node) -> str:
    """The path of the module whose code created ``node`` ("" for the model's own forward); a
    ``call_module`` node belongs to its caller."""
    paths = [path for path, _ in node.meta.get("nn_module_stack", {}).values()]
    if node.op == "call_module" and paths and paths[-1] == node.target:
        paths = paths[:-1]
    return paths[-1] if paths else ""


def _by_owner(graph: fx.Graph) -> dict[str, list[fx.Node]]:
    """Each module's nodes in order, less unused reads (a mode's code may read ``x.device``
    for a cache key only: nothing differs in what the graph computes)."""
    owners: dict[str, list[fx.Node]] = {}
    for node in graph.nodes:
        if not node.users and (node.op == "get_attr" or node.target is getattr
                               or node.op == "call_method" and node.target in ("size", "dim")):
            continue
        owners.setdefault(_owner(node), []).append(node)
    return owners


def _positions(owners: dict[str, list[fx.Node]]) -> dict[fx.Node, tuple[str, int]]:
    return {n: (owner, i) for owner, nodes in owners.items() for i, n in enumerate(nodes)}


def _token(where, owner: str):
    """A node read by a node of ``owner``: by its position when it is ``owner``'s own, by its
    module otherwise, so that a difference inside one module shows in that module only (its
    callers read its result, its submodules their inputs, alike in both modes)."""
    def token(a):
        if not isinstance(a, fx.Node):
            return a
        theirs, i = where[a]
        return ("node", i) if theirs == owner else ("from", theirs)
    return token


def _signature(node: fx.Node, where) -> tuple:
    """What a node does, with the nodes it reads named as :func:`_token` says."""
    token = _token(where, where[node][0])
    target = node.target if isinstance(node.target, str) else id(node.target)
    return (node.op, target, repr(fx.node.map_aggregate(node.args, token)),
            repr(fx.node.map_aggregate(node.kwargs, token)))


def _dropout_flips(a, b, where_a, where_b, training: bool | None) -> list[fx.Node] | None:
    """The dropout nodes of ``a`` when every difference from ``b`` is a functional dropout's
    ``training`` argument equal to its module's flag (``training``; None: unknown); else None."""
    if len(a) != len(b) or training is None:
        return None
    flips = []
    for x, y in zip(a, b):
        if _signature(x, where_a) == _signature(y, where_b):
            continue
        if x.target is F.scaled_dot_product_attention and y.target is x.target:
            p = _attention_dropout_flip(x, y, where_a, where_b, training)
            if p is None:
                return None
            x.meta["fxprune_dropout_p"] = p
            flips.append(x)
            continue
        if x.target not in DROPOUT_MODULES or y.target is not x.target:
            return None
        try:
            ax, ay = dropout_arguments(x), dropout_arguments(y)
        except TypeError:
            return None
        tx, ty = ax.pop("training", True), ay.pop("training", True)
        read = []  # p, inplace, mode: constants, no node among them
        fx.node.map_arg([v for k, v in ax.items() if k != "input"], read.append)
        # the rest equal, and the flag followed, not negated
        if (repr(fx.node.map_aggregate(ax, _token(where_a, where_a[x][0])))
                != repr(fx.node.map_aggregate(ay, _token(where_b, where_b[y][0])))
                or tx is not training or ty is not (not training)
                or read):
            return None
        flips.append(x)
    return flips


def _attention_dropout_flip(x, y, where_a, where_b, training: bool) -> float | None:
    """The dropout probability of an attention call whose only difference between the modes
    is ``dropout_p=p if self.training else 0.`` (timm's and most transformers' attention:
    with attn_drop > 0 each attention module was called as one op and kept whole, break96
    #8); None for any other difference."""
    try:
        ax, ay = _builtin_arguments(x, _SDPA_PARAMETERS), _builtin_arguments(y, _SDPA_PARAMETERS)
    except TypeError:
        return None
    px, py = ax.pop("dropout_p"), ay.pop("dropout_p")
    p, off = (px, py) if training else (py, px)
    same = (repr(fx.node.map_aggregate(ax, _token(where_a, where_a[x][0])))
            == repr(fx.node.map_aggregate(ay, _token(where_b, where_b[y][0]))))
    if not same or not isinstance(p, float) or not 0 < p <= 1 or off != 0:
        return None
    return p


_FRAME = re.compile(r'File "([^"]+)", line (\d+)')
# torch's and this package's own frames (the tracer's) are not the model's line
_NOT_MODEL_CODE = tuple(os.path.dirname(os.path.abspath(f)) + os.sep
                        for f in (torch.__file__, __file__))


def _first_line(a, b, sa, sb) -> str:
    """``file:line`` of the first node that differs between the two modes, or the node's name:
    in the first differing stretch, the mode with more nodes (the code under ``if
    self.training:``) is read first, whichever mode the model was prepared in; then either
    mode's node (the output node has no line)."""
    _, i, i2, j, j2 = next(o for o in difflib.SequenceMatcher(None, sa, sb, autojunk=False)
                            .get_opcodes() if o[0] != "equal")
    nodes = max(a[i:i2], b[j:j2], key=len)  # the mode with more code: its first line
    nodes += [n[k] for n, k in ((a, i), (b, j)) if k < len(n)]
    for node in nodes:
        frames = [(f, line) for f, line in _FRAME.findall(node.meta.get("stack_trace") or "")
                  if not os.path.abspath(f).startswith(_NOT_MODEL_CODE)]
        if frames:
            return f"{frames[-1][0]}:{frames[-1][1]}"
    return f"node `{nodes[0].name}`"


def _call_site(module: nn.Module, nodes: list[fx.Node]) -> str | None:
    """``file:line`` of the first line of ``module``'s own ``forward`` in the stack traces of
    ``nodes`` (those of a module it calls in one mode only: where it calls it), or None."""
    try:
        lines, start = inspect.getsourcelines(type(module).forward)
        path = os.path.abspath(inspect.getsourcefile(type(module).forward))
    except (OSError, TypeError):
        return None
    for node in nodes:
        for f, line in _FRAME.findall(node.meta.get("stack_trace") or ""):
            if os.path.abspath(f) == path and start <= int(line) < start + len(lines):
                return f"{f}:{line}"
    return None
