"""Entry point of `meshctl`."""

import sys


def main() -> int:
    print("meshctl: not implemented yet (issue 4)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
