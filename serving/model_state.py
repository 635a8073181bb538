"""Which models are served, and swapping them without dropping a request.

The serving state (arms, their weights and loaded predictors) is one immutable object; the
server reads ``ModelManager.state`` once per request and a swap is a single reference
assignment, so a request sees either the old state or the new one, never a mix.

Loading happens on the watcher thread, off the event loop: an artifact is downloaded,
checksum-verified (``ModelArtifact.load_uri``) and warmed up before it is swapped in. A
version whose artifact does not load (truncated, corrupt, checksum mismatch, no manifest, unknown
format) is refused with its reason, logged and counted, once per content: it is tried again only
when its file changes (a restore). A version whose artifact is missing or unreadable for now is
retried with exponential backoff. Either way the version already serving keeps serving, and at
start the newest Approved version that does load is served instead.

Sources: a fixed artifact folder (SageMaker endpoint mode, ``/opt/ml/model``) or a registry
(the champion, i.e. the newest Approved version, plus an optional challenger at a weight). The
challenger and its weight come from the active A/B experiment (``appsim ab start``, which
``appsim ab report --apply`` ramps), read at every poll; without one, from the static
settings ``APPSIM_CHALLENGER_VERSION`` / ``APPSIM_CHALLENGER_WEIGHT``.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from pyarrow import ArrowException

from models import storage
from models.artifact import ArtifactError, ArtifactMissing, ModelArtifact
from models.experiments import CHALLENGER_ARM, CHAMPION_ARM, ExperimentError, ExperimentStore, open_experiments
from models.features import MetadataError
from models.predictor import Predictor
from models.registry import ModelVersion, Registry, RegistryError
from models.registry_backends import open_registry
from models.routing import pick_arm
from models.storage import StorageError
from serving.popular import PopularTableError, TablePredictor, load_popular_table
from serving.settings import ServingSettings

log = logging.getLogger("appsim.serving.models")

CHAMPION = CHAMPION_ARM
CHALLENGER = CHALLENGER_ARM
# Errors that say the artifact's content cannot be served: refused until its file changes.
DATA_ERRORS = (ArtifactError, MetadataError, ValueError, KeyError)
# Errors that may heal by themselves (a file not there yet, a store unreachable): retried with backoff.
TRANSIENT_ERRORS = (ArtifactMissing, StorageError, OSError)
MAX_BACKOFF_SECONDS = 300.0


@dataclass(frozen=True)
class Refusal:
    """A version whose artifact content does not load; ``content`` is the file's fingerprint then."""

    artifact_uri: str
    reason: str
    detail: str
    content: str | None

    def text(self) -> str:
        return f"{self.reason}: {self.detail}"


@dataclass(frozen=True)
class Retry:
    """A version whose artifact is unavailable for now, tried again at ``due`` (monotonic seconds)."""

    artifact_uri: str
    reason: str
    detail: str
    attempts: int
    due: float

    def text(self) -> str:
        wait = max(0.0, self.due - time.monotonic())
        return f"{self.reason}: {self.detail} (attempt {self.attempts}, next in {wait:.0f} s)"


def failure_reason(error: BaseException) -> str:
    """A stable code for metrics and logs: the artifact error's own, else the exception's class."""
    return error.reason if isinstance(error, ArtifactError) else type(error).__name__


@dataclass(frozen=True)
class LoadedModel:
    version: int
    predictor: Predictor
    artifact_uri: str
    loaded_at: str
    popular_table: dict[str, Any] | None = None  # apps, k and uri of the table answering, or why none does

    def describe(self) -> dict[str, Any]:
        manifest = self.predictor.artifact.manifest
        return {
            "model_version": self.version,
            "artifact_uri": self.artifact_uri,
            "loaded_at": self.loaded_at,
            "app_count": manifest.get("app_count"),
            "embedding_dim": manifest.get("embedding_dim"),
            "index": manifest.get("index"),
            "checksum": manifest.get("files", {}).get("embeddings.npy"),
            "popular_table": self.popular_table,
        }


