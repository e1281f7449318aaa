"""The zoo entries shipped inside the package: they load offline, predict what they should, export."""

import pytest

from deploy.export import export
from lightning_modules.pretrained import task_from_pretrained
from zoo.hub import load_manifest

SHIPPED = ["conll-bilstm-crf", "imdb-bilstm", "multi30k-bahdanau"]


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("RNNZOO_OFFLINE", "1")
    monkeypatch.delenv("RNNZOO_MANIFEST", raising=False)


def test_manifest_lists_the_shipped_entries_with_their_test_metrics():
    entries = load_manifest()
    assert set(SHIPPED) <= set(entries)
    for name in SHIPPED:
        assert entries[name]["metrics"] and entries[name]["command"] and entries[name]["local"]
        assert sum(f["size"] for f in entries[name]["files"].values()) < 25e6


def test_imdb_bilstm_classifies_clear_reviews():
    task = task_from_pretrained("imdb-bilstm")
    rows = task.classify(
        [
            "A wonderful, moving film with brilliant acting. I loved it.",
            "Dull, boring and far too long. A waste of time.",
        ]
    )
    assert [row["label"] for row in rows] == ["pos", "neg"]


def test_conll_bilstm_crf_tags_the_classic_sentence():
    task = task_from_pretrained("conll-bilstm-crf")
    (row,) = task.tag(["EU rejects German call to boycott British lamb ."])
    assert row["tags"] == ["B-ORG", "O", "B-MISC", "O", "O", "O", "B-MISC", "O", "O"]


def test_multi30k_bahdanau_translates_a_simple_sentence():
    task = task_from_pretrained("multi30k-bahdanau")
    (translation,) = task.translate(["Ein Hund rennt durch den Schnee."])
    assert "dog" in translation and "snow" in translation


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_entry_exports_and_verifies(tmp_path, name):
    config = export(name, tmp_path / name)
    assert all(check["max_abs_diff"] <= check["tolerance"] for check in config["verification"].values())
