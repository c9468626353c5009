"""devcluster.faults.FaultProxy in front of a real devcluster API server: injected 5xx with
the API server's Status body, dropped connections (before and after the API server acted),
delays, counters, streaming watches through the proxy, the rules file, and the sync (thread)
and async forms."""

import asyncio
import json
import threading
import urllib.error
import urllib.request

import aiohttp
import pytest

from devcluster.faults import FaultProxy, Rule, RulesFile, load_rules, status_body
from devcluster.resources import CONFIGMAPS
from devcluster.testing import fast_cluster, wait_for, wait_until

CM = "/api/v1/namespaces/default/configmaps"


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory):
    async with fast_cluster(tmp_path_factory.mktemp("devcluster-faults")) as c:
        yield c


@pytest.fixture
async def proxy(cluster):
    async with FaultProxy(cluster.url) as p:
        yield p


async def call(url, method="GET", body=None):
    async with aiohttp.ClientSession() as s:
        async with s.request(method, url, json=body) as r:
            return r.status, await r.json(content_type=None)


async def test_fail_n_times_with_status_body_then_pass(cluster, proxy):
    rule = proxy.fail("POST", r"/configmaps$", status=503, times=2)
    body = {"metadata": {"name": "fail-twice"}, "data": {"a": "1"}}
    first = await call(proxy.url + CM, "POST", body)
    second = await call(proxy.url + CM, "POST", body)
    third = await call(proxy.url + CM, "POST", body)
    assert first == (503, status_body(503))
    assert first[1]["reason"] == "ServiceUnavailable" and first[1]["kind"] == "Status"
    assert second[0] == 503
    assert third[0] == 201 and third[1]["metadata"]["name"] == "fail-twice"
    assert rule.hits == 2 and rule.times == 0
    assert proxy.hits("POST", r"/configmaps") == 3 and proxy.faults("POST") == 2
    assert proxy.hits("GET") == 0
    # the API server saw only the third request
    assert cluster.store.peek(CONFIGMAPS, "default", "fail-twice") is not None


async def test_method_and_path_must_both_match(proxy):
    proxy.fail("DELETE", r"/configmaps/", status=500, times=None)
    status, _ = await call(proxy.url + CM)  # a GET of the same path passes
    assert status == 200
    status, body = await call(proxy.url + CM + "/nothing", "DELETE")
    assert status == 500 and body["reason"] == "InternalError"
    proxy.clear()
    status, body = await call(proxy.url + CM + "/nothing", "DELETE")
    assert status == 404 and body["reason"] == "NotFound"  # the real server's answer


async def test_drop_before_upstream_leaves_no_object(cluster, proxy):
    proxy.drop("POST", r"/configmaps$")
    with pytest.raises(aiohttp.ClientError):
        await call(proxy.url + CM, "POST", {"metadata": {"name": "dropped-before"}})
    assert cluster.store.peek(CONFIGMAPS, "default", "dropped-before") is None
    assert proxy.faults("POST") == 1


async def test_drop_after_upstream_loses_the_reply_of_a_done_create(cluster, proxy):
    proxy.drop("POST", r"/configmaps$", after_upstream=True)
    with pytest.raises(aiohttp.ClientError):
        await call(proxy.url + CM, "POST", {"metadata": {"name": "dropped-after"}})
    assert cluster.store.peek(CONFIGMAPS, "default", "dropped-after") is not None
    status, body = await call(proxy.url + CM, "POST", {"metadata": {"name": "dropped-after"}})
    assert status == 409 and body["reason"] == "AlreadyExists"


async def test_delay_then_forward(proxy):
    rule = proxy.delay("GET", r"/version$", seconds=0.3, times=1)
    status, body = await call(proxy.url + "/version")
    assert status == 200 and body["major"] == "1" and rule.hits == 1
    assert proxy.faults() == 0  # a delay is not a fault


