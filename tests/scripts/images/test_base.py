"""Slimming a rootfs: what a container never needs goes, copyright files and the rootfs' shape stay."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.images.base import slim_rootfs
from scripts.images.common import BuildError


def fake_rootfs(root: Path) -> Path:
    files = {
        "usr/share/doc/python3/copyright": "license",
        "usr/share/doc/python3/changelog.Debian.gz": "changes",
        "usr/share/doc/emptyish/README": "readme",
        "usr/share/man/man1/python3.1.gz": "man",
        "usr/share/locale/de/LC_MESSAGES/apt.mo": "de",
        "var/lib/apt/lists/deb.debian.org_dists_bookworm_InRelease": "lists",
        "var/cache/apt/archives/python3_3.11.deb": "deb",
        "var/log/apt/history.log": "a long history",
        "var/lib/dpkg/status-old": "old",
        "etc/resolv.conf": "nameserver 10.0.0.1",
        "etc/hostname": "builder",
        "usr/bin/python3": "#!",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "etc/dpkg/dpkg.cfg.d").mkdir(parents=True)
    (root / "etc/apt/apt.conf.d").mkdir(parents=True)
    return root


def test_slim_rootfs_drops_docs_man_pages_apt_lists_and_the_hosts_resolver_but_keeps_copyrights(tmp_path: Path):
    root = fake_rootfs(tmp_path / "rootfs")
    slim_rootfs(root)
    assert (root / "usr/share/doc/python3/copyright").read_text() == "license"
    assert not (root / "usr/share/doc/python3/changelog.Debian.gz").exists()
    assert not (root / "usr/share/doc/emptyish").exists()  # nothing left in it: the directory goes too
    assert list((root / "usr/share/man").iterdir()) == [] and list((root / "usr/share/locale").iterdir()) == []
    assert list((root / "var/lib/apt/lists").iterdir()) == []
    assert not (root / "var/cache/apt/archives/python3_3.11.deb").exists()
    assert not (root / "var/lib/dpkg/status-old").exists()
    assert (root / "var/log/apt/history.log").read_text() == ""
    assert (root / "etc/resolv.conf").read_text() == "" and (root / "etc/hostname").read_text() == ""
    assert (root / "usr/bin/python3").read_text() == "#!"


def test_slim_rootfs_keeps_packages_installed_later_slim_too(tmp_path: Path):
    root = fake_rootfs(tmp_path / "rootfs")
    slim_rootfs(root)
    dpkg = (root / "etc/dpkg/dpkg.cfg.d/01-edgefleet-slim").read_text()
    assert "path-exclude /usr/share/doc/*" in dpkg and "path-include /usr/share/doc/*/copyright" in dpkg
    assert 'APT::Install-Recommends "false";' in (root / "etc/apt/apt.conf.d/01-edgefleet-slim").read_text()


def test_slim_rootfs_refuses_a_directory_that_is_not_a_rootfs(tmp_path: Path):
    with pytest.raises(BuildError, match="does not look like a rootfs"):
        slim_rootfs(tmp_path)
