"""The generative retriever: a decoder-only transformer over SID tokens.

``model``: config, token layout, network, FLOPs and checkpoints.
``decode``: trie-constrained beam search (and exact scoring of given items).
``exact``: exact scoring of every allowed item, the model's ranking with nothing pruned.
Training loops (fit / warm-start fine-tune) build on ``Retriever.loss``.
"""
