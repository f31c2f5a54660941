"""``python -m fxprune``: the ``fxprune`` command, also what ``torchrun -m fxprune`` runs
(``torchrun --nproc-per-node 2 -m fxprune train CONFIG``)."""
from .cli import program

raise SystemExit(program())
