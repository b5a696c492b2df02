"""Every artifact loader, fed damaged files: it returns a valid object or refuses with
FreshsidError, never another exception. The damage is sealed into the manifest (file
hash and digest recomputed), so the loaders' own decoding is what is tested, not only
the hash check in front of it."""

import json
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import reseal
from freshsid.artifacts import file_sha256
from freshsid.config import SidConfig
from freshsid.embed.store import Embeddings, save_embeddings
from freshsid.errors import FreshsidError
from freshsid.retriever.model import Retriever, RetrieverConfig, load_checkpoint, save_checkpoint
from freshsid.sid.build import build_table
from freshsid.sid.table import SidTable


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts")
    rng = np.random.default_rng(0)
    save_embeddings(root / "embeddings", rng.normal(size=(40, 4)), kind="collab", config={}, seed=0, inputs={},
                    compute={}, window="0:8", items=np.arange(0, 40, 2), state={"w": rng.normal(size=(3, 3))})
    items = np.arange(60)
    table, _ = build_table(rng.normal(size=(60, 4)).astype(np.float32), items, items.astype(str),
                           SidConfig(tokenizer="rqkmeans", n_levels=2, codebook_size=4, suffix_size=16), window="0:8")
    table.save(root / "sids")
    config = RetrieverConfig(codebook_sizes=table.codebook_sizes, width=8, n_layers=1, n_heads=2, ffn=16, user_buckets=4)
    save_checkpoint(root / "retriever", Retriever(config))
    return root


LOADERS = {
    "embeddings": Embeddings.load,
    "sids": SidTable.load,
    "retriever": lambda folder: load_checkpoint(folder),
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(sorted(LOADERS)), pick=st.integers(0, 10), cut=st.floats(0, 1),
       noise=st.binary(max_size=64), sealed=st.booleans())
def test_loaders_load_or_refuse_damaged_files(artifacts, tmp_path_factory, kind, pick, cut, noise, sealed):
    folder = tmp_path_factory.mktemp("case") / kind
    shutil.copytree(artifacts / kind, folder)
    names = sorted(p.name for p in folder.iterdir())
    name = names[pick % len(names)]
    raw = (folder / name).read_bytes()
    (folder / name).write_bytes(raw[: int(cut * len(raw))] + noise)
    if sealed and name != "manifest.json":
        reseal(folder, lambda manifest: manifest["files"].update({name: file_sha256(folder / name)}))
    try:
        LOADERS[kind](folder)
    except FreshsidError as exc:
        assert "\n" not in str(exc)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                           max_leaves=12)
config_keys = st.sampled_from(["preset", "beam", "ks", "policies", "sasrec", "protocol", "recipe", "finetune_seeds", "x"])


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(st.binary(max_size=64), st.dictionaries(config_keys, json_values, max_size=4).map(
    lambda d: json.dumps(d).encode())), suffix=st.sampled_from([".json", ".toml"]))
def test_the_config_loader_loads_or_refuses_anything(tmp_path_factory, data, suffix):
    from freshsid.config import ExperimentConfig, load_config

    path = tmp_path_factory.mktemp("config") / f"c{suffix}"
    path.write_bytes(data)
    try:
        assert isinstance(load_config(path), ExperimentConfig)
    except FreshsidError as exc:
        assert "\n" not in str(exc)
