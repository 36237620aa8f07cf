"""Entry point of `tulle-cni`."""

import sys


def main() -> int:
    print("tulle-cni: not implemented yet (issue 3)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
