"""docs/python-api.md's composed flow, run as written: back up, restore into a scratch
database, count its rows with the user's own task, drop the scratch database."""

from __future__ import annotations

import re
import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def composed_flow_code() -> str:
    """The one ```python block of the doc's "A composed flow" section."""
    doc = (ROOT / "docs" / "python-api.md").read_text()
    section = doc[doc.index("## A composed flow") :]
    section = section[: section.index("\n## ")]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)
    return code


def test_the_composed_flow_of_the_doc_runs(env, pg_db, pg_admin, tmp_path):
    db = pg_db()
    pg_admin.execute(
        db,
        'CREATE TABLE "order lines" (id int PRIMARY KEY);'
        'INSERT INTO "order lines" SELECT generate_series(1, 321);',
    )
    example = tmp_path / "example.py"
    example.write_text(composed_flow_code())
    names = runpy.run_path(str(example), run_name="example")  # not "__main__"
    try:
        rows = names["backup_and_prove"](env.pg, db, "order lines", env.storage, env.encryption)
        left = pg_admin.exists(f"{db}_check")
    finally:
        pg_admin.drop(f"{db}_check")  # only if the flow failed to drop it
    assert rows == 321
    assert not left  # the flow dropped its scratch database
    assert pg_admin.query(db, 'SELECT count(*) FROM "order lines"') == [(321,)]
