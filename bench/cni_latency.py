"""CNI ADD/DEL latency: tulle-cni (+ tulle-agent) against the reference
`bridge` + `host-local` plugins, in the same run, on the same node.

Both plugins are executed exactly as a runtime executes them (a fresh process
per call, config on stdin, CNI_* environment, prevResult on DEL), from inside
one throwaway node namespace, for the same number of pods, ADDs and DELs
interleaved pod by pod so that machine noise hits both alike. Nothing touches
the host's own network namespace.

    python bench/cni_latency.py [--pods 100]

Prints p50/p99 per verb and plugin and the ratio tulle/reference (< 1: faster).
VERSION is answered by either plugin without any work, so its row is the cost of
starting the plugin process alone (a Python interpreter against a Go binary);
ADD/DEL minus VERSION is the work done per call.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cni.netns import join_netns
from cni.wire import call

BIN = Path(sys.executable).parent
REFERENCE = Path("/usr/lib/cni")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _invoke(plugin: Path, command: str, conf: dict[str, Any], container_id: str, netns: str) -> tuple[float, dict[str, Any] | None]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "CNI_COMMAND": command, "CNI_CONTAINERID": container_id,
           "CNI_NETNS": netns, "CNI_IFNAME": "eth0", "CNI_PATH": f"{BIN}:{REFERENCE}"}
    start = time.perf_counter()
    done = subprocess.run([str(plugin)], input=json.dumps(conf).encode(), env=env, capture_output=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{plugin.name} {command} {container_id}: {done.stdout.decode()} {done.stderr.decode()}")
    return elapsed, (json.loads(done.stdout) if done.stdout.strip() else None)


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=100)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("cni_latency: needs root (network namespaces)", file=sys.stderr)
        return 2

    token = secrets.token_hex(3)
    node = f"tl-bench-{token}"
    pods = {side: [f"tl-bench-{token}-{side[0]}{i}" for i in range(args.pods)] for side in ("tulle", "reference")}
    work = Path(tempfile.mkdtemp(prefix="tlbench-"))
    agent: subprocess.Popen[bytes] | None = None
    own_netns = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        _ip("netns", "add", node)
        for pod in [*pods["tulle"], *pods["reference"]]:
            _ip("netns", "add", pod)
        socket_path = work / "agent.sock"
        agent = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{node}", "--", str(BIN / "tulle-agent"), "--node", "bench",
             "--socket", str(socket_path), "--state-dir", str(work / "state"), "--log-level", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                call(str(socket_path), {"op": "status"}, timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or agent.poll() is not None:
                    raise RuntimeError("tulle-agent did not start") from None
                time.sleep(0.05)
        # From here on this (single-threaded) process lives in the node namespace,
        # so plugins it starts act there, as they would on a node.
        fd = os.open(f"/run/netns/{node}", os.O_RDONLY)
        join_netns(fd)
        os.close(fd)

        common = {"cniVersion": "1.0.0", "isGateway": True, "isDefaultGateway": True}
        tulle_conf = {**common, "name": "tulle-bench", "type": "tulle-cni", "bridge": "tlbench0",
                      "agentSocket": str(socket_path), "ipam": {"subnet": "10.90.0.0/16"}}
        ref_conf = {**common, "name": "ref-bench", "type": "bridge", "bridge": "refbench0",
                    "ipam": {"type": "host-local", "subnet": "10.91.0.0/16", "dataDir": str(work / "host-local")}}
        plugins = {"tulle": (BIN / "tulle-cni", tulle_conf), "reference": (REFERENCE / "bridge", ref_conf)}
        times: dict[str, dict[str, list[float]]] = {name: {"ADD": [], "DEL": [], "VERSION": []} for name in plugins}
        results: dict[tuple[str, int], dict[str, Any]] = {}

        # Warm-up: each side creates its bridge once, outside the measurement.
        for name, (plugin, conf) in plugins.items():
            _invoke(plugin, "ADD", conf, f"warm-{name}", f"/run/netns/{pods[name][0]}")
            _invoke(plugin, "DEL", conf, f"warm-{name}", f"/run/netns/{pods[name][0]}")
        for i in range(args.pods):
            for name, (plugin, conf) in plugins.items():
                elapsed, result = _invoke(plugin, "ADD", conf, f"{name}-{i}", f"/run/netns/{pods[name][i]}")
                times[name]["ADD"].append(elapsed)
                assert result is not None
                results[(name, i)] = result
        # The fixed cost of a call: starting the plugin process (VERSION does nothing else).
        for _ in range(args.pods):
            for name, (plugin, _conf) in plugins.items():
                elapsed, _ = _invoke(plugin, "VERSION", {"cniVersion": "1.0.0"}, "", "")
                times[name]["VERSION"].append(elapsed)
        for i in range(args.pods):
            for name, (plugin, conf) in plugins.items():
                prev = {**conf, "prevResult": results[(name, i)]}
                elapsed, _ = _invoke(plugin, "DEL", prev, f"{name}-{i}", f"/run/netns/{pods[name][i]}")
                times[name]["DEL"].append(elapsed)
    finally:
        join_netns(own_netns)
        os.close(own_netns)
        if agent is not None:
            agent.terminate()
            agent.wait(timeout=10)
        for ns in [*pods["tulle"], *pods["reference"], node]:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)

    print(f"CNI latency, {args.pods} pods per plugin, one node namespace, ms (a fresh plugin process per call)")
    print(f"{'verb':<5} {'plugin':<26} {'p50':>8} {'p99':>8} {'mean':>8}")
    for verb in ("ADD", "DEL", "VERSION"):
        for name, label in (("tulle", "tulle-cni + tulle-agent"), ("reference", "bridge + host-local")):
            s = times[name][verb]
            print(f"{verb:<5} {label:<26} {_percentile(s, .5) * 1e3:8.2f} {_percentile(s, .99) * 1e3:8.2f} {statistics.mean(s) * 1e3:8.2f}")
        t, r = times["tulle"][verb], times["reference"][verb]
        print(f"{verb:<5} {'ratio tulle/reference':<26} {_percentile(t, .5) / _percentile(r, .5):8.2f} {_percentile(t, .99) / _percentile(r, .99):8.2f} {statistics.mean(t) / statistics.mean(r):8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
