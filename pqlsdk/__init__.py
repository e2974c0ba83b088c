"""pqlsdk: know, in your own backend, the moment a user or an account becomes a PQL.

    >>> import pqlsdk
    >>> client = pqlsdk.Client(database="pql.db", rules="pql_rules.toml")
    >>> client.track("u1", "report_generated")
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from .aio import AsyncClient
from .backtest import Backtest, RuleBacktest
from .client import Client
from .errors import (
    DeliveryNameWarning,
    PqlError,
    RuleError,
    SchemaTooNew,
    StoreBusy,
    StoreClosed,
    StoreCorrupt,
    StoreError,
    StoreFull,
    StoreRejected,
    StoreUnavailable,
    UnknownSubject,
    ValidationError,
)
from .evaluator import Measurement
from .handoff import HandoffTimes
from .health import DestinationHealth, Health
from .models import Overdue, Qualification, StageChange, Status
from .outbox import Delivery
from .reports import Funnel, FunnelStage, RuleOutcome
from .rules import Lifecycle, Rule, RuleSet, all_of, any_of, event, load_rules, not_, score, trait
from .scoring import Score, ScoreLine, Scoring
from .stages import SIDE_STATES, STAGES
from .suggest import Suggestion

try:  # one place for the version: pyproject.toml, as installed
    __version__: str = _version("pqlsdk")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "AsyncClient",
    "Backtest",
    "Client",
    "Delivery",
    "DeliveryNameWarning",
    "DestinationHealth",
    "Funnel",
    "FunnelStage",
    "HandoffTimes",
    "Health",
    "Lifecycle",
    "Measurement",
    "Overdue",
    "PqlError",
    "Qualification",
    "Rule",
    "RuleBacktest",
    "RuleError",
    "RuleOutcome",
    "RuleSet",
    "SIDE_STATES",
    "STAGES",
    "SchemaTooNew",
    "Score",
    "ScoreLine",
    "Scoring",
    "StageChange",
    "Status",
    "StoreBusy",
    "StoreClosed",
    "StoreUnavailable",
    "StoreCorrupt",
    "StoreError",
    "StoreFull",
    "StoreRejected",
    "Suggestion",
    "UnknownSubject",
    "ValidationError",
    "__version__",
    "all_of",
    "any_of",
    "event",
    "load_rules",
    "not_",
    "score",
    "trait",
]
