"""Retriever stages over the temporal protocol: fit, finetune, evaluate, recommend.

These functions join the data layer (logs, parts, windows), a SidTable and the
model; the CLI and the experiment runner call them and nothing else.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from freshsid.data.sequences import Sequences, mixed, windows
from freshsid.data.temporal import Examples, TemporalSplit, Window
from freshsid.artifacts import Manifest
from freshsid.errors import FreshsidError
from freshsid.metrics import DEFAULT_KS, recall_ndcg
from freshsid.retriever.decode import beam_search
from freshsid.retriever.distill import Teacher
from freshsid.retriever.exact import exact_top_k
from freshsid.retriever.model import Retriever, RetrieverConfig, hash_user, load_checkpoint
from freshsid.retriever.remap import RemapPlan, remap_code_embeddings
from freshsid.retriever.train import TrainConfig, TrainResult, train
from freshsid.runtime import current
from freshsid.sid.table import SidTable


def training_windows(split: TemporalSplit, table: SidTable, *, history: Window, target: Window, max_history: int) -> Sequences:
    """Windows over events from ``history.start`` to ``target.stop`` with loss on the
    events of ``target``; items the table cannot code are dropped (they have no SID)."""
    logs = split.logs
    span = split.events(Window(start=history.start, stop=target.stop))
    user, item = logs.user[span], logs.item[span]
    is_target = np.arange(span.start, span.stop) >= split.bounds[target.start]
    known = table.lookup_table(logs.n_items)[item, 0] >= 0
    return windows(user[known], item[known], length=max_history + 1, is_target=is_target[known])


def fit(
    split: TemporalSplit,
    table: SidTable,
    *,
    window: Window,
    model_config: RetrieverConfig,
    train_config: TrainConfig,
    out: Path,
    show_progress: bool = True,
    recent_parts: int = 0,
    recent_config: TrainConfig | None = None,
) -> TrainResult:
    """Train a retriever from scratch on the events of ``window``.

    ``recent_parts``: then train it again, with ``recent_config``, on the events of the last
    that many parts of ``window`` (histories from its start), as a fine-tune would: a recency
    pass, which the next period's recall gains from where the window has drifted
    (``benchmarks/RESULTS.md``, issue 39). The fitted model is kept beside ``out``
    (``.<name>.fit``); ``out``'s record holds both runs' compute and the pass's window."""
    _check_shape(model_config, table)
    if recent_parts and not (0 < recent_parts < window.stop - window.start and recent_config is not None):
        raise FreshsidError(f"A recency pass over the last {recent_parts} part(s) needs its training settings and a "
                            f"window of more parts than that ({window} has {window.stop - window.start}); "
                            "set it to 0 (--recent-parts 0) for none.")
    seqs = training_windows(split, table, history=window, target=window, max_history=model_config.max_history)
    torch.manual_seed(train_config.seed)
    meta = {"mode": "fit", "history_window": str(window), "target_window": str(window)}
    out = Path(out)
    fit_out = out.parent / f".{out.name}.fit" if recent_parts else out
    fitted = _train(Retriever(model_config), split, table, seqs, train_config=train_config, out=fit_out, parent=None,
                    meta=meta, show_progress=show_progress)
    if not recent_parts:
        return fitted
    recent = Window(start=window.stop - recent_parts, stop=window.stop)
    seqs = training_windows(split, table, history=Window(start=window.start, stop=recent.start), target=recent,
                            max_history=model_config.max_history)
    # (fitted.model holds its best epoch's weights, those of its checkpoint: the pass is the
    # same run as pipeline.finetune from that checkpoint, which tests/test_train.py holds.)
    return _train(fitted.model, split, table, seqs, train_config=recent_config, out=out, parent=fitted.manifest.fingerprint,
                  meta={**meta, "recent_window": str(recent)}, show_progress=show_progress, spent=fitted.compute)


