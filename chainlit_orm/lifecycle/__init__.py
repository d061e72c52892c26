"""Data lifecycle: erase a user, retention (purge), the on-delete hook, the opt-in trash.

Every rule is written here once, over the ``Backend`` protocol of
:mod:`chainlit_orm.layers.base`; each backend supplies small primitives (``user_thread_ids``,
``remove_threads``, ``remove_user``, ``purge_expired``, ``trash_thread``, ``restore_thread``,
``get_thread_owner``). The layers expose them as ``layer.erase_user(...)``,
``layer.purge(...)`` and ``layer.restore_thread(...)``; the CLI as ``chainlit-orm erase-user``
and ``chainlit-orm purge``.
"""

from chainlit_orm.lifecycle.erase import ErasureReport, erase_user
from chainlit_orm.lifecycle.hooks import OnDelete, load_hook
from chainlit_orm.lifecycle.purge import PurgeReport, parse_age, purge
from chainlit_orm.lifecycle.records import ExpiryRule, Removed

__all__ = ["ErasureReport", "ExpiryRule", "OnDelete", "PurgeReport", "Removed", "erase_user",
           "load_hook", "parse_age", "purge"]
