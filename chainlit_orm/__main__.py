"""``python -m chainlit_orm``: the ``chainlit-orm`` command, for when the console script is not
on ``PATH`` (a virtualenv that is not activated, ``pipx run``, a container's ``python``)."""

import sys

from chainlit_orm.cli import main

sys.exit(main())
