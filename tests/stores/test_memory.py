from collections.abc import AsyncIterator

import pytest

from orchestra.stores import InMemoryStore, Store
from orchestra.stores.contract import StoreContract


class TestInMemoryStore(StoreContract):
    @pytest.fixture
    async def store(self) -> AsyncIterator[Store]:
        async with InMemoryStore() as s:
            yield s
