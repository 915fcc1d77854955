"""`--log-format json`: one JSON object per line, with a structured line when a version is published,
a search ends, an operation is cancelled or a task deleted (issue 16 §4). A real `munet-server` process; its stderr is read back."""

from __future__ import annotations

import json
import re

from tests.helpers import ServerProcess, image_folder


def test_json_log_lines_for_a_tasks_life(tmp_path, tiny_vit_weights):
    store = tmp_path / "store"
    s = ServerProcess(store, tiny_vit_weights, extra=("--log-level", "INFO", "--log-format", "json"))
    try:
        folder, _ = image_folder(tmp_path, classes=3, per_class=10)
        op = s.client.add_task_from_folder("digits", folder, budget={"generations": 0}, seed=0)
        assert s.client.wait(op.name, timeout=300).state == "SUCCEEDED"
        # Other images: a probe "slow" publishes before the cancel would otherwise be digits' head to the
        # byte (components are content-addressed), and deleting digits would free nothing.
        other, _ = image_folder(tmp_path, classes=4, per_class=10, name="other")
        slow = s.client.add_task_from_folder("slow", other, budget={"seconds": 300}, seed=0)
        s.client.cancel(slow.name)
        assert s.client.wait(slow.name, timeout=120).state == "CANCELLED"
        s.client.delete_task("digits")
    finally:
        s.stop()
    text = (store.parent / f"server-{s.port}.log").read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    other = [line for line in text.splitlines() if line.strip() and not line.startswith("{")]
    assert lines and all({"time", "level", "logger", "message"} <= set(r) for r in lines)
    assert f"munet-server listening on 127.0.0.1:{s.port}" in other  # the one line printed for people
    assert not [line for line in other if re.match(r"\d{4}-\d\d-\d\d \d", line)], other  # no text-format records
    events = {r["event"]: r for r in lines if "event" in r}
    # "slow" may publish its first probe before the cancel reaches it: digits' publication is the one checked.
    published = next(r for r in lines if r.get("event") == "task_published" and r["task"] == "digits")
    assert published["task"] == "digits" and published["operation"] == op.name and published["version"] >= 1
    assert 0.0 <= published["validation_accuracy"] <= 1.0 and published["params_added"] > 0
    assert any(r.get("event") == "search_ended" and r["task"] == "digits" for r in lines)
    assert events["task_cancelled"]["task"] == "slow" and events["task_cancelled"]["operation"] == slow.name
    assert events["task_deleted"]["task"] == "digits" and events["task_deleted"]["freed_components"] >= 1
