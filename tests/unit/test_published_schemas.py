import json
from pathlib import Path

from cli.seed import SeedFile

ROOT = Path(__file__).resolve().parents[2]


def test_published_seed_schema_matches_the_loader() -> None:
    published = json.loads((ROOT / "deploy" / "seed.schema.json").read_text())
    assert published == SeedFile.model_json_schema(), "run: lethe seed --schema > deploy/seed.schema.json"


def test_demo_seed_file_is_valid() -> None:
    seed = SeedFile.model_validate_json((ROOT / "deploy" / "seed" / "demo.json").read_text())
    assert {p.label for p in seed.people} >= {"alice", "ben"}
