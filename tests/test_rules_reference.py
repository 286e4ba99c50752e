"""The README's rule reference is generated from the models, and every rule the README
or the repository shows is one the loader accepts."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from conftest import REPO
from daemon.cli import main
from daemon.config import Settings
from daemon.rules import (
    DiffusionSettings,
    ImageOverrides,
    Match,
    MotionSettings,
    OutputSettings,
    ParamOverrides,
    Preset,
    Rule,
    RuleFileError,
    Variant,
    load_overrides,
    load_preset_file,
    load_rule_file,
)
from daemon.rules_reference import END, START, replace_between_markers, rules_reference_markdown

README = (REPO / "README.md").read_text(encoding="utf-8")
REGENERATE = (
    "regenerate it with `.venv/bin/python -m daemon.rules_reference --write README.md` "
    f"(the README needs the markers {START} and {END} around it)"
)


def test_readme_holds_the_generated_reference() -> None:
    assert START in README and END in README, f"README.md has no rule reference: {REGENERATE}"
    written = README.split(START, 1)[1].split(END, 1)[0]
    assert written.strip() == rules_reference_markdown().strip(), (
        f"README.md's rule reference is not what the models say: {REGENERATE}"
    )


def test_reference_covers_every_field() -> None:
    text = rules_reference_markdown()
    for model, prefix in ((Preset, ""), (ImageOverrides, "")):
        for name in model.model_fields:
            assert f"| `{prefix}{name}` |" in text, name
    for name in Rule.model_fields:
        if name != "preset_values":
            assert f"| `{name}` |" in text, name
    assert "preset_values" not in text
    blocks: list[tuple[str, type[BaseModel]]] = [
        ("match", Match),
        ("params", ParamOverrides),
        ("output", OutputSettings),
        ("variants[]", Variant),
        ("motion", MotionSettings),
        ("diffusion", DiffusionSettings),
    ]
    for block, nested in blocks:
        for name in nested.model_fields:
            assert f"| `{block}.{name}` |" in text, f"{block}.{name}"
    # Types, allowed values, ranges and defaults come from the models.
    assert "| `params.frames` | integer or null | 8–32 | none |" in text  # noqa: RUF001
    assert "| `engine` | text | `diffusion`, `motion` | `motion` |" in text
    assert "| `name` | text | 1–100 characters; matching " in text  # noqa: RUF001
    assert "| `resolution` | integer | `256`, `512`, `768`, `1024` | required |" in text


def test_reference_is_a_printable_module() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "daemon.rules_reference"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout == rules_reference_markdown()


def test_write_replaces_only_between_the_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nbefore\n{START}\nold text\n{END}\nafter\n", encoding="utf-8")
    from daemon.rules_reference import main as reference_main

    assert reference_main(["--write", str(readme)]) == 0
    assert readme.read_text(encoding="utf-8") == (
        f"# Title\n\nbefore\n{START}\n{rules_reference_markdown()}{END}\nafter\n"
    )
    with pytest.raises(ValueError, match="markers"):
        replace_between_markers("no markers", "x")


# --- every rule shown is a rule the loader takes ----------------------------------------

RULE_ONLY = set(Rule.model_fields) - set(ImageOverrides.model_fields) - {"preset_values"}


def yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", README, flags=re.S)


def test_readme_yaml_blocks_load_through_the_loaders(tmp_path: Path) -> None:
    """Beyond test_readme's model check: each block is written to a file and loaded the
    way the daemon loads it (rule files with the default name and presets, preset files,
    image overrides), so line-level problems and loader-only rules count too."""
    kinds: list[str] = []
    for index, block in enumerate(yaml_blocks()):
        data = yaml.safe_load(block)
        assert isinstance(data, dict), block
        path = tmp_path / f"block{index}.yaml"
        path.write_text(block, encoding="utf-8")
        try:
            if set(data) & RULE_ONLY:
                load_rule_file(path)
                kinds.append("rule")
            elif set(data) == set(Preset.model_fields):
                load_preset_file(path)
                kinds.append("preset")
            elif set(data) <= set(ImageOverrides.model_fields):
                load_overrides(path)
                kinds.append("overrides")
            else:
                Settings(**data)
                kinds.append("settings")
        except RuleFileError as exc:
            pytest.fail(f"README block {index} does not load:\n{exc}\n{block}")
    assert "rule" in kinds


def test_readme_rule_examples_pass_rules_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Together, in one rules folder, the README's rules pass `i2vd rules check`,
    templates included (each under its own file name, so names cannot clash)."""
    for index, block in enumerate(yaml_blocks()):
        data = yaml.safe_load(block)
        if set(data) & RULE_ONLY:
            data["name"] = f"readme-{index}"
            (tmp_path / f"readme-{index}.yaml").write_text(yaml.safe_dump(data), "utf-8")
    assert main(["rules", "check", str(tmp_path)]) == 0, capsys.readouterr().out


def test_shipped_rules_pass_rules_check(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules", "check", str(REPO / "rules")]) == 0
    out, err = capsys.readouterr()
    assert out == ""
    count = len(list((REPO / "rules").glob("*.yaml")))
    assert err == f"{count} rule{'' if count == 1 else 's'} ok, no problems\n"
