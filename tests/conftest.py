"""Fixtures: a real MongoDB wire-protocol server and real nodes on real sockets.

- ``mongo_uri`` (session): ``MONGODB_URI`` if set, else the embedded server (nx-27017)
  started once on a free port with its data in a temporary folder.
- ``db_name``: a fresh database name per test, so tests never see each other's data;
  dropped after the test.
- ``settings``: node settings for that database (fixed token secret, free port).
- ``node``: one running node (``Running``: ``.url``, ``.node``, ``.stop()``).
- ``api_key``: an API key with every scope; ``api``: an ``Api`` client using it.
- ``second_node``: another node on the same database (for cross-node tests).

Hypothesis runs derandomized (a seed derived from each test), so a failure in CI fails the
same way on a laptop, and prints the ``@reproduce_failure`` blob; ``HYPOTHESIS_PROFILE=explore``
draws fresh examples each run from one seed shown in pytest's header (``HYPOTHESIS_SEED=N``
runs them again); its example database, ``.hypothesis/``, is git-ignored and replays failures.
"""

from __future__ import annotations

import os
import random
import uuid

import pytest
import pytest_asyncio
from hypothesis import settings as hypothesis_settings
from pymongo import MongoClient

from server.ops.embedded import EmbeddedMongo
from tests.support import Api, serve_node, stop_node, test_settings

ALL_SCOPES = ["notify", "broadcast", "tokens", "read", "admin"]

hypothesis_settings.register_profile("repeatable", derandomize=True, print_blob=True)
hypothesis_settings.register_profile("explore", print_blob=True)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


def pytest_configure(config):
    # Exploring: one seed per run, shared with xdist's workers through the environment
    # (they start after this) and shown in the header, so that a failure can be run again.
    from hypothesis import core

    if hypothesis_settings.default.derandomize or config.getoption("hypothesis_seed", None):
        return
    seed = os.environ.setdefault("HYPOTHESIS_SEED", str(random.randrange(2**32)))
    core.global_force_seed = int(seed)


# Fixtures that start a second node on the database: a cluster in one process. A test that
# uses one is marked slow, so the inner loop (-m "not slow and not browser") leaves it out.
CLUSTER_FIXTURES = {"second_node", "pair"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def pytest_report_header(config):
    if hypothesis_settings.default.derandomize:
        return "fuzz: derandomized (the same examples every run; HYPOTHESIS_PROFILE=explore)"
    if config.getoption("hypothesis_seed", None):
        return f"fuzz: --hypothesis-seed={config.getoption('hypothesis_seed')}"
    seed = os.environ["HYPOTHESIS_SEED"]
    return f"fuzz: seed {seed} (HYPOTHESIS_PROFILE=explore HYPOTHESIS_SEED={seed} repeats it)"


@pytest.fixture(scope="session")
def mongo_uri(tmp_path_factory):
    uri = os.environ.get("MONGODB_URI")
    if uri:
        yield uri
        return
    embedded = EmbeddedMongo(tmp_path_factory.mktemp("embedded-db"))
    yield embedded.start()
    embedded.stop()


@pytest.fixture(scope="session")
def mongo_admin(mongo_uri):
    """One synchronous client for the fixtures' own housekeeping (a new one per test cost a
    connection and its monitor threads each time)."""
    with MongoClient(mongo_uri, serverSelectionTimeoutMS=5000, socketTimeoutMS=20000) as client:
        yield client


@pytest.fixture
def db_name(mongo_admin):
    name = f"t_{uuid.uuid4().hex[:12]}"
    yield name
    # The embedded server keeps at most 100 databases open and will not evict one a change
    # stream has touched, so past 100 tests it closed the running test's own database.
    # Dropping each test's database (after its nodes stopped) keeps a whole run under that.
    mongo_admin.drop_database(name)


@pytest.fixture
def settings(db_name, tmp_path):
    return test_settings(db_name, data_dir=str(tmp_path))


@pytest_asyncio.fixture
async def node(settings, mongo_uri):
    running = await serve_node(settings, mongo_uri)
    yield running
    await stop_node(running)


@pytest_asyncio.fixture
async def second_node(settings, mongo_uri):
    running = await serve_node(settings.with_(node_id="second"), mongo_uri)
    yield running
    await stop_node(running)


@pytest_asyncio.fixture
async def api_key(node):
    key, _ = await node.node.api_keys.create("tests", ALL_SCOPES)
    return key


@pytest_asyncio.fixture
async def api(node, api_key):
    return Api(node.url, api_key)