@dataclass(frozen=True)
class Arm:
    name: str
    weight: float
    model: LoadedModel


@dataclass(frozen=True)
class ServingState:
    arms: tuple[Arm, ...]
    weights: dict[str, float] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "weights", {arm.name: arm.weight for arm in self.arms})

    def route(self, partner_id: str, app_id: str) -> Arm:
        """The arm serving this request (the seed's sticky md5 routing)."""
        if len(self.arms) == 1:
            return self.arms[0]
        name = pick_arm(partner_id, app_id, self.weights)
        return next(arm for arm in self.arms if arm.name == name)

    def signature(self) -> tuple[tuple[str, int, float], ...]:
        return tuple((arm.name, arm.model.version, arm.weight) for arm in self.arms)

    def describe(self) -> list[dict[str, Any]]:
        return [{"arm": arm.name, "weight": arm.weight, **arm.model.describe()} for arm in self.arms]


def load_model(version: int, artifact_uri: str, popular_apps: int = 0, neighbors_uri: str | None = None) -> LoadedModel:
    """Load, verify and warm up one artifact (``ArtifactError`` and friends when it cannot be served);
    with ``popular_apps``, the neighbours of that many most-shown apps from the export at ``neighbors_uri``
    (serving/popular.py; without a usable export the version is served from FAISS alone)."""
    artifact = ModelArtifact.load_uri(artifact_uri)
    predictor = Predictor(artifact)
    popular: dict[str, Any] | None = None
    if popular_apps and neighbors_uri:
        try:
            table = load_popular_table(artifact, version, neighbors_uri, popular_apps)
        except (PopularTableError, StorageError, OSError, ArrowException, KeyError) as error:
            log.warning("model version %s answers every app from FAISS: %s", version, error)
            popular = {"uri": neighbors_uri, "error": str(error)}
        else:
            predictor = TablePredictor(artifact, table)
            popular = {"uri": table.uri, "apps": len(table.rows), "k": table.k}
    # Warm up here, on the loading thread, so the first requests after a swap pay nothing extra:
    # one search touches the index, and the cold-start encoder is parsed once.
    if len(artifact.app_ids) > 1:
        predictor.similar(artifact.app_ids[0], k=1)
    _ = predictor.metadata_encoder
    return LoadedModel(version, predictor, artifact_uri, datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       popular)


