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


def operation(job: OperationRecord) -> pb.Operation:
    p = job.progress
    state = dict(pb.Operation.State.items()).get(job.state, pb.Operation.STATE_UNSPECIFIED)
    return pb.Operation(
        name=job.id,
        kind=job.kind,
        task=job.task_name,
        state=state,
        done=job.terminal,
        progress=pb.Progress(
            phase=str(p.get("phase", "")),
            generation=int(p.get("generation", 0)),
            generations_total=int(
                p.get("generations_total", job.spec.get("budget", {}).get("generations", 0))
            ),
            candidates_done=int(p.get("candidates_done", 0)),
            best_validation_accuracy=_finite(p.get("best_validation_accuracy", 0.0)),
            best_score=_finite(p.get("best_score", 0.0)),
            params_added=int(p.get("params_added", 0)),
            elapsed_seconds=float(p.get("elapsed_seconds", 0.0)),
            eta_seconds=float(p.get("eta_seconds", 0.0)),
            budget_seconds=float(job.spec.get("budget", {}).get("seconds", 0.0)),
        ),
        error=pb.Error(code=job.error.get("code", ""), message=job.error.get("message", ""))
        if job.error
        else None,
        created_at=job.created_at,
        updated_at=job.updated_at,
        num_examples=int(p.get("examples", 0)),
        result=str(p.get("result", "")) if job.state == "SUCCEEDED" else "",
        task_version=int(p.get("task_version", 0)) if job.state == "SUCCEEDED" else 0,
    )


def _finite(x: Any) -> float:
    x = float(x)
    return x if x == x and abs(x) != float("inf") else 0.0


def task_info(system: MunetSystem, name: str, sharers: bool = True) -> pb.TaskInfo:
    """`sharers`: list every other user of each component (DescribeTask); ListTasks sends counts
    only, which keeps it linear in the number of tasks."""
    if name in system.damaged:
        return damaged_task_info(system.damaged[name])
    e = system.entry(name)  # "task@2": that stored version
    rec, m = e.record, e.record.metrics
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
        validation_accuracy=float(m.get("validation_accuracy", 0.0)),
        score=float(m.get("score", 0.0)),
        params_added=int(m.get("params_added", 0)),
        params_accounted=float(system.accounted_params(e.path, name)),
        params_total=int(m.get("params_total", e.path.num_params())),
        path=path,
        hparams={k: json.dumps(v) for k, v in rec.hparams.items()},
        created_at=rec.created_at,
        golden_digest=rec.golden_digest,
        scale_factor=float(m.get("scale_factor", 1.0)),
        search_seconds=float(m.get("search_seconds", 0.0)),
        candidates_trained=int(m.get("candidates", 0)),
        num_examples=int(m.get("num_examples", 0)),
        probe_validation_accuracy=float(m.get("probe_validation_accuracy", 0.0)),
        gain_over_probe=float(m.get("gain_over_probe", 0.0)),
        holdout_size=int(m.get("holdout_size", 0)),
        chance_accuracy=float(m.get("chance_accuracy", 0.0)),
        image_size=int(m.get("image_size", rec.hparams.get("ds_image_size", 0))),
        probe_cv_accuracy=float(m.get("probe_cv_accuracy", 0.0)),
        version=rec.version,
        versions=versions,
        served_version=served,
    )


def version_info(rec: TaskRecord, served: int) -> pb.TaskVersion:
    m = rec.metrics
    return pb.TaskVersion(
        version=rec.version,
        served=rec.version == served,
        validation_accuracy=float(m.get("validation_accuracy", 0.0)),
        params_added=int(m.get("params_added", 0)),
        created_at=rec.created_at,
        golden_digest=rec.golden_digest,
        kind=str(m.get("kind", "")),
        improved_from=int(m.get("improved_from") or 0),
    )


def damaged_task_info(d: DamagedTask) -> pb.TaskInfo:
    """A task whose stored weights are unreadable: listed (so users see it), never served."""
    rec, m = d.record, d.record.metrics
    return pb.TaskInfo(
        name=rec.name,
        state=f"DAMAGED: {d.reason}",
        class_names=rec.class_names,
        validation_accuracy=float(m.get("validation_accuracy", 0.0)),
        params_added=int(m.get("params_added", 0)),
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
