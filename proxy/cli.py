"""Entry point of `tulle-proxy`."""

import sys


def main() -> int:
    print("tulle-proxy: not implemented yet (issue 7)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
