"""`python -m inna_fused <command>`: info, bench, toy, train (dispatched by `inna_fused.cli`)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
