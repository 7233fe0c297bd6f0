"""A fast LRP engine for NEON's backward pass: zennit's composite with the fewest products.

Reference: Kauffmann et al., "From Clustering to Cluster Explanations via Neural Networks",
Sec. IV and VII-B (LRP-γ in convolutions), and Montavon et al., "Layer-wise relevance
propagation: an overview" (2019), Sec. 10.2.3 (LRP-γ), 10.2.1 (LRP-ε) and 10.2.4 (z^B).

:func:`kmtools.explain.deep.lrp_composite` defines the rules (zennit's
``SpecialFirstLayerMapComposite``): generalised LRP-γ for convolutions, LRP-ε for linear
layers, z^B (or ε, γ) for the first layer, Norm for skip sums and average pooling, pass-through
for activations and BatchNorm, the gradient for everything else; BatchNorm is merged into the
conv/linear leaf before it (zennit's ``SequentialMergeBatchNorm``, leaf order). This module
computes the same relevance for networks built from those layer types only (conv2d, linear,
ReLU, max/average pooling, BatchNorm, flatten, the zoo's ``Sum`` and torchvision ResNet
blocks), by tracing the network with ``torch.fx`` and running the rules itself.

Why it is cheaper and still exact (per convolution, input a, merged weights W, bias b,
output z = W⋆a + b, relevance R at z; W⁺ = max(W, 0), W_γ± = W + γW±, b_γ± = b + γb±):
zennit's generalised γ-rule evaluates five modified forwards and five transposed
convolutions:

    z₊ = W_γ⁺⋆a⁺ + W_γ⁻⋆a⁻ + b_γ⁺,   z₋ = W_γ⁻⋆a⁺ + W_γ⁺⋆a⁻ + b_γ⁻,
    s₊ = 1[z > 0] R / z₊,   s₋ = 1[z < 0] R / z₋,
    R_a = a⁺ ⊙ (W_γ⁺ᵀ⋆s₊ + W_γ⁻ᵀ⋆s₋) + a⁻ ⊙ (W_γ⁻ᵀ⋆s₊ + W_γ⁺ᵀ⋆s₋).

Inside a ReLU network every convolution after the first sees a ≥ 0, so a⁻ = 0 and two
of the four terms vanish identically. z is the forward output (already computed), and
W_γ⁺ + W_γ⁻ = (2 + γ) W with b_γ⁺ + b_γ⁻ = (2 + γ) b, so z₋ = (2 + γ) z − z₊ needs no
convolution: one modified forward (z₊) and one transposed product (with W_γ⁺) when no
relevance reaches negative pre-activations (s₋ = 0), two otherwise (a single call on the
channel-concatenated [s₊, s₋] and [W_γ⁺; W_γ⁻]). s₋ = 0 is known without looking when the
layer's output reaches relevance only through a ReLU whose consumers all multiply their
relevance by their input (every rule here does; see ``_mark_relu_gated``): relu(z) = 0 where
z ≤ 0, so R = 0 there, and s₊ = R / (z₊ + ε) needs no mask either (z₊ ≥ z > 0 where R ≠ 0).
Other layers check R at z < 0 per batch. The identities are
exact in real arithmetic; in float32 the results agree with zennit's to rounding (tested
to 1e-5 relative). The first layer's z^B rule needs the three transposed products of
W, W⁺, W⁻ (one call with the weights stacked along the input channels) and the two
bound images L⋆W⁺, H⋆W⁻, which do not depend on the batch and are computed once per shape.

zennit merges BatchNorm into the layer before it and leaves the BatchNorm dividing by
√(1 + eps) (it resets the statistics, not eps); that factor is folded into the layer too,
so activations and relevances are zennit's. A BatchNorm that does not follow a conv/linear
leaf stays in the forward and passes relevance through unchanged (zennit's rule).
"""

from __future__ import annotations

import copy
import operator
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.grad import conv2d_input

