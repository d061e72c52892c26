"""The entity models: the single source of truth everything else is derived from."""

from chainlit_orm.models.entities import (
    DynamoEntityKeys as DynamoEntityKeys,
)
from chainlit_orm.models.entities import (
    DynamoIndexKeys as DynamoIndexKeys,
)
from chainlit_orm.models.entities import (
    ElementFields as ElementFields,
)
from chainlit_orm.models.entities import (
    FeedbackFields as FeedbackFields,
)
from chainlit_orm.models.entities import (
    IndexSpec as IndexSpec,
)
from chainlit_orm.models.entities import (
    StepFields as StepFields,
)
from chainlit_orm.models.entities import (
    ThreadFields as ThreadFields,
)
from chainlit_orm.models.entities import (
    UserFields as UserFields,
)
from chainlit_orm.models.modelset import (
    DEFAULT_MODELS as DEFAULT_MODELS,
)
from chainlit_orm.models.modelset import (
    ENTITIES as ENTITIES,
)
from chainlit_orm.models.modelset import (
    ModelSet as ModelSet,
)
from chainlit_orm.models.modelset import (
    metadata_column as metadata_column,
)

User = DEFAULT_MODELS.user
Thread = DEFAULT_MODELS.thread
Step = DEFAULT_MODELS.step
Element = DEFAULT_MODELS.element
Feedback = DEFAULT_MODELS.feedback
