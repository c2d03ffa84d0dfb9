"""`fetch-weights --backbone` against a loopback HTTP server standing in for download.pytorch.org."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import threading
from typing import ClassVar

import pytest

from berg_scale.cli import main
from berg_scale.testing.s3_server import free_port

PAYLOAD = os.urandom(3 * 1024 * 1024 + 17)
PREFIX = hashlib.sha256(PAYLOAD).hexdigest()[:8]


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    requests: ClassVar[list[str]] = []

    def do_GET(self):
        type(self).requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):  # keep pytest's output clean
        pass


@pytest.fixture
def checkpoint_server(tmp_path, monkeypatch):
    """Serves `vit_b_32-<real prefix>.pth` and `vit_b_32-00000000.pth` (same bytes, wrong name)."""
    served = tmp_path / "served"
    served.mkdir()
    (served / f"vit_b_32-{PREFIX}.pth").write_bytes(PAYLOAD)
    (served / "vit_b_32-00000000.pth").write_bytes(PAYLOAD)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    _CountingHandler.requests = []
    handler = functools.partial(_CountingHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_backbone_is_downloaded_checked_and_then_kept(checkpoint_server, tmp_path, capsys):
    target = tmp_path / "hub" / "vit_b_32.pth"
    args = ["fetch-weights", "--backbone", "--no-progress", "--backbone-url",
            f"{checkpoint_server}/vit_b_32-{PREFIX}.pth", "--backbone-to", str(target)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert target.read_bytes() == PAYLOAD
    assert "CC BY-NC 4.0" in out and "downloaded" in out and PREFIX in out
    assert len(_CountingHandler.requests) == 1

    assert main(args) == 0  # present and matching: no second request
    assert "present" in capsys.readouterr().out
    assert len(_CountingHandler.requests) == 1

    target.write_bytes(b"damaged")  # a file that fails the check is replaced
    assert main(args) == 0
    assert "replaced" in capsys.readouterr().out and target.read_bytes() == PAYLOAD


def test_a_file_that_fails_the_hash_check_is_not_kept(checkpoint_server, tmp_path, capsys):
    target = tmp_path / "out" / "vit.pth"
    code = main(["fetch-weights", "--backbone", "--no-progress", "--backbone-url",
                 f"{checkpoint_server}/vit_b_32-00000000.pth", "--backbone-to", str(target)])
    assert code == 2
    err = capsys.readouterr().err
    assert "not the expected checkpoint" in err and "00000000" in err
    assert os.listdir(tmp_path / "out") == []  # neither the file nor a temporary one


def test_no_network_is_a_clear_error_with_the_manual_steps(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    closed = f"http://127.0.0.1:{free_port()}/vit_b_32-{PREFIX}.pth"
    target = tmp_path / "vit.pth"
    assert main(["fetch-weights", "--backbone", "--no-progress", "--backbone-url", closed,
                 "--backbone-to", str(target)]) == 1
    err = capsys.readouterr().err
    assert "cannot download the backbone" in err and "curl -L -o" in err
    assert not target.exists()


def test_a_url_without_a_hash_in_its_name_is_refused(tmp_path, capsys):
    assert main(["fetch-weights", "--backbone", "--dry-run", "--backbone-url",
                 "http://127.0.0.1:9/vit.pth", "--backbone-to", str(tmp_path / "v.pth")]) == 2
    assert "carries no sha256 prefix" in capsys.readouterr().err


def test_manual_steps_name_the_path_and_url_asked_for(tmp_path):
    from berg_scale.commands.fetch_weights import backbone_instructions

    target = tmp_path / "weights" / "vit.pth"
    text = backbone_instructions(str(target), "http://127.0.0.1:9/mirror/vit_b_32-d86f8d99.pth")
    assert f"expected at: {target}  (missing)" in text
    assert "curl -L -o vit_b_32-d86f8d99.pth http://127.0.0.1:9/mirror/vit_b_32-d86f8d99.pth" in text
