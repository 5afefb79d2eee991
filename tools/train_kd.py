#!/usr/bin/env python3
"""Thin wrapper: ``python tools/train_kd.py --teacher T.pt --student yolov8n.yaml --data D.yaml [...]``.

Identical to ``detkd distill ...``; see ``detkd distill --help``.
"""

import sys

from detkd.cli import main

if __name__ == "__main__":
    sys.exit(main(["distill", *sys.argv[1:]]))
