"""The backend registry (meranet_fast.ops.backends): one vocabulary, availability rule, ``"auto"`` order and
environment override for every fused op; and the import graph of meranet_fast (ops/ reads as a stack)."""
from __future__ import annotations

import ast
import os
import re

import pytest
import torch

import meranet_fast
from meranet_fast import _extension
from meranet_fast.ops import backends, channel_attention, ra_tail, st_attention
from meranet_fast.ops.backends import ENV_BACKEND, available_backends, backend_status, resolve_backend

OPS = {"st_attention": st_attention, "channel_attention": channel_attention, "ra_tail": ra_tail}


def _args(op: str) -> dict:
    y = torch.randn(2, 8, 3, 4, 5)
    if op == "st_attention":
        return dict(x=y, weight=torch.randn(1, 2, 3, 3, 3), bias=torch.randn(1))
    args = dict(y=y, w_reduce=torch.randn(2, 8), b_reduce=torch.randn(2), w_expand=torch.randn(8, 2),
                b_expand=torch.randn(8))
    if op == "ra_tail":
        args.update(shortcut=torch.randn_like(y), st_weight=torch.randn(1, 2, 3, 3, 3), st_bias=None)
    return args


@pytest.fixture(autouse=True)
def _no_override(monkeypatch):
    monkeypatch.delenv(ENV_BACKEND, raising=False)
    monkeypatch.delenv("MERANET_ST_ATTENTION_BACKEND", raising=False)


@pytest.mark.parametrize("op", list(OPS))
def test_auto_on_cpu_is_cpp_with_the_extension(op):
    assert resolve_backend("auto", "cpu", torch.float32, op) == ("cpp" if _extension.is_loaded() else "eager")
    assert "eager" in available_backends("cpu", op)
    assert ("cpp" in available_backends("cpu", op)) == _extension.is_loaded()


@pytest.mark.parametrize("op", list(OPS))
def test_the_environment_override_reaches_every_op(op, monkeypatch):
    monkeypatch.setenv(ENV_BACKEND, "eager")
    assert resolve_backend("auto", "cpu", torch.float32, op) == "eager"
    calls = []
    reference = getattr(meranet_fast.ops, f"{op}_reference")
    module = __import__(f"meranet_fast.ops.{op}", fromlist=["_"])
    monkeypatch.setattr(module, f"{op}_reference", lambda *a: calls.append(op) or reference(*a))
    OPS[op](**_args(op))
    assert calls == [op]
    monkeypatch.setenv(ENV_BACKEND, "auto")  # the same as unset
    assert resolve_backend("auto", "cpu", torch.float32, op) == ("cpp" if _extension.is_loaded() else "eager")
    # An explicit argument wins over the environment.
    monkeypatch.setenv(ENV_BACKEND, "cuda")
    assert resolve_backend("eager", "cpu", torch.float32, op) == "eager"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised on a machine without a GPU")
def test_an_override_that_cannot_run_raises_the_same_error_for_every_op(monkeypatch):
    monkeypatch.setenv(ENV_BACKEND, "cuda")
    messages = {}
    for op, fn in OPS.items():
        with pytest.raises(RuntimeError) as info:
            fn(**_args(op))
        messages[op] = str(info.value)
    for op, message in messages.items():
        assert message.startswith(f"{op}: backend 'cuda' (asked for by ${ENV_BACKEND}) is not available: "), message
    tails = {message.split(": ", 1)[1] for message in messages.values()}
    assert len(tails) == 1, messages  # word for word the same after the op's name
    assert "needs CUDA tensors but the tensors are on cpu" in tails.pop()
    # The same reason as the argument gives (without naming the environment).
    monkeypatch.delenv(ENV_BACKEND)
    with pytest.raises(RuntimeError, match=r"^ra_tail: backend 'cuda' is not available: backend 'cuda' needs CUDA"):
        ra_tail(**_args("ra_tail"), backend="cuda")


def test_bad_environment_values_are_named(monkeypatch):
    monkeypatch.setenv(ENV_BACKEND, "fast")
    with pytest.raises(ValueError, match=r"\$MERANET_BACKEND must be one of \('auto', 'eager', 'cpp', 'cuda', "
                                         r"'triton'\), got 'fast'"):
        channel_attention(**_args("channel_attention"))
    monkeypatch.delenv(ENV_BACKEND)
    monkeypatch.setenv("MERANET_ST_ATTENTION_BACKEND", "eager")
    with pytest.raises(ValueError, match=r"\$MERANET_ST_ATTENTION_BACKEND was renamed \$MERANET_BACKEND"):
        st_attention(**_args("st_attention"))


