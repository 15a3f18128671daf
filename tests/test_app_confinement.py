"""The app serves only the directory it was started with: the "Runs directory" box cannot leave it by
`..`, an absolute path or a symlink, and a symlinked run pointing outside is not listed (AppTest)."""

import shutil

import pytest
from fixtures_run import TOPK_RUN, WIDE_K_RUN, build_fixture_runs
from test_app import open_app


@pytest.fixture(scope="module")
def outside(tmp_path_factory):
    """The shared fixture RUNS_DIR, which lies outside every served directory below."""
    return build_fixture_runs(tmp_path_factory.getbasetemp() / "saekit_runs")


@pytest.fixture
def served(tmp_path, outside):
    """served/mine (a real run), served/escape → outside/tiny (two runs), served/nested/loop → served."""
    root = tmp_path / "served"
    shutil.copytree(outside / TOPK_RUN, root / "mine")
    (root / "escape").symlink_to(outside / "tiny", target_is_directory=True)
    (root / "nested").mkdir()
    (root / "nested" / "loop").symlink_to(root, target_is_directory=True)
    return root


def type_runs_dir(root, text: str):
    """A fresh session of the app started with `root`, then `text` typed into the Runs directory box
    (fresh each time: AppTest re-runs only the page after an input, so the box is gone from the tree)."""
    at = open_app(root)
    at.sidebar.text_input(key="app_runs_dir_box").input(text).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def errors(at) -> list[str]:
    return [e.value for e in at.error]


def listed(at) -> list[str]:
    """Run names in the Overview page's runs table (AppTest re-runs only the page after an input)."""
    return list(at.dataframe[0].value["name"])


def test_only_runs_inside_the_start_directory_are_listed(served):
    at = open_app(served)
    assert at.sidebar.selectbox(key="app_run_box").options == ["mine"]
    assert listed(at) == ["mine"] and not errors(at)


@pytest.mark.parametrize("text", ["/", "/proc", "..", "../..", "{root}/..", "escape", "{root}/escape/topk"])
def test_a_path_outside_the_start_directory_is_one_line_error(served, text):
    at = type_runs_dir(served, text.format(root=served))
    messages = errors(at)
    assert messages and all("\n" not in m for m in messages)
    assert any("is outside" in m and str(served) in m and "saekit app DIR" in m for m in messages), messages
    assert not at.dataframe  # no runs table for a refused directory
    at.switch_page("pages/latents.py").run()  # other pages refuse it too, without a crash
    assert not at.exception and any("is outside" in m for m in errors(at))


def test_a_directory_inside_is_accepted_relative_or_absolute(served):
    at = type_runs_dir(served, "mine")
    assert listed(at) == ["."] and not errors(at)
    at = type_runs_dir(served, str(served / "mine" / ".." / "mine"))
    assert listed(at) == ["."] and not errors(at)
    at = type_runs_dir(served, str(served))  # the root itself
    assert listed(at) == ["mine"]


def test_a_symlink_loop_inside_is_harmless(served):
    at = type_runs_dir(served, "nested/loop")  # resolves to the root itself: allowed
    assert listed(at) == ["mine"]
    at = type_runs_dir(served, "bad\x00name")
    assert any("cannot use" in m for m in errors(at))


def test_the_start_directory_itself_may_be_a_symlink(tmp_path, outside):
    link = tmp_path / "link"
    link.symlink_to(outside, target_is_directory=True)
    at = open_app(link)
    assert at.sidebar.selectbox(key="app_run_box").options == [TOPK_RUN, WIDE_K_RUN]