from kmtools.errors import ConfigError

__all__ = ["ENGINES", "FastLRP", "unsupported"]

ENGINES = ("auto", "fast", "zennit")
_STAB = 1e-6  # zennit's default stabiliser of the γ, z^B and Norm rules

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_ZEN_LINEAR = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
               nn.ConvTranspose3d)  # zennit.types.Linear: what a BatchNorm is merged into
_PASS = (nn.ReLU,)  # activations: relevance passes through unchanged (zennit's Pass rule)
_IDENT = (nn.Identity, nn.Dropout, nn.Sequential)  # an empty Sequential is a leaf returning its input
_AVG = (nn.AvgPool2d, nn.AdaptiveAvgPool2d)
_RESHAPE_FUNCS: set[Any] = {torch.flatten, torch.reshape}
_RESHAPE_METHODS = {"flatten", "view", "reshape", "contiguous", "squeeze", "unsqueeze"}
_GRAD_FUNCS: set[Any] = {torch.cat, operator.getitem}  # the gradient, by autograd


def _stab(t: torch.Tensor, eps: float = _STAB) -> torch.Tensor:
    """zennit's ``stabilize``: t + eps · sign(t), with sign(0) = +1 (the same floats, fewer passes)."""
    return t + torch.where(t >= 0, eps, -eps)


def _loaded(module: str, *names: str) -> tuple[type, ...]:
    """Classes of ``module`` if it is already imported (a network using them imported it):
    importing zennit or torchvision just to look would cost seconds."""
    mod = sys.modules.get(module)
    return tuple(getattr(mod, n) for n in names if hasattr(mod, n)) if mod is not None else ()


def _sum_types() -> tuple[type, ...]:
    from kmtools.models.zoo import Sum as ZooSum

    return (ZooSum, *_loaded("zennit.layer", "Sum"))


def _resnet_blocks() -> tuple[type, ...]:
    return _loaded("torchvision.models.resnet", "BasicBlock", "Bottleneck")


def _leaves(module: nn.Module) -> Iterator[nn.Module]:
    """zennit's ``collect_leaves``: leaves in registration order (depth first)."""
    leaf = True
    for child in module.children():
        leaf = False
        yield from _leaves(child)
    if leaf:
        yield module


