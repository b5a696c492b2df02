"""``python -m freshsid``: what ``torchrun --nproc-per-node N -m freshsid ...`` runs on every rank."""

from freshsid.cli import main

main()
