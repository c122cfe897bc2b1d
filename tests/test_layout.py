"""The package's layout: no module over 800 lines, and none much over 600 (the issue's "about 600").

Modules still over the limit are listed with the size they may not pass while they wait to be
split (each entry can only shrink: lower it, or remove it, when a module gets smaller).
"""

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "qgfd_hf"
LIMIT = 800
# Every module was split to about 600 lines or fewer (the longest, configuration_qgfd.py, has 610);
# a module that grows past this is due to be split.
SOFT_LIMIT = 620

# module (relative to qgfd_hf/) -> the most lines it may have until it is split below LIMIT
WAITING_TO_BE_SPLIT = {
}


def module_sizes():
    return {str(p.relative_to(PACKAGE)): len(p.read_text(encoding="utf-8").splitlines()) for p in PACKAGE.rglob("*.py")}


def test_no_module_passes_800_lines():
    too_long = {name: n for name, n in module_sizes().items()
                if n > WAITING_TO_BE_SPLIT.get(name, LIMIT)}
    assert not too_long, f"modules over their limit ({LIMIT} lines, or their entry in WAITING_TO_BE_SPLIT): {too_long}"


def test_the_waiting_list_only_names_modules_that_are_still_too_long():
    sizes = module_sizes()
    stale = {name: sizes.get(name) for name in WAITING_TO_BE_SPLIT if sizes.get(name, 0) <= LIMIT}
    assert not stale, f"these modules are at or under {LIMIT} lines (or gone): remove them from WAITING_TO_BE_SPLIT: {stale}"


def test_no_module_passes_about_600_lines():
    too_long = {name: n for name, n in module_sizes().items() if n > SOFT_LIMIT}
    assert not too_long, f"modules over about 600 lines ({SOFT_LIMIT}): split them by concern: {too_long}"