class _Tracer(fx.Tracer):
    """Every module without children is a leaf (zennit hooks exactly those)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return next(m.children(), None) is None


def _merge_batchnorm(net: nn.Module) -> set[int]:
    """Merge every BatchNorm that follows a conv/linear leaf into it, as zennit does.

    Returns the ids of the merged BatchNorms (they become the identity). The merged layer
    keeps zennit's residual 1/√(1 + eps) (see the module docstring).
    """
    merged: set[int] = set()
    last: nn.Module | None = None
    for leaf in _leaves(net):
        if isinstance(last, _ZEN_LINEAR) and isinstance(leaf, _BN) and leaf.track_running_stats:
            lin, bn = last, leaf
            assert bn.running_var is not None and bn.running_mean is not None
            with torch.no_grad():
                w = lin.weight
                scale = (bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)) / (
                    (bn.running_var + bn.eps) ** 0.5)
                index = (slice(None), *((None,) * (w.ndim - 1)))
                bias = lin.bias if lin.bias is not None else torch.zeros(1, dtype=w.dtype, device=w.device)
                beta = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
                new_w = w * scale[index]
                new_b = (bias - bn.running_mean) * scale + beta
                resid = 1.0 / (1.0 + bn.eps) ** 0.5  # zennit's identity BatchNorm still divides by √(1 + eps)
                lin.weight = nn.Parameter(new_w * resid, requires_grad=False)
                lin.bias = nn.Parameter(new_b * resid, requires_grad=False)
            merged.add(id(bn))
        last = leaf
    return merged


def _first_layer(net: nn.Module) -> nn.Module | None:
    """The first conv/linear in ``named_modules`` order (zennit's first-layer rule goes there)."""
    conv_types = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    for _, m in net.named_modules():
        if isinstance(m, (nn.Linear, *conv_types)):
            return m
    return None


@dataclass
class _Step:
    name: str
    kind: str  # conv, linear, pass, ident, sum, add, avg, grad, input
    node: fx.Node
    module: nn.Module | None = None
    rule: str = ""  # conv/linear: gamma, epsilon, zbox
    extra: dict[str, Any] = field(default_factory=dict)


def _target_node(graph: fx.Graph, layer: str | None) -> fx.Node:
    nodes = list(graph.nodes)
    if layer is None:
        out = next(n for n in nodes if n.op == "output")
        arg = out.args[0]
        if not isinstance(arg, fx.Node):
            raise ConfigError("the backbone must return one tensor")
        return arg
    for n in nodes:  # a leaf module: its first call (zennit's forward hook stops there)
        if n.op == "call_module" and n.target == layer:
            return n
    inside = [n for n in nodes if layer in n.meta.get("nn_module_stack", {})]
    if not inside:
        raise ConfigError(f"layer {layer!r} computes nothing in the traced network")
    return inside[-1]


def _classify(net: nn.Module, node: fx.Node, merged: set[int], first: nn.Module | None, first_rule: str,
              sums: tuple[type, ...], blocks: tuple[type, ...]) -> _Step:
    """The rule of one traced node, or ConfigError naming why the fast engine cannot run it."""
    if node.op == "placeholder":
        return _Step(node.name, "input", node)
    if node.op == "get_attr":
        raise ConfigError(f"{node.target}: parameters used outside a module")
    if node.op == "call_module":
        m = net.get_submodule(str(node.target))
        name = str(node.target)
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            kind = "conv" if isinstance(m, nn.Conv2d) else "linear"
            rule = "gamma" if kind == "conv" else "epsilon"
            if m is first and first_rule != "gamma":
                rule = first_rule
            if rule not in ("gamma", "epsilon", "zbox"):
                raise ConfigError(f"{name}: first-layer rule {rule!r} is not in the fast engine")
            if rule == "zbox" and kind == "linear":
                raise ConfigError(f"{name}: the z^B rule on a linear first layer is not in the fast engine")
            if kind == "conv" and m.padding_mode != "zeros":
                raise ConfigError(f"{name}: padding mode {m.padding_mode!r}")
            return _Step(node.name, kind, node, m, rule)
        if isinstance(m, _BN):
            return _Step(node.name, "ident" if id(m) in merged else "pass", node, m)
        if isinstance(m, _PASS):
            return _Step(node.name, "pass", node, m)
        if isinstance(m, _IDENT):
            return _Step(node.name, "ident", node, m)
        if sums and isinstance(m, sums):
            return _Step(node.name, "sum", node, m)
        if isinstance(m, _AVG):
            return _Step(node.name, "avg", node, m)
        if isinstance(m, nn.MaxPool2d):
            return _Step(node.name, "maxpool", node, m)
        if isinstance(m, nn.Flatten):
            return _Step(node.name, "reshape", node, m)
        raise ConfigError(f"{name}: {type(m).__name__} is not a layer type of the fast engine")
    if node.op == "call_function":
        if node.target in (operator.add, operator.iadd, torch.add):
            stack = node.meta.get("nn_module_stack", {})
            owner = list(stack.values())[-1] if stack else None
            cls = owner[1] if isinstance(owner, tuple) else owner
            if blocks and isinstance(cls, type) and issubclass(cls, blocks) and len(node.args) == 2:
                return _Step(node.name, "add", node)  # zennit's ResNetCanonizer: a Sum with the Norm rule
            raise ConfigError(f"{node.name}: a tensor sum outside a Sum module or torchvision ResNet block")
        if node.target is torch.stack:
            return _Step(node.name, "stack", node)
        if node.target in _RESHAPE_FUNCS:
            return _Step(node.name, "reshape", node)
        if node.target in _GRAD_FUNCS:
            return _Step(node.name, "grad", node)
        raise ConfigError(f"{node.name}: function {getattr(node.target, '__name__', node.target)!r}")
    if node.op == "call_method":
        if node.target in _RESHAPE_METHODS:
            return _Step(node.name, "reshape", node)
        if node.target == "size":
            return _Step(node.name, "meta", node)
        raise ConfigError(f"{node.name}: tensor method {node.target!r}")
    raise ConfigError(f"{node.name}: fx op {node.op!r}")  # pragma: no cover


def _plan(backbone: nn.Module, layer: str | None, first_rule: str, canonize: bool
          ) -> tuple[nn.Module, list[_Step], str]:
    net = copy.deepcopy(backbone).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    merged = _merge_batchnorm(net) if canonize else set()
    first = _first_layer(net)
    try:
        graph = _Tracer().trace(net)
    except Exception as exc:  # any tracing failure means "not supported"
        raise ConfigError(f"the network cannot be traced by torch.fx ({type(exc).__name__}: {exc})") from exc
    target = _target_node(graph, layer)
    keep: set[fx.Node] = set()
    todo = [target]
    while todo:
        n = todo.pop()
        if n in keep:
            continue
        keep.add(n)
        todo.extend(n.all_input_nodes)
    sums, blocks = _sum_types(), _resnet_blocks()
    steps = [_classify(net, n, merged, first, first_rule, sums, blocks) for n in graph.nodes if n in keep]
    nonneg: set[str] = set()  # outputs ≥ 0 by construction: ReLUs, and pooling/reshaping/sums of them
    for st in steps:
        ins = [n.name for n in st.node.all_input_nodes]
        if (st.kind == "pass" and isinstance(st.module, nn.ReLU)) or (
                st.kind in ("ident", "reshape", "maxpool", "avg", "sum", "add", "stack") and ins
                and all(i in nonneg for i in ins)):
            nonneg.add(st.name)
        st.extra["nonneg_input"] = bool(ins) and all(i in nonneg for i in ins)
    if sum(s.kind == "input" for s in steps) != 1:
        raise ConfigError("the backbone must take exactly one input")
    _mark_relu_gated(steps, target.name)
    return net, steps, target.name


_MULTIPLY = ("conv", "linear", "sum", "add", "avg")  # rules whose relevance is (input value) ⊙ (finite)
_ROUTE = ("ident", "reshape", "maxpool", "grad", "stack")  # relevance moved with the values, unchanged


def _mark_relu_gated(steps: list[_Step], target: str) -> None:
    """Mark the conv/linear layers whose output relevance is zero wherever their output z ≤ 0.

    ZZ(n): the relevance at n is zero wherever n's value is 0. It holds when n is not the
    explained layer and every consumer either multiplies its relevance by its input value
    (``_MULTIPLY``: the γ, ε, z^B and Norm rules) or moves relevance with the values
    (``_ROUTE``, a ReLU) and has ZZ itself. A layer whose output reaches relevance only through
    ReLUs with ZZ (possibly after merged BatchNorms) gets relevance 0 wherever z ≤ 0, since
    relu(z) = 0 there: the γ-rule's s₋ term vanishes without looking (``relu_gated``).
    """
    users: dict[str, list[_Step]] = {st.name: [] for st in steps}
    for st in steps:
        for n in st.node.all_input_nodes:
            if n.name in users:
                users[n.name].append(st)
    zz: dict[str, bool] = {}
    gated: dict[str, bool] = {}

    def is_relu(st: _Step) -> bool:
        return st.kind == "pass" and isinstance(st.module, nn.ReLU)

    for st in reversed(steps):  # consumers come later in the graph: decide them first
        if st.name == target:
            zz[st.name] = gated[st.name] = False
            continue
        us = [u for u in users[st.name] if u.kind != "meta"]
        zz[st.name] = all(u.kind in _MULTIPLY or ((u.kind in _ROUTE or is_relu(u)) and zz[u.name]) for u in us)
        gated[st.name] = bool(us) and all((is_relu(u) and zz[u.name]) or (u.kind == "ident" and gated[u.name])
                                          for u in us)
        if st.kind in ("conv", "linear"):
            st.extra["relu_gated"] = gated[st.name]


def unsupported(backbone: nn.Module, layer: str | None = None, first_rule: str = "zbox",
                canonize: bool = True) -> str | None:
    """Why :class:`FastLRP` cannot explain ``backbone`` at ``layer`` (None: it can)."""
    try:
        _plan(backbone, layer, first_rule, canonize)
    except ConfigError as exc:
        return str(exc)
    return None


def _pair(v: Any) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(t) for t in v]


