"""The devcluster's pods are isolated as real ones where it matters to us (issue 14 §4): the
pod's hostname and FQDN resolve to its IP through its own /etc/hosts, capabilities are
containerd's default set with ``drop``/``add`` applied (so a root pod cannot unmount its view
and read another user's folder), a pod with no workingDir starts in the image's working folder,
the image's user applies when the pod sets none, and ``readOnlyRootFilesystem`` holds.

Capabilities and users need a kubelet that runs as root (as the dev stack and CI do);
elsewhere those tests are skipped.
"""

import asyncio
import os
import shutil
import subprocess

import pytest
from kubernetes_asyncio import client, config

from devcluster import isolation
from devcluster.testing import fast_cluster, wait_for

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(
    not ROOT, reason="identities and capabilities are applied only by a root kubelet"
)
#: What a container reports about its capabilities.
CAPS = "grep -E '^Cap(Eff|Prm|Bnd|Inh)' /proc/self/status"


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory):
    async with fast_cluster(tmp_path_factory.mktemp("devcluster-isolation")) as c:
        yield c


@pytest.fixture(scope="module")
async def core(cluster):
    api = await config.new_client_from_config(config_file=str(cluster.kubeconfig_path))
    async with api:
        core = client.CoreV1Api(api)
        await core.create_namespaced_persistent_volume_claim(
            "default",
            {
                "metadata": {"name": "storage"},
                "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {}}},
            },
        )
        yield core


def pod(name, *containers, **spec):
    return {
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"restartPolicy": "Never", "containers": list(containers), **spec},
    }


def sh(name, script, image="python", **container):
    return {"name": name, "image": image, "command": ["sh", "-c", script], **container}


async def finished(core, name):
    async def check():
        p = await core.read_namespaced_pod(name, "default")
        return p if p.status.phase in ("Succeeded", "Failed") else None

    return await wait_for(check, timeout=30, what=f"pod {name} finished")


async def logs(core, name, containers):
    return {c: await core.read_namespaced_pod_log(name, "default", container=c) for c in containers}


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def on_host(path):
    """Whether ``path`` exists on the host (in the tests' mount namespace)."""
    return os.path.lexists(path)


def host_bounding_set():
    """This process's (the kubelet's) bounding set: no container gets more."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1], 16) for line in f if line.startswith("CapBnd:"))


def mask(names):
    """The capability mask of ``names``, as /proc/<pid>/status writes it."""
    bits = sum(1 << isolation.CAPABILITIES[n] for n in names) & host_bounding_set()
    return f"{bits:016x}"


def caps_of(log):
    """``{"CapEff": hex, ...}`` from a container's `CAPS` output."""
    return dict(line.split(":\t") for line in log.splitlines() if line.startswith("Cap"))


async def test_hostname_and_fqdn_resolve_to_the_pod_ip_through_its_own_hosts_file(core):
    host_hosts = read_bytes("/etc/hosts")
    script = (
        "import socket; n = socket.gethostname(); "
        "print(n, socket.gethostbyname(n), socket.gethostbyname('web.db.default.svc.cluster."
        "local'), socket.gethostbyname('foo.local'), socket.gethostbyname('localhost'))"
    )
    aliases = [{"ip": "10.1.2.3", "hostnames": ["foo.local", "bar.local"]}]
    await core.create_namespaced_pod(
        "default",
        pod(
            "resolver",
            {"name": "main", "image": "python", "command": ["python", "-c", script]},
            {"name": "file", "image": "python", "command": ["cat", "/etc/hosts"]},
            hostname="web",
            subdomain="db",
            hostAliases=aliases,
        ),
    )
    await core.create_namespaced_pod(
        "default", pod("plain", sh("main", 'hostname; echo "$HOSTNAME"; cat /etc/hosts'))
    )
    done = await finished(core, "resolver")
    out = await logs(core, "resolver", ["main", "file"])
    assert done.status.phase == "Succeeded", out
    ip = done.status.pod_ip
    assert out["main"].split() == ["web", ip, ip, "10.1.2.3", "127.0.0.1"]
    assert out["file"] == (
        "# Kubernetes-managed hosts file.\n"
        "127.0.0.1\tlocalhost\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
        "fe00::0\tip6-localnet\n"
        "fe00::0\tip6-mcastprefix\n"
        "fe00::1\tip6-allnodes\n"
        "fe00::2\tip6-allrouters\n"
        f"{ip}\tweb.db.default.svc.cluster.local\tweb\n"
        "\n"
        "# Entries added by HostAliases.\n"
        "10.1.2.3\tfoo.local\tbar.local\n"
    )
    plain = await finished(core, "plain")
    lines = (await core.read_namespaced_pod_log("plain", "default")).splitlines()
    assert lines[:2] == ["plain", "plain"]
    assert lines[-1] == f"{plain.status.pod_ip}\tplain"  # no subdomain: the short name only
    assert read_bytes("/etc/hosts") == host_hosts


