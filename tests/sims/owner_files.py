"""The owner side of the protocol-sim tests: put a random file, see where it went."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from sims.protocol import ProtocolSim
from xcore.client.files import Client
from xcore.client.index import IndexEntry
from xcore.client.manifest import Manifest


@dataclass
class Placed:
    file_id: bytes
    sha256: str  # of the plaintext
    entry: IndexEntry
    manifest: Manifest

    @property
    def shares(self) -> set[bytes]:
        """Every share hash the file stored: its data shares and its manifest."""
        return {s.hash for seg in self.manifest.segments for s in seg.shares} | {
            self.entry.manifest_hash}


async def put_random(sim: ProtocolSim, owner: Client, name: str, seed: int | str,
                     size: int = 256 * 1024) -> Placed:
    """``owner`` puts ``size`` seeded random bytes as ``name`` at the scenario's redundancy."""
    path = sim.workdir / name
    path.write_bytes(random.Random(seed).randbytes(size))
    res = await owner.put(path, sim.red, name=name)
    fid = bytes.fromhex(res["file_id"])
    entry = await owner.find_entry(fid)
    return Placed(fid, hashlib.sha256(path.read_bytes()).hexdigest(), entry,
                  await owner.manifest(entry))
