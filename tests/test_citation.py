"""CITATION.cff: the fields CFF 1.2.0 requires, and the BERG and RNC papers as references."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def test_citation_file_names_the_software_and_both_papers():
    data = yaml.safe_load((REPO / "CITATION.cff").read_text(encoding="utf-8"))
    assert data["cff-version"] == "1.2.0"
    for key in ("message", "title", "authors", "version", "license"):
        assert data[key], key
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert f'version = "{data["version"]}"' in pyproject and f'license = "{data["license"]}"' in pyproject
    titles = {ref["title"]: ref for ref in data["references"]}
    berg = titles["Catalyzing in silico neuroscience with a toolkit of accurate encoding models of the brain"]
    assert [a["family-names"] for a in berg["authors"]] == ["Gifford", "Bersch", "Janini", "Roig", "Cichy"]
    rnc = next(ref for ref in data["references"] if ref.get("doi") == "10.1038/s41562-025-02252-z")
    assert rnc["journal"] == "Nature Human Behaviour" and rnc["year"] == 2025
    for ref in data["references"]:
        assert ref["type"] and ref["authors"] and "CC BY-NC 4.0" in ref["notes"]
