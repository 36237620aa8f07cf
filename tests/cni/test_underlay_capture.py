"""The underlay counter's classifier: VXLAN frames, the pod-to-pod TCP inside them, and
whether that TCP carries plaintext HTTP/1.x (frames built by hand, no kernel needed)."""

from __future__ import annotations

import socket
import struct

from cni.lab.underlay_capture import VXLAN_PORT, Summary, classify


def _ipv4(protocol: int, src: str, dst: str, payload: bytes) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, protocol, 0,
                         socket.inet_aton(src), socket.inet_aton(dst))
    return header + payload


def _tcp(sport: int, dport: int, payload: bytes) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 0, 0, 5 << 4, 0x18, 65535, 0, 0) + payload


def _ethernet(payload: bytes) -> bytes:
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + payload


def _vxlan_frame(inner_payload: bytes, dport: int = VXLAN_PORT) -> bytes:
    inner = _ethernet(_ipv4(socket.IPPROTO_TCP, "10.244.1.3", "10.244.0.2", _tcp(40000, 8080, inner_payload)))
    vxlan = b"\x08\x00\x00\x00\x00\x00\x01\x00" + inner
    udp = struct.pack("!HHHH", 51000, dport, 8 + len(vxlan), 0) + vxlan
    return _ethernet(_ipv4(socket.IPPROTO_UDP, "172.30.0.1", "172.30.0.2", udp))


def test_a_plaintext_http_request_inside_vxlan_is_found() -> None:
    vxlan, segment = classify(_vxlan_frame(b"GET /items HTTP/1.1\r\nhost: catalog\r\n\r\n"))
    assert vxlan and segment is not None
    assert segment.plaintext_http
    assert (segment.source, segment.destination) == ("10.244.1.3:40000", "10.244.0.2:8080")


def test_a_tls_record_inside_vxlan_is_not_plaintext() -> None:
    vxlan, segment = classify(_vxlan_frame(b"\x17\x03\x03\x00\x20" + b"\x00" * 32))
    assert vxlan and segment is not None and not segment.plaintext_http


def test_other_udp_is_not_vxlan() -> None:
    assert classify(_vxlan_frame(b"GET / HTTP/1.1\r\n\r\n", dport=53)) == (False, None)


def test_the_summary_counts_and_keeps_samples_of_plaintext() -> None:
    summary = Summary()
    for payload in (b"HTTP/1.1 200 OK\r\n\r\n", b"\x16\x03\x01\x00\x05hello", b""):
        summary.add(_vxlan_frame(payload))
    assert (summary.frames, summary.vxlan_frames, summary.tcp_payload_segments, summary.plaintext_http_segments) == (3, 3, 2, 1)
    assert summary.samples == ["10.244.1.3:40000 -> 10.244.0.2:8080: HTTP/1.1 200 OK"]
