"""Entry point of `meshctl`."""

import sys


def main() -> int:
    # `meshctl lab ...` (control/meshctl/lab.py); once meshctl is a click group,
    # this becomes `cli.add_command(lab)`.
    if sys.argv[1:2] == ["lab"]:
        from control.meshctl.lab import lab

        return int(lab.main(args=sys.argv[2:], prog_name="meshctl lab") or 0)
    print("meshctl: not implemented yet (issue 4)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
