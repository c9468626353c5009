"""LLMSpawner's shortcuts on the manifest path give what kubespawner's full path gives.

The spawner skips kubespawner's template expansion for strings without braces, and reuses the
kubespawner traits mapped from the same workload over the same configured values
(benchmarks/spawn_overhead.py measures why). These tests pin that the results do not change.
"""

import pytest
from kubespawner import KubeSpawner
from traitlets.config import Config

from .conftest import pod_for

TEMPLATES = [
    "",
    "llm-storage",
    "/storage/users/alice",
    "trailing-",
    "{username}",
    "jupyter-{user_server}",
    "/home/{unescaped_username}/{servername}",
    "claim-{username}--{servername}",
    "{{literal}}",
    "a-{{b}}-",
]


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("username", ["alice", "Bob.Smith@example.org"])
async def test_expansion_equals_kubespawners(make_spawner, template, username):
    spawner = make_spawner(username)
    assert spawner._expand_user_properties(template) == KubeSpawner._expand_user_properties(
        spawner, template
    )


async def test_an_unbalanced_brace_still_fails_as_in_kubespawner(make_spawner):
    spawner = make_spawner("alice")
    for template in ("a}b", "{unclosed"):
        with pytest.raises(ValueError):
            KubeSpawner._expand_user_properties(spawner, template)
        with pytest.raises(ValueError):
            spawner._expand_user_properties(template)


async def test_a_trait_changed_in_place_does_not_reach_the_next_spawn(make_spawner):
    spawner = make_spawner("alice")
    first = await pod_for(spawner, {"profile": "medium"})
    # kubespawner's _apply_overrides (and a pre_spawn_hook) may change list/dict traits in place.
    spawner.volumes.append({"name": "stray", "emptyDir": {}})
    spawner.extra_labels["stray"] = "yes"
    spawner.node_selector.clear()
    second = await pod_for(spawner, {"profile": "medium"})
    assert second["spec"]["volumes"] == first["spec"]["volumes"]
    assert second["metadata"]["labels"] == first["metadata"]["labels"]
    assert second["spec"]["nodeSelector"] == first["spec"]["nodeSelector"]


async def test_same_profile_again_gives_the_same_pod_and_another_profile_its_own(make_spawner):
    spawner = make_spawner("alice")
    medium = await pod_for(spawner, {"profile": "medium"})
    cpu = await pod_for(spawner, {"profile": "cpu"})
    again = await pod_for(spawner, {"profile": "medium"})
    fresh = await pod_for(make_spawner("alice"), {"profile": "medium"})
    assert cpu["spec"].get("nodeSelector") is None
    assert again == medium == fresh


async def test_a_callable_security_context_is_resolved_at_every_spawn(make_spawner):
    calls = []

    def context(spawner):
        calls.append(spawner.user.name)
        return {"runAsGroup": 100 + len(calls)}

    c = Config()
    c.LLMSpawner.container_security_context = context
    spawner = make_spawner("alice", c)
    first = await pod_for(spawner, {"profile": "cpu"})
    second = await pod_for(spawner, {"profile": "cpu"})
    sc1 = first["spec"]["containers"][0]["securityContext"]
    sc2 = second["spec"]["containers"][0]["securityContext"]
    assert (sc1["runAsGroup"], sc2["runAsGroup"]) == (101, 102)
