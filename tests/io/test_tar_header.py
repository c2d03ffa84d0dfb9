"""FastTarInfo parses every header exactly as tarfile does (or lets tarfile do it)."""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile

import numpy as np
import pytest

from berg_scale.io.tar_header import FastTarInfo


def _outcome(cls, buf: bytes):
    try:
        info = cls.frombuf(buf, "utf-8", "surrogateescape")
    except Exception as exc:  # noqa: BLE001 - the type is what is compared
        return type(exc)
    return {slot: getattr(info, slot, None) for slot in tarfile.TarInfo.__slots__}


def _headers(archive: bytes) -> list[bytes]:
    """Every 512-byte block that tarfile reads as a header (data blocks too, to be safe)."""
    return [archive[i : i + 512] for i in range(0, len(archive) - 511, 512)]


def _python_tar(fmt: int) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        def add(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, **extra) -> None:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            info.mtime = 1_700_000_000
            for key, value in extra.items():
                setattr(info, key, value)
            tar.addfile(info, io.BytesIO(data) if data else None)

        add("000001.jpg", b"\xff\xd8 jpeg bytes")
        add("000001.json", b'{"a": 1}', uname="someone", gname="staff", uid=1000, gid=1000, mode=0o640)
        add("folder", kind=tarfile.DIRTYPE)
        add("deep/" * 25 + "000002.jpg", b"long name")  # ustar prefix, GNU long name or pax path
        add("000003.jpg", kind=tarfile.LNKTYPE, linkname="000001.jpg")
        add("000004.jpg", kind=tarfile.SYMTYPE, linkname="000001.jpg")
        add("ünïcode-名前.jpg", b"unicode")
        if fmt != tarfile.USTAR_FORMAT:
            add("big-ids.jpg", b"x", uid=2**24, gid=2**24)  # base-256 (GNU) or pax numbers
    return out.getvalue()


ARCHIVES = {
    "ustar": _python_tar(tarfile.USTAR_FORMAT),
    "gnu": _python_tar(tarfile.GNU_FORMAT),
    "pax": _python_tar(tarfile.PAX_FORMAT),
}


@pytest.fixture(scope="module")
def gnu_tar_archive(tmp_path_factory) -> bytes:
    if shutil.which("tar") is None:
        pytest.skip("GNU tar is not installed")
    archives = []
    for fmt, long_names in (("gnu", True), ("posix", True), ("ustar", False), ("v7", False)):
        folder = tmp_path_factory.mktemp(fmt)
        (folder / "sub").mkdir()
        (folder / "000001.jpg").write_bytes(b"\xff\xd8 data")
        (folder / "sub" / ("n" * (120 if long_names else 20) + ".jpg")).write_bytes(b"long")
        (folder / "link.jpg").symlink_to("000001.jpg")
        target = folder.parent / f"{fmt}.tar"
        subprocess.run(["tar", f"--format={fmt}", "-cf", str(target), "-C", str(folder), "."],
                       check=True, capture_output=True)
        archives.append(target.read_bytes())
    return b"".join(archives)


@pytest.mark.parametrize("name", sorted(ARCHIVES))
def test_python_tarfile_headers_parse_identically(name):
    blocks = _headers(ARCHIVES[name])
    assert blocks
    for buf in blocks:
        assert _outcome(FastTarInfo, buf) == _outcome(tarfile.TarInfo, buf)


def test_gnu_tar_headers_parse_identically(gnu_tar_archive):
    for buf in _headers(gnu_tar_archive):
        assert _outcome(FastTarInfo, buf) == _outcome(tarfile.TarInfo, buf)


@pytest.mark.parametrize("name", sorted(ARCHIVES))
def test_whole_archives_list_the_same_members(name):
    def members(**options):
        with tarfile.open(fileobj=io.BytesIO(ARCHIVES[name]), mode="r:", **options) as tar:
            return [(m.name, m.type, m.size, m.linkname, m.uid, m.pax_headers) for m in tar]

    assert members(tarinfo=FastTarInfo) == members()


def test_damaged_headers_give_tarfiles_answer():
    """Random bytes changed in real headers, with the checksum sometimes made to match again
    (so the field parsing itself is exercised): same fields, or the same error."""
    rng = np.random.default_rng(3)
    blocks = [b for b in _headers(ARCHIVES["gnu"]) + _headers(ARCHIVES["ustar"])
              if isinstance(_outcome(tarfile.TarInfo, b), dict)]
    for trial in range(4000):
        buf = bytearray(blocks[trial % len(blocks)])
        for _ in range(int(rng.integers(1, 4))):
            buf[int(rng.integers(0, 512))] = int(rng.integers(0, 256))
        if trial % 2:
            buf[148:156] = b" " * 8
            buf[148:156] = b"%06o\0 " % (sum(buf) & 0o777777)
        assert _outcome(FastTarInfo, bytes(buf)) == _outcome(tarfile.TarInfo, bytes(buf)), trial


def test_the_end_of_archive_and_short_blocks_raise_as_tarfile_does():
    for buf in (b"\0" * 512, b"", b"\0" * 100, b"x" * 512):
        assert _outcome(FastTarInfo, buf) == _outcome(tarfile.TarInfo, buf)


def test_odd_characters_in_number_fields_give_tarfiles_answer():
    """Whitespace that only `str.strip` drops, signs, underscores, non-octal digits and
    high bytes, at either end of every number field, with the checksum made to match."""
    base = _headers(ARCHIVES["ustar"])[0]  # the first member's header
    fields = [(100, 108), (108, 116), (116, 124), (124, 136), (136, 148), (329, 337), (337, 345)]
    odd = [b"\x1c", b"\x1f", b"\x0b", b"\x0c", b"\t", b" ", b"_", b"+", b"-", b"8", b"9", b"\x80", b"\xff", b"\0"]
    checked = 0
    for start, end in fields:
        for char in odd:
            for at in (start, end - 2):
                buf = bytearray(base)
                buf[at : at + 1] = char
                buf[148:156] = b" " * 8
                buf[148:156] = b"%06o\0 " % (sum(buf) & 0o777777)
                assert _outcome(FastTarInfo, bytes(buf)) == _outcome(tarfile.TarInfo, bytes(buf)), (start, char, at)
                checked += 1
    assert checked == len(fields) * len(odd) * 2


def test_a_negative_member_size_is_named_as_damage(tmp_path):
    from berg_scale.io.shard_reader import ShardReadError, read_shard
    from berg_scale.testing.tars import python_tar

    path = python_tar(tmp_path / "a.tar", [("a.jpg", b"x" * 600), ("b.jpg", b"y" * 600)])
    raw = bytearray(open(path, "rb").read())
    first = next(i for i in range(0, len(raw), 512) if raw[i:i + 5] == b"a.jpg")
    raw[first + 124:first + 136] = b"\xff" * 12  # base-256 -1, as a hostile writer would put it
    checksum = 256 + sum(raw[first:first + 512]) - sum(raw[first + 148:first + 156])
    raw[first + 148:first + 156] = b"%06o\0 " % checksum
    (tmp_path / "neg.tar").write_bytes(raw)
    with pytest.raises(ShardReadError) as info:
        read_shard(str(tmp_path / "neg.tar"))
    assert f"member 'a.jpg' (header at byte {first}) gives a negative size (-1)" in str(info.value)
