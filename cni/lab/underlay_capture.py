"""What crosses a lab's underlay between nodes: pod-to-pod TCP inside VXLAN, and whether
any of it is plaintext HTTP (a raw AF_PACKET socket on the underlay bridge, no tcpdump).

Run inside the lab's underlay namespace for a bounded time, on a node's port of the
underlay bridge (a bridge's own interface does not see the unicast it forwards); the lab
does it through `Lab.capture_underlay(node)`, which returns a `RunningCapture`:

    python -m cni.lab.underlay_capture --interface node-1 --seconds 10

It prints one JSON object when the time is up or on SIGTERM: frames seen, VXLAN frames
(UDP 8472), inner TCP segments carrying payload, and how many of those payloads start like
HTTP/1.x (a request line or a status line), with up to three samples. `classify` is the
sans-IO part: one Ethernet frame in, what it carries out.
"""

from __future__ import annotations

import argparse
import json
import re
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Final

VXLAN_PORT: Final = 8472
ETH_P_ALL: Final = 0x0003
ETH_P_IP: Final = 0x0800
_HTTP1: Final = re.compile(rb"^(?:[A-Z]{3,7} \S+ HTTP/1\.[01]\r\n|HTTP/1\.[01] \d{3} )")


@dataclass(frozen=True, slots=True)
class Segment:
    """A TCP segment with payload, found inside a VXLAN frame."""

    source: str
    destination: str
    payload: bytes

    @property
    def plaintext_http(self) -> bool:
        return _HTTP1.match(self.payload) is not None


def _ipv4_tcp(packet: bytes) -> tuple[str, str, bytes] | None:
    """(src:port, dst:port, payload) of an IPv4 TCP packet, else None."""
    if len(packet) < 20 or packet[0] >> 4 != 4 or packet[9] != socket.IPPROTO_TCP:
        return None
    header = (packet[0] & 0x0F) * 4
    total = int.from_bytes(packet[2:4], "big")
    tcp = packet[header:total]
    if len(tcp) < 20:
        return None
    offset = (tcp[12] >> 4) * 4
    src = f"{socket.inet_ntoa(packet[12:16])}:{int.from_bytes(tcp[0:2], 'big')}"
    dst = f"{socket.inet_ntoa(packet[16:20])}:{int.from_bytes(tcp[2:4], 'big')}"
    return src, dst, tcp[offset:]


def classify(frame: bytes) -> tuple[bool, Segment | None]:
    """(is a VXLAN frame, the inner TCP segment with payload if any)."""
    if len(frame) < 14 + 20 + 8 or int.from_bytes(frame[12:14], "big") != ETH_P_IP:
        return False, None
    ip = frame[14:]
    if ip[0] >> 4 != 4 or ip[9] != socket.IPPROTO_UDP:
        return False, None
    udp = ip[(ip[0] & 0x0F) * 4:]
    if len(udp) < 8 + 8 + 14 or int.from_bytes(udp[2:4], "big") != VXLAN_PORT:
        return False, None
    inner = udp[8 + 8:]  # UDP header, VXLAN header
    if int.from_bytes(inner[12:14], "big") != ETH_P_IP:
        return True, None
    found = _ipv4_tcp(inner[14:])
    if found is None or not found[2]:
        return True, None
    return True, Segment(*found)


@dataclass
class Summary:
    frames: int = 0
    vxlan_frames: int = 0
    tcp_payload_segments: int = 0
    plaintext_http_segments: int = 0
    samples: list[str] = field(default_factory=list)

    def add(self, frame: bytes) -> None:
        self.frames += 1
        vxlan, segment = classify(frame)
        self.vxlan_frames += vxlan
        if segment is None:
            return
        self.tcp_payload_segments += 1
        if segment.plaintext_http:
            self.plaintext_http_segments += 1
            if len(self.samples) < 3:
                line = segment.payload.split(b"\r\n", 1)[0].decode("latin-1")
                self.samples.append(f"{segment.source} -> {segment.destination}: {line}")


def capture(interface: str, seconds: float) -> Summary:
    summary = Summary()
    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)) as sock:
        sock.bind((interface, 0))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        print("capturing", flush=True, file=sys.stderr)
        deadline = time.monotonic() + seconds
        while not stop and (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([sock], [], [], min(left, 0.2))
            if ready:
                summary.add(sock.recv(65535))
    return summary


class RunningCapture:
    """The capture as a child process in `netns`; `stop()` ends it and returns its summary."""

    def __init__(self, netns: str, interface: str, seconds: float) -> None:
        self._proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-c",
             "import sys; from cni.lab.underlay_capture import main; sys.exit(main())",
             "--interface", interface, "--seconds", str(seconds)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self._proc.stderr is not None
        started = self._proc.stderr.readline()  # "capturing" once the socket is bound
        if "capturing" not in started:
            self._proc.kill()
            raise RuntimeError(f"underlay capture on {interface} did not start: {started}{self._proc.stderr.read()}")

    def stop(self) -> dict[str, Any]:
        self._proc.terminate()
        out, err = self._proc.communicate(timeout=10)
        if self._proc.returncode != 0:
            raise RuntimeError(f"underlay capture failed: {err[-500:]}")
        result: dict[str, Any] = json.loads(out)
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interface", required=True)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    summary = capture(args.interface, args.seconds)
    print(json.dumps(summary.__dict__))
    return 0


if __name__ == "__main__":
    sys.exit(main())
