"""Registration of the Triton ops on every supported torch (docs/design.md §4): the annotations of each op
function give the declared schema (torch 2.11 infers the schema from them and ignores ``schema=``), and a
Triton kernel module that fails to register makes the backend unavailable with the reason, once, without
breaking the package's import."""
from __future__ import annotations

import warnings

import pytest
import torch

from meranet_fast.ops import triton as triton_backend
from meranet_fast.ops.backends import backend_status

triton_lib = pytest.importorskip("triton", reason="triton is not installed: no Triton op to register")

from meranet_fast.ops.triton._register import triton_op  # noqa: E402

OPS = {
    "st_attention": ("st_attention_fwd_triton", "st_attention_bwd_triton"),
    "channel_attention": ("ca_pool_triton", "ca_scale_triton", "ca_scale_grad_triton", "ca_input_grad_triton"),
    "ra_tail": ("ra_pool_triton", "ra_attend_triton", "ra_attend_bwd_triton"),
}


def test_every_triton_op_registers_here():
    assert triton_backend.load_error() is None
    assert tuple(OPS) == triton_backend.KERNEL_MODULES
    for module, names in OPS.items():
        for name in names:
            schema = getattr(torch.ops.meranet, name).default._schema
            assert schema.name == f"meranet::{name}", module
            assert all(str(a.type) in ("Tensor", "Optional[Tensor]") for a in schema.arguments), schema


def test_annotations_must_match_the_declared_schema():
    def wrong(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:  # bias should be Optional
        return x

    with pytest.raises(TypeError, match=r"annotations of wrong give the schema .*Tensor bias.* does not match "
                                        r"the declared schema .*Tensor\? bias"):
        triton_op("meranet_registration_test::wrong", "(Tensor x, Tensor? bias) -> Tensor")(wrong)

    def unannotated(x, bias):
        return x

    with pytest.raises(ValueError, match="type annotation"):
        triton_op("meranet_registration_test::unannotated", "(Tensor x, Tensor? bias) -> Tensor")(unannotated)


def test_matching_annotations_register_with_the_declared_names():
    def scale(x: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        return x * 2, x.clone()

    op = triton_op("meranet_registration_test::scale", "(Tensor x, Tensor? bias) -> (Tensor out, Tensor copy)")(scale)
    out, copy = op(torch.ones(3), None)
    assert out.tolist() == [2.0, 2.0, 2.0] and copy.tolist() == [1.0, 1.0, 1.0]


def test_a_module_that_fails_to_register_says_why_once(monkeypatch):
    """The first failure is kept, warned about once, and given by backend_status()."""
    real_import = triton_backend.importlib.import_module

    def failing_import(name, *args):
        if name.endswith(".ra_tail"):
            raise ValueError("infer_schema(func): Parameter y must have a type annotation.")
        return real_import(name, *args)

    monkeypatch.setattr(triton_backend, "_ERROR", None)
    monkeypatch.setattr(triton_backend, "_LOADED", {"st_attention", "channel_attention"})
    monkeypatch.setattr(triton_backend.importlib, "import_module", failing_import)
    with pytest.warns(RuntimeWarning, match="Triton backend is unavailable: .*ra_tail failed to register: ValueError"):
        error = triton_backend.load_error()
    assert "ra_tail failed to register: ValueError: infer_schema" in error
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        ok, why = backend_status("triton", torch.device("cpu"))
    assert not ok and error in why


def test_a_missing_triton_is_reported_without_a_warning(monkeypatch):
    def no_triton(name, *args):
        raise ModuleNotFoundError("No module named 'triton'", name="triton")

    monkeypatch.setattr(triton_backend, "_ERROR", None)
    monkeypatch.setattr(triton_backend, "_LOADED", set())
    monkeypatch.setattr(triton_backend.importlib, "import_module", no_triton)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert triton_backend.load_error() == "triton cannot be imported (No module named 'triton')"
    ok, why = backend_status("triton", torch.device("cpu"))
    assert not ok and "triton cannot be imported" in why