def freeze_heap() -> None:
    """Put what is alive now (the loaded models) out of the cyclic garbage collector's reach.

    A full collection walks every tracked object: with a 1M-app model loaded, gc.collect() took
    70 ms here with the GIL held, and the ones serving's own allocations trigger put p99.9 at 74 ms
    in a 30 s run at 500 req/s (bench/serving.py's steady run). Frozen objects are still freed by
    reference counting when a swap drops them; unfreezing first lets one collection reclaim the
    previous model's cycles. The cost is that one 70 ms collection per swap, on the watcher thread.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class ModelManager:
    """Holds the serving state and refreshes it from its source (call ``refresh`` or ``start``)."""

    def __init__(self, settings: ServingSettings, registry: Registry | None = None,
                 experiments: ExperimentStore | None = None):
        self.settings = settings
        self.registry = registry
        if not settings.endpoint_mode and registry is None:
            self.registry = open_registry(settings.registry_uri(), read_only=True)  # serving never writes it
        self.experiments = experiments
        if experiments is None and not settings.endpoint_mode and settings.experiments_uri():
            self.experiments = open_experiments(settings.experiments_uri(), read_only=True)  # type: ignore[arg-type]
        self.source = settings.model_dir if settings.endpoint_mode else self.registry.uri  # type: ignore[union-attr]
        self.state: ServingState | None = None
        self.not_ready_reason = f"loading the model from {self.source}"
        self.refused: dict[int, Refusal] = {}
        self.retrying: dict[int, Retry] = {}
        self.swaps = 0
        self.load_failures = 0
        self.poll_errors = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- background watcher --------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="appsim-model-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _watch(self) -> None:
        while True:
            try:
                self.refresh()
            except Exception:  # a watcher that dies silently would freeze the served version
                self.poll_errors += 1
                log.exception("model refresh failed; the current version keeps serving")
            if (self.settings.endpoint_mode and self.state is not None) or self._stop.wait(self.settings.poll_seconds):
                return

    # -- one refresh -----------------------------------------------------------------------
    def refresh(self) -> bool:
        """Bring the state in line with the source; True when it was swapped."""
        if self.settings.endpoint_mode:
            return self._refresh_directory()
        return self._refresh_registry()

    def _refresh_directory(self) -> bool:
        version, folder = self.settings.model_version, self.settings.model_dir
        if self.state is not None or self._held_back(version, folder):  # type: ignore[arg-type]
            return False
        model = self._load(version, folder)  # type: ignore[arg-type]
        if model is None:
            return False
        return self._swap(ServingState((Arm(CHAMPION, 1.0, model),)))

    def _refresh_registry(self) -> bool:
        assert self.registry is not None
        try:
            versions = self.registry.list_versions()
        except (RegistryError, OSError) as error:
            self.poll_errors += 1
            log.warning("cannot read the registry %s (%s); the current version keeps serving", self.registry.uri, error)
            return False
        champion = self._champion(versions)
        if champion is None:
            if self.state is None:
                self.not_ready_reason = (
                    f"no loadable Approved model version in {self.registry.uri} yet"
                    + (f" (held back: {self._held_back_text()})" if self.refused or self.retrying else "")
                )
            return False
        arms = [champion]
        wanted, weight = self._challenger_plan()
        challenger = self._challenger(versions, champion, wanted, weight)
        if challenger is not None:
            arms = [Arm(CHAMPION, 1.0 - weight, champion.model), challenger]
        return self._swap(ServingState(tuple(arms)))

    def _challenger_plan(self) -> tuple[int | None, float]:
        """(challenger version, weight): the active experiment's, else the static settings'."""
        if self.experiments is not None:
            try:
                experiment = self.experiments.active()
            except (ExperimentError, OSError) as error:
                self.poll_errors += 1
                log.warning("cannot read experiments (%s); keeping the current split", error)
                current = self.state.weights.get(CHALLENGER) if self.state else None
                if self.state is not None and current is not None:
                    arm = next(a for a in self.state.arms if a.name == CHALLENGER)
                    return arm.model.version, current
                return None, 0.0
            if experiment is not None:
                return experiment.challenger_version, experiment.challenger_weight
        return self.settings.challenger_version, self.settings.challenger_weight

    def _champion(self, versions: list[ModelVersion]) -> Arm | None:
        """The newest Approved version that loads (versions come newest first)."""
        for version in versions:
            if version.status != "Approved" or self._held_back(version.version, version.artifact_uri):
                continue
            model = self._reuse_or_load(version)
            if model is not None:
                return Arm(CHAMPION, 1.0, model)
        return None

    def _challenger(self, versions: list[ModelVersion], champion: Arm, wanted: int | None, weight: float) -> Arm | None:
        if wanted is None or weight == 0 or wanted == champion.model.version:
            return None
        version = next((v for v in versions if v.version == wanted), None)
        if version is None:
            log.warning("challenger version %s is not in %s; all traffic goes to the champion", wanted, self.source)
            return None
        if version.status == "Rejected" or self._held_back(wanted, version.artifact_uri):
            return None
        model = self._reuse_or_load(version)
        return None if model is None else Arm(CHALLENGER, weight, model)

    def _held_back(self, version: int, artifact_uri: str) -> bool:
        """True while a refused version's file is unchanged, or a retried one is not due yet."""
        refusal = self.refused.get(version)
        if refusal is not None:
            if refusal.artifact_uri == artifact_uri and self._fingerprint(artifact_uri) == refusal.content:
                return True
            log.warning("model version %s was refused (%s) but its artifact %s changed: trying it again",
                        version, refusal.reason, artifact_uri)
            del self.refused[version]
        retry = self.retrying.get(version)
        return retry is not None and retry.artifact_uri == artifact_uri and time.monotonic() < retry.due

    def _reuse_or_load(self, version: ModelVersion) -> LoadedModel | None:
        if self.state is not None:
            for arm in self.state.arms:
                if arm.model.version == version.version and arm.model.artifact_uri == version.artifact_uri:
                    return arm.model
        return self._load(version.version, version.artifact_uri)

    @staticmethod
    def _fingerprint(artifact_uri: str) -> str | None:
        try:
            return storage.fingerprint(artifact_uri)
        except (StorageError, OSError):
            return None

    def _load(self, version: int, artifact_uri: str) -> LoadedModel | None:
        content = self._fingerprint(artifact_uri)  # before loading: a file replaced meanwhile is tried again
        try:
            model = load_model(version, artifact_uri, self.settings.popular_apps,
                               self.settings.neighbors_export_uri(version))
        except Exception as error:  # noqa: BLE001 - whatever an artifact does, the server keeps serving
            self.load_failures += 1
            reason, detail = failure_reason(error), str(error)
            if isinstance(error, TRANSIENT_ERRORS):
                previous = self.retrying.get(version)
                attempts = previous.attempts + 1 if previous and previous.artifact_uri == artifact_uri else 1
                delay = min(self.settings.poll_seconds * 2 ** (attempts - 1), MAX_BACKOFF_SECONDS)
                self.retrying[version] = Retry(artifact_uri, reason, detail, attempts, time.monotonic() + delay)
                log.warning("model version %s is unavailable (%s: %s); retrying in %.0f s (attempt %d)",
                            version, reason, detail, delay, attempts)
            else:
                self.retrying.pop(version, None)
                self.refused[version] = Refusal(artifact_uri, reason, detail, content)
                if isinstance(error, DATA_ERRORS):
                    log.error("refused model version %s from %s (%s): %s; tried again when the file changes",
                              version, artifact_uri, reason, detail)
                else:  # not a known artifact fault: keep the traceback, it may be a bug here
                    log.exception("refused model version %s from %s (%s); tried again when the file changes",
                                  version, artifact_uri, reason)
            if self.state is None:
                self.not_ready_reason = f"model version {version} could not be loaded ({reason}): {detail}"
            return None
        self.refused.pop(version, None)
        self.retrying.pop(version, None)
        log.info("loaded model version %s from %s (%s apps)", version, artifact_uri, len(model.predictor.artifact.app_ids))
        return model

    def _swap(self, new: ServingState) -> bool:
        if self.state is not None and self.state.signature() == new.signature():
            return False
        old = self.state
        self.state = new  # the one assignment requests observe
        self.swaps += old is not None
        del old
        freeze_heap()
        log.info("serving %s", ", ".join(f"{a.name}=v{a.model.version} ({a.weight:g})" for a in new.arms))
        return True

    def _held_back_text(self) -> str:
        held = {**self.retrying, **self.refused}
        return "; ".join(f"v{v}: {entry.text()}" for v, entry in sorted(held.items()))

    def describe(self) -> dict[str, Any]:
        state = self.state
        return {
            "source": self.source,
            "mode": "endpoint" if self.settings.endpoint_mode else "registry",
            "ready": state is not None,
            "arms": state.describe() if state else [],
            "refused_versions": {str(v): refusal.text() for v, refusal in sorted(self.refused.items())},
            "retrying_versions": {str(v): retry.text() for v, retry in sorted(self.retrying.items())},
            "swaps": self.swaps,
        }
