"""Deployed process versions: deploying, undeploying, and the definitions runs started on."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from orchestra.engine._common import canonical
from orchestra.errors import NotDeployedError
from orchestra.model import Event, Process, ResumeStep
from orchestra.stores import Version

if TYPE_CHECKING:
    from orchestra.engine._business import Business

__all__ = ["NotDeployedError", "Versions"]


class Versions:
    """The process versions of one :class:`Business`, loaded from its store once each."""

    def __init__(self, business: Business) -> None:
        self.b = business
        self.processes: dict[tuple[str, int], Process] = {}
        """Every version loaded so far, by ``(name, seq)``."""
        self._latest: dict[str, Version] | None = None

    async def deploy(self, process: Process) -> Version:
        """Validate ``process`` and store it as the newest version (a no-op if unchanged)."""
        b = self.b
        await b.engine.validate(process)
        definition = canonical(process.to_dict())
        digest = hashlib.sha256(definition.encode()).hexdigest()
        version = await b.store.put_version(process.name, digest, definition, now=b.now())
        self.processes[(process.name, version.seq)] = process
        (await self.deployed())[process.name] = version
        return version

    async def undeploy(self, name: str) -> bool:
        """Stop new runs of ``name``; running runs go on. Return False if it was never deployed."""
        found = await self.b.store.set_deployed(name, False)
        (await self.deployed()).pop(name, None)
        return found

    async def deployed(self) -> dict[str, Version]:
        """The latest deployed version of each process, by name (read once, then kept)."""
        if self._latest is None:
            await self.refresh()
        assert self._latest is not None
        return self._latest

    async def refresh(self) -> None:
        """Read the deployed versions again (other workers may have deployed since).

        Every stored version is loaded: an event's correlation key is read with the key
        fragments of every version that has runs waiting, old ones included.
        """
        latest: dict[str, Version] = {}
        for v in await self.b.store.list_versions():
            latest[v.name] = v
            if (v.name, v.seq) not in self.processes:
                self.processes[(v.name, v.seq)] = Process.from_json(v.definition)
        self._latest = {n: v for n, v in latest.items() if v.deployed}

    async def process(self, name: str, seq: int) -> Process:
        """Return version ``seq`` of process ``name`` (loaded from the store once)."""
        p = self.processes.get((name, seq))
        if p is None:
            version = await self.b.store.get_version(name, seq)
            if version is None:
                raise NotDeployedError(name)
            p = self.processes[(name, seq)] = Process.from_json(version.definition)
        return p

    def knows(self, event: str) -> bool:
        """Whether a loaded process starts on or waits for ``event``."""
        for p in self.processes.values():
            if isinstance(p.trigger, Event) and p.trigger.name == event:
                return True
            if any(isinstance(s, ResumeStep) and s.event == event for s in p.steps):
                return True
        return False
