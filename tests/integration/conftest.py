"""Fixtures shared by integration tests of the emulated cluster (a module may define its own)."""

import re

import pytest
from kubernetes_asyncio import client, config

from devcluster.testing import fast_cluster


@pytest.fixture(scope="module")
async def cluster(tmp_path_factory, request):
    """A fast emulated cluster for the test module."""
    async with fast_cluster(
        tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    ) as c:
        yield c


@pytest.fixture(scope="module")
async def api(cluster):
    """A kubernetes_asyncio ``ApiClient`` configured from the cluster's kubeconfig."""
    api_client = await config.new_client_from_config(config_file=str(cluster.kubeconfig_path))
    async with api_client:
        yield api_client


@pytest.fixture
async def namespace(api, request):
    """A fresh namespace named after the test, deleted afterwards."""
    # a valid namespace name (DNS-1123 label) even for parametrized tests: test-x-a-b
    name = re.sub("[^a-z0-9-]+", "-", request.node.name.lower())[:50].strip("-")
    await client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})
    yield name
    await client.CoreV1Api(api).delete_namespace(name)