@needs_root
async def test_capabilities_default_drop_add_privileged_and_non_root(core):
    everything = list(isolation.CAPABILITIES)
    cases = {
        "default": ({}, isolation.DEFAULT_CAPABILITIES),
        "dropall": ({"capabilities": {"drop": ["ALL"], "add": ["CHOWN"]}}, ["CHOWN"]),
        "addsome": (
            {"capabilities": {"add": ["net_admin"], "drop": ["CHOWN", "KILL"]}},
            [
                c
                for c in (*isolation.DEFAULT_CAPABILITIES, "NET_ADMIN")
                if c not in ("CHOWN", "KILL")
            ],
        ),
        "privileged": (
            {"privileged": True, "capabilities": {"drop": ["SYS_ADMIN"]}},
            [c for c in everything if c != "SYS_ADMIN"],
        ),
    }
    containers = [
        sh(name, CAPS, securityContext={"runAsUser": 0, **sc}) for name, (sc, _) in cases.items()
    ]
    containers.append(
        sh("user", CAPS, securityContext={"runAsUser": 1000, "capabilities": {"add": ["ALL"]}})
    )
    await core.create_namespaced_pod("default", pod("caps", *containers))
    done = await finished(core, "caps")
    out = await logs(core, "caps", [*cases, "user"])
    assert done.status.phase == "Succeeded", out
    for name, (_, kept) in cases.items():
        want = mask(kept)
        assert caps_of(out[name]) == {
            "CapInh": "0" * 16,
            "CapPrm": want,
            "CapEff": want,
            "CapBnd": want,
        }, name
    # Not root: no capabilities, whatever the bounding set (the kernel clears them on setuid).
    assert caps_of(out["user"]) == {
        "CapInh": "0" * 16,
        "CapPrm": "0" * 16,
        "CapEff": "0" * 16,
        "CapBnd": mask(everything),
    }


@needs_root
async def test_a_root_pod_cannot_unmount_its_view_or_read_another_users_folder(cluster, core):
    """The attack of issue 14: root in alice's pod unmounts the hide-tmpfs over the kubelet's
    folders (or her view) to read bob's folder on the shared PVC. Without CAP_SYS_ADMIN
    (containerd's default set) every step fails; a privileged pod shows the test can fail."""
    users = cluster.data_dir / "pvc" / "default" / "storage" / "users"
    for user in ("alice", "bob"):
        (users / user).mkdir(parents=True, exist_ok=True)
    secret = users / "bob" / "secret.txt"
    secret.write_text("bob's secret\n")
    secret.chmod(0o600)
    data = cluster.data_dir
    attack = (
        f"umount /home/alice; echo umount-view=$?; umount {data}; echo umount-hide=$?; "
        "mount -t tmpfs none /mnt; echo mount=$?; "
        f"cat {secret} 2>/dev/null; echo read-secret=$?; ls -A {data} | wc -l"
    )
    volume = {"name": "storage", "persistentVolumeClaim": {"claimName": "storage"}}
    mount = {"name": "storage", "mountPath": "/home/alice", "subPath": "users/alice"}
    for name, sc in (
        ("root", {"runAsUser": 0}),
        ("alice", {"runAsUser": 1000, "capabilities": {"drop": ["ALL"]}}),
        ("privileged", {"runAsUser": 0, "privileged": True}),
    ):
        container = sh("main", attack, securityContext=sc, volumeMounts=[mount])
        await core.create_namespaced_pod("default", pod(name, container, volumes=[volume]))
    for name in ("alice", "root"):
        await finished(core, name)
        log = await core.read_namespaced_pod_log(name, "default")
        results = dict(line.split("=") for line in log.splitlines() if "=" in line)
        assert list(results) == ["umount-view", "umount-hide", "mount", "read-secret"], log
        assert "0" not in results.values(), (name, log)  # every step failed
        assert "bob's secret" not in log and log.splitlines()[-1] == "0", (name, log)
    # umount(8)'s "mount failure" status: the kernel's EPERM, not a missing path
    assert results["umount-view"] == "32"
    await finished(core, "privileged")
    log = await core.read_namespaced_pod_log("privileged", "default")
    assert "umount-hide=0" in log and "bob's secret" in log, log


