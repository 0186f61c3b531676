"""clo-infer's Triton client: addresses, and the one-line hint where tritonclient is missing."""

from __future__ import annotations

import sys

import pytest

from clo_export.backends.select import load_runners
from clo_export.backends.triton import is_triton_url, parse_url
from clo_export.errors import CloExportError


@pytest.mark.parametrize(
    "url, expected",
    [
        ("triton://cams.local/demo", ("cams.local:8001", "demo")),
        ("triton://127.0.0.1:9001/demo_model/", ("127.0.0.1:9001", "demo_model")),
        ("triton://[::1]:8001/m.v2", ("[::1]:8001", "m.v2")),
    ],
)
def test_parse_url(url, expected):
    assert is_triton_url(url)
    assert parse_url(url) == expected


@pytest.mark.parametrize("url", ["triton://host", "triton://host:port/x", "triton:///x", "triton://h/a/b"])
def test_bad_url_says_the_form(url):
    with pytest.raises(CloExportError, match="triton://host:port/name"):
        parse_url(url)


def test_missing_tritonclient_gives_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)  # import raises ImportError
    with pytest.raises(CloExportError, match=r'pip install "tritonclient\[grpc\]"'):
        load_runners("triton://127.0.0.1:1/demo")


def test_local_hardware_options_are_refused():
    with pytest.raises(CloExportError, match="drop them"):
        load_runners("triton://127.0.0.1:1/demo", device="cuda")