def finetune(
    checkpoint: Path,
    split: TemporalSplit,
    table: SidTable,
    *,
    target: Window,
    train_config: TrainConfig,
    out: Path,
    show_progress: bool = True,
    remap: RemapPlan | None = None,
) -> TrainResult:
    """Warm-start from ``checkpoint`` (optionally with another table of the same shape)
    and train with loss on the events of ``target`` only, histories from part 0.
    ``remap``: first carry the code embeddings of ``remap.levels`` levels from the
    checkpoint's table onto ``table``'s codes (:mod:`freshsid.retriever.remap`), each item
    weighted by its events in ``target`` when the plan says so, and start as it says; with
    the plan's ``distill``, the checkpoint as loaded is the teacher of a distillation term
    (:mod:`freshsid.retriever.distill`); with its ``replay``, that share of the windows
    comes from the parts before ``target`` (:func:`freshsid.data.sequences.mixed`)."""
    model, manifest = load_checkpoint(checkpoint, expected_shape=table.codebook_sizes)
    remapped, embedding_steps, teacher = {}, 0, None
    if remap is not None and remap.levels > 0:
        if remap.spoken.content_hash != manifest.info.get("sid_table"):
            raise FreshsidError(f"The table to remap from ({remap.spoken.content_hash[:12]}) is not the one {checkpoint} "
                                "was trained on; pass that checkpoint's own SID table.")
        if not 0 < remap.levels <= table.n_levels:
            raise FreshsidError(f"Remap levels must be within 1..{table.n_levels} (the table's semantic levels), "
                                f"not {remap.levels}.")
        weights = None
        if remap.weight == "events":
            weights = np.bincount(split.logs.item[split.events(target)], minlength=split.logs.n_items) + 1.0
        if remap.distill:
            teacher = Teacher.of(load_checkpoint(checkpoint)[0], remap.spoken, table, split.logs.n_items, remap.distill)
        remap_code_embeddings(model, remap.spoken, table, remap.levels, weights, remap.basis)
        remapped = {"remapped_from": remap.spoken.content_hash, "remapped_levels": remap.levels,
                    **({"remap_weight": remap.weight} if weights is not None else {}),
                    **({"remap_basis": remap.basis} if remap.basis != "codes" else {})}
        embedding_steps = remap.embedding_steps
    history = Window(start=0, stop=target.start) if target.start > 0 else target
    seqs = training_windows(split, table, history=history, target=target, max_history=model.config.max_history)
    if len(seqs) == 0:
        raise FreshsidError(f"No user has an event in parts {target} with a SID in the table; check --parts.")
    if remap is not None and remap.replay and target.start > 0:
        before = Window(start=0, stop=target.start)
        past = training_windows(split, table, history=before, target=before, max_history=model.config.max_history)
        seqs, replayed = mixed(seqs, past, remap.replay, np.random.default_rng([train_config.seed, 1]))
        remapped |= {"replay": remap.replay, "replay_windows": replayed}
    return _train(model, split, table, seqs, train_config=train_config, out=out, parent=manifest.fingerprint,
                  meta={"mode": "finetune", "history_window": str(history), "target_window": str(target), **remapped},
                  show_progress=show_progress, embedding_steps=embedding_steps, teacher=teacher)


def _train(model, split, table, seqs, *, train_config, out, parent, meta, show_progress, embedding_steps=0,
           teacher=None, spent=None) -> TrainResult:
    """The training call fit and finetune share; the resume state lives beside ``out``."""
    out = Path(out)
    return train(
        model,
        seqs,
        table.lookup_table(split.logs.n_items),
        config=train_config,
        work_dir=out.parent / f".{out.name}.train",
        out=out,
        inputs={"sid_table": table.content_hash, "logs": split.logs.fingerprint},
        parent=parent,
        extra_meta={**meta, "sid_table": table.content_hash},
        show_progress=show_progress,
        embedding_steps=embedding_steps,
        teacher=teacher,
        spent=spent,
    )


def trained_span(manifest: Manifest) -> Window:
    """The parts a checkpoint's training read, histories and targets together, from its manifest."""
    try:
        history = Window.parse(manifest.info["history_window"])
        target = Window.parse(manifest.info["target_window"])
    except (KeyError, TypeError, FreshsidError):
        raise FreshsidError("This checkpoint does not record its training windows (an older version made it); "
                            "retrain it with this version of freshsid.") from None
    return Window(start=history.start, stop=target.stop)


def recommend(
    model: Retriever,
    table: SidTable,
    histories: np.ndarray,
    users: np.ndarray,
    *,
    allowed_items: np.ndarray | None,
    top_k: int,
    beam: int | None = None,
    batch_size: int = 32,
) -> tuple[np.ndarray, np.ndarray]:
    """Top ``top_k`` items (m, top_k) with scores for users (m,) with histories (m, T).

    History items the table cannot code are skipped; ``beam`` defaults to ``top_k``.
    """
    return Recommender(model, table, allowed_items=allowed_items)(histories, users, top_k=top_k, beam=beam,
                                                                   batch_size=batch_size)


