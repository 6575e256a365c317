"""Every DHT record kind a node accepts, registered by importing this module.

Each kind lives with the code that uses it; a node imports them all here so
it stores records for any feature, including ones it does not use itself.
"""

from __future__ import annotations

import xcore.client.index  # noqa: F401  "index": the owner's bucket index pointer
import xcore.contracts.audit  # noqa: F401  "attest": signed audit attestations
import xcore.contracts.hosts  # noqa: F401  "host" announcements, "loc" locations and contracts
import xcore.contracts.repair  # noqa: F401  "claim": repair leadership claims
import xcore.contracts.segments  # noqa: F401  "seg": segment records / repair authorisations
from xcore.dht.records import known_kinds

__all__ = ["known_kinds"]
