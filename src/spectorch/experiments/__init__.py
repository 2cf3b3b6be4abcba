"""The experiments built on the library, one module each: a config dataclass whose
fields are the experiment's settings (and the options of its ``spectorch`` sub-command)
and ``run(out, config)``, which writes a resumable run directory.

=============================  =====================================================
:mod:`~.hydrogen`              2-D hydrogen with SpIN / NeuralEF / NeuralSVD
:mod:`~.kernel`                top eigenfunctions of an RBF kernel against ``eigh``
:mod:`~.atari`                 slow features of Atari play (and synthetic video)
:mod:`~.cifar`                 CIFAR ResNets: checkpoints, one density per checkpoint
:mod:`~.rim`                   RIMs on digit and photograph inverse problems
:mod:`~.pruning`               eigenvalue training and spectral pruning on digits
:mod:`~.digits`                the digits MLP of the demos (``digits_problem``)
:mod:`~.tour`                  a short run of every capability (``spectorch tour``)
=============================  =====================================================
"""

EXPERIMENTS = ("atari", "cifar", "digits", "hydrogen", "kernel", "pruning", "rim", "tour")

__all__ = ["EXPERIMENTS"]
