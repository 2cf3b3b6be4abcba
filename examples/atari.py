"""The SpIN paper's slow features of Atari play (appendix C.3), as the original
examples/atari.py: collect frames of a real game with ale-py, then learn the slowest
features of 4-frame stacks with SpectralNetwork(SlownessOperator()).

    pip install 'spectorch[atari]'
    python examples/atari.py --game space_invaders --frames 50000 --niter 2000
    python examples/atari.py --game montezuma_revenge --decay 0.01   # the original's average

The frames go to ``spectorch-out/atari/GAME.npz`` (the original's format: ``frames``
uint8 N x 84 x 84, ``episode_starts`` bool N; reused when it exists), the run to
``spectorch-out/atari/GAME/``: ``slow_features.png`` (for each feature, the frames where
it is lowest and highest, and the eigenvalue curves), checkpoints (run the same command
again to resume) and ``result.json``. The flags after ``--frames`` are those of
``spectorch spin atari train --help``.
"""

import argparse
import sys
from pathlib import Path

from spectorch.cli import main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--game", default="space_invaders")
    parser.add_argument("--frames", default="50000")
    known, rest = parser.parse_known_args()
    data = Path("spectorch-out") / "atari" / f"{known.game}.npz"
    if not data.exists():
        status = main(["spin", "atari", "collect", "--game", known.game, "--frames", known.frames])
        if status:
            sys.exit(status)
    sys.exit(main(["spin", "atari", "train", "--data", str(data), *rest]))
