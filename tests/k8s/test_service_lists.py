"""The Kubernetes lists that name every service are generated from the registry and never stale."""

import shutil

from k8s_support import REPO

from tools.deploy import service_lists


def copy_of_the_manifests(tmp_path):
    """The parts of the tree the generator reads and writes."""
    shutil.copytree(REPO / "k8s", tmp_path / "k8s")
    (tmp_path / "mk").mkdir()
    shutil.copy(REPO / "mk/k8s.mk", tmp_path / "mk")
    shutil.copy(REPO / "kustomization.yaml", tmp_path)
    return tmp_path


def test_the_committed_lists_are_what_make_manifests_writes(capsys):
    assert service_lists.main(["--check"]) == 0, capsys.readouterr().err


def test_a_hand_edited_list_is_reported_stale_and_rewritten(tmp_path, capsys):
    root = copy_of_the_manifests(tmp_path)
    base = root / "k8s/base/kustomization.yaml"
    base.write_text(base.read_text().replace("  - tts\n", ""))
    assert service_lists.main(["--check", "--root", str(root)]) == 1
    assert "k8s/base/kustomization.yaml is stale: run `make manifests`" in capsys.readouterr().err
    assert service_lists.main(["--root", str(root)]) == 0
    assert "  - tts\n" in base.read_text()
    assert service_lists.main(["--check", "--root", str(root)]) == 0


def test_the_release_tag_follows_mk_k8s_mk(tmp_path):
    root = copy_of_the_manifests(tmp_path)
    make = root / "mk/k8s.mk"
    make.write_text(make.read_text().replace("IMAGE_TAG ?= 0.1.0", "IMAGE_TAG ?= 0.2.0"))
    generated = service_lists.generate(root)
    for path in ("kustomization.yaml", "k8s/components/release-images/kustomization.yaml"):
        assert generated[root / path].count('newTag: "0.2.0"') >= 5, path
        assert "0.1.0" not in generated[root / path]
