"""Model sets for the startup-check tests, bound to module-level names on purpose: the hints
must find them here as ``tests.ops.models:...``."""

from __future__ import annotations

from chainlit_orm.models import ModelSet
from tests.schema.custom_models import TenantThread

#: Chainlit's table names plus the ``tenant`` column and its index.
TENANT = ModelSet.build(thread=TenantThread)

#: The same set, stating where it lives (as if it were defined elsewhere).
STATED = ModelSet.build(thread=TenantThread, origin="myapp.models:CHAT")
