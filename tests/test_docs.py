"""The docs stay true: the README's two opening commands, the settings page, the links."""

from __future__ import annotations

import io
import re
from contextlib import redirect_stdout
from pathlib import Path

import settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_opens_with_the_run_and_test_commands_ci_uses():
    blocks = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    run, test = blocks[0].strip(), blocks[1].strip()
    assert run.endswith("python run.py") and "pip install -r requirements.txt" in run
    assert test in (ROOT / ".ci" / "run").read_text()


def test_the_settings_table_lists_every_setting_as_declared():
    out = io.StringIO()
    with redirect_stdout(out):
        settings.print_table()
    page = (ROOT / "docs" / "settings.md").read_text()
    table = page.split("<!-- settings-table -->")[1].split("<!-- /settings-table -->")[0]
    assert table.strip() == out.getvalue().strip(), (
        "regenerate it: python -c 'import settings; settings.print_table()'"
    )


def test_every_relative_link_in_the_readme_and_docs_resolves():
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if target.startswith(("http:", "https:", "mailto:")):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert broken == []