async def test_watch_streams_through_and_cut_ends_it(cluster, proxy):
    events: list[dict] = []
    done = asyncio.Event()

    async def watch():
        async with aiohttp.ClientSession() as s:
            url = proxy.url + CM + "?watch=true&labelSelector=w%3D1"
            try:
                async with s.get(url) as r:
                    async for line in r.content:
                        events.append(json.loads(line))
            except aiohttp.ClientError:
                pass
        done.set()

    task = asyncio.create_task(watch())
    await asyncio.sleep(0.2)
    cluster.store.create(CONFIGMAPS, {"metadata": {"name": "w1", "labels": {"w": "1"}}}, "default")
    # the event arrives while the watch is still open: the answer is streamed, not buffered
    await wait_for(lambda: events, timeout=5, what="the watch event through the proxy")
    assert events[0]["type"] == "ADDED" and events[0]["object"]["metadata"]["name"] == "w1"
    assert not done.is_set()
    proxy.cut()
    await asyncio.wait_for(done.wait(), 5)
    await task


async def test_sync_form_in_a_thread_and_rules_file(cluster, tmp_path):
    # the cluster runs in this test's loop: the sync part (the proxy's own loop in a thread,
    # plain urllib as the client) runs in another thread
    proxy = await asyncio.to_thread(sync_part, cluster.url, tmp_path)
    assert proxy.hits("GET", r"^/version$") >= 3


def sync_part(url, tmp_path):
    with FaultProxy(url) as proxy:
        assert threading.active_count() >= 2
        path = tmp_path / "rules.json"
        path.write_text(json.dumps([{"action": "fail", "method": "GET", "status": 429}]))
        watcher = RulesFile(proxy, path, interval=0.05).start()
        try:
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(proxy.url + "/version", timeout=5)
            assert err.value.code == 429 and err.value.headers["Retry-After"] == "1"
            assert json.loads(err.value.read())["reason"] == "TooManyRequests"
            with urllib.request.urlopen(proxy.url + "/version", timeout=5) as r:  # times: 1
                assert r.status == 200
            path.write_text("[]")

            def open_version():
                with urllib.request.urlopen(proxy.url + "/version", timeout=5) as r:
                    return r.status == 200

            assert wait_until(open_version, timeout=5, interval=0.05)
        finally:
            watcher.stop()
    return proxy


def test_bad_rules_are_refused_naming_the_field(tmp_path):
    with pytest.raises(ValueError, match="fault action 'explode'"):
        Rule("explode")
    with pytest.raises(ValueError, match="times"):
        Rule("fail", times=-1)
    path = tmp_path / "rules.json"
    path.write_text(json.dumps([{"action": "fail", "verb": "GET"}]))
    with pytest.raises(ValueError, match=r"rule 0: fault rule keys \['verb'\]"):
        load_rules(path)
    assert load_rules(tmp_path / "missing.json") == []


async def test_kubernetes_client_sees_the_fault_then_succeeds(cluster, proxy, tmp_path):
    # what the hub sees (kubernetes_asyncio through a kubeconfig pointing at the proxy)
    from kubernetes_asyncio import client, config
    from kubernetes_asyncio.client.rest import ApiException

    from devcluster.kubeconfig import write_kubeconfig

    path = write_kubeconfig(tmp_path / "kubeconfig", proxy.url)
    cluster.store.create(CONFIGMAPS, {"metadata": {"name": "doomed"}}, "default")
    proxy.fail("DELETE", r"/configmaps/doomed$", status=503)
    async with await config.new_client_from_config(config_file=str(path)) as api:
        core = client.CoreV1Api(api)
        with pytest.raises(ApiException) as err:
            await core.delete_namespaced_config_map("doomed", "default")
        assert err.value.status == 503
        assert json.loads(err.value.body)["reason"] == "ServiceUnavailable"
        assert cluster.store.peek(CONFIGMAPS, "default", "doomed") is not None
        await core.delete_namespaced_config_map("doomed", "default")  # the retry passes
    assert cluster.store.peek(CONFIGMAPS, "default", "doomed") is None
    assert proxy.hits("DELETE", "doomed") == 2 and proxy.faults("DELETE", "doomed") == 1
