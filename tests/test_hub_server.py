"""The local Hub stand-in (tests/hub_server.py) and the `hub` fixture (tests/conftest.py).

A tiny BERT (width 16, 1 layer) and a tokenizer built from an in-memory vocab go through
`push_to_hub` and come back through `from_pretrained` / `pipeline`, without the network.
"""

import socket
import time
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard, ModelCardData, constants, create_repo, hf_hub_download, snapshot_download
from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel, BertTokenizer, pipeline

from hub_server import BlockedNetworkAccess

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "the", "a"]


def tiny_bert(seed=0):
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=16,
    )
    return BertModel(config).eval()


def tiny_tokenizer():
    return BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)})


def test_push_then_from_pretrained_gives_identical_outputs(hub):
    model, tok = tiny_bert(), tiny_tokenizer()
    model.push_to_hub("user/tiny")
    tok.push_to_hub("user/tiny")

    files = hub.list_files("user/tiny")
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"):
        assert name in files
    assert hub.list_commits("user/tiny") == ["Upload tokenizer", "Upload model", "initial commit"]

    loaded = AutoModel.from_pretrained("user/tiny").eval()
    loaded_tok = AutoTokenizer.from_pretrained("user/tiny")
    batch = loaded_tok(["hello world", "the world"], return_tensors="pt", padding=True)
    assert batch["input_ids"].tolist() == tok(["hello world", "the world"], padding=True)["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).last_hidden_state, model(**batch).last_hidden_state, rtol=0, atol=0)
    assert any(path.startswith("/user/tiny/resolve/") for _, path in hub.requests)


def test_pipeline_loads_model_and_tokenizer_from_the_hub(hub):
    model, tok = tiny_bert(), tiny_tokenizer()
    model.push_to_hub("user/tiny")
    tok.push_to_hub("user/tiny")
    features = pipeline("feature-extraction", model="user/tiny", device="cpu")("hello world")
    with torch.no_grad():
        expected = model(**tok("hello world", return_tensors="pt")).last_hidden_state
    torch.testing.assert_close(torch.tensor(features), expected)


def test_processor_push_and_load(hub):
    from transformers import AutoFeatureExtractor, Wav2Vec2FeatureExtractor

    Wav2Vec2FeatureExtractor(sampling_rate=8000, feature_size=1).push_to_hub("user/audio")
    assert "preprocessor_config.json" in hub.list_files("user/audio")
    loaded = AutoFeatureExtractor.from_pretrained("user/audio")
    assert isinstance(loaded, Wav2Vec2FeatureExtractor) and loaded.sampling_rate == 8000


def test_second_push_makes_a_new_commit_and_loads_the_new_weights(hub):
    model = tiny_bert()
    first = model.push_to_hub("user/tiny")
    AutoModel.from_pretrained("user/tiny")  # fills the download cache at the first commit

    model.push_to_hub("user/tiny")  # nothing changed: huggingface_hub skips the empty commit
    assert hub.list_commits("user/tiny") == ["Upload model", "initial commit"]

    with torch.no_grad():
        model.pooler.dense.bias.add_(1.0)
    second = model.push_to_hub("user/tiny", commit_message="Bump the pooler bias")
    assert second.oid != first.oid
    assert hub.list_commits("user/tiny")[0] == "Bump the pooler bias"

    reloaded = AutoModel.from_pretrained("user/tiny")
    torch.testing.assert_close(reloaded.pooler.dense.bias, model.pooler.dense.bias)
    old = AutoModel.from_pretrained("user/tiny", revision=first.oid)
    torch.testing.assert_close(old.pooler.dense.bias, model.pooler.dense.bias - 1.0)


def test_missing_repo_file_or_revision_gives_the_usual_errors_quickly(hub):
    start = time.monotonic()
    with pytest.raises(OSError, match="not a valid model identifier"):
        AutoModel.from_pretrained("user/missing")

    create_repo("user/empty")  # holds only .gitattributes
    with pytest.raises(OSError, match=r"does not appear to have a file named .*model\.safetensors"):
        BertModel.from_pretrained("user/empty")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download("user/empty", "config.json")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("user/empty", ".gitattributes", revision="no-such-branch")
    assert time.monotonic() - start < 20  # errors, not retries or hangs


def test_hfapi_upload_folder_tree_snapshot_and_branches(hub, tmp_path):
    api = HfApi()
    url = api.create_repo("user/files")
    assert url.repo_id == "user/files" and url.startswith(hub.endpoint)
    assert api.create_repo("user/files", exist_ok=True).repo_id == "user/files"
    assert create_repo("bare").repo_id == "user/bare"  # no namespace: the fake user's

    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.txt").write_text("a")
    (folder / "b.bin").write_bytes(bytes(range(256)) * 64)
    api.upload_folder(repo_id="user/files", folder_path=folder, commit_message="folder")
    assert hub.list_files("user/files") == [".gitattributes", "b.bin", "sub/a.txt"]

    tree = {e.path: type(e).__name__ for e in api.list_repo_tree("user/files", recursive=True)}
    assert tree == {".gitattributes": "RepoFile", "b.bin": "RepoFile", "sub": "RepoFolder", "sub/a.txt": "RepoFile"}
    assert [e.path for e in api.list_repo_tree("user/files", path_in_repo="sub")] == ["sub/a.txt"]

    local = snapshot_download("user/files")
    assert hub.cache_dir.resolve() in Path(local).resolve().parents
    assert open(f"{local}/b.bin", "rb").read() == (folder / "b.bin").read_bytes()
    assert open(f"{local}/sub/a.txt").read() == "a"

    api.create_branch("user/files", branch="dev")
    api.upload_file(path_or_fileobj=b"dev", path_in_repo="dev.txt", repo_id="user/files", revision="dev")
    assert "dev.txt" in hub.list_files("user/files", revision="dev")
    assert "dev.txt" not in hub.list_files("user/files")
    pr = api.upload_file(path_or_fileobj=b"pr", path_in_repo="pr.txt", repo_id="user/files", create_pr=True)
    assert pr.pr_revision == "refs/pr/1" and "pr.txt" in hub.list_files("user/files", revision="refs/pr/1")

    api.delete_file("sub/a.txt", repo_id="user/files")
    assert hub.list_files("user/files") == [".gitattributes", "b.bin"]


def test_model_card_push_validates_metadata_and_fills_model_info(hub):
    create_repo("user/card")
    data = ModelCardData(library_name="qgfd_hf", pipeline_tag="text-generation", tags=["qgfd"])
    ModelCard.from_template(data, model_description="A card.").push_to_hub("user/card")
    info = HfApi().model_info("user/card")
    assert (info.library_name, info.pipeline_tag, info.tags) == ("qgfd_hf", "text-generation", ["qgfd"])
    assert info.sha == HfApi().repo_info("user/card").sha

    bad = ModelCard("---\npipeline_tag: not-a-task\n---\n# Card\n")
    with pytest.raises(ValueError, match="pipeline_tag"):  # ModelCard.validate -> validate-yaml
        bad.push_to_hub("user/card")


def test_fixture_redirects_huggingface_hub_and_refuses_the_network(hub):
    assert constants.ENDPOINT == hub.endpoint
    with pytest.raises(BlockedNetworkAccess):
        socket.create_connection(("huggingface.co", 443), timeout=1)
    with pytest.raises(BlockedNetworkAccess, match="huggingface.co"):
        HfApi(endpoint="https://huggingface.co").model_info("openai-community/gpt2")
    assert len(hub.guard.blocked) == 2  # the fixture would fail this test at teardown ...
    hub.guard.blocked.clear()  # ... unless the test owns up to it, as here


def test_unknown_route_is_a_501_that_the_fixture_reports(hub):
    import httpx2

    response = httpx2.get(f"{hub.endpoint}/api/spaces/user/x/runtime")
    assert response.status_code == 501 and "does not implement" in response.json()["error"]
    assert hub.unhandled == [("GET", "/api/spaces/user/x/runtime")]
    hub.allow_unhandled = True


def test_fixture_settings_are_undone_afterwards(tmp_path):
    from conftest import point_huggingface_hub_at

    before = (constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE, constants.HF_HUB_CACHE)
    with pytest.MonkeyPatch.context() as mp:
        point_huggingface_hub_at("http://127.0.0.1:1", mp, str(tmp_path))
        assert constants.HUGGINGFACE_CO_URL_TEMPLATE.startswith("http://127.0.0.1:1/")
        assert HfApi().endpoint == "http://127.0.0.1:1"
    assert (constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE, constants.HF_HUB_CACHE) == before
