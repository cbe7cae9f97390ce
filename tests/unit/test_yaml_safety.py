"""The YAML of dbbackup.yaml and the automation files: alias bombs fail fast and clearly."""

from __future__ import annotations

import pytest
from prefect_dbbackup.blocks.errors import ConfigError
from prefect_dbbackup.flows.config import load_config, parse_yaml


def _bomb(levels: int = 9) -> str:
    lines = ['l0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for n in range(1, levels):
        lines.append(f"l{n}: &l{n} [{','.join([f'*l{n - 1}'] * 9)}]")
    lines.append(f"servers: {{x: {{type: postgres, include: *l{levels - 1}}}}}")
    return "\n".join(lines) + "\n"


def test_a_500_byte_alias_bomb_is_refused_before_it_is_expanded(tmp_path):
    config = tmp_path / "dbbackup.yaml"
    config.write_text(_bomb())
    assert len(config.read_bytes()) < 500
    with pytest.raises(ConfigError, match=r"aliases .* expand \d+ nodes into 9\d{8}"):
        load_config(config)  # 9^9 ~ 387 million strings if it were expanded


def test_a_recursive_alias_is_refused():
    with pytest.raises(ConfigError, match="refers to itself"):
        parse_yaml("a: &a [1, *a]\n", "x.yaml")


def test_deep_nesting_is_a_config_error_not_a_crash():
    with pytest.raises(ConfigError, match="nested too deeply"):
        parse_yaml("[" * 20000 + "]" * 20000, "x.yaml")


def test_ordinary_anchors_and_merge_keys_for_many_servers_still_work():
    servers = "\n".join(f"  pg-{n}: {{<<: *pg, port: {5000 + n}}}" for n in range(2000))
    text = (
        "defaults:\n  pg: &pg {type: postgres, host: db.internal, user: backup, "
        'exclude: ["tmp_*", "scratch_*"]}\n'
        f"servers:\n{servers}\n"
    )
    data = parse_yaml(text, "fleet.yaml")
    assert data["servers"]["pg-1999"] == {
        "type": "postgres",
        "host": "db.internal",
        "user": "backup",
        "exclude": ["tmp_*", "scratch_*"],
        "port": 6999,
    }


def test_python_tags_are_refused():
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_yaml("x: !!python/object/apply:os.system ['true']\n", "x.yaml")


def test_automation_files_use_the_same_loader():
    from prefect_dbbackup.flows import automations

    assert automations.parse_yaml is parse_yaml  # one loader, no twin to drift
