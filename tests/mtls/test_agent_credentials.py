"""The agent's control-plane credentials on disk: a renewal replaces key and chain whole
(key 0600), and a renewal cut short between its two renames is completed, or undone, at
the next start."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest

from control.ca.authority import CertificateAuthority
from control.ca.spiffe import agent_identity
from netpolicy.agent.control_credentials import ControlTls
from proxy.tls.workload_identity import KeyAndCsr, new_key_and_csr

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "ca", "cluster.local", NOW)


def issue(ca: CertificateAuthority) -> tuple[bytes, KeyAndCsr]:
    pair = new_key_and_csr()
    return ca.issue(pair.csr_pem, agent_identity("cluster.local", "node-a"), NOW, dt.timedelta(hours=1)).chain_pem(), pair


def credentials(ca: CertificateAuthority, directory: Path) -> ControlTls:
    chain, pair = issue(ca)
    (directory / "cert.pem").write_bytes(chain)
    (directory / "key.pem").write_bytes(pair.key_pem)
    (directory / "ca.pem").write_bytes(ca.trust_bundle_pem())
    return ControlTls(directory / "cert.pem", directory / "key.pem", directory / "ca.pem")


def test_a_renewal_replaces_chain_and_key_on_disk_and_in_memory(ca: CertificateAuthority, tmp_path: Path) -> None:
    tls = credentials(ca, tmp_path)
    trust = tls.pem()[2]
    chain, pair = issue(ca)
    tls.replace(chain, pair.key_pem)
    assert tls.pem() == (chain, pair.key_pem, trust) and tls.generation == 1
    assert (tls.cert.read_bytes(), tls.key.read_bytes()) == (chain, pair.key_pem)
    assert stat.S_IMODE(tls.key.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["ca.pem", "cert.pem", "key.pem"]


def test_a_renewal_cut_short_after_the_key_is_completed_at_the_next_start(
        ca: CertificateAuthority, tmp_path: Path) -> None:
    credentials(ca, tmp_path)
    chain, pair = issue(ca)
    (tmp_path / "cert.pem.next").write_bytes(chain)
    (tmp_path / "key.pem").write_bytes(pair.key_pem)
    restarted = ControlTls(tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem")
    assert restarted.pem()[:2] == (chain, pair.key_pem)
    assert not (tmp_path / "cert.pem.next").exists()


def test_a_renewal_cut_short_before_the_key_leaves_the_old_pair(ca: CertificateAuthority, tmp_path: Path) -> None:
    tls = credentials(ca, tmp_path)
    old = (tls.cert.read_bytes(), tls.key.read_bytes())
    (tmp_path / "cert.pem.next").write_bytes(issue(ca)[0])
    restarted = ControlTls(tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem")
    assert restarted.pem()[:2] == old
    assert not (tmp_path / "cert.pem.next").exists()
