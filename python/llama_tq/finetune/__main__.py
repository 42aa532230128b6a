"""`python -m llama_tq.finetune` is `tq-finetune`."""

from .cli import main

main()
