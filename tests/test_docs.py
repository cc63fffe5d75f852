"""The README and docs/ stay true: their links and anchors resolve, and every launch.py command they
show uses flags launch.py defines and config fields its config has."""
import importlib
import pathlib
import re

import pytest

from dg_jax import sweep

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def slug(heading: str) -> str:
  """GitHub's anchor of a heading."""
  return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: pathlib.Path) -> set[str]:
  text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
  return {slug(m) for m in re.findall(r"^#+ (.*)$", text, flags=re.M)}


def commands(page: pathlib.Path) -> list[str]:
  blocks = re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S)
  lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
  return [line.split("#")[0] for line in lines if "launch.py" in line]


def test_links_and_anchors_resolve():
  for page in PAGES:
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
      if target.startswith(("http://", "https://")):
        continue
      path, _, anchor = target.partition("#")
      file = (page.parent / path).resolve() if path else page
      assert file.exists(), f"{page.name}: link to {target}: no such file"
      if anchor and file.suffix == ".md":
        assert anchor in anchors(file), f"{page.name}: link to {target}: no such heading in {file.name}"


def test_commands_use_real_flags_and_config_fields():
  defined = set(re.findall(r'DEFINE_\w+\(\s*"(\w+)"', (ROOT / "launch.py").read_text()))
  seen = 0
  for page in PAGES:
    for command in commands(page):
      config = re.search(r"--config=configs/(\w+)\.py(?::(\w+))?", command)
      module = importlib.import_module(f"configs.{config.group(1)}") if config else None
      c = (module.get_config(config.group(2)) if config.group(2) else module.get_config()) if module else None
      for flag in re.findall(r"(?<![\w-])--([\w.]+)", command[command.index("launch.py"):]):
        if flag.isupper() or flag.split(".")[-1].isupper():  # a placeholder: --config.FIELD=VALUE
          continue
        if flag.startswith("config."):
          assert c is not None, f"{page.name}: {command!r}: --{flag} without --config"
          node = c
          for part in flag.split(".")[1:]:
            assert part in node, f"{page.name}: {command!r}: --{flag} is not a field of the config"
            node = node[part]
        else:
          assert flag in defined, f"{page.name}: {command!r}: launch.py has no flag --{flag}"
        seen += 1
      for kind, text in re.findall(r'--(variants|grid)="([^"]*)"', command):  # their settings are fields too
        variants = sweep.parse_variants(text) if kind == "variants" else sweep.parse_grid(text)
        sweep.resolve(c, variants)
  assert seen > 50


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_pages_are_linked_from_the_readme(page):
  assert page.name == "README.md" or f"](docs/{page.name}" in (ROOT / "README.md").read_text()