def test_unknown_ops_and_backends_are_named():
    with pytest.raises(ValueError, match=r"op must be one of \('st_attention', 'channel_attention', 'ra_tail'\)"):
        backend_status("cpp", "cpu", "conv")
    with pytest.raises(ValueError, match=r"ra_tail: backend must be one of .*got 'auto'"):
        backend_status("auto", "cpu", "ra_tail")  # a concrete backend only
    with pytest.raises(ValueError, match=r"st_attention: backend must be one of .*got 'fused'"):
        resolve_backend("fused", "cpu")


def test_the_composed_ops_need_the_extension_for_every_fused_backend(monkeypatch):
    monkeypatch.setattr(backends, "_CPP_LOADED", False)
    monkeypatch.setattr(backends, "_triton_status", lambda device: (True, "assumed for the test"))
    assert backend_status("triton", "cpu", "st_attention") == (True, "assumed for the test")
    for op in ("channel_attention", "ra_tail"):
        ok, why = backend_status("triton", "cpu", op)
        assert not ok and f"{op} is composed in meranet_fast._C, which is not available" in why
        assert resolve_backend("auto", "cpu", torch.float32, op) == "eager"
    ok, why = backend_status("cpp", "cpu", "st_attention")
    assert not ok and "meranet_fast._C is not available" in why


def test_auto_follows_the_order_per_device(monkeypatch):
    monkeypatch.setattr(backends, "backend_status", lambda backend, device, op: (backend != "triton", "assumed"))
    assert backends.auto_backend("cuda", torch.float32, "ra_tail") == "cuda"  # triton "cannot run": next in order
    assert backends.auto_backend("cpu", torch.float32, "ra_tail") == "cpp"
    assert backends.auto_backend("xla", torch.float32, "ra_tail") == "eager"  # no order for the device


# --------------------------------------------------------------------------------------------------
# The import graph of meranet_fast: no circles, module-level or inside functions
# --------------------------------------------------------------------------------------------------
PACKAGE_DIR = os.path.dirname(meranet_fast.__file__)


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, os.path.dirname(PACKAGE_DIR))[: -len(".py")].replace(os.sep, ".")
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def _import_graph() -> dict[str, set[str]]:
    paths = {}
    for folder, _, files in os.walk(PACKAGE_DIR):
        for name in files:
            if name.endswith(".py"):
                paths[_module_name(os.path.join(folder, name))] = os.path.join(folder, name)
    graph = {}
    for module, path in paths.items():
        with open(path) as f:
            tree = ast.parse(f.read())
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    # `from pkg import sub` imports the submodule; `from pkg import name` the package.
                    # meranet_fast._C is the compiled extension: it imports nothing of ours.
                    targets.add(sub if sub in paths or sub == "meranet_fast._C" else node.module)
        graph[module] = {t for t in targets if t in paths and t != module}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(module, path):
        state[module] = "open"
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                found.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path)
        path.pop()
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    return found


def test_the_import_graph_has_no_circles():
    graph = _import_graph()
    assert len(graph) > 40 and "meranet_fast.ops.backends" in graph["meranet_fast.ops.st_attention"]
    assert _cycles(graph) == []


def test_ops_reads_as_a_stack():
    """Helpers at the bottom import no backend or public op; backends import no public op."""
    graph = _import_graph()
    bottom = {"_checks", "_layout", "_fakes", "_autograd", "reference"}
    public = {"st_attention", "channel_attention", "ra_tail"}
    for module, targets in graph.items():
        match = re.fullmatch(r"meranet_fast\.ops\.(.+)", module)
        if not match:
            continue
        name = match.group(1)
        ops_targets = {t.removeprefix("meranet_fast.ops.") for t in targets if t.startswith("meranet_fast.ops.")}
        if name in bottom:
            assert ops_targets <= bottom, (module, ops_targets)
        elif name.startswith("triton") or name in ("_cpp", "backends"):
            assert not ops_targets & public, (module, ops_targets)
    assert _cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]  # the check itself finds a circle
