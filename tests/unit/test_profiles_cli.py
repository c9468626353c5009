"""``llmspawner profiles check`` and ``llmspawner profiles render`` (the operator commands)."""

import kubernetes_validate
import yaml

from llmspawner.cli import main
from llmspawner.hubconfig import REPO_PROFILES


def test_check_shipped_profiles(capsys):
    assert main(["profiles", "check"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in out[:4]] == [
        ["ok", "cpu.yaml", "cpu"],
        ["ok", "small.yaml", "small"],
        ["ok", "medium.yaml", "medium"],
        ["ok", "large.yaml", "large"],
    ]
    assert out[0].endswith("(default)")
    assert out[-1] == f"4 profiles in {REPO_PROFILES} are valid"


def test_check_broken_folder(tmp_path, capsys):
    (tmp_path / "a.yaml").write_text("slug: a\ndisplay_name: A\ndefault: true\ngpu: {mig: 10gb}\n")
    assert main(["profiles", "check", str(tmp_path)]) == 1
    assert capsys.readouterr().err == (
        "error: a.yaml: gpu.mig: '10gb' is not a MIG profile name; expected <n>g.<memory>gb "
        "such as 1g.10gb, 2g.20gb, 3g.40gb, 7g.80gb\n"
    )


def test_check_with_cluster_replica_counts(tmp_path, capsys):
    (tmp_path / "a.yaml").write_text(
        "slug: a\ndisplay_name: A\ndefault: true\ngpu: {fraction: 1/8}\n"
    )
    assert main(["profiles", "check", str(tmp_path)]) == 1
    assert "allowed: 1/2, 1/4" in capsys.readouterr().err
    assert main(["profiles", "check", str(tmp_path), "--replica-counts", "8"]) == 0


def test_render_pod(capsys, stub_kubeconfig):
    assert (
        main(["profiles", "render", "--user", "alice", "--profile", "medium", "--namespace", "llm"])
        == 0
    )
    pod = yaml.safe_load(capsys.readouterr().out)
    assert (pod["apiVersion"], pod["kind"]) == ("v1", "Pod")
    assert (pod["metadata"]["name"], pod["metadata"]["namespace"]) == ("jupyter-alice", "llm")
    container = pod["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.replicas": "2"}
    assert container["workingDir"] == "/storage/users/alice"
    kubernetes_validate.validate(pod, "1.32", strict=True)


def test_render_refuses_what_the_hub_refuses(tmp_path, capsys, stub_kubeconfig):
    (tmp_path / "cpu.yaml").write_text("slug: cpu\ndisplay_name: CPU\ndefault: true\n")
    (tmp_path / "big.yaml").write_text(
        "slug: big\ndisplay_name: Big\ngpu: {count: 2}\nallowed_groups: [gpu-power]\n"
    )
    args = ["profiles", "render", "--user", "bob", "--profile", "big", "--dir", str(tmp_path)]
    assert main(args) == 2
    assert capsys.readouterr().err == (
        "error: Profile 'big' is only for members of the group(s) gpu-power; your profiles: cpu\n"
    )
    assert main([*args, "--group", "gpu-power"]) == 0
    pod = yaml.safe_load(capsys.readouterr().out)
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2


def test_check_reads_the_platform_settings_of_the_environment(tmp_path, monkeypatch, capsys):
    """In the hub's pod or a service, the folder and GPU settings come from the environment
    (LLMSPAWNER_PLATFORM, else LLMSPAWNER_*); an option wins over both."""
    from llmspawner.settings import LLMPlatform

    (tmp_path / "a.yaml").write_text(
        "slug: a\ndisplay_name: A\ndefault: true\ngpu: {fraction: 1/8}\n"
    )
    settings = LLMPlatform.from_env(
        {}, overrides={"profiles_dir": str(tmp_path), "gpu_replica_counts": [8]}
    )
    for name, value in settings.to_env().items():
        monkeypatch.setenv(name, value)
    assert main(["profiles", "check"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"1 profiles in {tmp_path} are valid"
    assert main(["profiles", "check", "--replica-counts", "2,4"]) == 1
    assert "allowed: 1/2, 1/4" in capsys.readouterr().err


def test_bad_option_or_setting_is_named(monkeypatch):
    import pytest

    with pytest.raises(SystemExit) as e:
        main(["profiles", "check", "--replica-counts", "2,x"])
    assert str(e.value) == "error: --replica-counts must be a whole number >= 0, not 'x'"
    monkeypatch.setenv("LLMSPAWNER_GPU_REPLICA_COUNTS", "1")
    with pytest.raises(SystemExit) as e:
        main(["profiles", "check"])
    assert str(e.value).startswith("error: LLMPlatform.gpu_replica_counts must list whole numbers")


def test_render_uses_the_platform_settings(capsys, stub_kubeconfig, monkeypatch):
    monkeypatch.setenv("LLMSPAWNER_STORAGE_CLAIM", "from-env")
    monkeypatch.setenv("LLMSPAWNER_NAMESPACE", "env-ns")
    assert main(["profiles", "render", "--user", "alice", "--image", "reg/img:7"]) == 0
    pod = yaml.safe_load(capsys.readouterr().out)
    assert pod["metadata"]["namespace"] == "env-ns"
    assert pod["spec"]["containers"][0]["image"] == "reg/img:7"
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "from-env"
