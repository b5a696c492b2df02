"""Item embeddings that SID tokenizers quantize.

``collab``: a SASRec-style sequential recommender trained on a window of the logs;
its item table puts co-consumed items close together (and doubles as the dense
retrieval baseline); ``sasrec`` is its network and loss. ``content``: a sentence encoder over item text, cached on
disk. ``store``: the embeddings artifact (npy files plus a manifest).
"""
