"""`python -m tinylm`: the `tinylm` command, which is how torchrun starts it (`torchrun ... -m tinylm train ...`)."""

from tinylm.cli import main

main()