def _avg_grad(m: nn.Module | None, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """∂pool/∂xᵀ g for an average pooling (aten's backward kernels, no autograd graph)."""
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return torch.ops.aten._adaptive_avg_pool2d_backward(g, x)  # type: ignore[no-any-return]
    assert isinstance(m, nn.AvgPool2d)
    return torch.ops.aten.avg_pool2d_backward(  # type: ignore[no-any-return]
        g, x, _pair(m.kernel_size), _pair(m.stride or m.kernel_size), _pair(m.padding), m.ceil_mode,
        m.count_include_pad, m.divisor_override)


def _conv_t(step: _Step, grad: torch.Tensor, weight: torch.Tensor, in_shape: torch.Size) -> torch.Tensor:
    """Wᵀ⋆grad: the transposed product of the layer with ``weight`` (the input gradient)."""
    m = step.module
    if step.kind == "linear":
        return grad @ weight
    assert isinstance(m, nn.Conv2d)
    return conv2d_input(in_shape, weight, grad, m.stride, m.padding, m.dilation, m.groups)


def _fwd(step: _Step, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    m = step.module
    if step.kind == "linear":
        return F.linear(x, weight, bias)
    assert isinstance(m, nn.Conv2d)
    return F.conv2d(x, weight, bias, m.stride, m.padding, m.dilation, m.groups)


def _grad_forward(st: _Step, env: dict[str, Any]) -> tuple[torch.Tensor, tuple[dict[str, torch.Tensor], Any]]:
    """Run a gradient-rule node with its inputs as fresh autograd leaves: (output, (leaves, graph))."""
    node = st.node
    leaves: dict[str, torch.Tensor] = {}

    def leaf(n: fx.Node) -> torch.Tensor:
        if n.name not in leaves:
            leaves[n.name] = env[n.name].detach().requires_grad_(True)
        return leaves[n.name]

    with torch.enable_grad():
        a2 = fx.node.map_arg(node.args, leaf)
        k2 = fx.node.map_arg(node.kwargs, leaf)
        fn: Callable[..., Any] = node.target  # type: ignore[assignment]
        out = fn(*a2, **k2)
    return out.detach(), (leaves, out)


class FastLRP:
    """The LRP rules of :func:`kmtools.explain.deep.lrp_composite` without zennit's hooks.

    ``forward(z)`` returns the activations at ``layer`` (default the backbone's output) and
    keeps what the backward pass needs; ``relevance(r)`` propagates the relevance ``r`` at
    that layer (same shape as the activations) down to ``z``. Raises :class:`ConfigError`
    at construction when a layer type is not covered (see :func:`unsupported`).
    """

    def __init__(self, backbone: nn.Module, layer: str | None = None, *, gamma: float = 0.25,
                 epsilon: float = 1e-6, first_rule: str = "zbox", low: torch.Tensor | float | None = None,
                 high: torch.Tensor | float | None = None, canonize: bool = True) -> None:
        if first_rule == "zbox" and (low is None or high is None):
            raise ConfigError("the zbox first-layer rule needs the input bounds (low, high)")
        self.net, self.steps, self.target = _plan(backbone, layer, first_rule, canonize)
        self.gamma, self.epsilon = float(gamma), float(epsilon)
        self.low, self.high = low, high
        self._w: dict[str, dict[str, torch.Tensor]] = {}
        self._bounds: dict[tuple[str, tuple[int, ...]], torch.Tensor] = {}
        self._env: dict[str, Any] = {}
        self.stats = {"second_products": 0, "layers": 0}  # how often the s₋ term was needed

    # ------------------------------------------------------------------ weights
    def _weights(self, step: _Step) -> dict[str, torch.Tensor]:
        got = self._w.get(step.name)
        if got is None:
            m = step.module
            assert m is not None
            assert isinstance(m, (nn.Conv2d, nn.Linear))
            w = m.weight.detach()
            b = m.bias.detach() if m.bias is not None else None
            g = self.gamma
            got = {"w": w, "w_pos": w.clamp(min=0), "w_neg": w.clamp(max=0)}
            got["wg_pos"] = w + g * got["w_pos"]
            got["wg_neg"] = w + g * got["w_neg"]
            if b is not None:
                got["b"] = b
                got["bg_pos"] = b + g * b.clamp(min=0)
                got["bg_neg"] = b + g * b.clamp(max=0)
                got["b_pos"], got["b_neg"] = b.clamp(min=0), b.clamp(max=0)
            if step.rule == "zbox":
                got["w_zb"] = torch.cat([w, got["w_pos"], got["w_neg"]], 1 if step.kind == "conv" else 0)
            if step.kind == "conv":
                got["wg_both"] = torch.cat([got["wg_pos"], got["wg_neg"]], 0)
            self._w[step.name] = got
        return got

    # ------------------------------------------------------------------ forward
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Activations at the layer (the network's forward with merged BatchNorm), no graph."""
        env: dict[str, Any] = {}
        with torch.no_grad():
            for st in self.steps:
                node = st.node
                if st.kind == "input":
                    env[st.name] = z.detach()
                    continue
                args: Any = fx.node.map_arg(node.args, lambda n: env[n.name])
                kwargs: Any = fx.node.map_arg(node.kwargs, lambda n: env[n.name])
                if st.kind in ("conv", "linear"):
                    p = self._weights(st)
                    env[st.name] = _fwd(st, args[0], p["w"], p.get("b"))
                elif st.kind == "pass":
                    m = st.module
                    env[st.name] = F.relu(args[0]) if isinstance(m, nn.ReLU) else m(args[0])  # type: ignore[misc]
                elif st.kind == "ident":
                    env[st.name] = args[0]
                elif st.kind == "sum":
                    env[st.name] = args[0].sum(-1)
                elif st.kind == "add":
                    env[st.name] = args[0] + args[1]
                elif st.kind == "maxpool":
                    m = st.module
                    assert isinstance(m, nn.MaxPool2d)
                    env[st.name], env["__idx__" + st.name] = F.max_pool2d(
                        args[0], m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, return_indices=True)
                elif st.kind == "avg":
                    env[st.name] = st.module(args[0])  # type: ignore[misc]
                elif st.kind in ("reshape", "stack", "meta"):
                    if node.op == "call_module":
                        env[st.name] = st.module(*args, **kwargs)  # type: ignore[misc]
                    elif node.op == "call_method":
                        env[st.name] = getattr(args[0], str(node.target))(*args[1:], **kwargs)
                    else:
                        env[st.name] = node.target(*args, **kwargs)  # type: ignore[operator]
                else:  # grad: a small autograd graph, replayed by relevance()
                    env[st.name], env["__graph__" + st.name] = _grad_forward(st, env)
                del args, kwargs
        self._env = env
        return env[self.target]  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ backward
    def relevance(self, r_out: torch.Tensor) -> torch.Tensor:
        """LRP relevance at the input for relevance ``r_out`` at the layer (after :meth:`forward`)."""
        env = self._env
        if not env:
            raise ConfigError("call forward() before relevance()")
        rel: dict[str, torch.Tensor] = {self.target: r_out.reshape(env[self.target].shape).to(env[self.target])}

        def give(node: Any, r: torch.Tensor) -> None:
            if isinstance(node, fx.Node):
                rel[node.name] = rel[node.name] + r if node.name in rel else r

        with torch.no_grad():
            for st in reversed(self.steps):
                r = rel.pop(st.name, None)
                if r is None:
                    continue
                node = st.node
                if st.kind == "input":
                    self._env = {}
                    return r
                ins: Any = node.args
                if st.kind in ("pass", "ident"):
                    give(ins[0], r)
                elif st.kind == "conv" or st.kind == "linear":
                    a = env[ins[0].name]
                    give(ins[0], self._layer(st, a, env[st.name], r))
                elif st.kind == "sum":
                    x = env[ins[0].name]
                    give(ins[0], x * (r / self._norm_den(st, env[st.name])).unsqueeze(-1))
                elif st.kind == "add":
                    s = r / self._norm_den(st, env[st.name])
                    give(ins[0], env[ins[0].name] * s)
                    give(ins[1], env[ins[1].name] * s)
                elif st.kind == "reshape":
                    give(ins[0], r.reshape(env[ins[0].name].shape))
                elif st.kind == "stack":
                    dim: Any = node.kwargs.get("dim", ins[1] if len(ins) > 1 else 0)
                    for inp, part in zip(ins[0], r.unbind(int(dim)), strict=True):
                        give(inp, part)
                elif st.kind == "maxpool":  # the gradient: to the winner of each window
                    m = st.module
                    assert isinstance(m, nn.MaxPool2d)
                    x = env[ins[0].name]
                    give(ins[0], torch.ops.aten.max_pool2d_with_indices_backward(
                        r, x, _pair(m.kernel_size), _pair(m.stride or m.kernel_size), _pair(m.padding),
                        _pair(m.dilation), m.ceil_mode, env["__idx__" + st.name]))
                elif st.kind == "avg":  # Norm: x ⊙ ∂pool/∂x (R / pool(x))
                    x = env[ins[0].name]
                    give(ins[0], x * _avg_grad(st.module, x, r / self._norm_den(st, env[st.name])))
                elif st.kind == "grad":
                    leaves, out = env["__graph__" + st.name]
                    names = list(leaves)
                    grads = torch.autograd.grad(out, [leaves[k] for k in names], r, allow_unused=True)
                    rel_in = {k: g for k, g in zip(names, grads, strict=True) if g is not None}
                    for inp in node.all_input_nodes:
                        if inp.name in rel_in:
                            give(inp, rel_in.pop(inp.name))
        raise ConfigError("no relevance reached the input")  # pragma: no cover

    @staticmethod
    def _norm_den(st: _Step, out: torch.Tensor) -> torch.Tensor:
        """The Norm rule's stabilised denominator; a sum or mean of inputs ≥ 0 is ≥ 0 (+ε, one pass)."""
        return out + _STAB if st.extra.get("nonneg_input") else _stab(out)

    def _layer(self, st: _Step, a: torch.Tensor, z: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        p = self._weights(st)
        self.stats["layers"] += 1
        if st.rule == "epsilon":  # LRP-ε: a ⊙ Wᵀ(R / (z ± ε))
            return a * _conv_t(st, r / _stab(z, self.epsilon), p["w"], a.shape)
        if st.rule == "zbox":
            return self._zbox(st, a, z, r, p)
        g = self.gamma
        if not st.extra.get("nonneg_input") and bool((a < 0).any()):
            return self._gamma_general(st, a, z, r, p)
        # a ≥ 0: z₊ = W_γ⁺⋆a + b_γ⁺ (one modified forward), z₋ = (2 + γ) z − z₊. Where z > 0,
        # z₊ ≥ z > 0 and the stabiliser is +ε; where z < 0, z₋ ≤ z < 0 and it is −ε.
        zp = _fwd(st, a, p["wg_pos"], p.get("bg_pos"))
        if st.extra.get("relu_gated"):  # r = 0 wherever z ≤ 0 (see _mark_relu_gated): no mask, no s₋
            # where z > 0, zp ≥ z > 0 and the clamp changes nothing; elsewhere it keeps 0 / (·) = 0
            sp = r / zp.add_(_STAB).clamp_(min=_STAB)
            return _conv_t(st, sp, p["wg_pos"], a.shape).mul_(a)
        sp = torch.where(z > 0, r / (zp + _STAB), 0.0)
        need_neg = bool(r.masked_fill(z >= 0, 0.0).any())
        if not need_neg:
            return _conv_t(st, sp, p["wg_pos"], a.shape).mul_(a)
        self.stats["second_products"] += 1
        zn = (2.0 + g) * z - zp
        sn = torch.where(z < 0, r / (zn - _STAB), 0.0)
        if st.kind == "conv":  # one call: [s₊, s₋] against [W_γ⁺; W_γ⁻]
            return a * _conv_t(st, torch.cat([sp, sn], 1), p["wg_both"], a.shape)
        return a * (sp @ p["wg_pos"] + sn @ p["wg_neg"])

    def _gamma_general(self, st: _Step, a: torch.Tensor, z: torch.Tensor, r: torch.Tensor,
                       p: dict[str, torch.Tensor]) -> torch.Tensor:
        """The four-term generalised γ-rule (inputs of both signs, e.g. a γ first layer)."""
        ap, an = a.clamp(min=0), a.clamp(max=0)
        zp = _fwd(st, ap, p["wg_pos"], p.get("bg_pos")) + _fwd(st, an, p["wg_neg"], None)
        zn = _fwd(st, ap, p["wg_neg"], p.get("bg_neg")) + _fwd(st, an, p["wg_pos"], None)
        zero = torch.zeros((), dtype=r.dtype, device=r.device)
        sp = torch.where(z > 0, r / _stab(zp), zero)
        sn = torch.where(z < 0, r / _stab(zn), zero)
        return (ap * (_conv_t(st, sp, p["wg_pos"], a.shape) + _conv_t(st, sn, p["wg_neg"], a.shape))
                + an * (_conv_t(st, sp, p["wg_neg"], a.shape) + _conv_t(st, sn, p["wg_pos"], a.shape)))

    def _zbox(self, st: _Step, x: torch.Tensor, z: torch.Tensor, r: torch.Tensor,
              p: dict[str, torch.Tensor]) -> torch.Tensor:
        """z^B: x⊙Wᵀs − L⊙W⁺ᵀs − H⊙W⁻ᵀs with s = R / (z − L⋆W⁺ − H⋆W⁻), biases cancelling."""
        key = (st.name, tuple(x.shape[1:]))
        lo_hi = self._bounds.get(key)
        shape = (1, *x.shape[1:])
        low = torch.as_tensor(self.low, dtype=x.dtype, device=x.device).expand(shape)
        high = torch.as_tensor(self.high, dtype=x.dtype, device=x.device).expand(shape)
        if lo_hi is None:
            lo_hi = (_fwd(st, low.contiguous(), p["w_pos"], p.get("b_pos"))
                     + _fwd(st, high.contiguous(), p["w_neg"], p.get("b_neg")))
            self._bounds[key] = lo_hi
        s = r / _stab(z - lo_hi)
        c = x.shape[1]
        big = _conv_t(st, s, p["w_zb"], torch.Size((x.shape[0], 3 * c, *x.shape[2:])))
        return x * big[:, :c] - low * big[:, c : 2 * c] - high * big[:, 2 * c :]
