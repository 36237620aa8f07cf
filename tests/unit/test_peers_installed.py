"""The reference peers the project tests against are installed by `make setup`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_envoy_v3_api_modules_import() -> None:
    from envoy.config.cluster.v3 import cluster_pb2

    assert cluster_pb2.Cluster.DESCRIPTOR.full_name == "envoy.config.cluster.v3.Cluster"


def test_the_real_envoy_is_1_40() -> None:
    envoy = Path(sys.executable).parent / "envoy"
    out = subprocess.run([str(envoy), "--version"], capture_output=True, text=True, check=True).stdout
    assert "/1.40." in out
