"""tests/helpers_subprocess.py: a fresh Python process in which qgfd_hf cannot be imported."""

import importlib.util
import sys
import textwrap

import pytest

from helpers_subprocess import REPO_ROOT, run_without_qgfd_hf


def test_qgfd_hf_cannot_be_imported_there_though_it_can_here():
    assert importlib.util.find_spec("qgfd_hf") is not None  # importable in the test process
    out = run_without_qgfd_hf(
        """
        import os, sys
        try:
            import qgfd_hf
        except ModuleNotFoundError as e:
            print("blocked:", e)
        try:
            from qgfd_hf.scheduling_qgfd import q_sample
        except ModuleNotFoundError:
            print("blocked submodule")
        print("cwd:", os.getcwd())
        print("path:", sys.path)
        """
    )
    assert "blocked: import of qgfd_hf halted" in out
    assert "blocked submodule" in out
    cwd = out.split("cwd: ")[1].splitlines()[0]
    assert not cwd.startswith(str(REPO_ROOT))
    path = eval(out.split("path: ")[1].splitlines()[0])
    assert str(REPO_ROOT) not in path and "" not in path


@pytest.mark.parametrize("threads", [1, 2])
def test_the_child_computes_with_this_process_thread_count(threads):
    """A matmul's reduction order depends on the thread count: the child must use this process's,
    or a bitwise comparison between the two fails depending on what earlier tests set."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = run_without_qgfd_hf("import torch; print(torch.get_num_threads())")
    finally:
        torch.set_num_threads(before)
    assert out.split()[-1] == str(threads)


def test_failure_shows_the_childs_traceback():
    with pytest.raises(AssertionError, match="ZeroDivisionError"):
        run_without_qgfd_hf("1 / 0")


def test_the_child_cannot_reach_the_network():
    out = run_without_qgfd_hf(
        """
        import os, socket
        try:
            socket.create_connection(("huggingface.co", 443), timeout=1)
        except RuntimeError as e:
            print(e)
        print(os.environ["HF_HUB_OFFLINE"])
        """
    )
    assert "network refused" in out and out.split()[-1] == "1"


def test_the_child_can_download_from_the_hub_fixture(hub):
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo("user/files")
    api.upload_file(path_or_fileobj=b"hello from the stand-in", path_in_repo="a.txt", repo_id="user/files")
    out = run_without_qgfd_hf(
        """
        from huggingface_hub import hf_hub_download
        print(open(hf_hub_download("user/files", "a.txt")).read())
        """,
        offline=False,
    )
    assert out.strip() == "hello from the stand-in"


TOY_CODE = textwrap.dedent(
    '''
    import torch
    from transformers import PretrainedConfig, PreTrainedModel


    class ToyConfig(PretrainedConfig):
        model_type = "toy_remote"

        def __init__(self, width=4, **kwargs):
            self.width = width
            super().__init__(**kwargs)


    class ToyModel(PreTrainedModel):
        config_class = ToyConfig

        def __init__(self, config):
            super().__init__(config)
            self.proj = torch.nn.Linear(config.width, config.width)
            self.post_init()

        def forward(self, x):
            return self.proj(x)
    '''
)


def test_a_saved_custom_model_loads_there_with_trust_remote_code(tmp_path, monkeypatch):
    # The pattern issue 5 needs: classes registered for auto classes are copied into the
    # saved folder, which then loads in a process that has only transformers.
    import torch

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "toy_modeling.py").write_text(TOY_CODE)
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    import toy_modeling

    monkeypatch.setitem(sys.modules, "toy_modeling", toy_modeling)  # removed again at teardown
    toy_modeling.ToyConfig.register_for_auto_class()
    toy_modeling.ToyModel.register_for_auto_class("AutoModel")
    torch.manual_seed(0)
    model = toy_modeling.ToyModel(toy_modeling.ToyConfig())
    model.save_pretrained(tmp_path / "saved")
    expected = model(torch.ones(1, 4))

    out = run_without_qgfd_hf(
        f"""
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tmp_path / "saved")!r}, trust_remote_code=True)
        print(type(model).__module__)
        print(model(torch.ones(1, 4)).tolist())
        """
    )
    module, outputs = out.strip().splitlines()[-2:]
    assert module.startswith("transformers_modules.")
    torch.testing.assert_close(torch.tensor(eval(outputs)), expected.detach())
