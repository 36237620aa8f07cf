"""Entry point of `tulle-agent`."""

import sys


def main() -> int:
    print("tulle-agent: not implemented yet (issue 3)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
