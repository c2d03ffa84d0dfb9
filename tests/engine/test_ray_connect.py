"""Joining a Ray cluster with address="auto" only when the recorded one answers: a file
left by a node that is gone would make ray.init wait on it for good."""

from __future__ import annotations

import socket

from berg_scale.engine import ray_connect


def _record(tmp_path, monkeypatch, address: str | None) -> None:
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    if address is not None:
        (tmp_path / "ray").mkdir()
        (tmp_path / "ray" / "ray_current_cluster").write_text(address + "\n")


def test_no_recorded_cluster(tmp_path, monkeypatch):
    _record(tmp_path, monkeypatch, None)
    assert ray_connect._recorded_cluster_answers() is False


def test_a_recorded_cluster_that_is_gone_is_named_and_skipped(tmp_path, monkeypatch, capsys):
    with socket.socket() as probe:  # a port that was free a moment ago: nobody listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    _record(tmp_path, monkeypatch, f"127.0.0.1:{port}")
    assert ray_connect._recorded_cluster_answers(timeout_s=1.0) is False
    assert "does not answer" in capsys.readouterr().err


def test_a_recorded_cluster_that_answers(tmp_path, monkeypatch):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        _record(tmp_path, monkeypatch, f"127.0.0.1:{server.getsockname()[1]}")
        assert ray_connect._recorded_cluster_answers(timeout_s=1.0) is True


def test_joined_cluster_follows_ray_address_when_ray_was_started_elsewhere(monkeypatch):
    monkeypatch.setattr(ray_connect, "_joined_cluster", None)
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    assert ray_connect.joined_cluster()
    monkeypatch.setenv("RAY_ADDRESS", "local")
    assert not ray_connect.joined_cluster()
