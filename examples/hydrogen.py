"""The SpIN paper's 2-D hydrogen atom (section 5.1), as the original examples/hydrogen.py.

    python examples/hydrogen.py                                  # the original's defaults
    python examples/hydrogen.py --objective neuralsvd --importance --niter 100000 --cosine
    python examples/hydrogen.py --show-plots                     # live figures (needs a display)

Every flag of ``spectorch spin hydrogen --help`` works here; the run writes figures of
the eigenfunctions and of the eigenvalue curves (exact energies dashed) into ``--out``
every ``--log-image-every`` steps, checkpoints every ``--save-params-every`` steps (run
the same command again to resume) and ends with the comparison against the exact
energies and eigenfunctions.
"""

import sys

from spectorch.cli import main

if __name__ == "__main__":
    sys.exit(main(["spin", "hydrogen", *sys.argv[1:]]))
