"""Protobuf <-> domain objects. The only module besides the servicer that knows the wire format."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from munet_proto.v1 import munet_pb2 as pb
from munet_server.errors import InvalidArgument
from munet_server.evolve.budget import Budget
from munet_server.serve.predictor import LabelScore, RawPixels
from munet_server.spec import AddTaskSpec
from munet_server.store.records import OperationRecord, TaskRecord
from munet_server.store.task_metrics import TaskMetrics
from munet_server.system import DamagedTask, MunetSystem

BUDGET_FIELDS = tuple(f.name for f in pb.SearchBudget.DESCRIPTOR.fields)


def budget_overrides(msg: pb.SearchBudget) -> dict[str, Any]:
    """The budget fields a request set (the others keep the server's defaults)."""
    return {k: getattr(msg, k) for k in BUDGET_FIELDS if msg.HasField(k)}


def task_ref(task: str, version: int) -> str:
    """PredictRequest.task plus its `version` field: "task@2" pins a stored version."""
    if version < 0:
        raise InvalidArgument(f"version={version} must be 0 (the served version) or a version number")
    if version and "@" in task:
        raise InvalidArgument(f"{task!r} already names a version; leave the version field at 0")
    return f"{task}@{version}" if version else task


def task_spec(msg: pb.TaskSpec, default_budget: Budget) -> AddTaskSpec:
    """Unset fields keep the defaults of `AddTaskSpec` (and of the server's budget)."""
    budget = budget_overrides(msg.budget)
    optional = {k: getattr(msg, k) for k in ("scale_factor", "validation_fraction", "seed") if msg.HasField(k)}
    return AddTaskSpec(
        name=msg.name,
        class_names=list(msg.class_names),
        budget=replace(default_budget, **budget),
        policy=msg.policy or "munet",
        learned_mu=msg.learned_mu,
        **optional,
    )


def operation(op: OperationRecord) -> pb.Operation:
    p = op.progress
    state = dict(pb.Operation.State.items()).get(op.state, pb.Operation.STATE_UNSPECIFIED)
    return pb.Operation(
        name=op.id,
        kind=op.kind,
        task=op.task_name,
        state=state,
        done=op.terminal,
        progress=pb.Progress(
            phase=str(p.get("phase", "")),
            generation=int(p.get("generation", 0)),
            generations_total=int(
                p.get("generations_total", op.spec.get("budget", {}).get("generations", 0))
            ),
            candidates_done=int(p.get("candidates_done", 0)),
            best_validation_accuracy=_finite(p.get("best_validation_accuracy", 0.0)),
            best_score=_finite(p.get("best_score", 0.0)),
            params_added=int(p.get("params_added", 0)),
            elapsed_seconds=float(p.get("elapsed_seconds", 0.0)),
            eta_seconds=float(p.get("eta_seconds", 0.0)),
            budget_seconds=float(op.spec.get("budget", {}).get("seconds", 0.0)),
            serving_version=int(p.get("task_version", 0)),
            serving_kind=str(p.get("serving_kind", "")),
            serving_accuracy=_finite(p.get("serving_accuracy", 0.0)),
            first_served_seconds=max(0.0, float(p["first_served_at"]) - op.created_at) if p.get("first_served_at") else 0.0,
            published=int(p.get("published", 0)),
        ),
        error=pb.Error(code=op.error.get("code", ""), message=op.error.get("message", ""))
        if op.error
        else None,
        created_at=op.created_at,
        updated_at=op.updated_at,
        num_examples=int(p.get("examples", 0)),
        result=str(p.get("result", "")) if op.state == "SUCCEEDED" else "",
        task_version=int(p.get("task_version", 0)),
        origin=str(op.spec.get("origin", "client")),
    )


def _finite(x: Any) -> float:
    x = float(x)
    return x if x == x and abs(x) != float("inf") else 0.0


def task_info(system: MunetSystem, name: str, sharers: bool = True, improving: bool = False) -> pb.TaskInfo:
    """`sharers`: list every other user of each component (DescribeTask); ListTasks sends counts
    only, which keeps it linear in the number of tasks. `improving`: an operation searches for it."""
    if name in system.damaged:
        return damaged_task_info(system.damaged[name])
    e = system.entry(name)  # "task@2": that stored version
    rec, m = e.record, TaskMetrics.of(e.record)
    name = rec.name
    served = system.entry(name).record.version
    versions = [version_info(v, served) for v in system.versions(name)] if sharers else []
    path = []
    for c in e.path.components:
        path.append(
            pb.PathComponent(
                name=c.spec.name,
                id=c.id,
                kind=c.spec.kind,
                num_params=c.num_params,
                owner=c.owner,
                created_by_task=c.owner == name,
                shared_with=system.shared_with(c, exclude=name) if sharers else [],
                num_shared_with=system.num_shared_with(c, exclude=name),
            )
        )
    return pb.TaskInfo(
        name=rec.name,
        state=rec.state,
        class_names=rec.class_names,
        validation_accuracy=m.validation_accuracy,
        score=m.score,
        params_added=m.params_added,
        params_accounted=float(system.accounted_params(e.path, name)),
        params_total=m.params_total or e.path.num_params(),
        path=path,
        hparams={k: json.dumps(v) for k, v in rec.hparams.items()},
        created_at=rec.created_at,
        golden_digest=rec.golden_digest,
        scale_factor=m.scale_factor,
        search_seconds=m.search_seconds,
        candidates_trained=m.candidates,
        num_examples=m.num_examples,
        probe_validation_accuracy=m.probe_validation_accuracy,
        gain_over_probe=m.gain_over_probe,
        holdout_size=m.holdout_size,
        chance_accuracy=m.chance_accuracy,
        image_size=m.image_size or int(rec.hparams.get("ds_image_size", 0)),
        probe_cv_accuracy=m.probe_cv_accuracy,
        version=rec.version,
        versions=versions,
        served_version=served,
        kind=m.kind,
        improving=improving,
    )


def version_info(rec: TaskRecord, served: int) -> pb.TaskVersion:
    m = TaskMetrics.of(rec)
    return pb.TaskVersion(
        version=rec.version,
        served=rec.version == served,
        validation_accuracy=m.validation_accuracy,
        params_added=m.params_added,
        created_at=rec.created_at,
        golden_digest=rec.golden_digest,
        kind=m.kind,
        improved_from=m.improved_from,
    )


def damaged_task_info(d: DamagedTask) -> pb.TaskInfo:
    """A task whose stored weights are unreadable: listed (so users see it), never served."""
    rec, m = d.record, TaskMetrics.of(d.record)
    return pb.TaskInfo(
        name=rec.name,
        state=f"DAMAGED: {d.reason}",
        class_names=rec.class_names,
        validation_accuracy=m.validation_accuracy,
        params_added=m.params_added,
        hparams={k: json.dumps(v) for k, v in rec.hparams.items()},
        created_at=rec.created_at,
        golden_digest=rec.golden_digest,
    )


def predict_response(task: str, preds: list[list[LabelScore]]) -> pb.PredictResponse:
    return pb.PredictResponse(
        task=task,
        predictions=[
            pb.Prediction(
                labels=[pb.Label(name=s.name, index=s.index, probability=s.probability) for s in row]
            )
            for row in preds
        ],
    )


def raw_pixels(images: Any) -> list[RawPixels]:
    return [RawPixels(r.height, r.width, r.channels, r.data) for r in images]