class Recommender:
    """A model and its table ready to decode batch after batch: the SID lookup and the trie
    of the allowed items are built once, on the runtime's device.

    Under torchrun the decode batches are dealt out to the ranks in turn and every rank
    returns the whole result, merged in input order: each user is decoded in the same
    batch as in one process, so the results are the same."""

    def __init__(self, model: Retriever, table: SidTable, *, allowed_items: np.ndarray | None = None) -> None:
        _check_shape(model.config, table)
        device = current().device
        self.model, self.table = model.to(device), table
        self.lookup = table.lookup_table(int(table.items.max(initial=-1)) + 1)
        self.trie = table.trie(allowed_items).to(device)
        self._lookup = torch.from_numpy(self.lookup).to(device)

    def __call__(self, histories: np.ndarray, users: np.ndarray, *, top_k: int, beam: int | None = None,
                 batch_size: int = 32, exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Items (m, top_k) and scores for users (m,) with histories (m, T); history items the
        table cannot code are skipped. ``exact``: rank every allowed item by its exact score
        (:func:`~freshsid.retriever.exact.exact_top_k`) instead of the beam search, which then
        takes no ``beam``."""
        if exact and beam is not None:
            raise FreshsidError("Exact scoring ranks every allowed item and takes no beam; pass one or the other.")
        rt = current()
        histories = np.asarray(histories, dtype=np.int64)
        known = (histories >= 0) & (histories < len(self.lookup))
        known[known] = self.lookup[histories[known], 0] >= 0
        histories = np.where(known, histories, -1)[:, -self.model.config.max_history :]
        n = len(histories)
        mine = [np.arange(start, min(start + batch_size, n)) for start in rt.share(np.arange(0, n, batch_size))]
        rows = np.concatenate(mine) if mine else np.zeros(0, dtype=np.int64)
        inputs = (self.model, torch.from_numpy(np.ascontiguousarray(histories[rows])),
                  hash_user(np.asarray(users, dtype=np.int64)[rows], self.model.config.user_buckets),
                  self._lookup, self.trie)
        if exact:
            items, scores = exact_top_k(*inputs, top_k=top_k, batch_size=batch_size)
        else:
            items, scores = beam_search(*inputs, beam=beam or top_k, top_k=top_k, batch_size=batch_size)
        if not rt.distributed:
            return items.cpu().numpy(), scores.cpu().numpy()
        out_items = np.full((n, top_k), -1, dtype=np.int64)
        out_scores = np.full((n, top_k), -np.inf, dtype=np.float32)
        for part_rows, part_items, part_scores in rt.gather((rows, items.cpu().numpy(), scores.cpu().numpy())):
            out_items[part_rows], out_scores[part_rows] = part_items, part_scores
        return out_items, out_scores


def evaluate(
    model: Retriever,
    table: SidTable,
    split: TemporalSplit,
    *,
    test: Window,
    allowed: Window,
    ks: tuple[int, ...] = DEFAULT_KS,
    beam: int | None = None,
    max_users: int | None = None,
) -> dict[str, float]:
    """Recall@K / nDCG@K on the test window; decoding allows the items seen in ``allowed``."""
    examples, ranked = rank_test_users(model, table, split, test=test, allowed=allowed, top_k=max(ks), beam=beam,
                                       max_users=max_users)
    return recall_ndcg(ranked, examples.label_indptr, examples.label_items, ks)


def rank_test_users(model: Retriever, table: SidTable, split: TemporalSplit, *, test: Window, allowed: Window,
                    top_k: int, beam: int | None = None, max_users: int | None = None) -> tuple[Examples, np.ndarray]:
    """The test users (:func:`sample_users`) and each one's top ``top_k`` items (m, top_k),
    decoded over the items seen in ``allowed``: what :func:`evaluate` scores, kept per user."""
    examples = sample_users(split.examples(test, max_history=model.config.max_history), max_users)
    if len(examples) == 0:
        raise FreshsidError(f"No user has an event in parts {test} and an earlier one to recommend from; "
                            "choose a later test window.")
    ranked, _ = recommend(
        model, table, examples.inputs, examples.users, allowed_items=split.allowed_items(allowed),
        top_k=top_k, beam=beam,
    )
    return examples, ranked


def sample_users(examples: Examples, max_users: int | None) -> Examples:
    """A fixed random sample (seed 0) of ``max_users`` test users, or all of them: every
    policy and baseline of an experiment is scored on the same users."""
    if max_users is None or len(examples) <= max_users:
        return examples
    return examples.subset(np.sort(np.random.default_rng(0).choice(len(examples), max_users, replace=False)))


def _check_shape(config: RetrieverConfig, table: SidTable) -> None:
    if tuple(config.codebook_sizes) != tuple(table.codebook_sizes):
        raise FreshsidError(
            f"The retriever expects SIDs of shape {list(config.codebook_sizes)} but the table has "
            f"{list(table.codebook_sizes)}; use a table of the shape the checkpoint was trained for."
        )
