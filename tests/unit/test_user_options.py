"""User options from the form, the REST API and the admin panel: one check, 400/403."""

import textwrap
from types import SimpleNamespace

import pytest
from tornado import web
from traitlets.config import Config

from .conftest import pod_for


@pytest.fixture
def restricted_profiles(tmp_path):
    """The shipped layout plus a profile only for the group ``gpu-power``."""
    files = {
        "cpu.yaml": "slug: cpu\ndisplay_name: CPU\ndefault: true\n",
        "medium.yaml": "slug: medium\ndisplay_name: Half\ngpu: {fraction: 1/2}\n",
        "large.yaml": textwrap.dedent(
            """\
            slug: large
            display_name: Whole
            gpu: {count: 1}
            allowed_groups: [gpu-power, admins]
            """
        ),
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    c = Config()
    c.LLMPlatform.profiles_dir = str(tmp_path)
    return c


def with_groups(spawner, *names):
    spawner.user.groups = [SimpleNamespace(name=n) for n in names]
    return spawner


def refusal(spawner, options) -> tuple[int, str]:
    with pytest.raises(web.HTTPError) as e:
        spawner.apply_user_options(spawner, options)
    return e.value.status_code, e.value.log_message


async def test_valid_options_pass(make_spawner):
    spawner = with_groups(make_spawner("alice"))
    for options in ({}, {"profile": "cpu"}, {"profile": "medium"}, {"profile": "large"}):
        assert spawner.apply_user_options(spawner, options) is None


async def test_unknown_profile_is_400_listing_valid(make_spawner):
    spawner = with_groups(make_spawner("alice"))
    assert refusal(spawner, {"profile": "huge"}) == (
        400,
        "Unknown profile 'huge'; valid profiles: cpu, small, medium, large",
    )


async def test_unknown_option_is_400(make_spawner):
    spawner = with_groups(make_spawner("alice"))
    assert refusal(spawner, {"profile": "cpu", "image": "evil:latest"}) == (
        400,
        "Unknown option 'image'; the only option is 'profile'",
    )
    assert refusal(spawner, {"profile": ["cpu"]}) == (
        400,
        "Option 'profile' must be a string, one of: cpu, small, medium, large",
    )


async def test_group_restricted_profile(make_spawner, restricted_profiles):
    outsider = with_groups(make_spawner("bob", restricted_profiles), "users")
    assert [p.slug for p in outsider.allowed_profiles] == ["cpu", "medium"]
    assert refusal(outsider, {"profile": "large"}) == (
        403,
        "Profile 'large' is only for members of the group(s) gpu-power, admins; your profiles: cpu, medium",
    )
    member = with_groups(make_spawner("carol", restricted_profiles), "users", "gpu-power")
    assert [p.slug for p in member.allowed_profiles] == ["cpu", "medium", "large"]
    assert member.apply_user_options(member, {"profile": "large"}) is None


async def test_form_offers_only_allowed_profiles(make_spawner, restricted_profiles):
    outsider = with_groups(make_spawner("bob", restricted_profiles), "users")
    entries = await outsider.profile_list(outsider)
    assert [e["slug"] for e in entries] == ["cpu", "medium"]
    form = await outsider._render_options_form_dynamically(outsider)
    assert 'value="medium"' in form
    assert 'value="large"' not in form
    member = with_groups(make_spawner("carol", restricted_profiles), "gpu-power")
    pod = await pod_for(member, {"profile": "large"})
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


async def test_refused_options_are_not_kept(make_spawner):
    """JupyterHub stores a start's options before the check (``User.spawn``): a refusal puts
    the last accepted ones back, in the spawner and the hub's database (committed)."""
    commits = []
    spawner = make_spawner("alice")
    spawner.orm_spawner = SimpleNamespace(user_options={"profile": "medium"}, server=None, name="")
    spawner.db = SimpleNamespace(commit=lambda: commits.append(1))
    spawner.user_options = {"profile": "medium"}
    spawner.check_user_options(spawner, {"profile": "medium"})  # accepted: the last one
    # The hub's next start stores its options first, then asks.
    spawner.orm_spawner.user_options = spawner.user_options = {"profile": "nope"}
    with pytest.raises(web.HTTPError) as e:
        spawner.check_user_options(spawner, {"profile": "nope"})
    assert e.value.status_code == 400
    assert spawner.orm_spawner.user_options == spawner.user_options == {"profile": "medium"}
    assert commits == [1]
    # An accepted start is kept (the hub has stored it already): nothing to restore.
    spawner.orm_spawner.user_options = spawner.user_options = {"profile": "cpu"}
    spawner.check_user_options(spawner, {"profile": "cpu"})
    assert spawner.orm_spawner.user_options == {"profile": "cpu"}
    assert commits == [1]


async def test_the_stored_options_at_construction_are_the_accepted_ones(make_spawner):
    """After a hub restart the spawner is made with the stored options: those are restored."""
    from llmspawner.spawner import LLMSpawner

    c = Config()
    c.LLMPlatform.profiles_dir = make_spawner("x").platform.profiles_dir
    user = SimpleNamespace(name="alice", id=1, url="/user/alice/", groups=[])
    spawner = LLMSpawner(config=c, user=user, _mock=True, user_options={"profile": "medium"})
    spawner.user_options = {"profile": "nope"}
    with pytest.raises(web.HTTPError):
        spawner.check_user_options(spawner, {"profile": "nope"})
    assert spawner.user_options == {"profile": "medium"}
