"""``python -m talkhead`` (also what ``torchrun ... -m talkhead train ...`` runs)."""
from .cli import main

main()