async def test_no_working_dir_starts_in_the_images_folder_not_the_hosts_root(cluster, core):
    root_before = set(os.listdir("/"))
    await core.create_namespaced_pod(
        "default",
        pod(
            "nowd",
            sh("main", "pwd; touch made-by-pod && echo written"),
            sh("wd", "pwd", workingDir="/tmp"),
        ),
    )
    done = await finished(core, "nowd")
    out = await logs(core, "nowd", ["main", "wd"])
    assert done.status.phase == "Succeeded", out
    assert out["main"].splitlines() == [isolation.DEFAULT_WORKDIR, "written"]
    assert out["wd"].strip() == "/tmp"
    # The file is in the container's own folder (its "writable layer"), not on the host.
    assert not on_host("/made-by-pod")
    assert not on_host(os.path.join(isolation.DEFAULT_WORKDIR, "made-by-pod"))
    assert set(os.listdir("/")) - root_before <= {isolation.DEFAULT_WORKDIR.strip("/")}


@needs_root
async def test_the_images_user_applies_when_the_pod_sets_none(cluster, core):
    """The project's singleuser image runs as its Dockerfile's USER 1000 (group 100) in its
    WORKDIR; an image whose user is root is refused with runAsNonRoot, as a kubelet does; an
    image the kubelet knows nothing of runs as the kubelet's user (documented)."""
    cluster.kubelet.config.image_config["example/root-image"] = {"user": "0:0"}
    report = "id -u; id -g; pwd; touch mine && stat -c %u:%g mine"
    await core.create_namespaced_pod(
        "default",
        pod(
            "imageuser",
            sh("jovyan", report, image="llmspawner/singleuser:dev"),
            sh("unknown", "id -u", image="python"),
            # a volume at the WORKDIR (as z2jh mounts the home) is the working folder itself
            sh(
                "home",
                "pwd; touch in-home",
                image="llmspawner/singleuser",
                volumeMounts=[{"name": "home", "mountPath": "/home/jovyan"}],
            ),
            volumes=[{"name": "home", "emptyDir": {}}],
        ),
    )
    done = await finished(core, "imageuser")
    out = await logs(core, "imageuser", ["jovyan", "unknown", "home"])
    assert done.status.phase == "Succeeded", out
    assert out["jovyan"].splitlines() == ["1000", "100", "/home/jovyan", "1000:100"]
    assert out["unknown"].strip() == str(os.geteuid())
    assert out["home"].strip() == "/home/jovyan"
    pod_dir = f"pods/default_imageuser_{done.metadata.uid}"
    assert on_host(cluster.data_dir / pod_dir / "volumes/empty-dir/home/in-home")

    refused = pod(
        "nonroot",
        sh("main", "true", image="example/root-image:1", securityContext={"runAsNonRoot": True}),
    )
    await core.create_namespaced_pod("default", refused)

    async def waiting():
        p = await core.read_namespaced_pod("nonroot", "default")
        statuses = p.status.container_statuses or []
        state = statuses[0].state.waiting if statuses else None
        return (p, state) if state and state.reason == "CreateContainerConfigError" else None

    p, state = await wait_for(waiting, timeout=15, what="runAsNonRoot refused")
    assert state.message == (
        'container has runAsNonRoot and image will run as root (pod: "nonroot_default('
        f'{p.metadata.uid})", container: main)'
    )
    await core.delete_namespaced_pod("nonroot", "default", grace_period_seconds=0)


async def test_read_only_root_filesystem_keeps_volumes_writable(core):
    script = (
        "touch /var/tmp/x 2>/dev/null; echo root=$?; touch ./x 2>/dev/null; echo cwd=$?; "
        "touch /scratch/x; echo volume=$?; echo ok >> /etc/hosts; echo hosts=$?"
    )
    container = sh(
        "main",
        script,
        securityContext={"readOnlyRootFilesystem": True},
        volumeMounts=[{"name": "scratch", "mountPath": "/scratch"}],
    )
    await core.create_namespaced_pod(
        "default", pod("rofs", container, volumes=[{"name": "scratch", "emptyDir": {}}])
    )
    done = await finished(core, "rofs")
    log = await core.read_namespaced_pod_log("rofs", "default")
    assert done.status.phase == "Succeeded", log
    assert log.splitlines() == ["root=1", "cwd=1", "volume=0", "hosts=0"]
    assert not on_host("/var/tmp/x")


