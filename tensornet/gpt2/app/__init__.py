"""The application over the GPT-2 adapter: ``python -m tensornet.gpt2 {compare,train,compress,eval}``.

The training loop (``train``, ``evaluate``, ``TrainConfig``), resumable checkpoints, the corpus and tokenizer
caches, run folders and figures, built on the adapter's (:mod:`tensornet.gpt2`) and ``tensornet.nn``'s public
names only; ``tensornet.gpt2`` re-exports the loop and the corpus helpers. Only the flags are imported until a
command runs, so ``--help`` answers without loading torch.
"""

from ._cli import main

__all__ = ["main"]
