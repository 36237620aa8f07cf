"""A proxyless gRPC client, run as its own process by test_proxyless_grpc: gRPC's xDS
client is a process-wide singleton that reads its bootstrap (GRPC_XDS_BOOTSTRAP_CONFIG)
once, so each test gets a fresh process.

Usage: python grpc_client.py TARGET CALLS  → prints {"server name": calls} as JSON.
"""

from __future__ import annotations

import json
import sys
from collections import Counter

import grpc


def main() -> int:
    target, calls = sys.argv[1], int(sys.argv[2])
    with grpc.insecure_channel(target) as channel:
        whoami = channel.unary_unary("/tulle.test.Whoami/Call")
        seen = Counter(whoami(b"", timeout=20, wait_for_ready=True).decode() for _ in range(calls))
    print(json.dumps(seen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
