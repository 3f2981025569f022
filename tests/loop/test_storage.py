"""Adapters on shared storage: published by the worker that trains, fetched by one that needs them."""

import pytest
from celery import current_app

from annotation.models import Prompt, Task
from feedback_loop import services, storage, tasks
from feedback_loop.models import Adapter, Round
from tests.loop.conftest import make_feedback


@pytest.fixture
def shared(settings, artifacts, tmp_path):
    """An fsspec URL as the shared storage: in memory, unique to the test."""
    settings.REFINERY_ARTIFACTS_URL = f"memory://{tmp_path.name}/shared/"
    import fsspec

    yield fsspec.filesystem("memory"), f"/{tmp_path.name}/shared"


def _adapter_folder(artifacts, project_id=7, number=1):
    folder = artifacts / "adapters" / str(project_id) / f"round-{number}"
    (folder / "checkpoints" / "step-2").mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    (folder / "adapter_config.json").write_text("{}")
    (folder / "checkpoints" / "step-2" / "state.pt").write_bytes(b"resume me")
    return folder


def test_a_published_adapter_is_fetched_whole_on_a_machine_that_lacks_it(shared, artifacts):
    fs, root = shared
    folder = _adapter_folder(artifacts)

    url = storage.artifact_publish(folder)

    assert url.endswith("/shared/adapters/7/round-1")
    assert fs.cat(f"{root}/adapters/7/round-1/adapter_model.safetensors") == b"weights"
    assert not fs.exists(f"{root}/adapters/7/round-1/checkpoints")  # resuming is local
    assert storage.artifacts_list("adapters/7") == ["adapters/7/round-1"]

    for file in sorted(folder.rglob("*"), reverse=True):  # another machine: nothing here
        file.rmdir() if file.is_dir() else file.unlink()
    folder.rmdir()
    fetched = storage.artifact_fetch(folder)

    assert fetched == folder
    assert (folder / "adapter_model.safetensors").read_bytes() == b"weights"
    assert (folder / "adapter_config.json").read_text() == "{}"
    assert not folder.with_name("round-1.fetching").exists()


def test_a_fetch_that_meets_a_full_disk_leaves_no_half_folder(shared, artifacts, monkeypatch):
    import errno
    import shutil

    from fsspec.implementations.memory import MemoryFileSystem

    folder = _adapter_folder(artifacts)
    storage.artifact_publish(folder)
    shutil.rmtree(folder)  # another machine: nothing here
    real_get = MemoryFileSystem.get_file
    fetched = []

    def full_after_one(self, remote, local, *args, **kwargs):
        if fetched:
            raise OSError(errno.ENOSPC, "No space left on device", local)
        fetched.append(remote)
        return real_get(self, remote, local, *args, **kwargs)

    monkeypatch.setattr(MemoryFileSystem, "get_file", full_after_one)
    with pytest.raises(OSError, match="No space left on device"):
        storage.artifact_fetch(folder)
    assert fetched, "the first file was fetched before the disk was full"
    assert not folder.exists() and not folder.with_name("round-1.fetching").exists()


def test_without_shared_storage_artifacts_stay_in_the_local_folder(settings, artifacts):
    settings.REFINERY_ARTIFACTS_URL = ""
    folder = _adapter_folder(artifacts)

    assert storage.artifact_publish(folder) is None
    assert storage.artifact_fetch(folder) == folder
    assert storage.artifacts_list("adapters/7") == ["adapters/7/round-1"]


def test_an_adapter_missing_here_and_there_is_an_error_that_names_both(shared, artifacts):
    with pytest.raises(FileNotFoundError, match="neither here nor at memory://"):
        storage.artifact_fetch(artifacts / "adapters" / "7" / "round-9")


@pytest.mark.slow
def test_a_round_publishes_its_adapter_and_a_worker_elsewhere_writes_outputs_with_it(
    transactional_db, settings, shared, project, bob, loop_config
):
    fs, root = shared
    settings.CELERY_TASK_ALWAYS_EAGER = True
    before, current_app.conf.task_always_eager = current_app.conf.task_always_eager, True
    try:
        make_feedback(project, bob, 2, fix="The landlord must fix the heating soon.")
        Task.objects.update(status=Task.Status.COMPLETE)
        round = services.round_start(project=project, user=None)
        round.refresh_from_db()
        assert round.state == Round.State.DONE, round.error
        adapter = Adapter.objects.get(round=round)
        remote = f"{root}/adapters/{project.pk}/round-1"
        assert fs.exists(f"{remote}/adapter_model.safetensors")
        assert not fs.exists(f"{remote}/checkpoints")

        # A GPU worker on another machine has no copy: the active adapter is fetched on first use.
        import shutil

        shutil.rmtree(adapter.path)
        Prompt.objects.create(project=project, external_id="new", text="Summarise this post.", context="x")
        tasks.first_outputs(project.pk, limit=1)
        assert (adapter.round.adapter_dir() / "adapter_model.safetensors").exists()
    finally:
        current_app.conf.task_always_eager = before