@pytest.mark.parametrize(
    ("security_context", "kept"),
    [
        ({"capabilities": {"add": ["ALL"], "drop": ["chown"]}}, "all but CHOWN"),
        ({"capabilities": {"drop": ["ALL"], "add": ["ALL"]}}, "none"),  # drop ALL comes after
        ({"capabilities": {"add": ["NO_SUCH_CAP", "CAP_CHOWN"]}}, "default"),  # ignored, as runc
        ({"privileged": False, "capabilities": {"drop": ["SETPCAP"]}}, "default but SETPCAP"),
    ],
)
def test_capability_rules_in_containerds_order(security_context, kept):
    every = set(isolation.CAPABILITIES)
    default = set(isolation.DEFAULT_CAPABILITIES)
    want = {
        "all but CHOWN": every - {"CHOWN"},
        "none": set(),
        "default": default,
        "default but SETPCAP": default - {"SETPCAP"},
    }[kept]
    got = isolation.capability_set({"name": "c", "securityContext": security_context})
    assert got == sorted(isolation.CAPABILITIES[c] for c in want)


def test_hostname_rules():
    long = {"metadata": {"name": "a" * 62 + "-b", "namespace": "n"}, "spec": {}}
    assert isolation.pod_hostname(long) == ("a" * 62, "")  # cut to 63, trailing '-' removed
    fqdn = {
        "metadata": {"name": "p", "namespace": "n"},
        "spec": {"hostname": "h", "subdomain": "s", "setHostnameAsFQDN": True},
    }
    assert isolation.pod_hostname(fqdn) == ("h", "h.s.n.svc.cluster.local")
    assert isolation.uts_hostname(fqdn) == "h.s.n.svc.cluster.local"
    with pytest.raises(ValueError, match=r"image_config\['x'\].user must be 'uid:gid'"):
        isolation.image_config("x", {"x": {"user": "jovyan"}})


@needs_root
async def test_kubectl_exec_into_a_root_pod_gets_the_containers_capabilities(cluster, core):
    """The same attack through ``kubectl exec`` (issue 14 §6): the exec'd command has the
    container's capability set, so it cannot unmount the hide-tmpfs either."""
    pytest.importorskip("devcluster.streams", reason="exec is issue 14 §6 (helper D)")
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    await core.create_namespaced_pod(
        "default", pod("sleeper", sh("main", "exec sleep 600", securityContext={"runAsUser": 0}))
    )

    async def running():
        p = await core.read_namespaced_pod("sleeper", "default")
        statuses = p.status.container_statuses or []
        return p if statuses and statuses[0].state.running else None

    await wait_for(running, timeout=30, what="pod sleeper running")
    script = f"{CAPS}; umount {cluster.data_dir}; echo umount-hide=$?"
    argv = ["kubectl", "--kubeconfig", str(cluster.kubeconfig_path), "-n", "default"]
    argv += ["exec", "sleeper", "--", "sh", "-c", script]
    result = await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    want = mask(isolation.DEFAULT_CAPABILITIES)
    assert caps_of(result.stdout) == {
        "CapInh": "0" * 16,
        "CapPrm": want,
        "CapEff": want,
        "CapBnd": want,
    }, result.stdout
    assert "umount-hide=32" in result.stdout, result.stdout
    await core.delete_namespaced_pod("sleeper", "default", grace_period_seconds=0)


async def test_a_volume_mounted_above_the_image_does_not_hide_it(core):
    # The kit's MLflow pod mounts an emptyDir at /tmp, and a clean clone (the "image": this
    # checkout's .venv and its editable install) may live in /tmp: in a real container the
    # image is its own root filesystem, so the volume must not hide it.
    from devcluster.kubelet import CHECKOUT

    above = os.path.dirname(str(CHECKOUT))
    if above == "/":
        pytest.skip("the checkout is a top-level folder: no folder above it to mount on")
    script = (
        "python -c 'import llmspawner, devcluster; print(\"image ok\")'; "
        f"touch {above}/written && echo volume=$?; ls -A {above} | sort | tr '\\n' ' '"
    )
    container = sh(
        "main",
        script,
        securityContext={"runAsUser": 1000, "runAsGroup": 1000},
        volumeMounts=[{"name": "above", "mountPath": above}],
    )
    await core.create_namespaced_pod(
        "default", pod("above", container, volumes=[{"name": "above", "emptyDir": {}}])
    )
    done = await finished(core, "above")
    log = await core.read_namespaced_pod_log("above", "default")
    assert done.status.phase == "Succeeded", log
    lines = log.splitlines()
    assert lines[:2] == ["image ok", "volume=0"], log
    # The volume's own content: the file written, and the image's mount point made in it as
    # runc makes a nested mount point; none of the host's other entries of that folder.
    assert lines[2].split() == sorted([CHECKOUT.name, "written"]), log
    assert not on_host(f"{above}/written")
